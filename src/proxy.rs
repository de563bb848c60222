//! The upstream proxy service: forwards a request to an upstream host over a pooled keep-alive
//! hyper-util client, HTTP/1.1 or HTTP/2 (prior knowledge).
//!
//! The upstream is one URL, or a [`HostSet`] of several hosts ([`ProxyBuilder::hosts`]): then
//! the URL gives the scheme and base path, and each request goes to the host the set picks —
//! never an ejected one, avoiding the request's [`PreviousHosts`] — whose outlier detection is
//! then charged with the [`Outcome`] (a connect failure is a gateway failure). When no host can
//! take the request the answer is 503 `no_healthy_upstream`. [`UpstreamInfo::host`] names the
//! host used.
//!
//! An [`AttemptTimeout`] in the request's extensions (Envoy's `per_try_timeout`, set by the retry
//! layer) bounds the wait for the response head: past it the answer is 504 `upstream_timeout`
//! with [`UpstreamInfo`] naming the host and [`UpstreamFailure::Timeout`], and the host is
//! charged with the timeout — a layer outside the proxy could do neither, as it does not know
//! which host was chosen.
//!
//! Kong's `write_timeout` and `read_timeout` bound the time between two steps of the exchange
//! rather than the whole of it, so a large upload or a long streamed answer is fine as long as
//! it moves ([`ProxyBuilder::request_write_timeout`], [`ProxyBuilder::response_read_timeout`]).
//! Each clock starts when the step before it ended: the write clock when a piece of the request
//! body is handed to the upstream connection, the read clock when the request has been sent
//! whole (or when the request is sent, for one without a body) and after each piece of the
//! response body. While the request body waits on the client, neither clock runs: the server's
//! body read timeout ([`BodyReadTimeout`], 408) covers that. Before the response head a timeout
//! is answered as the per-try timeout is (504 `upstream_timeout`, [`UpstreamFailure::Timeout`]);
//! after it, the response body fails with [`BodyReadTimeout`] and the client's response is cut
//! off. The clocks start when the request is sent, so they include connecting.
//!
//! Every response the proxy makes carries [`Attempts`]: `Attempts(1)` when it sent the request
//! upstream (with [`UpstreamInfo`]), `Attempts(0)` when it answered itself before picking a host
//! or sending anything (503 `no_healthy_upstream`, 400 for a path it refuses; no
//! [`UpstreamInfo`] then). A retry layer outside overwrites it with its count. A layer that may
//! drop the proxy's future before it answers (the route timeout) puts an [`AttemptLog`] in the
//! request extensions, and the proxy notes each attempt there as it sends it.
//!
//! [`Proxy`] forwards the method, the path (joined with the upstream's base path after Kong's
//! `strip_path`, from the router's [`RouteMatch`]; 400 `bad_request` when the joined path would
//! hold a `.` or `..` segment), the query string byte for byte, the headers and the streamed
//! body. It drops hop-by-hop headers on the way up (a `Connection` naming a header the gateway
//! resolved or set, such as `X-Forwarded-For` or `X-Request-ID`, removes nothing) and on the way
//! back. An upstream response framed by `Transfer-Encoding` that also carries a `Content-Length`
//! reaches the client whole (hyper read it by its chunks, RFC 9112 §6.3) without that
//! `Content-Length`, and its upstream connection is closed rather than pooled: a server that
//! frames one response two ways cannot be trusted to start the next one where hyper thinks. It
//! sets `Host` to the upstream's unless the route has `preserve_host`, and turns failures into
//! JSON: a connect failure, reset or invalid response is 502, a body over the gateway's limit is
//! 413, a client that stops sending its body is 408 ([`BodyReadTimeout`]). The forwarding
//! headers (`X-Forwarded-*`, `X-Real-IP`) are set earlier by
//! [`SanitizeLayer`](crate::sanitize::SanitizeLayer), from the trusted-proxy settings.
//!
//! [`BodyReadTimeout`]: crate::body::BodyReadTimeout
//!
//! ```no_run
//! use portcullis::proxy::Proxy;
//! use tower::ServiceExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = Proxy::builder("http://127.0.0.1:9000/base")?.build();
//! let req = http::Request::get("/users?id=1").body(portcullis::Body::empty())?;
//! let res = proxy.oneshot(req).await?; // GET http://127.0.0.1:9000/base/users?id=1
//! println!("{}", res.status());
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector, capture_connection,
};
use hyper_util::client::legacy::{self, Client};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tower::Service;
use tower::util::MapResponse;

