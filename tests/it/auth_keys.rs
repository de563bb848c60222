//! key-auth, acl and oauth2-introspection through real gateways, with a real introspection
//! endpoint on loopback that counts its calls.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::support::*;

/// SHA-256 of `alice-second-key`.
const ALICE_SECOND_HASH: &str = "d5047ba54be255b8bee37bbe446880331295bb4d3a2cfadfcc57b7802867e3df";

fn consumers() -> String {
    format!(
        r#"consumers:
- username: alice
  custom_id: "1001"
  keyauth_credentials:
  - {{key: alice-secret-key, id: alice-cred}}
  - {{key_hash: "sha256:{ALICE_SECOND_HASH}"}}
  acls: [{{group: admins}}, {{group: ops}}]
- username: bob
  keyauth_credentials: [{{key: bob-secret-key}}]
- username: guest
  acls: [{{group: guests}}]
"#
    )
}

fn route(name: &str, plugins: &str) -> String {
    format!("  - name: {name}\n    paths: [/{name}]\n    strip_path: false\n    plugins: {plugins}\n")
}

fn gateway_yaml(upstream: &str, routes: &[String]) -> String {
    format!("services:\n- name: svc\n  url: {upstream}\n  routes:\n{}{}", routes.concat(), consumers())
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn key_auth_header_query_and_body_sources_and_hidden_credentials() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(
        &upstream.url(),
        &[
            route("keys", "[{name: key-auth, config: {hide_credentials: true}}]"),
            route("shown", "[{name: key-auth}]"),
            route("body", "[{name: key-auth, config: {key_in_body: true, hide_credentials: true}}]"),
        ],
    ))
    .await;

    let res = send(
        Request::get(gw.url("/keys"))
            .header("apikey", "alice-secret-key")
            .header("x-anonymous-consumer", "true")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 200);
    let seen = upstream.last();
    assert!(seen.headers.get("x-anonymous-consumer").is_none(), "a real credential is no anonymous consumer");
    assert_eq!(header(&seen, "x-consumer-username"), Some("alice"));
    assert_eq!(header(&seen, "x-consumer-custom-id"), Some("1001"));
    assert_eq!(header(&seen, "x-credential-identifier"), Some("alice-cred"));
    assert_eq!(header(&seen, "apikey"), None, "hidden");

    // The second key of the same consumer, stored only as a digest; the query keeps its order.
    let res = get(&gw.url("/keys?z=9&apikey=alice-second-key&a=%2F+x&b")).await;
    assert_eq!(res.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/keys?z=9&a=%2F+x&b");
    assert_eq!(header(&seen, "x-consumer-username"), Some("alice"));
    // Written without an `id`: Kong's credentials always have one, so one is derived (a UUID
    // from the consumer and the credential's place, the same on every load).
    let derived = header(&seen, "x-credential-identifier").expect("an id for every credential").to_owned();
    assert!(uuid::Uuid::parse_str(&derived).is_ok(), "{derived}");
    assert!(seen.headers.get("x-anonymous-consumer").is_none());

    // Without hide_credentials the key reaches the upstream as sent.
    assert_eq!(get(&gw.url("/shown?apikey=bob-secret-key&x=1")).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/shown?apikey=bob-secret-key&x=1");
    assert_eq!(header(&seen, "x-consumer-username"), Some("bob"));
    let bobs = header(&seen, "x-credential-identifier").expect("an id for every credential").to_owned();
    assert_ne!(bobs, derived, "each credential has its own id");

    // Form and JSON bodies.
    let form = Request::post(gw.url("/body"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(b"a=1&apikey=bob-secret-key&b=2")))
        .unwrap();
    assert_eq!(send(form).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.body, "a=1&b=2");
    assert_eq!(header(&seen, "content-length"), Some("7"));
    assert_eq!(header(&seen, "x-consumer-username"), Some("bob"));
    let json = Request::post(gw.url("/body"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"apikey":"alice-secret-key","order":7}"#)))
        .unwrap();
    assert_eq!(send(json).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.body, r#"{"order":7}"#);
    assert_eq!(header(&seen, "x-consumer-username"), Some("alice"));
    gw.stop().await;
}

#[tokio::test]
async fn key_auth_refusals_missing_empty_duplicate_and_unknown_are_identical_for_near_misses() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(&upstream.url(), &[route("keys", "[{name: key-auth}]")])).await;
    let check = |res: &Answer, code: &str, message: &str| {
        assert_eq!(res.status, 401);
        assert_eq!(res.headers["www-authenticate"], "Key");
        let body = res.json();
        assert_eq!((body["error"].as_str(), body["message"].as_str()), (Some(code), Some(message)));
    };
    check(&get(&gw.url("/keys")).await, "unauthorized", "No API key found in request");
    check(&get(&gw.url("/keys?apikey=")).await, "unauthorized", "No API key found in request");
    let dup = Request::get(gw.url("/keys"))
        .header("apikey", "bob-secret-key")
        .header("apikey", "alice-secret-key")
        .body(Full::default())
        .unwrap();
    check(&send(dup).await, "invalid_credentials", "Duplicate API key found");
    check(&get(&gw.url("/keys?apikey=a&apikey=b")).await, "invalid_credentials", "Duplicate API key found");

    // Unknown, near-miss (one character off) and malformed keys: byte-identical answers but for
    // the request id.
    let answers = [
        get(&gw.url("/keys?apikey=no-such-key-at-all")).await,
        get(&gw.url("/keys?apikey=bob-secret-kez")).await,
        get(&gw.url("/keys?apikey=%FF%00%22")).await,
    ];
    let normalize = |res: &Answer| {
        let id = res.headers["x-request-id"].to_str().unwrap().to_owned();
        let mut headers: Vec<_> = res
            .headers
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "x-request-id" | "date"))
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
            .collect();
        headers.sort();
        (res.status, headers, String::from_utf8(res.body.to_vec()).unwrap().replace(&id, "ID"))
    };
    check(&answers[0], "invalid_credentials", "Unauthorized");
    assert_eq!(normalize(&answers[0]), normalize(&answers[1]));
    assert_eq!(normalize(&answers[0]), normalize(&answers[2]));
    assert!(upstream.seen().is_empty(), "no refused request reached the upstream");
    gw.stop().await;
}

