//! Criterion benchmarks of host selection and outlier bookkeeping, per request, 10 hosts.
//!
//! - `outlier/round-robin/10-hosts`: [`HostSet::pick`] plus [`PickedHost::record`] of a 200 with
//!   outlier detection on (Envoy's defaults): the whole per-request cost the proxy adds.
//! - `outlier/least-request/10-hosts`: the same with power of two choices.
//! - `outlier/round-robin-5xx/10-hosts`: every seventh request a 500 — each host fails now and
//!   then, streaks start and reset, no host is ever ejected.
//! - `outlier/round-robin-previous-hosts/10-hosts`: with a `PreviousHosts` of two tried hosts
//!   (as the retry layer writes them: clones of the hosts' addresses).
//! - `outlier/no-detection/10-hosts`: round robin without outlier detection (the anchor).
//! - `outlier/instant-now`: one `Instant::now()`, the clock read that detection adds (anchor).
//!
//! `cargo bench --bench outlier -- --warm-up-time 1 --measurement-time 3`
//!
//! [`PickedHost::record`]: portcullis::resilience::balance::PickedHost::record

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::StatusCode;
use portcullis::resilience::PreviousHosts;
use portcullis::resilience::balance::{HostSet, LoadBalancer};
use portcullis::resilience::classify::Outcome;
use portcullis::resilience::outlier::OutlierDetection;

const HOSTS: u16 = 10;

fn set(load_balancer: LoadBalancer, outlier: bool) -> HostSet {
    let mut builder = HostSet::builder().load_balancer(load_balancer);
    for port in 0..HOSTS {
        builder = builder.host(format!("10.0.0.{port}:8080"));
    }
    if outlier {
        builder = builder.outlier_detection(OutlierDetection::default());
    }
    builder.build().unwrap()
}

fn bookkeeping(c: &mut Criterion) {
    let mut group = c.benchmark_group("outlier");
    let ok = Outcome::Upstream(StatusCode::OK);
    let error = Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR);

    let round_robin = set(LoadBalancer::RoundRobin, true);
    group.bench_function("round-robin/10-hosts", |b| {
        b.iter(|| round_robin.pick(black_box(None)).unwrap().record(black_box(ok)))
    });

    let least_request = set(LoadBalancer::LeastRequest, true);
    group.bench_function("least-request/10-hosts", |b| {
        b.iter(|| least_request.pick(black_box(None)).unwrap().record(black_box(ok)))
    });

    let failing = set(LoadBalancer::RoundRobin, true);
    let mut n = 0u32;
    group.bench_function("round-robin-5xx/10-hosts", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            // 7 and 10 are coprime: the failures rotate over the hosts.
            let outcome = if n % 7 == 0 { error } else { ok };
            failing.pick(black_box(None)).unwrap().record(black_box(outcome))
        })
    });

    let previous = set(LoadBalancer::RoundRobin, true);
    let tried =
        PreviousHosts(vec![previous.hosts()[3].address().clone(), previous.hosts()[7].address().clone()]);
    group.bench_function("round-robin-previous-hosts/10-hosts", |b| {
        b.iter(|| previous.pick(black_box(Some(&tried))).unwrap().record(black_box(ok)))
    });

    let plain = set(LoadBalancer::RoundRobin, false);
    group.bench_function("no-detection/10-hosts", |b| {
        b.iter(|| plain.pick(black_box(None)).unwrap().record(black_box(ok)))
    });
    group.bench_function("instant-now", |b| b.iter(std::time::Instant::now));
    group.finish();
    // The failing variant measured the in-service path, not ejections.
    assert_eq!(failing.status().ejections.enforced, [0; 3]);
}

criterion_group!(benches, bookkeeping);
criterion_main!(benches);
