//! [`Body`]: the one body type the gateway passes between its layers.
//!
//! An enum rather than a boxed trait object, so a proxied request or response streams through
//! without an allocation per request: the common cases (empty, a gateway-made JSON body, a body
//! read from a hyper connection) are variants, and anything else can still be boxed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// A streaming HTTP body: empty, a full buffer, a hyper connection's body, or any boxed body.
    #[derive(Debug)]
    pub struct Body {
        #[pin]
        kind: Kind,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Full { data: Option<Bytes> },
        Incoming {
            #[pin]
            inner: Incoming,
            // The body is cut off with `BodyTooLarge` once `read` passes `limit`.
            limit: u64,
            read: u64,
            // A client's request body: its trailers pass through `sanitize_trailers`.
            from_client: bool,
            // The body fails with `BodyReadTimeout` when no frame arrives within this many
            // milliseconds (0: never); milliseconds keep every `Body` small.
            frame_timeout_ms: u32,
            // False while no wait is running (a frame arrived since the timer was last set).
            armed: bool,
            // Made on the first wait only: a body whose frames are ready never allocates it.
            timer: Option<FrameTimer>,
        },
        Boxed { #[pin] inner: UnsyncBoxBody<Bytes, BoxError> },
    }
}

#[cfg(feature = "proxy")]
type Incoming = hyper::body::Incoming;

/// The error an incoming [`Body`] yields when its next frame does not arrive in time (see
/// [`Body::frame_timeout`]); the gateway answers 408 while no response has started, and a
/// response body from an upstream that stalls is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no body data arrived for {timeout:?}")]
pub struct BodyReadTimeout {
    /// The longest wait allowed between two frames.
    pub timeout: Duration,
}

/// The wait for the next frame of an incoming body.
#[cfg(feature = "proxy")]
type FrameTimer = Pin<Box<tokio::time::Sleep>>;

#[cfg(not(feature = "proxy"))]
#[derive(Debug)]
enum FrameTimer {}

/// Without hyper there is no connection body; the variant cannot be built.
#[cfg(not(feature = "proxy"))]
#[derive(Debug)]
enum Incoming {}

#[cfg(not(feature = "proxy"))]
impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match *self {}
    }
}

/// The error a size-limited [`Body`] yields once it passes its limit; the gateway answers 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

/// The client's part in a failed request-body read, when it had one: the one place that tells a
/// body over its limit (413) and a client that stopped sending (408) from any other failure, for
/// every layer that reads a request body (the proxy, key-auth's `key_in_body`, the transformer).
pub(crate) fn client_body_failure(
    error: &(dyn std::error::Error + 'static),
) -> Option<crate::error::Rejection> {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<BodyTooLarge>() || e.is::<http_body_util::LengthLimitError>() {
            return Some(crate::error::Rejection::payload_too_large());
        }
        if e.is::<BodyReadTimeout>() {
            return Some(crate::error::Rejection::request_timeout());
        }
        source = e.source();
    }
    None
}

/// The default budget of the gateway's JSON body rules (transformer `json`/`body` rules,
/// key-auth's `key_in_body`): 1 MiB read at most.
pub const DEFAULT_MAX_JSON_BODY_BYTES: u64 = 1024 * 1024;

/// The default deepest nesting of `[`/`{` those rules accept.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting that can be configured: serde_json refuses to parse beyond 128 levels.
pub const MAX_JSON_DEPTH_LIMIT: usize = 128;

