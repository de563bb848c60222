//! The service: asks the store, then rejects, delays or forwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::Service;

use super::decision::SECOND;
use super::future::ResponseFuture;
use super::layer::{Options, Shared};
use super::policy::{Policy, Verdict};
use super::store::{Decided, StoreError};
use crate::error::Rejection;
use crate::ext::RateLimitOutcome;

/// The service made by the rate-limit layers.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    options: Options,
    shared: Arc<Shared>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, options: Options, shared: Arc<Shared>) -> Self {
        Self { inner, options, shared }
    }
}

/// What to do with a request once the store has answered.
pub(crate) enum Action<B> {
    /// Answer this response.
    Reject(Response<B>),
    /// Forward after `delay`, adding `headers` and the outcome to the response.
    Forward { delay: Duration, headers: Option<HeaderMap>, outcome: RateLimitOutcome },
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (key, req) = self.options.limit_by.key(req, self.options.ipv6_prefix);
        match self.shared.store.decide(&key, &self.options.policy) {
            Decided::Ready(result) => match decide(&self.options, &self.shared, result, &req) {
                Action::Reject(response) => ResponseFuture::rejected(response),
                Action::Forward { delay, headers, outcome } if delay.is_zero() => {
                    ResponseFuture::calling(self.inner.call(req), headers, outcome)
                }
                Action::Forward { delay, headers, outcome } => {
                    ResponseFuture::delaying(delay, req, take_ready(&mut self.inner), headers, outcome)
                }
            },
            Decided::Pending(pending) => ResponseFuture::deciding(
                pending,
                req,
                take_ready(&mut self.inner),
                self.options.clone(),
                self.shared.clone(),
            ),
        }
    }
}

/// The service `poll_ready` prepared, leaving a fresh clone in its place (tower's pattern for a
/// call that happens later).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Turns the store's answer into an action: the one place where a verdict becomes HTTP.
pub(crate) fn decide<B: From<Bytes>, R>(
    options: &Options,
    shared: &Shared,
    result: Result<Verdict, StoreError>,
    req: &Request<R>,
) -> Action<B> {
    let verdict = match result {
        Ok(verdict) => verdict,
        Err(error) => {
            let stats = &shared.stats;
            match &error {
                StoreError::Unavailable(_) => stats.unavailable.fetch_add(1, Ordering::Relaxed),
                StoreError::Script(_) => stats.script_errors.fetch_add(1, Ordering::Relaxed),
            };
            tracing::warn!(target: "portcullis::ratelimit", %error, "rate-limit decision failed");
            if options.fault_tolerant {
                stats.bypassed.fetch_add(1, Ordering::Relaxed);
                return Action::Forward {
                    delay: Duration::ZERO,
                    headers: None,
                    outcome: RateLimitOutcome::Bypassed,
                };
            }
            let mut response = Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                "rate limiting is unavailable",
            )
            .into_response_for(req);
            response.extensions_mut().insert(RateLimitOutcome::Unavailable);
            return Action::Reject(response);
        }
    };
    let headers = (!options.hide_client_headers).then(|| headers(&verdict));
    if verdict.allowed() {
        let delay = verdict.governing().1.delay;
        return Action::Forward {
            delay: Duration::from_micros(delay),
            headers,
            outcome: RateLimitOutcome::Allowed,
        };
    }
    let (period, decision) = verdict.governing();
    let retry_after = decision.retry_after_secs();
    let message = match &options.error_message {
        Some(message) => message.clone(),
        None => {
            default_message(&options.policy, period.map(|p| p.name()), decision.limit, retry_after).into()
        }
    };
    let mut rejection = Rejection::new(options.error_code, "rate_limit_exceeded", message)
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
    for (name, value) in headers.into_iter().flatten() {
        if let Some(name) = name {
            rejection = rejection.with_header(name, value);
        }
    }
    let mut response = rejection.into_response_for(req);
    response.extensions_mut().insert(RateLimitOutcome::Limited);
    Action::Reject(response)
}

fn default_message(policy: &Policy, period: Option<&str>, limit: u64, retry_after: u64) -> String {
    let secs = if retry_after == 1 { "second" } else { "seconds" };
    match (policy, period) {
        (Policy::LeakyBucket(_), _) => {
            format!("Request queue of {limit} is full. Retry after {retry_after} {secs}.")
        }
        (_, Some(period)) => {
            format!("Request limit of {limit}/{period} exceeded. Retry after {retry_after} {secs}.")
        }
        (_, None) => format!("Request limit of {limit} exceeded. Retry after {retry_after} {secs}."),
    }
}

static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The rate-limit headers of a verdict: the governing window's, then Kong's per-window ones.
fn headers(verdict: &Verdict) -> HeaderMap {
    let mut map = HeaderMap::new();
    if verdict.decisions().is_empty() {
        return map;
    }
    let (_, d) = verdict.governing();
    map.insert(X_LIMIT.clone(), d.limit.into());
    map.insert(X_REMAINING.clone(), d.remaining.into());
    map.insert(X_RESET.clone(), (verdict.now + d.reset).div_ceil(SECOND).into());
    map.insert(LIMIT.clone(), d.limit.into());
    map.insert(REMAINING.clone(), d.remaining.into());
    map.insert(RESET.clone(), d.reset_secs().into());
    for (period, d) in verdict.decisions() {
        let Some(period) = period else { continue };
        let limit = format!("x-ratelimit-limit-{}", period.name());
        let remaining = format!("x-ratelimit-remaining-{}", period.name());
        if let (Ok(limit), Ok(remaining)) = (HeaderName::try_from(limit), HeaderName::try_from(remaining)) {
            map.insert(limit, d.limit.into());
            map.insert(remaining, d.remaining.into());
        }
    }
    map
}
