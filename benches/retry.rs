//! Criterion benchmarks of the retry layers on the success path (the upstream answers 200 at
//! once), against the bare service in the same run.
//!
//! - `retry/bare`: a `service_fn` answering 200 with the proxy's `UpstreamInfo`.
//! - `retry/retry`: the seed's policy without a per-try timeout (`5xx,reset,connect-failure,
//!   retriable-4xx`, 2 retries, `previous_hosts`) in front of it.
//! - `retry/retry+per-try-timeout`: the same with `per_try_timeout: 2s` (a timer per request).
//! - `retry/budget+retry`: `RetryBudgetLayer` (concurrency, rate and `max_retries` limits) outside
//!   the retry layer, as the gateway stacks them.
//!
//! - `retry/head-copy`: building the request and copying its head (method, URI, headers,
//!   extensions) as the retry layer must before the first try, which the upstream consumes: the
//!   bulk of the retry layer's cost, shown apart.
//!
//! Every variant builds the same request (6 headers, 2 extensions, as the gateway's are when they
//! reach the retry layer), so the differences are the layers' own cost.
//!
//! `cargo bench --bench retry -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response, StatusCode};
use portcullis::Body;
use portcullis::client_ip::ClientIp;
use portcullis::observe::request_id::RequestId;
use portcullis::proxy::UpstreamInfo;
use portcullis::resilience::budget::{RetryBudget, RetryBudgetLayer};
use portcullis::resilience::retry::RetryLayer;
use tower::{Layer, Service, ServiceExt};

/// Header values are slices of one shared buffer, as hyper parses them (cloning one is a
/// reference count, not a copy).
fn request() -> Request<Body> {
    const VALUES: &str =
        "api.example.combench/1.0application/json0b6f3c3e-4d1a-4f7e-9a43-5f0e8d1c2b3a203.0.113.7";
    let buffer = Bytes::from(VALUES.to_owned());
    let mut at = 0;
    let mut next = |len: usize| {
        at += len;
        HeaderValue::from_maybe_shared(buffer.slice(at - len..at)).unwrap()
    };
    let mut req = Request::get("/v1/orders/42?expand=items").body(Body::empty()).unwrap();
    let headers = req.headers_mut();
    headers.insert("host", next(15));
    headers.insert("user-agent", next(9));
    headers.insert("accept", next(16));
    headers.insert("x-request-id", next(36));
    let ip = next(11);
    headers.insert("x-forwarded-for", ip.clone());
    headers.insert("x-real-ip", ip);
    req.extensions_mut().insert(RequestId::from_static("0b6f3c3e-4d1a-4f7e-9a43-5f0e8d1c2b3a"));
    req.extensions_mut().insert(ClientIp(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))));
    req
}

fn upstream()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Body>| async {
        let mut res = Response::new(Body::empty());
        res.extensions_mut().insert(UpstreamInfo {
            host: "10.0.0.1:8080".into(),
            status: Some(StatusCode::OK),
            latency: Duration::ZERO,
            failure: None,
        });
        Ok::<_, Infallible>(res)
    })
}

fn seed_policy() -> RetryLayer {
    RetryLayer::new("5xx,reset,connect-failure,retriable-4xx".parse().unwrap())
        .num_retries(2)
        .previous_hosts(true)
}

fn bench<S>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut svc: S,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    group.bench_function(name, |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = svc.ready().await.unwrap().call(request()).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                black_box(res)
            })
        })
    });
}

fn success_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry");
    bench(&mut group, "bare", upstream());
    group.bench_function("head-copy", |b| {
        b.iter(|| {
            let req = request();
            let mut head = Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.headers_mut() = req.headers().clone();
            *head.extensions_mut() = req.extensions().clone();
            black_box((req, head))
        })
    });
    bench(&mut group, "retry", seed_policy().layer(upstream()));
    bench(
        &mut group,
        "retry+per-try-timeout",
        seed_policy().per_try_timeout(Duration::from_secs(2)).layer(upstream()),
    );
    let budget = RetryBudget::builder()
        .concurrency(20.0, 3)
        .rate(0.2, 10, Duration::from_secs(10))
        .max_retries(3)
        .build()
        .unwrap();
    bench(&mut group, "budget+retry", RetryBudgetLayer::new(budget).layer(seed_policy().layer(upstream())));
    group.finish();
}

criterion_group!(benches, success_path);
criterion_main!(benches);
