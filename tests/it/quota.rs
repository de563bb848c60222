//! Per-consumer plugin instances through real gateways: a consumer's own rate-limiting quota
//! replaces the route's for that consumer only (Kong's precedence), consumers named by username,
//! custom_id or id, plugins only some consumers have, the anonymous consumer's quota, and the
//! same on a shared Redis.

use http::Request;
use http_body_util::Full;

use crate::support::*;

/// alice (id `c-alice`), bob (custom_id `1002`), carol and guest, each with an API key named
/// after them; `alice_plugins` is alice's own `plugins:` list.
fn consumers(alice_plugins: &str) -> String {
    format!(
        r#"consumers:
- username: alice
  id: c-alice
  keyauth_credentials: [{{key: alice-key}}]
  plugins: {alice_plugins}
- username: bob
  custom_id: "1002"
  keyauth_credentials: [{{key: bob-key}}]
- username: carol
  keyauth_credentials: [{{key: carol-key}}]
- username: guest
"#
    )
}

async fn as_consumer(url: &str, key: Option<&str>) -> Answer {
    let mut req = Request::get(url);
    if let Some(key) = key {
        req = req.header("apikey", key);
    }
    send(req.body(Full::default()).unwrap()).await
}

fn header(answer: &Answer, name: &str) -> String {
    answer.headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn a_consumers_own_quota_replaces_the_routes_for_that_consumer_only() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: orders
  url: {}
  routes:
  - name: orders-v1
    paths: [/v1/orders]
    plugins:
    - {{name: key-auth}}
    - {{name: rate-limiting, config: {{minute: 5, limit_by: consumer}}}}
{}"#,
        upstream.url(),
        consumers("[{name: rate-limiting, config: {minute: 3, limit_by: consumer}}]")
    );
    let gw = TestGateway::start(&yaml).await;
    let url = gw.url("/v1/orders");
    let (mut alice, mut bob) = (Vec::new(), Vec::new());
    // Interleaved, so each answer shows its own consumer's counter.
    for _ in 0..7 {
        alice.push(as_consumer(&url, Some("alice-key")).await);
        bob.push(as_consumer(&url, Some("bob-key")).await);
    }
    let statuses = |answers: &[Answer]| answers.iter().map(|a| a.status.as_u16()).collect::<Vec<_>>();
    assert_eq!(statuses(&alice), [200, 200, 200, 429, 429, 429, 429]);
    assert_eq!(statuses(&bob), [200, 200, 200, 200, 200, 429, 429]);
    let remaining =
        |answers: &[Answer]| answers.iter().map(|a| header(a, "x-ratelimit-remaining")).collect::<Vec<_>>();
    assert_eq!(remaining(&alice), ["2", "1", "0", "0", "0", "0", "0"]);
    assert_eq!(remaining(&bob), ["4", "3", "2", "1", "0", "0", "0"]);
    for a in &alice {
        assert_eq!(header(a, "x-ratelimit-limit"), "3");
        assert_eq!(header(a, "x-ratelimit-limit-minute"), "3");
        assert_eq!(header(a, "ratelimit-limit"), "3");
    }
    for b in &bob {
        assert_eq!(header(b, "x-ratelimit-limit"), "5");
    }
    let retry = header(&alice[3], "retry-after");
    assert_eq!(
        alice[3].json()["message"],
        format!("Request limit of 3/minute exceeded. Retry after {retry} seconds.")
    );
    assert_eq!(upstream.seen().len(), 3 + 5, "rejected requests never reached the upstream");
    // Without a key: key-auth answers first, no quota is involved.
    assert_eq!(as_consumer(&url, None).await.status, 401);
}

#[tokio::test]
async fn consumers_named_by_id_username_or_custom_id_with_kongs_precedence() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: orders
  url: {}
  plugins:
  - {{name: key-auth}}
  - {{name: rate-limiting, config: {{minute: 6, limit_by: consumer}}}}
  routes:
  - name: r0
    paths: [/r0]
  - name: r1
    paths: [/r1]
    plugins:
    - {{name: rate-limiting, consumer: alice, config: {{minute: 4, limit_by: consumer}}}}
plugins:
- {{name: rate-limiting, consumer: c-alice, config: {{minute: 2, limit_by: consumer}}}}
- {{name: rate-limiting, consumer: "1002", service: orders, config: {{minute: 1, limit_by: consumer}}}}
{}"#,
        upstream.url(),
        consumers("[]")
    );
    let gw = TestGateway::start(&yaml).await;
    let limit = |path: &'static str, key: &'static str| {
        let url = gw.url(path);
        async move { header(&as_consumer(&url, Some(key)).await, "x-ratelimit-limit") }
    };
    // r0: alice's consumer-alone quota (by id) beats the service's; bob's consumer+service one
    // (by custom_id) too; carol has none and gets the service's.
    assert_eq!(limit("/r0", "alice-key").await, "2");
    assert_eq!(limit("/r0", "bob-key").await, "1");
    assert_eq!(limit("/r0", "carol-key").await, "6");
    // r1: alice's consumer+route quota (by username) beats her consumer-alone one.
    assert_eq!(limit("/r1", "alice-key").await, "4");
    assert_eq!(limit("/r1", "bob-key").await, "1");
    assert_eq!(limit("/r1", "carol-key").await, "6");
    // Each instance counts on its own: alice has one left of 2 on r0, 3 of 4 on r1.
    let alice_r0 = as_consumer(&gw.url("/r0"), Some("alice-key")).await;
    assert_eq!((alice_r0.status.as_u16(), header(&alice_r0, "x-ratelimit-remaining")), (200, "0".into()));
    assert_eq!(as_consumer(&gw.url("/r0"), Some("alice-key")).await.status, 429);
    assert_eq!(header(&as_consumer(&gw.url("/r1"), Some("alice-key")).await, "x-ratelimit-remaining"), "2");
    assert_eq!(as_consumer(&gw.url("/r0"), Some("bob-key")).await.status, 429);
}

