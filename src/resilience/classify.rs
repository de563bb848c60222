//! The one response classifier: what happened to a request, as the breaker, outlier detection,
//! retries, metrics and the access log all need to know it.
//!
//! ```
//! use http::{Response, StatusCode};
//! use portcullis::resilience::classify::{Outcome, RetryOn};
//!
//! // A response with no upstream information is the gateway's own answer (here a 429).
//! let local = Response::builder().status(429).body(()).unwrap();
//! assert_eq!(Outcome::of(&local), Outcome::Local(StatusCode::TOO_MANY_REQUESTS));
//! assert!(!Outcome::of(&local).is_failure());
//!
//! let retry_on: RetryOn = "5xx,reset,connect-failure,retriable-4xx".parse().unwrap();
//! assert!(retry_on.should_retry(Outcome::Upstream(StatusCode::CONFLICT)));
//! assert!(!retry_on.should_retry(Outcome::Upstream(StatusCode::NOT_FOUND)));
//! assert!(retry_on.should_retry(Outcome::ConnectFailure));
//! ```

use std::fmt;
use std::str::FromStr;

use http::{Response, StatusCode};

/// Moved to the ground floor ([`crate::ext`]); re-exported here for the old path.
pub use crate::ext::UpstreamFailure;
use crate::ext::{TimedOut, UpstreamInfo};

/// What happened to one request (or one attempt of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream answered with this status.
    Upstream(StatusCode),
    /// No connection to the upstream could be made.
    ConnectFailure,
    /// The upstream connection reset, or the upstream's response was invalid.
    Reset,
    /// The request or attempt timed out.
    Timeout,
    /// The gateway answered itself (401, 403, 404, 413, 429, an overflow 503…): says nothing
    /// about the upstream, so it never counts as an upstream success or failure.
    Local(StatusCode),
}

impl Outcome {
    /// Classifies a response by the extensions the proxy and the timeout layers insert
    /// ([`UpstreamInfo`], [`TimedOut`]).
    pub fn of<B>(response: &Response<B>) -> Self {
        let extensions = response.extensions();
        if let Some(info) = extensions.get::<UpstreamInfo>() {
            if let Some(status) = info.status {
                return Outcome::Upstream(status);
            }
            match info.failure {
                Some(UpstreamFailure::ConnectFailure) => return Outcome::ConnectFailure,
                Some(UpstreamFailure::Reset) => return Outcome::Reset,
                Some(UpstreamFailure::Timeout) => return Outcome::Timeout,
                None => {}
            }
        }
        if extensions.get::<TimedOut>().is_some() {
            return Outcome::Timeout;
        }
        Outcome::Local(response.status())
    }

    /// An upstream failure as Envoy's `5xx` counts it: a 5xx status, a connect failure, a reset
    /// or a timeout. Local answers are never failures.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Upstream(status) => status.is_server_error(),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
            Outcome::Local(_) => false,
        }
    }

    /// A gateway failure as Envoy's `gateway-error` and `consecutive_gateway_failure` count it:
    /// 502, 503 or 504 from the upstream, a connect failure, a reset or a timeout.
    pub fn is_gateway_failure(self) -> bool {
        match self {
            Outcome::Upstream(status) => matches!(status.as_u16(), 502..=504),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
            Outcome::Local(_) => false,
        }
    }

    /// An upstream success: the upstream answered with a status below 500.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Upstream(status) if !status.is_server_error())
    }

    /// A short fixed name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Upstream(status) if status.is_server_error() => "upstream_5xx",
            Outcome::Upstream(_) => "upstream_ok",
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Local(_) => "local",
        }
    }
}

/// Envoy's `retry_on` conditions (SPEC §6): which outcomes a retry policy retries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    bits: u8,
    status_codes: Vec<StatusCode>,
}

impl RetryOn {
    const FIVE_XX: u8 = 1;
    const GATEWAY_ERROR: u8 = 1 << 1;
    const RESET: u8 = 1 << 2;
    const CONNECT_FAILURE: u8 = 1 << 3;
    const RETRIABLE_4XX: u8 = 1 << 4;

    /// The condition names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 6] =
        ["5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "retriable-status-codes"];

    /// Also retries these upstream statuses (Envoy's `retriable-status-codes` with
    /// `retriable_status_codes`).
    pub fn with_status_codes(mut self, codes: impl IntoIterator<Item = StatusCode>) -> Self {
        self.status_codes.extend(codes);
        self
    }

    /// Whether a retry policy with these conditions retries `outcome`.
    ///
    /// Envoy's rules: `5xx` covers every upstream failure (5xx status, reset, connect failure,
    /// per-try timeout); `gateway-error` covers 502/503/504 and the same transport failures;
    /// `reset` covers resets, connect failures and timeouts; `connect-failure` only connect
    /// failures; `retriable-4xx` only 409. Local answers are never retried.
    pub fn should_retry(&self, outcome: Outcome) -> bool {
        let any = |bits: u8| self.bits & bits != 0;
        match outcome {
            Outcome::Upstream(status) => {
                (any(Self::FIVE_XX) && status.is_server_error())
                    || (any(Self::GATEWAY_ERROR) && outcome.is_gateway_failure())
                    || (any(Self::RETRIABLE_4XX) && status == StatusCode::CONFLICT)
                    || self.status_codes.contains(&status)
            }
            Outcome::ConnectFailure => {
                any(Self::FIVE_XX | Self::GATEWAY_ERROR | Self::RESET | Self::CONNECT_FAILURE)
            }
            Outcome::Reset | Outcome::Timeout => any(Self::FIVE_XX | Self::GATEWAY_ERROR | Self::RESET),
            Outcome::Local(_) => false,
        }
    }
}

/// A `retry_on` string naming an unknown condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown retry_on condition `{0}`: expected a comma-separated list of {names}", names = RetryOn::NAMES.join(", "))]
pub struct ParseRetryOnError(pub String);

impl FromStr for RetryOn {
    type Err = ParseRetryOnError;

