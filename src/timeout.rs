//! The route timeout: the whole request, every attempt included, answered with a 504 JSON body
//! when it runs out.
//!
//! The 504 says what went upstream before the timeout cut the request off, for the access log:
//! the layer puts an [`AttemptLog`] in the request extensions (one small allocation per request
//! on a route with a timeout), the proxy notes each attempt it sends there, and the 504 carries
//! [`Attempts`] with that count and the last attempt's [`UpstreamInfo`]: for an attempt abandoned
//! in flight its host, no status, its time so far and [`UpstreamFailure::Timeout`]; for one
//! already answered (a retry was waiting out its backoff) what the proxy recorded for it. When
//! nothing was sent (the inner service is not the proxy, or was still reading the request body
//! for a retry buffer), the 504 carries neither.
//!
//! [`UpstreamInfo`]: crate::proxy::UpstreamInfo
//! [`UpstreamFailure::Timeout`]: crate::resilience::classify::UpstreamFailure::Timeout
//!
//! ```
//! use std::time::Duration;
//! use portcullis::timeout::RouteTimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RouteTimeoutLayer::new(Duration::from_millis(10)))
//!     .service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 504);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::Rejection;
use crate::ext::AttemptLog;
use crate::ext::Attempts;
use crate::ext::RequestId;

/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::TimedOut;

/// Answers 504 `upstream_timeout` when the inner service takes longer than the timeout.
#[derive(Debug, Clone, Copy)]
pub struct RouteTimeoutLayer {
    timeout: Duration,
}

impl RouteTimeoutLayer {
    /// A timeout covering the whole request.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for RouteTimeoutLayer {
    type Service = RouteTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteTimeout { inner, timeout: self.timeout }
    }
}

/// The service made by [`RouteTimeoutLayer`].
#[derive(Debug, Clone)]
pub struct RouteTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RouteTimeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned();
        let log = AttemptLog::new();
        req.extensions_mut().insert(log.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            request_id,
            log,
        }
    }
}

pin_project! {
    /// Response future of [`RouteTimeout`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        request_id: Option<RequestId>,
        log: AttemptLog,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        std::task::ready!(this.sleep.poll(cx));
        let mut response = Rejection::upstream_timeout().into_response(this.request_id.as_ref());
        response.extensions_mut().insert(TimedOut);
        // The inner future, and the attempt in flight with it, is dropped with this one.
        let attempts = this.log.attempts();
        if attempts > 0 {
            response.extensions_mut().insert(Attempts(attempts));
        }
        if let Some(info) = this.log.abandoned() {
            response.extensions_mut().insert(info);
        }
        Poll::Ready(Ok(response))
    }
}
