//! [`MetricsLayer`], its service and its response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::routes::Observation;
use super::{Metrics, Shared};
use crate::ext::RateLimitOutcome;
use crate::ext::{AuthFailure, MatchedRoute};

/// Records every request into a [`Metrics`]; see the [module docs](super).
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl MetricsLayer {
    /// A layer recording into `metrics` (clones of the layer and of `metrics` share the series).
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }

    /// The metrics this layer records into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, shared: self.metrics.shared.clone() }
    }
}

/// The service made by [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MetricsService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        ResponseFuture { inner: self.inner.call(req), started: Instant::now(), shared: self.shared.clone() }
    }
}

pin_project! {
    /// Response future of [`MetricsService`]: records when the response head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        shared: Arc<Shared>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").field("started", &self.started).finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let total = this.started.elapsed();
        match &result {
            Ok(response) => this.shared.record(response.status().as_u16(), response.extensions(), total),
            // The access log writes 500 for a failed inner service; count it the same way.
            Err(_) => this.shared.record(500, &Extensions::new(), total),
        }
        Poll::Ready(result)
    }
}

impl Shared {
    fn record(&self, status: u16, ext: &Extensions, total: std::time::Duration) {
        #[cfg(feature = "proxy")]
        let upstream = ext.get::<crate::ext::UpstreamInfo>().map(|u| u.latency);
        #[cfg(not(feature = "proxy"))]
        let upstream = None;
        let rate_limit = ext.get::<RateLimitOutcome>().map(|o| o.index());
        let observation = Observation { status, total, upstream, rate_limit };
        let route = ext.get::<MatchedRoute>().map(|m| &m.0);
        self.routes.with(route, |metrics| metrics.record(&self.families, observation));
        if let Some(failure) = ext.get::<AuthFailure>() {
            self.families.auth_failure(failure.plugin, failure.reason);
        }
    }
}
