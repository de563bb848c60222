use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::Body;
use crate::consumer::Consumer;

/// What the inner service saw.
#[derive(Debug, Clone, Default)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
    // Read by the URI tests, which need the proxy's `UpstreamPath`.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    upstream_path: Option<String>,
}

/// Runs `req` through `layer` in front of a service that records the request and answers
/// `answer` (headers and body).
async fn run(layer: TransformLayer, req: Request<Body>, answer: Response<Body>) -> (Seen, Response<Body>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let answer = Arc::new(Mutex::new(Some(answer)));
    let recorder = seen.clone();
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(move |req: Request<Body>| {
        let recorder = recorder.clone();
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            *recorder.lock().unwrap() = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                headers: parts.headers,
                body,
                upstream_path: upstream_path(&parts.extensions),
            };
            Ok::<_, Infallible>(answer.lock().unwrap().take().unwrap_or_default())
        }
    }));
    let res = svc.oneshot(req).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    (seen, res)
}

#[cfg(feature = "proxy")]
fn upstream_path(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<crate::ext::UpstreamPath>().map(|p| p.0.clone())
}

/// Without the proxy there is no `UpstreamPath`; the rewritten URI is the request's.
#[cfg(not(feature = "proxy"))]
fn upstream_path(extensions: &http::Extensions) -> Option<String> {
    let _ = extensions;
    None
}

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri)
}

