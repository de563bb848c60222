//! The seed's `kong-plugins.yaml` works as written: the operator only points the service URL and
//! `redis_host`/`redis_port` at real servers and adds a consumer (SPEC §1).

#![cfg(all(feature = "redis", feature = "jwt"))]

use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::ratelimit::on_redis::RedisServer;
use crate::support::*;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed/kong-plugins.yaml");

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn the_seed_kong_config_works_as_written() {
    let Some(redis) = RedisServer::start().await else { return };
    let upstream = Upstream::start().await;
    let seed = std::fs::read_to_string(SEED).expect("the seed file is beside the checkout");
    // The operator's three edits: where the service, and Redis, really are; who the consumer is.
    let edited: String = seed
        .replace("http://orders-service.internal:8080", &upstream.url())
        .replace("redis_host: redis.internal", "redis_host: 127.0.0.1")
        .replace("redis_port: 6379", &format!("redis_port: {}", redis.port))
        .lines()
        .filter(|line| !line.starts_with("_format_version"))
        .map(|line| format!("{line}\n"))
        .collect();
    let secret = "a-shared-secret-of-at-least-32-bytes!";
    let yaml = format!(
        "{edited}consumers:\n- username: alice\n  custom_id: \"1001\"\n  jwt_secrets:\n  - key: alice-kid\n    algorithm: HS256\n    secret: \"{secret}\"\n"
    );
    let gw = TestGateway::start(&yaml).await;

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("alice-kid".into());
    let claims = serde_json::json!({"sub": "alice", "exp": now() + 600, "nbf": now() - 10});
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap();

    let res = send(
        Request::get(gw.url("/v1/orders/42?page=2"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-internal-token", "must-not-pass")
            .header("x-consumer-id", "spoofed")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 200, "{:?}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.headers["x-ratelimit-limit-hour"], "1000");
    assert_eq!(res.headers["x-ratelimit-remaining-hour"], "999");
    let seen = upstream.last();
    // The seed's route leaves `strip_path` at Kong's default (true): `/v1/orders` is removed.
    assert_eq!(seen.uri, "/42?page=2");
    assert_eq!(seen.headers["x-consumer-id"], "alice");
    assert_eq!(seen.headers["x-consumer-username"], "alice");
    assert_eq!(seen.headers["x-consumer-custom-id"], "1001");
    assert_eq!(seen.headers["x-credential-identifier"], "alice-kid");
    assert_eq!(seen.headers["x-forwarded-service"], "orders-api");
    assert!(seen.headers.get("x-internal-token").is_none());

    // No token: Kong's 401, and the upstream never hears of it.
    let before = upstream.seen().len();
    let res = get(&gw.url("/v1/orders")).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "Unauthorized");
    // A method the route does not take.
    let res = send(Request::delete(gw.url("/v1/orders/42")).body(Full::default()).unwrap()).await;
    assert_eq!(res.status, 404);
    assert_eq!(upstream.seen().len(), before);

    // The limit lives in Redis, with a TTL.
    let mut conn = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty(), "no rate-limit key in Redis");
    for key in keys {
        let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
    gw.stop().await;
}
