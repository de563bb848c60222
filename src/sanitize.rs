//! The sanitizing front layer: everything the gateway must settle about a request before any
//! route, auth or limit looks at it.
//!
//! In order, [`SanitizeLayer`]:
//! 1. answers 431 when the request headers are larger than the limit, and 413 when a declared
//!    `Content-Length` is over the body limit;
//! 2. normalizes the path ([`normalize_path`]) or answers 400 — so routing, auth, rate limiting
//!    and the upstream all see one path, and `/public/..%2Fadmin` cannot be routed by its raw form
//!    (nor `/public/..;/admin`, which Tomcat reads as `/admin`: a dot segment with a `;` parameter
//!    is refused);
//! 3. resolves the client IP through the trusted proxies into [`ClientIp`], from the headers as
//!    they arrived;
//! 4. answers 400 (and closes the connection) to a `Transfer-Encoding` other than one `chunked`
//!    (`chunked, chunked`, `gzip, chunked`: codings the gateway would not undo before forwarding);
//! 5. drops hop-by-hop headers (those named in `Connection`, then the fixed list, which includes
//!    `Proxy-Authorization`), every gateway-owned header a client sent (`X-Consumer-ID`,
//!    `X_Consumer_ID`, `X-Real-IP`, `X-Portcullis-*`, ...) and, from a peer outside the trusted
//!    proxies, the forwarding headers of [`DEFAULT_STRIP_FROM_UNTRUSTED`] (or the list given to
//!    [`SanitizeLayer::strip_from_untrusted`]), *before* the gateway adds its own. `Connection`
//!    never removes a header the gateway resolves or sets (`Host`, `Authorization`,
//!    `X-Request-ID`, `X-Forwarded-For`/`-Proto`/`-Host`/`-Port`, the owned headers);
//! 6. sets the forwarding headers the upstream receives: exactly one `X-Forwarded-For` (the
//!    incoming chain only when the peer is trusted, then the peer), `X-Forwarded-Proto`,
//!    `X-Forwarded-Host`, `X-Forwarded-Port` and `X-Real-IP`. Proto and port describe the
//!    listener the request arrived on ([`ListenerInfo`]: `http` or `https`, and the port it
//!    listens on, as Kong's `X-Forwarded-Port`), never the request line's scheme (an absolute-form
//!    `https://…` URI or an HTTP/2 `:scheme` is the client's word). Without a [`ListenerInfo`]
//!    (a host server other than the gateway's) they fall back to `http` and the `Host` header's
//!    port, else 80.
//!
//! Request trailers arrive in the body, which this layer does not wrap (its body type stays the
//! caller's): the gateway's server drops the same fields from them in
//! [`Body::incoming`](crate::Body::incoming), and another host can wrap its request bodies in
//! [`SanitizeTrailers`].
//!
//! ```
//! use portcullis::sanitize::SanitizeLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(SanitizeLayer::new())
//!     .service_fn(|req: http::Request<()>| async move {
//!         assert!(req.headers().get("x-consumer-id").is_none());
//!         let path = bytes::Bytes::from(req.uri().path().to_owned());
//!         Ok::<_, std::convert::Infallible>(http::Response::new(path))
//!     });
//! let req = http::Request::builder()
//!     .uri("/public/%2e%2e/%61dmin?x=1")
//!     .header("x-consumer-id", "spoofed")
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "/admin");
//! # }
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri};
use http_body::Frame;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::client_ip::{ClientIp, ListenerInfo, PeerAddr, TrustedProxies};
use crate::error::Rejection;
/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::NormalizedPath;
use crate::future::RejectOrInner;
/// Moved to the ground floor ([`crate::http_rules`]); re-exported here for the old paths.
pub use crate::http_rules::{DEFAULT_STRIP_FROM_UNTRUSTED, is_owned_header, sanitize_trailers};
use crate::http_rules::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PROTO, doomed_names, is_dot_segment,
    remove_doomed,
};

pin_project! {
    /// A request body whose trailers pass through [`sanitize_trailers`]: what the gateway's
    /// server does to every request body ([`Body::incoming`](crate::Body::incoming)), for a host
    /// that runs [`SanitizeLayer`] on its own bodies (`req.map(SanitizeTrailers::new)`).
    #[derive(Debug)]
    pub struct SanitizeTrailers<B> {
        #[pin]
        inner: B,
    }
}

