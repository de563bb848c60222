//! JWT through a real gateway: YAML config, consumers with HS256 and RS256 credentials, a real
//! upstream that records what arrives.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::support::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn yaml(upstream: &str) -> String {
    let pem = fixture("rsa_public.pem").replace('\n', "\n      ");
    format!(
        r#"services:
- name: orders
  url: {upstream}
  routes:
  - name: orders
    paths: [/orders]
    strip_path: false
    plugins:
    - name: jwt
      config:
        key_claim_name: kid
        claims_to_verify: [exp]
        maximum_expiration: 3600
        cookie_names: [session]
  - name: open
    paths: [/open]
    strip_path: false
consumers:
- username: alice
  id: c-alice
  custom_id: "1001"
  jwt_secrets:
  - {{key: alice-hs, algorithm: HS256, secret: alice-shared-secret}}
  - key: alice-rs
    algorithm: RS256
    rsa_public_key: |
      {pem}
"#
    )
}

fn token(alg: Algorithm, kid: &str, exp: u64) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(b"alice-shared-secret"),
        _ => EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap(),
    };
    let header = Header { kid: Some(kid.into()), ..Header::new(alg) };
    jsonwebtoken::encode(&header, &json!({"sub": "alice", "exp": exp}), &key).unwrap()
}

fn spoofed(url: String) -> http::request::Builder {
    Request::get(url)
        .header("X-Consumer-ID", "admin")
        .header("X_Consumer_Username", "root")
        .header("x-credential-identifier", "stolen")
        .header("x-anonymous-consumer", "false")
}

/// `leeway` and `maximum_expiration` are durations like every other in the file, with Kong's
/// bare numbers read as seconds.
#[tokio::test]
async fn leeway_and_maximum_expiration_are_durations_or_seconds() {
    let upstream = Upstream::start().await;
    let expired_30s_ago = token(Algorithm::HS256, "alice-hs", now() - 30);
    for (leeway, maximum_expiration, admitted) in [
        ("60s", "1h", true),
        ("60", "3600", true),
        ("1m", "\"3600\"", true),
        ("500ms", "1h", false),
        ("0.5", "1h", false),
    ] {
        let yaml = yaml(&upstream.url()).replace(
            "maximum_expiration: 3600",
            &format!("maximum_expiration: {maximum_expiration}\n        leeway: {leeway}"),
        );
        let gw = TestGateway::start(&yaml).await;
        let before = upstream.seen().len();
        let req =
            Request::get(gw.url("/orders")).header("authorization", format!("Bearer {expired_30s_ago}"));
        let res = send(req.body(Full::default()).unwrap()).await;
        let expected = if admitted { 200 } else { 401 };
        assert_eq!(res.status, expected, "leeway {leeway}: {:?}", res.body);
        assert_eq!(upstream.seen().len(), before + usize::from(admitted), "leeway {leeway}");
        // `maximum_expiration` (an hour, however written) still refuses a two-hour token.
        let long = token(Algorithm::HS256, "alice-hs", now() + 7200);
        let req = Request::get(gw.url("/orders")).header("authorization", format!("Bearer {long}"));
        assert_eq!(send(req.body(Full::default()).unwrap()).await.status, 401, "{maximum_expiration}");
    }
}

#[tokio::test]
async fn verified_identity_reaches_the_upstream_and_query_tokens_do_not() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&yaml(&upstream.url())).await;

    for (alg, kid) in [(Algorithm::HS256, "alice-hs"), (Algorithm::RS256, "alice-rs")] {
        let t = token(alg, kid, now() + 600);
        let req = spoofed(gw.url(&format!("/orders/7?b=2&jwt={t}&a=%20x&a=1")));
        let res = send(req.body(Full::<Bytes>::default()).unwrap()).await;
        assert_eq!(res.status, 200, "{:?}", res.body);
        let seen = upstream.last();
        assert_eq!(seen.uri, "/orders/7?b=2&a=%20x&a=1", "the token is stripped, the rest kept in order");
        assert_eq!(seen.headers["x-consumer-id"], "c-alice");
        assert_eq!(seen.headers["x-consumer-username"], "alice");
        assert_eq!(seen.headers["x-consumer-custom-id"], "1001");
        assert_eq!(seen.headers["x-credential-identifier"], kid);
        assert!(seen.headers.get("x-anonymous-consumer").is_none());
        assert!(seen.headers.get("x_consumer_username").is_none());

        // Header and cookie sources.
        let req = Request::get(gw.url("/orders")).header("authorization", format!("Bearer {t}"));
        assert_eq!(send(req.body(Full::default()).unwrap()).await.status, 200);
        let req = Request::get(gw.url("/orders")).header("cookie", format!("session={t}"));
        assert_eq!(send(req.body(Full::default()).unwrap()).await.status, 200);
        assert_eq!(upstream.last().headers["x-credential-identifier"], kid);
    }
    let arrived = upstream.seen().len();

    // Rejections never reach the upstream, and carry Kong's messages.
    let expired = token(Algorithm::RS256, "alice-rs", now() - 1);
    let too_long = token(Algorithm::HS256, "alice-hs", now() + 7200);
    let forged = token(Algorithm::HS256, "alice-rs", now() + 60);
    for (path, message, www) in [
        ("/orders".to_owned(), "Unauthorized", "Bearer"),
        (format!("/orders?jwt={expired}"), "token expired", "Bearer error=\"invalid_token\""),
        (
            format!("/orders?jwt={too_long}"),
            "exceeds maximum allowed expiration",
            "Bearer error=\"invalid_token\"",
        ),
        (format!("/orders?jwt={forged}"), "Invalid algorithm", "Bearer error=\"invalid_token\""),
        ("/orders?jwt=not.a.jwt".to_owned(), "Bad token; invalid JSON", "Bearer error=\"invalid_token\""),
    ] {
        let res = send(spoofed(gw.url(&path)).body(Full::default()).unwrap()).await;
        assert_eq!(res.status, 401, "{path}");
        assert_eq!(res.headers["www-authenticate"], www);
        assert_eq!(res.headers["content-type"], "application/json");
        let body = res.json();
        assert_eq!(body["message"], message, "{path}");
        assert_eq!(body["request_id"], res.headers["x-request-id"].to_str().unwrap());
    }
    assert_eq!(upstream.seen().len(), arrived);

    // A route without the plugin: spoofed identity headers are still removed.
    let res = send(spoofed(gw.url("/open")).body(Full::default()).unwrap()).await;
    assert_eq!(res.status, 200);
    let seen = upstream.last();
    for name in ["x-consumer-id", "x_consumer_username", "x-credential-identifier", "x-anonymous-consumer"] {
        assert!(seen.headers.get(name).is_none(), "{name} reached the upstream");
    }

    let log = gw.stop().await;
    let admitted: Vec<_> =
        log.iter().filter(|l| l["status"] == 200 && l["consumer_id"] == "c-alice").collect();
    assert_eq!(admitted.len(), 6, "the access log reads the consumer from the response");
    assert!(log.iter().all(|l| !l.to_string().contains("jwt=")), "tokens are never logged");
}
