//! Rate limiting through real gateways: Kong's `minute: 6` sequence, exact counting under
//! concurrency, client-IP keys that a spoofed `X-Forwarded-For` cannot multiply, and config errors.

use http::Request;
use http_body_util::Full;
use portcullis::gateway::Gateway;

use crate::support::*;

fn service(upstream: &str, plugin_config: &str) -> String {
    format!(
        r#"services:
- name: orders
  url: {upstream}
  routes:
  - name: orders-v1
    paths: [/v1/orders]
    plugins:
    - name: rate-limiting
      config: {plugin_config}
"#
    )
}

#[tokio::test]
async fn kong_minute_6_sequence_end_to_end() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "{minute: 6, limit_by: ip}")).await;
    let mut remaining = Vec::new();
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..7 {
        let res = get(&gw.url("/v1/orders")).await;
        statuses.push(res.status.as_u16());
        remaining.push(res.headers["x-ratelimit-remaining"].to_str().unwrap().to_owned());
        assert_eq!(res.headers["x-ratelimit-limit"], "6");
        assert_eq!(res.headers["x-ratelimit-limit-minute"], "6");
        assert_eq!(res.headers["ratelimit-limit"], "6");
        assert_eq!(res.headers["x-ratelimit-remaining-minute"], res.headers["x-ratelimit-remaining"]);
        let reset: u64 = res.headers["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "RateLimit-Reset is seconds from now: {reset}");
        let epoch: u64 = res.headers["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(epoch >= now && epoch <= now + 61, "X-RateLimit-Reset is epoch seconds: {epoch}");
        last = Some(res);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429]);
    assert_eq!(remaining, ["5", "4", "3", "2", "1", "0", "0"]);
    assert_eq!(upstream.seen().len(), 6, "the rejected request never reached the upstream");
    let rejected = last.unwrap();
    assert_eq!(rejected.headers["content-type"], "application/json");
    let retry: u64 = rejected.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let body = rejected.json();
    assert_eq!(body["error"], "rate_limit_exceeded");
    assert_eq!(body["message"], format!("Request limit of 6/minute exceeded. Retry after {retry} seconds."));
    assert_eq!(body["request_id"], rejected.headers["x-request-id"].to_str().unwrap());

    let log = gw.stop().await;
    let outcomes: Vec<_> =
        log.iter().map(|line| line["rate_limit"].as_str().unwrap_or("-").to_owned()).collect();
    assert_eq!(outcomes, ["allowed", "allowed", "allowed", "allowed", "allowed", "allowed", "limited"]);
}

