//! The two reference servers of the load benchmark (`benches/load.sh`):
//!
//! ```text
//! bench_servers upstream 127.0.0.1:9100                     # answers 200 "ok" at once
//! bench_servers bare-proxy 127.0.0.1:9101 127.0.0.1:9100    # hyper-util proxy, no middleware
//! ```
//!
//! The bare proxy is the baseline the gateway's throughput and latency are compared against: the
//! same server and client stack, with none of the gateway's layers.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

// glibc's malloc contends on arena locks when tokio workers free each other's allocations: under
// load the gateway made 0.24 futex calls per request against the bare proxy's 0.14; with mimalloc
// in both, 0.05 and 0.04 (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["upstream", listen] => upstream(listen.parse()?).await,
        ["bare-proxy", listen, upstream] => bare_proxy(listen.parse()?, upstream.parse()?).await,
        _ => Err("usage: bench_servers upstream LISTEN | bare-proxy LISTEN UPSTREAM".into()),
    }
}

async fn upstream(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn bare_proxy(listen: SocketAddr, upstream: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    let uri: Uri = match format!("http://{upstream}{pq}").parse() {
                        Ok(uri) => uri,
                        Err(_) => return Ok::<_, Infallible>(Response::new(Either::Right(Full::default()))),
                    };
                    *req.uri_mut() = uri;
                    req.headers_mut().remove(http::header::HOST);
                    match client.request(req).await {
                        Ok(res) => Ok(res.map(Either::Left)),
                        Err(_) => {
                            let mut res = Response::new(Either::Right(Full::default()));
                            *res.status_mut() = http::StatusCode::BAD_GATEWAY;
                            Ok(res)
                        }
                    }
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
