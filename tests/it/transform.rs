//! `request-transformer` and `response-transformer` through real gateways: Kong's header and
//! querystring cases, `replace.uri` through regex routes (the seed's API versioning), bodies,
//! templates and config errors.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use portcullis::Body;
use portcullis::consumer::Consumer;
use portcullis::gateway::Gateway;
use portcullis::proxy::Proxy;
use portcullis::transform::{Action, RequestPart, TransformLayer};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

use crate::support::*;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed/users-versioning.yaml");

fn service_with(up: &Upstream, routes: &str) -> String {
    format!("services:\n- name: svc\n  url: {}\n  routes:\n{routes}", up.url())
}

/// One route on `/t` with a `request-transformer` whose `config:` is `config` (6-space indented).
fn transformer(up: &Upstream, config: &str) -> String {
    service_with(
        up,
        &format!(
            "  - name: t\n    paths: [/t]\n    strip_path: false\n    plugins:\n    - name: request-transformer\n      config:\n{config}"
        ),
    )
}

fn header_values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn kong_header_cases() {
    let up = Upstream::start().await;
    let config = r#"        remove: {headers: [X-Remove-Me]}
        rename: {headers: ["X-Old:X-New"]}
        replace: {headers: ["X-Present:replaced", "X-Not-There:nope"]}
        add: {headers: ["X-Keep:added", "X-Three:1", "x-seen:$(headers.x-remove-me)"]}
        append: {headers: ["X-Three:2", "X-THREE:3"]}
"#;
    let gw = TestGateway::start(&transformer(&up, config)).await;
    let req = Request::get(gw.url("/t"))
        .header("X-Remove-Me", "gone")
        .header("x-old", "o")
        .header("X-PRESENT", "p")
        .header("x-keep", "original")
        .body(Full::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("x-remove-me").is_none());
    assert_eq!(header_values(&seen, "x-seen"), ["gone"], "templates see the original request");
    assert!(seen.headers.get("x-old").is_none());
    assert_eq!(header_values(&seen, "x-new"), ["o"]);
    assert_eq!(header_values(&seen, "x-present"), ["replaced"]);
    assert!(seen.headers.get("x-not-there").is_none());
    assert_eq!(header_values(&seen, "x-keep"), ["original"]);
    assert_eq!(header_values(&seen, "x-three"), ["1", "2", "3"]);
    gw.stop().await;
}

#[tokio::test]
async fn querystring_order_and_colon_values() {
    let up = Upstream::start().await;
    let config = r#"        remove: {querystring: [drop]}
        add: {querystring: ["p1:anything:1", "a:not-added"]}
        append: {querystring: ["a:3"]}
"#;
    let gw = TestGateway::start(&transformer(&up, config)).await;
    assert_eq!(get(&gw.url("/t?z=1&drop=x&a=2&m=%7E")).await.status, 200);
    assert_eq!(up.last().uri, "/t?z=1&a=2&m=%7E&p1=anything%3A1&a=3");
    gw.stop().await;
}

