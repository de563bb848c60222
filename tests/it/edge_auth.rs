//! Issue 12, items 9–11 over real sockets: JWT defaults that cannot be misread, introspection
//! that cannot be used as an amplifier, and an admin listener that is safe by default.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis::gateway::Gateway;

use crate::support::*;

// === item 11: the admin listener ===

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

fn admin_get(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    req.body(Full::default()).unwrap()
}

/// The config error `text` (origin `admin.yaml`) is refused with.
fn load_error(text: &str) -> String {
    match Gateway::from_yaml(text, "admin.yaml") {
        Ok(_) => panic!("expected a config error for\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn admin_listener_refuses_a_public_address_without_a_token() {
    for addr in ["0.0.0.0:0", "[::]:0", "10.1.2.3:8001"] {
        let text = format!("_format_version: \"3.0\"\ngateway:\n  admin_listen: \"{addr}\"\n");
        let err = load_error(&text);
        assert!(
            err.starts_with("admin.yaml: gateway.admin_listen: ") && err.contains("gateway.admin_token"),
            "{err}"
        );
    }
    // A token too short to resist guessing is refused as well, naming its key.
    let text = "_format_version: \"3.0\"\ngateway:\n  admin_listen: 0.0.0.0:0\n  admin_token: short\n";
    assert!(load_error(text).starts_with("admin.yaml: gateway.admin_token: expected at least 16"));
    // Loopback without a token stays as it was.
    let text = "_format_version: \"3.0\"\ngateway:\n  admin_listen: 127.0.0.1:0\n";
    assert!(Gateway::from_yaml(text, "admin.yaml").is_ok());

    // With a token, a wildcard address binds, and the token is required on /status.
    let text = format!(
        "_format_version: \"3.0\"\ngateway:\n  listen: 127.0.0.1:0\n  admin_listen: 0.0.0.0:0\n  admin_token: {ADMIN_TOKEN}\n  access_log: off\n"
    );
    let gateway = Gateway::from_yaml(&text, "admin.yaml").unwrap();
    let listeners = gateway.bind().await.unwrap();
    let port = listeners.admin_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(listeners, async move {
        let _ = stopped.await;
    }));
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(send(admin_get(admin, "/status", None)).await.status, 401);
    let res = send(admin_get(admin, "/status", Some(&format!("Bearer {ADMIN_TOKEN}")))).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["status"], "ok");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
}

#[tokio::test]
async fn admin_token_guards_status_and_metrics_and_healthz_stays_open() {
    let upstream = Upstream::start().await;
    let yaml =
        format!("services:\n- name: svc\n  url: {}\n  routes: [{{name: r, paths: [/r]}}]\n", upstream.url());
    let gw = TestGateway::start_with(&yaml, &format!("  admin_token: {ADMIN_TOKEN}\n")).await;
    let admin = gw.admin.unwrap();
    let good = format!("Bearer {ADMIN_TOKEN}");
    let near_misses = [
        None,
        Some(String::from("Bearer")),
        Some(String::from("Bearer ")),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Bearer {}", ADMIN_TOKEN.to_uppercase())),
        Some(ADMIN_TOKEN.to_owned()),
    ];
    for path in ["/status", "/metrics"] {
        for auth in &near_misses {
            let res = send(admin_get(admin, path, auth.as_deref())).await;
            assert_eq!(res.status, 401, "{path} with {auth:?}");
            assert_eq!(res.headers["content-type"], "application/json");
            assert_eq!(res.headers["www-authenticate"], "Bearer");
            assert_eq!(res.json()["error"], "unauthorized");
            assert!(!String::from_utf8_lossy(&res.body).contains(ADMIN_TOKEN));
        }
        // Two Authorization headers are ambiguous: refused even when one is right.
        let mut req = admin_get(admin, path, Some(&good));
        req.headers_mut().append("authorization", "Bearer wrong".parse().unwrap());
        assert_eq!(send(req).await.status, 401);
        let res = send(admin_get(admin, path, Some(&good))).await;
        assert_eq!(res.status, 200, "{path}");
        let res = send(admin_get(admin, path, Some(&format!("bearer   {ADMIN_TOKEN}")))).await;
        assert_eq!(res.status, 200, "{path}: the scheme is case-insensitive");
    }
    assert_eq!(send(admin_get(admin, "/healthz", None)).await.status, 200);
    // The admin token never unlocks anything on the proxy side, and never reaches the upstream.
    let res =
        send(Request::get(gw.url("/r")).header("authorization", &good).body(Full::default()).unwrap()).await;
    assert_eq!(res.status, 200);
    gw.stop().await;

    // `admin_metrics_public: true`: /metrics open for scrapers, /status still guarded.
    let gw = TestGateway::start_with(
        &yaml,
        &format!("  admin_token: {ADMIN_TOKEN}\n  admin_metrics_public: true\n"),
    )
    .await;
    let admin = gw.admin.unwrap();
    let res = send(admin_get(admin, "/metrics", None)).await;
    assert_eq!(res.status, 200);
    assert!(String::from_utf8_lossy(&res.body).contains("portcullis_"));
    assert_eq!(send(admin_get(admin, "/status", None)).await.status, 401);
    gw.stop().await;
}

