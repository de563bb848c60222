//! Criterion benchmarks of rate-limit decisions.
//!
//! - `ratelimit/memory-sliding-window/10k-keys`: one [`MemoryStore::decide_at`] under a sliding
//!   window, cycling through 10,000 keys on one thread.
//! - `ratelimit/governor-keyed/10k-keys`: governor's keyed GCRA `check_key` over the same keys,
//!   in the same run (the anchor: within 1.5×).
//! - `ratelimit/memory-token-bucket/10k-keys`: the GCRA core in the memory store.
//! - `ratelimit/layer-sliding-window`: a request through `SlidingWindowLayer` on a `service_fn`
//!   (key extraction, headers, outcome included).
//! - `ratelimit/redis/*` (feature `redis`, when `redis-server` is on the PATH): one sequential
//!   decision against a Redis started on a free port, and a `PING` over the store's own
//!   connection ([`RedisStore::ping`]) in the same run (the anchor: within 1.3×); and `decisions-64-in-flight`: 64
//!   tasks deciding in a loop through one store on a two-thread runtime, so 64 decisions are
//!   always in flight on its multiplexed connection (criterion reports decisions per second);
//!   `hybrid-decision-sequential`: a `HybridStore` (`sync_rate: 1`) decision on hot keys (local;
//!   the background sync of the 10k keys runs meanwhile).
//!
//! `cargo bench --bench ratelimit --features redis -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::{Quota, RateLimiter};
use portcullis::ratelimit::{
    ManualClock, MemoryStore, Period, Policy, SECOND, SlidingWindowLayer, token_bucket::TokenBucket,
    window::WindowLimit,
};
use tower::{Layer, Service, ServiceExt};

const KEYS: usize = 10_000;
#[cfg(feature = "redis")]
const IN_FLIGHT: usize = 64;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("consumer:user-{i:05}")).collect()
}

fn memory(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ratelimit");

    let store = MemoryStore::new(100_000);
    let policy = Policy::Windows(vec![(
        Period::Minute,
        WindowLimit::sliding(u32::MAX as u64, Period::Minute.micros()),
    )]);
    let now = 1_700_000_040 * SECOND;
    let mut i = 0usize;
    // The verdict is kept where it is made (`black_box(&verdict)`): returning it from the
    // routine would time criterion copying 400 bytes into its output buffer, a harness cost
    // governor's one-bool answer does not pay.
    group.bench_function("memory-sliding-window/10k-keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let verdict = store.decide_at(black_box(&keys[i]), &policy, now + i as u64);
            black_box(&verdict);
        })
    });

    let governor = RateLimiter::keyed(Quota::per_minute(NonZeroU32::MAX));
    let mut i = 0usize;
    group.bench_function("governor-keyed/10k-keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(governor.check_key(black_box(&keys[i])).is_ok())
        })
    });

    let store = MemoryStore::new(100_000);
    let policy = Policy::TokenBucket(TokenBucket::new(1_000_000, 1_000_000.0));
    let mut i = 0usize;
    group.bench_function("memory-token-bucket/10k-keys", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let verdict = store.decide_at(black_box(&keys[i]), &policy, now + i as u64);
            black_box(&verdict);
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let clock = ManualClock::new(now);
    let layer = SlidingWindowLayer::new()
        .minute(u32::MAX as u64)
        .store(MemoryStore::with_clock(100_000, Arc::new(clock)));
    let mut svc = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
    }));
    group.bench_function("layer-sliding-window", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
                black_box(res)
            })
        })
    });
    group.finish();
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    use portcullis::ratelimit::{Decided, RedisStore, Store};
    use std::process::{Command, Stdio};

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let Ok(mut child) = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not found: Redis benchmarks skipped");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = Arc::new(RedisStore::new(&url, "bench").unwrap());
    let policy = Arc::new(Policy::Windows(vec![(
        Period::Minute,
        WindowLimit::sliding(u32::MAX as u64, Period::Minute.micros()),
    )]));
    let keys = keys();
    let mut group = c.benchmark_group("ratelimit/redis");
    let mut i = 0usize;
    group.bench_function("decision-sequential", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let Decided::Pending(pending) = store.decide(&keys[i], &policy) else { panic!("not pending") };
            black_box(rt.block_on(pending).unwrap())
        })
    });
    // The baseline: a PING round trip over the store's own multiplexed connection.
    group.bench_function("ping-sequential", |b| b.iter(|| rt.block_on(store.ping()).unwrap()));

    // Hybrid (`sync_rate`): decisions are local once a key is hot; the sync runs every second
    // in the background on another runtime (started by the first decision, made there).
    let multi = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let hybrid = Arc::new(portcullis::ratelimit::HybridStore::new(
        RedisStore::new(&url, "bench-hybrid").unwrap(),
        std::time::Duration::from_secs(1),
    ));
    multi.block_on(async {
        for key in &keys {
            if let Decided::Pending(pending) = hybrid.decide(key, &policy) {
                pending.await.unwrap();
            }
        }
    });
    let mut i = 0usize;
    group.bench_function("hybrid-decision-sequential", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            match hybrid.decide(&keys[i], &policy) {
                Decided::Ready(verdict) => black_box(verdict.unwrap()),
                Decided::Pending(pending) => black_box(rt.block_on(pending).unwrap()),
            }
        })
    });

    // Its background sync (10k keys a second) must not run under the next benchmark.
    drop(hybrid);

    // 64 decisions in flight at all times (64 tasks deciding in a loop) on a two-thread runtime,
    // through one store and its one multiplexed connection: decisions per second.
    let store = Arc::new(RedisStore::new(&url, "bench-64").unwrap());
    let keys = Arc::new(keys);
    group.throughput(criterion::Throughput::Elements(1));
    group.bench_function("decisions-64-in-flight", |b| {
        b.iter_custom(|iters| {
            let per_task = iters.div_ceil(IN_FLIGHT as u64);
            multi.block_on(async {
                let started = std::time::Instant::now();
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|t| {
                        let (store, policy, keys) = (store.clone(), policy.clone(), keys.clone());
                        tokio::spawn(async move {
                            for i in 0..per_task as usize {
                                let key = &keys[(t * 997 + i) % KEYS];
                                let verdict = match store.decide(key, &policy) {
                                    Decided::Pending(pending) => pending.await,
                                    Decided::Ready(verdict) => verdict,
                                };
                                black_box(verdict.unwrap());
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                // Per decision: the time for all of them, spread over the iterations asked.
                started.elapsed().mul_f64(iters as f64 / (per_task * IN_FLIGHT as u64) as f64)
            })
        })
    });
    group.finish();
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(not(feature = "redis"))]
fn redis(_c: &mut Criterion) {}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