#[tokio::test]
async fn configured_status_message_and_hidden_headers() {
    let upstream = Upstream::start().await;
    let config = r#"{minute: 1, limit_by: ip, hide_client_headers: true, error_code: 403, error_message: "API rate limit exceeded"}"#;
    let gw = TestGateway::start(&service(&upstream.url(), config)).await;
    let res = get(&gw.url("/v1/orders")).await;
    assert_eq!(res.status, 200);
    assert!(res.headers.get("x-ratelimit-limit").is_none());
    assert!(res.headers.get("ratelimit-limit").is_none());
    let res = get(&gw.url("/v1/orders")).await;
    assert_eq!(res.status, 403);
    assert!(res.headers.get("x-ratelimit-remaining").is_none());
    assert_eq!(res.json()["message"], "API rate limit exceeded");
    assert_eq!(res.json()["error"], "rate_limit_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_admit_exactly_the_limit() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "{minute: 100, limit_by: ip}")).await;
    let client = client();
    let url = gw.url("/v1/orders");
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let res = client.request(Request::get(&url).body(Full::default()).unwrap()).await.unwrap();
                res.status().as_u16()
            })
        })
        .collect();
    let mut admitted = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            200 => admitted += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((admitted, limited), (100, 900));
    assert_eq!(upstream.seen().len(), 100);
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_creates_no_new_key() {
    let upstream = Upstream::start().await;
    // No trusted proxies: the socket peer is the client, whatever X-Forwarded-For says.
    let gw = TestGateway::start(&service(&upstream.url(), "{second: 2, minute: 2, limit_by: ip}")).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let req = Request::get(gw.url("/v1/orders"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .body(Full::default())
            .unwrap();
        statuses.push(send(req).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test]
async fn token_bucket_and_leaky_bucket_from_config() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(
        &upstream.url(),
        "{algorithm: token-bucket, capacity: 2, refill_per_second: 0.01, limit_by: ip}",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&gw.url("/v1/orders")).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);

    let gw = TestGateway::start(&service(
        &upstream.url(),
        "{algorithm: leaky-bucket, capacity: 2, drain_per_second: 20, limit_by: ip}",
    ))
    .await;
    let started = std::time::Instant::now();
    let url = gw.url("/v1/orders");
    let (a, b) = tokio::join!(get(&url), get(&url));
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    // The second waited for its slot, 1/20 s after the first.
    assert!(started.elapsed() >= std::time::Duration::from_millis(50));
}

fn build_error(plugin_config: &str) -> String {
    let yaml = format!("_format_version: \"3.0\"\n{}", service("http://127.0.0.1:1", plugin_config));
    match Gateway::from_yaml(&yaml, "gw.yaml") {
        Ok(_) => panic!("accepted: {plugin_config}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_key() {
    let at = "services[0].routes[0].plugins[0].config";
    let e = build_error("{minute: 0}");
    assert!(e.contains(&format!("{at}.minute")) && e.contains("≥ 1"), "{e}");
    let e = build_error("{minute: 60, hour: 10}");
    assert!(
        e.contains(&format!("{at}.hour")) && e.contains("cannot be lower than the limit for minute (60)"),
        "{e}"
    );
    let e = build_error("{}");
    assert!(e.contains("at least one of"), "{e}");
    let e = build_error("{minute: 5, algorithm: token-bucket, capacity: 3, refill_per_second: 1}");
    assert!(e.contains(&format!("{at}.minute")), "{e}");
    let e = build_error("{algorithm: leaky-bucket, capacity: 3}");
    assert!(e.contains(&format!("{at}.drain_per_second")), "{e}");
    let e = build_error("{minute: 5, algorithm: sideways}");
    assert!(e.contains(&format!("{at}.algorithm")), "{e}");
    let e = build_error("{minute: 5, limit_by: header}");
    assert!(e.contains(&format!("{at}.header_name")), "{e}");
}

const SEED_BLOCK: &str = r#"{minute: ~, hour: 1000, day: ~, policy: redis, redis_host: redis.internal, redis_port: 6379, redis_database: 0, limit_by: credential, fault_tolerant: true, hide_client_headers: false, error_code: 429, error_message: "API rate limit exceeded"}"#;

#[test]
fn the_seed_rate_limiting_block_parses() {
    // The seed's block (kong-plugins.yaml), `~` windows included.
    let yaml = format!("_format_version: \"3.0\"\n{}", service("http://127.0.0.1:1", SEED_BLOCK));
    if cfg!(feature = "redis") {
        // Nothing connects before the first request.
        Gateway::from_yaml(&yaml, "gw.yaml").unwrap();
    } else {
        let e = build_error(SEED_BLOCK);
        assert!(e.contains("config.policy") && e.contains("`redis` feature"), "{e}");
    }
    let local = SEED_BLOCK.replace("policy: redis", "policy: local");
    let yaml = format!("_format_version: \"3.0\"\n{}", service("http://127.0.0.1:1", &local));
    Gateway::from_yaml(&yaml, "gw.yaml").unwrap();
}

/// Fires `n` concurrent GETs at each URL in turn (round robin) and counts the statuses.
#[cfg(feature = "redis")]
async fn burst(urls: &[String], n: usize) -> std::collections::BTreeMap<u16, usize> {
    let client = client();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let url = urls[i % urls.len()].clone();
            tokio::spawn(async move {
                let res = client.request(Request::get(&url).body(Full::default()).unwrap()).await.unwrap();
                res.status().as_u16()
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        *counts.entry(task.await.unwrap()).or_default() += 1;
    }
    counts
}

#[cfg(feature = "redis")]
pub(crate) mod on_redis {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// A `redis-server` of our own on a free loopback port, killed by pid on drop.
    pub(crate) struct RedisServer {
        child: Option<Child>,
        pub(crate) port: u16,
    }

    impl RedisServer {
        /// `None` (a skip) when `redis-server` is missing, unless `PORTCULLIS_REQUIRE_REDIS=1`.
        pub(crate) async fn start() -> Option<RedisServer> {
            let port = closed_port().await.port();
            let server = RedisServer { child: Self::spawn(port), port };
            if server.child.is_none() {
                assert!(
                    std::env::var("PORTCULLIS_REQUIRE_REDIS").as_deref() != Ok("1"),
                    "redis-server is required (PORTCULLIS_REQUIRE_REDIS=1) but could not be started"
                );
                skipped("redis-server not found (PORTCULLIS_REQUIRE_REDIS=1 makes this a failure)");
                return None;
            }
            server.wait_up().await;
            Some(server)
        }

        fn spawn(port: u16) -> Option<Child> {
            Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        }

        async fn wait_up(&self) {
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("redis-server did not come up on {}", self.port);
        }

        pub(super) fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        pub(super) async fn restart(&mut self) {
            self.kill();
            self.child = Self::spawn(self.port);
            self.wait_up().await;
        }

        pub(super) fn signal(&self, signal: &str) {
            let pid = self.child.as_ref().expect("running").id().to_string();
            let status = Command::new("kill").args([signal, &pid]).status().unwrap();
            assert!(status.success());
        }

        pub(crate) async fn connection(&self) -> redis::aio::MultiplexedConnection {
            let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
            client.get_multiplexed_async_connection().await.unwrap()
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            if let Some(child) = &self.child {
                // A stopped server ignores SIGKILL's cleanup until continued; continue it first.
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
            }
            self.kill();
        }
    }

    /// Exactness tests must never time out (a timeout bypasses, which would admit extra
    /// requests): on two shared cores 1,000 in-flight debug-build requests can be slow.
    const SLOW_MACHINE: &str = ", redis_timeout: 10000";

    /// `minute: 100` per IP on the Redis at `port`; `extra` adds keys (`, redis_timeout: 200`).
    fn redis_service(upstream: &str, port: u16, extra: &str) -> String {
        let config = format!(
            "{{minute: 100, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {port}{extra}}}"
        );
        service(upstream, &config)
    }

    /// Kong keys counters by service and route: a service-level limit gives each route its own
    /// counter in Redis, named or not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_level_redis_limit_counts_each_unnamed_route_apart() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let yaml = format!(
            "services:\n- name: svc\n  url: {}\n  plugins:\n  - name: rate-limiting\n    config: \
             {{minute: 2, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {}}}\n  routes:\n  \
             - paths: [/a]\n  - paths: [/b]\n",
            upstream.url(),
            redis.port
        );
        let gw = TestGateway::start(&yaml).await;
        for path in ["/a", "/b"] {
            let statuses = [get(&gw.url(path)).await.status, get(&gw.url(path)).await.status];
            assert_eq!(statuses, [200, 200], "{path}");
            assert_eq!(get(&gw.url(path)).await.status, 429, "{path}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_the_limit_of_a_thousand_concurrent_every_key_with_a_ttl_and_script_flush() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let gw = TestGateway::start(&redis_service(&upstream.url(), redis.port, SLOW_MACHINE)).await;
        let counts = burst(&[gw.url("/v1/orders")], 1000).await;
        assert_eq!(counts.get(&200), Some(&100), "{counts:?}");
        assert_eq!(counts.get(&429), Some(&900), "{counts:?}");

        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        assert!(!keys.is_empty());
        let mut counted = 0;
        for key in &keys {
            // `{<prefix>:<client>}:<period µs>:<window index>`: one hash tag per client.
            assert!(key.starts_with('{') && key.contains("}:60000000:"), "hash-tagged window key: {key}");
            let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
            assert!(ttl > 0 && ttl <= 121_000, "{key} has no TTL or too long a one ({ttl})");
            counted += redis::cmd("GET").arg(key).query_async::<u64>(&mut conn).await.unwrap();
        }
        assert_eq!(counted, 100, "the 900 denied requests were taken back");

        // Buckets still run a script: after SCRIPT FLUSH the next EVALSHA gets NOSCRIPT, the
        // script is reloaded and the bucket's state carries on.
        let bucket = TestGateway::start(&service(
            &upstream.url(),
            &format!(
                "{{algorithm: token-bucket, capacity: 2, refill_per_second: 0.01, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {}}}",
                redis.port
            ),
        ))
        .await;
        assert_eq!(get(&bucket.url("/v1/orders")).await.headers["x-ratelimit-remaining"], "1");
        let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
        assert_eq!(cached_scripts(&mut conn).await, 0);
        let res = get(&bucket.url("/v1/orders")).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.headers["x-ratelimit-remaining"], "0", "the bucket's state survived the flush");
        assert_eq!(cached_scripts(&mut conn).await, 1, "the script was loaded again");
        let res = get(&bucket.url("/v1/orders")).await;
        assert_eq!(res.status, 429);
        assert_eq!(res.json()["error"], "rate_limit_exceeded");
        // The windows need no script at all.
        let res = get(&gw.url("/v1/orders")).await;
        assert_eq!(res.status, 429);
        assert_eq!(res.headers["x-ratelimit-remaining"], "0");
    }

    /// `number_of_cached_scripts` from `INFO memory`.
    async fn cached_scripts(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
        let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await.unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("number_of_cached_scripts:"))
            .map(|n| n.trim().parse().unwrap())
            .expect("INFO memory reports number_of_cached_scripts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_sharing_one_redis_admit_exactly_the_limit_in_total() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let a = TestGateway::start(&redis_service(&upstream.url(), redis.port, SLOW_MACHINE)).await;
        let b = TestGateway::start(&redis_service(&upstream.url(), redis.port, SLOW_MACHINE)).await;
        let counts = burst(&[a.url("/v1/orders"), b.url("/v1/orders")], 1000).await;
        assert_eq!(counts.get(&200), Some(&100), "{counts:?}");
        assert_eq!(upstream.seen().len(), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_killed_fails_open_or_closed_and_limiting_resumes() {
        let Some(mut redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let open =
            TestGateway::start(&redis_service(&upstream.url(), redis.port, ", redis_timeout: 200")).await;
        let closed = TestGateway::start(&redis_service(
            &upstream.url(),
            redis.port,
            ", redis_timeout: 200, fault_tolerant: false",
        ))
        .await;
        assert_eq!(get(&open.url("/v1/orders")).await.headers["x-ratelimit-remaining"], "99");
        assert_eq!(get(&closed.url("/v1/orders")).await.headers["x-ratelimit-remaining"], "98");

        redis.kill();
        for _ in 0..20 {
            let started = Instant::now();
            let res = get(&open.url("/v1/orders")).await;
            assert_eq!(res.status, 200);
            assert!(res.headers.get("x-ratelimit-limit").is_none(), "no rate-limit headers when bypassed");
            assert!(started.elapsed() < Duration::from_secs(1), "bounded by redis_timeout");
            let res = get(&closed.url("/v1/orders")).await;
            assert_eq!(res.status, 503);
            assert_eq!(res.json()["error"], "rate_limit_unavailable");
        }

        redis.restart().await;
        // The breaker lets a probe through once its cooldown (1 s) has passed.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let mut resumed = false;
        for _ in 0..50 {
            let res = get(&closed.url("/v1/orders")).await;
            if res.status == 200 {
                assert!(res.headers.contains_key("x-ratelimit-remaining"));
                resumed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(resumed, "limiting resumed after Redis came back");
        let log = open.stop().await;
        assert!(log.iter().any(|line| line["rate_limit"] == "bypassed"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_redis_costs_at_most_the_timeout() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let gw =
            TestGateway::start(&redis_service(&upstream.url(), redis.port, ", redis_timeout: 200")).await;
        assert_eq!(get(&gw.url("/v1/orders")).await.status, 200);
        redis.signal("-STOP");
        let started = Instant::now();
        let res = get(&gw.url("/v1/orders")).await;
        let first = started.elapsed();
        assert_eq!(res.status, 200);
        assert!(res.headers.get("x-ratelimit-limit").is_none());
        assert!(first >= Duration::from_millis(150) && first < Duration::from_millis(900), "{first:?}");
        // The breaker is open now: the next requests do not wait for Redis (five waits would take
        // a second; the bound leaves room for a busy machine).
        let started = Instant::now();
        for _ in 0..5 {
            assert_eq!(get(&gw.url("/v1/orders")).await.status, 200);
        }
        assert!(started.elapsed() < Duration::from_millis(800), "{:?}", started.elapsed());
        redis.signal("-CONT");
    }

    /// Several windows at once on Redis: the most constrained governs, both are counted, and
    /// each counter lives for two of its periods (and a second).
    #[tokio::test]
    async fn several_windows_on_redis() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let config = format!(
            "{{minute: 2, hour: 3, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {}}}",
            redis.port
        );
        let gw = TestGateway::start(&service(&upstream.url(), &config)).await;
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(get(&gw.url("/v1/orders")).await);
        }
        let statuses: Vec<_> = answers.iter().map(|a| a.status.as_u16()).collect();
        assert_eq!(statuses, [200, 200, 429]);
        assert_eq!(answers[1].headers["x-ratelimit-remaining-hour"], "1");
        assert_eq!(answers[1].headers["x-ratelimit-remaining-minute"], "0");
        assert_eq!(
            answers[2].json()["message"].as_str().unwrap().split('.').next(),
            Some("Request limit of 2/minute exceeded")
        );
        let mut conn = redis.connection().await;
        let minute = counted(&mut conn, "*:60000000:*").await;
        let hour = counted(&mut conn, "*:3600000000:*").await;
        assert_eq!((minute, hour), (2, 2), "the denied request was counted nowhere");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg("*:3600000000:*").query_async(&mut conn).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query_async(&mut conn).await.unwrap();
        assert!(ttl > 7_200_000, "{ttl}");
    }

    /// The sum of the counters whose keys match `pattern` (a window split by a boundary that
    /// passed during the test is summed whole).
    pub(super) async fn counted(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> i64 {
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(conn).await.unwrap();
        let mut sum = 0;
        for key in keys {
            sum += redis::cmd("GET").arg(&key).query_async::<i64>(conn).await.unwrap();
        }
        sum
    }

    /// A store of its own on `redis` (prefix `t`) and one decision on it.
    mod store {
        use std::sync::Arc;

        use portcullis::ratelimit::window::WindowLimit;
        use portcullis::ratelimit::{Decided, Period, Policy, RedisStore, Store, Verdict};

        use super::RedisServer;

        pub(super) fn open(redis: &RedisServer) -> Arc<RedisStore> {
            Arc::new(RedisStore::new(&format!("redis://127.0.0.1:{}/0", redis.port), "t").unwrap())
        }

        pub(super) fn windows(windows: &[(Period, u64)]) -> Arc<Policy> {
            let windows =
                windows.iter().map(|&(p, limit)| (p, WindowLimit::sliding(limit, p.micros()))).collect();
            Arc::new(Policy::Windows(windows))
        }

        pub(super) async fn decide(store: &Arc<RedisStore>, key: &str, policy: &Arc<Policy>) -> Verdict {
            match store.decide(key, policy) {
                Decided::Pending(pending) => pending.await.unwrap(),
                Decided::Ready(verdict) => verdict.unwrap(),
            }
        }
    }

    /// Denied requests are taken back before the answer: Redis holds the admitted count only.
    #[tokio::test]
    async fn denied_requests_are_not_counted_in_redis() {
        use portcullis::ratelimit::Period;
        let Some(redis) = RedisServer::start().await else { return };
        let store = store::open(&redis);
        let policy = store::windows(&[(Period::Minute, 6)]);
        let mut allowed = Vec::new();
        for _ in 0..16 {
            allowed.push(store::decide(&store, "k", &policy).await.allowed());
        }
        assert_eq!(allowed.iter().filter(|a| **a).count(), 6, "{allowed:?}");
        assert!(allowed[..6].iter().all(|a| *a) && allowed[6..].iter().all(|a| !*a));
        let mut conn = redis.connection().await;
        assert_eq!(counted(&mut conn, "{t:k}:60000000:*").await, 6);
        let denied = store::decide(&store, "k", &policy).await;
        assert_eq!(denied.governing().1.remaining, 0);
        assert!(denied.governing().1.retry_after > 0);
    }

    /// The store's clock is Redis `TIME`: a decision's time and its counter's window index agree
    /// with Redis within a round trip.
    #[tokio::test]
    async fn window_indices_follow_redis_time() {
        use portcullis::ratelimit::Period;
        let Some(redis) = RedisServer::start().await else { return };
        let store = store::open(&redis);
        let policy = store::windows(&[(Period::Second, 1000)]);
        let mut conn = redis.connection().await;
        for _ in 0..3 {
            let verdict = store::decide(&store, "clock", &policy).await;
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let redis_now = secs * 1_000_000 + micros;
            // Decided before TIME was read, on Redis time followed locally: a few ms on a quiet
            // machine, a scheduling delay or two on a busy one.
            assert!(
                redis_now.abs_diff(verdict.now) < 250_000,
                "decided at {} vs TIME {redis_now}",
                verdict.now
            );
            let keys: Vec<String> =
                redis::cmd("KEYS").arg("{t:clock}:1000000:*").query_async(&mut conn).await.unwrap();
            let newest = keys.iter().map(|k| k.rsplit(':').next().unwrap().parse::<u64>().unwrap()).max();
            let index = redis_now / 1_000_000;
            let near_boundary = redis_now % 1_000_000 < 50_000;
            assert!(
                newest == Some(index) || (near_boundary && newest == Some(index - 1)),
                "{keys:?} at TIME {redis_now}"
            );
        }
    }

    /// Several windows: a request denied by one of them is taken back from all of them.
    #[tokio::test]
    async fn a_denial_by_one_window_leaves_every_counter_unchanged() {
        use portcullis::ratelimit::Period;
        let Some(redis) = RedisServer::start().await else { return };
        let store = store::open(&redis);
        let mut conn = redis.connection().await;
        // The second denies first for `a`, the minute for `b`.
        for (key, second, minute) in [("a", 2, 10), ("b", 10, 2)] {
            let policy = store::windows(&[(Period::Second, second), (Period::Minute, minute)]);
            let mut allowed = Vec::new();
            for _ in 0..4 {
                allowed.push(store::decide(&store, key, &policy).await.allowed());
            }
            assert_eq!(allowed, [true, true, false, false], "{key}");
            let seconds = counted(&mut conn, &format!("{{t:{key}}}:1000000:*")).await;
            let minutes = counted(&mut conn, &format!("{{t:{key}}}:60000000:*")).await;
            assert_eq!((seconds, minutes), (2, 2), "{key}: the denials were taken back from both");
        }
    }

    #[tokio::test]
    async fn a_script_error_is_reported_apart_from_unavailable() {
        use portcullis::ratelimit::{
            Decided, RedisStore, SlidingWindowLayer, Store, StoreError, TokenBucketLayer,
        };
        let Some(redis) = RedisServer::start().await else { return };
        let url = format!("redis://127.0.0.1:{}/0", redis.port);
        let store = std::sync::Arc::new(RedisStore::new(&url, "t").unwrap());
        let policy = std::sync::Arc::new(SlidingWindowLayer::new().minute(5).policy().clone());
        // A counter of the wrong type (around Redis's current minute) makes INCR fail
        // (WRONGTYPE): an error reply, counted apart.
        let mut conn = redis.connection().await;
        let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        for index in secs / 60 - 1..=secs / 60 + 1 {
            let key = format!("{{t:k}}:60000000:{index}");
            let _: () = redis::cmd("RPUSH").arg(key).arg("x").query_async(&mut conn).await.unwrap();
        }
        let Decided::Pending(pending) = store.decide("k", &policy) else { panic!("not pending") };
        let error = pending.await.unwrap_err();
        assert!(matches!(error, StoreError::Script(_)), "{error:?}");
        assert!(error.to_string().contains("WRONGTYPE"), "{error}");
        // Another key still works: an error reply does not open the breaker.
        let Decided::Pending(pending) = store.decide("other", &policy) else { panic!("breaker opened") };
        assert!(pending.await.unwrap().allowed());
        // The same for the bucket script (WRONGTYPE inside the script).
        let bucket = std::sync::Arc::new(TokenBucketLayer::new(3, 1.0).policy().clone());
        let _: () = redis::cmd("RPUSH").arg("{t:b}").arg("x").query_async(&mut conn).await.unwrap();
        let Decided::Pending(pending) = store.decide("b", &bucket) else { panic!("not pending") };
        assert!(matches!(pending.await, Err(StoreError::Script(_))));
        let Decided::Pending(pending) = store.decide("other", &bucket) else { panic!("breaker opened") };
        assert!(pending.await.unwrap().allowed());
    }
}

#[test]
fn sync_rate_and_breaker_cooldown_errors_name_the_key() {
    let at = "services[0].routes[0].plugins[0].config";
    let e = build_error("{minute: 5, sync_rate: 1}");
    assert!(e.contains(&format!("{at}.sync_rate")) && e.contains("policy: redis"), "{e}");
    let e = build_error("{minute: 5, sync_rate: -2, policy: redis, redis_host: h}");
    assert!(e.contains(&format!("{at}.sync_rate")) && e.contains("expected -1"), "{e}");
    let e = build_error(
        "{algorithm: token-bucket, capacity: 3, refill_per_second: 1, sync_rate: 1, policy: redis, redis_host: h}",
    );
    assert!(e.contains(&format!("{at}.sync_rate")) && e.contains("window algorithms"), "{e}");
    let e = build_error("{minute: 5, redis_breaker_cooldown: 5s}");
    assert!(e.contains(&format!("{at}.redis_breaker_cooldown")), "{e}");
    let e = build_error("{minute: 5, policy: redis, redis_host: h, redis_breaker_cooldown: soon}");
    assert!(e.contains(&format!("{at}.redis_breaker_cooldown")) && e.contains("invalid duration"), "{e}");
    let e = build_error("{minute: 5, sync_rate: soon, policy: redis, redis_host: h}");
    assert!(e.contains(&format!("{at}.sync_rate")) && e.contains("or a duration, got soon"), "{e}");
    // Kong's exports write `sync_rate: -1` whatever the policy.
    let yaml =
        format!("_format_version: \"3.0\"\n{}", service("http://127.0.0.1:1", "{minute: 5, sync_rate: -1}"));
    Gateway::from_yaml(&yaml, "gw.yaml").unwrap();
}

/// Every time-valued rate-limiting key takes a duration as well as Kong's bare number (seconds
/// for `sync_rate`, milliseconds for the Redis timeout and cooldown).
#[cfg(feature = "redis")]
#[test]
fn time_valued_keys_take_durations_or_kongs_numbers() {
    for config in [
        "{minute: 5, policy: redis, redis_host: h, sync_rate: 2, redis_timeout: 200, redis_breaker_cooldown: 1500}",
        "{minute: 5, policy: redis, redis_host: h, sync_rate: 2s, redis_timeout: 200ms, redis_breaker_cooldown: 1.5s}",
        "{minute: 5, policy: redis, redis_host: h, sync_rate: \"0.5\", redis_timeout: \"200\", redis_breaker_cooldown: 1m}",
    ] {
        let yaml = format!("_format_version: \"3.0\"\n{}", service("http://127.0.0.1:1", config));
        if let Err(e) = Gateway::from_yaml(&yaml, "gw.yaml") {
            panic!("{config}: {e}");
        }
    }
}

#[cfg(feature = "redis")]
mod hybrid {
    use std::sync::Arc;
    use std::time::Duration;

    use portcullis::ratelimit::{
        Decided, HybridStore, ManualClock, Policy, RedisStore, SECOND, SlidingWindowLayer, Store,
    };

    use super::on_redis::RedisServer;
    use super::*;

    /// One decision, and whether it was local (no round trip).
    async fn decide(store: &Arc<HybridStore>, key: &str, policy: &Arc<Policy>) -> (bool, bool) {
        match store.decide(key, policy) {
            Decided::Ready(verdict) => (verdict.unwrap().allowed(), true),
            Decided::Pending(pending) => (pending.await.unwrap().allowed(), false),
        }
    }

    /// Two gateways (two hybrid stores on one Redis) share `minute: 100`; 1,000 requests at
    /// 1,000/s alternate between them, each store syncing every `sync_every`. Returns how many
    /// were admitted, and checks that Redis holds exactly that count afterwards.
    async fn two_gateways(redis: &RedisServer, sync_every: Duration, run: usize) -> u64 {
        let url = format!("redis://127.0.0.1:{}/0", redis.port);
        let clock = ManualClock::new(1_700_000_040 * SECOND); // a minute boundary
        let prefix = format!("hybrid-{run}");
        let store = || {
            Arc::new(
                HybridStore::new(RedisStore::new(&url, prefix.clone()).unwrap(), sync_every)
                    .clock(Arc::new(clock.clone()))
                    .background_sync(false),
            )
        };
        let gateways = [store(), store()];
        let policy: Arc<Policy> = Arc::new(SlidingWindowLayer::new().minute(100).policy().clone());
        let every = sync_every.as_millis() as u64;
        let (mut admitted, mut round_trips) = (0, 0);
        for ms in 0..1000u64 {
            if ms > 0 && ms % every == 0 {
                for gateway in &gateways {
                    gateway.sync().await.unwrap();
                }
            }
            let (allowed, local) = decide(&gateways[(ms % 2) as usize], "client", &policy).await;
            admitted += u64::from(allowed);
            round_trips += u64::from(!local);
            clock.advance(Duration::from_millis(1));
        }
        // Only each gateway's first decision (a key it never saw) waited for Redis.
        assert_eq!(round_trips, 2);
        for gateway in &gateways {
            gateway.sync().await.unwrap();
        }
        let mut conn = redis.connection().await;
        // The synchronous store's layout: the counter of the minute the clock is in.
        let counter = format!("{{{prefix}:client}}:60000000:{}", 1_700_000_040 / 60);
        let counted: u64 = redis::cmd("GET").arg(&counter).query_async(&mut conn).await.unwrap();
        assert_eq!(counted, admitted, "Redis holds the exact total of what both admitted");
        let ttl: i64 = redis::cmd("PTTL").arg(&counter).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0);
        admitted
    }

    /// The accuracy loss of `sync_rate`: the admitted count over the limit grows with the sync
    /// interval, bounded by what the other gateway admits between two syncs
    /// (`rate × sync_every × (G − 1) / G`) and never beyond `(G − 1) × limit`.
    #[tokio::test]
    async fn hybrid_accuracy_as_a_function_of_sync_every() {
        let Some(redis) = RedisServer::start().await else { return };
        let mut table = Vec::new();
        for (run, ms) in [1u64, 10, 50, 100, 250, 1000].into_iter().enumerate() {
            let admitted = two_gateways(&redis, Duration::from_millis(ms), run).await;
            let over = admitted.saturating_sub(100);
            // 1,000 requests/s, half of them on the other gateway.
            let bound = (1000 * ms / 1000 / 2 + 1).min(100);
            assert!(admitted >= 100, "sync_every {ms} ms: only {admitted} admitted");
            assert!(over <= bound, "sync_every {ms} ms: {over} over the limit, bound {bound}");
            table.push((ms, over));
        }
        eprintln!(
            "hybrid accuracy (2 gateways, limit 100/min, 1000 req/s): sync_every ms -> admitted over limit: {table:?}"
        );
        assert!(table.windows(2).all(|w| w[0].1 <= w[1].1), "the loss grows with the interval: {table:?}");
    }

    /// A client slower than the sync interval is limited exactly, whichever gateway it hits: a
    /// cold key's totals are read from Redis before the decision.
    #[tokio::test]
    async fn a_slow_client_alternating_gateways_is_limited_exactly() {
        let Some(redis) = RedisServer::start().await else { return };
        let url = format!("redis://127.0.0.1:{}/0", redis.port);
        let clock = ManualClock::new(1_700_000_040 * SECOND);
        let store = || {
            Arc::new(
                HybridStore::new(RedisStore::new(&url, "slow").unwrap(), Duration::from_millis(100))
                    .clock(Arc::new(clock.clone()))
                    .background_sync(false),
            )
        };
        let gateways = [store(), store()];
        let policy: Arc<Policy> = Arc::new(SlidingWindowLayer::new().minute(10).policy().clone());
        let mut admitted = 0;
        // One request every 2 s for a minute, alternating; both gateways sync in between.
        for i in 0..30 {
            let (allowed, local) = decide(&gateways[i % 2], "client", &policy).await;
            assert!(!local, "a key not decided on for two sync periods is read from Redis first");
            admitted += usize::from(allowed);
            for _ in 0..20 {
                clock.advance(Duration::from_millis(100));
                for gateway in &gateways {
                    gateway.sync().await.unwrap();
                }
            }
        }
        assert_eq!(admitted, 10);
    }

    /// Redis unreachable: a hybrid store goes on limiting per gateway (no error, no 503), and
    /// what it admitted stays pending for a sync that succeeds.
    #[tokio::test]
    async fn without_redis_a_hybrid_store_limits_locally() {
        let url = format!("redis://{}/0", closed_port().await);
        let store = Arc::new(
            HybridStore::new(RedisStore::new(&url, "down").unwrap(), Duration::from_millis(50))
                .background_sync(false),
        );
        let policy: Arc<Policy> = Arc::new(SlidingWindowLayer::new().minute(3).policy().clone());
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(decide(&store, "client", &policy).await);
        }
        // The first (cold) decision tried Redis and opened the breaker; the rest are local.
        assert_eq!(answers, [(true, false), (true, true), (true, true), (false, true), (false, true)]);
        assert!(matches!(store.sync().await, Err(portcullis::ratelimit::StoreError::Unavailable(_))));
    }

    /// Through two real gateways with `sync_rate: 0.05`: a burst admits at most each gateway's
    /// own limit, and once the background syncs have run both know the shared count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_gateways_with_sync_rate_share_the_limit_after_a_sync() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let config = format!(
            "{{minute: 100, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {}, sync_rate: 0.05}}",
            redis.port
        );
        let a = TestGateway::start(&service(&upstream.url(), &config)).await;
        let b = TestGateway::start(&service(&upstream.url(), &config)).await;
        let urls = [a.url("/v1/orders"), b.url("/v1/orders")];
        let counts = burst(&urls, 600).await;
        let admitted = counts.get(&200).copied().unwrap_or(0);
        assert!((100..=200).contains(&admitted), "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 600);
        // A few sync periods later, both gateways see the shared count.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for url in &urls {
            let res = get(url).await;
            assert_eq!(res.status, 429, "{counts:?} {:?}", res.headers);
        }
        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        // One counter, or two if a minute boundary passed during the test.
        assert!((1..=2).contains(&keys.len()), "{keys:?}");
        let counted = super::on_redis::counted(&mut conn, "*").await;
        assert_eq!(counted, admitted as i64, "every admitted request was pushed to Redis");
    }

    /// `redis_breaker_cooldown`: after a failure the breaker stays open that long, so Redis
    /// coming back is noticed only after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_breaker_cooldown_is_configurable() {
        let Some(mut redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let config = |cooldown: &str| {
            format!(
                "{{minute: 100, limit_by: ip, policy: redis, redis_host: 127.0.0.1, redis_port: {}, redis_timeout: 200ms, redis_breaker_cooldown: {cooldown}}}",
                redis.port
            )
        };
        let long = TestGateway::start(&service(&upstream.url(), &config("30s"))).await;
        let short = TestGateway::start(&service(&upstream.url(), &config("100"))).await;
        for gw in [&long, &short] {
            assert!(get(&gw.url("/v1/orders")).await.headers.contains_key("x-ratelimit-limit"));
        }
        redis.kill();
        for gw in [&long, &short] {
            let res = get(&gw.url("/v1/orders")).await;
            assert!(res.headers.get("x-ratelimit-limit").is_none(), "bypassed");
        }
        redis.restart().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut resumed = false;
        for _ in 0..20 {
            if get(&short.url("/v1/orders")).await.headers.contains_key("x-ratelimit-limit") {
                resumed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(resumed, "a 100 ms cooldown lets a probe through soon after Redis is back");
        let res = get(&long.url("/v1/orders")).await;
        assert!(res.headers.get("x-ratelimit-limit").is_none(), "the 30 s cooldown still holds");
    }
}
