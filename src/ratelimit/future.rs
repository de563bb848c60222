//! The response future: deciding (network stores), delaying (leaky bucket), calling.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use super::layer::{Options, Shared};
use super::service::{Action, decide};
use super::store::PendingVerdict;
use crate::ext::RateLimitOutcome;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Rejected { response: Option<S::Response> },
        Deciding {
            pending: PendingVerdict,
            request: Option<Request<ReqBody>>,
            service: Option<S>,
            options: Options,
            shared: Arc<Shared>,
        },
        Delaying {
            sleep: Pin<Box<Sleep>>,
            request: Option<Request<ReqBody>>,
            service: Option<S>,
            headers: Option<HeaderMap>,
            outcome: RateLimitOutcome,
        },
        Calling {
            #[pin]
            future: S::Future,
            headers: Option<HeaderMap>,
            outcome: RateLimitOutcome,
        },
    }
}

impl<S: Service<Request<ReqBody>>, ReqBody> std::fmt::Debug for ResponseFuture<S, ReqBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    pub(crate) fn rejected(response: Response<ResBody>) -> Self {
        Self { state: State::Rejected { response: Some(response) } }
    }

    pub(crate) fn calling(future: S::Future, headers: Option<HeaderMap>, outcome: RateLimitOutcome) -> Self {
        Self { state: State::Calling { future, headers, outcome } }
    }

    pub(crate) fn delaying(
        delay: Duration,
        request: Request<ReqBody>,
        service: S,
        headers: Option<HeaderMap>,
        outcome: RateLimitOutcome,
    ) -> Self {
        Self {
            state: State::Delaying {
                sleep: Box::pin(tokio::time::sleep(delay)),
                request: Some(request),
                service: Some(service),
                headers,
                outcome,
            },
        }
    }

    pub(crate) fn deciding(
        pending: PendingVerdict,
        request: Request<ReqBody>,
        service: S,
        options: Options,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Deciding {
                pending,
                request: Some(request),
                service: Some(service),
                options,
                shared,
            },
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Rejected { response } => {
                    // Polled again after completion: tower futures may panic; an empty 500 is kinder.
                    let response = response.take().unwrap_or_else(|| {
                        let mut r = Response::new(ResBody::from(Bytes::new()));
                        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    });
                    return Poll::Ready(Ok(response));
                }
                StateProj::Deciding { pending, request, service, options, shared } => {
                    let result = ready!(pending.as_mut().poll(cx));
                    let (Some(request), Some(service)) = (request.take(), service.take()) else {
                        return Poll::Pending;
                    };
                    match decide(options, shared, result, &request) {
                        Action::Reject(response) => State::Rejected { response: Some(response) },
                        Action::Forward { delay, headers, outcome } if delay.is_zero() => {
                            let mut service = service;
                            State::Calling { future: service.call(request), headers, outcome }
                        }
                        Action::Forward { delay, headers, outcome } => State::Delaying {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                            request: Some(request),
                            service: Some(service),
                            headers,
                            outcome,
                        },
                    }
                }
                StateProj::Delaying { sleep, request, service, headers, outcome } => {
                    ready!(sleep.as_mut().poll(cx));
                    let (Some(request), Some(mut service)) = (request.take(), service.take()) else {
                        return Poll::Pending;
                    };
                    State::Calling {
                        future: service.call(request),
                        headers: headers.take(),
                        outcome: *outcome,
                    }
                }
                StateProj::Calling { future, headers, outcome } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        for (name, value) in headers {
                            if let Some(name) = name {
                                response.headers_mut().insert(name, value);
                            }
                        }
                    }
                    response.extensions_mut().insert(*outcome);
                    return Poll::Ready(Ok(response));
                }
            };
            state.set(next);
        }
    }
}
