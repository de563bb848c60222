//! The circuit breaker: Envoy's thresholds, and the classic closed → open → half-open breaker.
//!
//! [`CircuitBreakerLayer`] puts two gates in front of an upstream, both answering 503
//! `upstream_overloaded` with `X-Portcullis-Overloaded: true` (SPEC §0) instead of calling it:
//!
//! - **Thresholds** (Envoy's `max_connections`, `max_pending_requests`, `max_requests`) bound the
//!   work queued on an upstream, so a slow backend cannot pile up every caller's requests. They
//!   answer at once: an overloaded upstream is told so in microseconds, not after a timeout.
//! - **The classic breaker** notices that an upstream *is failing* and stops sending it traffic
//!   for a while, giving it room to recover and giving callers an immediate answer instead of a
//!   slow error. It trips on consecutive failures or on a failure rate over a sliding window
//!   (with a minimum volume, so three requests at night cannot trip it), stays open for
//!   [`open_duration`](CircuitBreakerBuilder::open_duration) (answering with `Retry-After`), then
//!   lets a few probe requests through (half-open; one by default, the rest fail fast). A
//!   successful probe closes the circuit, a failed one reopens it.
//!
//! # The threshold model
//!
//! The gateway proxies over HTTP/1.1, where a request in flight holds one upstream connection.
//! So, as in Envoy's HTTP/1 connection pool:
//!
//! - a request is **in flight** from admission until its response head arrives (or it fails);
//! - `max_requests` caps requests in flight; a request arriving at the cap overflows at once;
//! - `max_connections` caps them too (one connection each); a request arriving when every
//!   connection is busy but `max_requests` is not reached waits as **pending** for a connection,
//!   up to `max_pending_requests` waiting requests; beyond that it overflows at once.
//!
//! Waiting therefore only ever happens when `max_connections < max_requests` (with Envoy's
//! defaults, 1024 each, a request beyond 1024 in flight overflows). Over HTTP/2
//! ([`multiplexed`](CircuitBreakerBuilder::multiplexed)) requests share connections, so only
//! `max_requests` applies. A pending request is
//! admitted when an in-flight one finishes; a pending request keeps waiting until then or until
//! the route timeout (an outer layer) gives up on it. Pending requests are admitted as slots free
//! up, not in strict arrival order.
//!
//! # What counts
//!
//! Every response is classified once, by [`Outcome::of`]: a 5xx from the upstream, a connect
//! failure, a reset or a timeout (a retry layer's per-try timeout, inside this layer) is a
//! failure ([`Outcome::is_failure`]); any other upstream status is a success. The gateway's own
//! answers — a 401 or 429 from an auth or rate-limit layer, a 413, this layer's own 503 — say
//! nothing about the upstream and count as neither. A response future dropped before its answer
//! (the client went away, or the route timeout, an outer layer, expired) counts as neither too:
//! otherwise a client could trip the breaker for everyone by hanging up. Give the route a
//! `per_try_timeout` (retry layer, inside the breaker) for stalls to count as failures.
//!
//! Outcomes of requests admitted before the circuit last changed state are ignored, so
//! stragglers from a previous closed period cannot reopen a circuit a probe just closed.
//!
//! # Cost
//!
//! The success path is lock-free: a load of the breaker state, a compare-and-swap on the
//! in-flight count, a reset of the consecutive-failure count when it is not already zero, and a
//! compare-and-swap in the failure-rate window when one is configured (which also reads the
//! clock). All clones of the layer, and every service it makes, share one state.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use portcullis::observe::access_log::BreakerOutcome;
//! use portcullis::resilience::breaker::{BreakerState, CircuitBreakerLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreakerLayer::builder()
//!     .max_requests(100)
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(30))
//!     .build();
//! let svc = ServiceBuilder::new().layer(breaker.clone()).service_fn(|_req: Request<()>| async {
//!     // A failing upstream: the proxy marks its responses with `UpstreamInfo`.
//!     let mut res = Response::new(Bytes::new());
//!     *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!     res.extensions_mut().insert(portcullis::proxy::UpstreamInfo {
//!         host: "127.0.0.1:9000".into(),
//!         status: Some(StatusCode::INTERNAL_SERVER_ERROR),
//!         latency: Duration::ZERO,
//!         failure: None,
//!     });
//!     Ok::<_, std::convert::Infallible>(res)
//! });
//!
//! for _ in 0..2 {
//!     let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! }
//! // Two failures in a row: the circuit is open and the upstream is not called.
//! assert_eq!(breaker.snapshot().state, BreakerState::Open);
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["x-portcullis-overloaded"], "true");
//! assert_eq!(res.headers()["retry-after"], "30");
//! assert_eq!(res.extensions().get::<BreakerOutcome>(), Some(&BreakerOutcome::Open));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::Rejection;
use crate::ext::BreakerOutcome;
use crate::resilience::classify::Outcome;

