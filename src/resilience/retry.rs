//! Retries with Envoy's semantics (SPEC §6): which outcomes, how often, how long each try may
//! take, how long to wait between tries, and which requests may be sent twice at all.
//!
//! [`RetryLayer`] sends a request again when the [one classifier](super::classify) says the
//! outcome is one its [`RetryOn`] retries, up to `num_retries` times:
//!
//! - **Only idempotent methods** (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) are retried unless
//!   [`retry_non_idempotent`](RetryLayer::retry_non_idempotent): a POST the upstream has read may
//!   have had its effect. A *connect failure* is retried for any method, since the upstream never
//!   saw the request.
//! - **Bodies** are replayed from a buffer of at most [`MAX_REPLAY_BODY`] (64 KiB), filled before
//!   the first try. A larger body (by its `Content-Length`, or once more than 64 KiB have arrived)
//!   is streamed to the upstream once — the bytes read so far first, then the rest as it comes,
//!   never held whole — and that request is never retried.
//! - **`per_try_timeout`** bounds each try; an expired try is a timeout outcome (a 504 marked
//!   [`TimedOut`]), retried under `5xx`, `gateway-error` and `reset`.
//! - **Backoff** between tries is full jitter: uniform in [0, min(max, base × 2ⁿ)) before retry
//!   n + 1, base 25 ms and max 250 ms by default.
//! - **`previous_hosts`**: each failed try's [`UpstreamInfo::host`] is added to the next try's
//!   [`PreviousHosts`] request extension; host selection avoids those hosts.
//! - **Budget**: when a [`RetryBudget`] is in request extensions (put there by
//!   [`RetryBudgetLayer`](super::budget::RetryBudgetLayer), outside this layer), the layer takes it
//!   out (the tries do not carry it) and each retry needs its permit; a refused retry returns the
//!   response at hand.
//! - Exhausted retries return the last try's response. [`Attempts`] goes in response extensions.
//!
//! The route timeout goes *outside* this layer: every try and every backoff happen inside this
//! layer's response future, so when the timeout fires and drops the future, the attempt in flight
//! is cancelled and no further attempt can start.
//!
//! The inner service is cloned once per request and driven to readiness before each retry
//! (tower's `clone` + `ready` dance). A request with no body that succeeds at once costs a copy of
//! its head (kept for a retry) and no allocation of the future.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use portcullis::Body;
//! use portcullis::observe::access_log::Attempts;
//! use portcullis::proxy::UpstreamInfo;
//! use portcullis::resilience::retry::RetryLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // An upstream that answers 503 twice, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let upstream = {
//!     let calls = calls.clone();
//!     service_fn(move |_req: Request<Body>| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!             let mut res = Response::new(Body::empty());
//!             *res.status_mut() = status;
//!             res.extensions_mut().insert(UpstreamInfo {
//!                 host: "10.0.0.1:80".into(),
//!                 status: Some(status),
//!                 latency: Duration::ZERO,
//!                 failure: None,
//!             });
//!             Ok::<_, std::convert::Infallible>(res)
//!         }
//!     })
//! };
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new("5xx,reset,connect-failure".parse().unwrap()).num_retries(2))
//!     .service(upstream);
//! let res = svc.oneshot(Request::new(Body::empty())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::util::rng::{HasherRng, Rng};
use tower::{Layer, Service, ServiceExt};

use super::budget::{RetryBudget, RetryPermit, RetryRefused};
use super::classify::{Outcome, RetryOn};
use crate::body::Body;
use crate::error::{BoxError, Rejection};
use crate::ext::AttemptTimeout;
use crate::ext::Attempts;
use crate::ext::PreviousHosts;
use crate::ext::RequestId;
use crate::ext::TimedOut;
use crate::ext::UpstreamInfo;

/// How much later than the per-try timeout the layer's own timer fires (see [`Attempt::new`]).
const ATTEMPT_TIMEOUT_GRACE: Duration = Duration::from_millis(5);

