//! `GET /metrics` and `GET /status` on the admin listener of a real gateway: the text parses as
//! Prometheus exposition (with `prometheus-parse` and a strict line checker), counters move with
//! each outcome (200, 401, 403, 429, 404, 502), and no label, status field or log line carries a
//! key or token.

use std::collections::HashMap;

use http::Request;
use http_body_util::Full;

use crate::support::*;

const KEY: &str = "sk-live-7f3a9c0e-SECRET";
const WRONG_KEY: &str = "sk-wrong-0000-SECRET";
/// An HS256 token for `alice-hs` with a forged signature.
const FORGED_JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImFsaWNlLWhzIn0.\
    eyJpc3MiOiJhbGljZS1ocyIsInN1YiI6IngiLCJleHAiOjQxMDI0NDQ4MDB9.Zm9yZ2VkLXNpZ25hdHVyZS1TRUNSRVQtYnl0ZXM";

async fn gateway() -> (TestGateway, Upstream) {
    let upstream = Upstream::start().await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"consumers:
- username: alice
  keyauth_credentials: [{{key: {KEY}}}]
  jwt_secrets: [{{key: alice-hs, algorithm: HS256, secret: alice-shared-secret}}]
services:
- name: echo-svc
  url: {upstream}
  routes:
  - name: open
    paths: [/open]
  - name: keyed
    paths: [/keyed]
    plugins: [{{name: key-auth}}]
  - name: limited
    paths: [/limited]
    plugins: [{{name: rate-limiting, config: {{minute: 2, policy: local}}}}]
  - name: admins
    paths: [/admins]
    plugins: [{{name: key-auth}}, {{name: acl, config: {{allow: [admins]}}}}]
  - name: tokens
    paths: [/tokens]
    plugins: [{{name: jwt}}]
- name: dead-svc
  url: http://{dead}
  routes:
  - name: dead
    paths: [/dead]
"#,
        upstream = upstream.url()
    );
    (TestGateway::start(&yaml).await, upstream)
}

pub(crate) fn admin_url(gw: &TestGateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin.expect("the test gateway has an admin listener"))
}

/// Scrapes `/metrics` in the classic text format, checks every line strictly, parses it with
/// `prometheus-parse` too, and returns `series -> value` (series as `name{k="v",...}` with
/// labels sorted by name).
pub(crate) async fn scrape(gw: &TestGateway) -> (String, HashMap<String, f64>) {
    let answer = get(&admin_url(gw, "/metrics")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let strict = strict_parse(&text);

    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("prometheus-parse rejects /metrics");
    assert!(!parsed.samples.is_empty());
    for sample in &parsed.samples {
        let mut labels: Vec<_> = sample.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.sort();
        let key = series_key(&sample.metric, &labels);
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        };
        if let Some(value) = value {
            assert_eq!(strict.get(&key), Some(&value), "the two parsers disagree on {key}");
        }
    }
    (text, strict)
}

fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// A strict reader of the Prometheus text format 0.0.4: every line is a `# HELP`, a `# TYPE`
/// (each family described once, before its samples), or a sample `name{labels} value` whose
/// name belongs to the family last described, with valid names, quoted and escaped label values,
/// and a float value.
fn strict_parse(text: &str) -> HashMap<String, f64> {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut samples = HashMap::new();
    let mut described: HashMap<String, String> = HashMap::new();
    let mut family: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "bad HELP name: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("TYPE without a type: {line}"));
            assert!(valid_name(name), "bad TYPE name: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "unknown type: {line}"
            );
            assert!(described.insert(name.to_owned(), kind.to_owned()).is_none(), "described twice: {line}");
            family = Some((name.to_owned(), kind.to_owned()));
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line: {line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    (name, parse_labels(rest.strip_suffix('}').expect("unclosed labels"), line))
                }
                None => (series, Vec::new()),
            };
            assert!(valid_name(name), "bad sample name: {line}");
            let (family_name, kind) = family.as_ref().unwrap_or_else(|| panic!("sample before TYPE: {line}"));
            let belongs = match kind.as_str() {
                "histogram" => {
                    ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{family_name}{s}"))
                }
                _ => name == family_name,
            };
            assert!(belongs, "sample {name} outside its family {family_name}");
            let mut labels = labels;
            labels.sort();
            let key = series_key(name, &labels);
            assert!(samples.insert(key, value).is_none(), "duplicate series: {line}");
        }
    }
    samples
}