/// `X-Portcullis-Overloaded: true` on every 503 this layer answers.
pub const OVERLOADED_HEADER: HeaderName = HeaderName::from_static("x-portcullis-overloaded");

/// Envoy's default for each threshold.
const ENVOY_DEFAULT_LIMIT: u32 = 1024;

/// Buckets in the failure-rate window: the window slides by a tenth of its length.
const BUCKETS: u64 = 10;

// === BreakerState ===

/// The classic breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Requests flow; outcomes are counted.
    Closed,
    /// Requests fail fast until the open duration has passed.
    Open,
    /// A limited number of probe requests are let through; the rest fail fast.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`: the access log's and the metrics' word for it,
    /// from the one list in [`BreakerOutcome::as_str`].
    pub fn as_str(self) -> &'static str {
        BreakerOutcome::from(self).as_str()
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The [`BreakerOutcome`] written for a request the thresholds turned away.
pub const OVERFLOW: BreakerOutcome = BreakerOutcome::Overflow;

impl From<BreakerState> for BreakerOutcome {
    fn from(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => BreakerOutcome::Closed,
            BreakerState::Open => BreakerOutcome::Open,
            BreakerState::HalfOpen => BreakerOutcome::HalfOpen,
        }
    }
}

// === FailureRate ===

/// Trip the circuit when at least `percent` % of the requests in the last `window` failed, once
/// the window holds at least `minimum_requests` requests.
///
/// The window is ten buckets of a tenth of its length each, so it slides in tenths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRate {
    percent: u8,
    window: Duration,
    minimum_requests: u32,
}

impl FailureRate {
    /// Trips at `percent` % failures (clamped to 1..=100), over 10 s, from 20 requests on.
    pub fn percent(percent: u8) -> Self {
        Self { percent: percent.clamp(1, 100), window: Duration::from_secs(10), minimum_requests: 20 }
    }

    /// The window the rate is measured over (default 10 s; at least 10 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(10));
        self
    }

    /// The volume below which the rate is not trusted (default 20 requests; at least 1).
    pub fn minimum_requests(mut self, minimum_requests: u32) -> Self {
        self.minimum_requests = minimum_requests.max(1);
        self
    }
}

// === CircuitBreakerBuilder ===

/// Builds a [`CircuitBreakerLayer`]; every setting has Envoy's default (thresholds of 1024) or
/// is off (the classic breaker trips only when given a trigger).
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    max_connections: u32,
    max_pending_requests: u32,
    max_requests: u32,
    consecutive_failures: Option<u32>,
    failure_rate: Option<FailureRate>,
    open_duration: Duration,
    half_open_probes: u32,
    multiplexed: bool,
}

impl Default for CircuitBreakerBuilder {
    fn default() -> Self {
        Self {
            max_connections: ENVOY_DEFAULT_LIMIT,
            max_pending_requests: ENVOY_DEFAULT_LIMIT,
            max_requests: ENVOY_DEFAULT_LIMIT,
            consecutive_failures: None,
            failure_rate: None,
            open_duration: Duration::from_secs(30),
            half_open_probes: 1,
            multiplexed: false,
        }
    }
}

impl CircuitBreakerBuilder {
    /// Upstream connections, hence requests in flight over HTTP/1.1 (default 1024); requests
    /// beyond it wait as pending.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Requests waiting for a connection (default 1024); beyond it a request overflows.
    pub fn max_pending_requests(mut self, max: u32) -> Self {
        self.max_pending_requests = max;
        self
    }

    /// Requests in flight (default 1024); a request arriving at the cap overflows at once.
    pub fn max_requests(mut self, max: u32) -> Self {
        self.max_requests = max;
        self
    }

