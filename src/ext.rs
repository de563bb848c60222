//! The ground floor: every request/response extension type that two modules share, so a layer
//! that writes one and a layer (or reader) that reads it both import it from here, never from
//! each other. This module imports nothing else from the crate.
//!
//! | type | where | written by | read by |
//! |------|-------|------------|---------|
//! | [`RequestId`] | request | [`RequestIdLayer`](crate::observe::request_id::RequestIdLayer) | error bodies, proxy, timeout, retry, transform templates, access log |
//! | [`NormalizedPath`] | response | [`SanitizeLayer`](crate::sanitize::SanitizeLayer) | access log |
//! | [`RouteMatch`] ([`RouteInfo`], [`UriCaptures`]) | request | [`Router`](crate::router::Router) | proxy, rate limiting, transform templates |
//! | [`MatchedRoute`] | response | [`Router`](crate::router::Router) | access log, metrics, trace |
//! | [`AuthFailure`] | response | the auth layers | metrics, trace |
//! | [`UpstreamPath`] | request | [`TransformLayer`](crate::transform::TransformLayer) | proxy |
//! | [`AttemptTimeout`] | request | the retry layer | proxy |
//! | [`PreviousHosts`] | request | the retry layer | the proxy's host selection |
//! | [`UpstreamInfo`] ([`UpstreamFailure`]) | response | the proxy | the response classifier, retry, access log, metrics, trace |
//! | [`TimedOut`] | response | the route timeout | the response classifier, retry |
//! | [`AttemptLog`] | request | the route timeout (the proxy notes each attempt) | the route timeout |
//! | [`Attempts`] | response | the proxy, retry, the route timeout | access log |
//! | [`RateLimitOutcome`] | response | the rate-limit layers | access log, metrics, trace |
//! | [`BreakerOutcome`] | response | the circuit breaker | access log |
//!
//! The consumer ([`Consumer`](crate::consumer::Consumer)) and the client address
//! ([`ClientIp`](crate::client_ip::ClientIp), [`PeerAddr`](crate::client_ip::PeerAddr)) have
//! modules of their own on this floor.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, StatusCode};

// === the request ===

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the current request, in request extensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh random (UUID v4) id.
    pub fn generate() -> Self {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid")))
    }

    /// An id from a static string (tests and examples).
    pub fn from_static(id: &'static str) -> Self {
        Self(HeaderValue::from_static(id))
    }

    /// Accepts `value` as an id if it is well formed: 1 to 128 characters of `A-Z a-z 0-9 - _ . :`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 128
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        ok.then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII (generated or validated by `parse`).
        self.0.to_str().unwrap_or("")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as an owned header value, with no copy.
    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

/// The request path after normalization (dot segments resolved, unreserved escapes decoded),
/// echoed in response extensions when it differs from the request's, so the access log reports
/// what was routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath(pub String);

// === the route ===

/// Static facts about a route, shared by every request it matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteInfo {
    /// The route's `name`, if it has one.
    pub name: Option<Arc<str>>,
    /// The name of the service the route belongs to, if any.
    pub service_name: Option<Arc<str>>,
    /// Kong `preserve_host`: forward the client's `Host` instead of the upstream's.
    pub preserve_host: bool,
}

/// Values captured by a regex path (`~/users/(?P<id>[^/]+)$`), for transform templates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UriCaptures {
    /// Named groups in pattern order.
    pub named: Vec<(Arc<str>, String)>,
    /// Every group by index; index 0 is the whole match. Groups that did not take part are empty.
    pub positional: Vec<String>,
}

impl UriCaptures {
    /// The value of a named group.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.named.iter().find(|(n, _)| &**n == name).map(|(_, v)| v.as_str())
    }
}