impl<B> SanitizeTrailers<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }

    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: http_body::Body> http_body::Body for SanitizeTrailers<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut frame = std::task::ready!(self.project().inner.poll_frame(cx));
        if let Some(trailers) = frame.as_mut().and_then(|f| f.as_mut().ok()).and_then(Frame::trailers_mut) {
            sanitize_trailers(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request's `Transfer-Encoding` (hyper has already decoded the body by its final `chunked`)
/// must be exactly one `chunked`: `chunked, chunked` is refused as HAProxy and Envoy refuse it
/// (a server behind that decodes once reads another body), and any other coding would reach the
/// upstream undone once the gateway re-frames the body.
fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut chunked = 0;
    let tokens =
        headers.get_all(TRANSFER_ENCODING).into_iter().flat_map(|v| v.as_bytes().split(|b| *b == b','));
    for token in tokens {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else if !token.is_empty() {
            return Err(framing_rejection("unsupported Transfer-Encoding: only chunked is accepted"));
        }
    }
    match chunked {
        1 => Ok(()),
        0 => Err(framing_rejection("empty Transfer-Encoding")),
        _ => Err(framing_rejection("Transfer-Encoding applies chunked more than once")),
    }
}

/// 400 with `Connection: close`: after a framing error the rest of the connection's bytes cannot
/// be trusted to start a request.
fn framing_rejection(message: &'static str) -> Rejection {
    Rejection::bad_request(message).with_header(CONNECTION, HeaderValue::from_static("close"))
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in path")]
    MalformedEscape,
    /// `%2F`, `%5C` or `%00`: an encoded separator or NUL.
    #[error("encoded '/', '\\' or NUL in path")]
    EncodedSeparator,
    /// `%25` followed by hex digits: an escape that decodes to another escape.
    #[error("double percent-encoding in path")]
    DoubleEncoding,
    /// A raw backslash, or a path that does not start with `/`.
    #[error("invalid path")]
    Invalid,
    /// A `.` or `..` segment with a `;` parameter (`/public/..;/admin`): an upstream such as
    /// Tomcat reads it as `..`, which this normalizer would not resolve.
    #[error("'.' or '..' segment with a ';' parameter in path")]
    DotSegmentParameter,
}

/// Normalizes a request path: decodes percent-encoded unreserved characters, upper-cases the
/// remaining escapes, merges repeated `/`, and resolves `.` and `..` segments (never above the
/// root). Returns the input untouched (borrowed) when it is already normal. A segment whose part
/// before its first `;` is `.` or `..` (`..;x`) is refused: upstreams disagree on what it means.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::Invalid);
    }
    if !needs_work(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    remove_dot_segments(&decoded).map(Cow::Owned)
}

fn needs_work(bytes: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return true,
            b'/' if prev == b'/' => return true,
            b'.' if prev == b'/' => {
                // "/." followed by end, "/" or "." is a dot segment; by ";" one with a parameter.
                if matches!(bytes.get(i + 1), None | Some(b'/' | b'.' | b';')) {
                    return true;
                }
            }
            _ => {}
        }
        prev = b;
    }
    false
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Invalid),
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError::MalformedEscape);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    b'%' if bytes.get(i + 3).copied().and_then(hex).is_some()
                        && bytes.get(i + 4).copied().and_then(hex).is_some() =>
                    {
                        return Err(PathError::DoubleEncoding);
                    }
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        out.push(decoded as char)
                    }
                    _ => {
                        out.push('%');
                        out.push(HEX[usize::from(hi)] as char);
                        out.push(HEX[usize::from(lo)] as char);
                    }
                }
                i += 3;
            }
            // The URI parser only lets visible ASCII through.
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over `/`-separated segments, with empty segments merged; a dot segment with
/// a `;` parameter is refused.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s if is_dot_segment(s.as_bytes()) => return Err(PathError::DotSegmentParameter),
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// What the access log learns from this layer: the path when normalization changed it, and the
/// client IP.
#[derive(Debug)]
struct Echo {
    path: Option<NormalizedPath>,
    client: Option<ClientIp>,
}

