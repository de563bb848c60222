//! [`ResponseFuture`]: completes the record with the response head.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::AccessLogBody;
use super::record::{CLIENT_CLOSED_REQUEST, Record};
use super::sink::Shared;

/// A record on its way to the sink.
///
/// Boxed once at entry: the future, the body and the channel's slots then move a pointer, not
/// ~350 bytes, and the channel's eagerly allocated slots stay small.
#[derive(Debug)]
pub(super) struct Pending {
    // Boxed so futures and bodies move a pointer, not the record; the box is freed on this
    // thread after the record is copied into the channel.
    pub(super) record: Box<Record>,
    pub(super) sink: Arc<Shared>,
}

impl Pending {
    pub(super) fn emit(self) {
        self.sink.send(*self.record);
    }
}

pin_project! {
    /// Response future of [`AccessLogService`](super::AccessLogService).
    ///
    /// Logs right away (status 500) if the inner service fails, and (status 499) if it is dropped
    /// before the response head is ready; otherwise hands the record to the [`AccessLogBody`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(mut pending) = this.project().pending.take() {
                pending.record.no_response(CLIENT_CLOSED_REQUEST);
                pending.emit();
            }
        }
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, pending: Option<Pending>) -> Self {
        Self { inner, pending }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<AccessLogBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut pending = this.pending.take();
        match result {
            Ok(response) => {
                if let Some(pending) = &mut pending {
                    pending.record.head(response.status(), response.headers(), response.extensions());
                }
                Poll::Ready(Ok(response.map(|body| AccessLogBody::new(body, pending))))
            }
            Err(error) => {
                if let Some(mut pending) = pending {
                    pending.record.no_response(500);
                    pending.emit();
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