#[tokio::test]
async fn http_method_get_moves_a_form_body_into_the_query() {
    let up = Upstream::start().await;
    let config = r#"        http_method: GET
        remove: {querystring: [password]}
"#;
    let gw = TestGateway::start(&transformer(&up, config)).await;
    let form = "user=al+b&password=x&lang=fr";
    let req = Request::post(gw.url("/t?page=2"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(form.as_bytes())))
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    // Kong: the form's fields join the query before the querystring rules; the body stays.
    assert_eq!(seen.uri, "/t?page=2&user=al+b&lang=fr");
    assert_eq!(seen.body, form);

    // A JSON body is not a form: only the method changes.
    let req = Request::post(gw.url("/t?page=2"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"user":"al"}"#)))
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", "/t?page=2"));
    assert_eq!(seen.body, r#"{"user":"al"}"#);
    gw.stop().await;

    // GET to POST moves nothing (Kong): the query stays and no body appears.
    let gw = TestGateway::start(&transformer(&up, "        http_method: POST\n")).await;
    assert_eq!(get(&gw.url("/t?user=al")).await.status, 200);
    let seen = up.last();
    assert_eq!((seen.method.as_str(), seen.uri.as_str(), seen.body.len()), ("POST", "/t?user=al", 0));
    gw.stop().await;
}

#[tokio::test]
async fn replace_uri_with_named_captures() {
    let up = Upstream::start().await;
    let routes = r#"  - name: htest
    paths: ["~/(gw/)?api/(?P<subpath>htest)$"]
    plugins:
    - name: request-transformer
      config:
        replace:
          uri: "/api/v2/$(uri_captures[\"subpath\"])"
"#;
    let gw = TestGateway::start(&service_with(&up, routes)).await;
    for path in ["/gw/api/htest", "/api/htest"] {
        assert_eq!(get(&gw.url(&format!("{path}?x=1"))).await.status, 200, "{path}");
        assert_eq!(up.last().uri, "/api/v2/htest?x=1", "{path}");
    }
    gw.stop().await;
}

/// The seed's route list, indented under a service's `routes:`.
fn seed_routes() -> String {
    let text = std::fs::read_to_string(SEED).unwrap();
    text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("  {l}\n")).collect()
}

#[tokio::test]
async fn seed_users_versioning_routes() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&service_with(&up, &seed_routes())).await;
    for version in ["1", "2"] {
        assert_eq!(get(&gw.url(&format!("/v{version}/users/42"))).await.status, 200);
        let seen = up.last();
        assert_eq!(seen.uri, "/users/42");
        assert_eq!(header_values(&seen, "x-api-version"), [version]);
    }
    assert_eq!(get(&gw.url("/v3/users/42")).await.status, 404);
    gw.stop().await;

    // `replace.uri` is the whole upstream path (Kong's set_path): a service path is not prepended.
    let based = format!("services:\n- name: svc\n  url: {}/base\n  routes:\n{}", up.url(), seed_routes());
    let gw = TestGateway::start(&based).await;
    assert_eq!(get(&gw.url("/v2/users/7")).await.status, 200);
    assert_eq!(up.last().uri, "/users/7");
    gw.stop().await;
}

