//! The upstream proxy service. TODO(lead).

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// What happened upstream, in response extensions for the access log and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// The upstream authority the request went to (`127.0.0.1:9000`).
    pub host: Arc<str>,
    /// The upstream's status, `None` when no response arrived (connect failure, reset, timeout).
    pub status: Option<StatusCode>,
    /// From sending the request to receiving the upstream response head.
    pub latency: Duration,
}
