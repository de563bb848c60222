//! The circuit breaker through real gateways: Envoy's thresholds overflowing at once, and the
//! classic breaker opening, failing fast, probing and closing, against an upstream on loopback
//! that fails and stalls on command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::support::*;

/// An upstream told what to do by the path: `/status/NNN` answers NNN, `/hold` waits until the
/// test calls [`Commanded::release`], anything else answers 200. Counts the requests it saw.
#[derive(Clone)]
struct Commanded {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Commanded {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = Commanded {
            addr: listener.local_addr().unwrap(),
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        };
        let state = upstream.clone();
        serve(listener, move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.answer(req).await) }
        });
        upstream
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path();
        if path.starts_with("/hold") {
            if let Ok(permit) = self.gate.acquire().await {
                permit.forget();
            }
        }
        let status = path
            .rsplit_once("/status/")
            .and_then(|(_, code)| code.parse::<u16>().ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::OK);
        let mut res = Response::new(Full::new(Bytes::from_static(b"upstream")));
        *res.status_mut() = status;
        res
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// Waits until the upstream has seen `n` requests.
    async fn seen(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.calls() < n {
            assert!(Instant::now() < deadline, "the upstream saw {} requests, expected {n}", self.calls());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn service(upstream: &str, breakers: &str, routes: &str) -> String {
    format!(
        "services:\n- name: orders\n  url: {upstream}\n  circuit_breakers: {breakers}\n  routes:\n  - name: orders\n    paths: [/]\n{routes}"
    )
}

fn assert_overloaded(answer: &Answer) -> serde_json::Value {
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["x-portcullis-overloaded"], "true");
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["error"], "upstream_overloaded");
    assert_eq!(body["request_id"], answer.headers["x-request-id"].to_str().unwrap());
    body
}

fn breaker_words(log: &[serde_json::Value]) -> Vec<String> {
    log.iter().map(|line| line["breaker"].as_str().unwrap_or("null").to_owned()).collect()
}

#[tokio::test]
async fn max_requests_overflow_answers_503_at_once() {
    let upstream = Commanded::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "{max_requests: 1}", "")).await;

    let slow = tokio::spawn(get_owned(gw.url("/hold")));
    upstream.seen(1).await;
    let started = Instant::now();
    let rejected = get(&gw.url("/status/200")).await;
    // The slow request is still held by the upstream: the 503 did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    assert!(!slow.is_finished());
    let body = assert_overloaded(&rejected);
    assert_eq!(body["message"], "upstream overloaded: 1 requests in flight (max_requests)");
    assert!(rejected.headers.get("retry-after").is_none());
    assert_eq!(upstream.calls(), 1, "the overflowing request never reached the upstream");

    upstream.release(1);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&gw.url("/status/200")).await.status, StatusCode::OK, "its slot is free again");

    let log = gw.stop().await;
    let mut words = breaker_words(&log);
    words.sort();
    assert_eq!(words, ["closed", "closed", "overflow"]);
    let overflow = log.iter().find(|line| line["breaker"] == "overflow").unwrap();
    assert_eq!(overflow["status"], 503);
    assert_eq!(overflow["upstream_status"], serde_json::Value::Null);
}