    /// Opens the circuit after this many upstream failures in a row (at least 1).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures.max(1));
        self
    }

    /// Opens the circuit when the failure rate over a window crosses a percentage.
    pub fn failure_rate(mut self, rate: FailureRate) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// How long an open circuit fails fast before letting probes through (default 30 s).
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = duration;
        self
    }

    /// Probe requests let through at a time while half-open (default 1; at least 1).
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes.clamp(1, MAX_PROBES);
        self
    }

    /// The upstream multiplexes requests over its connections (HTTP/2): `max_connections` then
    /// bounds no request, nothing waits as pending, and `max_requests` alone caps requests in
    /// flight. Default false (HTTP/1.1, one connection per request in flight).
    pub fn multiplexed(mut self, multiplexed: bool) -> Self {
        self.multiplexed = multiplexed;
        self
    }

    /// The layer, with fresh shared state.
    pub fn build(self) -> CircuitBreakerLayer {
        let classic = (self.consecutive_failures.is_some() || self.failure_rate.is_some()).then(|| Classic {
            word: AtomicU64::new(pack(CLOSED, 0, 0)),
            open_until: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            consecutive_limit: self.consecutive_failures.unwrap_or(u32::MAX),
            window: self.failure_rate.map(Window::new),
            open_duration: self.open_duration,
            probes: self.half_open_probes,
            times_opened: AtomicU64::new(0),
        });
        // Pending requests wait for a connection, so only when connections run out before
        // `max_requests` does (Envoy checks `max_requests` first and overflows at once).
        let connections = if self.multiplexed { u32::MAX } else { self.max_connections };
        let queue_limit = if connections < self.max_requests { self.max_pending_requests } else { 0 };
        CircuitBreakerLayer {
            shared: Arc::new(Shared {
                max_connections: self.max_connections,
                max_pending_requests: self.max_pending_requests,
                max_requests: self.max_requests,
                slots: connections.min(self.max_requests),
                queue_limit,
                in_flight: AtomicU32::new(0),
                pending: AtomicU32::new(0),
                slot_freed: Notify::new(),
                classic,
                origin: Instant::now(),
                overflows: AtomicU64::new(0),
                failed_fast: AtomicU64::new(0),
            }),
        }
    }
}

// === CircuitBreakerLayer ===

/// Envoy's thresholds plus the classic circuit breaker; see the [module docs](self).
///
/// Cheap to clone: clones share one state (one breaker per upstream service).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// A layer with Envoy's default thresholds (1024 each) and no classic breaker.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts from Envoy's default thresholds, with the classic breaker off.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::default()
    }

    /// The state right now, for `/status` and `/metrics`.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker { inner, shared: self.shared.clone() }
    }
}

/// What a breaker looks like at one instant (from [`CircuitBreakerLayer::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerSnapshot {
    /// The classic breaker's state (`Closed` when it is not configured).
    pub state: BreakerState,
    /// Time left before an open circuit lets probes through (`None` unless open).
    pub open_remaining: Option<Duration>,
    /// Failures in a row counted so far while closed.
    pub consecutive_failures: u32,
    /// How many times the circuit has opened (half-open → open included).
    pub times_opened: u64,
    /// Requests in flight (each holding an upstream connection).
    pub in_flight: u32,
    /// Requests waiting for a connection.
    pub pending: u32,
    /// The `max_connections` threshold.
    pub max_connections: u32,
    /// The `max_pending_requests` threshold.
    pub max_pending_requests: u32,
    /// The `max_requests` threshold.
    pub max_requests: u32,
    /// Requests answered 503 because a threshold was reached.
    pub overflows: u64,
    /// Requests answered 503 because the circuit was open or half-open with no probe free.
    pub failed_fast: u64,
}

impl BreakerSnapshot {
    /// Envoy's `remaining_rq` (with `track_remaining`): requests that may still be admitted.
    pub fn remaining_requests(&self) -> u32 {
        self.max_requests.saturating_sub(self.in_flight)
    }

    /// Envoy's `remaining_pending`: room left in the pending queue.
    pub fn remaining_pending(&self) -> u32 {
        self.max_pending_requests.saturating_sub(self.pending)
    }

    /// Envoy's `remaining_cx`: connections not in use.
    pub fn remaining_connections(&self) -> u32 {
        self.max_connections.saturating_sub(self.in_flight)
    }
}

// === CircuitBreaker ===

