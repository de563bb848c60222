//! The route timeout: the whole request, every attempt included, answered with a 504 JSON body
//! when it runs out.
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned();
        ResponseFuture { inner: self.inner.call(req), sleep: tokio::time::sleep(self.timeout), request_id }
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
        Poll::Ready(Ok(response))
    }
}