/// Header names dropped from an untrusted peer, with a mask of their lengths: a header of
/// another length (most of a request's) is passed over with one bit test.
#[derive(Debug, Clone)]
struct StripList {
    names: Arc<[HeaderName]>,
    lengths: u64,
}

impl StripList {
    fn new(names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Arc<[HeaderName]> = names.into_iter().collect();
        let lengths = names.iter().fold(0, |mask, name| mask | Self::bit(name));
        Self { names, lengths }
    }

    fn bit(name: &HeaderName) -> u64 {
        1 << name.as_str().len().min(63)
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.lengths & Self::bit(name) != 0 && self.names.contains(name)
    }
}

/// Sanitizes every request; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SanitizeLayer {
    trusted: TrustedProxies,
    strip_from_untrusted: StripList,
    max_header_bytes: usize,
    max_body_bytes: Option<u64>,
}

impl Default for SanitizeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SanitizeLayer {
    /// Trusts no proxy; drops [`DEFAULT_STRIP_FROM_UNTRUSTED`] from every peer; 32 KiB of
    /// headers; no body limit.
    pub fn new() -> Self {
        Self {
            trusted: TrustedProxies::none(),
            strip_from_untrusted: StripList::new(DEFAULT_STRIP_FROM_UNTRUSTED.map(HeaderName::from_static)),
            max_header_bytes: 32 * 1024,
            max_body_bytes: None,
        }
    }

    /// Believes `X-Forwarded-*` from these peers.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// Drops these headers from a peer outside the trusted proxies (and from a request with no
    /// [`PeerAddr`]), instead of [`DEFAULT_STRIP_FROM_UNTRUSTED`]; pass the defaults along to
    /// add to them, or nothing to keep every such header.
    pub fn strip_from_untrusted(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.strip_from_untrusted = StripList::new(names);
        self
    }

    /// Answers 431 above this many bytes of header names and values.
    pub fn max_header_bytes(mut self, limit: usize) -> Self {
        self.max_header_bytes = limit;
        self
    }

    /// Answers 413 to a request whose `Content-Length` is above `limit`. (A streamed body is cut
    /// off at the same limit by [`Body::incoming`](crate::Body::incoming).)
    pub fn max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = Some(limit);
        self
    }
}

impl<S> Layer<S> for SanitizeLayer {
    type Service = SanitizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SanitizeService { inner, config: self.clone() }
    }
}

/// The service made by [`SanitizeLayer`].
#[derive(Debug, Clone)]
pub struct SanitizeService<S> {
    inner: S,
    config: SanitizeLayer,
}

impl<S> SanitizeService<S> {
    /// Settles the request; returns what to echo on the response for the access log.
    fn check<B>(&self, req: &mut Request<B>) -> Result<Echo, Rejection> {
        let header_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if header_bytes > self.config.max_header_bytes {
            return Err(Rejection::header_fields_too_large());
        }
        if let Some(limit) = self.config.max_body_bytes {
            let declared =
                req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > limit) {
                return Err(Rejection::payload_too_large());
            }
        }
        let normalized = match normalize_path(req.uri().path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(path)) => Some(path),
            Err(error) => return Err(Rejection::bad_request(error.to_string())),
        };
        if let Some(path) = &normalized {
            set_path(req.uri_mut(), path)?;
        }
        let normalized = normalized.map(NormalizedPath);

        let peer = req.extensions().get::<PeerAddr>().copied();
        // With no peer address nothing says the request came through a trusted proxy.
        let peer_trusted = peer.is_some_and(|peer| self.config.trusted.contains(peer.0.ip()));
        // Resolved from the headers as they arrived, before anything is removed.
        let client = peer.map(|peer| ClientIp(self.config.trusted.client_ip(peer.0.ip(), req.headers())));
        let untrusted = (!peer_trusted).then_some(&self.config.strip_from_untrusted);
        let doomed = doomed_names(req.headers(), |name| {
            is_owned_header(name.as_str()) || untrusted.is_some_and(|list| list.contains(name))
        });
        if !doomed.is_empty() {
            if doomed.contains(&TRANSFER_ENCODING) {
                check_transfer_encoding(req.headers())?;
            }
            remove_doomed(req.headers_mut(), doomed, true);
        }

        let (Some(peer), Some(client)) = (peer, client) else {
            return Ok(Echo { path: normalized, client: None });
        };
        let listener = req.extensions().get::<ListenerInfo>().copied();
        let host = req
            .headers()
            .get(HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        set_forwarding_headers(req.headers_mut(), peer, peer_trusted, client, listener, host);
        req.extensions_mut().insert(client);
        Ok(Echo { path: normalized, client: Some(client) })
    }
}