fn parse_labels(mut rest: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad label name in {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        labels.push((key.to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn requests(samples: &HashMap<String, f64>, route: &str, service: &str, class: &str) -> f64 {
    let key =
        format!(r#"portcullis_requests_total{{route="{route}",service="{service}",status_class="{class}"}}"#);
    samples.get(&key).copied().unwrap_or(0.0)
}

async fn send_with_key(gw: &TestGateway, path: &str, key: &str) -> u16 {
    let req = Request::get(gw.url(path)).header("apikey", key).body(Full::default()).unwrap();
    send(req).await.status.as_u16()
}

#[tokio::test]
async fn counters_move_with_each_outcome_and_never_carry_a_key() {
    let (gw, echo) = gateway().await;
    let (_, before) = scrape(&gw).await;
    assert_eq!(requests(&before, "open", "echo-svc", "2xx"), 0.0);

    assert_eq!(get(&gw.url("/open")).await.status, 200);
    assert_eq!(get(&gw.url("/open")).await.status, 200);
    assert_eq!(send_with_key(&gw, "/keyed", KEY).await, 200);
    assert_eq!(send_with_key(&gw, "/keyed", WRONG_KEY).await, 401);
    assert_eq!(get(&gw.url(&format!("/keyed?apikey={WRONG_KEY}"))).await.status, 401);
    assert_eq!(get(&gw.url("/keyed")).await.status, 401);
    for expected in [200, 200, 429] {
        assert_eq!(get(&gw.url("/limited")).await.status, expected);
    }
    assert_eq!(send_with_key(&gw, "/admins", KEY).await, 403, "alice is not in `admins`");
    let forged = Request::get(gw.url("/tokens"))
        .header("authorization", format!("Bearer {FORGED_JWT}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(send(forged).await.status, 401);
    assert_eq!(get(&gw.url(&format!("/nowhere?apikey={KEY}"))).await.status, 404);
    assert_eq!(get(&gw.url("/dead")).await.status, 502);

    let (text, after) = scrape(&gw).await;
    assert_eq!(requests(&after, "open", "echo-svc", "2xx"), 2.0, "{text}");
    assert_eq!(requests(&after, "keyed", "echo-svc", "2xx"), 1.0, "{text}");
    assert_eq!(requests(&after, "keyed", "echo-svc", "4xx"), 3.0, "{text}");
    assert_eq!(requests(&after, "limited", "echo-svc", "2xx"), 2.0, "{text}");
    assert_eq!(requests(&after, "limited", "echo-svc", "4xx"), 1.0, "{text}");
    assert_eq!(requests(&after, "", "", "4xx"), 1.0, "{text}");
    assert_eq!(requests(&after, "dead", "dead-svc", "5xx"), 1.0, "{text}");

    let rate_limit = |outcome: &str| {
        let key = format!(
            r#"portcullis_rate_limit_decisions_total{{outcome="{outcome}",route="limited",service="echo-svc"}}"#
        );
        after.get(&key).copied()
    };
    assert_eq!((rate_limit("allowed"), rate_limit("limited")), (Some(2.0), Some(1.0)), "{text}");

    let auth = |reason: &str| {
        let key = format!(r#"portcullis_auth_failures_total{{plugin="key-auth",reason="{reason}"}}"#);
        after.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(auth("invalid_credentials") + auth("unauthorized"), 3.0, "{text}");
    assert!(auth("invalid_credentials") >= 2.0, "{text}");
    let acl = r#"portcullis_auth_failures_total{plugin="acl",reason="forbidden"}"#;
    assert_eq!(after.get(acl), Some(&1.0), "{text}");
    let jwt: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with(r#"portcullis_auth_failures_total{plugin="jwt","#))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(jwt, 1.0, "{text}");

    // Latency: every request timed; upstream time and overhead for the proxied ones (open,
    // keyed and limited answered by the upstream: 5, and the failed connection to `dead`, timed
    // as the access log times it).
    let total: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("portcullis_request_duration_seconds_count{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 13.0, "{text}");
    let upstream: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("portcullis_upstream_duration_seconds_count{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(upstream, 6.0, "{text}");
    let open_overhead = r#"portcullis_gateway_overhead_seconds_count{route="open",service="echo-svc"}"#;
    assert_eq!(after.get(open_overhead), Some(&2.0), "{text}");
    assert_eq!(after.get("portcullis_access_log_dropped_lines_total{}"), Some(&0.0), "{text}");
    let store_errors = r#"portcullis_rate_limit_store_errors_total{kind="unavailable",route="limited"}"#;
    assert_eq!(after.get(store_errors), Some(&0.0), "{text}");

    // Nothing secret anywhere: not in the metrics, not in /status, not in the access log.
    let status = get(&admin_url(&gw, "/status")).await.body;
    let status = String::from_utf8(status.to_vec()).unwrap();
    let openmetrics = {
        let req = Request::get(admin_url(&gw, "/metrics"))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .body(Full::default())
            .unwrap();
        let answer = send(req).await;
        assert!(answer.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        String::from_utf8(answer.body.to_vec()).unwrap()
    };
    assert!(openmetrics.ends_with("# EOF\n"));
    let log = gw.stop().await;
    assert_eq!(log.len(), 13);
    for metrics in [&text, &openmetrics] {
        // The one address in labels is an upstream host's, as the config names it (`host`, on the
        // upstream host series only): one per service here.
        let mut hosts = std::collections::BTreeSet::new();
        let metrics = &metrics
            .lines()
            .map(|line| match line.split_once("host=\"") {
                Some((before, rest)) => {
                    assert!(before.starts_with("portcullis_upstream_host_"), "a host label on {line}");
                    let (host, after) = rest.split_once('"').unwrap();
                    hosts.insert(host.to_owned());
                    format!("{before}host=\"…\"{after}\n")
                }
                None => format!("{line}\n"),
            })
            .collect::<String>();
        assert_eq!(hosts.len(), 2, "{hosts:?}");
        assert!(hosts.contains(&echo.addr.to_string()), "{hosts:?}");
        // Otherwise labels are route and service names and fixed words: no key, query, path or
        // address.
        for leak in [KEY, WRONG_KEY, FORGED_JWT, "SECRET", "apikey", "Bearer", "eyJ", "nowhere", "127.0.0.1"]
        {
            assert!(!metrics.contains(leak), "`{leak}` leaked into /metrics:\n{metrics}");
        }
    }
    for other in [status, serde_json::to_string(&log).unwrap()] {
        for leak in [KEY, WRONG_KEY, FORGED_JWT, "SECRET", "eyJ"] {
            assert!(!other.contains(leak), "`{leak}` leaked into:\n{other}");
        }
    }
}

#[tokio::test]
async fn status_reports_routes_services_rate_limiters_and_the_config_version() {
    let (gw, upstream) = gateway().await;
    let answer = get(&admin_url(&gw, "/status")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/json");
    let status = answer.json();
    assert_eq!(status["status"], "ok");

    let version = status["config"]["version"].as_str().unwrap();
    assert!(version.starts_with("sha256:") && version.len() == 7 + 64, "{version}");
    assert_eq!(status["config"]["origin"], "test.yaml");
    let loaded_at = status["config"]["loaded_at"].as_str().unwrap();
    humantime::parse_rfc3339(loaded_at).unwrap();

    let routes = status["routes"].as_array().unwrap();
    let names: Vec<_> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["open", "keyed", "limited", "admins", "tokens", "dead"]);
    assert_eq!(routes[0]["service"], "echo-svc");
    assert_eq!(routes[0]["paths"], serde_json::json!(["/open"]));

    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[0]["name"], "echo-svc");
    let url = format!("{}/", upstream.url()); // the resolved URL: scheme, authority, path
    assert_eq!(services[0]["url"], url);
    assert_eq!(
        services[0]["targets"],
        serde_json::json!([{
            "address": upstream.addr.to_string(), "weight": 1, "in_flight": 0, "ejected": false,
            "ejected_for_ms": null, "times_ejected": 0, "success_rate": null
        }])
    );
    assert_eq!(services[0]["breaker"], serde_json::Value::Null);
    assert_eq!(services[0]["panic"], false);
    assert_eq!(services[0]["load_balancer"], "round_robin");
    assert_eq!(status["retries"], serde_json::json!([]), "no route has a retry policy");

    let limiters = status["rate_limiters"].as_array().unwrap();
    assert_eq!(limiters.len(), 1);
    assert_eq!(
        limiters[0],
        serde_json::json!({
            "route": "limited", "service": "echo-svc", "policy": "local", "consumer": null, "healthy": true,
            "store_errors": {"unavailable": 0, "script": 0}, "bypassed": 0
        })
    );

    assert_eq!(get(&admin_url(&gw, "/healthz")).await.json()["status"], "ok");
    assert_eq!(get(&admin_url(&gw, "/nothing")).await.status, 404);
}

/// A Redis rate-limit store that is down shows as unhealthy in `/status`, its failures are
/// counted by kind in `/metrics`, and the requests it let through are `bypassed`; one that is up
/// is healthy.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_health_and_errors_are_reported() {
    use crate::ratelimit::on_redis::RedisServer;

    let upstream = Upstream::start().await;
    let down = closed_port().await;
    let live = RedisServer::start().await;
    let live_port = live.as_ref().map_or(down.port(), |r| r.port);
    let yaml = format!(
        r#"services:
- name: svc
  url: {upstream}
  routes:
  - name: down
    paths: [/down]
    plugins: [{{name: rate-limiting, config: {{minute: 100, policy: redis, redis_host: 127.0.0.1, redis_port: {down}, redis_timeout: 500}}}}]
  - name: up
    paths: [/up]
    plugins: [{{name: rate-limiting, config: {{minute: 100, policy: redis, redis_host: 127.0.0.1, redis_port: {live_port}, redis_timeout: 10000}}}}]
"#,
        upstream = upstream.url(),
        down = down.port()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/down")).await.status, 200, "fault tolerant: admitted");
    if live.is_some() {
        assert_eq!(get(&gw.url("/up")).await.status, 200);
    }

    let status = get(&admin_url(&gw, "/status")).await.json();
    let limiters = status["rate_limiters"].as_array().unwrap();
    let down_status = limiters.iter().find(|l| l["route"] == "down").unwrap();
    assert_eq!(down_status["policy"], "redis");
    assert_eq!(down_status["healthy"], false, "{down_status}");
    assert_eq!(down_status["store_errors"]["unavailable"], 1, "{down_status}");
    assert_eq!(down_status["bypassed"], 1, "{down_status}");
    if live.is_some() {
        let up_status = limiters.iter().find(|l| l["route"] == "up").unwrap();
        assert_eq!(up_status["healthy"], true, "{up_status}");
        assert_eq!(up_status["store_errors"]["unavailable"], 0, "{up_status}");
    }

    let (text, samples) = scrape(&gw).await;
    let errors = |route: &str, kind: &str| {
        samples
            .get(&format!(r#"portcullis_rate_limit_store_errors_total{{kind="{kind}",route="{route}"}}"#))
            .copied()
    };
    assert_eq!((errors("down", "unavailable"), errors("down", "script")), (Some(1.0), Some(0.0)), "{text}");
    let bypassed = r#"portcullis_rate_limit_decisions_total{outcome="bypassed",route="down",service="svc"}"#;
    assert_eq!(samples.get(bypassed), Some(&1.0), "{text}");
    if live.is_some() {
        let allowed = r#"portcullis_rate_limit_decisions_total{outcome="allowed",route="up",service="svc"}"#;
        assert_eq!(samples.get(allowed), Some(&1.0), "{text}");
    }
}