/// Request bodies up to this size (64 KiB) are buffered so they can be sent again; larger ones
/// are streamed once and not retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// What a retry layer does; shared by the layer's services.
#[derive(Debug, Clone)]
struct Policy {
    retry_on: RetryOn,
    num_retries: u32,
    per_try_timeout: Option<Duration>,
    backoff: Backoff,
    previous_hosts: bool,
    retry_non_idempotent: bool,
}

/// Full-jitter exponential backoff (the AWS architecture blog's "full jitter", Envoy's default).
#[derive(Debug, Clone, Copy)]
struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// The wait before retry `retry + 1`: uniform in [0, min(max, base × 2^retry)).
    fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max).mul_f64(rng.next_f64())
    }
}

#[derive(Debug, Default)]
struct Counters {
    retries: AtomicU64,
    exhausted: AtomicU64,
    budget_exhausted: AtomicU64,
    overflow: AtomicU64,
}

/// Counters of a [`RetryLayer`] (all its services) for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetrySnapshot {
    /// Retries sent.
    pub retries: u64,
    /// Requests whose last try was still retriable when `num_retries` ran out.
    pub exhausted: u64,
    /// Retries skipped because the [`RetryBudget`] was spent.
    pub budget_exhausted: u64,
    /// Retries skipped because `max_retries` retries were in flight.
    pub overflow: u64,
}

// === impl RetryLayer ===

/// Retries failed requests; see the [module docs](self). Clones share their counters.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<Policy>,
    counters: Arc<Counters>,
}

impl RetryLayer {
    /// Retries the outcomes `retry_on` names, once (Envoy's default `num_retries`), with no
    /// per-try timeout, a 25 ms / 250 ms backoff, no host predicate, idempotent methods only.
    pub fn new(retry_on: RetryOn) -> Self {
        Self {
            policy: Arc::new(Policy {
                retry_on,
                num_retries: 1,
                per_try_timeout: None,
                backoff: Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) },
                previous_hosts: false,
                retry_non_idempotent: false,
            }),
            counters: Arc::default(),
        }
    }

    /// At most this many retries after the first try (0 disables retrying).
    pub fn num_retries(mut self, num_retries: u32) -> Self {
        Arc::make_mut(&mut self.policy).num_retries = num_retries;
        self
    }

    /// Gives up on a try after `timeout`; the try counts as a timeout outcome.
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.policy).per_try_timeout = Some(timeout);
        self
    }

    /// Full-jitter backoff between `base` and `max` (Envoy's `retry_back_off`).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        Arc::make_mut(&mut self.policy).backoff = Backoff { base, max: max.max(base) };
        self
    }

    /// Envoy's `previous_hosts` retry predicate: tell host selection which hosts failed already.
    pub fn previous_hosts(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.policy).previous_hosts = enabled;
        self
    }

    /// Also retries POST, PATCH and other non-idempotent methods.
    pub fn retry_non_idempotent(mut self, enabled: bool) -> Self {
        Arc::make_mut(&mut self.policy).retry_non_idempotent = enabled;
        self
    }

    /// The counters of every service this layer made.
    pub fn snapshot(&self) -> RetrySnapshot {
        snapshot(&self.counters)
    }
}

fn snapshot(counters: &Counters) -> RetrySnapshot {
    RetrySnapshot {
        retries: counters.retries.load(Ordering::Relaxed),
        exhausted: counters.exhausted.load(Ordering::Relaxed),
        budget_exhausted: counters.budget_exhausted.load(Ordering::Relaxed),
        overflow: counters.overflow.load(Ordering::Relaxed),
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, policy: self.policy.clone(), counters: self.counters.clone() }
    }
}

// === impl Retry ===

/// The service made by [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
    counters: Arc<Counters>,
}

impl<S> Retry<S> {
    /// The counters shared with the layer that made this service.
    pub fn snapshot(&self) -> RetrySnapshot {
        snapshot(&self.counters)
    }
}