/// What the router decided, in request extensions for the layers of the matched route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The matched route.
    pub route: Arc<RouteInfo>,
    /// Regex captures (empty for prefix paths).
    pub captures: UriCaptures,
    /// How many bytes at the start of the request path `strip_path` removes before proxying
    /// (0 when `strip_path` is false).
    pub strip_len: usize,
}

/// The matched route, echoed in response extensions so outer layers (the access log) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute(pub Arc<RouteInfo>);

// === auth ===

/// Which auth plugin refused a request, and why, in the rejection's response extensions (for
/// metrics and tracing). Both are fixed words, never anything from the request: `plugin` is the
/// Kong plugin name (`jwt`, `key-auth`, `oauth2-introspection`, `acl`), `reason` the rejection's
/// `error` code (`unauthorized`, `invalid_token`, `invalid_credentials`, `forbidden`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthFailure {
    /// The plugin that refused.
    pub plugin: &'static str,
    /// The rejection's `error` code.
    pub reason: &'static str,
}

// === upstream ===

/// What happened upstream, in response extensions for the access log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// The upstream host the request went to (`127.0.0.1:9000`): the host set's choice.
    pub host: Arc<str>,
    /// The upstream's status, `None` when no response arrived (connect failure, reset, timeout).
    pub status: Option<StatusCode>,
    /// From sending the request to receiving the upstream response head.
    pub latency: Duration,
    /// Why no response arrived, when `status` is `None` because of the upstream (the proxy's own
    /// 413 for an oversized request body has neither).
    pub failure: Option<UpstreamFailure>,
}

/// The whole upstream path for this request, in request extensions: set by a layer that rewrites
/// the path (`replace.uri` of [`TransformLayer`](crate::transform::TransformLayer)), used by
/// `proxy::Proxy` as is instead of joining its base path with the request path (Kong's
/// `kong.service.request.set_path`). The query string is still the request URI's. One that
/// holds a `.` or `..` segment is answered 400, like a joined path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamPath(pub String);

/// A deadline for one upstream attempt, in request extensions (Envoy's `per_try_timeout`): the
/// proxy answers 504 `upstream_timeout` when the response head has not arrived within it, and
/// charges the chosen host with an `Outcome::Timeout` (`resilience::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimeout(pub Duration);

/// The upstream hosts this request has already been sent to, in request extensions: written by
/// the retry layer after each attempt (from [`UpstreamInfo::host`]),
/// read by host selection to honour Envoy's `previous_hosts` retry predicate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousHosts(pub Vec<Arc<str>>);

impl PreviousHosts {
    /// Whether `host` was tried already.
    pub fn contains(&self, host: &str) -> bool {
        self.0.iter().any(|h| &**h == host)
    }
}

/// Why a request to an upstream produced no response, in [`UpstreamInfo::failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamFailure {
    /// No connection could be made (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection broke after it was made, or the upstream sent an invalid response.
    Reset,
    /// The attempt ran out of time (a per-try timeout).
    Timeout,
}

/// Marks a response the gateway answered because a timeout expired (in response extensions), so
/// `resilience::classify::Outcome::of` tells a timeout from a local answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimedOut;

/// What the rate limiter decided, in response extensions; logged as `rate_limit` and counted as
/// the `outcome` label of `portcullis_rate_limit_decisions_total`.
///
/// [`RateLimitOutcome::as_str`] is the one list of these words: the rate-limit layers, the access
/// log, the metrics and the tracing span all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateLimitOutcome {
    /// `allowed`: within every limit (a leaky bucket's delayed request too).
    Allowed,
    /// `limited`: over a limit, answered 429 (or `error_code`) by the gateway.
    Limited,
    /// `bypassed`: the store (Redis) failed and `fault_tolerant: true` let the request through
    /// unlimited.
    Bypassed,
    /// `unavailable`: the store failed and `fault_tolerant: false` answered 503
    /// `rate_limit_unavailable`.
    Unavailable,
}

