//! The owned record a request leaves behind, and its JSON form.
//!
//! The request path only fills a [`Record`] with cheap clones (`Arc`, `Bytes`-backed header
//! values, `Copy` numbers); every bit of formatting happens in [`Record::write_json`] on the
//! writer thread.

use std::fmt::Display;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Extensions, HeaderMap, Method, Request, StatusCode};

use super::{Attempts, BreakerOutcome, RateLimitOutcome};
use crate::client_ip::ClientIp;
use crate::consumer::Consumer;
use crate::ext::NormalizedPath;
use crate::ext::{MatchedRoute, RouteInfo};
use crate::observe::request_id::{RequestId, X_REQUEST_ID};

/// Status logged when the client went away before the response head was ready (nginx's
/// "client closed request").
pub(super) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Everything one access-log line says, as owned values.
#[derive(Debug)]
pub(super) struct Record {
    started: Instant,
    timestamp: SystemTime,
    request_id: Option<Text<40>>,
    method: Method,
    /// The request path (never the query); replaced by the sanitizer's normalized path when that
    /// differs.
    path: Text<128>,
    route: Option<Arc<RouteInfo>>,
    status: u16,
    consumer_id: Option<Arc<str>>,
    client_ip: Option<IpAddr>,
    upstream: Option<Upstream>,
    gateway_latency: Duration,
    attempts: Option<u32>,
    rate_limit: Option<&'static str>,
    breaker: Option<&'static str>,
    pub(super) bytes_sent: u64,
    user_agent: Option<Text<128>>,
}

/// Bytes copied out of the request, inline when short. The writer thread drops records; had they
/// held `Bytes` clones or boxes, it would free memory the request threads allocated, and glibc's
/// arena locks make that cross-thread free the most expensive part of logging.
pub(super) enum Text<const N: usize> {
    Inline { len: u16, buf: [u8; N] },
    Heap(Box<[u8]>),
}

impl<const N: usize> Text<N> {
    pub(super) fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= N {
            let mut buf = [0u8; N];
            buf[..bytes.len()].copy_from_slice(bytes);
            Self::Inline { len: bytes.len() as u16, buf }
        } else {
            Self::Heap(bytes.into())
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, buf } => &buf[..usize::from(*len)],
            Self::Heap(bytes) => bytes,
        }
    }

    /// The text; anything that is not UTF-8 is replaced, as JSON needs.
    pub(super) fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

impl<const N: usize> std::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.to_str_lossy(), f)
    }
}

#[derive(Debug)]
struct Upstream {
    host: Arc<str>,
    status: Option<u16>,
    latency: Duration,
}

impl Record {
    /// What is known when the request enters the layer.
    pub(super) fn start<B>(req: &Request<B>) -> Self {
        let started = Instant::now();
        let ext = req.extensions();
        Self {
            started,
            timestamp: SystemTime::now(),
            request_id: ext.get::<RequestId>().map(|id| Text::new(id.as_str().as_bytes())),
            method: req.method().clone(),
            path: Text::new(req.uri().path().as_bytes()),
            route: None,
            status: 0,
            consumer_id: ext.get::<Consumer>().and_then(consumer_id),
            client_ip: ext.get::<ClientIp>().map(|ip| ip.0),
            upstream: None,
            gateway_latency: Duration::ZERO,
            attempts: None,
            rate_limit: None,
            breaker: None,
            bytes_sent: 0,
            user_agent: req.headers().get(http::header::USER_AGENT).map(|ua| Text::new(ua.as_bytes())),
        }
    }

    #[cfg(test)]
    pub(super) fn start_at<B>(req: &Request<B>, timestamp: SystemTime) -> Self {
        Self { timestamp, ..Self::start(req) }
    }

    /// Takes what the inner layers reported on the response head.
    pub(super) fn head(&mut self, status: StatusCode, headers: &HeaderMap, ext: &Extensions) {
        self.gateway_latency = self.started.elapsed();
        self.status = status.as_u16();
        if self.request_id.is_none() {
            // The request-id layer may sit inside this one: it echoes the id on the response.
            self.request_id = ext
                .get::<RequestId>()
                .cloned()
                .or_else(|| headers.get(&X_REQUEST_ID).and_then(RequestId::parse))
                .map(|id| Text::new(id.as_str().as_bytes()));
        }
        if let Some(NormalizedPath(path)) = ext.get::<NormalizedPath>() {
            self.path = Text::new(path.as_bytes());
        }
        if let Some(MatchedRoute(route)) = ext.get::<MatchedRoute>() {
            self.route = Some(route.clone());
        }
        // The response's consumer is the verdict of the auth layers: it replaces the entry one,
        // and an anonymous one means "no consumer".
        if let Some(consumer) = ext.get::<Consumer>() {
            self.consumer_id = consumer_id(consumer);
        }
        if let Some(ClientIp(ip)) = ext.get::<ClientIp>() {
            self.client_ip = Some(*ip);
        }
        #[cfg(feature = "proxy")]
        if let Some(info) = ext.get::<crate::ext::UpstreamInfo>() {
            self.upstream = Some(Upstream {
                host: info.host.clone(),
                status: info.status.map(|s| s.as_u16()),
                latency: info.latency,
            });
        }
        self.attempts = ext.get::<Attempts>().map(|a| a.0);
        self.rate_limit = ext.get::<RateLimitOutcome>().map(|r| r.as_str());
        self.breaker = ext.get::<BreakerOutcome>().map(|b| b.as_str());
    }

