//! Retries and the retry budget against real upstreams on loopback that fail on command.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use portcullis::Body;
use portcullis::observe::access_log::Attempts;
use portcullis::proxy::Proxy;
use portcullis::resilience::PreviousHosts;
use portcullis::resilience::retry::RetryLayer;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

use crate::support::{TestGateway, closed_port, get, send, serve};

/// What the scripted upstream does with one request.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Reads the body, answers this status.
    Status(u16),
    /// Reads the body, then never answers.
    Stall,
    /// Reads the body, then closes the connection without an answer.
    Reset,
}

/// One request as the scripted upstream saw it.
#[derive(Debug, Clone)]
struct Hit {
    /// When the request head arrived.
    at: Instant,
    method: Method,
    len: usize,
    sha256: [u8; 32],
}

/// An upstream answering a programmed sequence of acts, one per request (the last one repeats),
/// recording every request.
struct Scripted {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Scripted {
    async fn start(script: &[Act]) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script: Arc<[Act]> = script.into();
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let recorder = hits.clone();
        serve(listener, move |req: Request<Incoming>| {
            let at = Instant::now();
            let act = script[next.fetch_add(1, Ordering::SeqCst).min(script.len() - 1)];
            let recorder = recorder.clone();
            async move {
                let method = req.method().clone();
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let sha256 = Sha256::digest(&body).into();
                recorder.lock().unwrap().push(Hit { at, method, len: body.len(), sha256 });
                match act {
                    Act::Status(code) => {
                        let mut res = Response::new(Full::new(Bytes::from_static(b"scripted")));
                        *res.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok(res)
                    }
                    Act::Stall => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Err("stalled")
                    }
                    Act::Reset => Err("reset"),
                }
            }
        });
        Scripted { addr, hits }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

/// One service with `retry_policy: {policy}` and a catch-all route.
fn gateway_yaml(upstream: &str, policy: &str) -> String {
    format!(
        "services:\n- name: svc\n  url: {upstream}\n  retry_policy: {policy}\n  routes:\n  - name: all\n    paths: [/]\n"
    )
}

/// Fast backoff, so the tests spend their time on behaviour rather than waiting.
const FAST: &str = "retry_back_off: {base_interval: 1ms, max_interval: 5ms}";

fn attempts_logged(lines: &[serde_json::Value]) -> Vec<u64> {
    lines.iter().map(|line| line["attempts"].as_u64().unwrap_or(0)).collect()
}

#[tokio::test]
async fn two_503s_then_200_take_exactly_three_attempts() {
    let upstream = Scripted::start(&[Act::Status(503), Act::Status(503), Act::Status(200)]).await;
    let gw = TestGateway::start(&gateway_yaml(
        &upstream.url(),
        &format!("{{retry_on: 5xx, num_retries: 2, {FAST}}}"),
    ))
    .await;
    let res = get(&gw.url("/orders")).await;
    assert_eq!((res.status, &res.body[..]), (StatusCode::OK, &b"scripted"[..]));
    assert_eq!(upstream.count(), 3);
    assert_eq!(attempts_logged(&gw.stop().await), [3], "the access log says how many tries");
}

#[tokio::test]
async fn gateway_error_does_not_retry_500_but_retries_502() {
    let upstream = Scripted::start(&[Act::Status(500), Act::Status(200)]).await;
    let policy = format!("{{retry_on: gateway-error, num_retries: 3, {FAST}}}");
    let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
    assert_eq!(get(&gw.url("/")).await.status, 500);
    assert_eq!(upstream.count(), 1);

    let upstream = Scripted::start(&[Act::Status(502), Act::Status(200)]).await;
    let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
    assert_eq!(get(&gw.url("/")).await.status, 200);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn retriable_4xx_retries_409_only() {
    let policy = format!("{{retry_on: retriable-4xx, num_retries: 3, {FAST}}}");
    for (first, status, tries) in [(409, 200, 2), (404, 404, 1), (429, 429, 1), (503, 503, 1)] {
        let upstream = Scripted::start(&[Act::Status(first), Act::Status(200)]).await;
        let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
        assert_eq!(get(&gw.url("/")).await.status.as_u16(), status, "first answer {first}");
        assert_eq!(upstream.count(), tries, "first answer {first}");
    }
}

#[tokio::test]
async fn a_connect_failure_is_retried_even_for_a_post() {
    let gw = TestGateway::start(&gateway_yaml(
        &format!("http://{}", closed_port().await),
        &format!("{{retry_on: connect-failure, num_retries: 2, {FAST}}}"),
    ))
    .await;
    let res = send(Request::post(gw.url("/orders")).body(Full::new(Bytes::from("order"))).unwrap()).await;
    assert_eq!(res.status, 502);
    assert_eq!(res.json()["error"], "bad_gateway");
    assert_eq!(attempts_logged(&gw.stop().await), [3], "a connect failure never reached the upstream");
}

/// Host selection is built in parallel; this stands in for it with real proxies to two real
/// hosts, choosing by the `PreviousHosts` the retry layer hands each try.
#[tokio::test]
async fn previous_hosts_steers_the_retry_off_the_host_that_failed() {
    let dead = closed_port().await;
    let live = Scripted::start(&[Act::Status(200)]).await;
    let to_dead = Proxy::builder(&format!("http://{dead}")).unwrap().build::<Body>();
    let to_live = Proxy::builder(&live.url()).unwrap().build::<Body>();
    let dead_host = dead.to_string();
    let chosen = Arc::new(Mutex::new(Vec::new()));
    let log = chosen.clone();
    let hosts = tower::service_fn(move |req: Request<Body>| {
        let tried_dead = req.extensions().get::<PreviousHosts>().is_some_and(|h| h.contains(&dead_host));
        let mut proxy = if tried_dead { to_live.clone() } else { to_dead.clone() };
        log.lock().unwrap().push(if tried_dead { "live" } else { "dead" });
        async move { proxy.call(req).await }
    });
    let layer = RetryLayer::new("connect-failure".parse().unwrap()).num_retries(2).previous_hosts(true);
    let req = Request::post("/orders").body(Body::from("order")).unwrap();
    let res = layer.layer(hosts).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(*chosen.lock().unwrap(), ["dead", "live"]);
    let hits = live.hits();
    assert_eq!((hits.len(), &hits[0].method, hits[0].len), (1, &Method::POST, 5));
}

#[tokio::test]
async fn a_post_the_upstream_read_is_not_retried() {
    let policy = format!("{{retry_on: \"5xx,reset,connect-failure\", num_retries: 2, {FAST}}}");
    for (act, status) in [(Act::Status(503), 503), (Act::Reset, 502)] {
        let upstream = Scripted::start(&[act, Act::Status(200)]).await;
        let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
        let res = send(Request::post(gw.url("/orders")).body(Full::new(Bytes::from("order"))).unwrap()).await;
        assert_eq!(res.status.as_u16(), status, "{act:?}");
        assert_eq!(upstream.count(), 1, "{act:?}");
        // The same failure on a GET is retried.
        assert_eq!(get(&gw.url("/orders")).await.status, 200, "{act:?}");
    }
}

struct Chunked(VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_1_mib_post_is_not_retried_and_arrives_intact() {
    let payload: Bytes = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>().into();
    let expected: [u8; 32] = Sha256::digest(&payload).into();
    let policy = format!("{{retry_on: 5xx, num_retries: 2, retry_non_idempotent: true, {FAST}}}");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, Chunked>(hyper_util::client::legacy::connect::HttpConnector::new());
    for chunked in [false, true] {
        let upstream = Scripted::start(&[Act::Status(503), Act::Status(200)]).await;
        let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
        let status = if chunked {
            // No Content-Length: the retry layer finds out the size while reading.
            let body = Chunked(payload.chunks(16 * 1024).map(Bytes::copy_from_slice).collect());
            client.request(Request::post(gw.url("/upload")).body(body).unwrap()).await.unwrap().status()
        } else {
            send(Request::post(gw.url("/upload")).body(Full::new(payload.clone())).unwrap()).await.status
        };
        assert_eq!(status, 503, "chunked: {chunked}");
        let hits = upstream.hits();
        assert_eq!(hits.len(), 1, "chunked: {chunked}");
        assert_eq!((hits[0].len, hits[0].sha256), (payload.len(), expected), "chunked: {chunked}");
    }
    // The same policy retries a small POST, replaying its body.
    let upstream = Scripted::start(&[Act::Status(503), Act::Status(200)]).await;
    let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
    let small = payload.slice(..60 * 1024);
    let res = send(Request::post(gw.url("/upload")).body(Full::new(small.clone())).unwrap()).await;
    assert_eq!(res.status, 200);
    let small_sha: [u8; 32] = Sha256::digest(&small).into();
    assert!(upstream.hits().iter().all(|h| h.sha256 == small_sha && h.len == small.len()));
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn the_route_timeout_covers_every_try_and_no_try_starts_after_it() {
    let upstream = Scripted::start(&[Act::Stall]).await;
    let yaml = gateway_yaml(
        &upstream.url(),
        &format!("{{retry_on: 5xx, num_retries: 10, per_try_timeout: 300ms, {FAST}}}"),
    )
    .replace("  retry_policy:", "  timeout: 1s\n  retry_policy:");
    let gw = TestGateway::start(&yaml).await;
    let start = Instant::now();
    let res = get(&gw.url("/slow")).await;
    let elapsed = start.elapsed();
    assert_eq!(res.status, 504);
    assert_eq!(res.json()["error"], "upstream_timeout");
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_millis(1100), "{elapsed:?}");
    let tries = upstream.count();
    // Normally 4 (300 ms each plus backoff); fewer when the machine is loaded.
    assert!((2..=4).contains(&tries), "{tries} tries of 300 ms (plus backoff) in 1 s");
    // Nothing starts once the deadline has passed, not even later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits = upstream.hits();
    assert_eq!(hits.len(), tries);
    let deadline = start + Duration::from_secs(1);
    assert!(
        hits.iter().all(|h| h.at < deadline),
        "{:?}",
        hits.iter().map(|h| h.at - start).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_budget_bounds_attempts_against_an_upstream_that_always_fails() {
    let upstream = Scripted::start(&[Act::Status(503)]).await;
    let (ratio, min_per_second, ttl_secs) = (0.2, 2.0, 1.0);
    let policy = format!(
        "{{retry_on: 5xx, num_retries: 3, {FAST}, budget: {{budget_percent: 100, min_retry_concurrency: 100, retry_ratio: {ratio}, min_retries_per_second: {min_per_second}, ttl: 1s}}}}"
    );
    // The budget lives from the gateway's start: its allowance is counted from there.
    let start = Instant::now();
    let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &policy)).await;
    let (clients, per_client) = (4, 50);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let url = gw.url("/");
            tokio::spawn(async move {
                for _ in 0..per_client {
                    assert_eq!(get(&url).await.status, 503);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let requests = (clients * per_client) as f64;
    let attempts = upstream.count() as f64;
    // tower's TpsBudget: the ratio of the requests of the last ttl, plus a reserve of
    // min_retries_per_second × ttl, renewed as its window (ttl/10 slots) slides: over a lifetime
    // L at most min_retries_per_second × (L + ttl + one slot).
    let bound = (1.0 + ratio) * requests + min_per_second * (elapsed + 1.1 * ttl_secs);
    assert!(attempts <= bound, "{attempts} attempts for {requests} requests (bound {bound:.1})");
    assert!(attempts > requests, "retries happened within the budget ({attempts})");
    // Without a budget, every request would have made 4 attempts.
    assert!(attempts < 2.0 * requests);
}

/// Envoy's `max_retries` belongs to the cluster: two routes of one service, each with its own
/// `retry_policy`, share one count of retries in flight.
#[tokio::test]
async fn max_retries_is_shared_by_every_route_of_a_service() {
    // First attempt of a request (by its request id): 503 at once; its retry: 200 after 600 ms.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorder = seen.clone();
    serve(listener, move |req: Request<Incoming>| {
        let recorder = recorder.clone();
        async move {
            let id = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            let retry = {
                let mut seen = recorder.lock().unwrap();
                let retry = seen.contains(&id);
                seen.push(id);
                retry
            };
            let status = if retry {
                tokio::time::sleep(Duration::from_millis(600)).await;
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    });
    let policy = format!("{{retry_on: 5xx, num_retries: 1, {FAST}}}");
    let yaml = format!(
        "services:\n- name: svc\n  url: http://{addr}\n  circuit_breakers: {{max_retries: 1}}\n  routes:\n  - name: a\n    paths: [/a]\n    retry_policy: {policy}\n  - name: b\n    paths: [/b]\n    retry_policy: {policy}\n"
    );
    let gw = TestGateway::start(&yaml).await;
    let (url_a, url_b) = (gw.url("/a"), gw.url("/b"));
    let (a, b) = tokio::join!(get(&url_a), get(&url_b));
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503], "one retry ran; the other overflowed the service's max_retries");
    assert_eq!(seen.lock().unwrap().len(), 3, "two first attempts and one retry");
    // One after the other, each may retry.
    assert_eq!(get(&url_a).await.status, 200);
    assert_eq!(get(&url_b).await.status, 200);
}

#[tokio::test]
async fn a_routes_retry_policy_replaces_its_services() {
    let upstream = Scripted::start(&[Act::Status(503), Act::Status(503), Act::Status(200)]).await;
    let yaml = format!(
        "services:\n- name: svc\n  url: {}\n  retry_policy: {{retry_on: 5xx, num_retries: 2, {FAST}}}\n  routes:\n  - name: own\n    paths: [/own]\n    retry_policy: {{retry_on: retriable-4xx, num_retries: 2}}\n  - name: inherited\n    paths: [/inherited]\n",
        upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/own")).await.status, 503, "retriable-4xx does not retry 503");
    assert_eq!(upstream.count(), 1);
    assert_eq!(get(&gw.url("/inherited")).await.status, 200);
    assert_eq!(upstream.count(), 3);
    assert_eq!(attempts_logged(&gw.stop().await), [1, 2]);
}

/// One service over a dead target weighted far above a live one: smooth weighted round robin picks
/// the dead one first and again for a retry, unless `previous_hosts` steers the retry away.
fn weighted_yaml(dead: SocketAddr, live: &Scripted, predicate: &str) -> String {
    format!(
        "services:\n- name: svc\n  targets: [{{target: \"{dead}\", weight: 100}}, {{target: \"{}\", weight: 1}}]\n  retry_policy: {{retry_on: connect-failure, num_retries: 1, {FAST}{predicate}}}\n  routes:\n  - name: all\n    paths: [/]\n",
        live.addr
    )
}

#[tokio::test]
async fn previous_hosts_sends_the_retry_to_an_untried_target_through_the_gateway() {
    let dead = closed_port().await;
    let live = Scripted::start(&[Act::Status(200)]).await;
    let gw =
        TestGateway::start(&weighted_yaml(dead, &live, ", retry_host_predicate: [previous_hosts]")).await;
    let res = get(&gw.url("/orders")).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(live.count(), 1);
    let lines = gw.stop().await;
    assert_eq!(attempts_logged(&lines), [2]);
    assert_eq!(lines[0]["upstream_host"], live.addr.to_string(), "the log names the host that answered");

    // Without the predicate the retry goes where the weights say: the dead target again.
    let live = Scripted::start(&[Act::Status(200)]).await;
    let gw = TestGateway::start(&weighted_yaml(dead, &live, "")).await;
    let res = get(&gw.url("/orders")).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert_eq!(live.count(), 0);
    assert_eq!(attempts_logged(&gw.stop().await), [2]);
}

/// The seed's Envoy route and cluster (`tests/fixtures/seed/envoy-route-config.yaml`, the seed's
/// file unchanged) pasted as written into a portcullis service: the route's `timeout` and `retry_policy` (Envoy's host-predicate
/// form) on the route, the cluster's `connect_timeout`, `circuit_breakers` (Envoy's `thresholds`
/// shape) and `outlier_detection` on the service. The operator only says where the hosts are.
#[tokio::test]
async fn the_seed_envoy_route_and_cluster_work_as_written() {
    use serde_yaml_ng::{Mapping, Value};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed/envoy-route-config.yaml");
    let seed: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vhost = &seed["virtual_hosts"][0];
    let envoy_route = &vhost["routes"][0];
    let cluster = &seed["clusters"][0];

    let dead = closed_port().await;
    let live = Scripted::start(&[Act::Status(503), Act::Status(200)]).await;
    let mut route = Mapping::new();
    route.insert("name".into(), vhost["name"].clone());
    route.insert("hosts".into(), vhost["domains"].clone());
    route.insert("paths".into(), Value::Sequence(vec![envoy_route["match"]["prefix"].clone()]));
    route.insert("strip_path".into(), false.into());
    for key in ["timeout", "retry_policy"] {
        route.insert(key.into(), envoy_route["route"][key].clone());
    }
    let mut service = Mapping::new();
    service.insert("name".into(), envoy_route["route"]["cluster"].clone());
    service.insert(
        "targets".into(),
        Value::Sequence(vec![dead.to_string().into(), live.addr.to_string().into()]),
    );
    for key in ["connect_timeout", "circuit_breakers", "outlier_detection"] {
        service.insert(key.into(), cluster[key].clone());
    }
    service.insert("routes".into(), Value::Sequence(vec![Value::Mapping(route)]));
    let mut services = Mapping::new();
    services.insert("services".into(), Value::Sequence(vec![Value::Mapping(service)]));
    let gw = TestGateway::start(&serde_yaml_ng::to_string(&services).unwrap()).await;

    // Round robin: the first request meets the dead host, then (previous_hosts) the live one's
    // 503, then — every host tried — a third try; the seed allows two retries in all.
    let request = || {
        send(
            Request::get(gw.url("/v1/orders/42"))
                .header("host", "api.example.com")
                .body(Full::default())
                .unwrap(),
        )
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(request().await.status);
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let lines = gw.stop().await;
    let attempts = attempts_logged(&lines);
    assert!(attempts.iter().all(|a| (1..=3).contains(a)), "{attempts:?}");
    assert!(attempts.iter().any(|a| *a > 1), "the dead host and the 503 were retried: {attempts:?}");
    assert!(live.hits().iter().all(|hit| hit.method == Method::GET));
    assert!(lines.iter().all(|line| line["upstream_host"] == live.addr.to_string()));
}

/// After 503, 503, 200 the route's two retries are counted in `/status` and `/metrics`.
#[tokio::test]
async fn retries_are_counted_in_status_and_metrics() {
    let upstream = Scripted::start(&[Act::Status(503), Act::Status(503), Act::Status(200)]).await;
    let gw = TestGateway::start(&gateway_yaml(
        &upstream.url(),
        &format!("{{retry_on: 5xx, num_retries: 2, {FAST}}}"),
    ))
    .await;
    assert_eq!(get(&gw.url("/orders")).await.status, StatusCode::OK);
    assert_eq!(upstream.count(), 3);

    let status = get(&crate::metrics::admin_url(&gw, "/status")).await.json();
    assert_eq!(
        status["retries"],
        serde_json::json!([{
            "route": "all", "service": "svc", "retries": 2, "exhausted": 0, "budget_exhausted": 0,
            "overflow": 0, "budget": {"active_requests": 0, "retries_in_flight": 0}
        }])
    );

    let (_, samples) = crate::metrics::scrape(&gw).await;
    let sample = |series: &str| samples.get(series).copied().unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(sample(r#"portcullis_retries_total{route="all",service="svc"}"#), 2.0);
    assert_eq!(sample(r#"portcullis_retries_exhausted_total{route="all",service="svc"}"#), 0.0);
    assert_eq!(sample(r#"portcullis_retry_budget_exhausted_total{route="all",service="svc"}"#), 0.0);
    assert_eq!(sample(r#"portcullis_retry_overflow_total{route="all",service="svc"}"#), 0.0);
}
