//! Issue 12, items 3 and 8, through real gateways on loopback sockets: rate-limit keys a client
//! cannot multiply or lengthen (`limit_by: path` honours `path`, IPv6 clients share their /64,
//! long keys are hashed), and JSON body rules that read at most `max_json_body_bytes` and refuse
//! deep nesting without growing the process.

use http::Request;
use http_body_util::Full;
use portcullis::gateway::Gateway;

use crate::support::*;

/// A raw HTTP/1.1 GET of `target` (sent byte for byte: no client library normalises it), with
/// extra header lines; returns the status.
async fn raw_get(gw: &TestGateway, target: &str, headers: &str) -> u16 {
    let request = format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{headers}Connection: close\r\n\r\n");
    raw_status(&raw(gw.addr, request.as_bytes()).await)
}

fn paths_seen(upstream: &Upstream) -> Vec<String> {
    upstream.seen().into_iter().map(|s| s.uri).collect()
}

fn login_service(upstream: &Upstream, plugin_config: &str) -> String {
    format!(
        "services:\n- name: auth\n  url: {}\n  routes:\n  - name: login\n    paths: [/login]\n    \
         strip_path: false\n    plugins:\n    - name: rate-limiting\n      config: {plugin_config}\n",
        upstream.url()
    )
}

// === item 3: rate-limit keys ===

/// Kong's `limit_by: path` with `path: /login`: every client's requests to exactly `/login`
/// share one bucket; any other path (`/login/x2`, `/login;1`, `/LOGIN`) is counted by client IP,
/// as Kong's `get_identifier` does. Rotating paths opens no bucket.
#[tokio::test]
async fn limit_by_path_counts_that_path_once_and_rotating_paths_open_no_bucket() {
    let upstream = Upstream::start().await;
    let yaml = login_service(&upstream, "{minute: 2, limit_by: path, path: /login}");
    let gw = TestGateway::start_with(&yaml, "  trusted_proxies: [127.0.0.1/32]\n").await;

    assert_eq!(raw_get(&gw, "/login", "").await, 200);
    assert_eq!(raw_get(&gw, "/login?a=1", "").await, 200, "the query is not part of the path");
    assert_eq!(raw_get(&gw, "/login", "").await, 429, "the /login bucket is full");
    // Another client (through the trusted proxy) shares the /login bucket: it limits the path.
    assert_eq!(raw_get(&gw, "/login", "X-Forwarded-For: 192.0.2.9\r\n").await, 429);

    // Other paths: this client's IP bucket (2), then nothing more, however the path rotates.
    assert_eq!(raw_get(&gw, "/login/x1", "").await, 200);
    assert_eq!(raw_get(&gw, "/login/x2", "").await, 200);
    for rotated in ["/login/x3", "/login;1", "/login;2/x", "/LOGIN", "/login/", "/login/%78"] {
        let status = raw_get(&gw, rotated, "").await;
        // 429 from the full IP bucket; 400/404 if the path is refused or unrouted; never 200.
        assert!(matches!(status, 429 | 400 | 404), "{rotated}: {status}");
    }
    // The other client still has its own IP bucket for other paths.
    assert_eq!(raw_get(&gw, "/login/y", "X-Forwarded-For: 192.0.2.9\r\n").await, 200);
    assert_eq!(paths_seen(&upstream), ["/login", "/login?a=1", "/login/x1", "/login/x2", "/login/y"]);
}

/// A client rotating through its /64 stays one client; the next /64 is another one.
#[tokio::test]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let upstream = Upstream::start().await;
    let yaml = login_service(&upstream, "{minute: 2, limit_by: ip}");
    let gw = TestGateway::start_with(&yaml, "  trusted_proxies: [127.0.0.1/32]\n").await;
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");

    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2::1")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2:ffff:ffff:ffff:fffe")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2:dead::beef")).await, 429, "same /64");
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:3::1")).await, 200, "the next /64");
    // IPv4 is per address, and an IPv4-mapped IPv6 address is that IPv4 address.
    assert_eq!(raw_get(&gw, "/login", &from("192.0.2.1")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("::ffff:192.0.2.1")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("192.0.2.1")).await, 429);
    assert_eq!(raw_get(&gw, "/login", &from("192.0.2.2")).await, 200);
    assert_eq!(upstream.seen().len(), 6);
    let last = upstream.last();
    assert_eq!(last.headers["x-real-ip"], "192.0.2.2");
}