/// The service made by [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreaker<S> {
    /// The state right now (shared with the layer and every clone).
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.snapshot()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match Shared::admit(&self.shared) {
            Ok(ticket) if ticket.slot => {
                // Built in place: the inner future is the bulk of this one, and moves are copies.
                let outcome = ticket.outcome();
                ResponseFuture {
                    kind: Kind::Admitted { inner: self.inner.call(req) },
                    ticket: Some(ticket),
                    outcome,
                }
            }
            Ok(ticket) => {
                // Queued for a connection: keep the ready service and the request until a slot
                // frees up (tower's contract: call the service that was made ready).
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                let shared = self.shared.clone();
                let outcome = ticket.outcome();
                let wait: BoxFuture<()> = Box::pin(shared.wait_for_slot());
                let queued = Box::new(Queued { wait, call: Some((service, req)) });
                ResponseFuture::new(Kind::Waiting { queued }, Some(ticket), outcome)
            }
            Err(refusal) => {
                let outcome = refusal.outcome();
                let response = refusal.into_rejection(&self.shared).into_response_for(&req);
                ResponseFuture::new(Kind::Rejected { response: Some(Box::new(response)) }, None, outcome)
            }
        }
    }
}

// === ResponseFuture ===

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`CircuitBreaker`].
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        kind: Kind<S, Req>,
        ticket: Option<Ticket>,
        outcome: BreakerOutcome,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req>
    where
        S: Service<Req>,
    {
        // The rare states are boxed so that the common one, `Admitted`, sets the future's size.
        Rejected { response: Option<Box<S::Response>> },
        Waiting { queued: Box<Queued<S, Req>> },
        Admitted { #[pin] inner: S::Future },
    }
}

/// A request waiting for a connection: the wait, then the ready service and the request.
struct Queued<S, Req> {
    wait: BoxFuture<()>,
    call: Option<(S, Req)>,
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    fn new(kind: Kind<S, Req>, ticket: Option<Ticket>, outcome: BreakerOutcome) -> Self {
        Self { kind, ticket, outcome }
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("breaker", &self.outcome.as_str()).finish_non_exhaustive()
    }
}

impl<S, Req, ResBody> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Rejected { response } => {
                    return match response.take() {
                        Some(mut response) => {
                            response.extensions_mut().insert(*this.outcome);
                            Poll::Ready(Ok(*response))
                        }
                        None => Poll::Pending,
                    };
                }
                KindProj::Waiting { queued } => {
                    std::task::ready!(queued.wait.as_mut().poll(cx));
                    // `wait_for_slot` took the slot and left the queue in one step.
                    if let Some(ticket) = this.ticket.as_mut() {
                        ticket.slot = true;
                        ticket.queued = false;
                    }
                    let Some((mut service, request)) = queued.call.take() else {
                        return Poll::Pending;
                    };
                    let inner = service.call(request);
                    this.kind.set(Kind::Admitted { inner });
                }
                KindProj::Admitted { inner } => {
                    let mut result = std::task::ready!(inner.poll(cx));
                    if let Some(ticket) = this.ticket.take() {
                        ticket.finish(|| match &result {
                            Ok(response) => Outcome::of(response),
                            // An inner service error (not the gateway's, whose errors are
                            // responses) is a broken exchange with the upstream.
                            Err(_) => Outcome::Reset,
                        });
                    }
                    if let Ok(response) = &mut result {
                        response.extensions_mut().insert(*this.outcome);
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}

// === Shared state ===

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const MAX_PROBES: u32 = (1 << 30) - 1;

/// The breaker word: `[generation: 32][probes in flight: 30][state: 2]`. One atomic, so a state
/// change, its probe count and its generation move together.
fn pack(state: u64, probes: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (u64::from(probes) << 2) | state
}

fn state_of(word: u64) -> u64 {
    word & 0b11
}

fn probes_of(word: u64) -> u32 {
    ((word >> 2) as u32) & MAX_PROBES
}

fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

#[derive(Debug)]
struct Shared {
    max_connections: u32,
    max_pending_requests: u32,
    max_requests: u32,
    /// Requests allowed in flight: `min(max_connections, max_requests)`.
    slots: u32,
    /// Requests allowed to wait for a slot (0: overflow at once).
    queue_limit: u32,
    in_flight: AtomicU32,
    pending: AtomicU32,
    slot_freed: Notify,
    classic: Option<Classic>,
    origin: Instant,
    overflows: AtomicU64,
    failed_fast: AtomicU64,
}

#[derive(Debug)]
struct Classic {
    word: AtomicU64,
    /// Nanoseconds since `Shared::origin` until which an open circuit fails fast.
    open_until: AtomicU64,
    consecutive: AtomicU32,
    consecutive_limit: u32,
    window: Option<Window>,
    open_duration: Duration,
    probes: u32,
    times_opened: AtomicU64,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Open { retry_after: Duration },
    HalfOpen,
    MaxRequests,
    MaxPending,
}

impl Refusal {
    fn outcome(self) -> BreakerOutcome {
        match self {
            Refusal::Open { .. } => BreakerOutcome::Open,
            Refusal::HalfOpen => BreakerOutcome::HalfOpen,
            Refusal::MaxRequests | Refusal::MaxPending => OVERFLOW,
        }
    }

    fn into_rejection(self, shared: &Shared) -> Rejection {
        let overloaded = |message: String| {
            Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "upstream_overloaded", message)
                .with_header(OVERLOADED_HEADER, HeaderValue::from_static("true"))
        };
        match self {
            Refusal::Open { retry_after } => {
                // Whole seconds, rounded up: a client retrying on time finds the circuit
                // half-open rather than still open.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                overloaded("upstream circuit breaker is open".to_owned())
                    .with_header(RETRY_AFTER, HeaderValue::from(secs.max(1)))
            }
            Refusal::HalfOpen => {
                overloaded("upstream circuit breaker is half-open and its probe is in flight".to_owned())
            }
            Refusal::MaxRequests => overloaded(format!(
                "upstream overloaded: {} requests in flight (max_requests)",
                shared.max_requests
            )),
            Refusal::MaxPending => overloaded(format!(
                "upstream overloaded: {} connections busy and {} requests pending (max_pending_requests)",
                shared.max_connections, shared.max_pending_requests
            )),
        }
    }
}

