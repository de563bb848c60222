//! The breaker's state machine and thresholds, driven through the layer on a scripted upstream
//! service, with tokio's paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

use super::*;
use crate::ext::UpstreamInfo;

/// A scripted upstream, told what to do by the request path: `/status/NNN` answers NNN as the
/// proxy would (with `UpstreamInfo`), `/local/NNN` answers NNN as a gateway layer would (no
/// `UpstreamInfo`), `/error` fails the service, `/hold/NNN` waits for a gate permit first.
#[derive(Clone)]
struct Script {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Script {
    fn new() -> Self {
        Self { calls: Arc::new(AtomicUsize::new(0)), gate: Arc::new(Semaphore::new(0)) }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl Service<Request<()>> for Script {
    type Response = Response<Bytes>;
    type Error = &'static str;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Bytes>, &'static str>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let gate = self.gate.clone();
        let path = req.uri().path().to_owned();
        Box::pin(async move {
            let path = path.trim_start_matches('/');
            let (kind, code) = path.split_once('/').unwrap_or((path, "200"));
            let status = StatusCode::from_u16(code.parse().unwrap_or(200)).unwrap();
            let mut res = Response::new(Bytes::from_static(b"upstream"));
            *res.status_mut() = status;
            match kind {
                "error" => return Err("connection broke"),
                "local" => return Ok(res),
                "hold" => gate.acquire().await.unwrap().forget(),
                _ => {}
            }
            res.extensions_mut().insert(UpstreamInfo {
                host: "127.0.0.1:9".into(),
                status: Some(status),
                latency: Duration::ZERO,
                failure: None,
            });
            Ok(res)
        })
    }
}

type Svc = CircuitBreaker<Script>;

fn req(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

async fn send(svc: &mut Svc, path: &str) -> Response<Bytes> {
    svc.ready().await.unwrap().call(req(path)).await.unwrap()
}

/// Calls now (admission is decided in `call`) and polls the response in a task.
async fn spawn(svc: &mut Svc, path: &str) -> tokio::task::JoinHandle<Result<Response<Bytes>, &'static str>> {
    let future = svc.ready().await.unwrap().call(req(path));
    let handle = tokio::spawn(future);
    settle().await;
    handle
}

/// Lets spawned tasks run until they block.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn breaker(layer: &CircuitBreakerLayer, script: &Script) -> Svc {
    layer.layer(script.clone())
}

fn classic(failures: u32) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(failures)
        .open_duration(Duration::from_secs(30))
        .build()
}

fn outcome(res: &Response<Bytes>) -> &'static str {
    res.extensions().get::<BreakerOutcome>().expect("a BreakerOutcome").as_str()
}

