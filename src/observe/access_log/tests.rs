use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::*;
use crate::client_ip::ClientIp;
use crate::consumer::Consumer;
use crate::ext::NormalizedPath;
use crate::ext::RequestId;
use crate::ext::{MatchedRoute, RouteInfo};

/// SPEC §7, in order.
const KEYS: [&str; 18] = [
    "timestamp",
    "request_id",
    "method",
    "path",
    "route_name",
    "service_name",
    "status",
    "consumer_id",
    "client_ip",
    "upstream_host",
    "upstream_status",
    "upstream_latency_ms",
    "gateway_latency_ms",
    "attempts",
    "rate_limit",
    "breaker",
    "bytes_sent",
    "user_agent",
];

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

fn sink() -> (LogSink, Buffer) {
    let buffer = Buffer::default();
    (LogSink::writer(buffer.clone()), buffer)
}

/// Parses a raw line, checking the key order and set: every SPEC key, `consumer_id` optional.
fn parse(line: &str, with_consumer: bool) -> serde_json::Map<String, Value> {
    let value: Value = serde_json::from_str(line).unwrap();
    let Value::Object(map) = value else { panic!("not an object: {line}") };
    // Key order as written (serde_json's Map sorts keys, so read them from the raw text).
    let mut expected: Vec<&str> = KEYS.to_vec();
    if !with_consumer {
        expected.retain(|k| *k != "consumer_id");
    }
    let positions: Vec<usize> = expected.iter().map(|k| line.find(&format!("\"{k}\":")).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "key order: {line}");
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    map
}

/// A body yielding the given chunks one frame at a time.
struct Chunks(VecDeque<Bytes>);

impl Chunks {
    fn new(chunks: &[&'static str]) -> Self {
        Self(chunks.iter().map(|c| Bytes::from_static(c.as_bytes())).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

#[tokio::test]
async fn streamed_200_is_one_line_with_every_field() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            tokio::time::sleep(Duration::from_millis(25)).await;
            Ok::<_, Infallible>(Response::new(Chunks::new(&["hello ", "streamed ", "world"])))
        },
    );
    let before = SystemTime::now();
    let req = Request::post("/orders/42").header("user-agent", "curl/8.5.0").body(()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let after = SystemTime::now();
    assert_eq!(body, "hello streamed world");
    sink.flush();

    let lines = buffer.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = parse(&lines[0], false);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/orders/42");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_sent"], 20);
    assert_eq!(line["user_agent"], "curl/8.5.0");
    let gateway_ms = line["gateway_latency_ms"].as_f64().unwrap();
    assert!((25.0..5_000.0).contains(&gateway_ms), "{gateway_ms}");
    for key in [
        "request_id",
        "route_name",
        "service_name",
        "client_ip",
        "upstream_host",
        "upstream_status",
        "upstream_latency_ms",
        "attempts",
        "rate_limit",
        "breaker",
    ] {
        assert_eq!(line[key], Value::Null, "{key}");
    }
    let ts = line["timestamp"].as_str().unwrap();
    assert!(ts.ends_with('Z') && ts.len() == "2025-06-01T09:30:12.345Z".len(), "{ts}");
    let ts = humantime::parse_rfc3339(ts).unwrap();
    // The request start, to the millisecond.
    assert!(ts + Duration::from_millis(1) >= before && ts <= after, "{ts:?}");
    assert_eq!(sink.lines_written(), 1);
    assert_eq!(sink.dropped(), 0);
}

#[tokio::test]
async fn annotations_from_every_layer_are_logged() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
            *res.status_mut() = StatusCode::CREATED;
            let ext = res.extensions_mut();
            ext.insert(Consumer { id: "acme".into(), ..Consumer::default() });
            ext.insert(MatchedRoute(Arc::new(RouteInfo {
                name: Some("orders".into()),
                service_name: Some("orders-svc".into()),
                preserve_host: false,
            })));
            #[cfg(feature = "proxy")]
            ext.insert(crate::ext::UpstreamInfo {
                host: "10.0.0.5:8080".into(),
                status: Some(StatusCode::BAD_GATEWAY),
                latency: Duration::from_micros(12_410),
                failure: None,
            });
            ext.insert(ClientIp("203.0.113.7".parse().unwrap()));
            ext.insert(NormalizedPath("/orders/42".into()));
            ext.insert(RateLimitOutcome::Allowed);
            ext.insert(Attempts(2));
            ext.insert(BreakerOutcome::Closed);
            Ok::<_, Infallible>(res)
        },
    );
    let mut req = Request::get("/orders/./42").body(()).unwrap();
    req.extensions_mut().insert(RequestId::from_static("req-1"));
    let res = svc.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    sink.flush();

    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    let line = parse(&lines[0], true);
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/orders/42");
    assert_eq!(line["route_name"], "orders");
    assert_eq!(line["service_name"], "orders-svc");
    assert_eq!(line["status"], 201);
    assert_eq!(line["consumer_id"], "acme");
    assert_eq!(line["client_ip"], "203.0.113.7");
    #[cfg(feature = "proxy")]
    {
        assert_eq!(line["upstream_host"], "10.0.0.5:8080");
        assert_eq!(line["upstream_status"], 502);
        assert_eq!(line["upstream_latency_ms"], 12.41);
    }
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["rate_limit"], "allowed");
    assert_eq!(line["breaker"], "closed");
    assert_eq!(line["bytes_sent"], 2);
    assert_eq!(line["user_agent"], Value::Null);
    assert!(line["gateway_latency_ms"].is_f64());
}