/// Every secret a config can hold: none of them may appear in `/status`.
const SECRETS: [&str; 8] = [
    "jwt-hs-secret-value-7f3a",
    "keyauth-plain-key-91bc",
    "Basic aW50cm9zcGVjdDpjbGllbnQtc2VjcmV0LTU1",
    "redis-password-c0ffee",
    "redis-user-d00d",
    ADMIN_TOKEN,
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
    "pepper-secret-e4e4",
];

#[tokio::test]
async fn status_never_shows_a_credential() {
    let upstream = Upstream::start().await;
    let pem =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/rsa_public.pem"))
            .unwrap();
    assert!(pem.contains(SECRETS[6]), "the fixture's key material is what we look for");
    let pem = pem.replace('\n', "\n      ");
    let redis = if cfg!(feature = "redis") {
        "    - {name: rate-limiting, config: {minute: 100, policy: redis, redis_host: 127.0.0.1, redis_port: 1, redis_username: redis-user-d00d, redis_password: redis-password-c0ffee}}\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"services:
- name: svc
  url: {upstream}/base
  routes:
  - name: jwt
    paths: [/jwt]
    plugins:
    - {{name: jwt}}
{redis}  - name: keys
    paths: [/keys]
    plugins: [{{name: key-auth, config: {{pepper: pepper-secret-e4e4}}}}]
  - name: intro
    paths: [/intro]
    plugins:
    - {{name: oauth2-introspection, config: {{introspection_url: "http://127.0.0.1:1/introspect", authorization_value: "{intro}"}}}}
consumers:
- username: alice
  jwt_secrets:
  - {{key: alice-hs, secret: {jwt}}}
  - key: alice-rs
    algorithm: RS256
    rsa_public_key: |
      {pem}
  keyauth_credentials: [{{key: {key}}}]
"#,
        upstream = upstream.url(),
        jwt = SECRETS[0],
        key = SECRETS[1],
        intro = SECRETS[2],
    );
    let gw = TestGateway::start_with(&yaml, &format!("  admin_token: {ADMIN_TOKEN}\n")).await;
    let res = send(admin_get(gw.admin.unwrap(), "/status", Some(&format!("Bearer {ADMIN_TOKEN}")))).await;
    assert_eq!(res.status, 200);
    let body = String::from_utf8_lossy(&res.body).into_owned();
    assert!(body.contains("\"name\":\"svc\""), "{body}");
    for secret in SECRETS {
        assert!(!body.contains(secret), "/status shows `{secret}`: {body}");
    }
    // The in-process document is the same one.
    let metrics =
        send(admin_get(gw.admin.unwrap(), "/metrics", Some(&format!("Bearer {ADMIN_TOKEN}")))).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    for secret in SECRETS {
        assert!(!metrics.contains(secret), "/metrics shows `{secret}`");
    }
    gw.stop().await;

    // Credentials in a service URL are refused at load, so they cannot reach /status either.
    let text = format!(
        "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://user:pw-secret@{}/\n",
        upstream.addr
    );
    let err = load_error(&text);
    assert!(err.contains("services[0].url") && err.contains("credentials in the url"), "{err}");
    assert!(!err.contains("pw-secret") && err.contains("http://***@"), "the error names no password: {err}");
    let text = text.replace("user:pw-secret@", "user:pw-secret@also@");
    let err = load_error(&text);
    assert!(!err.contains("pw-secret"), "{err}");
}

// === item 10: introspection is no amplifier ===

