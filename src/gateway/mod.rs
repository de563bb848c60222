//! [`Gateway`]: a config file turned into a running gateway.
//!
//! The front of every request, outermost first:
//!
//! ```text
//! RequestId ─► RequestSpan ─► AccessLog ─► Metrics
//!           ─► Sanitize (limits, path, owned/hop-by-hop headers, client IP)
//!           ─► Router ─► per-route stack (route timeout ─► Proxy)
//! ```
//!
//! The access log and the metrics sit outside the sanitizer so that the requests it refuses
//! (400, 413, 431) are logged and counted too; the request id is outermost so that every
//! response, refusals included, carries it, and the `portcullis.request` span
//! ([`RequestSpanLayer`]) can name it.
//!
//! The admin listener (`gateway.admin_listen`) serves `GET /healthz`, `GET /metrics` and
//! `GET /status` ([`admin`]); on a non-loopback address only with `gateway.admin_token`.
//!
//! [`RequestSpanLayer`]: crate::observe::request_span::RequestSpanLayer
//!
//! ```no_run
//! use portcullis::gateway::Gateway;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::from_file("gateway.yaml")?;
//! let listeners = gateway.bind().await?;
//! gateway.run_until_signal(listeners).await; // SIGINT/SIGTERM: finish in-flight requests, flush the log
//! # Ok(()) }
//! ```

pub mod admin;
pub mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tower::ServiceBuilder;

pub use server::{ConnectionStats, HEADER_HEADROOM, ServerSettings, serve, serve_counted};

use self::admin::Admin;
use crate::config::{AccessLog, Config, ConfigError, Instruments, RouteService};
use crate::observe::access_log::{AccessLogLayer, AccessLogService, LogSink};
use crate::observe::metrics::{Metrics, MetricsLayer, MetricsService};
use crate::observe::request_id::{RequestIdLayer, RequestIdService};
use crate::observe::request_span::{RequestSpan, RequestSpanLayer};
use crate::router::Router;
use crate::sanitize::{SanitizeLayer, SanitizeService};

/// The whole gateway as one tower service: what [`Gateway::serve`] runs on each connection.
pub type FrontService =
    RequestIdService<RequestSpan<AccessLogService<MetricsService<SanitizeService<Router<RouteService>>>>>>;

/// A gateway built from a config: its service, listen addresses and server settings.
#[derive(Debug, Clone)]
pub struct Gateway {
    front: FrontService,
    settings: ServerSettings,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    log: LogSink,
    metrics: Metrics,
    admin: Arc<Admin>,
    connections: ConnectionStats,
}

/// The gateway's bound sockets (see [`Gateway::bind`]).
#[derive(Debug)]
pub struct Listeners {
    main: TcpListener,
    admin: Option<TcpListener>,
}

impl Listeners {
    /// The address the gateway listens on (useful after binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.main.local_addr()
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

impl Gateway {
    /// Reads, validates and builds the config file at `path`.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let origin = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::read(&origin, err))?;
        Self::from_yaml(&text, &origin)
    }