/// `ipv6_prefix: 128` counts each address; `/48` folds whole sites together.
#[tokio::test]
async fn ipv6_prefix_is_configurable() {
    let upstream = Upstream::start().await;
    let from = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let yaml = login_service(&upstream, "{minute: 1, limit_by: ip, ipv6_prefix: 128}");
    let gw = TestGateway::start_with(&yaml, "  trusted_proxies: [127.0.0.1/32]\n").await;
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2::1")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2::2")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2::2")).await, 429);

    let yaml = login_service(&upstream, "{minute: 1, limit_by: ip, ipv6_prefix: 48}");
    let gw = TestGateway::start_with(&yaml, "  trusted_proxies: [127.0.0.1/32]\n").await;
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:2::1")).await, 200);
    assert_eq!(raw_get(&gw, "/login", &from("2001:db8:1:ffff::1")).await, 429, "same /48");
    assert_eq!(upstream.seen().len(), 3);
}

/// A 10 KB key is counted like any other key (its own bucket, kept apart from a key that differs
/// in its last byte), through the memory store.
#[tokio::test]
async fn a_ten_kilobyte_header_key_is_counted_and_kept_apart() {
    let upstream = Upstream::start().await;
    let yaml = login_service(&upstream, "{minute: 1, limit_by: header, header_name: x-api-key}");
    let gw = TestGateway::start(&yaml).await;
    let long = "k".repeat(10 * 1024);
    let with_key =
        |key: &str| Request::get(gw.url("/login")).header("x-api-key", key).body(Full::default()).unwrap();
    assert_eq!(send(with_key(&long)).await.status, 200);
    assert_eq!(send(with_key(&long)).await.status, 429);
    assert_eq!(send(with_key(&format!("{long}!"))).await.status, 200, "a different key");
    assert_eq!(send(with_key(&format!("{long}!"))).await.status, 429);
    assert_eq!(upstream.seen().len(), 2);
    assert_eq!(upstream.last().headers["x-api-key"].len(), 10 * 1024 + 1, "the header itself is untouched");
}

#[test]
fn rate_limit_key_config_errors_name_their_path() {
    let cases = [
        ("{minute: 1, limit_by: path}", "config.path", "required when `limit_by` is `path`"),
        ("{minute: 1, limit_by: path, path: login}", "config.path", "starting with `/`"),
        ("{minute: 1, ipv6_prefix: 0}", "config.ipv6_prefix", "1..=128"),
        ("{minute: 1, ipv6_prefix: 129}", "config.ipv6_prefix", "1..=128"),
    ];
    for (config, path, expected) in cases {
        let yaml = format!(
            "_format_version: \"3.0\"\nservices:\n- name: auth\n  url: http://127.0.0.1:9\n  routes:\n  \
             - name: login\n    paths: [/login]\n    plugins:\n    - name: rate-limiting\n      config: {config}\n"
        );
        let error = Gateway::from_yaml(&yaml, "limits.yaml").unwrap_err().to_string();
        assert!(error.contains("limits.yaml"), "{error}");
        assert!(error.contains(&format!("services[0].routes[0].plugins[0].{path}")), "{config}: {error}");
        assert!(error.contains(expected), "{config}: {error}");
    }
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use crate::ratelimit::on_redis::RedisServer;

    /// Redis keys carry the hash of a long key, never its bytes: every key stays short whatever
    /// the client sends, and two long keys still count apart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ten_kilobyte_header_key_is_stored_hashed_in_redis() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let config = format!(
            "{{minute: 1, limit_by: header, header_name: x-api-key, policy: redis, redis_host: 127.0.0.1, \
             redis_port: {}, redis_timeout: 10000}}",
            redis.port
        );
        let gw = TestGateway::start(&login_service(&upstream, &config)).await;
        let long = "k".repeat(10 * 1024);
        let with_key = |key: &str| {
            Request::get(gw.url("/login")).header("x-api-key", key).body(Full::default()).unwrap()
        };
        assert_eq!(send(with_key(&long)).await.status, 200);
        assert_eq!(send(with_key(&long)).await.status, 429);
        assert_eq!(send(with_key(&format!("{long}!"))).await.status, 200);
        assert_eq!(upstream.seen().len(), 2);

        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        assert!(!keys.is_empty());
        for key in &keys {
            assert!(key.contains(":header:sha256:"), "{key}");
            assert!(!key.contains("kkkk"), "the client's bytes reached Redis: {}", &key[..80.min(key.len())]);
            // `{portcullis:rl:auth:login:header:sha256:<64>}:<period>:<index>`
            assert!(key.len() < 160, "{} bytes: {key}", key.len());
        }
        let distinct: std::collections::HashSet<&str> =
            keys.iter().filter_map(|k| k.split('}').next()).collect();
        assert_eq!(distinct.len(), 2, "two long keys, two counters: {keys:?}");
    }
}
