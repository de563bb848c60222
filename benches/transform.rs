//! Criterion benchmarks of `TransformLayer`.
//!
//! - `transform/bare`: a `service_fn` answering at once, called with a fresh request (built
//!   outside the timed part).
//! - `transform/headers-5-rules-2-templated`: the same, behind a header-only transform (remove,
//!   rename, a literal add, and two templated rules: `$(headers.x-user)` and `$(request_id)`).
//!   The difference is the layer's cost per request.
//! - `transform/gateway-request/*`: both again with the request as a route's stack receives it in
//!   the gateway: as hyper parses it (values sliced from one buffer), the server's header
//!   reservation, then the real front layers (request id, forwarding headers).
//! - `*/hand-written-equivalent`: the five rules written by hand against `HeaderMap` (static
//!   names, no layer): the cost of the header operations themselves.
//! - `added/standalone`, `added/gateway-request` (printed): what the layer and the hand-written
//!   equivalent add to the bare service, timed in interleaved chunks keeping each one's fastest
//!   chunk, which a loaded machine cannot make faster (the criterion functions above measure
//!   bare and layered apart, and their difference carries both runs' noise).
//! - `transform/json-body-replace`: a 200-byte JSON body rewritten by one templated `replace`.
//!
//! `cargo bench --bench transform`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use portcullis::Body;
use portcullis::observe::request_id::RequestId;
use portcullis::transform::{Action, RequestPart, TransformLayer};
use tower::{Layer, Service, service_fn};

/// Polls a future that is ready without waiting (the services here answer at once).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("benchmarked future was not immediately ready"),
    }
}

const HEADERS: [(&str, &str); 6] = [
    ("host", "api.example.com"),
    ("user-agent", "bench/1.0"),
    ("accept", "application/json"),
    ("x-user", "alice"),
    ("x-internal-token", "secret"),
    ("x-old", "o"),
];

/// A request built with `http`'s builder: every value its own allocation, the map exactly full.
fn request() -> Request<Body> {
    let mut req = Request::get("/orders/42?page=2");
    for (name, value) in HEADERS {
        req = req.header(name, value);
    }
    let mut req = req.body(Body::empty()).unwrap();
    req.extensions_mut().insert(RequestId::from_static("0f8f2a52-5c0c-4b6e-9d36-0c1e7a3b9a10"));
    req
}

/// The same request as hyper parses it: the values are slices of the one buffer the head was
/// read into (a copy is a reference count), the map sized to the headers.
fn parsed_request() -> Request<Body> {
    let mut raw = Vec::new();
    let spans: Vec<_> = HEADERS
        .iter()
        .map(|(name, value)| {
            raw.extend_from_slice(value.as_bytes());
            (name, raw.len() - value.len(), raw.len())
        })
        .collect();
    let raw = bytes::Bytes::from(raw);
    let mut req = Request::get("/orders/42?page=2").body(Body::empty()).unwrap();
    let headers = req.headers_mut();
    headers.reserve(HEADERS.len());
    for (name, start, end) in spans {
        let value = http::HeaderValue::from_maybe_shared(raw.slice(start..end)).unwrap();
        headers.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
    }
    req
}

/// The same request as a route's stack receives it in the gateway: parsed by hyper, the
/// server's header reservation ([`HEADER_HEADROOM`]), then the real front layers (request id,
/// sanitizer with its forwarding headers).
fn gateway_request() -> Request<Body> {
    use portcullis::client_ip::PeerAddr;
    use portcullis::gateway::HEADER_HEADROOM;
    use portcullis::observe::request_id::RequestIdLayer;
    use portcullis::sanitize::SanitizeLayer;
    use std::sync::{Arc, Mutex};

    let mut req = parsed_request();
    req.extensions_mut().insert(PeerAddr("203.0.113.7:50000".parse().unwrap()));
    req.headers_mut().reserve(HEADER_HEADROOM);
    let seen = Arc::new(Mutex::new(None));
    let keep = seen.clone();
    let capture = service_fn(move |req: Request<Body>| {
        *keep.lock().unwrap() = Some(req);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    });
    let mut front = tower::ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(SanitizeLayer::new())
        .service(capture);
    let response = ready(front.call(req)).unwrap();
    assert_eq!(response.status(), 200);
    seen.lock().unwrap().take().expect("the front layers pass the request on")
}

/// The same five rules written by hand against `HeaderMap` with static names: what the header
/// operations themselves cost, so the layer's own share is the difference.
fn hand_written(mut req: Request<Body>) -> Request<Body> {
    use http::header::{HeaderName, HeaderValue};
    static INTERNAL_TOKEN: HeaderName = HeaderName::from_static("x-internal-token");
    static OLD: HeaderName = HeaderName::from_static("x-old");
    static NEW: HeaderName = HeaderName::from_static("x-new");
    static API_VERSION: HeaderName = HeaderName::from_static("x-api-version");
    static USER: HeaderName = HeaderName::from_static("x-user");
    static USER_NAME: HeaderName = HeaderName::from_static("x-user-name");
    static TRACE: HeaderName = HeaderName::from_static("x-trace");
    let id = req.extensions().get::<RequestId>().map(|id| id.header_value().clone());
    let headers = req.headers_mut();
    headers.remove(&INTERNAL_TOKEN);
    if let Some(value) = headers.remove(&OLD) {
        headers.insert(NEW.clone(), value);
    }
    headers.entry(&API_VERSION).or_insert(HeaderValue::from_static("2"));
    if let Some(user) = headers.get(&USER).cloned() {
        headers.entry(&USER_NAME).or_insert(user);
    }
    if let Some(id) = id {
        headers.append(TRACE.clone(), id);
    }
    req
}