use crate::body::Body;
use crate::error::{BoxError, Rejection};
/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::{AttemptLog, AttemptTimeout, UpstreamInfo, UpstreamPath};
use crate::ext::{Attempts, PreviousHosts, RequestId, RouteMatch, UpstreamFailure};
use crate::http_rules::{has_dot_segment, strip_request_hop_by_hop, strip_response_hop_by_hop};
use crate::resilience::balance::{HostSet, PickedHost};
use crate::resilience::classify::Outcome;

/// An upstream URL the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not an absolute `http://host[:port][/path]` URL.
    #[error("invalid upstream URL `{0}`: expected http://host[:port][/path]")]
    InvalidUrl(String),
    /// `https://` upstreams need TLS support, which is not built yet.
    #[error("upstream URL `{0}`: https upstreams are not supported yet")]
    HttpsUnsupported(String),
}

#[derive(Debug)]
struct Upstream {
    scheme: Scheme,
    hosts: HostSet,
    base_path: String,
    http2: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

// === impl UpstreamStream ===

/// The proxy's connector: hyper-util's, each connection wrapped in an [`UpstreamStream`].
type UpstreamConnector = MapResponse<HttpConnector, fn(TokioIo<TcpStream>) -> UpstreamStream>;

/// An upstream TCP connection that reports no `HttpInfo` to hyper-util: nothing reads it, and
/// hyper-util would box a copy of it into every response's extensions and into every captured
/// connection (the proxy captures each HTTP/1 request's, see `capture_connection` below).
#[derive(Debug)]
struct UpstreamStream {
    io: TokioIo<TcpStream>,
}

impl UpstreamStream {
    fn new(io: TokioIo<TcpStream>) -> Self {
        Self { io }
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Builds a [`Proxy`].
#[derive(Debug)]
pub struct ProxyBuilder {
    upstream: Upstream,
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
}

impl ProxyBuilder {
    /// Fails a connection attempt after `timeout` (502).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Kong's `read_timeout`: answers 504 `upstream_timeout` when the response head has not
    /// arrived `timeout` after the request was sent whole, and cuts the response body off when
    /// no piece of it arrives for `timeout` (see the [module docs](self)). Default: none.
    pub fn response_read_timeout(mut self, timeout: Duration) -> Self {
        self.upstream.read_timeout = Some(timeout);
        self
    }

    /// Kong's `write_timeout`: answers 504 `upstream_timeout` when the upstream leaves a piece of
    /// the request body unaccepted for `timeout` (see the [module docs](self)). Default: none.
    pub fn request_write_timeout(mut self, timeout: Duration) -> Self {
        self.upstream.write_timeout = Some(timeout);
        self
    }

    /// Sends requests to these hosts instead of the URL's host; the URL still gives the scheme
    /// and the base path. The set's clones share its state, so keep one to read
    /// [`HostSet::status`] (or use [`Proxy::hosts`]).
    pub fn hosts(mut self, hosts: HostSet) -> Self {
        self.upstream.hosts = hosts;
        self
    }

    /// Speaks HTTP/2 with prior knowledge (h2c) to the upstream instead of HTTP/1.1.
    pub fn http2_only(mut self, enabled: bool) -> Self {
        self.upstream.http2 = enabled;
        self
    }

    /// Closes pooled keep-alive connections idle for longer than this (default 90 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// Keeps at most this many idle connections to the upstream (default 1024).
    pub fn pool_max_idle(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Builds the proxy for request bodies of type `B` (the gateway uses [`Body`]).
    pub fn build<B>(self) -> Proxy<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(self.connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .http2_only(self.upstream.http2)
            .build(MapResponse::new(connector, UpstreamStream::new as fn(_) -> _));
        Proxy { client, upstream: Arc::new(self.upstream) }
    }
}

/// Forwards requests to an upstream; see the [module docs](self).
#[derive(Debug)]
pub struct Proxy<B = Body> {
    client: Client<UpstreamConnector, SentBody<B>>,
    upstream: Arc<Upstream>,
}

impl<B> Clone for Proxy<B> {
    fn clone(&self) -> Self {
        Self { client: self.client.clone(), upstream: self.upstream.clone() }
    }
}

impl Proxy {
    /// Starts a proxy to `url` (`http://host[:port][/base/path]`).
    pub fn builder(url: &str) -> Result<ProxyBuilder, ProxyError> {
        let invalid = || ProxyError::InvalidUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let scheme = uri.scheme().cloned().ok_or_else(invalid)?;
        if scheme == Scheme::HTTPS {
            return Err(ProxyError::HttpsUnsupported(url.to_owned()));
        }
        if scheme != Scheme::HTTP || uri.query().is_some() {
            return Err(invalid());
        }
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(invalid());
        }
        let hosts = HostSet::builder().host(authority.as_str()).build().map_err(|_| invalid())?;
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(ProxyBuilder {
            upstream: Upstream {
                scheme,
                hosts,
                base_path,
                http2: false,
                read_timeout: None,
                write_timeout: None,
            },
            connect_timeout: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 1024,
        })
    }
}

impl<B> Proxy<B> {
    /// The hosts requests go to (one for a plain URL), with their load and outlier state.
    pub fn hosts(&self) -> &HostSet {
        &self.upstream.hosts
    }

    /// The upstream path and query: a rewritten [`UpstreamPath`] as is, else the base path
    /// joined with the request path ([`upstream_path`]); 400 when either holds a dot segment.
    fn upstream_path_and_query<T>(&self, req: &Request<T>) -> Result<PathAndQuery, Rejection> {
        let mut path = match req.extensions().get::<UpstreamPath>() {
            // Checked here too: a layer of the user's own may have set it.
            Some(rewritten) if crate::http_rules::has_dot_segment(&rewritten.0) => {
                return Err(Rejection::bad_request(UpstreamPathError::DotSegment.to_string()));
            }
            Some(rewritten) => rewritten.0.clone(),
            None => {
                let strip_len = req.extensions().get::<RouteMatch>().map_or(0, |m| m.strip_len);
                upstream_path(&self.upstream.base_path, req.uri().path(), strip_len)
                    .map_err(|e| Rejection::bad_request(e.to_string()))?
            }
        };
        if let Some(query) = req.uri().query() {
            path.push('?');
            path.push_str(query);
        }
        PathAndQuery::try_from(path).map_err(|_| Rejection::bad_request("invalid path"))
    }

    fn upstream_uri(&self, path_and_query: PathAndQuery, authority: &Authority) -> Result<Uri, Rejection> {
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Rejection::bad_request("invalid path"))
    }
}

impl<B> Service<Request<B>> for Proxy<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool queues requests itself; back-pressure belongs to the circuit breaker.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let request_id = req.extensions().get::<RequestId>().cloned();
        // Before a host is picked: a refused path charges no host.
        let path_and_query = match self.upstream_path_and_query(&req) {
            Ok(path_and_query) => path_and_query,
            Err(rejection) => return ResponseFuture::rejected(rejection, request_id),
        };
        let picked = match self.upstream.hosts.pick(req.extensions().get::<PreviousHosts>()) {
            Ok(picked) => picked,
            Err(_) => return ResponseFuture::rejected(Rejection::no_healthy_upstream(), request_id),
        };
        let uri = match self.upstream_uri(path_and_query, picked.host().authority()) {
            Ok(uri) => uri,
            Err(rejection) => return ResponseFuture::rejected(rejection, request_id),
        };
        let preserve_host = req.extensions().get::<RouteMatch>().is_some_and(|m| m.route.preserve_host);
        let original_host = req
            .headers()
            .get(HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        *req.uri_mut() = uri;
        strip_request_hop_by_hop(req.headers_mut());
        let host = match (preserve_host, original_host) {
            (true, Some(host)) => host,
            _ => picked.host().host_header().clone(),
        };
        if self.upstream.http2 {
            *req.version_mut() = Version::HTTP_2;
            req.headers_mut().remove(HOST);
        } else {
            *req.version_mut() = Version::HTTP_11;
            req.headers_mut().insert(HOST, host);
        }
        let started = Instant::now();
        let log = req.extensions().get::<AttemptLog>().cloned();
        if let Some(log) = &log {
            log.sent(picked.address(), started);
        }
        let attempt = req.extensions().get::<AttemptTimeout>().map(|t| t.0);
        let (read, write) = (self.upstream.read_timeout, self.upstream.write_timeout);
        // Only a request with a body has steps to follow; one without is sent with its head.
        let progress = ((read.is_some() || write.is_some()) && !req.body().is_end_stream())
            .then(|| Arc::new(Progress::new(started)));
        let mut req = req.map(|inner| SentBody { inner, progress: progress.clone() });
        let clocks = Clocks { started, attempt, read, write, progress };
        // The pool entry the request goes out on, so that a response framed two ways can keep its
        // connection out of the pool (HTTP/2 frames every response one way). hyper-util offers
        // no other handle on it; its watch channel costs two allocations and an extension, less
        // the `HttpInfo` extension `UpstreamStream` no longer adds to each response.
        let connection = (!self.upstream.http2).then(|| capture_connection(&mut req));
        ResponseFuture {
            state: State::Upstream {
                inner: self.client.request(req),
                picked: Some(picked),
                timer: None,
                clocks,
                request_id,
                connection,
                log,
            },
        }
    }
}

pin_project! {
    /// Response future of [`Proxy`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Rejected { response: Option<Response<Body>> },
        Upstream {
            #[pin]
            inner: legacy::ResponseFuture,
            // In flight until dropped; charged with the outcome when the response head arrives.
            picked: Option<PickedHost>,
            // Set on the first wait when `clocks` has any limit; moved as the exchange progresses.
            #[pin]
            timer: Option<tokio::time::Sleep>,
            clocks: Clocks,
            request_id: Option<RequestId>,
            connection: Option<CaptureConnection>,
            log: Option<AttemptLog>,
        },
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl ResponseFuture {
    fn rejected(rejection: Rejection, request_id: Option<RequestId>) -> Self {
        let mut response = rejection.into_response(request_id.as_ref());
        // Answered before anything went upstream.
        response.extensions_mut().insert(Attempts(0));
        Self { state: State::Rejected { response: Some(response) } }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
            StateProj::Upstream { inner, picked, timer, clocks, request_id, connection, log } => {
                let result = match inner.poll(cx) {
                    Poll::Ready(result) => Some(result),
                    Poll::Pending => {
                        if !clocks.poll_expired(timer, cx) {
                            return Poll::Pending;
                        }
                        None
                    }
                };
                let latency = clocks.started.elapsed();
                let (mut response, status, failure) = match result {
                    // A deadline passed first: dropping `inner` later abandons the attempt.
                    None => (
                        Rejection::upstream_timeout().into_response(request_id.as_ref()),
                        None,
                        Some(UpstreamFailure::Timeout),
                    ),
                    Some(Ok(response)) => {
                        let status = response.status();
                        let read_timeout = clocks.read;
                        let mut response = response.map(|body| Body::from(body).frame_timeout(read_timeout));
                        let transfer_encoded = strip_response_hop_by_hop(response.headers_mut());
                        // Framed twice: hyper read the chunks; the length is not the body's,
                        // and the connection's next byte may not start a response.
                        if transfer_encoded && response.headers_mut().remove(CONTENT_LENGTH).is_some() {
                            // Poisoned now, before the body is read: the pool checks it when the
                            // connection comes back idle.
                            if let Some(connected) =
                                connection.as_ref().map(CaptureConnection::connection_metadata)
                            {
                                if let Some(connected) = connected.as_ref() {
                                    connected.poison();
                                }
                            }
                        }
                        (response, Some(status), None)
                    }
                    Some(Err(error)) => {
                        let (rejection, failure) = failure_response(&error);
                        (rejection.into_response(request_id.as_ref()), None, failure)
                    }
                };
                if let Some(picked) = picked.take() {
                    let info = UpstreamInfo { host: picked.address().clone(), status, latency, failure };
                    if let Some(log) = log.take() {
                        log.answered(&info);
                    }
                    response.extensions_mut().insert(info);
                    picked.record(Outcome::of(&response));
                }
                response.extensions_mut().insert(Attempts(1));
                Poll::Ready(Ok(response))
            }
        }
    }
}

// === impl Clocks ===

/// The limits on one upstream exchange: the attempt's deadline and the write and read clocks.
struct Clocks {
    // When the request was sent: the start of `UpstreamInfo::latency` too.
    started: Instant,
    attempt: Option<Duration>,
    read: Option<Duration>,
    write: Option<Duration>,
    progress: Option<Arc<Progress>>,
}

impl Clocks {
    /// Whether a limit has passed; otherwise the timer is set to wake the task at the nearest
    /// one. The timer may fire early (the exchange moved on since it was set): then the
    /// deadline is worked out again and the timer moved.
    fn poll_expired(&self, mut timer: Pin<&mut Option<tokio::time::Sleep>>, cx: &mut Context<'_>) -> bool {
        loop {
            let waiting = match timer.as_mut().as_pin_mut() {
                Some(sleep) => sleep.poll(cx).is_pending(),
                // Nothing to time (the common case without limits costs one check).
                None => self.attempt.is_none() && self.read.is_none() && self.write.is_none(),
            };
            if waiting {
                return false;
            }
            let now = Instant::now();
            let Some(deadline) = self.deadline(now) else { return false };
            if deadline <= now {
                return true;
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            match timer.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(deadline),
                None => timer.set(Some(tokio::time::sleep_until(deadline))),
            }
        }
    }

