//! [`AccessLogBody`]: counts the bytes sent and emits the line when the body ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::future::Pending;

pin_project! {
    /// The response body of [`AccessLogService`](super::AccessLogService): `B`, unchanged, plus
    /// a byte count.
    ///
    /// The line is sent once, at the first of: the end of the stream, a body error, or the body
    /// being dropped (the client went away, or the server stopped polling a finished body).
    #[derive(Debug)]
    pub struct AccessLogBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for AccessLogBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(pending) = this.project().pending.take() {
                pending.emit();
            }
        }
    }
}

impl<B> AccessLogBody<B> {
    pub(super) fn new(inner: B, pending: Option<Pending>) -> Self {
        Self { inner, pending }
    }
}

impl<B: Body> Body for AccessLogBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let ended = match &polled {
            Poll::Pending => false,
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(pending)) = (frame.data_ref(), this.pending.as_mut()) {
                    pending.record.bytes_sent += data.remaining() as u64;
                }
                this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_)) | None) => true,
        };
        if ended {
            if let Some(pending) = this.pending.take() {
                pending.emit();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