#[tokio::test]
async fn key_auth_anonymous_consumer_and_acl_allow_deny_no_consumer() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&gateway_yaml(
        &upstream.url(),
        &[
            route("admins", "[{name: key-auth}, {name: acl, config: {allow: [admins]}}]"),
            route("deny", "[{name: acl, config: {deny: [banned]}}, {name: key-auth}]"),
            route("noauth", "[{name: acl, config: {allow: [admins]}}]"),
            route("anon", "[{name: key-auth, config: {anonymous: guest}}, {name: acl, config: {allow: [guests, admins]}}]"),
        ],
    ))
    .await;
    assert_eq!(get(&gw.url("/admins?apikey=alice-secret-key")).await.status, 200);
    assert_eq!(header(&upstream.last(), "x-consumer-groups"), Some("admins, ops"));
    let res = get(&gw.url("/admins?apikey=bob-secret-key")).await;
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["message"], "You cannot consume this service");
    assert_eq!(res.json()["error"], "forbidden");
    assert_eq!(get(&gw.url("/admins")).await.status, 401);
    assert_eq!(get(&gw.url("/deny?apikey=bob-secret-key")).await.status, 200);
    assert_eq!(header(&upstream.last(), "x-consumer-groups"), None);
    let res = get(&gw.url("/noauth")).await;
    assert_eq!(
        (res.status, res.json()["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Unauthorized"))
    );

    // A bad key falls back to the anonymous consumer, judged by its own groups.
    assert_eq!(get(&gw.url("/anon?apikey=wrong")).await.status, 200);
    let seen = upstream.last();
    assert_eq!(header(&seen, "x-consumer-username"), Some("guest"));
    assert_eq!(header(&seen, "x-anonymous-consumer"), Some("true"));
    assert_eq!(header(&seen, "x-consumer-groups"), Some("guests"));
    assert_eq!(get(&gw.url("/anon?apikey=alice-secret-key")).await.status, 200);
    let seen = upstream.last();
    assert_eq!(header(&seen, "x-consumer-username"), Some("alice"));
    assert_eq!(header(&seen, "x-anonymous-consumer"), None);

    let lines = gw.stop().await;
    let ids: Vec<_> = lines.iter().filter_map(|l| l.get("consumer_id").and_then(|c| c.as_str())).collect();
    assert!(ids.contains(&"alice") && ids.contains(&"bob"), "{ids:?}");
    assert!(!ids.contains(&"guest"), "anonymous consumers are not logged as consumers");
}