impl<S, B> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: From<Bytes> + Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let per_try_timeout = self.policy.per_try_timeout;
        if self.policy.num_retries == 0 {
            let attempt = Attempt::new(req, per_try_timeout, |req| self.inner.call(req));
            return ResponseFuture { state: State::First { attempt, ctx: None } };
        }
        if req.body().is_end_stream() {
            // The common case (GET, HEAD, DELETE): nothing to buffer, so no boxed future unless a
            // retry actually happens.
            let (mut parts, body) = req.into_parts();
            let budget = parts.extensions.remove::<RetryBudget>();
            let template = template(&parts);
            let req = Request::from_parts(parts, body);
            let attempt = Attempt::new(req, per_try_timeout, |req| self.inner.call(req));
            let ctx = Ctx {
                service: self.inner.clone(),
                template,
                budget,
                body: Bytes::new(),
                policy: self.policy.clone(),
                counters: self.counters.clone(),
                attempts: 1,
            };
            return ResponseFuture { state: State::First { attempt, ctx: Some(ctx) } };
        }
        // The body must be read before the first try: take the service that is ready, leave a
        // clone behind for the next call.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let future = buffer_then_send(service, req, self.policy.clone(), self.counters.clone());
        ResponseFuture { state: State::Retrying { future: Box::pin(future) } }
    }
}

/// A copy of a request's head, kept to build the next try.
fn template(parts: &Parts) -> Request<()> {
    let mut template = Request::new(());
    *template.method_mut() = parts.method.clone();
    *template.uri_mut() = parts.uri.clone();
    *template.version_mut() = parts.version;
    *template.headers_mut() = parts.headers.clone();
    *template.extensions_mut() = parts.extensions.clone();
    template
}

/// RFC 9110 §9.2.2: the methods whose repetition has the effect of a single request.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether to send another try.
enum Decision {
    Done,
    /// Retry, holding the budget's permit (if a budget is in use) until the try completes.
    Retry(Option<RetryPermit>),
}

/// Everything a retry needs: a service to call, the request's head and body, the policy.
struct Ctx<S> {
    service: S,
    template: Request<()>,
    /// Taken out of the request's extensions: the tries do not need it.
    budget: Option<RetryBudget>,
    body: Bytes,
    policy: Arc<Policy>,
    counters: Arc<Counters>,
    /// Tries sent so far.
    attempts: u32,
}

impl<S> Ctx<S> {
    /// The one place that decides whether `response` is retried.
    fn decide<B>(&mut self, response: &Response<B>) -> Decision {
        let outcome = Outcome::of(response);
        if !self.policy.retry_on.should_retry(outcome) {
            return Decision::Done;
        }
        // A connect failure never reached the upstream: safe to send again whatever the method.
        if outcome != Outcome::ConnectFailure
            && !self.policy.retry_non_idempotent
            && !is_idempotent(self.template.method())
        {
            return Decision::Done;
        }
        if self.attempts > self.policy.num_retries {
            self.counters.exhausted.fetch_add(1, Ordering::Relaxed);
            return Decision::Done;
        }
        let permit = match self.budget.as_ref().map(RetryBudget::try_retry) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(refused)) => {
                let counter = match refused {
                    RetryRefused::BudgetExhausted => &self.counters.budget_exhausted,
                    RetryRefused::Overflow => &self.counters.overflow,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Decision::Done;
            }
        };
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if self.policy.previous_hosts {
            if let Some(info) = response.extensions().get::<UpstreamInfo>() {
                let extensions = self.template.extensions_mut();
                match extensions.get_mut::<PreviousHosts>() {
                    Some(hosts) => hosts.0.push(info.host.clone()),
                    None => {
                        extensions.insert(PreviousHosts(vec![info.host.clone()]));
                    }
                }
            }
        }
        Decision::Retry(permit)
    }

    fn finish<B>(&self, response: &mut Response<B>) {
        record_attempts(response, self.attempts);
    }

    fn next_request(&self) -> Request<Body> {
        let mut request = Request::new(Body::full(self.body.clone()));
        *request.method_mut() = self.template.method().clone();
        *request.uri_mut() = self.template.uri().clone();
        *request.version_mut() = self.template.version();
        *request.headers_mut() = self.template.headers().clone();
        *request.extensions_mut() = self.template.extensions().clone();
        request
    }
}