/// An admitted request's claim on the breaker: its slot (or place in the queue) and, for the
/// classic breaker, the generation it was admitted in and whether it is a probe. Dropping it
/// without [`finish`](Ticket::finish) releases everything without counting an outcome.
#[derive(Debug)]
struct Ticket {
    shared: Arc<Shared>,
    generation: u32,
    probe: bool,
    /// Holds an in-flight slot (false while pending).
    slot: bool,
    /// Still counted in `pending`.
    queued: bool,
}

impl Ticket {
    fn outcome(&self) -> BreakerOutcome {
        match self.probe {
            true => BreakerOutcome::HalfOpen,
            false => BreakerOutcome::Closed,
        }
    }

    /// Counts the outcome against the classic breaker (classifying only when there is one),
    /// then releases the slot.
    fn finish(self, outcome: impl FnOnce() -> Outcome) {
        if let Some(classic) = &self.shared.classic {
            let verdict = match outcome() {
                o if o.is_failure() => Verdict::Failure,
                o if o.is_success() => Verdict::Success,
                _ => Verdict::Neutral,
            };
            classic.record(&self.shared, self.generation, self.probe, verdict);
        }
        // Drop releases the slot; the probe was settled by `record`.
        let mut this = self;
        this.probe = false;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe {
            if let Some(classic) = &self.shared.classic {
                classic.record(&self.shared, self.generation, true, Verdict::Neutral);
            }
        }
        if self.queued {
            self.shared.pending.fetch_sub(1, Ordering::SeqCst);
        }
        if self.slot {
            self.shared.release_slot();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    Neutral,
}

impl Shared {
    fn now(&self) -> u64 {
        Instant::now().saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Decides at arrival: the classic breaker's gate first (an open circuit queues nothing),
    /// then the thresholds.
    fn admit(this: &Arc<Self>) -> Result<Ticket, Refusal> {
        let (generation, probe) = match &this.classic {
            Some(classic) => match classic.admit(this) {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    this.failed_fast.fetch_add(1, Ordering::Relaxed);
                    return Err(refusal);
                }
            },
            None => (0, false),
        };
        // From here on, dropping the ticket gives a probe back.
        let mut ticket = Ticket { shared: this.clone(), generation, probe, slot: false, queued: false };
        if this.try_take_slot() {
            ticket.slot = true;
            return Ok(ticket);
        }
        if this.try_enqueue() {
            ticket.queued = true;
            return Ok(ticket);
        }
        // Slots are `min(max_connections, max_requests)`: when connections are the smaller,
        // the request found every connection busy and the queue full.
        let refusal = if this.slots < this.max_requests { Refusal::MaxPending } else { Refusal::MaxRequests };
        this.overflows.fetch_add(1, Ordering::Relaxed);
        Err(refusal)
    }

    fn try_take_slot(&self) -> bool {
        let slots = self.slots;
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < slots).then_some(n + 1))
            .is_ok()
    }