/// Whether `json` nests arrays and objects deeper than `max` levels: one byte scan, before a
/// parser recurses (so `[[[[…` ten thousand deep costs a pass over the bytes, not a stack).
/// Brackets inside strings do not count; the scan does not validate the rest of the syntax.
pub(crate) fn json_deeper_than(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Self { kind: Kind::Full { data: None } }
    }

    /// A body of exactly these bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self { kind: Kind::Full { data: (!data.is_empty()).then_some(data) } }
    }

    /// Boxes any body whose errors convert into [`BoxError`].
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self { kind: Kind::Boxed { inner: body.map_err(Into::into).boxed_unsync() } }
    }

    /// Wraps a client's request body read from a hyper connection, failing with [`BodyTooLarge`]
    /// after `limit` bytes. Its trailers lose the fields the gateway owns
    /// ([`sanitize_trailers`](crate::http_rules::sanitize_trailers)), as the request's headers do
    /// in [`SanitizeLayer`](crate::sanitize::SanitizeLayer): done here, where the gateway's
    /// server wraps every request body, so the layer keeps the caller's body type.
    /// (`From<Incoming>`, for an upstream's response body, leaves trailers alone.)
    #[cfg(feature = "proxy")]
    pub fn incoming(inner: hyper::body::Incoming, limit: Option<u64>) -> Self {
        Self {
            kind: Kind::Incoming {
                inner,
                limit: limit.unwrap_or(u64::MAX),
                read: 0,
                from_client: true,
                frame_timeout_ms: 0,
                armed: false,
                timer: None,
            },
        }
    }

    /// Fails a body read from a hyper connection with [`BodyReadTimeout`] when its next frame
    /// takes longer than `timeout` to arrive, counted from the moment the reader asks for it (so
    /// a reader that pauses costs the sender nothing); kept in whole milliseconds. `None`, or a
    /// body not read from a connection: no limit.
    pub fn frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        if let Kind::Incoming { frame_timeout_ms, .. } = &mut self.kind {
            // At least 1 ms, so that a tiny timeout is not taken for none.
            *frame_timeout_ms =
                timeout.map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1));
        }
        self
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(data: Bytes) -> Self {
        Self::full(data)
    }
}

impl From<String> for Body {
    fn from(data: String) -> Self {
        Self::full(data)
    }
}

impl From<&'static str> for Body {
    fn from(data: &'static str) -> Self {
        Self::full(Bytes::from_static(data.as_bytes()))
    }
}

impl From<Vec<u8>> for Body {
    fn from(data: Vec<u8>) -> Self {
        Self::full(data)
    }
}

#[cfg(feature = "proxy")]
impl From<hyper::body::Incoming> for Body {
    fn from(inner: hyper::body::Incoming) -> Self {
        Self {
            kind: Kind::Incoming {
                inner,
                limit: u64::MAX,
                read: 0,
                from_client: false,
                frame_timeout_ms: 0,
                armed: false,
                timer: None,
            },
        }
    }
}

/// While an incoming body waits for its next frame: starts the wait's timer (or restarts it after
/// a frame) and fails the body once it expires.
#[cfg(feature = "proxy")]
fn poll_frame_timer(
    frame_timeout_ms: u32,
    armed: &mut bool,
    timer: &mut Option<FrameTimer>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if frame_timeout_ms == 0 {
        return Poll::Pending;
    }
    let timeout = Duration::from_millis(u64::from(frame_timeout_ms));
    let timer = match timer {
        Some(timer) => {
            if !*armed {
                // Moving a deadline later is an atomic store in tokio's timer; no re-registration.
                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            timer
        }
        None => timer.insert(Box::pin(tokio::time::sleep(timeout))),
    };
    *armed = true;
    match timer.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout { timeout })))),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(not(feature = "proxy"))]
fn poll_frame_timer(
    _: u32,
    _: &mut bool,
    _: &mut Option<FrameTimer>,
    _: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    Poll::Pending
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Incoming { inner, limit, read, from_client, frame_timeout_ms, armed, timer } => {
                let frame = match inner.poll_frame(cx) {
                    Poll::Pending => return poll_frame_timer(*frame_timeout_ms, armed, timer, cx),
                    Poll::Ready(frame) => {
                        *armed = false;
                        frame
                    }
                };
                let mut frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                    None => return Poll::Ready(None),
                };
                if let Some(data) = frame.data_ref() {
                    *read = read.saturating_add(data.len() as u64);
                    if *read > *limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit: *limit }))));
                    }
                } else if let Some(trailers) = frame.trailers_mut().filter(|_| *from_client) {
                    crate::http_rules::sanitize_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            KindProj::Boxed { inner } => inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Incoming { inner, .. } => inner.is_end_stream(),
            Kind::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Incoming { inner, .. } => inner.size_hint(),
            Kind::Boxed { inner } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::json_deeper_than;

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert!(!json_deeper_than(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(json_deeper_than(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(!json_deeper_than(br#"{"a":"[[[[[[\"[[[["}"#, 1), "brackets in strings");
        assert!(!json_deeper_than(br#"{"a":"\\","b":"{{"}"#, 1), "an escaped backslash ends no string");
        assert!(!json_deeper_than(b"[][][][]", 1), "siblings are not nesting");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(json_deeper_than(deep.as_bytes(), 128));
        assert!(!json_deeper_than(deep.as_bytes(), 10_000));
        assert!(!json_deeper_than(b"", 1));
    }
}