    /// Parses Envoy's comma-separated list (`"5xx,reset,connect-failure,retriable-4xx"`).
    /// `retriable-status-codes` is accepted; the codes themselves come from
    /// [`RetryOn::with_status_codes`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bits = 0;
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            bits |= match name {
                "5xx" => Self::FIVE_XX,
                "gateway-error" => Self::GATEWAY_ERROR,
                "reset" => Self::RESET,
                "connect-failure" => Self::CONNECT_FAILURE,
                "retriable-4xx" => Self::RETRIABLE_4XX,
                "retriable-status-codes" => 0,
                other => return Err(ParseRetryOnError(other.to_owned())),
            };
        }
        Ok(RetryOn { bits, status_codes: Vec::new() })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Upstream(status) | Outcome::Local(status) => {
                write!(f, "{} {}", self.as_str(), status.as_u16())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn upstream(status: Option<u16>, failure: Option<UpstreamFailure>) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status.unwrap_or(502)).unwrap();
        response.extensions_mut().insert(UpstreamInfo {
            host: Arc::from("127.0.0.1:1"),
            status: status.map(|s| StatusCode::from_u16(s).unwrap()),
            latency: Duration::ZERO,
            failure,
        });
        response
    }

    #[test]
    fn responses_are_classified_by_what_the_proxy_and_timeout_recorded() {
        assert_eq!(
            Outcome::of(&upstream(Some(500), None)),
            Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            Outcome::of(&upstream(None, Some(UpstreamFailure::ConnectFailure))),
            Outcome::ConnectFailure
        );
        assert_eq!(Outcome::of(&upstream(None, Some(UpstreamFailure::Reset))), Outcome::Reset);
        assert_eq!(Outcome::of(&upstream(None, Some(UpstreamFailure::Timeout))), Outcome::Timeout);
        // The proxy's own 413 (request body over the limit) is local: not the upstream's fault.
        let mut too_large = upstream(None, None);
        *too_large.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        assert_eq!(Outcome::of(&too_large), Outcome::Local(StatusCode::PAYLOAD_TOO_LARGE));
        let mut timed_out = Response::new(());
        *timed_out.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        timed_out.extensions_mut().insert(TimedOut);
        assert_eq!(Outcome::of(&timed_out), Outcome::Timeout);
        // The gateway's own 401/429/503 never count against the upstream.
        for status in [401, 429, 503] {
            let mut own = Response::new(());
            *own.status_mut() = StatusCode::from_u16(status).unwrap();
            let outcome = Outcome::of(&own);
            assert_eq!(outcome, Outcome::Local(own.status()));
            assert!(!outcome.is_failure() && !outcome.is_gateway_failure() && !outcome.is_success());
        }
    }

    #[test]
    fn failure_kinds() {
        let s = |code| Outcome::Upstream(StatusCode::from_u16(code).unwrap());
        assert!(s(500).is_failure() && !s(500).is_gateway_failure());
        assert!(s(503).is_failure() && s(503).is_gateway_failure());
        assert!(s(200).is_success() && s(404).is_success() && !s(404).is_failure());
        for transport in [Outcome::ConnectFailure, Outcome::Reset, Outcome::Timeout] {
            assert!(transport.is_failure() && transport.is_gateway_failure() && !transport.is_success());
        }
    }

    #[test]
    fn retry_on_follows_envoy() {
        let s = |code| Outcome::Upstream(StatusCode::from_u16(code).unwrap());
        let five_xx: RetryOn = "5xx".parse().unwrap();
        assert!(five_xx.should_retry(s(500)) && five_xx.should_retry(s(503)));
        assert!(five_xx.should_retry(Outcome::Reset) && five_xx.should_retry(Outcome::ConnectFailure));
        assert!(five_xx.should_retry(Outcome::Timeout) && !five_xx.should_retry(s(409)));

        let gateway: RetryOn = "gateway-error".parse().unwrap();
        assert!(!gateway.should_retry(s(500)), "gateway-error does not retry 500");
        assert!(gateway.should_retry(s(502)) && gateway.should_retry(s(504)));
        assert!(gateway.should_retry(Outcome::Timeout));

        let four: RetryOn = "retriable-4xx".parse().unwrap();
        assert!(four.should_retry(s(409)) && !four.should_retry(s(404)) && !four.should_retry(s(429)));

        let connect: RetryOn = "connect-failure".parse().unwrap();
        assert!(connect.should_retry(Outcome::ConnectFailure) && !connect.should_retry(Outcome::Reset));

        let reset: RetryOn = " reset ".parse().unwrap();
        assert!(reset.should_retry(Outcome::Reset) && reset.should_retry(Outcome::Timeout));
        assert!(!reset.should_retry(s(503)));

        let codes =
            "retriable-status-codes".parse::<RetryOn>().unwrap().with_status_codes([StatusCode::IM_A_TEAPOT]);
        assert!(codes.should_retry(s(418)) && !codes.should_retry(s(500)));

        let all: RetryOn = "5xx,gateway-error,reset,connect-failure,retriable-4xx".parse().unwrap();
        for local in [401, 429, 503] {
            assert!(!all.should_retry(Outcome::Local(StatusCode::from_u16(local).unwrap())));
        }
        assert_eq!("5xx,bogus".parse::<RetryOn>().unwrap_err(), ParseRetryOnError("bogus".into()));
    }
}