    /// No response head came back: the inner service failed (500) or the client went away (499).
    pub(super) fn no_response(&mut self, status: u16) {
        self.gateway_latency = self.started.elapsed();
        self.status = status;
    }

    /// Appends the record as one JSON object (no newline). Keys in the order of SPEC §7.
    pub(super) fn write_json(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut obj = JsonObject { out, first: true };
        obj.display("timestamp", Some(humantime::format_rfc3339_millis(clamp(self.timestamp))))?;
        let request_id = self.request_id.as_ref().map(Text::to_str_lossy);
        obj.string("request_id", request_id.as_deref())?;
        obj.string("method", Some(self.method.as_str()))?;
        obj.string("path", Some(path_only(&self.path.to_str_lossy())))?;
        obj.string("route_name", self.route.as_ref().and_then(|r| r.name.as_deref()))?;
        obj.string("service_name", self.route.as_ref().and_then(|r| r.service_name.as_deref()))?;
        obj.uint("status", Some(self.status.into()))?;
        if let Some(id) = &self.consumer_id {
            obj.string("consumer_id", Some(id))?;
        }
        obj.display("client_ip", self.client_ip)?;
        obj.string("upstream_host", self.upstream.as_ref().map(|u| &*u.host))?;
        obj.uint("upstream_status", self.upstream.as_ref().and_then(|u| u.status).map(u64::from))?;
        obj.float("upstream_latency_ms", self.upstream.as_ref().map(|u| millis(u.latency)))?;
        obj.float("gateway_latency_ms", Some(millis(self.gateway_latency)))?;
        obj.uint("attempts", self.attempts.map(u64::from))?;
        obj.string("rate_limit", self.rate_limit)?;
        obj.string("breaker", self.breaker)?;
        obj.uint("bytes_sent", Some(self.bytes_sent))?;
        let user_agent = self.user_agent.as_ref().map(Text::to_str_lossy);
        obj.string("user_agent", user_agent.as_deref())?;
        obj.out.push(b'}');
        Ok(())
    }
}

fn consumer_id(consumer: &Consumer) -> Option<Arc<str>> {
    (!consumer.anonymous).then(|| consumer.id.clone())
}

/// Defence in depth: whatever a path source holds, nothing after a `?` is written.
fn path_only(path: &str) -> &str {
    path.split_once('?').map_or(path, |(path, _query)| path)
}

/// Milliseconds with microsecond resolution, so lines stay short (`12.345`, not `12.345678901`).
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// `humantime` panics before 1970 and fails after 9999; a clock set that wrong must not kill the
/// writer thread.
fn clamp(t: SystemTime) -> SystemTime {
    const LAST: Duration = Duration::from_millis(253_402_300_799_999);
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d <= LAST => t,
        Ok(_) => UNIX_EPOCH + LAST,
        Err(_) => UNIX_EPOCH,
    }
}

/// Writes `{"key":value,...}` with static, already-safe keys; string values are escaped by
/// `serde_json`.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl JsonObject<'_> {
    fn key(&mut self, key: &'static str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn null(&mut self) -> io::Result<()> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn string(&mut self, key: &'static str, value: Option<&str>) -> io::Result<()> {
        self.key(key);
        match value {
            Some(s) => Ok(serde_json::to_writer(&mut *self.out, s)?),
            None => self.null(),
        }
    }

    /// For values whose text needs no escaping (timestamps, IP addresses).
    fn display(&mut self, key: &'static str, value: Option<impl Display>) -> io::Result<()> {
        self.key(key);
        match value {
            Some(v) => write!(self.out, "\"{v}\""),
            None => self.null(),
        }
    }

    fn uint(&mut self, key: &'static str, value: Option<u64>) -> io::Result<()> {
        self.key(key);
        match value {
            Some(n) => Ok(serde_json::to_writer(&mut *self.out, &n)?),
            None => self.null(),
        }
    }

    fn float(&mut self, key: &'static str, value: Option<f64>) -> io::Result<()> {
        self.key(key);
        match value {
            Some(n) => Ok(serde_json::to_writer(&mut *self.out, &n)?),
            None => self.null(),
        }
    }
}