    /// The nearest deadline as of `now`.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        let step = match &self.progress {
            // No body: the request is sent with its head, and the read clock runs from there.
            None => self.read.map(|read| self.started + read),
            Some(progress) => match progress.load() {
                (Step::Head, _) => self.write.map(|write| self.started + write),
                (Step::Handed, at) => self.write.map(|write| at + write),
                (Step::Sent, at) => self.read.map(|read| at + read),
                // The client is behind, not the upstream: look again later.
                (Step::Client, _) => self.write.into_iter().chain(self.read).min().map(|d| now + d),
            },
        };
        let attempt = self.attempt.map(|attempt| self.started + attempt);
        match (attempt, step) {
            (Some(a), Some(s)) => Some(a.min(s)),
            (a, s) => a.or(s),
        }
    }
}

// === impl Progress ===

/// Where a request body is on its way upstream, and since when: one atomic word, written by the
/// body as the upstream connection pulls it and read by the response future when its timer
/// fires.
#[derive(Debug)]
struct Progress {
    base: Instant,
    // The step in the top two bits, nanoseconds since `base` below.
    word: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Nothing asked of the body yet (connecting, sending the head).
    Head,
    /// The connection asked for the next piece and the client has not sent it.
    Client,
    /// A piece was handed to the connection, which has not asked for the next one.
    Handed,
    /// The whole body was handed over.
    Sent,
}