impl RateLimitOutcome {
    /// Every outcome, in the order of [`RateLimitOutcome::index`].
    pub const ALL: [Self; 4] = [Self::Allowed, Self::Limited, Self::Bypassed, Self::Unavailable];

    /// The word in the access log and the metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Limited => "limited",
            Self::Bypassed => "bypassed",
            Self::Unavailable => "unavailable",
        }
    }

    /// The position in [`RateLimitOutcome::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RateLimitOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many upstream attempts the request took, in response extensions; logged as `attempts`.
///
/// The proxy writes `Attempts(1)` on every response of a request it sent upstream and
/// `Attempts(0)` on its own answers (no healthy host, a path it refuses); a retry layer
/// overwrites it with its count, and the route timeout writes the attempts started before it
/// cut the request off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);

/// The circuit breaker's state when it decided, or why it refused, in response extensions;
/// logged as `breaker`.
///
/// [`BreakerOutcome::as_str`] is the one list of these words; the metrics' `state` label of
/// `portcullis_circuit_breaker_state` uses the same ones (through
/// `resilience::breaker::BreakerState::as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerOutcome {
    /// `closed`: the circuit was closed and admitted the request.
    Closed,
    /// `open`: the circuit was open and turned the request away (503).
    Open,
    /// `half_open`: the circuit was half-open; the request went as a probe, or was turned away
    /// when the probes were taken (503).
    HalfOpen,
    /// `overflow`: a threshold (`max_requests`, `max_pending_requests`, ...) was full and the
    /// request was turned away (503).
    Overflow,
}

impl BreakerOutcome {
    /// Every outcome.
    pub const ALL: [Self; 4] = [Self::Closed, Self::Open, Self::HalfOpen, Self::Overflow];

    /// The word in the access log (and, for the three states, the metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Overflow => "overflow",
        }
    }
}

impl std::fmt::Display for BreakerOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The attempts the proxy sent for one request, shared through request extensions (and so by
/// every retry of it), for a layer that may drop the proxy's future before it answers — the
/// route timeout — so that its own answer can still say how many attempts went upstream and where
/// the last one went. The proxy notes an attempt when it sends it; nothing reads the log on the
/// request path.
#[derive(Debug, Clone, Default)]
pub struct AttemptLog(Arc<Mutex<Sent>>);

#[derive(Debug, Default)]
struct Sent {
    count: u32,
    /// The last attempt's host and when it was sent, and what came of it once it did.
    last: Option<(Arc<str>, Instant, Option<UpstreamInfo>)>,
}

impl AttemptLog {
    /// An empty log, to put in the request extensions before calling the proxy.
    pub fn new() -> Self {
        Self::default()
    }

    /// The proxy sent an attempt to `host` at `at`.
    #[cfg(feature = "proxy")]
    pub(crate) fn sent(&self, host: &Arc<str>, at: Instant) {
        let mut sent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        sent.count = sent.count.saturating_add(1);
        sent.last = Some((host.clone(), at, None));
    }

    /// The last attempt came back with `info`.
    #[cfg(feature = "proxy")]
    pub(crate) fn answered(&self, info: &UpstreamInfo) {
        let mut sent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, answer)) = &mut sent.last {
            *answer = Some(info.clone());
        }
    }

    /// How many attempts the proxy sent upstream so far.
    pub fn attempts(&self) -> u32 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).count
    }

    /// The last attempt sent, for an answer given without waiting for it: what the proxy
    /// recorded if it had finished, else its host, no status, the time since it was sent and
    /// [`UpstreamFailure::Timeout`] (abandoned now). `None` when nothing was sent.
    pub fn abandoned(&self) -> Option<UpstreamInfo> {
        let sent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        sent.last.as_ref().map(|(host, at, answer)| match answer {
            Some(info) => info.clone(),
            None => UpstreamInfo {
                host: host.clone(),
                status: None,
                latency: at.elapsed(),
                failure: Some(UpstreamFailure::Timeout),
            },
        })
    }
}
