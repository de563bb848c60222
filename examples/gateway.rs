//! The portcullis example gateway.
//!
//! ```text
//! cargo run --release --example gateway                      # embedded demo config + demo upstream
//! cargo run --release --example gateway -- --config gw.yaml  # your config (or: -- gw.yaml)
//! ```
//!
//! A config error is printed as one line naming the file, the path inside it and what was
//! expected, and the process exits with status 2 before listening.

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::gateway::Gateway;

// glibc's malloc contends on arena locks when tokio workers free each other's allocations: under
// load the gateway made 0.24 futex calls per request against the bare proxy's 0.14; with mimalloc
// in both, 0.05 and 0.04 (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Served when no config is given. `{upstream}` is replaced by the demo upstream's address;
/// `{listen}` and `{admin}` by `PORTCULLIS_DEMO_LISTEN` / `PORTCULLIS_DEMO_ADMIN`
/// (default 127.0.0.1:8000 and 127.0.0.1:8001).
const DEMO_CONFIG: &str = r#"
_format_version: "3.0"
gateway:
  listen: {listen}
  admin_listen: {admin}
  access_log: stdout
services:
- name: demo
  url: http://{upstream}
  timeout: 5s
  routes:
  - name: echo
    paths: [/echo]
    strip_path: true
  - name: users
    paths: ["~/users/(?P<id>[0-9]+)$"]
    methods: [GET]
    strip_path: false
"#;

fn usage() -> &'static str {
    "usage: gateway [--config FILE | FILE]"
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_path = match args.as_slice() {
        [] => None,
        [flag, path] if flag == "--config" || flag == "-c" => Some(path.clone()),
        [path] if !path.starts_with('-') => Some(path.clone()),
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{}", usage());
            return ExitCode::from(2);
        }
    };
    let gateway = match &config_path {
        Some(path) => Gateway::from_file(path),
        None => {
            let upstream = match start_demo_upstream().await {
                Ok(addr) => addr,
                Err(error) => {
                    eprintln!("error: cannot start the demo upstream: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let listen = std::env::var("PORTCULLIS_DEMO_LISTEN").unwrap_or_else(|_| "127.0.0.1:8000".into());
            let admin = std::env::var("PORTCULLIS_DEMO_ADMIN").unwrap_or_else(|_| "127.0.0.1:8001".into());
            let text = DEMO_CONFIG
                .replace("{upstream}", &upstream.to_string())
                .replace("{listen}", &listen)
                .replace("{admin}", &admin);
            Gateway::from_yaml(&text, "<embedded demo config>")
        }
    };
    let gateway = match gateway {
        Ok(gateway) => gateway,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let listen = gateway.listen_addr();
    let listeners = match gateway.bind().await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("portcullis listening on http://{}", listeners.local_addr().unwrap_or(listen));
    if let Some(admin) = listeners.admin_addr() {
        println!("admin: http://{admin}/healthz  http://{admin}/metrics  http://{admin}/status");
    }
    if config_path.is_none() {
        let addr = listeners.local_addr().unwrap_or(listen);
        println!("try:   curl -i 'http://{addr}/echo/hello?name=portcullis'");
        println!("       curl -i http://{addr}/users/42");
    }
    gateway.run_until_signal(listeners).await;
    ExitCode::SUCCESS
}

/// A tiny upstream that answers every request with a JSON description of what it received.
async fn start_demo_upstream() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(echo);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(req: Request<Incoming>) -> Result<Response<http_body_util::Full<Bytes>>, Infallible> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into()))
        .collect();
    let body = serde_json::json!({
        "service": "portcullis demo upstream",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut response = Response::new(http_body_util::Full::new(Bytes::from(body.to_string() + "\n")));
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(response)
}
