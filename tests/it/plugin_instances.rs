//! Plugin instances as Kong builds them: one instance per plugin entry, run on every route it
//! applies to, so its state (JWKS cache, introspection cache) is shared by those routes; except
//! `rate-limiting`, whose counters are per route by design. And every instance's config is
//! checked at load, even one that no route runs.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use portcullis::config::{Config, Instruments};
use portcullis::gateway::Gateway;

use crate::auth_keys::Endpoint;
use crate::support::*;

/// `paths` as routes `r0`, `r1`, ... of one service, each proxying to `upstream`.
fn service(upstream: &str, paths: &[&str]) -> String {
    let routes: String =
        paths.iter().enumerate().map(|(i, p)| format!("  - {{name: r{i}, paths: [{p}]}}\n")).collect();
    format!("services:\n- name: svc\n  url: {upstream}\n  routes:\n{routes}")
}

fn bearer(url: String, token: &str) -> Request<Full<Bytes>> {
    Request::get(url).header("authorization", format!("Bearer {token}")).body(Full::default()).unwrap()
}

#[cfg(feature = "jwt")]
mod jwks {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}{name}")).unwrap()
    }

    /// A JWKS endpoint on loopback serving the `rsa_public.pem` key as `k1`, counting the
    /// requests it answers.
    pub(super) struct JwksServer {
        pub(super) url: String,
        calls: Arc<AtomicUsize>,
    }

    impl JwksServer {
        pub(super) async fn start() -> JwksServer {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
            let n = fixture("rsa_n.b64u");
            let body = json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": n.trim(), "e": "AQAB"}]})
                .to_string();
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = calls.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else { continue };
                    let (calls, body) = (counted.clone(), body.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        calls.fetch_add(1, Ordering::SeqCst);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                    });
                }
            });
            JwksServer { url, calls }
        }

        pub(super) fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    /// An RS256 token for credential `issuer`, signed with the key the JWKS serves as `k1`.
    pub(super) fn token() -> String {
        let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::RS256) };
        let key = EncodingKey::from_rsa_pem(fixture("rsa_private.pem").as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &json!({"iss": "issuer"}), &key).unwrap()
    }
}

/// A global `jwt` over three routes is one instance: one JWKS cache, fetched once (it was once
/// per route: three fetches for the same keys).
#[cfg(feature = "jwt")]
#[tokio::test]
async fn a_global_jwt_fetches_its_jwks_once_for_every_route() {
    let upstream = Upstream::start().await;
    let jwks = jwks::JwksServer::start().await;
    let yaml = format!(
        "{}plugins:\n- name: jwt\nconsumers:\n- username: alice\n  jwt_secrets: [{{key: issuer, algorithm: RS256, jwks_url: \"{}\"}}]\n",
        service(&upstream.url(), &["/a", "/b", "/c"]),
        jwks.url
    );
    let gw = TestGateway::start(&yaml).await;
    let token = jwks::token();
    for path in ["/a", "/b", "/c", "/a"] {
        let res = send(bearer(gw.url(path), &token)).await;
        assert_eq!(res.status, 200, "{path}: {:?}", res.body);
        assert_eq!(upstream.last().headers["x-consumer-username"], "alice");
    }
    assert_eq!(jwks.calls(), 1, "one JWKS fetch for the three routes");
    // Still an auth plugin on every route.
    assert_eq!(get(&gw.url("/b")).await.status, 401);
    gw.stop().await;
}

/// A service-level `oauth2-introspection` is one instance for the service's routes: a token
/// introspected on one route is cached for the others (within the TTL).
#[tokio::test]
async fn a_service_introspection_caches_a_token_for_every_route() {
    let upstream = Upstream::start().await;
    let endpoint = Endpoint::start(Duration::ZERO).await;
    let yaml = service(&upstream.url(), &["/a", "/b"]).replace(
        "  routes:\n",
        &format!(
            "  plugins: [{{name: oauth2-introspection, config: {{introspection_url: \"{}\", ttl: 60}}}}]\n  routes:\n",
            endpoint.url()
        ),
    );
    let gw = TestGateway::start(&yaml).await;
    for path in ["/a", "/b", "/b", "/a"] {
        let res = send(bearer(gw.url(path), "good-1")).await;
        assert_eq!(res.status, 200, "{path}: {:?}", res.body);
    }
    assert_eq!(endpoint.calls(), 1, "introspected once for both routes");
    // An inactive answer is cached for negative_ttl, on every route of the instance too.
    assert_eq!(send(bearer(gw.url("/a"), "revoked")).await.status, 401);
    assert_eq!(send(bearer(gw.url("/b"), "revoked")).await.status, 401);
    assert_eq!(endpoint.calls(), 2);
    gw.stop().await;
}

/// `rate-limiting` stays per route (Kong keys its counters by route and service): a global
/// `minute: 2` admits 2 on each route, and `/status` lists one limiter per route.
#[tokio::test]
async fn a_global_rate_limit_counts_each_route_apart() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        "{}plugins: [{{name: rate-limiting, config: {{minute: 2, limit_by: ip}}}}]\n",
        service(&upstream.url(), &["/a", "/b"])
    );
    let gw = TestGateway::start(&yaml).await;
    for path in ["/a", "/b"] {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(get(&gw.url(path)).await.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 429], "{path}");
    }
    let status = get(&format!("http://{}/status", gw.admin.unwrap())).await.json();
    let mut routes: Vec<String> = status["rate_limiters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["route"].as_str().unwrap().to_owned())
        .collect();
    routes.sort();
    assert_eq!(routes, ["r0", "r1"]);
    gw.stop().await;
}

