//! One `tracing` span per request, `portcullis.request`, so that a service with a tracing
//! subscriber (an OpenTelemetry exporter through `tracing-opentelemetry`, a `fmt` layer, ...)
//! sees every gateway request, and everything logged while handling it nests under it.
//!
//! The span is at `INFO` level on target `portcullis::request`. Its fields:
//!
//! | field | when | value |
//! |---|---|---|
//! | `method`, `path` | entry | request method; the path as received, never the query |
//! | `request_id` | entry | [`RequestId`] request extension (put [`RequestIdLayer`] outside this layer) |
//! | `otel.kind` | entry | `server` |
//! | `route`, `service` | response | names from [`MatchedRoute`], when a route matched |
//! | `consumer` | response | the verified [`Consumer`]'s id (never a credential); absent when anonymous |
//! | `status` | response | response status (`500` when the inner service failed) |
//! | `outcome` | response | `ok`, `auth_failed`, `rate_limited`, `no_route`, `client_error`, `upstream_error` (the upstream answered 5xx), `gateway_error` (502/503/504 produced by the gateway: connect failure, timeout, overload) |
//! | `otel.status_code` | response | `ERROR` for a 5xx |
//!
//! When no subscriber wants the span — no subscriber at all, or a filter that leaves out
//! `portcullis::request` at `INFO` — `tracing` answers from its per-callsite cache, the span is
//! disabled, no field is computed and the layer costs a few nanoseconds (`benches/metrics.rs`).
//! A subscriber that does want it (any subscriber enabled at `INFO` for this target, a plain
//! `fmt` one included) pays for one span per request; turn it off with a filter such as
//! `portcullis::request=off` when only the events are wanted.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use portcullis::observe::request_id::RequestIdLayer;
//! use portcullis::observe::request_span::RequestSpanLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // With an OpenTelemetry pipeline installed, e.g.
//! //     tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer)).init();
//! // each request becomes a server span named `portcullis.request`.
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .layer(RequestSpanLayer::new())
//!     .service_fn(|_req: Request<()>| async {
//!         tracing::info!("handled"); // recorded inside the request's span
//!         Ok::<_, Infallible>(Response::new(Bytes::from_static(b"hi")))
//!     });
//! let response = svc.oneshot(Request::get("/hello?token=secret").body(()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # }
//! ```
//!
//! [`RequestId`]: crate::ext::RequestId
//! [`RequestIdLayer`]: crate::observe::request_id::RequestIdLayer
//! [`MatchedRoute`]: crate::ext::MatchedRoute
//! [`Consumer`]: crate::consumer::Consumer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use crate::consumer::Consumer;
use crate::ext::AuthFailure;
use crate::ext::MatchedRoute;
use crate::ext::RateLimitOutcome;
use crate::ext::RequestId;

/// Wraps each request in a `portcullis.request` span; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpanLayer {
    _private: (),
}

impl RequestSpanLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// The service made by [`RequestSpanLayer`].
#[derive(Debug, Clone)]
pub struct RequestSpan<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestSpan<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The field values are only evaluated when a subscriber enables the span.
        let span = tracing::info_span!(
            target: "portcullis::request",
            "portcullis.request",
            method = %req.method(),
            path = req.uri().path(),
            request_id = req.extensions().get::<RequestId>().map(RequestId::as_str),
            otel.kind = "server",
            route = Empty,
            service = Empty,
            consumer = Empty,
            status = Empty,
            outcome = Empty,
            otel.status_code = Empty,
        );
        if span.is_disabled() {
            return ResponseFuture { inner: self.inner.call(req), span };
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture { inner, span }
    }
}

pin_project! {
    /// Response future of [`RequestSpan`]: polls the inner future inside the span and records
    /// the response fields.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.span.is_disabled() {
            return this.inner.poll(cx);
        }
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        match &result {
            Ok(response) => record(this.span, response.status().as_u16(), response.extensions()),
            Err(_) => record(this.span, 500, &Extensions::new()),
        }
        Poll::Ready(result)
    }
}

fn record(span: &Span, status: u16, ext: &Extensions) {
    let route = ext.get::<MatchedRoute>().map(|m| &m.0);
    if let Some(route) = route {
        if let Some(name) = route.name.as_deref() {
            span.record("route", name);
        }
        if let Some(service) = route.service_name.as_deref() {
            span.record("service", service);
        }
    }
    if let Some(consumer) = ext.get::<Consumer>().filter(|c| !c.anonymous) {
        span.record("consumer", &*consumer.id);
    }
    span.record("status", status);
    span.record("outcome", outcome(status, ext));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// What happened to the request, in one word (see the module docs).
pub(crate) fn outcome(status: u16, ext: &Extensions) -> &'static str {
    if ext.get::<AuthFailure>().is_some() {
        return "auth_failed";
    }
    if ext.get::<RateLimitOutcome>().is_some_and(|o| *o == RateLimitOutcome::Limited) {
        return "rate_limited";
    }
    if status < 400 {
        "ok"
    } else if status == 404 && ext.get::<MatchedRoute>().is_none() {
        "no_route"
    } else if status < 500 {
        "client_error"
    } else if upstream_answered(ext) {
        "upstream_error"
    } else {
        "gateway_error"
    }
}