fn set_path(uri: &mut Uri, path: &str) -> Result<(), Rejection> {
    let mut parts = std::mem::take(uri).into_parts();
    let pq = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    };
    parts.path_and_query = Some(pq.map_err(|_| Rejection::bad_request("invalid path"))?);
    *uri = Uri::from_parts(parts).map_err(|_| Rejection::bad_request("invalid path"))?;
    Ok(())
}

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

fn ip_header(ip: std::net::IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    // Formatted on the stack (IPv4 by hand, the common case, skipping `fmt`): the header value's
    // own copy is the only allocation.
    let mut buf = [0u8; 48];
    let len = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for digit in &digits[skip..] {
                    buf[len] = b'0' + digit;
                    len += 1;
                }
            }
            len
        }
        std::net::IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            write!(cursor, "{v6}").ok()?;
            usize::try_from(cursor.position()).ok()?
        }
    };
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// The port of a `Host` value (`example.com:8443`, `[::1]:8443`), if it names one.
fn host_port(host: &[u8]) -> Option<u16> {
    let colon = host.iter().rposition(|b| *b == b':')?;
    if host.iter().rposition(|b| *b == b']').is_some_and(|bracket| bracket > colon) {
        return None;
    }
    std::str::from_utf8(&host[colon + 1..]).ok()?.parse().ok()
}

fn set_forwarding_headers(
    headers: &mut HeaderMap,
    peer: PeerAddr,
    peer_trusted: bool,
    client: ClientIp,
    listener: Option<ListenerInfo>,
    host: Option<HeaderValue>,
) {
    // Up to five headers are added: grow the map once, not once per insert. Behind the
    // gateway's server (`HEADER_HEADROOM`) the room is already there and this is a check.
    headers.reserve(5);
    let peer_value = ip_header(peer.0.ip());
    let chain = if peer_trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        chain.push_str(", ");
        chain.push_str(&peer.0.ip().to_string());
        HeaderValue::from_str(&chain).ok()
    } else {
        peer_value.clone()
    };
    let real_ip = if client.0 == peer.0.ip() { peer_value } else { ip_header(client.0) };
    for (name, value) in [(X_FORWARDED_FOR, chain), (X_REAL_IP, real_ip)] {
        match value {
            Some(value) => headers.insert(name, value),
            None => headers.remove(name),
        };
    }
    // A trusted proxy's own X-Forwarded-Proto/Host/Port describe the client's side; keep them.
    let keep = |headers: &HeaderMap, name: &HeaderName| peer_trusted && headers.contains_key(name);
    // The listener's scheme and port, never the request line's (the client's word).
    let https = listener.is_some_and(|l| l.tls);
    if !keep(headers, &X_FORWARDED_PROTO) {
        let proto = if https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    let port = match listener {
        Some(listener) => listener.local_addr.port(),
        None => host.as_ref().and_then(|h| host_port(h.as_bytes())).unwrap_or(80),
    };
    if !keep(headers, &X_FORWARDED_HOST) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            None => headers.remove(X_FORWARDED_HOST),
        };
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        let port = match port {
            80 => HeaderValue::from_static("80"),
            443 => HeaderValue::from_static("443"),
            port => HeaderValue::from(port),
        };
        headers.insert(X_FORWARDED_PORT, port);
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SanitizeService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<Bytes>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        match self.check(&mut req) {
            Ok(echo) => {
                ResponseFuture { inner: RejectOrInner::inner(self.inner.call(req)), echo: Some(echo) }
            }
            Err(rejection) => {
                let mut response = rejection.into_response_for(&req);
                if let Some(peer) = req.extensions().get::<PeerAddr>() {
                    let client = self.config.trusted.client_ip(peer.0.ip(), req.headers());
                    response.extensions_mut().insert(ClientIp(client));
                }
                ResponseFuture { inner: RejectOrInner::rejected(response), echo: None }
            }
        }
    }
}

