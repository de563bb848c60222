//! Paths that must not take a request somewhere the gateway did not mean (issue 12, items 1, 2
//! and 5), sent as raw bytes so no client normalizes them: `strip_path` joins that would climb out
//! of the service's path, `replace.uri` values that would, `;` parameters on dot segments, and
//! case-insensitive route paths.

use crate::support::*;

/// `GET {path}` as raw HTTP/1.1; returns the status and the whole answer.
async fn raw_get(gw: &TestGateway, path: &str) -> (u16, String) {
    let answer =
        raw(gw.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
    (raw_status(&answer), answer)
}

/// Asserts a 400 `bad_request` with the JSON error body.
fn assert_bad_request(path: &str, (status, answer): (u16, String)) {
    assert_eq!(status, 400, "{path}: {answer}");
    assert!(answer.contains("application/json"), "{path}: {answer}");
    assert!(answer.contains(r#""error":"bad_request""#), "{path}: {answer}");
}

#[tokio::test]
async fn strip_path_never_leaves_the_service_path() {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: svc
  url: {}/base
  routes:
  - name: api
    paths: [/api]
  - name: versioned
    paths: ["~/re(?P<n>\\d)"]
  - name: kept
    paths: [/keep]
    strip_path: false
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // `/api../secret` would reach the upstream as `/base/../secret`, which it resolves to `/secret`.
    for path in ["/api../secret", "/api%2e%2e/secret", "/api.%2e/x", "/api%2E./x", "/api.", "/re1../secret"] {
        assert_bad_request(path, raw_get(&gw, path).await);
    }
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
    // Kong's string prefix still matches, as a segment of its own; so do the ordinary forms.
    for (path, upstream) in [
        ("/apix", "/base/x"),
        ("/api", "/base"),
        ("/api/users?a=1", "/base/users?a=1"),
        ("/api..x/y", "/base/..x/y"),
        ("/re1/ok", "/base/ok"),
        ("/re7", "/base"),
        // Nothing stripped: `keep..` is an ordinary segment.
        ("/keep../x", "/base/keep../x"),
    ] {
        let (status, answer) = raw_get(&gw, path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(up.last().uri, upstream, "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn dot_segments_with_parameters_are_refused() {
    let (public, admin) = (Upstream::start().await, Upstream::start().await);
    let yaml = format!(
        r#"services:
- name: public
  url: {}
  routes:
  - name: public
    paths: [/public, /a]
    strip_path: false
- name: admin
  url: {}
  routes:
  - name: admin
    paths: [/admin]
    strip_path: false
"#,
        public.url(),
        admin.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // Tomcat reads `..;` as `..`: `/public/..;/admin` would be the upstream's `/admin`.
    for path in ["/public/..;/admin", "/public/.;/admin", "/public/%2e%2e;x/admin", "/public/.%2e;/admin"] {
        assert_bad_request(path, raw_get(&gw, path).await);
    }
    assert!(public.seen().is_empty(), "{:?}", public.seen());
    assert!(admin.seen().is_empty(), "{:?}", admin.seen());
    // A parameter on an ordinary segment is the upstream's business.
    for path in ["/a;b/c", "/public/x;v=1/y", "/public/..x;/y"] {
        let (status, answer) = raw_get(&gw, path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(public.last().uri, path);
    }
    assert!(admin.seen().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn replace_uri_values_never_climb_out() {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: svc
  url: {}/base
  routes:
  - name: users
    paths: [/t]
    plugins:
    - name: request-transformer
      config:
        replace: {{uri: "/users/$(query_params.id or headers.x-id)"}}
  - name: files
    paths: ["~/files/(?P<name>.+)$"]
    plugins:
    - name: request-transformer
      config:
        replace: {{uri: "/store/$(uri_captures.name)"}}
"#,
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // `/users/../../admin` would be the upstream's `/admin`.
    for path in [
        "/t?id=..%2F..%2Fadmin",
        "/t?id=%2e%2e",
        "/t?id=..",
        "/t?id=..%5Cadmin",
        "/t?id=..%3B",
        "/t?id=%252e.",
    ] {
        assert_bad_request(path, raw_get(&gw, path).await);
    }
    let answer =
        raw(gw.addr, b"GET /t HTTP/1.1\r\nHost: x\r\nX-Id: ../admin\r\nConnection: close\r\n\r\n").await;
    assert_bad_request("X-Id: ../admin", (raw_status(&answer), answer));
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
    // Every other value is exactly one segment under `/users/`.
    for (path, upstream) in [
        ("/t?id=42", "/users/42?id=42"),
        ("/t?id=a%2Fb", "/users/a%2Fb?id=a%2Fb"),
        ("/t?id=a%3Fb%23c%25d", "/users/a%3Fb%23c%25d?id=a%3Fb%23c%25d"),
        ("/t?id=..a", "/users/..a?id=..a"),
        ("/files/a/b", "/store/a%2Fb"),
        ("/files/..x", "/store/..x"),
    ] {
        let (status, answer) = raw_get(&gw, path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(up.last().uri, upstream, "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn case_insensitive_paths_is_a_per_route_choice() {
    let (admin, reports, public) =
        (Upstream::start().await, Upstream::start().await, Upstream::start().await);
    let yaml = format!(
        r#"services:
- name: admin
  url: {}
  routes:
  - name: admin
    paths: [/admin]
    strip_path: false
- name: reports
  url: {}
  routes:
  - name: reports
    paths: [/Reports, "~/exports/(?P<id>[a-z]+)$"]
    strip_path: false
    case_insensitive_paths: true
- name: public
  url: {}
  routes:
  - name: public
    paths: [/]
    strip_path: false
"#,
        admin.url(),
        reports.url(),
        public.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // Kong's default: `/ADMIN` is not `/admin` (it falls to the catch-all, not the admin route).
    assert_eq!(raw_get(&gw, "/admin/x").await.0, 200);
    assert_eq!(admin.last().uri, "/admin/x");
    assert_eq!(raw_get(&gw, "/ADMIN/x").await.0, 200);
    assert_eq!(admin.seen().len(), 1, "a differently-cased path matched the case-sensitive route");
    assert_eq!(public.last().uri, "/ADMIN/x");
    // With `case_insensitive_paths`, every casing reaches the route, sent upstream as the client wrote it.
    for path in ["/reports/q1", "/REPORTS/q1", "/rEpOrTs", "/exports/abc", "/EXPORTS/ABC"] {
        let (status, answer) = raw_get(&gw, path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(reports.last().uri, path);
    }
    assert_eq!(reports.seen().len(), 5);
    assert_eq!(public.seen().len(), 1);
    gw.stop().await;
}

/// The library's `Router` + `Proxy` without `SanitizeLayer` in front: the proxy itself refuses to
/// send a path that holds a dot segment in any form.
#[tokio::test]
async fn proxy_alone_never_sends_a_dot_segment() {
    use http::Request;
    use portcullis::Body;
    use portcullis::proxy::{Proxy, UpstreamPath};
    use portcullis::router::{Route, Router};
    use tower::ServiceExt;

    let up = Upstream::start().await;
    let proxy = Proxy::builder(&format!("{}/base", up.url())).unwrap().build();
    let router = Router::builder().route(Route::new().paths(["/api"]), proxy).build().unwrap();
    let call = |path: &str, rewritten: Option<&str>| {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        if let Some(rewritten) = rewritten {
            req.extensions_mut().insert(UpstreamPath(rewritten.to_owned()));
        }
        router.clone().oneshot(req)
    };
    for path in ["/api/%2e%2e/secret", "/api%2E./x", "/api/..;/x", "/api/x/..%2fy", "/api/./x"] {
        let res = call(path, None).await.unwrap();
        assert_eq!(res.status(), 400, "{path}");
    }
    let res = call("/api/x", Some("/users/../admin")).await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(up.seen().is_empty(), "the upstream saw {:?}", up.seen());
    assert_eq!(call("/api/x.y/%2e%2ex", None).await.unwrap().status(), 200);
    assert_eq!(up.last().uri, "/base/x.y/%2e%2ex");
}