#[cfg(feature = "proxy")]
fn upstream_answered(ext: &Extensions) -> bool {
    // A route timeout's 504 may name the last answered attempt; the 504 is still the gateway's.
    ext.get::<crate::ext::UpstreamInfo>().is_some_and(|u| u.status.is_some())
        && ext.get::<crate::ext::TimedOut>().is_none()
}

#[cfg(not(feature = "proxy"))]
fn upstream_answered(_ext: &Extensions) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Metadata, Subscriber};

    use super::*;
    use crate::ext::RouteInfo;

    /// A span's name and fields.
    type SpanRecord = (String, HashMap<String, String>);

    /// A subscriber that keeps every field of every span, and the span each event was in.
    #[derive(Clone, Default)]
    struct Recorder {
        spans: Arc<Mutex<Vec<SpanRecord>>>,
        events_in: Arc<Mutex<Vec<Option<u64>>>>,
        current: Arc<Mutex<Vec<u64>>>,
    }

    struct Fields<'a>(&'a mut HashMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, attrs: &Attributes<'_>) -> Id {
            let mut spans = self.spans.lock().unwrap();
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            spans.push((attrs.metadata().name().to_owned(), fields));
            Id::from_u64(spans.len() as u64)
        }
        fn record(&self, id: &Id, values: &Record<'_>) {
            let mut spans = self.spans.lock().unwrap();
            let index = usize::try_from(id.into_u64()).unwrap() - 1;
            values.record(&mut Fields(&mut spans[index].1));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &tracing::Event<'_>) {
            let current = self.current.lock().unwrap().last().copied();
            self.events_in.lock().unwrap().push(current);
        }
        fn enter(&self, id: &Id) {
            self.current.lock().unwrap().push(id.into_u64());
        }
        fn exit(&self, _: &Id) {
            self.current.lock().unwrap().pop();
        }
    }

    #[tokio::test]
    async fn one_span_per_request_with_the_response_fields() {
        let recorder = Recorder::default();
        let _guard = tracing::subscriber::set_default(recorder.clone());
        let svc =
            ServiceBuilder::new().layer(RequestSpanLayer::new()).service_fn(|_req: Request<()>| async {
                tracing::info!("inside");
                let mut res = Response::new(Bytes::new());
                *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                res.extensions_mut().insert(MatchedRoute(Arc::new(RouteInfo {
                    name: Some("orders".into()),
                    service_name: Some("orders-svc".into()),
                    preserve_host: false,
                })));
                res.extensions_mut().insert(RateLimitOutcome::Limited);
                res.extensions_mut().insert(Consumer { id: "acme".into(), ..Consumer::default() });
                Ok::<_, Infallible>(res)
            });
        let req = Request::post("/orders/1?apikey=secret").body(()).unwrap();
        svc.oneshot(req).await.unwrap();
        let spans = recorder.spans.lock().unwrap().clone();
        assert_eq!(spans.len(), 1);
        let (name, fields) = &spans[0];
        assert_eq!(name, "portcullis.request");
        assert_eq!(fields["method"], "POST");
        assert_eq!(fields["path"], "/orders/1");
        assert_eq!(fields["route"], "orders");
        assert_eq!(fields["service"], "orders-svc");
        assert_eq!(fields["consumer"], "acme");
        assert_eq!(fields["status"], "429");
        assert_eq!(fields["outcome"], "rate_limited");
        assert!(!fields.contains_key("otel.status_code"));
        assert!(fields.values().all(|v| !v.contains("secret")), "{fields:?}");
        assert_eq!(*recorder.events_in.lock().unwrap(), vec![Some(1)], "the event is inside the span");
    }

    #[test]
    fn outcomes() {
        let mut ext = Extensions::new();
        assert_eq!(outcome(200, &ext), "ok");
        assert_eq!(outcome(404, &ext), "no_route");
        assert_eq!(outcome(413, &ext), "client_error");
        assert_eq!(outcome(502, &ext), "gateway_error");
        ext.insert(MatchedRoute(Arc::new(RouteInfo::default())));
        assert_eq!(outcome(404, &ext), "client_error");
        #[cfg(feature = "proxy")]
        {
            ext.insert(crate::ext::UpstreamInfo {
                host: "h".into(),
                status: Some(StatusCode::INTERNAL_SERVER_ERROR),
                latency: std::time::Duration::ZERO,
                failure: None,
            });
            assert_eq!(outcome(500, &ext), "upstream_error");
        }
        ext.insert(AuthFailure { plugin: "jwt", reason: "invalid_token" });
        assert_eq!(outcome(401, &ext), "auth_failed");
    }
}
