//! Upstream host sets: load balancing across `targets`, outlier detection, panic routing and
//! `no_healthy_upstream`, with real upstream servers on loopback that fail on command.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use portcullis::config::{Config, ConfigErrorKind, Target};
use portcullis::proxy::{AttemptTimeout, Proxy, UpstreamInfo};
use portcullis::resilience::PreviousHosts;
use portcullis::resilience::balance::{HostSet, LoadBalancer, ManualClock};
use portcullis::resilience::classify::{Outcome, UpstreamFailure};
use portcullis::resilience::outlier::OutlierDetection;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::support::{TestGateway, closed_port, get, serve};

/// An upstream that answers with whatever status it is told to (`ALTERNATE`: 500 and 200 in
/// turn), counts what it served, and holds requests to `/hold` until released.
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    holding: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(200)),
            hits: Arc::default(),
            holding: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            paths: Arc::default(),
        };
        let server = backend.clone();
        serve(listener, move |req: Request<Incoming>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.answer(req).await) }
        });
        backend
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let hit = self.hits.fetch_add(1, SeqCst);
        self.paths.lock().unwrap().push(req.uri().path().to_owned());
        if req.uri().path().ends_with("/hold") {
            self.holding.fetch_add(1, SeqCst);
            let _permit = self.release.acquire().await.unwrap();
            self.holding.fetch_sub(1, SeqCst);
        }
        let mut res = Response::new(Full::new(Bytes::from(self.addr.to_string())));
        let status = match self.status.load(SeqCst) {
            ALTERNATE if hit % 2 == 0 => 500,
            ALTERNATE => 200,
            status => status,
        };
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        res
    }

    fn fail_with(&self, status: u16) {
        self.status.store(status, SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    fn target(&self) -> String {
        format!("\"{}\"", self.addr)
    }
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(Backend::start().await);
    }
    all
}

/// A gateway with one service over `targets` and `extra` service keys (2-space indented).
async fn gateway(targets: &[String], extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        "services:\n- name: hosts\n  targets: [{}]\n{extra}  routes:\n  - paths: [/]\n",
        targets.join(", ")
    ))
    .await
}

fn targets(backends: &[Backend]) -> Vec<String> {
    backends.iter().map(Backend::target).collect()
}

async fn statuses(gw: &TestGateway, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&gw.url("/x")).await.status.as_u16());
    }
    out
}

const ALTERNATE: u16 = 1;

const HALF: &str = "  outlier_detection: {max_ejection_percent: 50}\n";

