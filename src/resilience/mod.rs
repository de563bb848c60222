//! Resilience: one response classifier, circuit breaking, retries with a budget, and upstream
//! host sets with outlier detection (Envoy's semantics, SPEC §6).
//!
//! Every part asks the same question of a response — was it an upstream failure, and of which
//! kind? — through [`classify::Outcome`], so the breaker, outlier detection, retries, metrics and
//! the access log never disagree. The gateway's own answers (401, 403, 429, an overflow 503) are
//! [`Outcome::Local`](classify::Outcome::Local) and never count against an upstream.
//!
//! # Composition
//!
//! Outermost first, as the gateway stacks them behind a route's plugins:
//!
//! 1. the route timeout ([`RouteTimeoutLayer`](crate::timeout::RouteTimeoutLayer)): one deadline
//!    for every attempt and backoff, so a retry can never outlive the client's patience;
//! 2. the circuit breaker: overflow and an open circuit fail fast before any work is queued;
//! 3. retries with their budget: each attempt goes back through the proxy's host selection,
//!    which avoids [`PreviousHosts`] and ejected hosts;
//! 4. the proxy with its host set, load balancer ([`balance`]) and outlier detection
//!    ([`outlier`]).

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod outlier;
pub mod retry;

/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::PreviousHosts;
