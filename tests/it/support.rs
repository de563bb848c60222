//! Real servers on loopback for the integration tests: an echo upstream that records what it
//! received, a gateway built from YAML, and small HTTP clients (hyper and raw TCP).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `handler` over HTTP/1.1 and HTTP/2 on `listener`, one task per connection, for as long
/// as the test runs: the accept loop of every test server here.
pub fn serve<H, F, B, E>(listener: TcpListener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<B>, E>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let service = hyper::service::service_fn(handler.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub version: http::Version,
    /// Path and query, byte for byte.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's trailers, if it sent any.
    pub trailers: Option<HeaderMap>,
}

/// An upstream on 127.0.0.1 that records every request. `/slow/...` waits 3 s before answering,
/// `/sleep/MS` waits MS milliseconds,
/// `/status/NNN` answers with that status; everything else answers 200 with `upstream-ok`.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        serve(listener, move |req| {
            let recorder = recorder.clone();
            async move { Ok::<_, Infallible>(answer(req, recorder).await) }
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

async fn answer(req: Request<Incoming>, recorder: Arc<Mutex<Vec<Seen>>>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    recorder.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        version: parts.version,
        uri: parts.uri.path_and_query().map(|pq| pq.as_str().to_owned()).unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
        trailers,
    });
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut res = Response::new(Full::new(Bytes::from_static(b"upstream-ok")));
    *res.status_mut() = status;
    res.headers_mut().insert("connection", "x-upstream-private".parse().unwrap());
    res.headers_mut().insert("x-upstream-private", "secret".parse().unwrap());
    res.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    res
}

/// A gateway running on 127.0.0.1 with an access log written to a temp file.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub log_path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn temp_path(name: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("portcullis-it-{}-{n}-{name}", std::process::id()))
}

impl TestGateway {
    /// Starts a gateway from `yaml`, which must not set `gateway:`; one is added that listens on
    /// free ports and logs to a temp file.
    pub async fn start(yaml: &str) -> TestGateway {
        Self::start_with(yaml, "").await
    }

    /// Like [`start`](Self::start), with extra lines for the `gateway:` block (2-space indented).
    pub async fn start_with(yaml: &str, gateway_extra: &str) -> TestGateway {
        let log_path = temp_path("access.log");
        let text = format!(
            "_format_version: \"3.0\"\ngateway:\n  listen: 127.0.0.1:0\n  admin_listen: 127.0.0.1:0\n  access_log: {}\n{gateway_extra}{yaml}",
            log_path.display()
        );
        let gateway = Gateway::from_yaml(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let listeners = gateway.bind().await.unwrap();
        let addr = listeners.local_addr().unwrap();
        let admin = listeners.admin_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(listeners, async move {
            let _ = stopped.await;
        }));
        TestGateway { addr, admin, log_path, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the gateway gracefully (the access log is flushed) and returns the log lines.
    pub async fn stop(mut self) -> Vec<serde_json::Value> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.log_path);
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
            .collect()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let res = client().request(req).await.expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("response body failed").to_bytes();
    Answer { status: parts.status, headers: parts.headers, body }
}

pub async fn get(url: &str) -> Answer {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

/// Sends `raw` bytes as-is and returns everything the server answers until it closes (or 5 s).
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A free loopback port nobody listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// The seed's log-analysis script, where `PORTCULLIS_SEED_SCRIPT` names it (`.ci/run` sets it when
/// the seed is beside the checkout). A clone has no seed: its numbers live in golden files under
/// `tests/fixtures/analyze/`, and only the cross-checks against the script itself need it.
pub fn seed_script() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("PORTCULLIS_SEED_SCRIPT")?);
    assert!(path.is_file(), "PORTCULLIS_SEED_SCRIPT names {}, which is not a file", path.display());
    Some(path)
}

/// Says that the running test did not run and why, on the test binary's stderr: written past the
/// harness's output capture, so a skip shows in the run's output instead of passing as a silent
/// `ok`. (The harness names each test's thread after the test.)
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// Runs the seed's script on `log` and returns its report.
pub fn seed_script_report(script: &std::path::Path, log: &std::path::Path) -> String {
    let out = std::process::Command::new("python3").arg(script).arg(log).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("the script writes UTF-8")
}

/// A file under `tests/fixtures/`.
#[cfg(feature = "analyze")]
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