    /// Parses, validates and builds a YAML config; `origin` names it in errors. `/status`
    /// reports the SHA-256 of `text` as the config version.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config = Config::from_yaml(text, origin)?;
        Self::build(&config, origin, Some(config_version(text.as_bytes())))
    }

    /// Builds the gateway from a parsed config; `origin` names the file in errors (`/status`
    /// reports no config version: there are no file bytes to hash).
    pub fn from_config(config: &Config, origin: &str) -> Result<Self, ConfigError> {
        Self::build(config, origin, None)
    }

    fn build(config: &Config, origin: &str, version: Option<String>) -> Result<Self, ConfigError> {
        let settings = &config.gateway;
        if settings.tls.is_some() {
            return Err(ConfigError::unsupported(
                origin,
                "gateway.tls".into(),
                "TLS termination is not supported yet",
            ));
        }
        // `Config::from_yaml` checks this too; a hand-built `Config` must not skip it.
        if let Some((path, message)) = settings.admin_problem() {
            return Err(ConfigError::invalid(origin, path.into(), message));
        }
        let log = match &settings.access_log {
            AccessLog::Stdout => LogSink::stdout(),
            AccessLog::Off => LogSink::off(),
            AccessLog::File(path) => LogSink::file(path).map_err(|e| {
                ConfigError::invalid(
                    origin,
                    "gateway.access_log".into(),
                    format!("cannot open `{}` for appending: {e}", path.display()),
                )
            })?,
        };
        let mut instruments = Instruments::default();
        let router = config.build_router_with(origin, &mut instruments)?;
        let metrics = Metrics::new();
        metrics.watch_access_log(&log);
        for limiter in instruments.rate_limiters() {
            metrics.watch_rate_limiter(&limiter.route, &limiter.layer);
        }
        for service in instruments.services() {
            metrics.watch_service(&service.name, service.breaker.as_ref(), &service.hosts);
        }
        for retry in instruments.retries() {
            metrics.watch_retries(&retry.route, &retry.service, &retry.layer);
        }
        let connections = ConnectionStats::default();
        let open = connections.clone();
        metrics.register_gauge_fn(
            "connections_open",
            "Client connections open on the proxy listener",
            move || i64::try_from(open.open()).unwrap_or(i64::MAX),
        );
        let refused = connections.clone();
        metrics.register_counter_fn(
            "connections_rejected",
            "Client connections closed on arrival because gateway.max_connections were open",
            move || refused.refused(),
        );
        for collector in instruments.take_collectors() {
            metrics.register_boxed_collector(collector);
        }
        let front = ServiceBuilder::new()
            .layer(RequestIdLayer::new().keep_incoming_from(settings.trusted_proxies.clone()))
            .layer(RequestSpanLayer::new())
            .layer(AccessLogLayer::new(log.clone()))
            .layer(MetricsLayer::new(metrics.clone()))
            .layer(
                SanitizeLayer::new()
                    .trusted_proxies(settings.trusted_proxies.clone())
                    .strip_from_untrusted(settings.strip_from_untrusted.iter().cloned())
                    .max_header_bytes(settings.max_header_bytes)
                    .max_body_bytes(settings.max_body_bytes),
            )
            .service(router);
        Ok(Self {
            front,
            settings: ServerSettings {
                max_header_bytes: settings.max_header_bytes,
                max_body_bytes: Some(settings.max_body_bytes),
                header_read_timeout: settings.header_read_timeout,
                body_read_timeout: Some(settings.body_read_timeout),
                max_connections: settings.max_connections,
                idle_timeout: settings.idle_timeout,
                shutdown_timeout: settings.shutdown_timeout,
            },
            listen: settings.listen,
            admin_listen: settings.admin_listen,
            log,
            admin: Arc::new(Admin::new(config, origin, version, metrics.clone(), instruments)),
            metrics,
            connections,
        })
    }

    /// The configured listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The whole gateway as a tower service, for running it in-process.
    pub fn service(&self) -> FrontService {
        self.front.clone()
    }

    /// The access log sink (flush it before exiting if you serve by hand).
    pub fn log_sink(&self) -> &LogSink {
        &self.log
    }

    /// The gateway's metrics (what `GET /metrics` on the admin listener serves); register your
    /// own on it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The proxy listener's open and refused connections (also in [`metrics`](Self::metrics)).
    pub fn connections(&self) -> &ConnectionStats {
        &self.connections
    }

    /// The `GET /status` document as it is now.
    pub fn status(&self) -> serde_json::Value {
        self.admin.status()
    }

    /// Binds the listen and admin addresses; the error names the address that failed.
    pub async fn bind(&self) -> std::io::Result<Listeners> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let main = bind(self.listen).await?;
        let admin = match self.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { main, admin })
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests (up to the shutdown
    /// timeout) and flushes the access log, so no line is lost.
    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()> + Send) {
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        let admin = listeners.admin.map(|listener| {
            let mut stopped = admin_stopped.clone();
            let settings = self.settings.clone();
            let state = self.admin.clone();
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let service = tower::service_fn(move |req| state.clone().serve(req));
                serve(listener, service, settings, stop).await;
            })
        });
        serve_counted(listeners.main, self.front, self.settings, self.connections, shutdown).await;
        let _ = stop_admin.send(true);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let log = self.log;
        let _ = tokio::task::spawn_blocking(move || log.flush()).await;
    }

    /// [`serve`](Self::serve) until SIGINT or SIGTERM.
    pub async fn run_until_signal(self, listeners: Listeners) {
        self.serve(listeners, shutdown_signal()).await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `sha256:<hex>` of the config file's bytes.
fn config_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest {
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    hex
}
