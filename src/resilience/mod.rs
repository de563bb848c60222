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

use std::sync::Arc;

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod outlier;
pub mod retry;

/// The upstream hosts this request has already been sent to, in request extensions: written by
/// the retry layer after each attempt (from [`UpstreamInfo::host`](crate::proxy::UpstreamInfo)),
/// read by host selection to honour Envoy's `previous_hosts` retry predicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousHosts(pub Vec<Arc<str>>);

impl PreviousHosts {
    /// Whether `host` was tried already.
    pub fn contains(&self, host: &str) -> bool {
        self.0.iter().any(|h| &**h == host)
    }
}
