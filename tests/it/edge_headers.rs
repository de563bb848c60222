//! Issue 12, items 4 and 6: forwarding headers are the gateway's, and framing is never ambiguous.
//! Every request here is raw bytes on a real socket (a client library would normalise it), and
//! each test asserts what the client got and what the upstream saw.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn service(upstream: &str, extra: &str) -> String {
    format!(
        "services:\n- name: svc\n  url: {upstream}\n{extra}  routes:\n  - name: all\n    paths: [/]\n    strip_path: false\n"
    )
}

/// Sends `bytes` without asking for a close; returns the answer and whether the gateway closed
/// the connection by itself (within 3 s).
async fn raw_kept_open(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The JSON body of a raw HTTP/1.1 answer with a `Content-Length`.
fn raw_json(answer: &str) -> serde_json::Value {
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a JSON body ({e}): {answer}"))
}

const SPOOFS: [&str; 9] = [
    "Forwarded",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Original-URL",
    "X-Rewrite-URL",
    "True-Client-IP",
    "X-HTTP-Method-Override",
];

fn spoofing_request(path: &str) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n");
    for name in SPOOFS {
        req.push_str(&format!("{name}: spoof\r\n"));
    }
    req.push_str("X-Tenant: acme\r\n\r\n");
    req.into_bytes()
}

#[tokio::test]
async fn spoofed_forwarding_headers_from_an_untrusted_peer_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let answer = raw(gw.addr, &spoofing_request("/spoof")).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/spoof");
    assert_eq!(seen.method, "GET", "X-HTTP-Method-Override changed nothing");
    for name in SPOOFS {
        assert!(seen.headers.get(name).is_none(), "{name} reached the upstream: {:?}", seen.headers);
    }
    assert_eq!(seen.headers["x-tenant"], "acme", "a header off the list is kept");
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_keeps_them_and_the_list_is_configurable() {
    let upstream = Upstream::start().await;
    let gw =
        TestGateway::start_with(&service(&upstream.url(), ""), "  trusted_proxies: [127.0.0.1/32]\n").await;
    assert_eq!(raw_status(&raw(gw.addr, &spoofing_request("/trusted")).await), 200);
    let seen = upstream.last();
    for name in SPOOFS {
        assert_eq!(seen.headers[name], "spoof", "{name} from a trusted proxy was dropped");
    }
    gw.stop().await;

    let gw = TestGateway::start_with(
        &service(&upstream.url(), ""),
        "  strip_from_untrusted: [X-Tenant, Forwarded]\n",
    )
    .await;
    assert_eq!(raw_status(&raw(gw.addr, &spoofing_request("/configured")).await), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/configured");
    assert!(seen.headers.get("x-tenant").is_none());
    assert!(seen.headers.get("forwarded").is_none());
    assert_eq!(seen.headers["x-original-url"], "spoof", "the list replaces the default");
    gw.stop().await;
}

#[tokio::test]
async fn forwarded_proto_and_port_describe_the_listener_not_the_request_line() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let port = gw.addr.port().to_string();
    for (target, host) in [
        ("https://api.example.com/abs", "api.example.com"),
        ("http://api.example.com:443/abs", "api.example.com:443"),
        ("/origin", "api.example.com:8443"),
    ] {
        let answer = raw(
            gw.addr,
            format!(
                "GET {target} HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(raw_status(&answer), 200, "{target}: {answer}");
        let seen = upstream.last();
        assert_eq!(seen.headers["x-forwarded-proto"], "http", "{target}");
        assert_eq!(seen.headers["x-forwarded-port"], port.as_str(), "{target}");
        assert_eq!(seen.headers.get_all("x-forwarded-proto").iter().count(), 1);
    }

    // HTTP/2 with `:scheme: https` on a cleartext listener.
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://api.example.com:443/h2").body(Full::<Bytes>::default()).unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/h2");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-port"], port.as_str());
    gw.stop().await;
}

#[tokio::test]
async fn connection_cannot_remove_what_the_gateway_resolved_or_sets() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let answer = raw(
        gw.addr,
        b"GET /conn HTTP/1.1\r\nHost: api.example.com\r\n\
          Connection: close, X-Forwarded-For, X-Request-ID, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host, X-Forwarded-Port, Authorization, Host, X-Drop-Me\r\n\
          Authorization: Bearer abc\r\nX-Drop-Me: 1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-ID: client-chosen\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert!(seen.headers.get("x-drop-me").is_none(), "a header Connection names is still dropped");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example.com");
    assert_eq!(seen.headers["x-forwarded-port"], gw.addr.port().to_string().as_str());
    assert_eq!(seen.headers["authorization"], "Bearer abc");
    let id = seen.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, "client-chosen");
    assert!(answer.to_ascii_lowercase().contains(&format!("x-request-id: {id}\r\n")), "{answer}");
    gw.stop().await;

    // Through a trusted proxy: the chain and its id are resolved before `Connection` is read.
    let gw =
        TestGateway::start_with(&service(&upstream.url(), ""), "  trusted_proxies: [127.0.0.1/32]\n").await;
    let answer = raw(
        gw.addr,
        b"GET /conn HTTP/1.1\r\nHost: x\r\nConnection: close, X-Forwarded-For, X-Request-ID, X-Real-IP\r\n\
          X-Forwarded-For: 198.51.100.4\r\nX-Request-ID: edge-42\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.4, 127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "198.51.100.4");
    assert_eq!(seen.headers["x-request-id"], "edge-42");
    gw.stop().await;
}

#[tokio::test]
async fn proxy_authorization_is_hop_by_hop() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let answer = raw(
        gw.addr,
        b"GET /pa HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/pa");
    assert!(seen.headers.get("proxy-authorization").is_none());
    gw.stop().await;
}

