//! Criterion benchmarks of the circuit breaker on the success path (the response classified by
//! `Outcome::of` included), each against a bare `service_fn` in the same run.
//!
//! - `resilience/bare-service-fn`: the upstream stand-in alone (a 200 carrying `UpstreamInfo`, as
//!   the proxy's responses do): `poll_ready`, `call`, and one poll of the response future.
//! - `resilience/breaker-thresholds`: `CircuitBreakerLayer` with Envoy's thresholds only.
//! - `resilience/breaker-consecutive`: thresholds plus `consecutive_failures`.
//! - `resilience/breaker-full`: thresholds, `consecutive_failures` and a `failure_rate` window
//!   (one clock read and one compare-and-swap more).
//!
//! - `resilience/gateway-request/*`: the same with a request that already carries extensions (as
//!   every request does by the time it reaches a route's stack: request id, route match, client
//!   IP), bare and behind the breaker (full) plus the `RetryBudgetLayer` — the issue's "breaker +
//!   budget + classifier on the success path".
//!
//! The breaker's cost is the difference from `bare-service-fn`.
//!
//! `cargo bench --bench resilience -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use portcullis::proxy::UpstreamInfo;
use portcullis::resilience::breaker::{CircuitBreakerLayer, FailureRate};
use portcullis::resilience::budget::{RetryBudget, RetryBudgetLayer};
use tower::{Layer, Service};

fn upstream() -> impl Service<Request<()>, Response = Response<Bytes>, Error = Infallible> + Clone {
    let host: std::sync::Arc<str> = "127.0.0.1:9000".into();
    tower::service_fn(move |_req: Request<()>| {
        let mut res = Response::new(Bytes::new());
        res.extensions_mut().insert(UpstreamInfo {
            host: host.clone(),
            status: Some(StatusCode::OK),
            latency: Duration::ZERO,
            failure: None,
        });
        async move { Ok::<_, Infallible>(res) }
    })
}

/// One request: `poll_ready`, `call`, and the response future polled to completion with a no-op
/// waker (every future here is ready at once), so no runtime cost hides the layer's.
fn bench<S>(c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, svc: S)
where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    bench_with(c, name, svc, || Request::new(()));
}

/// A request as a route's stack receives it: its extensions map already exists.
fn gateway_request() -> Request<()> {
    #[derive(Clone)]
    struct RouteMatchStandIn(#[allow(dead_code)] u64);
    let mut req = Request::new(());
    req.extensions_mut().insert(RouteMatchStandIn(7));
    req
}

fn bench_with<S>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
    request: impl Fn() -> Request<()>,
) where
    S: Service<Request<()>, Response = Response<Bytes>, Error = Infallible>,
{
    let mut cx = Context::from_waker(Waker::noop());
    c.bench_function(name, |b| {
        b.iter(|| {
            let Poll::Ready(Ok(())) = svc.poll_ready(&mut cx) else { panic!("not ready") };
            let future = pin!(svc.call(request()));
            let Poll::Ready(Ok(res)) = future.poll(&mut cx) else { panic!("not ready") };
            black_box(res)
        })
    });
}

fn breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("resilience");
    bench(&mut group, "bare-service-fn", upstream());
    let thresholds = CircuitBreakerLayer::builder().max_requests(2000).max_connections(1000).build();
    bench(&mut group, "breaker-thresholds", thresholds.layer(upstream()));
    let consecutive = CircuitBreakerLayer::builder().max_requests(2000).consecutive_failures(5).build();
    bench(&mut group, "breaker-consecutive", consecutive.layer(upstream()));
    let full = CircuitBreakerLayer::builder()
        .max_requests(2000)
        .consecutive_failures(5)
        .failure_rate(FailureRate::percent(50).window(Duration::from_secs(10)).minimum_requests(20))
        .build();
    bench(&mut group, "breaker-full", full.layer(upstream()));
    bench_with(&mut group, "gateway-request/bare", upstream(), gateway_request);
    let budget = RetryBudget::builder()
        .concurrency(20.0, 3)
        .rate(0.2, 10, Duration::from_secs(10))
        .build()
        .expect("valid budget");
    let stack = full.layer(RetryBudgetLayer::new(budget).layer(upstream()));
    bench_with(&mut group, "gateway-request/breaker-full+budget", stack, gateway_request);
    group.finish();
}

criterion_group!(benches, breaker);
criterion_main!(benches);
