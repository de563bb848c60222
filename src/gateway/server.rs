//! The HTTP server: HTTP/1.1 and HTTP/2 on one port (hyper-util auto), header limits, a
//! header-read timeout, a request-body read timeout, an idle keep-alive timeout, a body limit, a
//! cap on open connections, and graceful shutdown that lets in-flight requests finish.
//!
//! Past [`ServerSettings::max_connections`] a new connection is accepted and closed at once
//! (counted in [`ConnectionStats::refused`]) rather than left in the kernel's accept queue,
//! where it would wait unseen, fill the backlog and be served late.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tower::{Service, ServiceExt};

use crate::body::Body;
use crate::client_ip::{ListenerInfo, PeerAddr};
use crate::error::BoxError;

/// Headers the server makes room for when a request arrives, beyond those it carries: the
/// gateway's own (the request id and five forwarding headers) and ten for route layers
/// (consumer headers, transformation rules).
///
/// hyper sizes a request's header map to the headers it parsed, so the first header a layer
/// adds reallocates it, and so does the first one past each doubling. Reserving once here
/// makes this the only growth on the request path.
pub const HEADER_HEADROOM: usize = 16;

/// Limits and timeouts of the listening side.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Header bytes hyper buffers before it answers 431 itself; the sanitizing layer answers 431
    /// with a JSON body below this.
    pub max_header_bytes: usize,
    /// A request body is cut off (413) after this many bytes.
    pub max_body_bytes: Option<u64>,
    /// How long a client may take to send a request head.
    pub header_read_timeout: Duration,
    /// The longest wait for the next chunk of a request body once the gateway reads it; past it
    /// the body fails with [`BodyReadTimeout`](crate::body::BodyReadTimeout) (408). `None`: no
    /// limit.
    pub body_read_timeout: Option<Duration>,
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub shutdown_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_header_bytes: 32 * 1024,
            max_body_bytes: Some(10 * 1024 * 1024),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Some(Duration::from_secs(30)),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// The open and refused connections of a listener, for metrics. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct ConnectionStats {
    counts: Arc<ConnectionCounts>,
}

#[derive(Debug, Default)]
struct ConnectionCounts {
    open: AtomicUsize,
    refused: AtomicU64,
}

impl ConnectionStats {
    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because [`ServerSettings::max_connections`] were open.
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }

    /// Takes a connection slot, or counts a refusal when all `max` are taken.
    fn admit(&self, max: usize) -> Option<OpenConnection> {
        // Only the accept loop increments, so a load and an add cannot overshoot `max`.
        if self.counts.open.load(Ordering::Acquire) >= max {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counts.open.fetch_add(1, Ordering::AcqRel);
        Some(OpenConnection { counts: self.counts.clone() })
    }
}

/// A connection slot, given back when the connection's task ends.
struct OpenConnection {
    counts: Arc<ConnectionCounts>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-connection activity, for the idle timeout.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    last_request_ms: AtomicU64,
}

impl Activity {
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_request_ms.load(Ordering::Acquire));
        Some(self.born.elapsed().saturating_sub(last))
    }
}

/// One request in flight on a connection, counted until its service future ends or is dropped:
/// an HTTP/2 stream reset by the client drops the future, and the connection must become idle
/// again all the same.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_request_ms.store(elapsed, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops accepting, lets open
/// connections finish their in-flight requests (up to `shutdown_timeout`) and returns.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve_counted(listener, service, settings, ConnectionStats::default(), shutdown).await;
}

/// [`serve`], counting open and refused connections in `stats`.
pub async fn serve_counted<S, B>(
    listener: TcpListener,
    service: S,
    settings: ServerSettings,
    stats: ConnectionStats,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stops = Arc::new(StopRegistry::default());
    // Every connection task holds a sender; when all are dropped, `recv` returns `None`.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.saturating_mul(2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(target: "portcullis::server", %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = stats.admit(settings.max_connections) else {
            tracing::debug!(target: "portcullis::server", %peer, "connection refused: max_connections open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            _slot: slot,
            builder: builder.clone(),
            service: service.clone(),
            settings: settings.clone(),
            stop: stops.register(),
            _alive: alive_tx.clone(),
        };
        tokio::spawn(conn.run(stream, peer));
    }
    drop(listener);
    stops.stop_all();
    drop(alive_tx);
    if tokio::time::timeout(settings.shutdown_timeout, alive_rx.recv()).await.is_err() {
        tracing::warn!(target: "portcullis::server", "shutdown timeout passed with connections still open");
    }
}

/// Tells every open connection to shut down gracefully.
///
/// One oneshot channel per connection rather than one shared `watch`: a connection's task polls
/// its stop signal on every I/O wake-up, and a shared `watch`/`Notify` takes a mutex on each of
/// those polls, which every connection contends for. A oneshot poll is a single atomic check.
#[derive(Default)]
struct StopRegistry {
    next: AtomicU64,
    senders: std::sync::Mutex<std::collections::HashMap<u64, oneshot::Sender<()>>>,
}

impl StopRegistry {
    fn register(self: &Arc<Self>) -> StopSignal {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut senders) = self.senders.lock() {
            senders.insert(id, tx);
        }
        StopSignal { rx, id, registry: self.clone() }
    }

    fn stop_all(&self) {
        let senders = match self.senders.lock() {
            Ok(mut senders) => std::mem::take(&mut *senders),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for tx in senders.into_values() {
            let _ = tx.send(());
        }
    }
}

/// A connection's stop signal; leaves the registry when the connection ends.
struct StopSignal {
    rx: oneshot::Receiver<()>,
    id: u64,
    registry: Arc<StopRegistry>,
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        if let Ok(mut senders) = self.registry.senders.lock() {
            senders.remove(&self.id);
        }
    }
}

struct Connection<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    settings: ServerSettings,
    stop: StopSignal,
    _alive: mpsc::Sender<()>,
    _slot: OpenConnection,
}

impl<S, B> Connection<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn run(mut self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        // The forwarding headers describe this socket; without its address the sanitizer falls
        // back to the Host header's port.
        let listener = stream.local_addr().ok().map(|local_addr| ListenerInfo { local_addr, tls: false });
        let activity = Arc::new(Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_request_ms: AtomicU64::new(0),
        });
        let service = self.service.clone();
        let limit = self.settings.max_body_bytes;
        let body_read_timeout = self.settings.body_read_timeout;
        let tracker = activity.clone();
        let hyper_service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::enter(tracker.clone());
            let mut req = req.map(|body| Body::incoming(body, limit).frame_timeout(body_read_timeout));
            req.headers_mut().reserve(HEADER_HEADROOM);
            req.extensions_mut().insert(PeerAddr(peer));
            if let Some(listener) = listener {
                req.extensions_mut().insert(listener);
            }
            let call = service.clone().oneshot(req);
            async move {
                let response = call.await;
                drop(in_flight);
                response
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), hyper_service);
        let mut conn = pin!(conn);
        let idle_timeout = self.settings.idle_timeout;
        let mut closing = false;
        loop {
            let check =
                tokio::time::sleep(idle_timeout.min(Duration::from_secs(1)).max(Duration::from_millis(10)));
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(target: "portcullis::server", %peer, error = %error, "connection ended with an error");
                    }
                    return;
                }
                _ = &mut self.stop.rx, if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = check, if !closing => {
                    if activity.idle_for().is_some_and(|idle| idle >= idle_timeout) {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}
