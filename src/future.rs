//! The response future most layers return: a response the layer decided itself (a rejection), or
//! the inner service's future, polled through.
//!
//! Written once here rather than in each layer (issue 14 item 4). A layer whose future also
//! post-processes the inner response (the sanitize layer's extensions, for one) wraps this one.
//! It is on the ground floor: it knows nothing of any layer.
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{Ready, ready};
//!
//! use http::{Response, StatusCode};
//! use portcullis::future::RejectOrInner;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner: RejectOrInner<Ready<Result<Response<String>, Infallible>>, Response<String>> =
//!     RejectOrInner::inner(ready(Ok(Response::new("from upstream".into()))));
//! assert_eq!(inner.await.unwrap().body(), "from upstream");
//!
//! let mut denied = Response::new(String::from("{}"));
//! *denied.status_mut() = StatusCode::FORBIDDEN;
//! let rejected: RejectOrInner<Ready<Result<Response<String>, Infallible>>, Response<String>> =
//!     RejectOrInner::rejected(denied);
//! assert_eq!(rejected.await.unwrap().status(), StatusCode::FORBIDDEN);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// A response decided by the layer, or the inner service's future.
    ///
    /// `F` is the inner future (`Output = Result<R, E>`), `R` the response type, usually
    /// `http::Response<B>` (a layer generic over its inner service names it `S::Response`). The
    /// rejected response is answered on the first poll, and a request that took it never reached
    /// the inner service. Polled again after it answered, it stays pending.
    pub struct RejectOrInner<F, R> {
        #[pin]
        kind: Kind<F, R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R> {
        Rejected { response: Option<R> },
        Inner { #[pin] inner: F },
    }
}

impl<F, R> RejectOrInner<F, R> {
    /// Answers `response` without calling the inner service.
    pub fn rejected(response: R) -> Self {
        Self { kind: Kind::Rejected { response: Some(response) } }
    }

    /// Polls the inner service's future `inner` through.
    pub fn inner(inner: F) -> Self {
        Self { kind: Kind::Inner { inner } }
    }

    /// Whether this answers a rejection (rather than the inner future).
    pub fn is_rejected(&self) -> bool {
        matches!(self.kind, Kind::Rejected { .. })
    }
}

impl<F, R> fmt::Debug for RejectOrInner<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_rejected() { "Rejected" } else { "Inner" };
        f.debug_struct("RejectOrInner").field("kind", &kind).finish_non_exhaustive()
    }
}

impl<F, R, E> Future for RejectOrInner<F, R>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                // Already answered: the `Future` contract allows anything here but a panic on a
                // request path is not wanted.
                None => Poll::Pending,
            },
            KindProj::Inner { inner } => inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::{Ready, ready};

    use http::{Response, StatusCode};

    use super::*;

    type Fut = RejectOrInner<Ready<Result<Response<&'static str>, Infallible>>, Response<&'static str>>;

    #[tokio::test]
    async fn answers_the_rejection_or_the_inner_response() {
        let mut denied = Response::new("denied");
        *denied.status_mut() = StatusCode::UNAUTHORIZED;
        let rejected = Fut::rejected(denied);
        assert!(rejected.is_rejected());
        assert_eq!(format!("{rejected:?}"), "RejectOrInner { kind: \"Rejected\", .. }");
        let response = rejected.await.unwrap();
        assert_eq!((response.status(), *response.body()), (StatusCode::UNAUTHORIZED, "denied"));

        let inner = Fut::inner(ready(Ok(Response::new("inner"))));
        assert!(!inner.is_rejected());
        let response = inner.await.unwrap();
        assert_eq!((response.status(), *response.body()), (StatusCode::OK, "inner"));
    }
}