const STEP_SHIFT: u32 = 62;
const NANOS_MASK: u64 = (1 << STEP_SHIFT) - 1;

impl Progress {
    fn new(base: Instant) -> Self {
        Self { base, word: AtomicU64::new(0) }
    }

    fn mark(&self, step: Step) {
        let nanos = match step {
            // The time of this step is never read.
            Step::Head | Step::Client => 0,
            Step::Handed | Step::Sent => u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(NANOS_MASK),
        };
        self.word.store(((step as u64) << STEP_SHIFT) | (nanos & NANOS_MASK), Ordering::Release);
    }

    fn load(&self) -> (Step, Instant) {
        let word = self.word.load(Ordering::Acquire);
        let step = match word >> STEP_SHIFT {
            0 => Step::Head,
            1 => Step::Client,
            2 => Step::Handed,
            _ => Step::Sent,
        };
        (step, self.base + Duration::from_nanos(word & NANOS_MASK))
    }
}

/// A request body on its way upstream, marking its [`Progress`] when the exchange has limits.
#[derive(Debug)]
struct SentBody<B> {
    inner: B,
    progress: Option<Arc<Progress>>,
}

impl<B> http_body::Body for SentBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(progress) = &self.progress {
            match &polled {
                Poll::Pending => progress.mark(Step::Client),
                Poll::Ready(Some(Ok(_))) if !self.inner.is_end_stream() => progress.mark(Step::Handed),
                Poll::Ready(_) => progress.mark(Step::Sent),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Maps a client error to the gateway's answer: the request body's own limit (413) and a client
/// that stopped sending it (408) are the client's fault; anything else on the way to or from the
/// upstream is a bad gateway (502).
fn failure_response(error: &legacy::Error) -> (Rejection, Option<UpstreamFailure>) {
    if let Some(rejection) = crate::body::client_body_failure(error) {
        return (rejection, None);
    }
    tracing::debug!(target: "portcullis::proxy", error = %error, source = ?std::error::Error::source(error), "upstream request failed");
    if error.is_connect() {
        (Rejection::bad_gateway("upstream connect failure"), Some(UpstreamFailure::ConnectFailure))
    } else {
        (Rejection::bad_gateway("upstream reset or invalid response"), Some(UpstreamFailure::Reset))
    }
}

// === upstream path ===

/// Why [`upstream_path`] refused to build a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamPathError {
    /// The joined path would hold a segment an upstream reads as `.` or `..` (`%2e` and a `;`
    /// parameter included), which would take the request out of the service's path.
    #[error("the upstream path would hold a '.' or '..' segment")]
    DotSegment,
}

/// Kong's upstream path: the service's path joined by exactly one `/` to what is left of the
/// request path after stripping its first `strip_len` bytes ([`RouteMatch::strip_len`]).
///
/// With nothing left the service path is used as is; with neither, `/`. A prefix route `/api`
/// strips from `/apix` too (Kong's string prefix), so `x` becomes a segment of its own; a path
/// that would then hold a `.` or `..` segment (`/api../secret` → `/base/../secret`, or `%2e`
/// forms, or `..;`) is an [`UpstreamPathError`]: the upstream would resolve it out of the service's
/// path. The gateway answers it 400 `bad_request`.
///
/// ```
/// use portcullis::proxy::{UpstreamPathError, upstream_path};
///
/// assert_eq!(upstream_path("/base", "/api/users", 4), Ok("/base/users".into())); // route `/api`, strip_path
/// assert_eq!(upstream_path("/base", "/api/users", 0), Ok("/base/api/users".into())); // strip_path: false
/// assert_eq!(upstream_path("", "/api/users", 4), Ok("/users".into()));
/// assert_eq!(upstream_path("/base", "/api", 4), Ok("/base".into()));
/// assert_eq!(upstream_path("/base", "/apix", 4), Ok("/base/x".into()));
/// assert_eq!(upstream_path("/base", "/api../secret", 4), Err(UpstreamPathError::DotSegment));
/// ```
pub fn upstream_path(
    service_path: &str,
    request_path: &str,
    strip_len: usize,
) -> Result<String, UpstreamPathError> {
    let rest = request_path.get(strip_len..).unwrap_or("");
    let joined = if rest.is_empty() {
        if service_path.is_empty() { "/".to_owned() } else { service_path.to_owned() }
    } else {
        let base = service_path.strip_suffix('/').unwrap_or(service_path);
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let mut joined = String::with_capacity(base.len() + 1 + rest.len());
        joined.push_str(base);
        joined.push('/');
        joined.push_str(rest);
        joined
    };
    if has_dot_segment(&joined) {
        return Err(UpstreamPathError::DotSegment);
    }
    Ok(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_clock_starts_when_the_step_before_it_ends() {
        let second = Duration::from_secs(1);
        let started = Instant::now();
        let now = started + 5 * second;
        let progress = Arc::new(Progress::new(started));
        let clocks = |attempt: u32, progress: Option<Arc<Progress>>| Clocks {
            started,
            attempt: Some(attempt * second),
            read: Some(3 * second),
            write: Some(2 * second),
            progress,
        };
        // Without a body, the read clock runs from the start; the attempt's deadline can be nearer.
        assert_eq!(clocks(10, None).deadline(now), Some(started + 3 * second));
        assert_eq!(clocks(1, None).deadline(now), Some(started + second));
        let clocks = clocks(100, Some(progress.clone()));
        // Connecting and sending the head: the write clock from the start.
        assert_eq!(clocks.deadline(now), Some(started + 2 * second));
        // Waiting on the client: no upstream deadline, only a later look.
        progress.mark(Step::Client);
        assert_eq!(clocks.deadline(now), Some(now + 2 * second));
        // A piece handed over: the write clock from then.
        progress.mark(Step::Handed);
        let (step, at) = progress.load();
        assert_eq!(step, Step::Handed);
        assert!(at >= started && at < now);
        assert_eq!(clocks.deadline(now), Some(at + 2 * second));
        // All sent: the read clock from then.
        progress.mark(Step::Sent);
        let (step, at) = progress.load();
        assert_eq!(step, Step::Sent);
        assert_eq!(clocks.deadline(now), Some(at + 3 * second));
    }

    #[test]
    fn upstream_urls() {
        assert!(Proxy::builder("http://127.0.0.1:9000/base").is_ok());
        assert!(Proxy::builder("http://svc").is_ok());
        assert_eq!(
            Proxy::builder("https://svc").unwrap_err(),
            ProxyError::HttpsUnsupported("https://svc".into())
        );
        for bad in ["127.0.0.1:9000", "ftp://x", "http://u:p@x/", "http://x/?q=1", "/path"] {
            assert!(Proxy::builder(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstream_path_joins_with_one_slash() {
        let ok = |base, path, strip| upstream_path(base, path, strip).unwrap();
        assert_eq!(ok("/base", "/api/users", "/api".len()), "/base/users");
        assert_eq!(ok("/base", "/api", "/api".len()), "/base");
        assert_eq!(ok("/base/", "/users", 0), "/base/users");
        assert_eq!(ok("", "/api/users", "/api".len()), "/users");
        assert_eq!(ok("/base", "/api/users", 0), "/base/api/users");
        assert_eq!(ok("/", "/api/users", 0), "/api/users");
        assert_eq!(ok("", "/api/users", 0), "/api/users");
        assert_eq!(ok("", "/api", "/api".len()), "/");
        assert_eq!(ok("/", "/api", "/api".len()), "/");
        assert_eq!(ok("/base", "/apiv2", "/api".len()), "/base/v2");
        assert_eq!(ok("/base", "/api/", "/api".len()), "/base/");
        assert_eq!(ok("/base", "/api../secret", 0), "/base/api../secret");
        assert_eq!(ok("/base", "/api/.well-known/x", "/api".len()), "/base/.well-known/x");
    }

    #[test]
    fn upstream_path_never_holds_a_dot_segment() {
        let strip = "/api".len();
        for hostile in
            ["/api../secret", "/api.%2e/x", "/api%2e%2e/x", "/api.", "/api/./x", "/api/..;/x", "/api..%2Fx"]
        {
            assert_eq!(
                upstream_path("/base", hostile, strip),
                Err(UpstreamPathError::DotSegment),
                "{hostile}"
            );
            assert_eq!(upstream_path("", hostile, strip), Err(UpstreamPathError::DotSegment), "{hostile}");
        }
        // A regex route strips its whole match: `~/v\d` on `/v1../x` leaves `../x`.
        assert_eq!(upstream_path("/base", "/v1../x", 3), Err(UpstreamPathError::DotSegment));
        assert_eq!(upstream_path("/base", "/api/a/../b", 0), Err(UpstreamPathError::DotSegment));
    }
}
