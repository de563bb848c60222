//! What the gateway sees: request IDs, the JSON access log, metrics and request spans.

pub mod access_log;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod request_id;
pub mod request_span;