#[tokio::test]
async fn request_side_values_are_the_fallback() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            // A request-id layer inside the access log echoes the id as a header.
            let res =
                Response::builder().header("x-request-id", "inner-id").body(Empty::<Bytes>::new()).unwrap();
            Ok::<_, Infallible>(res)
        },
    );
    let mut req = Request::get("/a").body(()).unwrap();
    req.extensions_mut().insert(ClientIp("198.51.100.1".parse().unwrap()));
    req.extensions_mut().insert(Consumer { id: "early".into(), ..Consumer::default() });
    svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    sink.flush();
    let line = parse(&buffer.lines()[0], true);
    assert_eq!(line["client_ip"], "198.51.100.1");
    assert_eq!(line["consumer_id"], "early");
    assert_eq!(line["request_id"], "inner-id");
}

#[tokio::test]
async fn anonymous_consumer_is_omitted() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            let mut res = Response::new(Empty::<Bytes>::new());
            res.extensions_mut().insert(Consumer {
                id: "anon".into(),
                anonymous: true,
                ..Consumer::default()
            });
            Ok::<_, Infallible>(res)
        },
    );
    let mut req = Request::get("/a").body(()).unwrap();
    // The response's verdict wins over what the request carried at entry.
    req.extensions_mut().insert(Consumer { id: "someone".into(), ..Consumer::default() });
    svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    sink.flush();
    let lines = buffer.lines();
    assert!(!lines[0].contains("consumer_id") && !lines[0].contains("anon"), "{}", lines[0]);
    parse(&lines[0], false);
}

#[tokio::test]
async fn query_and_credentials_never_appear() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    let req = Request::get("https://gw.example/items?apikey=SECRETKEY&jwt=SECRETJWT&q=1")
        .header("authorization", "Bearer SECRETBEARER")
        .header("cookie", "session=SECRETCOOKIE")
        .header("apikey", "SECRETHEADER")
        .body(())
        .unwrap();
    svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    sink.flush();
    let text = buffer.text();
    for secret in ["SECRET", "apikey", "jwt", "Bearer", "session", "?", "q=1", "gw.example"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert_eq!(parse(text.trim_end(), false)["path"], "/items");
}

#[tokio::test]
async fn body_dropped_early_logs_exactly_once() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Chunks::new(&["12345", "67890"]))) },
    );
    let mut body = svc.clone().oneshot(Request::new(())).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "12345");
    drop(body);
    // A response whose body is never polled at all.
    drop(svc.oneshot(Request::new(())).await.unwrap());
    sink.flush();

    let lines = buffer.lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(parse(&lines[0], false)["bytes_sent"], 5);
    assert_eq!(parse(&lines[1], false)["bytes_sent"], 0);
    assert_eq!(sink.lines_written(), 2);
}

#[tokio::test]
async fn body_read_to_the_end_then_dropped_logs_once() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"abc"))))
        },
    );
    let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    // `Full` reports its end after the one frame, as hyper sees it: logged before the drop.
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream());
    sink.flush();
    assert_eq!(buffer.lines().len(), 1);
    drop(body);
    sink.flush();
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(parse(&lines[0], false)["bytes_sent"], 3);
}

#[tokio::test]
async fn inner_error_logs_500() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new(sink.clone()))
        .service_fn(|_req: Request<()>| async { Err::<Response<Empty<Bytes>>, _>(io::Error::other("boom")) });
    let err = svc.oneshot(Request::delete("/x").body(()).unwrap()).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    sink.flush();
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    let line = parse(&lines[0], false);
    assert_eq!(line["status"], 500);
    assert_eq!(line["method"], "DELETE");
    assert_eq!(line["bytes_sent"], 0);
}

#[tokio::test]
async fn client_gone_before_the_head_logs_499() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        },
    );
    let res = tokio::time::timeout(Duration::from_millis(10), svc.oneshot(Request::new(()))).await;
    assert!(res.is_err());
    sink.flush();
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1);
    let line = parse(&lines[0], false);
    assert_eq!(line["status"], 499);
    assert!(line["gateway_latency_ms"].as_f64().unwrap() >= 10.0);
}

#[tokio::test]
async fn off_writes_nothing() {
    let sink = LogSink::off();
    assert!(sink.is_off());
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    sink.flush();
    assert_eq!((sink.lines_written(), sink.dropped()), (0, 0));
    assert_eq!(format!("{sink:?}"), "LogSink::Off");
}

