//! # portcullis
//!
//! An API gateway's cross-cutting concerns as composable [tower] layers: each works alone on any
//! `tower::Service<http::Request<B>>`, and all of them stack with [`tower::ServiceBuilder`] or
//! axum's `Router::layer`. Rejections are JSON responses ([`Rejection`]), never errors, so a
//! stack keeps its inner service's error type and axum needs no `HandleErrorLayer`.
//!
//! In front of an axum router:
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use portcullis::observe::access_log::{AccessLogLayer, LogSink};
//! use portcullis::observe::request_id::RequestIdLayer;
//! use portcullis::sanitize::SanitizeLayer;
//! use tower::ServiceBuilder;
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let app = Router::new().route("/orders", get(|| async { "orders" })).layer(
//!         ServiceBuilder::new()
//!             .layer(RequestIdLayer::new()) // X-Request-ID on every request
//!             .layer(AccessLogLayer::new(LogSink::stdout())) // one JSON line per request
//!             .layer(SanitizeLayer::new()), // path normalization, owned headers
//!     );
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await
//! }
//! ```
//!
//! A whole gateway from a Kong-style YAML file ([`config`], [`gateway`]):
//!
//! ```no_run
//! # #[cfg(feature = "gateway")]
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let gateway = portcullis::gateway::Gateway::from_file("gateway.yaml")?;
//!     let listeners = gateway.bind().await?;
//!     gateway.run_until_signal(listeners).await; // SIGINT/SIGTERM: drain, flush the log
//!     Ok(())
//! }
//! # #[cfg(not(feature = "gateway"))] fn main() {}
//! ```
//!
//! ## Features
//!
//! - `proxy`: [`proxy::Proxy`], [`timeout::RouteTimeoutLayer`] and [`resilience`] (hyper, hyper-util,
//!   tokio).
//! - `config`: the YAML loader.
//! - `jwt`: [`auth::jwt::JwtAuthLayer`] (jsonwebtoken on aws-lc-rs; implies `proxy` for JWKS).
//! - `ratelimit`: [`ratelimit`], the rate-limit layers (tokio).
//! - `metrics`: [`observe::metrics`], Prometheus metrics (prometheus-client).
//! - `gateway` (default, implies the above): [`gateway::Gateway`] and its server, with
//!   `/healthz`, `/metrics` and `/status` on the admin listener.
//!
//! With `default-features = false`, the request id, access log, sanitizing and routing layers come
//! with no runtime and no YAML dependency.
//!
//! ## Floors
//!
//! The modules stand on floors, and imports point down only: a module may use what is on a lower
//! floor, never what is on a higher one, so there is no import circle and each floor can be read
//! without the ones above it. A layer uses the ground floor and, only where the design needs it,
//! another layer (the proxy picks its hosts from the balancer of `resilience`); never a reader,
//! `config` or `gateway`. `tests/it/floors.rs` reads this table and fails on a `use crate::…`
//! that points up, or across the layers without a stated reason.
//!
//! | floor | modules | what they hold |
//! |-------|---------|----------------|
//! | tools | `analyze` | offline tools beside the gateway (the access-log analyzer): they import nothing from the crate |
//! | gateway | `gateway` | the server, the admin listener, reload: assembles everything |
//! | config | `config` | YAML → typed values → route stacks; knows every layer, no layer knows it |
//! | readers | `observe` | request id, access log, metrics, tracing span: read what the layers recorded, decide nothing |
//! | layers | `sanitize`, `router`, `auth`, `ratelimit`, `transform`, `resilience`, `proxy`, `timeout` | one concern each, each usable alone on any `tower::Service<http::Request<B>>` |
//! | ground floor | `ext`, `http_rules`, `future`, `error`, `consumer`, `client_ip`, `body` | the shared vocabulary: the extension types ([`ext`]), the HTTP rules every layer applies alike ([`http_rules`]), the rejected-or-inner response future ([`future`]), the error body ([`Rejection`]), the consumer, the client address, the body type ([`Body`]) |
//!
//! A new extension type that two modules share goes to [`ext`], not into the module that writes
//! it first.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms, missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

#[cfg(feature = "analyze")]
pub mod analyze;
pub mod auth;
pub mod body;
pub mod client_ip;
#[cfg(feature = "config")]
pub mod config;
pub mod consumer;
pub mod error;
pub mod ext;
pub mod future;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod http_rules;
pub mod observe;
#[cfg(feature = "proxy")]
pub mod proxy;
#[cfg(feature = "ratelimit")]
pub mod ratelimit;
#[cfg(feature = "proxy")]
pub mod resilience;
pub mod router;
pub mod sanitize;
#[cfg(feature = "proxy")]
pub mod timeout;
pub mod transform;

pub use body::Body;
pub use error::Rejection;