fn assert_overloaded(res: &Response<Bytes>) -> serde_json::Value {
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["x-portcullis-overloaded"], "true");
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(body["error"], "upstream_overloaded");
    // Our own 503 is a local answer: it never counts against the upstream anywhere.
    assert_eq!(Outcome::of(res), Outcome::Local(StatusCode::SERVICE_UNAVAILABLE));
    body
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_and_fails_fast() {
    let script = Script::new();
    let layer = classic(3);
    let mut svc = breaker(&layer, &script);
    // A success in between resets the streak.
    for path in ["/status/500", "/status/502", "/status/200", "/status/500", "/status/503"] {
        assert_eq!(outcome(&send(&mut svc, path).await), "closed");
    }
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    assert_eq!(layer.snapshot().consecutive_failures, 2);
    let res = send(&mut svc, "/status/500").await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "the tripping response itself goes back");
    let snapshot = layer.snapshot();
    assert_eq!(snapshot.state, BreakerState::Open);
    assert_eq!(snapshot.times_opened, 1);
    assert_eq!(snapshot.open_remaining, Some(Duration::from_secs(30)));
    assert_eq!(script.calls(), 6);

    for _ in 0..5 {
        let res = send(&mut svc, "/status/200").await;
        let body = assert_overloaded(&res);
        assert_eq!(body["message"], "upstream circuit breaker is open");
        assert_eq!(res.headers()["retry-after"], "30");
        assert_eq!(outcome(&res), "open");
    }
    assert_eq!(script.calls(), 6, "an open circuit calls nothing");
    assert_eq!(layer.snapshot().failed_fast, 5);

    // Retry-After counts down, rounded up to whole seconds.
    tokio::time::advance(Duration::from_millis(10_500)).await;
    assert_eq!(send(&mut svc, "/").await.headers()["retry-after"], "20");
    tokio::time::advance(Duration::from_millis(19_400)).await;
    assert_eq!(send(&mut svc, "/").await.headers()["retry-after"], "1");
    assert_eq!(script.calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_one_probe_and_closes_on_success() {
    let script = Script::new();
    let layer = classic(1);
    let mut svc = breaker(&layer, &script);
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    // Before any request: the open duration is over, the next request probes.
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.state, snapshot.open_remaining), (BreakerState::HalfOpen, None));

    let probe = spawn(&mut svc, "/hold/200").await;
    assert_eq!(layer.snapshot().state, BreakerState::HalfOpen);
    for _ in 0..100 {
        let res = send(&mut svc, "/status/200").await;
        assert_overloaded(&res);
        assert!(res.headers().get("retry-after").is_none(), "no known time while a probe decides");
        assert_eq!(outcome(&res), "half_open");
    }
    assert_eq!(script.calls(), 2, "the tripping failure and the one probe");

    script.release(1);
    let res = probe.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(outcome(&res), "half_open");
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.state, snapshot.consecutive_failures), (BreakerState::Closed, 0));
    assert_eq!(outcome(&send(&mut svc, "/status/200").await), "closed");
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_a_full_open_duration() {
    let script = Script::new();
    let layer = classic(2);
    let mut svc = breaker(&layer, &script);
    send(&mut svc, "/status/500").await;
    send(&mut svc, "/status/500").await;
    tokio::time::advance(Duration::from_secs(31)).await;
    let res = send(&mut svc, "/status/504").await;
    assert_eq!((res.status(), outcome(&res)), (StatusCode::GATEWAY_TIMEOUT, "half_open"));
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.state, snapshot.times_opened), (BreakerState::Open, 2));
    let res = send(&mut svc, "/status/200").await;
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(script.calls(), 3);
    // A failure counted from the half-open state is enough: it does not wait for a new streak.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(svc.ready().await.unwrap().call(req("/error")).await.is_err());
    assert_eq!(layer.snapshot().state, BreakerState::Open, "an inner service error is a failure");
}