async fn body_of(res: Response<Body>) -> Bytes {
    res.into_body().collect().await.unwrap().to_bytes()
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn kong_header_cases() {
    let layer = TransformLayer::builder()
        .request(Action::Remove, RequestPart::Headers, ["X-Remove-Me", "x-absent"])
        .request(Action::Rename, RequestPart::Headers, ["X-Old:X-New"])
        .request(Action::Replace, RequestPart::Headers, ["X-Present:replaced", "X-Not-There:nope"])
        .request(Action::Add, RequestPart::Headers, ["X-Keep:added", "X-Three:1", "X-Fresh:v"])
        .request(Action::Append, RequestPart::Headers, ["X-Three:2", "x-three:3"])
        .build()
        .unwrap();
    let req = get("/")
        .header("x-remove-me", "a")
        .header("X-OLD", "o1")
        .header("x-old", "o2")
        .header("x-new", "overwritten")
        .header("x-present", "p")
        .header("x-keep", "original")
        .body(Body::empty())
        .unwrap();
    let (seen, _) = run(layer, req, Response::default()).await;
    let h = &seen.headers;
    assert!(h.get("x-remove-me").is_none());
    assert!(h.get("x-old").is_none());
    assert_eq!(values(h, "x-new"), ["o1", "o2"], "rename moves every value and overwrites");
    assert_eq!(values(h, "x-present"), ["replaced"]);
    assert!(h.get("x-not-there").is_none(), "replace only if present");
    assert_eq!(values(h, "x-keep"), ["original"], "add does not override");
    assert_eq!(values(h, "x-fresh"), ["v"]);
    assert_eq!(values(h, "x-three"), ["1", "2", "3"], "add + append, names compared case-insensitively");
}

#[tokio::test]
async fn templates_see_the_original_request() {
    let layer = TransformLayer::builder()
        .request(Action::Remove, RequestPart::Headers, ["X-Secret"])
        .request(Action::Remove, RequestPart::Querystring, ["q"])
        .request(
            Action::Add,
            RequestPart::Headers,
            [
                "X-Was-Secret:$(headers.x-secret)",
                "X-Q:$(query_params.q or 'none')",
                "X-Consumer-ID:$(consumer.id)",
                "X-Who:$(consumer.username)-$(request_id)",
            ],
        )
        .build()
        .unwrap();
    let mut req = get("/p?q=hello%20world&x=1").header("x-secret", "s3").body(Body::empty()).unwrap();
    req.extensions_mut().insert(Consumer {
        id: "c-9".into(),
        username: Some("ann".into()),
        ..Consumer::default()
    });
    req.extensions_mut().insert(RequestId::from_static("rid"));
    let (seen, _) = run(layer.clone(), req, Response::default()).await;
    assert_eq!(seen.headers["x-was-secret"], "s3");
    assert!(seen.headers.get("x-secret").is_none());
    assert_eq!(seen.headers["x-q"], "hello world");
    assert_eq!(seen.headers["x-consumer-id"], "c-9");
    assert_eq!(seen.headers["x-who"], "ann-rid");
    assert_eq!(seen.uri, "/p?x=1");
    // No consumer: the verified-consumer header renders empty and is not set at all.
    let (seen, _) = run(layer, get("/p").body(Body::empty()).unwrap(), Response::default()).await;
    assert!(seen.headers.get("x-consumer-id").is_none());
    assert_eq!(seen.headers["x-q"], "none");
}

#[tokio::test]
async fn querystring_order_and_colons() {
    let layer = TransformLayer::builder()
        .request(Action::Remove, RequestPart::Querystring, ["drop"])
        .request(Action::Rename, RequestPart::Querystring, ["old:new"])
        .request(Action::Add, RequestPart::Querystring, ["p1:anything:1", "b:ignored"])
        .request(Action::Append, RequestPart::Querystring, ["b:3"])
        .build()
        .unwrap();
    let req = get("/s?b=1&drop=x&old=o&a=%2F").body(Body::empty()).unwrap();
    let (seen, _) = run(layer, req, Response::default()).await;
    assert_eq!(seen.uri, "/s?b=1&new=o&a=%2F&p1=anything%3A1&b=3");
}

#[cfg(feature = "proxy")]
#[tokio::test]
async fn replace_uri_method_and_upstream_path() {
    let layer = TransformLayer::builder()
        .replace_uri("/users/$(query_params.id)")
        .http_method(Method::POST)
        .build()
        .unwrap();
    let (seen, _) =
        run(layer.clone(), get("/v1/x?id=42").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("POST", "/users/42?id=42"));
    assert_eq!(seen.upstream_path.as_deref(), Some("/users/42"));
    // A value cannot climb out of the rewritten path: one that is or holds a dot segment is a
    // 400 and nothing is called.
    for query in
        ["id=..%2F..%2Fadmin", "id=..", "id=.", "id=%252e%252e", "id=..%3Bx", "id=x%5C..%5Cadmin", "id=a/./b"]
    {
        let req = get(&format!("/v1/x?{query}")).body(Body::empty()).unwrap();
        let (seen, res) = run(layer.clone(), req, Response::default()).await;
        assert_eq!(res.status(), 400, "{query}");
        assert_eq!(seen.method, "", "{query}: the service was called");
    }
    // Anything else is exactly one segment: separators, `%`, `;`, `?`, `#` and spaces encoded.
    let req = get("/v1/x?id=a%2Fb%3Fc%23d%25e%3Bf%20g%5Ch").body(Body::empty()).unwrap();
    let (seen, _) = run(layer.clone(), req, Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/users/a%2Fb%3Fc%23d%25e%3Bf%20g%5Ch"));
    let (seen, _) =
        run(layer.clone(), get("/v1/x?id=..x").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/users/..x"));
    // The expression finds nothing: it renders empty, the literal part stays (as in Kong).
    let (seen, _) = run(layer, get("/v1/x").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/users/"));
    let layer = TransformLayer::builder().replace_uri("$(query_params.to)").build().unwrap();
    let (seen, _) = run(layer, get("/v1/x").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!((seen.uri.as_str(), seen.upstream_path), ("/v1/x", None), "renders empty: path untouched");
    let layer = TransformLayer::builder().replace_uri("$(query_params.to)").build().unwrap();
    let (seen, _) =
        run(layer, get("/v1/x?to=/admin").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/%2Fadmin"), "a value is never a separator");
}

#[cfg(feature = "proxy")]
#[tokio::test]
async fn replace_uri_text_is_trusted_but_never_climbs() {
    // The template's own text: a dot segment in it is a build error; its defaults are text.
    let error = TransformLayer::builder().replace_uri("/a/../$(query_params.x)").build().unwrap_err();
    assert_eq!(error.location(), "replace.uri");
    assert!(matches!(error.kind(), TransformErrorKind::DotSegment(_)), "{error}");
    assert!(TransformLayer::builder().replace_uri("/a/%2E/b").build().is_err());
    let layer = TransformLayer::builder().replace_uri("/a/.$(query_params.x or 'v/1')/%zz").build().unwrap();
    let (seen, _) = run(layer.clone(), get("/p?x=y").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/a/.y/%25zz"));
    let (seen, _) = run(layer.clone(), get("/p").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/a/.v/1/%25zz"));
    // A value that renders empty must not leave a dot segment behind either.
    let (seen, res) = run(layer, get("/p?x=").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!((res.status().as_u16(), seen.method.as_str()), (400, ""));
    // Header values are request values too.
    let layer = TransformLayer::builder().replace_uri("/u/$(headers.x-id)").build().unwrap();
    let req = get("/p").header("x-id", "../admin").body(Body::empty()).unwrap();
    let (seen, res) = run(layer.clone(), req, Response::default()).await;
    assert_eq!((res.status().as_u16(), seen.method.as_str()), (400, ""));
    let req = get("/p").header("x-id", "..%2Fadmin").body(Body::empty()).unwrap();
    let (seen, res) = run(layer.clone(), req, Response::default()).await;
    assert_eq!((res.status().as_u16(), seen.method.as_str()), (400, ""), "an encoded separator counts");
    let req = get("/p").header("x-id", "a b/c").body(Body::empty()).unwrap();
    let (seen, _) = run(layer, req, Response::default()).await;
    assert_eq!(seen.upstream_path.as_deref(), Some("/u/a%20b%2Fc"));
}

fn json_post(body: &'static str) -> Request<Body> {
    Request::post("/j")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn json_and_form_bodies() {
    let layer = TransformLayer::builder()
        .request(Action::Replace, RequestPart::Body, ["name:$(headers.x-name)"])
        .request(Action::Add, RequestPart::Body, ["source:gw"])
        .build()
        .unwrap();
    let mut req = json_post(r#"{"name":"al","items":[],"n":{"deep":[]}}"#);
    req.headers_mut().insert("x-name", HeaderValue::from_static("bob"));
    let (seen, _) = run(layer.clone(), req, Response::default()).await;
    let expected = r#"{"name":"bob","items":[],"n":{"deep":[]},"source":"gw"}"#;
    assert_eq!(seen.body, expected);
    assert_eq!(seen.headers["content-length"], expected.len().to_string().as_str());

    let (seen, _) = run(layer.clone(), json_post("{\"name\": oops"), Response::default()).await;
    assert_eq!(seen.body, "{\"name\": oops", "malformed JSON passes through");
    assert_eq!(seen.headers["content-length"], "13");

    let req = Request::post("/f")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("name=al&x=1+2"))
        .unwrap();
    let (seen, _) = run(layer.clone(), req, Response::default()).await;
    assert_eq!(
        seen.body, "name=al&x=1+2&source=gw",
        "x-name is absent: replace renders empty and is skipped"
    );

    let req = Request::post("/m")
        .header("content-type", "multipart/form-data; boundary=b")
        .body(Body::from("--b--"))
        .unwrap();
    let (seen, _) = run(layer, req, Response::default()).await;
    assert_eq!(seen.body, "--b--");
    assert!(seen.headers.get("content-length").is_none(), "untouched: not buffered");
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let layer = TransformLayer::builder()
        .request(Action::Add, RequestPart::Body, ["a:b"])
        .max_body_bytes(8)
        .build()
        .unwrap();
    let (_, res) = run(layer.clone(), json_post(r#"{"long":"value"}"#), Response::default()).await;
    assert_eq!(res.status(), 413);
    // Streamed without a length: cut off while reading.
    let chunks = futures_stream(vec![Bytes::from_static(b"{\"a\":"), Bytes::from_static(b"\"123456\"}")]);
    let req = Request::post("/").header("content-type", "application/json").body(chunks).unwrap();
    let (_, res) = run(layer, req, Response::default()).await;
    assert_eq!(res.status(), 413);
}

fn futures_stream(chunks: Vec<Bytes>) -> Body {
    let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
    for chunk in chunks {
        tx.send(chunk).unwrap();
    }
    drop(tx);
    Body::new(Lazy {
        next: Box::new(move || rx.try_recv().ok()),
        live: Arc::new(AtomicUsize::new(0)),
        max: None,
    })
}

#[tokio::test]
async fn response_headers_and_typed_json() {
    let layer = TransformLayer::builder()
        .response(Action::Remove, ResponsePart::Headers, ["Server"])
        .response(Action::Add, ResponsePart::Headers, ["X-Gw:1"])
        .response(Action::Remove, ResponsePart::Json, ["secret"])
        .response_json_typed(Action::Add, "count:42", JsonType::Number)
        .response_json_typed(Action::Add, "ok:true", JsonType::Boolean)
        .response(Action::Add, ResponsePart::Json, ["label:x:y"])
        .build()
        .unwrap();
    let answer = Response::builder()
        .header("server", "upstream/1")
        .header("content-type", "application/json")
        .header("content-length", "29")
        .body(Body::from(r#"{"id":1,"secret":"s","list":[]}"#))
        .unwrap();
    let (_, res) = run(layer.clone(), get("/").body(Body::empty()).unwrap(), answer).await;
    assert!(res.headers().get("server").is_none());
    assert_eq!(res.headers()["x-gw"], "1");
    let expected = r#"{"id":1,"list":[],"count":42,"ok":true,"label":"x:y"}"#;
    assert_eq!(res.headers()["content-length"], expected.len().to_string().as_str());
    assert_eq!(body_of(res).await, expected);

    let text =
        Response::builder().header("content-type", "text/plain").body(Body::from("{\"id\":1}")).unwrap();
    let (_, res) = run(layer, get("/").body(Body::empty()).unwrap(), text).await;
    assert_eq!(body_of(res).await, "{\"id\":1}", "not JSON by its type: untouched");
}

#[tokio::test]
async fn json_rules_leave_head_and_bodyless_answers_alone() {
    let layer = TransformLayer::builder().response(Action::Add, ResponsePart::Json, ["k:v"]).build().unwrap();
    let json = |status: u16, length: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", length)
            .body(Body::empty())
            .unwrap()
    };
    // A HEAD answer's Content-Length describes the GET's body: kept.
    let head = Request::head("/").body(Body::empty()).unwrap();
    let (_, res) = run(layer.clone(), head, json(200, "120")).await;
    assert_eq!(res.headers()["content-length"], "120");
    assert_eq!(body_of(res).await, "");
    for status in [204, 304] {
        let (_, res) = run(layer.clone(), get("/").body(Body::empty()).unwrap(), json(status, "0")).await;
        assert_eq!(res.status(), status);
        assert_eq!(body_of(res).await, "", "{status}");
    }
    // `http_method: HEAD` makes the upstream's answer a HEAD answer too.
    let to_head = TransformLayer::builder()
        .http_method(Method::HEAD)
        .response(Action::Add, ResponsePart::Json, ["k:v"])
        .build()
        .unwrap();
    let (seen, res) = run(to_head, get("/").body(Body::empty()).unwrap(), json(200, "120")).await;
    assert_eq!(seen.method, "HEAD");
    assert_eq!(res.headers()["content-length"], "120");
}

fn form_post(uri: &str, body: &'static str) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn method_changed_to_get_takes_form_fields_into_the_query() {
    let layer = TransformLayer::builder()
        .http_method(Method::GET)
        .request(Action::Remove, RequestPart::Querystring, ["secret"])
        .request(Action::Add, RequestPart::Querystring, ["via:gw"])
        .build()
        .unwrap();
    let (seen, _) = run(layer.clone(), form_post("/f?a=0", "a=1&b=x+y&secret=s"), Response::default()).await;
    assert_eq!(seen.method, "GET");
    // Kong: the body's fields join the query (before the querystring rules run) and the body
    // itself is left as it was.
    assert_eq!(seen.uri, "/f?a=0&a=1&b=x+y&via=gw");
    assert_eq!(seen.body, "a=1&b=x+y&secret=s");
    assert_eq!(seen.headers["content-length"], "18");

    // Not a form: nothing moves.
    let (seen, _) = run(layer.clone(), json_post(r#"{"a":1}"#), Response::default()).await;
    assert_eq!((seen.method.as_str(), seen.uri.as_str()), ("GET", "/j?via=gw"));
    assert_eq!(seen.body, r#"{"a":1}"#);

    // An empty form: the query is only the rules' work.
    let (seen, _) = run(layer, form_post("/f?a=0", ""), Response::default()).await;
    assert_eq!(seen.uri, "/f?a=0&via=gw");

    // GET to POST: Kong moves nothing (the query stays, no body is made).
    let to_post = TransformLayer::builder().http_method(Method::POST).build().unwrap();
    let (seen, _) = run(to_post, get("/p?a=1").body(Body::empty()).unwrap(), Response::default()).await;
    assert_eq!((seen.method.as_str(), seen.uri.as_str(), &seen.body[..]), ("POST", "/p?a=1", &b""[..]));

    // Read within the body limit like any body rule.
    let small = TransformLayer::builder().http_method(Method::GET).max_body_bytes(4).build().unwrap();
    let (_, res) = run(small, form_post("/f", "a=1&b=2"), Response::default()).await;
    assert_eq!(res.status(), 413);
}

/// A body whose chunks are produced only when polled, counting chunks produced but not yet
/// consumed by the service at the end of the stack.
struct Lazy {
    next: Box<dyn FnMut() -> Option<Bytes> + Send>,
    live: Arc<AtomicUsize>,
    max: Option<Arc<AtomicUsize>>,
}

impl http_body::Body for Lazy {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = (self.next)();
        if chunk.is_some() {
            let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(max) = &self.max {
                max.fetch_max(live, Ordering::SeqCst);
            }
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test]
async fn ten_mib_streams_through_without_buffering_when_no_body_rule() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 160; // 10 MiB
    let layer = TransformLayer::builder()
        .request(Action::Add, RequestPart::Headers, ["X-A:1", "X-B:$(headers.x-in)"])
        .request(Action::Add, RequestPart::Querystring, ["v:1"])
        .response(Action::Add, ResponsePart::Headers, ["X-C:1"])
        // Response JSON rules do not read a request body, nor a non-JSON response.
        .response(Action::Add, ResponsePart::Json, ["k:v"])
        .build()
        .unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let mut produced = 0;
    let body = Lazy {
        next: Box::new(move || {
            produced += 1;
            (produced <= CHUNKS).then(|| Bytes::from(vec![b'x'; CHUNK]))
        }),
        live: live.clone(),
        max: Some(max.clone()),
    };
    let consumer_live = live.clone();
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(move |req: Request<Lazy>| {
        let live = consumer_live.clone();
        async move {
            // The layer handed the request on before producing a single chunk.
            assert_eq!(live.load(Ordering::SeqCst), 0);
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(frame) = body.frame().await {
                total += frame.unwrap().into_data().unwrap().len();
                live.fetch_sub(1, Ordering::SeqCst);
            }
            let res = Response::builder().header("content-type", "application/octet-stream");
            Ok::<_, Infallible>(res.body(Body::from(total.to_string())).unwrap())
        }
    }));
    let req = Request::post("/upload").header("content-type", "application/json").body(body).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["x-c"], "1");
    assert_eq!(body_of(res).await, (CHUNK * CHUNKS).to_string());
    assert_eq!(max.load(Ordering::SeqCst), 1, "never more than one chunk in flight");
}

impl From<Bytes> for Lazy {
    fn from(data: Bytes) -> Self {
        let mut data = Some(data);
        Lazy { next: Box::new(move || data.take()), live: Arc::new(AtomicUsize::new(0)), max: None }
    }
}

#[test]
fn clones_share_one_compiled_rule_set() {
    let layer =
        TransformLayer::builder().request(Action::Add, RequestPart::Headers, ["X-A:1"]).build().unwrap();
    let a = layer.layer(());
    let b = layer.clone().layer(());
    assert!(Arc::ptr_eq(&a.shared, &b.shared));
}

#[test]
fn bad_rules_name_their_location() {
    let err = |b: TransformBuilder| b.build().unwrap_err();
    let e =
        err(TransformLayer::builder().request(Action::Add, RequestPart::Headers, ["X-A:1", "X-B:$(nope)"]));
    assert_eq!(e.location(), "add.headers[1]");
    assert!(e.to_string().contains("unknown template expression `nope`"), "{e}");
    let e = err(TransformLayer::builder().replace_uri("/u/$(uri_captures.id"));
    assert_eq!(e.location(), "replace.uri");
    let e =
        err(TransformLayer::builder().request(Action::Append, RequestPart::Headers, ["Connection:close"]));
    assert_eq!(
        e.to_string(),
        "append.headers[0]: `Connection` is a hop-by-hop or framing header; a transform rule may not set it"
    );
    let e = err(TransformLayer::builder().request(Action::Rename, RequestPart::Headers, ["X-A:X-Real-IP"]));
    assert_eq!(e.location(), "rename.headers[0]");
    assert!(matches!(e.kind(), TransformErrorKind::Forbidden(_, "gateway-owned")));
    let e = err(TransformLayer::builder().request(
        Action::Add,
        RequestPart::Headers,
        ["X-Consumer-ID:$(headers.x)"],
    ));
    assert!(matches!(e.kind(), TransformErrorKind::Forbidden(..)));
    let e =
        err(TransformLayer::builder().response(Action::Add, ResponsePart::Headers, ["X-A:$(request_id)"]));
    assert!(matches!(e.kind(), TransformErrorKind::ResponseTemplate(_)));
    let e = err(TransformLayer::builder().response_json_typed(Action::Append, "n:x", JsonType::Number));
    assert_eq!(e.location(), "append.json[0]");
    let e = err(TransformLayer::builder().request(Action::Add, RequestPart::Querystring, ["novalue"]));
    assert_eq!(e.location(), "add.querystring[0]");
}

#[tokio::test]
async fn json_budget_and_depth_on_both_sides() {
    let layer = TransformLayer::builder()
        .request(Action::Add, RequestPart::Body, ["a:b"])
        .response(Action::Add, ResponsePart::Json, ["k:v"])
        .max_json_body_bytes(32)
        .max_json_depth(3)
        .build()
        .unwrap();
    let answer = |body: &'static str, length: bool| {
        let mut res = Response::builder().header("content-type", "application/json");
        if length {
            res = res.header("content-length", body.len());
        }
        res.body(Body::from(body)).unwrap()
    };
    // Request side: over the depth is 400, over the JSON budget 413 (a form body keeps the
    // general limit); nothing reaches the service.
    let (seen, res) = run(layer.clone(), json_post("[[[[]]]]"), Response::default()).await;
    assert_eq!((res.status().as_u16(), seen.method.as_str()), (400, ""));
    let (seen, res) =
        run(layer.clone(), json_post(r#"{"pad":"0123456789012345678901234567"}"#), Response::default()).await;
    assert_eq!((res.status().as_u16(), seen.method.as_str()), (413, ""));
    let (seen, res) =
        run(layer.clone(), form_post("/", "pad=0123456789012345678901234567890123"), Response::default())
            .await;
    assert_eq!(res.status(), 200);
    assert_eq!(seen.body, "pad=0123456789012345678901234567890123&a=b");
    let (seen, _) = run(layer.clone(), json_post(r#"{"x":[[1]]}"#), Response::default()).await;
    assert_eq!(seen.body, r#"{"x":[[1]],"a":"b"}"#);

    // Response side: too deep, or declared over the budget, passes untouched; streamed over the
    // budget it has been partly read: 502.
    let small = || json_post("{}");
    let (_, res) = run(layer.clone(), small(), answer(r#"{"x":[[[1]]]}"#, true)).await;
    assert_eq!(body_of(res).await, r#"{"x":[[[1]]]}"#);
    let long = r#"{"pad":"0123456789012345678901234567"}"#;
    let (_, res) = run(layer.clone(), small(), answer(long, true)).await;
    assert_eq!((res.status().as_u16(), body_of(res).await), (200, Bytes::from_static(long.as_bytes())));
    let (_, res) = run(layer.clone(), small(), answer(long, false)).await;
    assert_eq!(res.status(), 502);
    let (_, res) = run(layer, small(), answer(r#"{"x":[[1]]}"#, true)).await;
    assert_eq!(body_of(res).await, r#"{"x":[[1]],"k":"v"}"#);
}