    fn try_enqueue(&self) -> bool {
        let limit = self.queue_limit;
        self.pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // SeqCst pairs with the waiter's increment of `pending` before its last `try_take_slot`:
        // either the waiter sees this slot free, or this load sees the waiter and wakes it.
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.slot_freed.notify_one();
        }
    }

    /// Waits until a slot is taken for a queued request. The caller's ticket stays `queued`
    /// until this returns; the ticket's flags are updated by the response future.
    async fn wait_for_slot(self: Arc<Self>) {
        loop {
            let notified = self.slot_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take_slot() {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                return;
            }
            notified.await;
        }
    }

    fn snapshot(&self) -> BreakerSnapshot {
        let (state, open_remaining, consecutive_failures, times_opened) = match &self.classic {
            Some(classic) => {
                let left = classic.open_until.load(Ordering::Acquire).saturating_sub(self.now());
                let state = match state_of(classic.word.load(Ordering::Acquire)) {
                    // The move to half-open happens on the next request; past the open
                    // duration that request would probe, so that is what the circuit is.
                    OPEN if left == 0 => BreakerState::HalfOpen,
                    OPEN => BreakerState::Open,
                    HALF_OPEN => BreakerState::HalfOpen,
                    _ => BreakerState::Closed,
                };
                let remaining = (state == BreakerState::Open).then(|| Duration::from_nanos(left));
                (
                    state,
                    remaining,
                    classic.consecutive.load(Ordering::Relaxed),
                    classic.times_opened.load(Ordering::Relaxed),
                )
            }
            None => (BreakerState::Closed, None, 0, 0),
        };
        BreakerSnapshot {
            state,
            open_remaining,
            consecutive_failures,
            times_opened,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            max_connections: self.max_connections,
            max_pending_requests: self.max_pending_requests,
            max_requests: self.max_requests,
            overflows: self.overflows.load(Ordering::Relaxed),
            failed_fast: self.failed_fast.load(Ordering::Relaxed),
        }
    }
}

// === impl Classic ===

impl Classic {
    /// Returns the generation the request is admitted in and whether it is a probe.
    fn admit(&self, shared: &Shared) -> Result<(u32, bool), Refusal> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let generation = generation_of(word);
            let next = match state_of(word) {
                CLOSED => return Ok((generation, false)),
                OPEN => {
                    let now = shared.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return Err(Refusal::Open { retry_after: Duration::from_nanos(until - now) });
                    }
                    // The open duration is over: this request is the first probe.
                    pack(HALF_OPEN, 1, generation.wrapping_add(1))
                }
                _ => {
                    let probes = probes_of(word);
                    if probes >= self.probes {
                        return Err(Refusal::HalfOpen);
                    }
                    pack(HALF_OPEN, probes + 1, generation)
                }
            };
            match self.word.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok((generation_of(next), true)),
                Err(actual) => word = actual,
            }
        }
    }

    fn record(&self, shared: &Shared, generation: u32, probe: bool, verdict: Verdict) {
        if probe {
            self.settle_probe(shared, generation, verdict);
            return;
        }
        let word = self.word.load(Ordering::Acquire);
        if state_of(word) != CLOSED || generation_of(word) != generation {
            return; // admitted in an earlier closed period: says nothing about this one
        }
        match verdict {
            Verdict::Success => {
                // A load first: the common case (no failure streak) writes nothing, so the
                // cache line stays shared between cores.
                if self.consecutive.load(Ordering::Relaxed) != 0 {
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                if let Some(window) = &self.window {
                    window.record(window.epoch(shared.now()), false);
                }
            }
            Verdict::Failure => {
                let streak = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                let mut trip = streak >= self.consecutive_limit;
                if let Some(window) = &self.window {
                    let epoch = window.epoch(shared.now());
                    window.record(epoch, true);
                    trip = trip || window.tripped(epoch);
                }
                if trip {
                    // Only one failure's trip wins; the others find the word changed.
                    self.open(shared, word);
                }
            }
            Verdict::Neutral => {}
        }
    }

    fn settle_probe(&self, shared: &Shared, generation: u32, verdict: Verdict) {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if state_of(word) != HALF_OPEN || generation_of(word) != generation {
                return; // another probe already decided
            }
            let next = match verdict {
                Verdict::Success => pack(CLOSED, 0, generation.wrapping_add(1)),
                Verdict::Failure => {
                    if self.open(shared, word) {
                        return;
                    }
                    word = self.word.load(Ordering::Acquire);
                    continue;
                }
                Verdict::Neutral => pack(HALF_OPEN, probes_of(word).saturating_sub(1), generation),
            };
            match self.word.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if verdict == Verdict::Success {
                        self.consecutive.store(0, Ordering::Relaxed);
                        if let Some(window) = &self.window {
                            window.reset(window.epoch(shared.now()));
                        }
                    }
                    return;
                }
                Err(actual) => word = actual,
            }
        }
    }

    /// Opens the circuit if it is still in the state `word` describes; false if it was not.
    fn open(&self, shared: &Shared, word: u64) -> bool {
        let until = shared.now().saturating_add(self.open_duration.as_nanos() as u64);
        // Written before the state is published (Release), read after it (Acquire).
        self.open_until.store(until, Ordering::Release);
        let next = pack(OPEN, 0, generation_of(word).wrapping_add(1));
        if self.word.compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.times_opened.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                open_for_ms = self.open_duration.as_millis() as u64,
                "circuit breaker opened: the upstream fails fast"
            );
            return true;
        }
        false
    }
}

