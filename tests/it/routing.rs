//! Kong routing through a real gateway: priority, captures, strip_path joins, 404s, and paths that
//! must never be routed by their raw form.

use http::Request;
use http_body_util::Full;

use crate::support::*;

async fn routed(upstreams: &[&Upstream], gw: &TestGateway, path: &str) -> (u16, Option<(usize, String)>) {
    let before: Vec<usize> = upstreams.iter().map(|u| u.seen().len()).collect();
    let res = get(&gw.url(path)).await;
    let hit = upstreams
        .iter()
        .enumerate()
        .find(|(i, u)| u.seen().len() > before[*i])
        .map(|(i, u)| (i, u.last().uri));
    (res.status.as_u16(), hit)
}

#[tokio::test]
async fn priority_prefix_regex_longest_and_methods() {
    let (a, b, c, d) =
        (Upstream::start().await, Upstream::start().await, Upstream::start().await, Upstream::start().await);
    let yaml = format!(
        r#"services:
- name: a
  url: {}
  routes:
  - name: short-prefix
    paths: [/api]
    strip_path: false
- name: b
  url: {}
  routes:
  - name: long-prefix
    paths: [/api/users]
    strip_path: false
- name: c
  url: {}
  routes:
  - name: regex
    paths: ["~/api/users/(?P<id>\\d+)$"]
    strip_path: false
- name: d
  url: {}
  routes:
  - name: methods-and-paths
    paths: [/api]
    methods: [POST]
    strip_path: false
"#,
        a.url(),
        b.url(),
        c.url(),
        d.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let ups = [&a, &b, &c, &d];
    assert_eq!(routed(&ups, &gw, "/api/other").await, (200, Some((0, "/api/other".into()))));
    assert_eq!(routed(&ups, &gw, "/api/users/abc").await, (200, Some((1, "/api/users/abc".into()))));
    assert_eq!(
        routed(&ups, &gw, "/api/users/42").await,
        (200, Some((2, "/api/users/42".into()))),
        "regex beats prefix"
    );
    let res = send(Request::post(gw.url("/api/users/42")).body(Full::default()).unwrap()).await;
    assert_eq!(res.status, 200);
    assert_eq!(d.seen().len(), 1, "methods+paths beats a paths-only regex");
    let res = get(&gw.url("/nothing")).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"], "no_route");
    assert_eq!(res.json()["message"], "no Route matched with those values");
    gw.stop().await;
}

#[tokio::test]
async fn wrong_method_is_404_json() {
    let up = Upstream::start().await;
    let yaml = format!(
        "services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/only-get]\n    methods: [GET]\n",
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/only-get")).await.status, 200);
    let res = send(Request::delete(gw.url("/only-get")).body(Full::default()).unwrap()).await;
    assert_eq!(res.status, 404);
    assert_eq!(res.headers["content-type"], "application/json");
    assert_eq!(res.json()["error"], "no_route");
    gw.stop().await;
}

#[tokio::test]
async fn strip_path_joins_with_the_service_path() {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: based
  url: {url}/base
  routes:
  - name: stripped
    paths: [/api]
  - name: kept
    paths: [/keep]
    strip_path: false
- name: plain
  url: {url}
  routes:
  - name: plain-stripped
    paths: [/p/]
"#,
        url = up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let cases = [
        ("/api/users?x=1", "/base/users?x=1"),
        ("/api", "/base"),
        ("/api/", "/base/"),
        ("/keep/users?a=b&a=c", "/base/keep/users?a=b&a=c"),
        ("/p/users", "/users"),
    ];
    for (sent, expected) in cases {
        let res = get(&gw.url(sent)).await;
        assert_eq!(res.status, 200, "{sent}");
        assert_eq!(up.last().uri, expected, "{sent}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn malformed_or_sneaky_paths_are_resolved_or_refused() {
    let public = Upstream::start().await;
    let admin = Upstream::start().await;
    let yaml = format!(
        r#"services:
- name: public
  url: {}
  routes:
  - name: public
    paths: [/public]
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
    // Resolved before routing: they reach the admin route with the normalized path.
    for path in ["/public/../admin", "/public/%2e%2e/admin", "//admin", "/%61dmin"] {
        let answer =
            raw(gw.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        assert_eq!(raw_status(&answer), 200, "{path}: {answer}");
        assert_eq!(admin.last().uri, "/admin", "{path}");
    }
    assert!(public.seen().is_empty(), "a raw form was routed to /public");
    // Refused: encoded separators and malformed escapes.
    for path in ["/public/..%2Fadmin", "/admin%", "/public/%252e%252e/admin"] {
        let answer =
            raw(gw.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        assert_eq!(raw_status(&answer), 400, "{path}: {answer}");
        assert!(answer.contains("\"error\":\"bad_request\""), "{answer}");
    }
    assert_eq!(admin.seen().len(), 4);
    assert!(public.seen().is_empty());
    gw.stop().await;
}