#[tokio::test]
async fn plugins_only_some_consumers_have_and_the_anonymous_consumers_quota() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: orders
  url: {}
  routes:
  - name: orders-v1
    paths: [/v1/orders]
    plugins:
    - {{name: key-auth, config: {{anonymous: guest}}}}
plugins:
- {{name: rate-limiting, consumer: guest, config: {{minute: 1, limit_by: ip}}}}
{}"#,
        upstream.url(),
        consumers(
            "[{name: request-transformer, config: {add: {headers: ['x-tier:gold']}}}, {name: response-transformer, config: {add: {headers: ['x-plan:gold']}}}]"
        )
    );
    let gw = TestGateway::start(&yaml).await;
    let url = gw.url("/v1/orders");
    let alice = as_consumer(&url, Some("alice-key")).await;
    assert_eq!(alice.status, 200);
    assert_eq!(header(&alice, "x-plan"), "gold");
    assert_eq!(upstream.last().headers["x-tier"], "gold");
    assert!(alice.headers.get("x-ratelimit-limit").is_none(), "only the anonymous consumer is limited");
    let bob = as_consumer(&url, Some("bob-key")).await;
    assert_eq!(bob.status, 200);
    assert!(bob.headers.get("x-plan").is_none());
    assert!(upstream.last().headers.get("x-tier").is_none());
    // Without a key the caller is the anonymous `guest`, whose quota is 1/minute.
    let first = as_consumer(&url, None).await;
    assert_eq!((first.status.as_u16(), header(&first, "x-ratelimit-limit")), (200, "1".into()));
    assert_eq!(as_consumer(&url, None).await.status, 429);
    for _ in 0..3 {
        assert_eq!(as_consumer(&url, Some("bob-key")).await.status, 200);
    }
}

#[test]
fn auth_plugins_cannot_be_consumer_scoped() {
    let base = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://127.0.0.1:1\n  routes:\n  - name: r\n    paths: [/x]\n";
    let err = |yaml: &str| portcullis::gateway::Gateway::from_yaml(yaml, "gw.yaml").unwrap_err().to_string();
    let own = format!("{base}consumers:\n- username: alice\n  plugins: [{{name: key-auth}}]\n");
    assert!(
        err(&own).starts_with(
            "gw.yaml: consumers[0].plugins[0].name: plugin `key-auth` cannot be scoped to a consumer"
        ),
        "{}",
        err(&own)
    );
    let scoped = format!(
        "{base}consumers:\n- username: alice\nplugins:\n- name: acl\n  consumer: alice\n  config: {{allow: [x]}}\n"
    );
    assert!(
        err(&scoped).starts_with("gw.yaml: plugins[0].consumer: plugin `acl` cannot be scoped"),
        "{}",
        err(&scoped)
    );
    // A consumer's own plugin config is checked like any other, by its path.
    let bad = format!(
        "{base}    plugins: [{{name: rate-limiting, config: {{minute: 5}}}}]\nconsumers:\n- username: alice\n  plugins: [{{name: rate-limiting, config: {{minute: 0}}}}]\n"
    );
    assert!(err(&bad).starts_with("gw.yaml: consumers[0].plugins[0].config.minute:"), "{}", err(&bad));
}

#[cfg(feature = "redis")]
mod on_redis {
    use super::*;
    use crate::ratelimit::on_redis::RedisServer;

    /// Two gateways sharing one Redis: alice's own 3/minute holds across both, apart from the
    /// route's 5/minute that bob counts against.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumers_quota_on_redis_holds_across_gateways_and_keeps_its_own_keys() {
        let Some(redis) = RedisServer::start().await else { return };
        let upstream = Upstream::start().await;
        let on_redis = format!(
            "limit_by: consumer, policy: redis, redis_host: 127.0.0.1, redis_port: {}, redis_timeout: 10000",
            redis.port
        );
        let yaml = format!(
            r#"services:
- name: orders
  url: {}
  routes:
  - name: orders-v1
    paths: [/v1/orders]
    plugins:
    - {{name: key-auth}}
    - {{name: rate-limiting, config: {{minute: 5, {on_redis}}}}}
{}"#,
            upstream.url(),
            consumers(&format!("[{{name: rate-limiting, config: {{minute: 3, {on_redis}}}}}]"))
        );
        let a = TestGateway::start(&yaml).await;
        let b = TestGateway::start(&yaml).await;
        let mut admitted = [0, 0];
        for i in 0..8 {
            let gw = if i % 2 == 0 { &a } else { &b };
            for (n, key) in ["alice-key", "bob-key"].into_iter().enumerate() {
                if as_consumer(&gw.url("/v1/orders"), Some(key)).await.status == 200 {
                    admitted[n] += 1;
                }
            }
        }
        assert_eq!(admitted, [3, 5]);
        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
        // One counter per client and window, `{<prefix>:<client>}:<period>:<index>`: the hash
        // tags name the clients.
        let mut keys: Vec<&str> = keys.iter().filter_map(|key| key.split_inclusive('}').next()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(
            keys,
            [
                "{portcullis:rl:orders:orders-v1:consumer:bob}",
                "{portcullis:rl:orders:orders-v1:consumer=c-alice:consumer:c-alice}",
            ]
        );
    }
}
