//! Criterion benchmarks of the API-key check with 100 000 consumers.
//!
//! - `api_key/digest/*`: hashing one 32-byte key (SHA-256, HMAC-SHA256 with a pepper).
//! - `api_key/verify-100k/*`: digest + map lookup + constant-time compare among 100 000 keys
//!   (hit, miss).
//! - `api_key/layer-100k/*`: a request through `ApiKeyAuthLayer` (key in a header, or in the
//!   query string with `hide_credentials`) on a `service_fn`, against the same `service_fn`
//!   called bare; the layer's cost includes `Consumer::apply_to` (upstream identity headers).
//!
//! `cargo bench --bench auth -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use portcullis::Body;
use portcullis::auth::api_key::{ApiKeyAuthLayer, ApiKeys, KeyHasher};
use portcullis::consumer::Consumer;
use tower::{Service, ServiceBuilder};

const CONSUMERS: usize = 100_000;

/// Polls a future that is ready without waiting (every service here answers at once).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("benchmarked future was not immediately ready"),
    }
}

/// A 32-character key per consumer, like a typical generated API key.
fn key(i: usize) -> String {
    format!("pk_live_{i:08}_{:016x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn keys(hasher: KeyHasher) -> ApiKeys {
    let mut keys = ApiKeys::new(hasher);
    for i in 0..CONSUMERS {
        let consumer = Consumer {
            id: format!("consumer-{i}").into(),
            username: Some(format!("user-{i}").into()),
            groups: vec!["customers".into()].into(),
            ..Consumer::default()
        };
        keys.insert_key(key(i).as_bytes(), consumer).expect("bench keys are unique");
    }
    keys
}

fn api_key(c: &mut Criterion) {
    let hit = key(CONSUMERS / 2);
    let miss = format!("{}x", &hit[..hit.len() - 1]);
    let mut group = c.benchmark_group("api_key");
    for (name, hasher) in
        [("sha256", KeyHasher::sha256()), ("hmac-sha256", KeyHasher::hmac_sha256("bench-pepper").unwrap())]
    {
        group.bench_function(format!("digest/{name}"), |b| {
            b.iter(|| hasher.digest(black_box(hit.as_bytes())))
        });
        let keys = keys(hasher);
        group.bench_function(format!("verify-100k/{name}/hit"), |b| {
            b.iter(|| assert!(keys.verify(black_box(hit.as_bytes())).is_some()))
        });
        group.bench_function(format!("verify-100k/{name}/miss"), |b| {
            b.iter(|| assert!(keys.verify(black_box(miss.as_bytes())).is_none()))
        });
    }

    let handler = |_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::empty())) };
    let mut bare = tower::service_fn(handler);
    group.bench_function("layer-100k/bare-service", |b| {
        b.iter(|| {
            let req = Request::get("/orders").header("apikey", hit.as_str()).body(Body::empty()).unwrap();
            ready(bare.call(black_box(req))).unwrap()
        })
    });
    let layer = ApiKeyAuthLayer::new(keys(KeyHasher::sha256()));
    let mut svc = ServiceBuilder::new().layer(layer).service_fn(handler);
    group.bench_function("layer-100k/header", |b| {
        b.iter(|| {
            let req = Request::get("/orders").header("apikey", hit.as_str()).body(Body::empty()).unwrap();
            let res = ready(svc.call(black_box(req))).unwrap();
            assert_eq!(res.status(), 200);
        })
    });
    let hiding = ApiKeyAuthLayer::builder(keys(KeyHasher::sha256())).hide_credentials(true).build();
    let mut svc = ServiceBuilder::new().layer(hiding).service_fn(handler);
    let uri = format!("/orders?page=2&apikey={hit}&sort=desc");
    group.bench_function("layer-100k/query-hidden", |b| {
        b.iter(|| {
            let req = Request::get(uri.as_str()).body(Body::empty()).unwrap();
            let res = ready(svc.call(black_box(req))).unwrap();
            assert_eq!(res.status(), 200);
        })
    });
    group.finish();
}

criterion_group!(benches, api_key);
criterion_main!(benches);
