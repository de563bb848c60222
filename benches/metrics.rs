//! Criterion benchmarks of what observing a request costs, each against the same bare
//! `service_fn` in the same run. The handler answers like the gateway's inner stack does: the
//! response carries `MatchedRoute`, `UpstreamInfo` and `RateLimitOutcome` extensions (inserted
//! in every variant, the bare one included, so the difference is the layer alone).
//!
//! - `observe/bare-service`: the handler alone.
//! - `observe/metrics`: `MetricsLayer` on a proxied, rate-limited route (request counter, three
//!   histograms, the rate-limit counter).
//! - `observe/metrics-no-route`: `MetricsLayer` on a response no route produced (404).
//! - `observe/span-no-subscriber`: `RequestSpanLayer` with no tracing subscriber at all.
//! - `observe/span-filtered-out`: `RequestSpanLayer` under a subscriber that does not want
//!   `portcullis::request` spans (as an `EnvFilter` leaving the target out would).
//! - `observe/metrics+span`: both, as the gateway stacks them, with no subscriber.
//! - `added/*` (printed after the criterion groups): the same layers timed against the bare
//!   service in interleaved chunks, keeping the fastest chunk of each, so that a loaded shared
//!   machine (whose preemptions make criterion's means noisy) cannot hide or inflate the
//!   difference. This is the number to hold against the budget (≤ 150 ns added per request).
//!
//! `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use portcullis::observe::access_log::RateLimitOutcome;
use portcullis::observe::metrics::{Metrics, MetricsLayer};
use portcullis::observe::request_span::RequestSpanLayer;
use portcullis::proxy::UpstreamInfo;
use portcullis::router::{MatchedRoute, RouteInfo};
use tower::{Layer, Service};

/// Polls a future that is ready without waiting (every service here answers at once).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("benchmarked future was not immediately ready"),
    }
}

type Handler = tower::util::ServiceFn<
    Box<dyn FnMut(Request<()>) -> std::future::Ready<Result<Response<Bytes>, Infallible>>>,
>;

/// The inner stack's answer: proxied (upstream 2 ms), rate limit allowed, route `orders`.
fn handler(route: Option<Arc<RouteInfo>>) -> Handler {
    let host: Arc<str> = "10.0.0.5:8080".into();
    tower::service_fn(Box::new(move |_req: Request<()>| {
        let mut res = Response::new(Bytes::new());
        match &route {
            Some(route) => {
                let ext = res.extensions_mut();
                ext.insert(MatchedRoute(route.clone()));
                ext.insert(UpstreamInfo {
                    host: host.clone(),
                    status: Some(StatusCode::OK),
                    latency: Duration::from_millis(2),
                    failure: None,
                });
                ext.insert(RateLimitOutcome::Allowed);
            }
            None => *res.status_mut() = StatusCode::NOT_FOUND,
        }
        std::future::ready(Ok(res))
    }))
}

fn request() -> Request<()> {
    Request::get("/orders/42?page=2").header("user-agent", "bench").body(()).unwrap()
}

fn run<S>(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, mut svc: S)
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    group.bench_function(name, |b| {
        b.iter(|| {
            let res = ready(svc.call(black_box(request()))).unwrap();
            black_box(res)
        })
    });
}

/// The fastest per-call time of `svc` over `chunks` chunks of 100 calls.
fn fastest_chunk<S>(svc: &mut S) -> Duration
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    let start = Instant::now();
    for _ in 0..100 {
        black_box(ready(svc.call(black_box(request()))).unwrap());
    }
    start.elapsed() / 100
}

/// What `layered` adds to `bare`, robust to a loaded machine: both are timed in interleaved
/// chunks of 100 calls, 4000 chunks each, and the fastest chunk of each is kept (a chunk that
/// was preempted or shared its core is slower, never faster). Printed, not fed to criterion.
fn added<A, B>(name: &str, mut bare: A, mut layered: B)
where
    A: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
    B: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    let (mut base, mut with) = (Duration::MAX, Duration::MAX);
    for i in 0..4000 {
        if i % 2 == 0 {
            base = base.min(fastest_chunk(&mut bare));
            with = with.min(fastest_chunk(&mut layered));
        } else {
            with = with.min(fastest_chunk(&mut layered));
            base = base.min(fastest_chunk(&mut bare));
        }
    }
    let delta = with.as_nanos() as i128 - base.as_nanos() as i128;
    println!(
        "added/{name:<20} bare {:>5} ns  layered {:>5} ns  added {delta:>4} ns",
        base.as_nanos(),
        with.as_nanos()
    );
}

/// A subscriber interested in nothing: every callsite is disabled once and cached.
struct NotInterested;

impl tracing::Subscriber for NotInterested {
    fn register_callsite(&self, _: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::never()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn observe(c: &mut Criterion) {
    let route = Arc::new(RouteInfo {
        name: Some("orders".into()),
        service_name: Some("orders-svc".into()),
        preserve_host: false,
    });
    let metrics = Metrics::new();
    let layer = MetricsLayer::new(metrics.clone());
    let mut group = c.benchmark_group("observe");
    run(&mut group, "bare-service", handler(Some(route.clone())));
    run(&mut group, "metrics", layer.layer(handler(Some(route.clone()))));
    run(&mut group, "metrics-no-route", layer.layer(handler(None)));
    run(&mut group, "span-no-subscriber", RequestSpanLayer::new().layer(handler(Some(route.clone()))));
    run(&mut group, "metrics+span", RequestSpanLayer::new().layer(layer.layer(handler(Some(route.clone())))));
    tracing::subscriber::with_default(NotInterested, || {
        run(&mut group, "span-filtered-out", RequestSpanLayer::new().layer(handler(Some(route.clone()))));
    });
    group.finish();

    let bare = || handler(Some(route.clone()));
    added("metrics", bare(), layer.layer(bare()));
    added("metrics-no-route", handler(None), layer.layer(handler(None)));
    added("span-no-subscriber", bare(), RequestSpanLayer::new().layer(bare()));
    added("metrics+span", bare(), RequestSpanLayer::new().layer(layer.layer(bare())));
    tracing::subscriber::with_default(NotInterested, || {
        added("span-filtered-out", bare(), RequestSpanLayer::new().layer(bare()));
    });
    // The series moved: the bench measured real recording, not a no-op.
    assert!(
        metrics
            .render()
            .contains(r#"portcullis_requests_total{route="orders",service="orders-svc",status_class="2xx"}"#)
    );
}

criterion_group!(benches, observe);
criterion_main!(benches);
