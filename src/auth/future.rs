//! The response future every auth layer returns: the inner service's answer (with the verified
//! consumer copied into the response extensions for the access log) or a rejection, both through
//! the shared [`RejectOrInner`], or a boxed
//! future for the rare request that must wait (a JWKS refresh, an introspection call, a body read).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::consumer::Consumer;
use crate::future::RejectOrInner;

/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of the auth layers.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        // The inner future (`consumer` goes into its response) or a rejection (`consumer: None`).
        Decided { #[pin] future: RejectOrInner<F, Response<B>>, consumer: Option<Consumer> },
        Boxed { future: BoxFuture<Result<Response<B>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// The inner service's future; `consumer` goes into the response extensions.
    pub(crate) fn inner(future: F, consumer: Option<Consumer>) -> Self {
        Self { state: State::Decided { future: RejectOrInner::inner(future), consumer } }
    }

    /// A rejection decided in `call`.
    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self { state: State::Decided { future: RejectOrInner::rejected(response), consumer: None } }
    }

    /// A request that has to wait before it is decided.
    pub(crate) fn boxed(future: BoxFuture<Result<Response<B>, E>>) -> Self {
        Self { state: State::Boxed { future } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Decided { future, consumer } => {
                let mut response = std::task::ready!(future.poll(cx))?;
                if let Some(consumer) = consumer.take() {
                    response.extensions_mut().insert(consumer);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
