//! Rate limiting: Kong's `rate-limiting` as tower layers, with four algorithms and two stores.
//!
//! ```
//! use portcullis::ratelimit::{LimitBy, SlidingWindowLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limit = SlidingWindowLayer::new().minute(2).limit_by(LimitBy::ClientIp);
//! let svc = ServiceBuilder::new().layer(limit).service(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::from("ok")))
//! }));
//! let first = svc.clone().oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
//! svc.clone().oneshot(http::Request::new(())).await.unwrap();
//! let third = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(third.status(), 429);
//! assert!(third.headers().contains_key("retry-after"));
//! # }
//! ```
//!
//! # Choosing an algorithm
//!
//! - **Sliding window** ([`SlidingWindowLayer`], the default): `N` requests per second … year,
//!   per API key or consumer. The count is Cloudflare's estimate, `previous × overlap + current`:
//!   two integers per key, and no boundary exploit (a client cannot spend its limit just before
//!   a window boundary and again just after it). Use it unless you have a reason not to.
//! - **Fixed window** ([`SlidingWindowLayer::fixed_window`]): Kong's own counting; simplest to
//!   explain, but up to twice the limit can pass around a boundary.
//! - **Token bucket** ([`TokenBucketLayer`]): for clients that are bursty by nature (a page
//!   load fetching twenty resources): a burst of `capacity`, then `refill_per_second`.
//! - **Leaky bucket** ([`LeakyBucketLayer`]): for fragile backends. Admitted requests are
//!   *delayed* so they leave at a uniform `drain_per_second`; at most `capacity` wait, the rest
//!   get 429. The upstream never sees a burst, at the price of added latency.
//!
//! # Local or shared state
//!
//! The [`MemoryStore`] (the default) keeps state in the gateway process: no network hop, a
//! decision costs a hash and an uncontended shard lock, and memory is bounded (idle keys are
//! dropped; at the bound the least recently seen of a sample is evicted). With `N` gateway
//! replicas behind a load balancer each one counts alone, so a client gets up to `N ×` the
//! limit. `RedisStore` (feature `redis`, Kong's `policy: redis`) makes the limit exact across
//! replicas at the price of one round trip per decision (two for a denial, which is taken back
//! from the counters before the answer); when Redis fails, `fault_tolerant`
//! chooses between admitting (no headers, logged as `bypassed`) and answering 503, and a breaker
//! keeps an outage from costing every request a timeout (`redis_timeout` once per
//! `RedisStore::cooldown`, `redis_breaker_cooldown` in the config, default 1 s). Prefer the
//! memory store for a single replica or for limits that protect the gateway itself; Redis for
//! per-customer quotas that must hold across replicas.
//!
//! Between the two, `HybridStore` (Kong's `sync_rate`) decides window limits locally and
//! syncs the counters with Redis in the background every `sync_every`: no round trip for busy
//! clients, at the price of admitting up to about `rate × sync_every × (G − 1) / G` requests over
//! the limit with `G` replicas (measured in its docs). Redis keeps the exact totals.
//!
//! ```no_run
//! # #[cfg(feature = "redis")] {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use portcullis::ratelimit::{LimitBy, RedisStore, SlidingWindowLayer};
//!
//! let store = RedisStore::new("redis://127.0.0.1:6379/0", "orders-api")
//!     .unwrap()
//!     .timeout(Duration::from_millis(100));
//! let layer = SlidingWindowLayer::new()
//!     .hour(1000)
//!     .limit_by(LimitBy::Credential)
//!     .store(Arc::new(store))
//!     .fault_tolerant(true);
//! # let _ = layer; }
//! ```
//!
//! # Responses
//!
//! Every response of a limited route carries `X-RateLimit-Limit`, `X-RateLimit-Remaining`,
//! `X-RateLimit-Reset` (Unix seconds) for the most constrained window, `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` (seconds from now), and Kong's per-window
//! `X-RateLimit-Limit-Minute` / `X-RateLimit-Remaining-Minute`, unless
//! `hide_client_headers`. A rejection is a 429 (or `error_code`) with `Retry-After` (≥ 1 s) and
//! the JSON body `{"error": "rate_limit_exceeded", "message": "Request limit of 1000/hour
//! exceeded. Retry after 47 seconds.", "request_id": ...}`. Rejected requests are not counted.
//! The layer inserts a [`RateLimitOutcome`](crate::ext::RateLimitOutcome)
//! into the response extensions for the access log and the metrics: `allowed`, `limited`,
//! `bypassed` (the store failed and `fault_tolerant` admitted the request) or `unavailable` (the
//! store failed and the request got 503).
//!
//! # Sans-IO cores
//!
//! Each algorithm ([`window`], [`token_bucket`], [`leaky_bucket`]) is a pure function of the
//! state, the limit and `now`, so tests are exact and every store shares them.

mod decision;
mod future;
mod layer;
pub mod leaky_bucket;
mod limit_by;
mod policy;
mod service;
mod store;
pub mod token_bucket;
pub mod window;

pub use decision::{Clock, Decision, ManualClock, Micros, SECOND, SystemClock};
pub use future::ResponseFuture;
pub use layer::{LeakyBucketLayer, RateLimitLayer, RateLimitStats, SlidingWindowLayer, TokenBucketLayer};
pub use limit_by::{DEFAULT_IPV6_PREFIX, LimitBy, MAX_KEY_BYTES};
pub use policy::{KeyState, Period, Policy, Verdict};
pub use service::RateLimit;
pub use store::{Decided, MemoryStore, PendingVerdict, Store, StoreError};
#[cfg(feature = "redis")]
pub use store::{HybridStore, InvalidRedisUrl, RedisStore, SyncReport};

#[cfg(test)]
mod tests;
