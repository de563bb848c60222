//! The JSON access log: one line per request, every request, written off the request path.
//!
//! # A line
//!
//! ```text
//! {"timestamp":"2025-06-01T09:30:12.345Z","request_id":"0f8f2a52-5c0c-4b6e-9d36-0c1e7a3b9a10","method":"GET","path":"/orders/42","route_name":"orders","service_name":"orders-svc","status":200,"consumer_id":"acme","client_ip":"203.0.113.7","upstream_host":"10.0.0.5:8080","upstream_status":200,"upstream_latency_ms":12.41,"gateway_latency_ms":12.873,"attempts":1,"rate_limit":"allowed","breaker":"closed","bytes_sent":512,"user_agent":"curl/8.5.0"}
//! ```
//!
//! Every line carries every field below, in this order, `null` when the layer that decides it
//! did not act — except `consumer_id`, which is omitted when there is no consumer or the consumer
//! is the anonymous one (the operators' analyzer falls back to `client_ip` only when the key is
//! absent).
//!
//! | field | source | `null` when |
//! |---|---|---|
//! | `timestamp` | wall clock when the request entered this layer, RFC 3339 UTC with millis | never |
//! | `request_id` | [`RequestId`] request extension, else response extension, else the response's `X-Request-ID` | no request-id layer ran |
//! | `method` | request method | never |
//! | `path` | [`NormalizedPath`] response extension, else the request URI's path; never the query | never |
//! | `route_name`, `service_name` | [`MatchedRoute`] response extension | no route matched, or it has no name |
//! | `status` | response status; `500` if the inner service failed, `499` if the client went away before the response head | never |
//! | `consumer_id` | `Consumer::id`, response extension, else request extension at entry | *omitted* when absent or anonymous |
//! | `client_ip` | [`ClientIp`] response extension, else request extension | nobody resolved it |
//! | `upstream_host`, `upstream_status`, `upstream_latency_ms` | `UpstreamInfo` response extension (feature `proxy`), of the last attempt: its host, its status, from sending it to its response head (or to its failure), float ms | nothing was sent upstream (below); `upstream_status` also when no upstream response head arrived for the last attempt (502 connect failure or reset, 504 per-try, read or route timeout, the proxy's 408 and 413) |
//! | `gateway_latency_ms` | from entering this layer to the response head (upstream included), float ms, µs resolution | never |
//! | `attempts` | [`Attempts`] response extension: requests sent upstream, `1` without a retry policy, the retry layer's count with one; `0` when the proxy answered itself | the proxy was not called |
//! | `rate_limit` | [`RateLimitOutcome`] response extension, one of [`RateLimitOutcome::as_str`]: `allowed`, `limited` (429), `bypassed` (the store failed, `fault_tolerant` admitted), `unavailable` (the store failed, 503) | no rate limiter ran |
//! | `breaker` | [`BreakerOutcome`] response extension, one of [`BreakerOutcome::as_str`]: `closed`, `half_open` (admitted as a probe, or refused), `open` (refused), `overflow` (a threshold refused) | no circuit breaker ran |
//! | `bytes_sent` | response body bytes actually streamed | never (`0` for an empty or unread body) |
//! | `user_agent` | `User-Agent` header (invalid UTF-8 replaced) | no header |
//!
//! ## When the upstream fields are `null`
//!
//! The proxy acts on every request that reaches it, retries configured or not:
//!
//! | the request | `upstream_host` | `upstream_status` | `upstream_latency_ms` | `attempts` |
//! |---|---|---|---|---|
//! | answered by the upstream (any status) | filled | filled | filled | ≥ 1 |
//! | 502 connect failure or reset, 504 per-try or read timeout | filled | `null` | filled | ≥ 1 |
//! | 504 route timeout, an attempt in flight | filled (that attempt's host) | `null` | filled (that attempt so far) | attempts sent, ≥ 1 |
//! | 504 route timeout while a retry waited out its backoff | filled | the last attempt's | the last attempt's | attempts sent, ≥ 1 |
//! | the proxy's own answer: 503 `no_healthy_upstream`, 400 for a path it refuses | `null` | `null` | `null` | `0` |
//! | never reached the proxy: no route (404), the sanitizer's 400, auth's 401/403, 429, a breaker's 503, a route timeout before anything was sent | `null` | `null` | `null` | `null` |
//!
//! Nothing else is ever written: no other header, no query string, so no credential, token,
//! cookie or API key can reach the log.
//!
//! # When a line is written
//!
//! Exactly once per request, at the first of: the response body reaching its end (or failing),
//! the response body being dropped (the client went away mid-stream), the inner service
//! returning `Err` (`status: 500`), or the response future being dropped before the head was
//! ready (`status: 499`, nginx's "client closed request"). Put the layer outermost so that the
//! last case means exactly that.
//!
//! # Off the request path
//!
//! The request path only fills a small owned record — clones of `Arc`s and `Bytes`-backed header
//! values, two clock reads, a handful of extension look-ups — and `try_send`s it into a bounded
//! channel (65 536 lines). A writer thread (a plain std thread: no runtime needed) formats each
//! record with `serde_json`, writes it through a 64 KiB `BufWriter`, and flushes whenever the
//! channel runs empty and at least once a second. While lines keep coming the writer naps for a
//! millisecond between drains instead of blocking in `recv`, so a send never has to wake a
//! thread. If the channel is full a request yields a few times and then gives up: the line is
//! counted in [`LogSink::dropped`] and the request goes on. [`LogSink::flush`] waits until every
//! line sent before it is written and flushed; call it on graceful shutdown.
//! [`LogSink::off`] makes the layer a pass-through that records nothing.
//!
//! # Example
//!
//! ```
//! use std::io::{self, Write};
//! use std::sync::{Arc, Mutex};
//!
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use portcullis::observe::access_log::{AccessLogLayer, LogSink};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! /// A `Write` into a buffer the test can read.
//! #[derive(Clone, Default)]
//! struct Buffer(Arc<Mutex<Vec<u8>>>);
//!
//! impl Write for Buffer {
//!     fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
//!         self.0.lock().map_err(|_| io::Error::other("poisoned"))?.write(buf)
//!     }
//!     fn flush(&mut self) -> io::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let buffer = Buffer::default();
//! let sink = LogSink::writer(buffer.clone());
//! let svc = ServiceBuilder::new()
//!     .layer(AccessLogLayer::new(sink.clone()))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
//!     });
//!
//! let request = http::Request::get("/hello?apikey=secret").header("user-agent", "curl/8.5.0").body(()).unwrap();
//! let response = svc.oneshot(request).await.unwrap();
//! // The line is sent when the body has been streamed.
//! let body = response.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hello");
//!
//! sink.flush();
//! let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
//! let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
//! assert_eq!(line["status"], 200);
//! assert_eq!(line["path"], "/hello");
//! assert_eq!(line["bytes_sent"], 5);
//! assert_eq!(line["user_agent"], "curl/8.5.0");
//! assert!(!text.contains("secret"));
//! # }
//! ```
//!
//! [`RequestId`]: crate::ext::RequestId
//! [`NormalizedPath`]: crate::ext::NormalizedPath
//! [`MatchedRoute`]: crate::ext::MatchedRoute
//! [`ClientIp`]: crate::client_ip::ClientIp

mod body;
mod future;
mod layer;
mod record;
mod sink;

pub use body::AccessLogBody;
pub use future::ResponseFuture;
pub use layer::{AccessLogLayer, AccessLogService};
pub use sink::LogSink;

/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old paths.
pub use crate::ext::{Attempts, BreakerOutcome, RateLimitOutcome};

#[cfg(test)]
mod tests;
