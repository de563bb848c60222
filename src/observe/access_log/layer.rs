//! [`AccessLogLayer`] and [`AccessLogService`].

use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::LogSink;
use super::body::AccessLogBody;
use super::future::{Pending, ResponseFuture};
use super::record::Record;

/// Writes one JSON line per request to a [`LogSink`]; see the [module docs](super).
///
/// Put it outermost, so every response is logged, the gateway's own rejections included, and
/// so that a dropped response future really means the client went away.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    sink: LogSink,
}

impl AccessLogLayer {
    /// Logs to `sink`.
    pub fn new(sink: LogSink) -> Self {
        Self { sink }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLogService { inner, sink: self.sink.clone() }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLogService<S> {
    inner: S,
    sink: LogSink,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLogService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<AccessLogBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Before `inner.call`: the clock starts when the request enters this layer.
        let pending = self
            .sink
            .shared()
            .map(|sink| Pending { record: Box::new(Record::start(&req)), sink: sink.clone() });
        ResponseFuture::new(self.inner.call(req), pending)
    }
}
