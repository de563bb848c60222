//! `X-Request-ID`: one id per request, sent upstream, echoed to the client, logged, and written
//! in every error body.
//!
//! An incoming id is kept only when it comes from a trusted proxy and is well formed; anything
//! else is replaced, so a client cannot inject log lines or collide with another request's id.
//!
//! ```
//! use portcullis::observe::request_id::{RequestId, RequestIdLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service_fn(|req: http::Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().clone();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(id.as_str().to_owned()))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], res.body().as_str());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client_ip::{PeerAddr, TrustedProxies};
/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::{RequestId, X_REQUEST_ID};

/// Assigns every request a [`RequestId`]; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer {
    trusted: TrustedProxies,
}

impl RequestIdLayer {
    /// Always generates a fresh id.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps a well-formed incoming `X-Request-ID` when the socket peer is one of `trusted`.
    pub fn keep_incoming_from(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner, trusted: self.trusted.clone() }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    trusted: TrustedProxies,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let peer_trusted = !self.trusted.is_empty()
            && req.extensions().get::<PeerAddr>().is_some_and(|p| self.trusted.contains(p.0.ip()));
        let incoming =
            if peer_trusted { req.headers().get(&X_REQUEST_ID).and_then(RequestId::parse) } else { None };
        let id = incoming.unwrap_or_else(RequestId::generate);
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.header_value().clone());
        req.extensions_mut().insert(id.clone());
        ResponseFuture { inner: self.inner.call(req), id: Some(id) }
    }
}

pin_project! {
    /// Response future of [`RequestIdService`]: echoes the id on the response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id.into_header_value());
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    async fn echo(req: Request<()>) -> Result<Response<String>, Infallible> {
        let id = req.extensions().get::<RequestId>().map(|i| i.as_str().to_owned()).unwrap_or_default();
        assert_eq!(req.headers()[&X_REQUEST_ID], id.as_str());
        Ok(Response::new(id))
    }

    fn request(id: &str, peer: &str) -> Request<()> {
        let mut req = Request::builder().header("x-request-id", id).body(()).unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    }

    #[tokio::test]
    async fn untrusted_incoming_id_is_replaced() {
        let svc = ServiceBuilder::new().layer(RequestIdLayer::new()).service_fn(echo);
        let res = svc.oneshot(request("client-chosen", "127.0.0.1:1234")).await.unwrap();
        assert_ne!(res.body(), "client-chosen");
        assert_eq!(res.body().len(), 36);
        assert_eq!(res.headers()["x-request-id"], res.body().as_str());
    }

    #[tokio::test]
    async fn trusted_well_formed_id_is_kept_malformed_is_not() {
        let layer = RequestIdLayer::new().keep_incoming_from(TrustedProxies::parse(["127.0.0.1"]).unwrap());
        let svc = ServiceBuilder::new().layer(layer).service_fn(echo);
        let res = svc.clone().oneshot(request("abc-123", "127.0.0.1:1")).await.unwrap();
        assert_eq!(res.body(), "abc-123");
        let res = svc.oneshot(request("bad id\"", "127.0.0.1:1")).await.unwrap();
        assert_ne!(res.body(), "bad id\"");
    }
}