pin_project! {
    /// Response future of [`SanitizeService`]: the rejection it decided, or the inner service's
    /// response with the normalized path and client address copied into its extensions.
    pub struct ResponseFuture<F, B> {
        #[pin]
        inner: RejectOrInner<F, Response<B>>,
        // `None` for a rejection: the inner service never saw the request.
        echo: Option<Echo>,
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(Echo { path, client }) = this.echo.take() {
            let ext = response.extensions_mut();
            if let Some(path) = path {
                ext.insert(path);
            }
            if let Some(client) = client {
                ext.insert(client);
            }
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceBuilder, ServiceExt};

    #[test]
    fn normalizes_or_refuses() {
        let ok = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(ok("/a/b?"), Ok("/a/b?".into()));
        assert_eq!(ok("/public/../admin"), Ok("/admin".into()));
        assert_eq!(ok("/public/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(ok("/public/%2E%2E/admin"), Ok("/admin".into()));
        assert_eq!(ok("//admin"), Ok("/admin".into()));
        assert_eq!(ok("/%61dmin"), Ok("/admin".into()));
        assert_eq!(ok("/a/./b/"), Ok("/a/b/".into()));
        assert_eq!(ok("/a/.."), Ok("/".into()));
        assert_eq!(ok("/../../etc"), Ok("/etc".into()));
        assert_eq!(ok("/caf%c3%a9"), Ok("/caf%C3%A9".into()));
        assert_eq!(ok("/100%25"), Ok("/100%25".into()));
        assert_eq!(ok("/.well-known/x"), Ok("/.well-known/x".into()));
        assert_eq!(ok("/public/..%2Fadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(ok("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(ok("/a%00"), Err(PathError::EncodedSeparator));
        assert_eq!(ok("/admin%"), Err(PathError::MalformedEscape));
        assert_eq!(ok("/admin%2"), Err(PathError::MalformedEscape));
        assert_eq!(ok("/admin%zz"), Err(PathError::MalformedEscape));
        assert_eq!(ok("/%252e%252e/admin"), Err(PathError::DoubleEncoding));
        assert_eq!(ok("*"), Err(PathError::Invalid));
        assert!(matches!(normalize_path("/plain/path"), Ok(Cow::Borrowed(_))));
        // A `;` parameter on a dot segment: Tomcat reads `..;` as `..`.
        for hostile in ["/public/..;/admin", "/public/.;x/admin", "/a/%2e%2e;/b", "/a/.%2E;", "/..;"] {
            assert_eq!(ok(hostile), Err(PathError::DotSegmentParameter), "{hostile}");
        }
        assert!(matches!(normalize_path("/a;b/c;v=1"), Ok(Cow::Borrowed(_))));
        assert_eq!(ok("/a/..x;/b"), Ok("/a/..x;/b".into()));
        assert_eq!(ok("/a/;/b/.well-known;x"), Ok("/a/;/b/.well-known;x".into()));
    }

    #[test]
    fn ip_header_values() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.100.255", "203.0.113.9", "::1", "2001:db8::7"] {
            let value = ip_header(ip.parse().unwrap()).unwrap();
            assert_eq!(value, ip);
        }
    }

    async fn headers_seen(req: Request<()>) -> Result<Response<Bytes>, Infallible> {
        let mut seen: Vec<String> =
            req.headers().iter().map(|(n, v)| format!("{}={}", n, v.to_str().unwrap_or("?"))).collect();
        seen.sort();
        seen.push(format!("path={}", req.uri()));
        Ok(Response::new(Bytes::from(seen.join("\n"))))
    }

    fn seen(res: &Response<Bytes>) -> String {
        String::from_utf8(res.body().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn strips_spoofed_and_hop_by_hop_and_sets_forwarding() {
        let svc = ServiceBuilder::new()
            .layer(SanitizeLayer::new().trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap()))
            .service_fn(headers_seen);
        let mut req = Request::builder()
            .uri("/x?a=1&b=2")
            .header("host", "api.example.com:8443")
            .header("connection", "keep-alive, X-Secret, X-Forwarded-For")
            .header("x-secret", "s")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x_consumer_id", "spoof")
            .header("X-Real-IP", "6.6.6.6")
            .header("x-portcullis-overloaded", "true")
            .header("te", "trailers")
            .body(())
            .unwrap();
        req.extensions_mut().insert(PeerAddr("192.0.2.7:5555".parse().unwrap()));
        let res = svc.oneshot(req).await.unwrap();
        let seen = seen(&res);
        assert_eq!(
            seen,
            [
                "host=api.example.com:8443",
                "x-forwarded-for=192.0.2.7",
                "x-forwarded-host=api.example.com:8443",
                "x-forwarded-port=8443",
                "x-forwarded-proto=http",
                "x-real-ip=192.0.2.7",
                "path=/x?a=1&b=2",
            ]
            .join("\n")
        );
        assert_eq!(res.extensions().get::<ClientIp>(), Some(&ClientIp("192.0.2.7".parse().unwrap())));
    }

    #[tokio::test]
    async fn trusted_peer_extends_the_chain() {
        let svc = ServiceBuilder::new()
            .layer(SanitizeLayer::new().trusted_proxies(TrustedProxies::parse(["10.0.0.0/8"]).unwrap()))
            .service_fn(headers_seen);
        let mut req = Request::builder()
            .uri("/x")
            .header("x-forwarded-for", "198.51.100.1, 10.0.0.9")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        req.extensions_mut().insert(PeerAddr("10.1.1.1:5555".parse().unwrap()));
        let res = svc.oneshot(req).await.unwrap();
        let seen = seen(&res);
        assert!(seen.contains("x-forwarded-for=198.51.100.1, 10.0.0.9, 10.1.1.1\n"), "{seen}");
        assert!(seen.contains("x-real-ip=198.51.100.1\n"), "{seen}");
        assert!(seen.contains("x-forwarded-proto=https\n"), "{seen}");
    }

    #[tokio::test]
    async fn connection_never_removes_what_the_gateway_decides() {
        let svc = ServiceBuilder::new().layer(SanitizeLayer::new()).service_fn(headers_seen);
        let mut req = Request::builder()
            .uri("/x")
            .header("host", "api.example.com")
            .header(
                "connection",
                "X-Forwarded-For, X-Request-ID, X-Real-IP, Authorization, Host, X-Consumer-ID, X-Gone",
            )
            .header("authorization", "Bearer t")
            .header("x-request-id", "abc")
            .header("x-gone", "1")
            .header("proxy-authorization", "Basic Zm9v")
            .body(())
            .unwrap();
        req.extensions_mut().insert(PeerAddr("192.0.2.7:5555".parse().unwrap()));
        req.extensions_mut().insert(ListenerInfo { local_addr: "10.0.0.1:8000".parse().unwrap(), tls: true });
        let seen = seen(&svc.oneshot(req).await.unwrap());
        assert_eq!(
            seen,
            [
                "authorization=Bearer t",
                "host=api.example.com",
                "x-forwarded-for=192.0.2.7",
                "x-forwarded-host=api.example.com",
                "x-forwarded-port=8000",
                "x-forwarded-proto=https",
                "x-real-ip=192.0.2.7",
                "x-request-id=abc",
                "path=/x",
            ]
            .join("\n")
        );
    }

    #[tokio::test]
    async fn untrusted_forwarding_headers_and_the_request_line_scheme_are_ignored() {
        let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let svc = ServiceBuilder::new()
            .layer(SanitizeLayer::new().trusted_proxies(trusted.clone()))
            .service_fn(headers_seen);
        let request = |peer: Option<&str>| {
            let mut req = Request::builder()
                .uri("https://api.example.com:443/x")
                .header("host", "api.example.com:443")
                .header("forwarded", "for=6.6.6.6;proto=https")
                .header("x-original-url", "/admin")
                .header("X-HTTP-Method-Override", "DELETE")
                .header("x-other", "kept")
                .body(())
                .unwrap();
            if let Some(peer) = peer {
                req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
            }
            req
        };
        for peer in [Some("192.0.2.7:1"), None] {
            let text = seen(&svc.clone().oneshot(request(peer)).await.unwrap());
            for gone in ["forwarded", "x-original-url", "x-http-method-override"] {
                assert!(!text.lines().any(|l| l.starts_with(&format!("{gone}="))), "{peer:?}: {text}");
            }
            assert!(text.contains("x-other=kept"), "{text}");
            if peer.is_some() {
                // No listener known: `http`, and the port the client addressed.
                assert!(text.contains("x-forwarded-proto=http\n"), "{text}");
                assert!(text.contains("x-forwarded-port=443\n"), "{text}");
            }
        }
        let trusted_seen = seen(&svc.clone().oneshot(request(Some("10.1.1.1:1"))).await.unwrap());
        assert!(trusted_seen.contains("forwarded=for=6.6.6.6;proto=https"), "{trusted_seen}");
        assert!(trusted_seen.contains("x-original-url=/admin"), "{trusted_seen}");

        let svc = ServiceBuilder::new()
            .layer(SanitizeLayer::new().strip_from_untrusted([HeaderName::from_static("x-other")]))
            .service_fn(headers_seen);
        let configured = seen(&svc.oneshot(request(Some("192.0.2.7:1"))).await.unwrap());
        assert!(!configured.contains("x-other="), "{configured}");
        assert!(configured.contains("x-original-url=/admin"), "{configured}");
    }

    #[test]
    fn strip_list_matches_by_name_not_only_length() {
        let list = StripList::new(DEFAULT_STRIP_FROM_UNTRUSTED.map(HeaderName::from_static));
        for name in DEFAULT_STRIP_FROM_UNTRUSTED {
            assert!(list.contains(&HeaderName::from_static(name)), "{name}");
        }
        // `authorization` has the length of `x-rewrite-url`; `accept-encoding` of `x-forwarded-ssl`.
        for name in ["authorization", "accept-encoding", "content-length", "host", "x-forwarded-for"] {
            assert!(!list.contains(&HeaderName::from_static(name)), "{name}");
        }
        let long = HeaderName::from_bytes(&[b'x'; 100]).unwrap();
        assert!(StripList::new([long.clone()]).contains(&long));
        assert!(!StripList::new([]).contains(&long));
    }

    #[tokio::test]
    async fn transfer_encoding_is_one_chunked_or_400_with_close() {
        let svc = ServiceBuilder::new().layer(SanitizeLayer::new()).service_fn(headers_seen);
        let request = |values: &[&str]| {
            let mut req = Request::builder().method("POST").uri("/x");
            for value in values {
                req = req.header("transfer-encoding", *value);
            }
            req.body(()).unwrap()
        };
        let res = svc.clone().oneshot(request(&["chunked"])).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(!seen(&res).contains("transfer-encoding"));
        for values in [
            &["chunked, chunked"][..],
            &["chunked", "chunked"],
            &["gzip, chunked"],
            &["identity,chunked"],
            &[""],
        ] {
            let res = svc.clone().oneshot(request(values)).await.unwrap();
            assert_eq!(res.status(), 400, "{values:?}");
            assert_eq!(res.headers()["connection"], "close");
            let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
            assert_eq!(body["error"], "bad_request");
        }
    }

    #[tokio::test]
    async fn trailers_lose_owned_and_forwarding_fields() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        for name in
            ["x-consumer-id", "x-forwarded-for", "x-forwarded-prefix", "x-request-id", "authorization"]
        {
            trailers.insert(HeaderName::from_static(name), HeaderValue::from_static("spoof"));
        }
        trailers.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        trailers.insert("content-length", HeaderValue::from_static("1"));
        trailers.insert("x-checksum", HeaderValue::from_static("abc"));
        let body = Frames([Frame::data(Bytes::from_static(b"hi")), Frame::trailers(trailers)].into());
        let collected = SanitizeTrailers::new(body).collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "hi");
    }

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn rejections_are_json() {
        let svc = ServiceBuilder::new()
            .layer(SanitizeLayer::new().max_header_bytes(64).max_body_bytes(10))
            .service_fn(headers_seen);
        let res = svc.clone().oneshot(Request::builder().uri("/a%2fb").body(()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 400);
        let body: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(body["error"], "bad_request");
        let res = svc
            .clone()
            .oneshot(Request::builder().uri("/").header("x-big", "v".repeat(100)).body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 431);
        let res = svc
            .oneshot(Request::builder().uri("/").header("content-length", "11").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
    }
}
