//! Forwarding through a real gateway to a real upstream: bodies, queries, headers, failures.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn service(upstream: &str, extra: &str) -> String {
    format!(
        "services:\n- name: svc\n  url: {upstream}\n{extra}  routes:\n  - name: all\n    paths: [/]\n    strip_path: false\n"
    )
}

#[tokio::test]
async fn query_and_body_forwarded_intact_including_a_streamed_mebibyte() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;

    let res = get(&gw.url("/a/b?x=1&x=2&empty=&enc=%20%2F&z")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body, "upstream-ok");
    assert_eq!(upstream.last().uri, "/a/b?x=1&x=2&empty=&enc=%20%2F&z");

    // 1 MiB in 64 chunks of 16 KiB, sent chunked (no Content-Length).
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let body = Chunked(payload.chunks(16 * 1024).map(Bytes::copy_from_slice).collect());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let res = client.request(Request::post(gw.url("/upload?id=7")).body(body).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/upload?id=7");
    assert_eq!(seen.body.len(), payload.len());
    assert!(seen.body == payload, "body changed on the way");
    gw.stop().await;
}

/// A body sent in chunks with no declared length, so the client uses chunked encoding.
struct Chunked(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

#[tokio::test]
async fn hop_by_hop_dropped_gateway_headers_survive_and_spoofs_never_arrive() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let req = Request::get(gw.url("/h"))
        .header("connection", "keep-alive, X-Forwarded-For, X-Drop-Me")
        .header("x-drop-me", "1")
        .header("x-keep-me", "1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("X-Consumer-ID", "spoofed")
        .header("X_Consumer_ID", "spoofed")
        .header("X-Real-IP", "6.6.6.6")
        .header("x-consumer-username", "root")
        .header("x-portcullis-anything", "x")
        .body(Full::default())
        .unwrap();
    let res = send(req).await;
    assert_eq!(res.status, 200);
    // Response hop-by-hop headers from the upstream are dropped too.
    assert!(res.headers.get("x-upstream-private").is_none());
    assert!(res.headers.get("keep-alive").is_none());
    assert!(res.headers.get("x-request-id").is_some());

    let seen = upstream.last();
    assert!(seen.headers.get("x-drop-me").is_none());
    assert_eq!(seen.headers["x-keep-me"], "1");
    for spoof in ["x-consumer-id", "x_consumer_id", "x-consumer-username", "x-portcullis-anything"] {
        assert!(seen.headers.get(spoof).is_none(), "{spoof} reached the upstream");
    }
    let xff: Vec<_> = seen.headers.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "exactly one X-Forwarded-For");
    assert_eq!(xff[0], "127.0.0.1", "the untrusted chain is dropped, the real peer is last");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], gw.addr.to_string().as_str());
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str(), "Host is the upstream's");
    assert_eq!(seen.headers["x-request-id"], res.headers["x-request-id"]);
    gw.stop().await;
}

#[tokio::test]
async fn trusted_proxy_chain_is_extended() {
    let upstream = Upstream::start().await;
    let gw =
        TestGateway::start_with(&service(&upstream.url(), ""), "  trusted_proxies: [127.0.0.1/32]\n").await;
    let req =
        Request::get(gw.url("/")).header("x-forwarded-for", "198.51.100.4").body(Full::default()).unwrap();
    assert_eq!(send(req).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(seen.headers["x-forwarded-for"], "198.51.100.4, 127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "198.51.100.4");
    gw.stop().await;
}

#[tokio::test]
async fn content_length_and_transfer_encoding_are_never_forwarded_together() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let answer = raw(
        gw.addr,
        b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let status = raw_status(&answer);
    if status == 200 {
        let seen = upstream.last();
        let both =
            seen.headers.contains_key("content-length") && seen.headers.contains_key("transfer-encoding");
        assert!(!both, "forwarded with both framings: {:?}", seen.headers);
        assert_eq!(seen.body, "hello");
    } else {
        assert_eq!(status, 400, "{answer}");
        assert!(upstream.seen().is_empty());
    }
    gw.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    let dead = closed_port().await;
    let gw = TestGateway::start(&service(&format!("http://{dead}"), "")).await;
    let res = get(&gw.url("/x")).await;
    assert_eq!(res.status, 502);
    assert_eq!(res.headers["content-type"], "application/json");
    let body = res.json();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["request_id"], res.headers["x-request-id"].to_str().unwrap());
    gw.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_504_within_the_timeout() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "  timeout: 500ms\n")).await;
    let started = Instant::now();
    let res = get(&gw.url("/slow")).await;
    let took = started.elapsed();
    assert_eq!(res.status, 504);
    assert_eq!(res.json()["error"], "upstream_timeout");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(600), "504 took {took:?}, more than timeout + 100 ms");
    gw.stop().await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start_with(&service(&upstream.url(), ""), "  max_body_bytes: 1000\n").await;
    let res =
        send(Request::post(gw.url("/up")).body(Full::new(Bytes::from(vec![b'a'; 1001]))).unwrap()).await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"], "payload_too_large");
    let res =
        send(Request::post(gw.url("/up")).body(Full::new(Bytes::from(vec![b'a'; 1000]))).unwrap()).await;
    assert_eq!(res.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start_with(&service(&upstream.url(), ""), "  max_header_bytes: 4096\n").await;
    let req = Request::get(gw.url("/")).header("x-big", "v".repeat(5000)).body(Full::default()).unwrap();
    let res = send(req).await;
    assert_eq!(res.status, 431);
    assert_eq!(res.json()["error"], "request_header_fields_too_large");
    gw.stop().await;
}

#[tokio::test]
async fn http2_clients_are_served() {
    let upstream = Upstream::start().await;
    let gw = TestGateway::start(&service(&upstream.url(), "")).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let res = client
        .request(Request::get(gw.url("/h2?q=1")).body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/h2?q=1");
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
    gw.stop().await;
}

#[tokio::test]
async fn http2_upstreams_get_prior_knowledge_http2_and_http1_upstreams_http11() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        "services:\n- name: h2\n  url: {url}\n  http2: true\n  routes:\n  - name: h2\n    paths: [/h2]\n- name: h1\n  url: {url}\n  routes:\n  - name: h1\n    paths: [/h1]\n",
        url = upstream.url()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(get(&gw.url("/h2/x?y=1")).await.status, 200);
    let seen = upstream.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.uri, "/x?y=1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(get(&gw.url("/h1/x")).await.status, 200);
    assert_eq!(upstream.last().version, http::Version::HTTP_11);
    gw.stop().await;
}
