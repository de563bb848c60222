//! The listening side: admin listener, timeouts, and graceful shutdown (in-process and by a real
//! SIGTERM to the example binary) that finishes in-flight requests and loses no log line.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn one_route(upstream: &Upstream) -> String {
    format!("services:\n- name: s\n  url: {}\n  routes:\n  - name: r\n    paths: [/]\n", upstream.url())
}

#[tokio::test]
async fn admin_listener_answers_healthz() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&one_route(&up)).await;
    let admin = gw.admin.expect("admin listener");
    let res = get(&format!("http://{admin}/healthz")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["status"], "ok");
    let res = get(&format!("http://{admin}/nope")).await;
    assert_eq!(res.status, 404);
    assert!(up.seen().is_empty(), "admin requests never reach an upstream");
    gw.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_graceful_shutdown_and_are_logged() {
    let up = Upstream::start().await;
    let gw = TestGateway::start(&one_route(&up)).await;
    let url = gw.url("/sleep/400");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let lines = gw.stop().await;
    let res = in_flight.await.unwrap();
    assert_eq!(res.status, 200, "the in-flight request was cut off");
    assert!(started.elapsed() >= Duration::from_millis(250), "shutdown did not wait");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["path"], "/sleep/400");
}

#[tokio::test]
async fn slow_header_senders_and_idle_connections_are_closed() {
    let up = Upstream::start().await;
    let gw =
        TestGateway::start_with(&one_route(&up), "  header_read_timeout: 300ms\n  idle_timeout: 300ms\n")
            .await;

    // Half a request head, then silence: closed after the header-read timeout.
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());

    // A finished keep-alive request, then idleness: closed after the idle timeout.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1024];
    let n = idle.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle connection stayed open");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(2000), "{waited:?}");
    gw.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_flushes_the_log() {
    use tokio::io::AsyncBufReadExt;
    let up = Upstream::start().await;
    let log = temp_path("sigterm.log");
    let config = temp_path("sigterm.yaml");
    std::fs::write(
        &config,
        format!(
            "_format_version: \"3.0\"\ngateway:\n  listen: 127.0.0.1:0\n  access_log: {}\n{}",
            log.display(),
            one_route(&up)
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(crate::config::example_binary())
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next_line().await.unwrap().expect("gateway exited before listening");
        if let Some(url) = line.strip_prefix("portcullis listening on ") {
            break url.to_owned();
        }
    };
    let quick = get(&format!("{base}/quick")).await;
    assert_eq!(quick.status, 200);
    let url = format!("{base}/sleep/500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let res = in_flight.await.unwrap();
    assert_eq!(res.status, 200, "SIGTERM cut off an in-flight request");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/quick", "/sleep/500"]);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&config);
}

/// hyper sizes a request's header map to the headers it parsed; the server reserves room for
/// the gateway's own headers and the route layers' once, so none of them reallocates the map.
#[tokio::test]
async fn requests_arrive_with_room_for_the_headers_layers_add() {
    use portcullis::Body;
    use portcullis::gateway::{HEADER_HEADROOM, ServerSettings, serve};
    use std::sync::{Arc, Mutex};

    let room = Arc::new(Mutex::new(Vec::new()));
    let seen = room.clone();
    let service = tower::service_fn(move |req: http::Request<Body>| {
        let headers = req.headers();
        seen.lock().unwrap().push((headers.keys_len(), headers.capacity()));
        std::future::ready(Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty())))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ServerSettings {
        max_header_bytes: 32 * 1024,
        max_body_bytes: None,
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: None,
        max_connections: 100,
        idle_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(1),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, service, settings, async {
        let _ = stopped.await;
    }));
    // 6 headers (hyper's map is then full) and 20 (past a doubling).
    for extra in [2, 16] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = String::from("GET / HTTP/1.1\r\nhost: t\r\nuser-agent: u\r\nconnection: close\r\n");
        for i in 0..extra {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("accept: */*\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let _ = stop.send(());
    server.await.unwrap();
    let room = room.lock().unwrap().clone();
    assert_eq!(room.len(), 2);
    for (keys, capacity) in room {
        assert!(capacity - keys >= HEADER_HEADROOM, "{keys} headers, room for {capacity}");
    }
}