#[test]
fn config_errors_name_the_credential() {
    let base = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n  - {name: r, paths: [/], plugins: [{name: key-auth}]}\n";
    let cases = [
        (
            "consumers:\n- username: a\n  keyauth_credentials: [{key: k}, {key_hash: \"sha256:zz\"}]\n",
            "consumers[0].keyauth_credentials[1].key_hash",
        ),
        (
            "consumers:\n- username: a\n  keyauth_credentials: [{key: k, key_hash: \"sha256:00\"}]\n",
            "consumers[0].keyauth_credentials[0].key_hash",
        ),
        (
            "consumers:\n- username: a\n  keyauth_credentials: [{kee: k}]\n",
            "consumers[0].keyauth_credentials[0].kee",
        ),
        (
            "consumers:\n- username: a\n  keyauth_credentials: [{key: k}]\n- username: b\n  keyauth_credentials: [{key: k}]\n",
            "consumers[1].keyauth_credentials[0]",
        ),
        ("consumers:\n- username: a\n  acls: [{group: \"\"}]\n", "consumers[0].acls[0].group"),
    ];
    for (consumers, path) in cases {
        let text = format!("{base}{consumers}");
        let config = portcullis::config::Config::from_yaml(&text, "gw.yaml").unwrap();
        let err = match config.build_router("gw.yaml") {
            Ok(_) => panic!("accepted: {text}"),
            Err(err) => err,
        };
        assert_eq!(err.path(), path, "{err}");
    }
    let both = base.replace("{name: key-auth}", "{name: acl, config: {allow: [a], deny: [b]}}");
    let config = portcullis::config::Config::from_yaml(&both, "gw.yaml").unwrap();
    let err = config.build_router("gw.yaml").err().unwrap();
    assert_eq!(err.path(), "services[0].routes[0].plugins[0].config.deny", "{err}");
}

// === introspection ===

/// A local RFC 7662 endpoint. Tokens: `good-*` active for alice (exp in an hour), `short-*` active
/// with exp in 2 s, `nobody-*` active for an unknown user, `slow-*` answers after 2 s, anything
/// else inactive. `delay` holds every answer; `failing` answers 500.
#[derive(Clone)]
pub(crate) struct Endpoint {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<(String, String)>>>,
    failing: Arc<AtomicBool>,
}

impl Endpoint {
    pub(crate) async fn start(delay: Duration) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Endpoint {
            addr,
            calls: Arc::new(Mutex::new(Vec::new())),
            failing: Arc::new(AtomicBool::new(false)),
        };
        let state = endpoint.clone();
        serve(listener, move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.answer(req, delay).await) }
        });
        endpoint
    }

    async fn answer(&self, req: Request<Incoming>, delay: Duration) -> Response<Full<Bytes>> {
        let auth =
            req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form = String::from_utf8(body.to_vec()).unwrap();
        self.calls.lock().unwrap().push((form.clone(), auth));
        tokio::time::sleep(delay).await;
        if self.failing.load(Ordering::SeqCst) {
            let mut res = Response::new(Full::new(Bytes::from_static(b"oops")));
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return res;
        }
        let token = form.split('&').find_map(|p| p.strip_prefix("token=")).unwrap_or_default().to_owned();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let json = if token.starts_with("good-") {
            serde_json::json!({"active": true, "username": "alice", "sub": "user-1", "scope": "read write", "client_id": "app-1", "exp": now + 3600})
        } else if token.starts_with("short-") {
            serde_json::json!({"active": true, "username": "alice", "sub": "user-1", "exp": now + 2})
        } else if token.starts_with("nobody-") {
            serde_json::json!({"active": true, "username": "mallory", "sub": "user-9"})
        } else if token.starts_with("slow-") {
            tokio::time::sleep(Duration::from_secs(2)).await;
            serde_json::json!({"active": true, "username": "alice"})
        } else {
            serde_json::json!({"active": false})
        };
        Response::new(Full::new(Bytes::from(json.to_string())))
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }
}

