//! The admin listener: `GET /healthz`, `GET /metrics` (Prometheus text) and `GET /status`
//! (JSON).
//!
//! With `gateway.admin_token` set, `/status` and (unless `gateway.admin_metrics_public`) `/metrics`
//! require `Authorization: Bearer <admin_token>` (401 JSON otherwise; the token is compared as a
//! SHA-256 digest in constant time). `/healthz` is always open. The config loader refuses a
//! non-loopback `admin_listen` without a token.
//!
//! `/status` reports names, paths, addresses and counters only: never a credential (consumer
//! keys, JWT secrets or keys, introspection `authorization_value`, Redis passwords, the admin
//! token); service URLs are rebuilt from scheme, authority and path (userinfo is refused at load).
//!
//! `/status`:
//!
//! ```text
//! {
//!   "status": "ok",
//!   "config": {"origin": "gateway.yaml", "version": "sha256:9f86d0…", "loaded_at": "2026-11-28T09:00:00.000Z"},
//!   "routes": [{"name": "orders", "service": "orders-svc", "paths": ["/orders"], "methods": ["GET"], "hosts": []}],
//!   "services": [{"name": "orders-svc", "url": "http://orders.internal/", "load_balancer": "round_robin",
//!                 "breaker": {"state": "open", "open_remaining_ms": 4210, "consecutive_failures": 0,
//!                             "times_opened": 1, "in_flight": 0, "pending": 0, "overflows": 0, "failed_fast": 12},
//!                 "panic": false, "outlier_detection": true,
//!                 "targets": [{"address": "10.0.0.5:8080", "weight": 100, "in_flight": 3, "ejected": false,
//!                              "ejected_for_ms": null, "times_ejected": 0, "success_rate": 99.5},
//!                             {"address": "10.0.0.6:8080", "weight": 100, "in_flight": 0, "ejected": true,
//!                              "ejected_for_ms": 27400, "times_ejected": 1, "success_rate": null}]}],
//!   "retries": [{"route": "orders", "service": "orders-svc", "retries": 7, "exhausted": 1,
//!                "budget_exhausted": 0, "overflow": 0, "budget": {"active_requests": 3, "retries_in_flight": 0}}],
//!   "rate_limiters": [{"route": "orders", "service": "orders-svc", "policy": "redis", "consumer": null, "healthy": true,
//!                      "store_errors": {"unavailable": 0, "script": 0}, "bypassed": 0}]
//! }
//! ```
//!
//! `version` is the SHA-256 of the config file's bytes (`null` when the gateway was built from
//! an already-parsed config). Per service: `breaker` is `null` without `circuit_breakers`
//! (`open_remaining_ms` is `null` unless the circuit is open); `targets` lists every host in
//! config order, as the config spells its address (a service with only a `url` has one, the URL's
//! authority); `ejected_for_ms` is `null` unless the host is ejected, `success_rate` (percent)
//! `null` until an interval had enough requests; `panic` is true while the service routes across
//! all hosts because too few are healthy. `retries` has one entry per route with a retry policy:
//! that route's counters, and the budget it draws on (shared by the routes inheriting one
//! service-level policy, so they show the same `budget`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::body::Body;
use crate::config::{Config, Instruments, RoutePath};
use crate::error::Rejection;
use crate::observe::metrics::Metrics;
use crate::resilience::balance::HostStatus;
use crate::resilience::breaker::BreakerSnapshot;

/// What the admin endpoints serve, shared by every admin connection.
#[derive(Debug)]
pub(crate) struct Admin {
    metrics: Metrics,
    /// The parts of `/status` fixed at load time.
    config: Value,
    routes: Value,
    services: Vec<ServiceEntry>,
    instruments: Instruments,
    /// SHA-256 of `gateway.admin_token`: compared in constant time, and equal lengths whatever
    /// the client sends.
    token_digest: Option<[u8; 32]>,
    metrics_public: bool,
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
            token_digest: config.gateway.admin_token.as_ref().map(|t| Sha256::digest(t.expose()).into()),
            metrics_public: config.gateway.admin_metrics_public,
        }
    }

    /// Whether the request may read `path`: open endpoints always, guarded ones with the token.
    fn allowed(&self, path: &str, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_digest else { return true };
        let guarded = match path {
            "/status" => true,
            "/metrics" => !self.metrics_public,
            _ => false,
        };
        if !guarded {
            return true;
        }
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return false };
        let value = value.as_bytes();
        let Some(token) = value.get(7..).filter(|_| value[..7].eq_ignore_ascii_case(b"bearer ")) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        presented.ct_eq(expected).into()
    }

    /// The `/status` document, live parts read now.
    pub(crate) fn status(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .iter()
            .map(|service| {
                let mut entry = json!({"name": service.name, "url": service.url});
                // Every service built registers itself; a missing one reports nothing live.
                if let Some(built) = self.instruments.service_named(&service.name) {
                    let hosts = built.hosts.status();
                    entry["load_balancer"] = json!(hosts.load_balancer.as_str());
                    entry["breaker"] =
                        built.breaker.as_ref().map_or(Value::Null, |b| breaker_json(&b.snapshot()));
                    entry["panic"] = json!(hosts.panic);
                    entry["outlier_detection"] = json!(hosts.outlier_detection);
                    entry["targets"] = hosts.hosts.iter().map(host_json).collect();
                } else {
                    entry["breaker"] = Value::Null;
                    entry["targets"] = json!([]);
                }
                entry
            })
            .collect();
        let retries: Vec<Value> = self
            .instruments
            .retries()
            .iter()
            .map(|retry| {
                let counters = retry.layer.snapshot();
                let budget = retry.budget.snapshot();
                json!({
                    "route": retry.route,
                    "service": retry.service,
                    "retries": counters.retries,
                    "exhausted": counters.exhausted,
                    "budget_exhausted": counters.budget_exhausted,
                    "overflow": counters.overflow,
                    "budget": {
                        "active_requests": budget.active_requests,
                        "retries_in_flight": budget.retries_in_flight,
                    },
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
                    "consumer": limiter.consumer,
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
            "retries": retries,
            "rate_limiters": rate_limiters,
        })
    }

    pub(crate) async fn serve(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        if req.method() != Method::GET {
            return Ok(not_found());
        }
        if !self.allowed(req.uri().path(), req.headers()) {
            return Ok(unauthorized());
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn breaker_json(b: &BreakerSnapshot) -> Value {
    json!({
        "state": b.state.as_str(),
        "open_remaining_ms": b.open_remaining.map(millis),
        "consecutive_failures": b.consecutive_failures,
        "times_opened": b.times_opened,
        "in_flight": b.in_flight,
        "pending": b.pending,
        "overflows": b.overflows,
        "failed_fast": b.failed_fast,
    })
}

fn host_json(h: &HostStatus) -> Value {
    json!({
        "address": &*h.address,
        "weight": h.weight,
        "in_flight": h.in_flight,
        "ejected": h.ejected,
        "ejected_for_ms": h.ejected_for.map(millis),
        "times_ejected": h.times_ejected,
        "success_rate": h.success_rate,
    })
}

fn json_response(body: Bytes) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    res.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn unauthorized() -> Response<Body> {
    Rejection::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "admin endpoint needs `Authorization: Bearer <admin_token>`",
    )
    .with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    .into_response(None)
}

fn not_found() -> Response<Body> {
    Rejection::new(StatusCode::NOT_FOUND, "not_found", "unknown admin endpoint").into_response(None)
}