/// An RFC 7662 endpoint on loopback that counts its calls and holds each answer `delay`. Tokens:
/// `exp-huge` (active, `exp: 1e300`), `exp-max` (`exp: 18446744073709551615`), `exp-negative`
/// (`exp: -1`), `exp-float` (an `exp` 30.5 s away), anything else inactive.
#[derive(Clone)]
struct Introspector {
    addr: std::net::SocketAddr,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Introspector {
    async fn start(delay: Duration) -> Introspector {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Introspector { addr: listener.local_addr().unwrap(), calls: Default::default() };
        let calls = endpoint.calls.clone();
        serve(listener, move |req: Request<hyper::body::Incoming>| {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let form = req.into_body().collect().await.unwrap().to_bytes();
                let form = String::from_utf8(form.to_vec()).unwrap();
                tokio::time::sleep(delay).await;
                let token = form.split('&').find_map(|p| p.strip_prefix("token=")).unwrap_or_default();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                let exp = match token {
                    "exp-huge" => Some("1e300".to_owned()),
                    "exp-max" => Some("18446744073709551615".to_owned()),
                    "exp-negative" => Some("-1".to_owned()),
                    "exp-float" => Some(format!("{}.5", now.as_secs() + 30)),
                    _ => None,
                };
                let body = match exp {
                    Some(exp) => format!(r#"{{"active":true,"username":"alice","sub":"s-1","exp":{exp}}}"#),
                    None => String::from(r#"{"active":false}"#),
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
            }
        });
        endpoint
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn introspected(upstream: &Upstream, endpoint: &Introspector, extra: &str) -> String {
    format!(
        "services:\n- name: svc\n  url: {}\n  routes:\n  - name: intro\n    paths: [/intro]\n    strip_path: false\n    plugins: [{{name: oauth2-introspection, config: {{introspection_url: \"http://{}/introspect\", timeout: 2000{extra}}}}}]\nconsumers:\n- username: alice\n",
        upstream.url(),
        endpoint.addr
    )
}

fn with_token(gw: &TestGateway, token: &str) -> Request<Full<Bytes>> {
    Request::get(gw.url("/intro"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn inactive_tokens_are_introspected_once_per_negative_ttl() {
    let upstream = Upstream::start().await;
    let endpoint = Introspector::start(Duration::from_millis(300)).await;
    let gw = TestGateway::start(&introspected(&upstream, &endpoint, ", negative_ttl: 1")).await;

    // 50 concurrent requests with one made-up token: one call, 50 refusals.
    let tasks: Vec<_> = (0..50).map(|_| tokio::spawn(send(with_token(&gw, "made-up")))).collect();
    for task in tasks {
        let res = task.await.unwrap();
        assert_eq!(res.status, 401);
        assert_eq!(res.json()["error"], "invalid_token");
        assert_eq!(res.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    }
    assert_eq!(endpoint.calls(), 1);
    // Repeated within negative_ttl: answered from the cache (the count is the proof; the time
    // bound leaves room for a busy 2-core machine).
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(send(with_token(&gw, "made-up")).await.status, 401);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(endpoint.calls(), 1);
    // The query-string form of the same token is the same token.
    assert_eq!(get(&gw.url("/intro?access_token=made-up")).await.status, 401);
    assert_eq!(endpoint.calls(), 1);
    // Another token is asked about; after negative_ttl the first one is asked again.
    assert_eq!(send(with_token(&gw, "other")).await.status, 401);
    assert_eq!(endpoint.calls(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(with_token(&gw, "made-up")).await.status, 401);
    assert_eq!(endpoint.calls(), 3);
    assert!(upstream.seen().is_empty(), "no refused request reached the upstream");
    gw.stop().await;

    // negative_ttl: 0 turns the negative cache off (one call per sequential request).
    let endpoint = Introspector::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspected(&upstream, &endpoint, ", negative_ttl: 0")).await;
    for n in 1..=3 {
        assert_eq!(send(with_token(&gw, "made-up")).await.status, 401);
        assert_eq!(endpoint.calls(), n);
    }
    gw.stop().await;
}

#[tokio::test]
async fn any_exp_the_provider_sends_is_clamped() {
    let upstream = Upstream::start().await;
    let endpoint = Introspector::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspected(&upstream, &endpoint, ", ttl: 60")).await;
    let mut calls = 0;
    // Far-future and out-of-range numbers: admitted, cached for `ttl` (no second call).
    for token in ["exp-huge", "exp-max", "exp-float"] {
        for _ in 0..3 {
            let res = send(with_token(&gw, token)).await;
            assert_eq!(res.status, 200, "{token}: {:?}", res.body);
            let seen = upstream.last();
            assert_eq!(seen.headers["x-credential-sub"], "s-1");
            assert_eq!(seen.headers["x-consumer-username"], "alice");
        }
        calls += 1;
        assert_eq!(endpoint.calls(), calls, "{token} is cached");
    }
    // An `exp` in the past: the provider's `active` decides (admitted), but it is never cached.
    for _ in 0..2 {
        assert_eq!(send(with_token(&gw, "exp-negative")).await.status, 200);
        calls += 1;
        assert_eq!(endpoint.calls(), calls);
    }
    // The gateway is still serving: nothing panicked.
    assert_eq!(send(with_token(&gw, "exp-huge")).await.status, 200);
    gw.stop().await;

    // Out-of-range cache lifetimes in the config are errors naming the key, not panics.
    for (extra, key) in
        [(", ttl: 1e300", "ttl"), (", negative_ttl: -1", "negative_ttl"), (", ttl: 90000", "ttl")]
    {
        let text = format!("_format_version: \"3.0\"\n{}", introspected(&upstream, &endpoint, extra));
        let err = load_error(&text);
        assert!(
            err.starts_with(&format!("admin.yaml: services[0].routes[0].plugins[0].config.{key}: invalid ")),
            "{err}"
        );
    }
}

// === item 9: JWT defaults ===

const JWT_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
const HS_SECRET: &str = "alice-shared-secret-0123456789";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token over hand-written header and payload JSON (so members can repeat).
fn handmade(header: &str, payload: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let message = format!("{}.{}", b64.encode(header), b64.encode(payload));
    let key = jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

fn jwt_yaml(upstream: &Upstream, routes: &[(&str, &str)], consumers_extra: &str) -> String {
    let routes: String = routes
        .iter()
        .map(|(name, config)| {
            format!("  - name: {name}\n    paths: [/{name}]\n    strip_path: false\n    plugins: [{{name: jwt, config: {config}}}]\n")
        })
        .collect();
    format!(
        "services:\n- name: svc\n  url: {}\n  routes:\n{routes}consumers:\n- username: alice\n  jwt_secrets:\n  - {{key: alice-hs, secret: {HS_SECRET}}}\n{consumers_extra}",
        upstream.url()
    )
}

async fn bearer_to(gw: &TestGateway, path: &str, token: &str) -> Answer {
    send(
        Request::get(gw.url(path))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

#[track_caller]
fn assert_refused(res: &Answer, message: &str) {
    assert_eq!(res.status, 401, "{:?}", res.body);
    assert_eq!(res.headers["content-type"], "application/json");
    assert_eq!(res.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(res.json()["error"], "invalid_token");
    assert_eq!(res.json()["message"], message);
}

#[tokio::test]
async fn jwt_config_that_would_be_misread_is_refused_at_load() {
    let upstream = Upstream::start().await;
    for (config, path, expected) in [
        ("{maximum_expiration: 3600}", "maximum_expiration", "needs `exp` in `claims_to_verify`"),
        ("{claims_to_verify: [nbf], maximum_expiration: 60}", "maximum_expiration", "needs `exp`"),
        ("{jwks_refresh_interval: 0}", "jwks_refresh_interval", "expected at least 1 s"),
        (
            "{jwks_refresh_interval: 60, jwks_max_age: 5}",
            "jwks_max_age",
            "expected at least jwks_refresh_interval",
        ),
        ("{audiences: []}", "audiences", "expected at least one value"),
        ("{issuers: [\"\"]}", "issuers[0]", "expected a non-empty value"),
    ] {
        let text = format!("_format_version: \"3.0\"\n{}", jwt_yaml(&upstream, &[("r", config)], ""));
        let err = load_error(&text);
        let prefix = format!("admin.yaml: services[0].routes[0].plugins[0].config.{path}: ");
        assert!(err.starts_with(&prefix) && err.contains(expected), "{config}: {err}");
    }
}

#[tokio::test]
async fn jwt_audiences_issuers_and_duplicate_claims_over_the_wire() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&jwt_yaml(
        &upstream,
        &[("kong", "{}"), ("strict", "{claims_to_verify: [exp], audiences: [orders], issuers: [alice-hs]}")],
        "",
    ))
    .await;
    let exp = unix_now() + 600;
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;

    // The Kong-shaped config keeps Kong's default: no claims verified, a token without exp passes.
    let res = bearer_to(&gw, "/kong", &handmade(header, r#"{"iss":"alice-hs"}"#)).await;
    assert_eq!(res.status, 200);
    assert_eq!(upstream.last().headers["x-consumer-username"], "alice");

    let good = handmade(header, &format!(r#"{{"iss":"alice-hs","aud":["billing","orders"],"exp":{exp}}}"#));
    assert_eq!(bearer_to(&gw, "/strict", &good).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/strict");
    assert_eq!(seen.headers["x-credential-identifier"], "alice-hs");
    let admitted = upstream.seen().len();

    for (payload, message) in [
        (format!(r#"{{"iss":"alice-hs","aud":"billing","exp":{exp}}}"#), "Invalid 'aud' in claims"),
        (format!(r#"{{"iss":"alice-hs","exp":{exp}}}"#), "No mandatory 'aud' in claims"),
        (r#"{"iss":"alice-hs","aud":"orders"}"#.to_owned(), "'exp' must be a number"),
        // serde_json keeps the last member; another parser upstream may keep the first.
        (
            format!(r#"{{"iss":"alice-hs","aud":"orders","sub":"a","sub":"b","exp":{exp}}}"#),
            "Bad token; duplicate claim names",
        ),
        (
            format!(r#"{{"iss":"alice-hs","aud":"orders","exp":1,"exp":{exp}}}"#),
            "Bad token; duplicate claim names",
        ),
        (
            format!(r#"{{"iss":"alice-hs","aud":"billing","aud":"orders","exp":{exp}}}"#),
            "Bad token; duplicate claim names",
        ),
    ] {
        assert_refused(&bearer_to(&gw, "/strict", &handmade(header, &payload)).await, message);
    }
    // The same duplicates on the Kong-shaped route, and a duplicated `alg` header.
    let dup = handmade(header, r#"{"iss":"alice-hs","sub":"a","sub":"b"}"#);
    assert_refused(&bearer_to(&gw, "/kong", &dup).await, "Bad token; duplicate claim names");
    let dup = handmade(r#"{"alg":"none","alg":"HS256"}"#, r#"{"iss":"alice-hs"}"#);
    assert_refused(&bearer_to(&gw, "/kong", &dup).await, "Bad token; duplicate header names");
    // As raw bytes too, with the token in the query string.
    let dup = handmade(header, r#"{"iss":"alice-hs","iss":"alice-hs"}"#);
    let answer = raw(
        gw.addr,
        format!("GET /kong?jwt={dup} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(answer.contains("duplicate claim names"), "{answer}");
    assert_eq!(upstream.seen().len(), admitted, "no refused token reached the upstream");
    gw.stop().await;
}

/// A JWKS endpoint on loopback whose key set can be changed, counting its calls.
struct Jwks {
    url: String,
    keys: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn jwk(kid: &str, modulus: &str) -> serde_json::Value {
    let n = std::fs::read_to_string(format!("{JWT_FIXTURES}{modulus}")).unwrap();
    serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n.trim(), "e": "AQAB"})
}

impl Jwks {
    async fn start(keys: Vec<serde_json::Value>) -> Jwks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let jwks =
            Jwks { url, keys: std::sync::Arc::new(std::sync::Mutex::new(keys)), calls: Default::default() };
        let (keys, calls) = (jwks.keys.clone(), jwks.calls.clone());
        serve(listener, move |_req: Request<hyper::body::Incoming>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = serde_json::json!({"keys": *keys.lock().unwrap()}).to_string();
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
        });
        jwks
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn rs256(private: &str, kid: &str) -> String {
    let pem = std::fs::read(format!("{JWT_FIXTURES}{private}")).unwrap();
    let header = jsonwebtoken::Header {
        kid: Some(kid.into()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256)
    };
    let claims = serde_json::json!({"iss": "idp", "exp": unix_now() + 600});
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_being_trusted_after_jwks_max_age() {
    let upstream = Upstream::start().await;
    let jwks = Jwks::start(vec![jwk("k1", "rsa_n.b64u"), jwk("k2", "rsa2_n.b64u")]).await;
    let consumer = format!(
        "- username: idp-users\n  jwt_secrets: [{{key: idp, algorithm: RS256, jwks_url: \"{}\"}}]\n",
        jwks.url
    );
    let gw = TestGateway::start(&jwt_yaml(
        &upstream,
        &[("keys", "{claims_to_verify: [exp], jwks_refresh_interval: 1, jwks_max_age: 1, verified_token_cache_size: 100}")],
        &consumer,
    ))
    .await;
    let (t1, t2) = (rs256("rsa_private.pem", "k1"), rs256("rsa2_private.pem", "k2"));
    for t in [&t1, &t2, &t1] {
        assert_eq!(bearer_to(&gw, "/keys", t).await.status, 200);
    }
    assert_eq!(jwks.calls(), 1);
    assert_eq!(upstream.last().headers["x-consumer-username"], "idp-users");

    // The identity provider drops k1 (a leaked key, say).
    jwks.keys.lock().unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = upstream.seen().len();
    assert_refused(&bearer_to(&gw, "/keys", &t1).await, "Invalid signature");
    assert_eq!(upstream.seen().len(), before, "the upstream saw nothing");
    assert_eq!(bearer_to(&gw, "/keys", &t2).await.status, 200);
    assert_eq!(jwks.calls(), 2, "one re-fetch");
    gw.stop().await;
}