// === Window ===

/// The failure-rate window: ten buckets, each one atomic `[epoch tag: 24][requests: 20][failures:
/// 20]`, so recording is one compare-and-swap. A bucket whose tag is not the current epoch's
/// belongs to an older lap and counts as empty.
#[derive(Debug)]
struct Window {
    rate: FailureRate,
    bucket_nanos: u64,
    buckets: [AtomicU64; BUCKETS as usize],
    /// The first epoch counted (moved forward when the circuit closes).
    since: AtomicU64,
}

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << 24) - 1;

fn bucket(tag: u64, requests: u64, failures: u64) -> u64 {
    (tag << (2 * COUNT_BITS)) | (requests << COUNT_BITS) | failures
}

impl Window {
    fn new(rate: FailureRate) -> Self {
        Self {
            rate,
            bucket_nanos: (rate.window.as_nanos() as u64 / BUCKETS).max(1),
            buckets: Default::default(),
            since: AtomicU64::new(0),
        }
    }

    fn epoch(&self, now: u64) -> u64 {
        now / self.bucket_nanos
    }

    fn slot(&self, epoch: u64) -> &AtomicU64 {
        &self.buckets[(epoch % BUCKETS) as usize]
    }

    fn record(&self, epoch: u64, failed: bool) {
        let tag = epoch & TAG_MASK;
        let slot = self.slot(epoch);
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (requests, failures) = match current >> (2 * COUNT_BITS) == tag {
                true => ((current >> COUNT_BITS) & COUNT_MAX, current & COUNT_MAX),
                false => (0, 0),
            };
            if requests == COUNT_MAX {
                return; // a full bucket keeps its ratio rather than overflowing
            }
            let next = bucket(tag, requests + 1, failures + u64::from(failed));
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn tripped(&self, epoch: u64) -> bool {
        let first = epoch.saturating_sub(BUCKETS - 1).max(self.since.load(Ordering::Relaxed));
        let (mut requests, mut failures) = (0, 0);
        for e in first..=epoch {
            let value = self.slot(e).load(Ordering::Relaxed);
            if value >> (2 * COUNT_BITS) == e & TAG_MASK {
                requests += (value >> COUNT_BITS) & COUNT_MAX;
                failures += value & COUNT_MAX;
            }
        }
        requests >= u64::from(self.rate.minimum_requests)
            && failures * 100 >= u64::from(self.rate.percent) * requests
    }

    /// Forgets everything before `epoch` and the current bucket: a circuit that just closed
    /// starts counting afresh.
    fn reset(&self, epoch: u64) {
        self.since.store(epoch, Ordering::Relaxed);
        self.slot(epoch).store(bucket(epoch & TAG_MASK, 0, 0), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