/// The fastest per-request time of `call` over `CHUNK` requests made by `make` beforehand
/// (building them is not timed; dropping each request is, as in the criterion functions).
fn chunk(make: fn() -> Request<Body>, call: &mut dyn FnMut(Request<Body>) -> Response<Body>) -> Duration {
    const CHUNK: u32 = 100;
    let requests: Vec<_> = (0..CHUNK).map(|_| make()).collect();
    let mut answers = Vec::with_capacity(CHUNK as usize);
    let start = Instant::now();
    for req in requests {
        answers.push(call(black_box(req)));
    }
    let elapsed = start.elapsed();
    black_box(answers);
    elapsed / CHUNK
}

/// What the layer and the hand-written equivalent add to the bare service, robust to a loaded
/// machine: the three are timed in interleaved chunks, 2,000 chunks each, and the fastest chunk
/// of each is kept (a chunk that was preempted or shared its core is slower, never faster).
/// Printed, not fed to criterion (as in `benches/metrics.rs`).
fn added(
    name: &str,
    make: fn() -> Request<Body>,
    variants: [&mut dyn FnMut(Request<Body>) -> Response<Body>; 3],
) {
    let mut best = [Duration::MAX; 3];
    let [bare, layered, hand] = variants;
    for i in 0..2000 {
        // Rotated, so no variant always runs right after another.
        for v in 0..3 {
            let v = (v + i) % 3;
            let call: &mut dyn FnMut(Request<Body>) -> Response<Body> = match v {
                0 => &mut *bare,
                1 => &mut *layered,
                _ => &mut *hand,
            };
            best[v] = best[v].min(chunk(make, call));
        }
    }
    let [base, with, by_hand] = best.map(|d| d.as_nanos() as i128);
    println!(
        "added/{name:<16} bare {base:>5} ns  layer {with:>5} ns (+{})  hand-written {by_hand:>5} ns (+{})",
        with - base,
        by_hand - base
    );
}

fn bench(c: &mut Criterion) {
    let bare = service_fn(|req: Request<Body>| {
        black_box(&req);
        std::future::ready(Ok::<_, Infallible>(Response::new(Body::empty())))
    });
    let mut group = c.benchmark_group("transform");
    let mut svc = bare;
    // Requests are built outside the timed part: only the call (and dropping its answer) is timed.
    group.bench_function("bare", |b| {
        b.iter_batched(request, |req| ready(svc.call(req)), BatchSize::SmallInput)
    });

    let layer = TransformLayer::builder()
        .request(Action::Remove, RequestPart::Headers, ["X-Internal-Token"])
        .request(Action::Rename, RequestPart::Headers, ["X-Old:X-New"])
        .request(Action::Add, RequestPart::Headers, ["X-API-Version:2", "X-User-Name:$(headers.x-user)"])
        .request(Action::Append, RequestPart::Headers, ["X-Trace:$(request_id)"])
        .build()
        .unwrap();
    let mut svc = layer.layer(bare);
    group.bench_function("headers-5-rules-2-templated", |b| {
        b.iter_batched(request, |req| ready(svc.call(req)), BatchSize::SmallInput)
    });
    let mut bare_svc = bare;
    group.bench_function("hand-written-equivalent", |b| {
        b.iter_batched(request, |req| ready(bare_svc.call(hand_written(req))), BatchSize::SmallInput)
    });
    group.bench_function("gateway-request/bare", |b| {
        b.iter_batched(gateway_request, |req| ready(bare_svc.call(req)), BatchSize::SmallInput)
    });
    group.bench_function("gateway-request/headers-5-rules-2-templated", |b| {
        b.iter_batched(gateway_request, |req| ready(svc.call(req)), BatchSize::SmallInput)
    });
    group.bench_function("gateway-request/hand-written-equivalent", |b| {
        b.iter_batched(gateway_request, |req| ready(bare_svc.call(hand_written(req))), BatchSize::SmallInput)
    });

    let mut bare_fn = |req| ready(bare_svc.call(req)).unwrap();
    let mut layered_fn = |req| ready(svc.call(req)).unwrap();
    let mut hand_fn = |req| ready(bare.clone().call(hand_written(req))).unwrap();
    added("standalone", request, [&mut bare_fn, &mut layered_fn, &mut hand_fn]);
    added("gateway-request", gateway_request, [&mut bare_fn, &mut layered_fn, &mut hand_fn]);

    let layer = TransformLayer::builder()
        .request(Action::Replace, RequestPart::Body, ["name:$(headers.x-user)"])
        .build()
        .unwrap();
    let mut svc = layer.layer(bare);
    let body = br#"{"name":"bob","items":[1,2,3],"address":{"street":"1 Main St","city":"Springfield"},"tags":[],"active":true,"score":12.5,"note":"a fairly ordinary order payload of about two hundred bytes"}"#;
    group.bench_function("json-body-replace", |b| {
        let json = || {
            let mut req = request();
            req.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
            *req.body_mut() = Body::from(bytes::Bytes::from_static(body));
            req
        };
        b.iter_batched(json, |req| ready(svc.call(req)), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