impl<S, B> Ctx<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    B: From<Bytes>,
{
    /// Sends tries until one is not retried; `response` is the try just decided for a retry.
    async fn retry(
        mut self,
        response: Response<B>,
        mut permit: Option<RetryPermit>,
    ) -> Result<Response<B>, S::Error> {
        // Let the failed response's connection go before waiting.
        drop(response);
        loop {
            let delay = self.policy.backoff.delay(self.attempts - 1, &mut HasherRng::new());
            tokio::time::sleep(delay).await;
            let request = self.next_request();
            let service = self.service.ready().await?;
            let attempt = Attempt::new(request, self.policy.per_try_timeout, |req| service.call(req));
            let mut response = attempt.await?;
            self.attempts += 1;
            drop(permit.take());
            match self.decide(&response) {
                Decision::Done => {
                    self.finish(&mut response);
                    return Ok(response);
                }
                Decision::Retry(next) => permit = next,
            }
        }
    }
}

/// Reads a request body of unknown length up to [`MAX_REPLAY_BODY`], then sends the first try,
/// and retries it if the body could be kept.
async fn buffer_then_send<S, B>(
    mut service: S,
    req: Request<Body>,
    policy: Arc<Policy>,
    counters: Arc<Counters>,
) -> Result<Response<B>, S::Error>
where
    S: Service<Request<Body>, Response = Response<B>>,
    B: From<Bytes>,
{
    let (mut parts, body) = req.into_parts();
    match buffer(body, MAX_REPLAY_BODY).await {
        Buffered::Replayable(bytes) => {
            let budget = parts.extensions.remove::<RetryBudget>();
            let template = template(&parts);
            let mut ctx = Ctx { service, template, budget, body: bytes, policy, counters, attempts: 1 };
            let request = Request::from_parts(parts, Body::full(ctx.body.clone()));
            let per_try_timeout = ctx.policy.per_try_timeout;
            let service = &mut ctx.service;
            let mut response = Attempt::new(request, per_try_timeout, |req| service.call(req)).await?;
            match ctx.decide(&response) {
                Decision::Done => {
                    ctx.finish(&mut response);
                    Ok(response)
                }
                Decision::Retry(permit) => ctx.retry(response, permit).await,
            }
        }
        Buffered::Streamed(body) => {
            let request = Request::from_parts(parts, body);
            let per_try_timeout = policy.per_try_timeout;
            let mut response = Attempt::new(request, per_try_timeout, |req| service.call(req)).await?;
            record_attempts(&mut response, 1);
            Ok(response)
        }
    }
}

/// Writes [`Attempts`]: the tries sent, less the last one when the proxy answered it without
/// going upstream (its `Attempts(0)`: no healthy host). Only the last try can be such an answer:
/// the proxy's own answers are never retried.
fn record_attempts<B>(response: &mut Response<B>, tries: u32) {
    let last = response.extensions().get::<Attempts>().map_or(1, |a| a.0.min(1));
    response.extensions_mut().insert(Attempts(tries.saturating_sub(1) + last));
}

/// A request body after [`buffer`].
enum Buffered {
    /// The whole body, small enough to send again.
    Replayable(Bytes),
    /// Too large (or with trailers, or failed): the bytes read so far, then the rest; sent once.
    Streamed(Body),
}

async fn buffer(mut body: Body, cap: usize) -> Buffered {
    if body.is_end_stream() {
        return Buffered::Replayable(Bytes::new());
    }
    if body.size_hint().lower() > cap as u64 {
        return Buffered::Streamed(body);
    }
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0;
    let streamed = |read, error, rest| Buffered::Streamed(Body::new(Prefixed { read, error, rest }));
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                let is_data = frame.is_data();
                len += frame.data_ref().map_or(0, Bytes::len);
                read.push_back(frame);
                // Trailers cannot be replayed from a plain buffer; they are rare enough to stream.
                if !is_data || len > cap {
                    return streamed(read, None, Some(body));
                }
            }
            // Passed on, so the proxy answers as it would without retries (413 for a body over
            // the gateway's limit).
            Some(Err(error)) => return streamed(read, Some(error), None),
        }
    }
    let mut bytes = BytesMut::with_capacity(len);
    for frame in read {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
    }
    Buffered::Replayable(bytes.freeze())
}