#[tokio::test]
async fn round_robin_spreads_across_hosts() {
    let b = backends(3).await;
    let gw = gateway(&targets(&b), "").await;
    assert_eq!(statuses(&gw, 30).await, [200; 30]);
    assert_eq!(b.iter().map(Backend::hits).collect::<Vec<_>>(), [10, 10, 10]);
    // The access log names the host each request went to.
    let log = gw.stop().await;
    let first: Vec<&str> = log.iter().take(3).map(|l| l["upstream_host"].as_str().unwrap()).collect();
    assert_eq!(first, b.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn weights_split_traffic_in_proportion() {
    let b = backends(2).await;
    let targets = [
        format!("{{target: \"{}\", weight: 100}}", b[0].addr),
        format!("{{target: \"{}\", weight: 300}}", b[1].addr),
    ];
    let gw = gateway(&targets, "").await;
    statuses(&gw, 40).await;
    assert_eq!((b[0].hits(), b[1].hits()), (10, 30));
}

#[tokio::test]
async fn url_gives_the_base_path_and_targets_the_hosts() {
    let b = backends(2).await;
    let gw = TestGateway::start(&format!(
        "services:\n- name: orders\n  url: http://orders-upstream/base\n  targets: [{}]\n  routes:\n  - paths: [/]\n",
        targets(&b).join(", ")
    ))
    .await;
    assert_eq!(statuses(&gw, 2).await, [200, 200]);
    for backend in &b {
        assert_eq!(*backend.paths.lock().unwrap(), ["/base/x"]);
    }
    // `targets` alone, with Kong's split `path`.
    let gw = gateway(&targets(&b[..1]), "  path: /split\n").await;
    assert_eq!(statuses(&gw, 1).await, [200]);
    assert_eq!(b[0].paths.lock().unwrap().last().unwrap(), "/split/x");
}

#[tokio::test]
async fn least_request_prefers_the_less_loaded_host() {
    let b = backends(2).await;
    let gw = gateway(&targets(&b), "  lb_policy: LEAST_REQUEST\n").await;
    let url = gw.url("/hold");
    let held = tokio::spawn(async move { get(&url).await.status });
    while b[0].holding.load(SeqCst) + b[1].holding.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (busy, idle) = if b[0].holding.load(SeqCst) == 1 { (&b[0], &b[1]) } else { (&b[1], &b[0]) };
    // With one request in flight on `busy`, power of two choices always picks `idle`.
    assert_eq!(statuses(&gw, 20).await, [200; 20]);
    assert_eq!((busy.hits(), idle.hits()), (1, 20));
    busy.release.add_permits(1);
    assert_eq!(held.await.unwrap(), StatusCode::OK);
}

#[tokio::test]
async fn exactly_the_fifth_consecutive_500_ejects_a_host() {
    let b = backends(2).await;
    b[0].fail_with(500);
    let gw = gateway(&targets(&b), HALF).await;
    // Round robin alternates, so the failing host gets requests 1, 3, 5, 7 and 9: the first four
    // 500s leave it in service, the fifth ejects it.
    assert_eq!(statuses(&gw, 10).await, [500, 200, 500, 200, 500, 200, 500, 200, 500, 200]);
    assert_eq!(b[0].hits(), 5);
    // Ejected for base_ejection_time (30 s): no traffic at all.
    assert_eq!(statuses(&gw, 20).await, [200; 20]);
    assert_eq!((b[0].hits(), b[1].hits()), (5, 25));
}

#[tokio::test]
async fn one_200_in_between_resets_the_count() {
    let b = backends(2).await;
    let gw = gateway(&targets(&b), HALF).await;
    // Requests alternate: even ones go to b[0]. Four 500s, one 200, four 500s: still in service.
    for round in 0..9 {
        b[0].fail_with(if round == 4 { 200 } else { 500 });
        statuses(&gw, 2).await;
    }
    assert_eq!(b[0].hits(), 9);
    // One more 500 is the fifth in a row.
    b[0].fail_with(500);
    statuses(&gw, 2).await;
    assert_eq!(b[0].hits(), 10);
    statuses(&gw, 10).await;
    assert_eq!(b[0].hits(), 10, "ejected after the fifth 500 in a row");
}

#[tokio::test]
async fn default_max_ejection_percent_with_two_hosts_ejects_nothing() {
    let b = backends(2).await;
    b[0].fail_with(500);
    let gw = gateway(&targets(&b), "  outlier_detection: {consecutive_5xx: 5}\n").await;
    statuses(&gw, 40).await;
    // 10 % of 2 hosts is less than one host: twenty 500s in a row and still in service.
    assert_eq!((b[0].hits(), b[1].hits()), (20, 20));

    let b = backends(2).await;
    b[0].fail_with(500);
    let gw = gateway(&targets(&b), "  outlier_detection: {always_eject_one_host: true}\n").await;
    statuses(&gw, 40).await;
    assert_eq!((b[0].hits(), b[1].hits()), (5, 35));
}

#[tokio::test]
async fn connect_failure_on_a_dead_target_counts_as_gateway_failure() {
    let live = Backend::start().await;
    let dead = closed_port().await;
    // consecutive_5xx is out of reach: only the gateway-failure streak can eject.
    let extra = "  outlier_detection: {consecutive_5xx: 100, consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100, max_ejection_percent: 50}\n";
    let gw = gateway(&[live.target(), format!("\"{dead}\"")], extra).await;
    let answers = statuses(&gw, 12).await;
    assert_eq!(answers[..4], [200, 502, 200, 502]);
    assert_eq!(answers[4..], [200; 8], "the dead target is ejected after its second connect failure");
    assert_eq!(live.hits(), 10);
}

#[tokio::test]
async fn panic_routing_spreads_over_all_hosts_when_too_few_are_healthy() {
    let b = backends(2).await;
    b[0].fail_with(500);
    b[1].fail_with(500);
    let extra = "  outlier_detection: {consecutive_5xx: 1, max_ejection_percent: 100}\n";
    let gw = gateway(&targets(&b), extra).await;
    // One 500 each ejects both; with 0 % healthy (below the default 50 %) the set panics and
    // routes across every host rather than refusing.
    assert_eq!(statuses(&gw, 10).await, [500; 10]);
    assert_eq!((b[0].hits(), b[1].hits()), (5, 5));
}

#[tokio::test]
async fn no_healthy_upstream_is_a_503_json() {
    let b = backends(1).await;
    b[0].fail_with(500);
    let extra = "  healthy_panic_threshold: 0\n  outlier_detection: {consecutive_5xx: 1, max_ejection_percent: 100}\n";
    let gw = gateway(&targets(&b), extra).await;
    assert_eq!(get(&gw.url("/x")).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    let answer = get(&gw.url("/x")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["error"], "no_healthy_upstream");
    assert!(body["request_id"].is_string());
    assert_eq!(b[0].hits(), 1, "no request reached the ejected host");
}

#[tokio::test]
async fn previous_hosts_steer_away_from_a_tried_host() {
    let b = backends(3).await;
    let hosts = b.iter().fold(HostSet::builder(), |set, b| set.host(b.addr.to_string())).build().unwrap();
    let proxy = Proxy::builder("http://ignored/").unwrap().hosts(hosts.clone()).build::<portcullis::Body>();
    let tried = PreviousHosts(vec![b[0].addr.to_string().into(), b[1].addr.to_string().into()]);
    for _ in 0..5 {
        let mut req = Request::get("/x").body(portcullis::Body::empty()).unwrap();
        req.extensions_mut().insert(tried.clone());
        let res = proxy.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&*res.extensions().get::<UpstreamInfo>().unwrap().host, b[2].addr.to_string());
    }
    assert_eq!(b.iter().map(Backend::hits).collect::<Vec<_>>(), [0, 0, 5]);
    assert!(hosts.status().hosts.iter().all(|h| h.in_flight == 0));
}

#[tokio::test]
async fn proxy_status_shows_ejections() {
    let b = backends(2).await;
    b[0].fail_with(503);
    let hosts = HostSet::builder()
        .host(b[0].addr.to_string())
        .host(b[1].addr.to_string())
        .load_balancer(LoadBalancer::RoundRobin)
        .outlier_detection(OutlierDetection { max_ejection_percent: 50, ..Default::default() })
        .build()
        .unwrap();
    let proxy = Proxy::builder("http://ignored/").unwrap().hosts(hosts).build::<portcullis::Body>();
    for _ in 0..10 {
        let req = Request::get("/x").body(portcullis::Body::empty()).unwrap();
        proxy.clone().oneshot(req).await.unwrap();
    }
    let status = proxy.hosts().status();
    assert!(status.hosts[0].ejected && !status.hosts[1].ejected);
    assert_eq!(status.hosts[0].times_ejected, 1);
    assert!(status.hosts[0].ejected_for.unwrap() > Duration::from_secs(29));
    assert_eq!(status.ejections.enforced[0], 1);
}

#[tokio::test]
async fn success_rate_ejects_the_host_far_below_the_others() {
    let b = backends(5).await;
    b[0].fail_with(ALTERNATE);
    let clock = Arc::new(ManualClock::new());
    let outlier = OutlierDetection {
        consecutive_5xx: 0, // only the success rate may eject
        max_ejection_percent: 20,
        ..OutlierDetection::default()
    };
    let hosts = b
        .iter()
        .fold(HostSet::builder(), |set, b| set.host(b.addr.to_string()))
        .outlier_detection(outlier)
        .clock(clock.clone())
        .build()
        .unwrap();
    let proxy = Proxy::builder("http://ignored/").unwrap().hosts(hosts.clone()).build::<portcullis::Body>();
    let send = || async {
        let req = Request::get("/x").body(portcullis::Body::empty()).unwrap();
        proxy.clone().oneshot(req).await.unwrap().status()
    };
    // 100 requests per host in the first interval: success rates {50, 100, 100, 100, 100} %.
    for _ in 0..500 {
        send().await;
    }
    assert_eq!(b.iter().map(Backend::hits).collect::<Vec<_>>(), [100; 5]);
    assert!(!hosts.status().hosts[0].ejected, "success rates are judged when the interval ends");
    clock.advance(Duration::from_secs(10));
    // The first request of the next interval runs the evaluation: mean 90, stdev 20, threshold
    // 90 − 1.9 · 20 = 52 > 50.
    for _ in 0..20 {
        assert_eq!(send().await, StatusCode::OK);
    }
    assert_eq!(b[0].hits(), 100, "the ejected host got no traffic");
    let status = hosts.status();
    assert!(status.hosts[0].ejected);
    assert_eq!(status.hosts[0].success_rate, Some(50.0));
    assert_eq!(status.hosts[1].success_rate, Some(100.0));
    assert_eq!(status.hosts[0].ejected_for, Some(Duration::from_secs(30)));
    assert!((status.success_rate_threshold.unwrap() - 52.0).abs() < 1e-9);
}

#[tokio::test]
async fn an_attempt_timeout_names_and_charges_the_host_that_stalled() {
    let b = backends(2).await;
    let hosts = b.iter().fold(HostSet::builder(), |set, b| set.host(b.addr.to_string()));
    let hosts = hosts.outlier_detection(OutlierDetection::default()).build().unwrap();
    let proxy = Proxy::builder("http://ignored/").unwrap().hosts(hosts.clone()).build::<portcullis::Body>();
    let attempt = |path: &str, timeout: Duration| {
        let mut req = Request::get(path).body(portcullis::Body::empty()).unwrap();
        req.extensions_mut().insert(AttemptTimeout(timeout));
        proxy.clone().oneshot(req)
    };
    // Round robin sends the first attempt to b[0], which holds it past the attempt's deadline.
    let res = attempt("/hold", Duration::from_millis(50)).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    let info = res.extensions().get::<UpstreamInfo>().unwrap().clone();
    assert_eq!(
        (&*info.host, info.status, info.failure),
        (&*b[0].addr.to_string(), None, Some(UpstreamFailure::Timeout))
    );
    assert_eq!(Outcome::of(&res), Outcome::Timeout);
    let status = hosts.status();
    assert_eq!((status.hosts[0].consecutive_5xx, status.hosts[0].consecutive_gateway_failure), (1, 1));
    assert_eq!(status.hosts[0].in_flight, 0);
    // A deadline that does not pass changes nothing.
    let res = attempt("/x", Duration::from_secs(10)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(&*res.extensions().get::<UpstreamInfo>().unwrap().host, b[1].addr.to_string());
    b[0].release.add_permits(1);
}

// === config ===

fn service(keys: &str) -> String {
    format!("_format_version: \"3.0\"\nservices:\n- name: s\n{keys}  routes:\n  - paths: [/]\n")
}

#[test]
fn targets_and_outlier_detection_as_kong_and_envoy_write_them() {
    let yaml = service(
        "  targets: [\"127.0.0.1:9001\", {target: \"127.0.0.1:9002\", weight: 50, tags: [b]}, \"backend\"]\n  algorithm: least-connections\n  outlier_detection:\n    consecutive_5xx: 5\n    interval: 10s\n    base_ejection_time: 30s\n    max_ejection_percent: 50\n    success_rate_minimum_hosts: 5\n    success_rate_request_volume: 100\n    success_rate_stdev_factor: 1900\n",
    );
    let config = Config::from_yaml(&yaml, "test.yaml").unwrap();
    let s = &config.services[0];
    assert_eq!(
        s.targets,
        [
            Target { target: "127.0.0.1:9001".into(), weight: 100 },
            Target { target: "127.0.0.1:9002".into(), weight: 50 },
            Target { target: "backend:8000".into(), weight: 100 },
        ]
    );
    assert_eq!(s.algorithm.unwrap().0, LoadBalancer::LeastRequest);
    let outlier = s.outlier_detection.as_ref().unwrap().to_outlier_detection();
    assert_eq!(outlier.max_ejection_percent, 50);
    assert_eq!(outlier.success_rate_stdev_factor, 1.9);
    assert_eq!(outlier.enforcing_consecutive_gateway_failure, 0, "Envoy's default");
    assert_eq!(outlier.max_ejection_time, Duration::from_secs(300));
    assert_eq!(s.upstream().authority, "127.0.0.1:9001");
    config.build_router("test.yaml").unwrap();
}

#[test]
fn the_documented_example_loads() {
    let yaml = r#"
_format_version: "3.0"
services:
- name: orders
  url: http://orders-upstream/v1
  targets:
  - 127.0.0.1:9001
  - {target: 127.0.0.1:9002, weight: 300}
  lb_policy: LEAST_REQUEST
  healthy_panic_threshold: 50
  outlier_detection: {consecutive_5xx: 5, interval: 10s, base_ejection_time: 30s,
                      max_ejection_percent: 50, success_rate_minimum_hosts: 5,
                      success_rate_request_volume: 100}
  routes:
  - paths: [/v1/orders]
"#;
    let config = Config::from_yaml(yaml, "test.yaml").unwrap();
    let service = &config.services[0];
    assert_eq!(service.targets[1], Target { target: "127.0.0.1:9002".into(), weight: 300 });
    assert_eq!(service.upstream().path, "/v1");
    assert_eq!(service.healthy_panic_threshold, Some(50));
}

#[test]
fn bad_host_set_config_names_the_place() {
    let cases = [
        (
            "  targets: [\"127.0.0.1:9001\", \"127.0.0.1:9001\"]\n",
            "services[0].targets[1]",
            "duplicate target `127.0.0.1:9001` (first at services[0].targets[0])",
        ),
        ("  targets: [{target: \"a:1\", weight: 0}]\n", "services[0].targets[0]", "expected 1 to 65535"),
        ("  targets: [\"http://a:1\"]\n", "services[0].targets[0]", "expected `host:port`"),
        ("  targets: [{target: \"a:1\", wieght: 5}]\n", "services[0].targets[0]", "unknown field `wieght`"),
        ("  targets: [a:1]\n  lb_policy: MAGLEV\n", "services[0].lb_policy", "not supported yet"),
        ("  targets: [a:1]\n  lb_policy: FASTEST\n", "services[0].lb_policy", "expected `ROUND_ROBIN`"),
        (
            "  targets: [a:1]\n  lb_policy: ROUND_ROBIN\n  algorithm: round-robin\n",
            "services[0].algorithm",
            "expected one of them",
        ),
        (
            "  targets: [a:1]\n  healthy_panic_threshold: 150\n",
            "services[0].healthy_panic_threshold",
            "expected 0 to 100",
        ),
        (
            "  targets: [a:1]\n  outlier_detection: {max_ejection_percent: 101}\n",
            "services[0].outlier_detection.max_ejection_percent",
            "expected 0 to 100",
        ),
        (
            "  targets: [a:1]\n  outlier_detection: {interval: 0s}\n",
            "services[0].outlier_detection.interval",
            "expected more than 0",
        ),
        (
            "  targets: [a:1]\n  outlier_detection: {consecutive_5xxx: 3}\n",
            "services[0].outlier_detection",
            "unknown field `consecutive_5xxx`",
        ),
        ("  targets: [a:1]\n  port: 80\n  protocol: http\n", "services[0]", "without `host`"),
    ];
    for (keys, path, message) in cases {
        let err = Config::from_yaml(&service(keys), "test.yaml").unwrap_err();
        assert_eq!(err.path(), path, "{keys}: {err}");
        assert!(err.message().contains(message), "{keys}: {err}");
        assert_ne!(err.kind(), ConfigErrorKind::Read);
    }
}

/// A host ejected by five consecutive 500s shows as ejected in `/status` and `/metrics`; the
/// other host does not.
#[tokio::test]
async fn an_ejected_host_shows_in_status_and_metrics() {
    let b = backends(2).await;
    b[0].fail_with(500);
    let gw = gateway(&targets(&b), HALF).await;
    statuses(&gw, 10).await;
    assert_eq!(b[0].hits(), 5);

    let status = get(&crate::metrics::admin_url(&gw, "/status")).await.json();
    let service = &status["services"][0];
    assert_eq!(service["panic"], false);
    assert_eq!(service["outlier_detection"], true);
    let targets = service["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    let (sick, well) = (&targets[0], &targets[1]);
    assert_eq!(sick["address"], b[0].addr.to_string());
    assert_eq!(sick["ejected"], true);
    assert_eq!(sick["times_ejected"], 1);
    let left = sick["ejected_for_ms"].as_u64().unwrap();
    assert!(left > 20_000 && left <= 30_000, "ejected_for_ms: {left}");
    assert_eq!(sick["weight"], 100);
    assert_eq!(sick["in_flight"], 0);
    assert_eq!(well["address"], b[1].addr.to_string());
    assert_eq!(well["ejected"], false);
    assert_eq!(well["ejected_for_ms"], serde_json::Value::Null);
    assert_eq!(well["times_ejected"], 0);

    let (_, samples) = crate::metrics::scrape(&gw).await;
    let sample = |series: String| samples.get(&series).copied().unwrap_or_else(|| panic!("no {series}"));
    let host = |name: &str, i: usize| format!(r#"{name}{{host="{}",service="hosts"}}"#, b[i].addr);
    assert_eq!(sample(host("portcullis_upstream_host_ejected", 0)), 1.0);
    assert_eq!(sample(host("portcullis_upstream_host_ejected", 1)), 0.0);
    assert_eq!(sample(host("portcullis_upstream_host_ejections_total", 0)), 1.0);
    assert_eq!(sample(host("portcullis_upstream_host_ejections_total", 1)), 0.0);
    assert_eq!(sample(host("portcullis_upstream_host_in_flight", 0)), 0.0);
    assert_eq!(sample(r#"portcullis_upstream_ejected_hosts{service="hosts"}"#.to_owned()), 1.0);
    assert_eq!(sample(r#"portcullis_upstream_panic{service="hosts"}"#.to_owned()), 0.0);
    // No breaker configured: no breaker series at all.
    assert!(!samples.keys().any(|k| k.starts_with("portcullis_circuit_breaker")));
}