#[tokio::test(start_paused = true)]
async fn several_probes_when_configured() {
    let script = Script::new();
    let layer = CircuitBreakerLayer::builder().consecutive_failures(1).half_open_probes(2).build();
    let mut svc = breaker(&layer, &script);
    send(&mut svc, "/status/500").await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let first = spawn(&mut svc, "/hold/200").await;
    let second = spawn(&mut svc, "/hold/200").await;
    assert_overloaded(&send(&mut svc, "/status/200").await);
    script.release(2);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    assert_eq!(script.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_or_neutral_probe_frees_its_place() {
    let script = Script::new();
    let layer = classic(1);
    let mut svc = breaker(&layer, &script);
    send(&mut svc, "/status/500").await;
    tokio::time::advance(Duration::from_secs(30)).await;
    // The client goes away while the probe waits on the upstream.
    let probe = svc.ready().await.unwrap().call(req("/hold/200"));
    assert_overloaded(&send(&mut svc, "/status/200").await);
    drop(probe);
    // A local answer (here the gateway's own 429) says nothing either.
    let res = send(&mut svc, "/local/429").await;
    assert_eq!((res.status(), outcome(&res)), (StatusCode::TOO_MANY_REQUESTS, "half_open"));
    assert_eq!(layer.snapshot().state, BreakerState::HalfOpen);
    let res = send(&mut svc, "/status/200").await;
    assert_eq!((res.status(), outcome(&res)), (StatusCode::OK, "half_open"));
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_gateways_own_answers_never_trip_it() {
    let script = Script::new();
    let layer = classic(2);
    let mut svc = breaker(&layer, &script);
    for _ in 0..50 {
        for path in ["/local/401", "/local/429", "/local/503", "/local/500"] {
            send(&mut svc, path).await;
        }
    }
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    // ...and they do not break a streak of upstream failures either.
    send(&mut svc, "/status/500").await;
    send(&mut svc, "/local/429").await;
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_needs_the_minimum_volume() {
    let script = Script::new();
    let rate = FailureRate::percent(50).window(Duration::from_secs(10)).minimum_requests(10);
    let layer = CircuitBreakerLayer::builder().failure_rate(rate).build();
    let mut svc = breaker(&layer, &script);
    // 100 % failures, but only 4 requests: not enough to judge.
    for _ in 0..4 {
        send(&mut svc, "/status/500").await;
    }
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    for _ in 0..5 {
        send(&mut svc, "/status/200").await;
    }
    assert_eq!(layer.snapshot().state, BreakerState::Closed, "4 of 9: below the volume and the rate");
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open, "5 of 10 = 50 %");
}

#[tokio::test(start_paused = true)]
async fn failure_rate_window_slides() {
    let script = Script::new();
    let rate = FailureRate::percent(50).window(Duration::from_secs(10)).minimum_requests(4);
    let layer = CircuitBreakerLayer::builder().failure_rate(rate).build();
    let mut svc = breaker(&layer, &script);
    for _ in 0..3 {
        send(&mut svc, "/status/500").await;
    }
    // The three failures leave the window; what is left is one failure in three requests.
    tokio::time::advance(Duration::from_secs(11)).await;
    send(&mut svc, "/status/200").await;
    send(&mut svc, "/status/200").await;
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open, "2 of 4 within the window");

    // Once closed again, the failures from before the trip are forgotten.
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&mut svc, "/status/200").await;
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    for _ in 0..2 {
        send(&mut svc, "/status/500").await;
    }
    assert_eq!(layer.snapshot().state, BreakerState::Closed, "2 of 3 but below the volume of 4");
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_an_earlier_closed_period_are_ignored() {
    let script = Script::new();
    let layer = classic(2);
    let mut svc = breaker(&layer, &script);
    let stragglers = [spawn(&mut svc, "/hold/500").await, spawn(&mut svc, "/hold/500").await];
    send(&mut svc, "/status/500").await;
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    send(&mut svc, "/status/200").await;
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
    script.release(2);
    for straggler in stragglers {
        assert_eq!(straggler.await.unwrap().unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.state, snapshot.consecutive_failures), (BreakerState::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn clones_share_state() {
    let script = Script::new();
    let layer = classic(2);
    let mut a = breaker(&layer.clone(), &script);
    let mut b = breaker(&layer, &script).clone();
    send(&mut a, "/status/500").await;
    send(&mut b, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open);
    assert_eq!(a.snapshot(), b.snapshot());
    assert_overloaded(&send(&mut a, "/").await);
    assert_overloaded(&send(&mut b, "/").await);
    assert_eq!(script.calls(), 2);

    let thresholds = CircuitBreakerLayer::builder().max_requests(1).build();
    let mut a = breaker(&thresholds, &script);
    let mut b = breaker(&thresholds.clone(), &script);
    let held = spawn(&mut a, "/hold/200").await;
    assert_overloaded(&send(&mut b, "/").await);
    script.release(1);
    held.await.unwrap().unwrap();
}

#[tokio::test]
async fn max_requests_overflows_at_once() {
    let script = Script::new();
    let layer = CircuitBreakerLayer::builder().max_requests(1).build();
    let mut svc = breaker(&layer, &script);
    let held = spawn(&mut svc, "/hold/200").await;
    assert_eq!(layer.snapshot().in_flight, 1);
    assert_eq!(layer.snapshot().remaining_requests(), 0);
    let res = send(&mut svc, "/").await;
    let body = assert_overloaded(&res);
    assert_eq!(body["message"], "upstream overloaded: 1 requests in flight (max_requests)");
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(outcome(&res), "overflow");
    assert_eq!(layer.snapshot().overflows, 1);
    assert_eq!(script.calls(), 1);

    script.release(1);
    assert_eq!(outcome(&held.await.unwrap().unwrap()), "closed");
    assert_eq!(layer.snapshot().in_flight, 0);
    assert_eq!(send(&mut svc, "/").await.status(), StatusCode::OK);
    // A response's slot is freed when its head arrives, whatever its status.
    send(&mut svc, "/status/500").await;
    assert!(svc.ready().await.unwrap().call(req("/error")).await.is_err());
    assert_eq!(layer.snapshot().in_flight, 0);
}

#[tokio::test]
async fn requests_beyond_max_connections_wait_as_pending() {
    let script = Script::new();
    let layer =
        CircuitBreakerLayer::builder().max_connections(1).max_pending_requests(1).max_requests(10).build();
    let mut svc = breaker(&layer, &script);
    let first = spawn(&mut svc, "/hold/200").await;
    let second = spawn(&mut svc, "/status/201").await;
    assert_eq!(script.calls(), 1, "the pending request is not sent yet");
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.in_flight, snapshot.pending), (1, 1));
    let body = assert_overloaded(&send(&mut svc, "/").await);
    assert_eq!(
        body["message"],
        "upstream overloaded: 1 connections busy and 1 requests pending (max_pending_requests)"
    );

    script.release(1);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    let second = second.await.unwrap().unwrap();
    assert_eq!((second.status(), outcome(&second)), (StatusCode::CREATED, "closed"));
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.in_flight, snapshot.pending, snapshot.overflows), (0, 0, 1));
    assert_eq!(script.calls(), 2);
}

#[tokio::test]
async fn a_pending_request_dropped_leaves_the_queue() {
    let script = Script::new();
    let layer =
        CircuitBreakerLayer::builder().max_connections(1).max_pending_requests(1).max_requests(10).build();
    let mut svc = breaker(&layer, &script);
    let first = spawn(&mut svc, "/hold/200").await;
    let waiting = svc.ready().await.unwrap().call(req("/"));
    assert_eq!(layer.snapshot().pending, 1);
    drop(waiting);
    assert_eq!(layer.snapshot().pending, 0);
    let second = spawn(&mut svc, "/status/202").await;
    script.release(1);
    first.await.unwrap().unwrap();
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!((layer.snapshot().in_flight, layer.snapshot().pending), (0, 0));
}

#[tokio::test]
async fn many_pending_requests_all_get_through() {
    let script = Script::new();
    let layer =
        CircuitBreakerLayer::builder().max_connections(2).max_pending_requests(50).max_requests(100).build();
    let mut svc = breaker(&layer, &script);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        tasks.push(spawn(&mut svc, "/hold/200").await);
    }
    assert_eq!(script.calls(), 2);
    assert_eq!(layer.snapshot().pending, 38);
    script.release(40);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(script.calls(), 40);
    assert_eq!((layer.snapshot().in_flight, layer.snapshot().pending), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_queues_nothing_and_a_probe_respects_thresholds() {
    let script = Script::new();
    let layer = CircuitBreakerLayer::builder().max_requests(1).consecutive_failures(1).build();
    let mut svc = breaker(&layer, &script);
    let held = spawn(&mut svc, "/hold/200").await;
    send(&mut svc, "/").await; // overflow
    script.release(1);
    held.await.unwrap().unwrap();
    send(&mut svc, "/status/500").await;
    assert_eq!(layer.snapshot().state, BreakerState::Open);
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.overflows, snapshot.in_flight), (1, 0));
    tokio::time::advance(Duration::from_secs(30)).await;
    let probe = spawn(&mut svc, "/hold/200").await;
    assert_eq!(outcome(&send(&mut svc, "/").await), "half_open");
    script.release(1);
    probe.await.unwrap().unwrap();
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
}