async fn get_owned(url: String) -> Answer {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_breaker_opens_fails_fast_probes_once_and_closes() {
    let upstream = Commanded::start().await;
    let gw =
        TestGateway::start(&service(&upstream.url(), "{consecutive_failures: 3, open_duration: 2s}", ""))
            .await;

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/status/500")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // Open: fail fast, without calling the upstream.
    for _ in 0..5 {
        let answer = get(&gw.url("/status/200")).await;
        let body = assert_overloaded(&answer);
        assert_eq!(body["message"], "upstream circuit breaker is open");
        let retry_after = answer.headers["retry-after"].to_str().unwrap();
        assert!(retry_after == "2" || retry_after == "1", "Retry-After: {retry_after}");
    }
    assert_eq!(upstream.calls(), 3, "an open circuit sends nothing upstream");

    // Half-open: of 100 concurrent requests exactly one is the probe; the rest fail fast.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let requests: Vec<_> = (0..100).map(|_| tokio::spawn(get_owned(gw.url("/hold")))).collect();
    upstream.seen(4).await;
    let mut answers = Vec::new();
    let mut probe = None;
    for request in requests {
        // The 99 rejections arrive while the probe is still held by the upstream.
        let started = Instant::now();
        loop {
            if request.is_finished() {
                answers.push(request.await.unwrap());
                break;
            }
            if started.elapsed() > Duration::from_secs(3) {
                assert!(probe.is_none(), "two requests are still waiting");
                probe = Some(request);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(answers.len(), 99);
    for answer in &answers {
        let body = assert_overloaded(answer);
        assert_eq!(body["message"], "upstream circuit breaker is half-open and its probe is in flight");
    }
    assert_eq!(upstream.calls(), 4, "exactly one probe reached the upstream");

    // The probe succeeds: closed again.
    upstream.release(1);
    assert_eq!(probe.expect("the probe").await.unwrap().status, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/status/200")).await.status, StatusCode::OK);
    }
    assert_eq!(upstream.calls(), 7);

    let log = gw.stop().await;
    let words = breaker_words(&log);
    assert_eq!(words.iter().filter(|w| *w == "open").count(), 5);
    assert_eq!(words.iter().filter(|w| *w == "half_open").count(), 100);
    assert_eq!(words.iter().filter(|w| *w == "closed").count(), 6);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_circuit() {
    let upstream = Commanded::start().await;
    let gw =
        TestGateway::start(&service(&upstream.url(), "{consecutive_failures: 2, open_duration: 1s}", ""))
            .await;
    get(&gw.url("/status/502")).await;
    get(&gw.url("/status/503")).await;
    assert_overloaded(&get(&gw.url("/")).await);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/status/500")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    let answer = get(&gw.url("/status/200")).await;
    assert_overloaded(&answer);
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(upstream.calls(), 3, "one failed probe, then nothing");
    // After another open period, a good probe closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
    assert_eq!(get(&gw.url("/")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_gateways_own_401_and_429_never_trip_it() {
    let upstream = Commanded::start().await;
    let routes = "  - name: keyed\n    paths: [/keyed]\n    plugins: [{name: key-auth}]\n  - name: limited\n    paths: [/limited]\n    plugins: [{name: rate-limiting, config: {minute: 1, limit_by: ip}}]\n";
    let yaml = format!(
        "{}consumers:\n- username: alice\n  keyauth_credentials: [{{key: alice-key}}]\n",
        service(&upstream.url(), "{consecutive_failures: 1, open_duration: 30s}", routes)
    );
    let gw = TestGateway::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/keyed/status/200")).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(get(&gw.url("/limited/status/200")).await.status, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/limited/status/200")).await.status, StatusCode::TOO_MANY_REQUESTS);
    }
    // An upstream's own 401 and 429 are answers, not failures, either.
    assert_eq!(get(&gw.url("/status/401")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&gw.url("/status/429")).await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(get(&gw.url("/status/200")).await.status, StatusCode::OK, "still closed");
    assert_eq!(upstream.calls(), 4);
    // The breaker is armed: one upstream 500 opens it, on every route of the service.
    assert_eq!(get(&gw.url("/status/500")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    let open = get(&gw.url("/status/200")).await;
    assert_overloaded(&open);
    assert_eq!(open.headers["retry-after"], "30");
    let keyed = send(
        Request::get(gw.url("/keyed/status/200"))
            .header("apikey", "alice-key")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_overloaded(&keyed);
    assert_eq!(upstream.calls(), 5);
}

#[tokio::test]
async fn routes_of_one_service_share_its_breaker() {
    let upstream = Commanded::start().await;
    let routes = "  - name: other\n    paths: [/other]\n";
    let gw = TestGateway::start(&service(&upstream.url(), "{max_requests: 1}", routes)).await;
    let slow = tokio::spawn(get_owned(gw.url("/hold")));
    upstream.seen(1).await;
    assert_overloaded(&get(&gw.url("/other")).await);
    upstream.release(1);
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    assert_eq!(get(&gw.url("/other")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_seed_envoy_thresholds_load_as_written() {
    let upstream = Commanded::start().await;
    let breakers = "\n    thresholds:\n    - priority: DEFAULT\n      max_connections: 1000\n      max_pending_requests: 500\n      max_requests: 2000\n      max_retries: 10\n      track_remaining: true";
    let gw = TestGateway::start(&service(&upstream.url(), breakers, "")).await;
    assert_eq!(get(&gw.url("/status/204")).await.status, StatusCode::NO_CONTENT);
    let log = gw.stop().await;
    assert_eq!(log[0]["breaker"], "closed");
}

/// An open circuit shows in `/status` (state, time left, counters) and in `/metrics` (the
/// `open` series at 1, the others at 0).
#[tokio::test]
async fn an_open_breaker_shows_in_status_and_metrics() {
    let upstream = Commanded::start().await;
    let gw =
        TestGateway::start(&service(&upstream.url(), "{consecutive_failures: 3, open_duration: 30s}", ""))
            .await;
    let breaker = || async {
        get(&crate::metrics::admin_url(&gw, "/status")).await.json()["services"][0]["breaker"].clone()
    };
    let closed = breaker().await;
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["open_remaining_ms"], serde_json::Value::Null);

    for _ in 0..3 {
        assert_eq!(get(&gw.url("/status/500")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_overloaded(&get(&gw.url("/status/200")).await);

    let open = breaker().await;
    assert_eq!(open["state"], "open");
    let remaining = open["open_remaining_ms"].as_u64().unwrap();
    assert!(remaining > 20_000 && remaining <= 30_000, "open_remaining_ms: {remaining}");
    assert_eq!(open["times_opened"], 1);
    assert_eq!(open["failed_fast"], 1);
    assert_eq!(open["overflows"], 0);
    assert_eq!(open["in_flight"], 0);
    assert_eq!(open["pending"], 0);

    let (_, samples) = crate::metrics::scrape(&gw).await;
    let sample = |series: &str| samples.get(series).copied().unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(sample(r#"portcullis_circuit_breaker_state{service="orders",state="open"}"#), 1.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_state{service="orders",state="closed"}"#), 0.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_state{service="orders",state="half_open"}"#), 0.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_opened_total{service="orders"}"#), 1.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_failed_fast_total{service="orders"}"#), 1.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_overflows_total{service="orders"}"#), 0.0);
    assert_eq!(sample(r#"portcullis_circuit_breaker_in_flight{service="orders"}"#), 0.0);
}
