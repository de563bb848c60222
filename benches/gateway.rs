//! Criterion benchmarks of the in-process hot path.
//!
//! - `router/100-routes/*`: one `Router::find` among 100 routes (50 prefix, 50 regex).
//! - `front/*`: a request through RequestId → AccessLog (sink discarding) → Sanitize → Router on
//!   a `service_fn` upstream, against the same `service_fn` called bare; the difference is the
//!   gateway's in-process overhead.
//!
//! `cargo bench --bench gateway`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request, Response};
use portcullis::Body;
use portcullis::client_ip::{ListenerInfo, PeerAddr, TrustedProxies};
use portcullis::observe::access_log::{AccessLogLayer, LogSink};
use portcullis::observe::request_id::{RequestId, RequestIdLayer};
use portcullis::router::{Route, Router};
use portcullis::sanitize::SanitizeLayer;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Polls a future that is ready without waiting (every service here answers at once).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("benchmarked future was not immediately ready"),
    }
}

fn routes<S: Clone>(service: S) -> Router<S> {
    let mut builder = Router::builder();
    for i in 0..50 {
        builder = builder
            .route(Route::new().name(format!("prefix-{i}")).paths([format!("/svc{i}/api")]), service.clone());
        builder = builder.route(
            Route::new().name(format!("regex-{i}")).paths([format!("~/v{i}/users/(?P<id>[0-9]+)/orders$")]),
            service.clone(),
        );
    }
    builder.build().expect("bench routes are valid")
}

fn router(c: &mut Criterion) {
    let router = routes(());
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("router/100-routes");
    for (name, path) in [
        ("prefix-first", "/svc0/api/items/1"),
        ("prefix-last", "/svc49/api/items/1"),
        ("regex-last", "/v49/users/12345/orders"),
        ("miss", "/nothing/here/at/all"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(router.find(&Method::GET, Some("api.example.com"), black_box(path), &headers))
            })
        });
    }
    group.finish();
}

fn request() -> Request<Body> {
    let mut req = Request::get("/svc49/api/items/1?page=2")
        .header("host", "api.example.com")
        .header("user-agent", "bench/1.0")
        .header("accept", "application/json")
        .body(Body::empty())
        .expect("valid request");
    req.extensions_mut().insert(PeerAddr("127.0.0.1:40000".parse().expect("addr")));
    req.extensions_mut()
        .insert(ListenerInfo { local_addr: "127.0.0.1:8000".parse().expect("addr"), tls: false });
    // As the gateway's server does: room for the headers the front and route layers add.
    req.headers_mut().reserve(portcullis::gateway::HEADER_HEADROOM);
    req
}

/// Answers like a small JSON API: a body and the two headers every real upstream sends.
async fn upstream(_req: Request<Body>) -> Result<Response<Body>, Infallible> {
    let mut res = Response::new(Body::from("{}"));
    res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    res.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("2"));
    Ok(res)
}

fn front(c: &mut Criterion) {
    let mut group = c.benchmark_group("front");
    let mut bare = tower::service_fn(upstream);
    group.bench_function("bare-service-fn", |b| {
        b.iter(|| {
            let res = ready(bare.call(request()));
            black_box(res)
        })
    });

    let trusted = TrustedProxies::parse(["10.0.0.0/8"]).expect("cidr");
    let mut router_only = routes(tower::service_fn(upstream));
    bench_stack(&mut group, "router", &mut router_only);
    let mut sanitize = ServiceBuilder::new()
        .layer(SanitizeLayer::new().trusted_proxies(trusted.clone()).max_body_bytes(10 << 20))
        .service(routes(tower::service_fn(upstream)));
    bench_stack(&mut group, "sanitize+router", &mut sanitize);
    let mut with_id = ServiceBuilder::new()
        .layer(RequestIdLayer::new().keep_incoming_from(trusted.clone()))
        .layer(SanitizeLayer::new().trusted_proxies(trusted.clone()).max_body_bytes(10 << 20))
        .service(routes(tower::service_fn(upstream)));
    bench_stack(&mut group, "request-id+sanitize+router", &mut with_id);

    let sink = LogSink::writer(std::io::sink());
    let mut gateway = ServiceBuilder::new()
        .layer(RequestIdLayer::new().keep_incoming_from(trusted.clone()))
        .layer(AccessLogLayer::new(sink.clone()))
        .layer(SanitizeLayer::new().trusted_proxies(trusted).max_body_bytes(10 << 20))
        .service(routes(tower::service_fn(upstream)));
    bench_stack(&mut group, "request-id+access-log+sanitize+router", &mut gateway);
    group.finish();
    sink.flush();
    eprintln!("access log: {} lines written, {} dropped", sink.lines_written(), sink.dropped());
}

fn bench_stack<S, B>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: &mut S,
) where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    group.bench_function(name, |b| {
        b.iter(|| {
            let svc = ready(svc.ready()).expect("ready");
            let res = ready(svc.call(request())).expect("infallible");
            assert_eq!(res.status(), 200);
            // Dropping the finished body emits the access-log record.
            drop(black_box(res));
        })
    });
}

fn request_id(c: &mut Criterion) {
    c.bench_function("request-id/generate", |b| b.iter(|| black_box(RequestId::generate())));
}

criterion_group!(benches, router, front, request_id);
criterion_main!(benches);