#[tokio::test]
async fn multiplexed_upstreams_ignore_max_connections() {
    let script = Script::new();
    let layer = CircuitBreakerLayer::builder()
        .max_connections(1)
        .max_pending_requests(5)
        .max_requests(2)
        .multiplexed(true)
        .build();
    let mut svc = breaker(&layer, &script);
    let held = [spawn(&mut svc, "/hold/200").await, spawn(&mut svc, "/hold/200").await];
    assert_eq!((script.calls(), layer.snapshot().pending), (2, 0));
    let body = assert_overloaded(&send(&mut svc, "/").await);
    assert_eq!(body["message"], "upstream overloaded: 2 requests in flight (max_requests)");
    script.release(2);
    for task in held {
        task.await.unwrap().unwrap();
    }
}

/// Real parallelism on the atomics: 100 tasks on four threads start together.
async fn race(svc: &Svc, path: &'static str) -> Vec<tokio::task::JoinHandle<Response<Bytes>>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (mut svc, barrier) = (svc.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                svc.ready().await.unwrap().call(req(path)).await.unwrap()
            })
        })
        .collect();
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_probe_under_100_parallel_requests() {
    let script = Script::new();
    // Open for no time at all: the next request after the trip finds it half-open.
    let layer = CircuitBreakerLayer::builder().consecutive_failures(1).open_duration(Duration::ZERO).build();
    let mut svc = breaker(&layer, &script);
    send(&mut svc, "/status/500").await;
    // Tripped, and open for no time: already what the next request finds.
    let snapshot = layer.snapshot();
    assert_eq!((snapshot.state, snapshot.times_opened), (BreakerState::HalfOpen, 1));
    let tasks = race(&svc, "/hold/200").await;
    let mut rejected = 0;
    let mut waiting = Vec::new();
    for task in tasks {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if task.is_finished() {
            assert_overloaded(&task.await.unwrap());
            rejected += 1;
        } else {
            waiting.push(task);
        }
    }
    // Every rejection is immediate; the one task left is the probe the upstream holds.
    while waiting.len() > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (done, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|t| t.is_finished());
        for task in done {
            assert_overloaded(&task.await.unwrap());
            rejected += 1;
        }
        waiting = rest;
    }
    assert_eq!((rejected, script.calls()), (99, 2));
    script.release(1);
    let probe = waiting.pop().unwrap().await.unwrap();
    assert_eq!((probe.status(), outcome(&probe)), (StatusCode::OK, "half_open"));
    assert_eq!(layer.snapshot().state, BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_requests_holds_under_100_parallel_requests() {
    let script = Script::new();
    let layer = CircuitBreakerLayer::builder().max_requests(10).build();
    let svc = breaker(&layer, &script);
    let tasks = race(&svc, "/hold/200").await;
    while script.calls() + layer.snapshot().overflows as usize != 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((script.calls(), layer.snapshot().overflows, layer.snapshot().in_flight), (10, 90, 10));
    script.release(10);
    let mut statuses = std::collections::BTreeMap::new();
    for task in tasks {
        *statuses.entry(task.await.unwrap().status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(200, 10), (503, 90)].into());
    assert_eq!(layer.snapshot().in_flight, 0);
}

#[test]
fn builder_clamps_and_defaults() {
    let snapshot = CircuitBreakerLayer::new().snapshot();
    assert_eq!(
        (snapshot.max_connections, snapshot.max_pending_requests, snapshot.max_requests),
        (1024, 1024, 1024)
    );
    assert_eq!(snapshot.state, BreakerState::Closed);
    assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    let rate = FailureRate::percent(0).window(Duration::ZERO).minimum_requests(0);
    assert_eq!(rate, FailureRate { percent: 1, window: Duration::from_millis(10), minimum_requests: 1 });
    assert_eq!(FailureRate::percent(250).percent, 100);
}

#[test]
fn the_window_counts_per_bucket_and_saturates() {
    let window = Window::new(FailureRate::percent(50).minimum_requests(2));
    let epoch = window.epoch(Duration::from_secs(3).as_nanos() as u64);
    assert_eq!(epoch, 3);
    for _ in 0..COUNT_MAX + 10 {
        window.record(epoch, false);
    }
    let value = window.slot(epoch).load(Ordering::Relaxed);
    assert_eq!((value >> COUNT_BITS) & COUNT_MAX, COUNT_MAX);
    assert!(!window.tripped(epoch));
    // Ten epochs later the same bucket is reused from zero.
    window.record(epoch + 10, true);
    window.record(epoch + 10, true);
    assert!(window.tripped(epoch + 10));
}