#[tokio::test]
async fn flush_makes_every_line_visible() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x")))) },
    );
    for i in 0..1000 {
        let req = Request::get(format!("/n/{i}")).body(()).unwrap();
        svc.clone().oneshot(req).await.unwrap().into_body().collect().await.unwrap();
    }
    sink.flush();
    let lines = buffer.lines();
    assert_eq!(lines.len(), 1000);
    assert_eq!(sink.lines_written(), 1000);
    assert_eq!(sink.dropped(), 0);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(parse(line, false)["path"], format!("/n/{i}"));
    }
}

#[tokio::test]
async fn lines_are_flushed_without_an_explicit_flush() {
    let (sink, buffer) = sink();
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new(sink.clone()))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    svc.oneshot(Request::new(())).await.unwrap().into_body().collect().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while buffer.lines().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not flushed within a second");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A writer that, on its first write, reports that it is stuck and blocks until the gate opens.
struct Gated {
    stuck: std::sync::mpsc::Sender<()>,
    gate: std::sync::mpsc::Receiver<()>,
    open: bool,
    out: Buffer,
}

impl Write for Gated {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.open {
            let _ = self.stuck.send(());
            let _ = self.gate.recv();
            self.open = true;
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_full_channel_drops_and_counts_instead_of_blocking() {
    let (open, gate) = std::sync::mpsc::channel();
    let (stuck_tx, stuck) = std::sync::mpsc::channel();
    let out = Buffer::default();
    let gated = Gated { stuck: stuck_tx, gate, open: false, out: out.clone() };
    let sink = LogSink::writer_with_capacity(gated, 4);
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new(sink.clone()))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    let request = || svc.clone().oneshot(Request::new(()));
    // The first line reaches the output, which then hangs (a stuck stdout pipe).
    request().await.unwrap().into_body().collect().await.unwrap();
    stuck.recv_timeout(Duration::from_secs(5)).unwrap();
    // Requests go on while the output hangs: had a request waited for the writer, this would
    // never finish (the bound is generous so a saturated machine cannot fail it; the wait for a
    // full channel is a fixed number of yields, not a time).
    let fifty = async {
        for _ in 0..50 {
            request().await.unwrap().into_body().collect().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fifty)
        .await
        .expect("requests blocked on a stuck log output");
    // The channel took four lines, the other 46 were dropped and counted.
    assert_eq!(sink.dropped(), 46);
    open.send(()).unwrap();
    sink.flush();
    assert_eq!(sink.lines_written(), 5);
    assert_eq!(out.lines().len(), 5);
}

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("disk full"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::Error::other("disk full"))
    }
}

#[tokio::test]
async fn a_failing_output_never_fails_a_request() {
    let sink = LogSink::writer(Broken);
    let svc = ServiceBuilder::new().layer(AccessLogLayer::new(sink.clone())).service_fn(
        |_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        },
    );
    for _ in 0..3 {
        let body = svc.clone().oneshot(Request::new(())).await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "ok");
    }
    sink.flush();
    assert_eq!(sink.lines_written() + sink.dropped(), 3);
}

#[tokio::test]
async fn file_sink_appends() {
    let path = std::env::temp_dir().join(format!("portcullis-access-log-{}.log", std::process::id()));
    std::fs::write(&path, "earlier\n").unwrap();
    let sink = LogSink::file(&path).unwrap();
    assert!(format!("{sink:?}").contains("file"));
    let svc = ServiceBuilder::new()
        .layer(AccessLogLayer::new(sink.clone()))
        .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) });
    svc.oneshot(Request::new(())).await.unwrap().into_body().collect().await.unwrap();
    sink.flush();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], "earlier");
    assert_eq!(parse(lines[1], false)["status"], 200);
}

#[test]
fn timestamps_out_of_range_do_not_panic_the_writer() {
    let mut record = super::record::Record::start(&Request::new(()));
    record.no_response(500);
    let mut out = Vec::new();
    record.write_json(&mut out).unwrap();
    let line: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["path"], "/");
    // `humantime` panics before 1970: clamped instead.
    let mut out = Vec::new();
    record_at(SystemTime::UNIX_EPOCH - Duration::from_secs(1)).write_json(&mut out).unwrap();
    assert!(String::from_utf8(out).unwrap().contains("\"1970-01-01T00:00:00.000Z\""));
}

fn record_at(t: SystemTime) -> super::record::Record {
    super::record::Record::start_at(&Request::new(()), t)
}

#[test]
fn layer_and_sink_are_cheap_clones_and_debug() {
    let (sink, _buffer) = sink();
    let layer = AccessLogLayer::new(sink.clone());
    let svc = ServiceBuilder::new().layer(layer.clone()).service(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let debug = format!("{layer:?} {:?}", svc.clone());
    assert!(debug.contains("writer"), "{debug}");
    assert_eq!(std::mem::size_of::<LogSink>(), std::mem::size_of::<usize>());
}