#[tokio::test]
async fn json_body_replace_and_malformed_passthrough() {
    let up = Upstream::start().await;
    let config = r#"        replace: {body: ["name:$(headers.x-name or 'anonymous')"]}
        add: {body: ["source:gateway"]}
"#;
    let gw = TestGateway::start(&transformer(&up, config)).await;
    let post = |body: &'static str| {
        Request::post(gw.url("/t"))
            .header("content-type", "application/json")
            .header("x-name", "bob")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    assert_eq!(send(post(r#"{"name":"al","tags":[],"nested":{"empty":[]},"n":1}"#)).await.status, 200);
    let seen = up.last();
    let expected = r#"{"name":"bob","tags":[],"nested":{"empty":[]},"n":1,"source":"gateway"}"#;
    assert_eq!(seen.body, expected);
    assert_eq!(seen.headers["content-length"], expected.len().to_string().as_str());

    assert_eq!(send(post(r#"{"name": "al", oops"#)).await.status, 200);
    let seen = up.last();
    assert_eq!(seen.body, r#"{"name": "al", oops"#);
    assert_eq!(seen.headers["content-length"], "19");
    gw.stop().await;
}

/// An upstream answering JSON with a `Server` header.
async fn json_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve(listener, |_req: Request<Incoming>| async {
        let res = Response::builder()
            .header("content-type", "application/json")
            .header("server", "upstream/1.0")
            .body(Full::new(Bytes::from_static(br#"{"id":7,"items":[]}"#)))
            .unwrap();
        Ok::<_, Infallible>(res)
    });
    addr
}

#[tokio::test]
async fn response_transformer_typed_json_and_header_removal() {
    let addr = json_upstream().await;
    let yaml = format!(
        r#"services:
- name: svc
  url: http://{addr}
  routes:
  - name: r
    paths: [/]
  plugins:
  - name: response-transformer
    config:
      remove: {{headers: [Server]}}
      add:
        headers: ["X-Transformed:yes"]
        json: ["count:3", "ok:true", "label:a:b"]
        json_types: [number, boolean]
"#
    );
    let gw = TestGateway::start(&yaml).await;
    let res = get(&gw.url("/anything")).await;
    assert_eq!(res.status, 200);
    assert!(res.headers.get("server").is_none());
    assert_eq!(res.headers["x-transformed"], "yes");
    let expected = r#"{"id":7,"items":[],"count":3,"ok":true,"label":"a:b"}"#;
    assert_eq!(res.body, expected);
    assert_eq!(res.headers["content-length"], expected.len().to_string().as_str());
    gw.stop().await;
}

#[tokio::test]
async fn consumer_id_template_renders_the_verified_consumer() {
    let up = Upstream::start().await;
    let transform = TransformLayer::builder()
        .request(
            Action::Add,
            RequestPart::Headers,
            ["X-Consumer-ID:$(consumer.id)", "X-User:$(consumer.username)"],
        )
        .build()
        .unwrap();
    // Stands in for an auth layer until one exists: the verified consumer in extensions.
    let svc = ServiceBuilder::new()
        .map_request(|mut req: Request<Body>| {
            let consumer =
                Consumer { id: "c-42".into(), username: Some("alice".into()), ..Consumer::default() };
            req.extensions_mut().insert(consumer);
            req
        })
        .layer(transform)
        .service(Proxy::builder(&up.url()).unwrap().build::<Body>());
    let res = svc.oneshot(Request::get("/me").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = up.last();
    assert_eq!(header_values(&seen, "x-consumer-id"), ["c-42"]);
    assert_eq!(header_values(&seen, "x-user"), ["alice"]);
}

#[tokio::test]
async fn bad_templates_and_forbidden_headers_are_config_errors() {
    let error = |config: &str| {
        let yaml = format!(
            "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    plugins:\n    - name: request-transformer\n      config:\n{config}"
        );
        Gateway::from_yaml(&yaml, "test.yaml").unwrap_err().to_string()
    };
    let at = "test.yaml: services[0].routes[0].plugins[0].config";
    let e = error("        add: {headers: [\"X-A:1\", \"X-B:$(consumer.password)\"]}\n");
    assert!(
        e.starts_with(&format!("{at}.add.headers[1]: unknown template expression `consumer.password`")),
        "{e}"
    );
    let e = error("        replace: {uri: \"/u/$(uri_captures.id\"}\n");
    assert!(e.starts_with(&format!("{at}.replace.uri: unclosed `$(`")), "{e}");
    let e = error("        append: {headers: [\"Transfer-Encoding:chunked\"]}\n");
    assert!(e.starts_with(&format!("{at}.append.headers[0]: `Transfer-Encoding` is a hop-by-hop")), "{e}");
    let e = error("        add: {headers: [\"X-Consumer-ID:$(headers.x-user)\"]}\n");
    assert!(e.starts_with(&format!("{at}.add.headers[0]: `X-Consumer-ID` is a gateway-owned header")), "{e}");
    let e = error("        add: {headers: [\"X-Real-IP:1.2.3.4\"]}\n");
    assert!(e.contains("gateway-owned"), "{e}");
    let e = error("        add: {cookies: []}\n");
    assert!(e.starts_with(&format!("{at}.add.cookies: unknown field `cookies`")), "{e}");
    // The seed's own rule: an owned consumer header set to exactly its verified field.
    let ok = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: http://127.0.0.1:9\n  routes:\n  - name: r\n    paths: [/]\n    plugins:\n    - name: request-transformer\n      config:\n        add: {headers: [\"X-Consumer-ID:$(consumer.id)\", \"X-Forwarded-Service:orders-api\"]}\n        remove: {headers: [X-Internal-Token]}\n";
    assert!(Gateway::from_yaml(ok, "test.yaml").is_ok());
}