fn load_error(yaml: &str) -> String {
    match Gateway::from_yaml(&format!("_format_version: \"3.0\"\n{yaml}"), "gw.yaml") {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// Each `(yaml, expected)`: the file is refused with an error that starts with `expected`.
fn assert_load_errors(cases: impl IntoIterator<Item = (String, &'static str)>) {
    for (yaml, expected) in cases {
        let err = load_error(&yaml);
        assert!(
            err.starts_with(&format!("gw.yaml: {expected}")),
            "expected `{expected}`, got `{err}`\n{yaml}"
        );
    }
}

/// An instance that no route runs still has its config checked at load, with the file and its
/// path: it was never built, so its errors went unreported.
#[test]
fn config_errors_surface_for_instances_no_route_runs() {
    let no_routes = "services:\n- name: svc\n  url: http://127.0.0.1:1\n";
    let routed = "services:\n- name: svc\n  url: http://127.0.0.1:1\n  routes:\n  - {name: r0, paths: [/a]}\n- name: other\n  url: http://127.0.0.1:1\n  routes:\n  - {name: r1, paths: [/b]}\n";
    let cases = [
        // A service without routes.
        (
            format!("{no_routes}  plugins: [{{name: key-auth, config: {{relm: x}}}}]\n"),
            "services[0].plugins[0].config.relm: unknown field `relm`",
        ),
        // A global plugin in a file without routes, and without services.
        (
            format!("{no_routes}plugins: [{{name: acl, config: {{allow: [a], deny: [b]}}}}]\n"),
            "plugins[0].config.deny: set `allow` or `deny`, not both",
        ),
        (
            "plugins: [{name: request-transformer, config: {add: {headers: [nocolon]}}}]\n".to_owned(),
            "plugins[0].config.add.headers[0]",
        ),
        // Disabled.
        (
            routed.replace(
                "paths: [/a]}",
                "paths: [/a], plugins: [{name: key-auth, enabled: false, config: {key_names: []}}]}",
            ),
            "services[0].routes[0].plugins[0].config.key_names: expected at least one key name",
        ),
        // Outranked on every route by the route's own instance.
        (
            format!(
                "{}plugins: [{{name: key-auth, config: {{relm: x}}}}]\n",
                routed
                    .replace("}\n- name: other", ", plugins: [{name: key-auth}]}\n- name: other")
                    .replace("paths: [/b]}", "paths: [/b], plugins: [{name: key-auth}]}")
            ),
            "plugins[0].config.relm: unknown field `relm`",
        ),
        // A consumer's own instance scoped to a service and a route that never meet.
        (
            format!(
                "{routed}consumers:\n- username: alice\n  plugins: [{{name: response-transformer, service: svc, route: r1, config: {{add: {{colour: red}}}}}}]\n"
            ),
            "consumers[0].plugins[0].config.add.colour: unknown field `colour`",
        ),
    ];
    assert_load_errors(cases);
}

/// The same, for `jwt` and `rate-limiting` (the plugins with features).
#[test]
fn feature_plugin_config_errors_surface_without_routes() {
    let no_routes = "services:\n- name: svc\n  url: http://127.0.0.1:1\n";
    let mut cases = vec![(
        format!(
            "{no_routes}plugins: [{{name: rate-limiting, consumer: alice, config: {{minute: 0}}}}]\nconsumers: [{{username: alice}}]\n"
        ),
        "plugins[0].config.minute: expected a whole number of requests ≥ 1",
    )];
    if cfg!(feature = "jwt") {
        cases.push((
            format!("{no_routes}  plugins: [{{name: jwt, config: {{realm: x}}}}]\n"),
            "services[0].plugins[0].config.realm: unknown field `realm`",
        ));
        cases.push((
            "plugins: [{name: jwt, config: {claims_to_verify: [iat]}}]\n".to_owned(),
            "plugins[0].config.claims_to_verify[0]: unknown variant `iat`",
        ));
    }
    assert_load_errors(cases);
}

/// Instances that run nowhere, with valid configs, load, and are not reported as running: the
/// rate limiter checked on a route-less service is not in the instruments (`/status`).
#[test]
fn valid_instances_that_no_route_runs_load_and_are_not_instrumented() {
    let yaml = "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:1\n  plugins: [{name: rate-limiting, config: {minute: 5}}, {name: key-auth}]\n- name: routed\n  url: http://127.0.0.1:1\n  routes: [{name: r, paths: [/r]}]\nplugins: [{name: acl, config: {allow: [a]}}, {name: rate-limiting, enabled: false, config: {minute: 1}}]\n";
    Gateway::from_yaml(yaml, "gw.yaml").unwrap();
    let config = Config::from_yaml(yaml, "gw.yaml").unwrap();
    let mut instruments = Instruments::default();
    config.build_router_with("gw.yaml", &mut instruments).unwrap();
    assert!(instruments.rate_limiters().is_empty(), "{:?}", instruments.rate_limiters());
}
