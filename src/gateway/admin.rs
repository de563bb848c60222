//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text) and `GET /status`
//! (JSON).
//!
//! `/status`:
//!
//! ```text
//! {
//!   "status": "ok",
//!   "config": {"origin": "gateway.yaml", "version": "sha256:9f86d0…", "loaded_at": "2026-11-28T09:00:00.000Z"},
//!   "routes": [{"name": "orders", "service": "orders-svc", "paths": ["/orders"], "methods": ["GET"], "hosts": []}],
//!   "services": [{"name": "orders-svc", "url": "http://10.0.0.5:8080", "breaker": null,
//!                 "targets": [{"target": "http://10.0.0.5:8080", "ejected": null}]}],
//!   "rate_limiters": [{"route": "orders", "service": "orders-svc", "policy": "redis", "healthy": true,
//!                      "store_errors": {"unavailable": 0, "script": 0}, "bypassed": 0}]
//! }
//! ```
//!
//! `version` is the SHA-256 of the config file's bytes (`null` when the gateway was built from
//! an already-parsed config). `breaker` and `ejected` are `null` until a component that knows
//! them registers a [`ServiceProbe`](crate::config::ServiceProbe).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::body::Body;
use crate::config::{Config, Instruments, RoutePath};
use crate::error::Rejection;
use crate::observe::metrics::Metrics;

/// What the admin endpoints serve, shared by every admin connection.
#[derive(Debug)]
pub(crate) struct Admin {
    metrics: Metrics,
    /// The parts of `/status` fixed at load time.
    config: Value,
    routes: Value,
    services: Vec<ServiceEntry>,
    instruments: Instruments,
}

#[derive(Debug)]
struct ServiceEntry {
    name: String,
    url: String,
}

impl Admin {
    pub(crate) fn new(
        config: &Config,
        origin: &str,
        version: Option<String>,
        metrics: Metrics,
        instruments: Instruments,
    ) -> Self {
        let loaded_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut routes = Vec::new();
        let mut services = Vec::new();
        for service in &config.services {
            let upstream = service.upstream();
            services.push(ServiceEntry {
                name: service.name.clone(),
                url: format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.path),
            });
            for (r, route) in service.routes.iter().enumerate() {
                let name = route.name.clone().unwrap_or_else(|| format!("{}.routes[{r}]", service.name));
                routes.push(json!({
                    "name": name,
                    "service": service.name,
                    "paths": route.paths.iter().map(RoutePath::to_string).collect::<Vec<_>>(),
                    "methods": route.methods.iter().map(Method::as_str).collect::<Vec<_>>(),
                    "hosts": route.hosts,
                }));
            }
        }
        Self {
            metrics,
            config: json!({"origin": origin, "version": version, "loaded_at": loaded_at}),
            routes: Value::Array(routes),
            services,
            instruments,
        }
    }

    /// The `/status` document, live parts read now.
    pub(crate) fn status(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|service| {
                let probes = || self.instruments.probes_of(&service.name);
                let breaker = probes().find_map(|p| p.breaker_state());
                let ejected = probes().find_map(|p| p.is_ejected(&service.url));
                json!({
                    "name": service.name,
                    "url": service.url,
                    "breaker": breaker,
                    "targets": [{"target": service.url, "ejected": ejected}],
                })
            })
            .collect();
        let rate_limiters: Vec<Value> = self
            .instruments
            .rate_limiters()
            .iter()
            .map(|limiter| {
                let stats = limiter.layer.stats();
                json!({
                    "route": limiter.route,
                    "service": limiter.service,
                    "policy": limiter.policy,
                    "healthy": limiter.layer.store_available(),
                    "store_errors": {"unavailable": stats.unavailable, "script": stats.script_errors},
                    "bypassed": stats.bypassed,
                })
            })
            .collect();
        json!({
            "status": "ok",
            "config": self.config,
            "routes": self.routes,
            "services": services,
            "rate_limiters": rate_limiters,
        })
    }

    pub(crate) async fn serve(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        if req.method() != Method::GET {
            return Ok(not_found());
        }
        let response = match req.uri().path() {
            "/healthz" => json_response(Bytes::from_static(b"{\"status\":\"ok\"}")),
            "/metrics" => self.metrics.scrape_response(req.headers()),
            "/status" => json_response(Bytes::from(self.status().to_string())),
            _ => not_found(),
        };
        Ok(response)
    }
}

fn json_response(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn not_found() -> Response<Body> {
    Rejection::new(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint").into_response(None)
}
