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

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client_ip::{PeerAddr, TrustedProxies};

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
}

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
        req.headers_mut().insert(X_REQUEST_ID.clone(), id.0.clone());
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
            response.headers_mut().insert(X_REQUEST_ID.clone(), id.0);
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