pin_project! {
    /// The frames read while trying to buffer, then the error or the rest of the body.
    struct Prefixed {
        read: VecDeque<Frame<Bytes>>,
        error: Option<BoxError>,
        rest: Option<Body>,
    }
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.error.is_none() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.read.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}

pin_project! {
    /// One try, with the per-try timeout when there is one.
    #[project = AttemptProj]
    enum Attempt<F> {
        Plain { #[pin] future: F },
        Timed { #[pin] future: tokio::time::Timeout<F>, request_id: Option<RequestId> },
    }
}

impl<F: Future> Attempt<F> {
    /// Sends `request` through `call`, bounded by `timeout` when set.
    fn new(request: Request<Body>, timeout: Option<Duration>, call: impl FnOnce(Request<Body>) -> F) -> Self {
        match timeout {
            None => Attempt::Plain { future: call(request) },
            Some(timeout) => {
                let mut request = request;
                let request_id = request.extensions().get::<RequestId>().cloned();
                // The proxy enforces the timeout itself when it sees it, so the 504 names the host
                // it chose and outlier detection and `previous_hosts` learn of the stall. Our own
                // timer is the backstop for inner services that ignore it, a little later so the
                // proxy's answer wins the race.
                request.extensions_mut().insert(AttemptTimeout(timeout));
                let backstop = timeout + ATTEMPT_TIMEOUT_GRACE;
                Attempt::Timed { future: tokio::time::timeout(backstop, call(request)), request_id }
            }
        }
    }
}

impl<F, B, E> Future for Attempt<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttemptProj::Plain { future } => future.poll(cx),
            AttemptProj::Timed { future, request_id } => match ready!(future.poll(cx)) {
                Ok(result) => Poll::Ready(result),
                // Dropping the inner future cancels the try; the 504 classifies as a timeout.
                Err(_elapsed) => {
                    let mut response = Rejection::upstream_timeout().into_response(request_id.as_ref());
                    response.extensions_mut().insert(TimedOut);
                    Poll::Ready(Ok(response))
                }
            },
        }
    }
}

type BoxFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>;

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Body>, Response = Response<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<Body>, Response = Response<B>>,
    {
        /// The first try of a request with no body: polled in place.
        First { #[pin] attempt: Attempt<S::Future>, ctx: Option<Ctx<S>> },
        /// Buffering a body, or retrying.
        Retrying { future: BoxFuture<B, S::Error> },
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<Body>, Response = Response<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: From<Bytes> + Send + 'static,
{
    type Output = Result<Response<B>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::First { attempt, ctx } => {
                    let mut response = ready!(attempt.poll(cx))?;
                    let Some(mut ctx) = ctx.take() else {
                        record_attempts(&mut response, 1);
                        return Poll::Ready(Ok(response));
                    };
                    match ctx.decide(&response) {
                        Decision::Done => {
                            ctx.finish(&mut response);
                            return Poll::Ready(Ok(response));
                        }
                        Decision::Retry(permit) => {
                            state.set(State::Retrying { future: Box::pin(ctx.retry(response, permit)) });
                        }
                    }
                }
                StateProj::Retrying { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http::StatusCode;
    use tokio::time::Instant;
    use tower::ServiceBuilder;

    use super::*;
    use crate::ext::UpstreamFailure;
    use crate::resilience::budget::RetryBudgetLayer;
    use crate::timeout::RouteTimeoutLayer;

    /// What one scripted try answers.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Status(u16),
        ConnectFailure,
        Stall,
    }

    #[derive(Debug, Clone)]
    struct Seen {
        started: Instant,
        method: Method,
        body: Bytes,
        previous_hosts: Option<PreviousHosts>,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A service answering `steps` in order (the last one repeats), try `n` from host `h{n}`, as
    /// the proxy would report it.
    fn scripted(
        steps: &[Step],
    ) -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
        Log,
    ) {
        let steps: Arc<[Step]> = steps.into();
        let log: Log = Arc::default();
        let seen = log.clone();
        let svc = tower::service_fn(move |req: Request<Body>| {
            let steps = steps.clone();
            let seen = seen.clone();
            async move {
                let started = Instant::now();
                let previous_hosts = req.extensions().get::<PreviousHosts>().cloned();
                let method = req.method().clone();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Seen { started, method, body, previous_hosts });
                    seen.len() - 1
                };
                let step = steps[n.min(steps.len() - 1)];
                let host: Arc<str> = format!("h{n}").into();
                let (status, failure) = match step {
                    Step::Status(code) => (Some(StatusCode::from_u16(code).unwrap()), None),
                    Step::ConnectFailure => (None, Some(UpstreamFailure::ConnectFailure)),
                    Step::Stall => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                };
                let mut res = Response::new(Body::from("answer"));
                *res.status_mut() = status.unwrap_or(StatusCode::BAD_GATEWAY);
                res.extensions_mut().insert(UpstreamInfo { host, status, latency: Duration::ZERO, failure });
                Ok::<_, Infallible>(res)
            }
        });
        (svc, log)
    }

    fn layer(retry_on: &str) -> RetryLayer {
        RetryLayer::new(retry_on.parse().unwrap())
    }

    async fn send(layer: &RetryLayer, steps: &[Step], req: Request<Body>) -> (Response<Body>, Vec<Seen>) {
        let (svc, log) = scripted(steps);
        let res = layer.layer(svc).oneshot(req).await.unwrap();
        let seen = log.lock().unwrap().clone();
        (res, seen)
    }

    fn get() -> Request<Body> {
        Request::new(Body::empty())
    }

    fn post(body: impl Into<Body>) -> Request<Body> {
        Request::post("/").body(body.into()).unwrap()
    }

    fn attempts(res: &Response<Body>) -> u32 {
        res.extensions().get::<Attempts>().expect("Attempts in response extensions").0
    }

    use Step::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_records_the_attempts() {
        let layer = layer("5xx").num_retries(2);
        let (res, seen) = send(&layer, &[Status(503), Status(503), Status(200)], get()).await;
        assert_eq!((res.status(), attempts(&res), seen.len()), (StatusCode::OK, 3, 3));
        assert_eq!(layer.snapshot(), RetrySnapshot { retries: 2, ..RetrySnapshot::default() });
    }

    #[tokio::test(start_paused = true)]
    async fn exhausted_retries_return_the_last_upstream_response() {
        let layer = layer("5xx").num_retries(2);
        let (res, seen) = send(&layer, &[Status(503), Status(503), Status(500)], get()).await;
        assert_eq!((res.status(), attempts(&res), seen.len()), (StatusCode::INTERNAL_SERVER_ERROR, 3, 3));
        assert_eq!(layer.snapshot().exhausted, 1);
        let (res, seen) = send(&layer.clone().num_retries(0), &[Status(503), Status(200)], get()).await;
        assert_eq!((res.status().as_u16(), attempts(&res), seen.len()), (503, 1, 1));
    }

    /// The proxy's own answer (no healthy host: `Attempts(0)`, no `UpstreamInfo`) is not retried
    /// and went nowhere: the retry layer keeps its 0; a try that went upstream counts 1.
    #[tokio::test(start_paused = true)]
    async fn a_proxy_answer_that_sent_nothing_counts_no_attempt() {
        for (inner, expected) in [(Some(0), 0), (Some(1), 1), (None, 1)] {
            let svc = tower::service_fn(move |_req: Request<Body>| async move {
                let mut res = Response::new(Body::from("no_healthy_upstream"));
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                if let Some(n) = inner {
                    res.extensions_mut().insert(Attempts(n));
                }
                Ok::<_, Infallible>(res)
            });
            let res = layer("5xx").num_retries(2).layer(svc).oneshot(get()).await.unwrap();
            assert_eq!((res.status().as_u16(), attempts(&res)), (503, expected), "inner {inner:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_configured_outcomes_are_retried() {
        let (res, seen) =
            send(&layer("gateway-error").num_retries(3), &[Status(500), Status(200)], get()).await;
        assert_eq!((res.status().as_u16(), seen.len()), (500, 1), "gateway-error does not retry 500");
        let (res, seen) =
            send(&layer("gateway-error").num_retries(3), &[Status(502), Status(200)], get()).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2));
        let four = layer("retriable-4xx").num_retries(3);
        let (res, seen) = send(&four, &[Status(409), Status(200)], get()).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2));
        for other in [404, 429, 503] {
            let (res, seen) = send(&four, &[Status(other), Status(200)], get()).await;
            assert_eq!((res.status().as_u16(), seen.len()), (other, 1), "retriable-4xx is 409 only");
        }
        // The gateway's own answers (no UpstreamInfo) are never retried.
        let svc =
            layer("5xx,gateway-error").num_retries(3).layer(tower::service_fn(|_req: Request<Body>| async {
                Ok::<_, Infallible>(
                    Rejection::new(StatusCode::SERVICE_UNAVAILABLE, "upstream_overloaded", "")
                        .into_response::<Body>(None),
                )
            }));
        let res = svc.oneshot(get()).await.unwrap();
        assert_eq!((res.status().as_u16(), attempts(&res)), (503, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn non_idempotent_requests_are_retried_only_after_a_connect_failure_unless_allowed() {
        let layer = layer("5xx,connect-failure").num_retries(2);
        let (res, seen) = send(&layer, &[Status(503), Status(200)], post("order")).await;
        assert_eq!((res.status().as_u16(), seen.len()), (503, 1), "the upstream read the POST");
        let (res, seen) = send(&layer, &[ConnectFailure, Status(200)], post("order")).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2), "the upstream never saw it");
        assert!(seen.iter().all(|s| s.method == Method::POST && s.body == "order"), "{seen:?}");
        let put = Request::put("/").body(Body::from("x")).unwrap();
        let (res, seen) = send(&layer, &[Status(503), Status(200)], put).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2), "PUT is idempotent");

        let allowed = layer.retry_non_idempotent(true);
        let (res, seen) = send(&allowed, &[Status(503), Status(503), Status(200)], post("order")).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 3));
        assert!(seen.iter().all(|s| s.body == "order"), "the body is replayed on every try");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_hosts_go_into_the_next_tries_previous_hosts() {
        let steps = [Status(503), ConnectFailure, Status(200)];
        let (_, seen) = send(&layer("5xx").num_retries(2).previous_hosts(true), &steps, get()).await;
        let hosts: Vec<_> = seen.iter().map(|s| s.previous_hosts.clone()).collect();
        assert_eq!(
            hosts,
            [
                None,
                Some(PreviousHosts(vec!["h0".into()])),
                Some(PreviousHosts(vec!["h0".into(), "h1".into()]))
            ]
        );
        let (_, seen) = send(&layer("5xx").num_retries(2), &steps, get()).await;
        assert!(seen.iter().all(|s| s.previous_hosts.is_none()), "off unless configured");
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_try_is_a_retriable_timeout() {
        let layer = layer("5xx").num_retries(2).per_try_timeout(Duration::from_millis(300));
        let (res, seen) = send(&layer, &[Stall, Status(200)], get()).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2));
        let (res, seen) = send(&layer, &[Stall], get()).await;
        assert_eq!((res.status().as_u16(), attempts(&res), seen.len()), (504, 3, 3));
        assert_eq!(Outcome::of(&res), Outcome::Timeout);
        let (res, seen) = send(
            &self::layer("connect-failure").per_try_timeout(Duration::from_millis(300)),
            &[Stall],
            get(),
        )
        .await;
        assert_eq!((res.status().as_u16(), seen.len()), (504, 1), "connect-failure does not cover timeouts");
    }

    #[tokio::test(start_paused = true)]
    async fn the_route_timeout_covers_every_try_and_no_try_starts_after_it() {
        let (svc, log) = scripted(&[Stall]);
        let svc = ServiceBuilder::new()
            .layer(RouteTimeoutLayer::new(Duration::from_secs(1)))
            .layer(layer("5xx").num_retries(100).per_try_timeout(Duration::from_millis(300)))
            .service(svc);
        let start = Instant::now();
        let res = svc.oneshot(get()).await.unwrap();
        let deadline = start + Duration::from_secs(1);
        assert_eq!(res.status(), 504);
        assert!(res.extensions().get::<TimedOut>().is_some());
        assert_eq!(Instant::now(), deadline, "answered when the route timeout fired");
        let tries = log.lock().unwrap().len();
        assert!((2..=4).contains(&tries), "{tries} tries of 300 ms fit in 1 s with backoff");
        // Dropping the retry future cancelled everything: nothing more starts, ever.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen.len(), tries);
        assert!(seen.iter().all(|s| s.started < deadline), "{seen:?}");
    }

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_ceiling() {
        let backoff = Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250) };
        let mut rng = HasherRng::new();
        for retry in 0..40 {
            let ceiling = Duration::from_millis(25 * (1 << retry.min(4))).min(Duration::from_millis(250));
            let delays: Vec<_> = (0..200).map(|_| backoff.delay(retry, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d < ceiling), "retry {retry}: {delays:?}");
            // Spread over the whole range, not clustered at the ceiling (full, not equal, jitter).
            assert!(delays.iter().any(|d| *d < ceiling / 4) && delays.iter().any(|d| *d > ceiling * 3 / 4));
        }
    }

    /// A body that arrives in 16 KiB chunks with no length known in advance.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    fn chunked(data: Bytes) -> Body {
        Body::new(Chunks(data.chunks(16 * 1024).map(Bytes::copy_from_slice).collect()))
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_over_64_kib_are_streamed_once_and_never_retried() {
        let layer = layer("5xx,connect-failure").num_retries(3).retry_non_idempotent(true);
        let large: Bytes = (0..100 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        for (name, body) in [("known length", Body::full(large.clone())), ("chunked", chunked(large.clone()))]
        {
            let (res, seen) = send(&layer, &[ConnectFailure, Status(200)], post(body)).await;
            assert_eq!((res.status().as_u16(), attempts(&res), seen.len()), (502, 1, 1), "{name}");
            assert!(seen[0].body == large, "{name}: the body arrives intact");
        }
        // Up to the cap, a chunked body is buffered and replayed.
        let small = large.slice(..MAX_REPLAY_BODY);
        let (res, seen) = send(&layer, &[Status(503), Status(200)], post(chunked(small.clone()))).await;
        assert_eq!((res.status().as_u16(), seen.len()), (200, 2));
        assert!(seen.iter().all(|s| s.body == small));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_budget_skips_the_retry_and_counts_why() {
        let budget = RetryBudget::builder().max_retries(0).build().unwrap();
        let retry = layer("5xx").num_retries(2);
        let (svc, log) = scripted(&[Status(503), Status(200)]);
        let svc = ServiceBuilder::new()
            .layer(RetryBudgetLayer::new(budget.clone()))
            .layer(retry.clone())
            .service(svc);
        let res = svc.oneshot(get()).await.unwrap();
        assert_eq!((res.status().as_u16(), attempts(&res), log.lock().unwrap().len()), (503, 1, 1));
        assert_eq!(retry.snapshot(), RetrySnapshot { overflow: 1, ..RetrySnapshot::default() });
        assert_eq!(budget.snapshot().overflow, 1);
        // With room, the permit is held for the retry and given back after it.
        let budget = RetryBudget::builder().max_retries(1).build().unwrap();
        let (svc, _) = scripted(&[Status(503), Status(200)]);
        let svc =
            ServiceBuilder::new().layer(RetryBudgetLayer::new(budget.clone())).layer(retry).service(svc);
        assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
        assert_eq!((budget.snapshot().retries_admitted, budget.snapshot().retries_in_flight), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn clones_of_the_layer_share_counters() {
        let layer = layer("5xx");
        let clone = layer.clone();
        let (res, _) = send(&clone, &[Status(503), Status(200)], get()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(layer.snapshot().retries, 1);
    }
}