fn introspection_yaml(upstream: &str, endpoint: &Endpoint, extra: &str) -> String {
    let plugins = format!(
        "[{{name: oauth2-introspection, config: {{introspection_url: \"{}\", authorization_value: \"Basic Z3c6cw==\", token_type_hint: access_token, timeout: 500, hide_credentials: true{extra}}}}}, {{name: acl, config: {{deny: [banned]}}}}]",
        endpoint.url()
    );
    gateway_yaml(
        upstream,
        &[route("intro", &plugins), route("plain", "[]"), route("keys", "[{name: key-auth}]")],
    )
}

fn bearer(gw: &TestGateway, token: &str) -> Request<Full<Bytes>> {
    Request::get(gw.url("/intro"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn introspection_admits_active_tokens_once_per_ttl_and_refuses_inactive_ones() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspection_yaml(&upstream.url(), &endpoint, "")).await;

    let res = send(bearer(&gw, "good-1")).await;
    assert_eq!(res.status, 200);
    let seen = upstream.last();
    assert_eq!(header(&seen, "x-credential-sub"), Some("user-1"));
    assert_eq!(header(&seen, "x-credential-scope"), Some("read write"));
    assert_eq!(header(&seen, "x-credential-client-id"), Some("app-1"));
    assert_eq!(header(&seen, "x-consumer-username"), Some("alice"));
    assert_eq!(header(&seen, "x-consumer-groups"), Some("admins, ops"));
    assert_eq!(header(&seen, "authorization"), None, "hide_credentials");
    let (form, auth) = endpoint.calls.lock().unwrap()[0].clone();
    assert_eq!(form, "token=good-1&token_type_hint=access_token");
    assert_eq!(auth, "Basic Z3c6cw==");

    // Cache hit: no second call, from the header or the query string.
    for _ in 0..3 {
        assert_eq!(send(bearer(&gw, "good-1")).await.status, 200);
    }
    assert_eq!(get(&gw.url("/intro?x=1&access_token=good-1")).await.status, 200);
    assert_eq!(upstream.last().uri, "/intro?x=1");
    assert_eq!(endpoint.calls(), 1);

    // Inactive: 401 every time; asked once per negative_ttl (default 5 s).
    for _ in 0..2 {
        let res = send(bearer(&gw, "revoked")).await;
        assert_eq!(res.status, 401);
        assert_eq!(res.json()["error"], "invalid_token");
        assert_eq!(res.headers["www-authenticate"], "Bearer error=\"invalid_token\"");
    }
    assert_eq!(endpoint.calls(), 2);
    let res = get(&gw.url("/intro")).await;
    assert_eq!((res.status, res.json()["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));

    // Active but naming no consumer: admitted with the credential headers only (Kong); the ACL
    // behind it then finds no consumer.
    let res = send(bearer(&gw, "nobody-1")).await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["message"], "Unauthorized");
    gw.stop().await;
}

#[tokio::test]
async fn introspection_cache_never_outlives_exp() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspection_yaml(&upstream.url(), &endpoint, ", ttl: 60")).await;
    assert_eq!(send(bearer(&gw, "short-1")).await.status, 200);
    assert_eq!(send(bearer(&gw, "short-1")).await.status, 200);
    assert_eq!(endpoint.calls(), 1);
    // `exp` is at most 2 s away: well past it, the token is introspected again despite ttl 60.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(send(bearer(&gw, "short-1")).await.status, 200);
    assert_eq!(endpoint.calls(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn introspection_failures_answer_503_and_are_not_cached() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspection_yaml(&upstream.url(), &endpoint, ", anonymous: guest")).await;

    endpoint.failing.store(true, Ordering::SeqCst);
    for n in 1..=2 {
        let res = send(bearer(&gw, "good-2")).await;
        assert_eq!(res.status, 503, "never admitted, not even as the anonymous consumer");
        assert_eq!(res.headers["content-type"], "application/json");
        assert_eq!(res.json()["error"], "introspection_unavailable");
        assert_eq!(endpoint.calls(), n, "a failure is not cached");
    }
    endpoint.failing.store(false, Ordering::SeqCst);
    assert_eq!(send(bearer(&gw, "good-2")).await.status, 200);
    assert_eq!(send(bearer(&gw, "good-2")).await.status, 200);
    assert_eq!(endpoint.calls(), 3);

    // Slower than the 500 ms timeout: 503, and asked again next time.
    let started = std::time::Instant::now();
    assert_eq!(send(bearer(&gw, "slow-1")).await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert_eq!(send(bearer(&gw, "slow-1")).await.status, 503);
    assert_eq!(endpoint.calls(), 5);
    assert!(upstream.seen().iter().all(|s| header(s, "x-anonymous-consumer").is_none()));
    gw.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_new_token_make_one_call() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::from_millis(300)).await;
    let gw = TestGateway::start(&introspection_yaml(&upstream.url(), &endpoint, "")).await;
    let requests = (0..50).map(|_| send(bearer(&gw, "good-concurrent")));
    let answers = futures_join_all(requests).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(upstream.seen().len(), 50);
    gw.stop().await;
}

/// Runs futures concurrently on this task (no `futures` dependency in the tests).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream_on_any_route() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let gw = TestGateway::start(&introspection_yaml(&upstream.url(), &endpoint, "")).await;
    let spoof = |req: http::request::Builder| {
        req.header("X-Consumer-ID", "root")
            .header("X_Consumer_ID", "root")
            .header("X-Consumer-Groups", "admins")
            .header("X-Credential-Sub", "root")
            .header("X-Credential-Client-ID", "root")
            .header("X-Anonymous-Consumer", "false")
            .body(Full::default())
            .unwrap()
    };
    let requests = [
        spoof(Request::get(gw.url("/plain"))),
        spoof(Request::get(gw.url("/keys?apikey=bob-secret-key"))),
        spoof(Request::get(gw.url("/intro")).header("authorization", "Bearer good-spoof")),
    ];
    for req in requests {
        let uri = req.uri().clone();
        send(req).await;
        let seen = upstream.last();
        assert!(seen.uri.starts_with(uri.path()), "{uri} was not proxied");
        for (name, value) in &seen.headers {
            assert_ne!(value, "root", "{name} spoofed through on {uri}");
            assert_ne!(value, "admins", "{name} spoofed through on {uri}");
        }
        assert!(seen.headers.get("x-anonymous-consumer").is_none());
    }
    // The introspected route only carries what the endpoint said.
    assert_eq!(header(&upstream.last(), "x-credential-sub"), Some("user-1"));
    gw.stop().await;
}

#[tokio::test]
async fn introspection_consumer_by_client_id_names_the_consumer_by_custom_id() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let yaml = introspection_yaml(&upstream.url(), &endpoint, ", consumer_by: client_id, ttl: 1m")
        + "- username: app-owner\n  custom_id: app-1\n";
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(send(bearer(&gw, "good-3")).await.status, 200);
    let seen = upstream.last();
    assert_eq!(header(&seen, "x-consumer-username"), Some("app-owner"));
    assert_eq!(header(&seen, "x-consumer-custom-id"), Some("app-1"));
    assert_eq!(header(&seen, "x-credential-client-id"), Some("app-1"));
    gw.stop().await;
}