const TRAILERS_REQUEST: &[u8] = b"POST /trailers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
    Trailer: X-Consumer-ID, X-Forwarded-For, X-Request-ID, X-Checksum\r\nConnection: close\r\n\r\n\
    5\r\nhello\r\n0\r\nX-Consumer-ID: spoof\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-ID: forged\r\nX-Checksum: abc\r\n\r\n";

#[tokio::test]
async fn request_trailers_lose_the_headers_the_gateway_owns() {
    let upstream = Upstream::start().await;
    // HTTP/2 upstream: hyper forwards every trailer there (over HTTP/1.1 only declared ones).
    let yaml = format!(
        "services:\n- name: h2\n  url: {url}\n  http2: true\n  routes:\n  - name: h2\n    paths: [/h2]\n- name: h1\n  url: {url}\n  routes:\n  - name: h1\n    paths: [/h1]\n",
        url = upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let h2 = [b"POST /h2".as_slice(), &TRAILERS_REQUEST[b"POST ".len()..]].concat();
    let answer = raw(gw.addr, &h2).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/trailers");
    assert_eq!(seen.body, "hello");
    let trailers = seen.trailers.expect("the checksum trailer reaches an HTTP/2 upstream");
    assert_eq!(trailers["x-checksum"], "abc");
    for owned in ["x-consumer-id", "x-forwarded-for", "x-request-id"] {
        assert!(trailers.get(owned).is_none(), "{owned} arrived as a trailer: {trailers:?}");
    }
    assert!(seen.headers.get("x-consumer-id").is_none());
    assert_ne!(seen.headers["x-request-id"], "forged");

    let h1 = [b"POST /h1".as_slice(), &TRAILERS_REQUEST[b"POST ".len()..]].concat();
    let answer = raw(gw.addr, &h1).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/trailers");
    assert_eq!(seen.body, "hello");
    let trailers = seen.trailers.unwrap_or_default();
    assert!(trailers.get("x-consumer-id").is_none() && seen.headers.get("x-consumer-id").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn chunked_applied_twice_is_400_json_and_the_connection_closes() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    for te in [
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: CHUNKED ,chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ] {
        let request = format!("POST /te HTTP/1.1\r\nHost: x\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n");
        let (answer, closed) = raw_kept_open(gw.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{te}: {answer}");
        assert_eq!(raw_json(&answer)["error"], "bad_request", "{te}");
        assert!(closed, "{te}: the connection stayed open");
    }
    // hyper itself refuses a coding that does not end in chunked (its own 400, no body).
    let (answer, closed) =
        raw_kept_open(gw.addr, b"POST /te HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nhello")
            .await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(closed);
    assert!(upstream.seen().is_empty(), "the upstream saw {:?}", upstream.seen());
    gw.stop().await;
}

#[tokio::test]
async fn content_length_beside_chunked_is_read_as_chunked_forwarded_once_and_closes() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let (answer, closed) = raw_kept_open(
        gw.addr,
        b"POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(closed, "hyper closes a connection whose request was framed both ways");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "hello");
    assert!(seen[0].headers.get("content-length").is_none() || seen[0].headers["content-length"] == "5");
    gw.stop().await;
}

/// An HTTP/1.1 upstream on raw TCP that answers every request on a connection with `response`,
/// keeping the connection open; counts the connections it accepted.
async fn raw_upstream(response: &'static [u8]) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // GET requests without a body: a request ends at its blank line.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_response_framed_twice_arrives_whole_and_its_connection_is_not_reused() {
    let (addr, accepted) = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&service(&format!("http://{addr}"), "")).await;

    let answer = raw(gw.addr, b"GET /twice HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let head = answer.split_once("\r\n\r\n").unwrap().0.to_ascii_lowercase();
    assert!(!head.contains("content-length"), "two framings reached the client: {answer}");
    assert!(head.contains("transfer-encoding: chunked"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().ends_with("\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"),
        "the body was cut: {answer:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    let res = get(&gw.url("/again")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "hello world");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let res = get(&gw.url("/third")).await;
    assert_eq!(res.body, "hello world");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "a connection was reused after a response framed twice");
    gw.stop().await;

    // The same upstream framing once keeps its connection: the count above measures reuse.
    let (addr, accepted) = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world").await;
    let gw = TestGateway::start(&service(&format!("http://{addr}"), "")).await;
    for path in ["/a", "/b", "/c"] {
        let res = get(&gw.url(path)).await;
        assert_eq!(res.body, "hello world");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    gw.stop().await;
}
