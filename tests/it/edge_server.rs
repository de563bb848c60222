//! Slow and idle clients cost bounded resources (issue 12, item 7): a request body that stalls
//! gets 408, the services' `read_timeout`/`write_timeout` bound a stalled upstream, an HTTP/2
//! stream reset by its client leaves the connection idle again, and `max_connections` caps the
//! connections open at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn one_route(url: &str, service_extra: &str) -> String {
    format!("services:\n- name: s\n  url: {url}\n{service_extra}  routes:\n  - name: r\n    paths: [/]\n")
}

/// What each upstream connection sent, and whether it has closed.
type Conns = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

/// An upstream speaking raw TCP: it waits `read_after`, then records every byte each connection
/// sends until that connection closes; once it has a request head it writes `reply` and stays
/// silent (the connection stays open).
#[derive(Clone)]
struct RawUpstream {
    addr: std::net::SocketAddr,
    conns: Conns,
}

impl RawUpstream {
    async fn start(reply: &'static [u8], read_after: Duration) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let recorder = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let index = {
                    let mut conns = recorder.lock().unwrap();
                    conns.push((Vec::new(), false));
                    conns.len() - 1
                };
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(read_after).await;
                    let mut replied = false;
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        let has_head = {
                            let mut conns = recorder.lock().unwrap();
                            if n == 0 {
                                conns[index].1 = true;
                                return;
                            }
                            conns[index].0.extend_from_slice(&buf[..n]);
                            conns[index].0.windows(4).any(|w| w == b"\r\n\r\n")
                        };
                        if has_head && !replied && !reply.is_empty() {
                            replied = true;
                            let _ = stream.write_all(reply).await;
                        }
                    }
                });
            }
        });
        RawUpstream { addr, conns }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits (up to 5 s) until every connection has closed, and returns what each one sent.
    async fn closed(&self) -> Vec<Vec<u8>> {
        let started = Instant::now();
        loop {
            {
                let conns = self.conns.lock().unwrap();
                if conns.iter().all(|(_, closed)| *closed) || started.elapsed() > Duration::from_secs(5) {
                    assert!(conns.iter().all(|(_, closed)| *closed), "an upstream connection stayed open");
                    return conns.iter().map(|(bytes, _)| bytes.clone()).collect();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The bytes after the request head.
fn body_of(request: &[u8]) -> &[u8] {
    let end = request.windows(4).position(|w| w == b"\r\n\r\n").expect("no request head") + 4;
    &request[end..]
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_and_the_upstream_never_gets_it_whole() {
    let up = RawUpstream::start(b"", Duration::ZERO).await;
    let gw = TestGateway::start_with(&one_route(&up.url(), ""), "  body_read_timeout: 300ms\n").await;
    let started = Instant::now();
    // Ten bytes of the hundred announced, then silence (the socket stays open).
    let answer =
        raw(gw.addr, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await;
    let elapsed = started.elapsed();
    assert_eq!(raw_status(&answer), 408, "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3), "{elapsed:?}");
    let seen = up.closed().await;
    assert_eq!(seen.len(), 1, "one upstream connection");
    assert!(seen[0].starts_with(b"POST /upload HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&seen[0]));
    assert_eq!(body_of(&seen[0]), b"0123456789", "the upstream got only what the client sent, then a close");
}

/// Layers that read the body themselves (key-auth's `key_in_body`, a JSON transform) answer a
/// stalled body as the proxy does: 408, and the upstream hears nothing.
#[tokio::test]
async fn a_stalled_body_read_by_a_route_layer_is_408_too() {
    let up = Upstream::start().await;
    let plugins = [
        "[{name: key-auth, config: {key_in_body: true}}]",
        "[{name: request-transformer, config: {add: {body: [\"x:1\"]}}}]",
    ];
    for plugin in plugins {
        let yaml = format!(
            "{}    plugins: {plugin}\nconsumers:\n- username: alice\n  keyauth_credentials: [{{key: alice-key}}]\n",
            one_route(&up.url(), "")
        );
        let gw = TestGateway::start_with(&yaml, "  body_read_timeout: 300ms\n").await;
        let answer = raw(
            gw.addr,
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"apikey\": \"al",
        )
        .await;
        assert_eq!(raw_status(&answer), 408, "{plugin}: {answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{plugin}: {answer}");
    }
    assert!(up.seen().is_empty(), "the upstream heard nothing");
}

#[tokio::test]
async fn a_request_body_that_keeps_coming_is_not_cut_off() {
    let up = Upstream::start().await;
    let gw = TestGateway::start_with(&one_route(&up.url(), ""), "  body_read_timeout: 300ms\n").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /drip HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Ten chunks 150 ms apart: 1.5 s in all, never 300 ms between two.
    for byte in b"0123456789" {
        tokio::time::sleep(Duration::from_millis(150)).await;
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(&up.last().body[..], b"0123456789");
}

#[tokio::test]
async fn read_timeout_bounds_the_wait_for_the_response_head() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&one_route(&up.url(), "  read_timeout: 300ms\n")).await;
    let started = Instant::now();
    let res = get(&gw.url("/sleep/3000")).await;
    let elapsed = started.elapsed();
    assert_eq!(res.status, 504);
    assert_eq!(res.json()["error"], "upstream_timeout");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500), "{elapsed:?}");
    // Under the limit, nothing changes.
    assert_eq!(get(&gw.url("/sleep/50")).await.status, 200);
    let seen: Vec<_> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/sleep/3000", "/sleep/50"]);
    let lines = gw.stop().await;
    assert_eq!(lines[0]["status"], 504);
    assert_eq!(lines[0]["upstream_host"], up.addr.to_string(), "{}", lines[0]);
    assert!(lines[0].get("upstream_status").is_none_or(|s| s.is_null()), "{}", lines[0]);
}

#[tokio::test]
async fn read_timeout_cuts_off_a_response_body_that_stalls() {
    let up =
        RawUpstream::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", Duration::ZERO).await;
    let gw = TestGateway::start(&one_route(&up.url(), "  read_timeout: 300ms\n")).await;
    let started = Instant::now();
    let res = client().request(Request::get(gw.url("/stream")).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect()).await;
    assert!(matches!(body, Ok(Err(_))), "the body was not cut off: {body:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let seen = up.closed().await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with(b"GET /stream HTTP/1.1\r\n"), "{:?}", String::from_utf8_lossy(&seen[0]));
}

#[tokio::test]
async fn write_timeout_bounds_an_upstream_that_stops_taking_the_body() {
    // The upstream reads nothing for 3 s, then everything the gateway managed to send.
    let up = RawUpstream::start(b"", Duration::from_secs(3)).await;
    let gw = TestGateway::start_with(
        &one_route(&up.url(), "  write_timeout: 300ms\n  read_timeout: 10s\n"),
        "  max_body_bytes: 67108864\n",
    )
    .await;
    const TOTAL: usize = 32 * 1024 * 1024;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let head = format!("PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {TOTAL}\r\n\r\n");
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        std::io::Result::Ok(writer)
    });
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), reader.read(&mut answer)).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert_eq!(raw_status(&answer), 504, "{answer}");
    assert!(answer.contains(r#""error":"upstream_timeout""#), "{answer}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    drop(reader);
    sending.abort();
    let seen = up.closed().await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with(b"PUT /big HTTP/1.1\r\n"));
    let got = body_of(&seen[0]).len();
    assert!(got > 0 && got < TOTAL, "the upstream got {got} of {TOTAL} bytes");
}

#[tokio::test]
async fn an_http2_stream_reset_by_the_client_lets_the_idle_timeout_close_the_connection() {
    let up = Upstream::start().await;
    let gw = TestGateway::start_with(&one_route(&up.url(), ""), "  idle_timeout: 300ms\n").await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let started = Instant::now();
    {
        let request =
            send.send_request(Request::get(gw.url("/sleep/5000")).body(Full::<Bytes>::default()).unwrap());
        let mut request = std::pin::pin!(request);
        // Once the request has reached the upstream, drop it: the client resets the stream.
        while up.seen().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(3), "the request never reached the upstream");
            assert!(tokio::time::timeout(Duration::from_millis(20), request.as_mut()).await.is_err());
        }
    }
    // `send` stays alive: dropping it would let the client close the connection itself.
    let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(closed.is_ok(), "the gateway kept the connection open after the reset stream");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(send.is_closed(), "the client still holds an open connection");
    let seen: Vec<_> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/sleep/5000"]);
}

/// Opens a connection and completes one keep-alive request on it, so the gateway has accepted it.
async fn held_connection(gw: &TestGateway) -> TcpStream {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("upstream-ok") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(raw_status(&String::from_utf8_lossy(&got)), 200);
    stream
}

async fn scrape(gw: &TestGateway) -> String {
    let res = get(&format!("http://{}/metrics", gw.admin.unwrap())).await;
    String::from_utf8_lossy(&res.body).into_owned()
}

#[tokio::test]
async fn max_connections_closes_the_next_connection_at_once_and_counts_it() {
    let up = Upstream::start().await;
    let gw = TestGateway::start_with(&one_route(&up.url(), ""), "  max_connections: 2\n").await;
    let first = held_connection(&gw).await;
    let _second = held_connection(&gw).await;
    assert!(scrape(&gw).await.contains("portcullis_connections_open 2\n"));

    // The third is accepted and closed before it can send anything through.
    let started = Instant::now();
    let answer = raw(gw.addr, b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answer, "", "the third connection was served");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(up.seen().len(), 2, "the third request reached the upstream");

    // One closes; a new connection is served.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !scrape(&gw).await.contains("portcullis_connections_open 1\n") {
        assert!(Instant::now() < deadline, "the closed connection still counts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = raw(gw.addr, b"GET /fourth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(up.last().uri, "/fourth");
    let metrics = scrape(&gw).await;
    assert!(metrics.contains("portcullis_connections_rejected_total 1\n"), "{metrics}");
}
