//! `circuit_breakers` on a service: Envoy's thresholds, in its flat shape or its
//! `thresholds: [{priority: DEFAULT, ...}]` shape, plus the classic breaker's keys. Parsing only;
//! the mechanism is [`CircuitBreakerLayer`].

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use super::retry_policy::DEFAULT_MAX_RETRIES;
use crate::resilience::breaker::{CircuitBreakerLayer, FailureRate};

/// Envoy's default for each of `max_connections`, `max_pending_requests`, `max_requests`.
const DEFAULT_LIMIT: u32 = 1024;

/// A service's `circuit_breakers`, resolved: the thresholds (Envoy's defaults for omitted keys)
/// and the classic breaker (off unless `consecutive_failures` or `failure_rate` is set).
///
/// One breaker per service: every route of the service shares its state, as every route to an
/// Envoy cluster shares the cluster's circuit breakers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCircuitBreakers")]
#[non_exhaustive]
pub struct CircuitBreakers {
    /// Upstream connections (requests in flight over HTTP/1.1). Default 1024.
    pub max_connections: u32,
    /// Requests waiting for a connection. Default 1024.
    pub max_pending_requests: u32,
    /// Requests in flight. Default 1024.
    pub max_requests: u32,
    /// Retries in flight to the service (Envoy skips a retry beyond it; it never answers 503).
    /// Default 3. Read by the retry layer, not by the breaker.
    pub max_retries: u32,
    /// Envoy's `track_remaining` (accepted; the remaining capacity is always in the breaker's
    /// snapshot).
    pub track_remaining: bool,
    /// Opens the circuit after this many upstream failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Opens the circuit when this failure rate is reached.
    pub failure_rate: Option<FailureRate>,
    /// How long an open circuit fails fast. Default 30 s.
    pub open_duration: Duration,
    /// Probe requests let through at a time when half-open. Default 1.
    pub half_open_probes: u32,
}

impl CircuitBreakers {
    /// The layer these settings describe, with fresh state, for a service whose upstream speaks
    /// HTTP/2 (`http2: true`: requests share connections) or HTTP/1.1.
    pub fn layer(&self, http2: bool) -> CircuitBreakerLayer {
        let mut builder = CircuitBreakerLayer::builder()
            .multiplexed(http2)
            .max_connections(self.max_connections)
            .max_pending_requests(self.max_pending_requests)
            .max_requests(self.max_requests)
            .open_duration(self.open_duration)
            .half_open_probes(self.half_open_probes);
        if let Some(failures) = self.consecutive_failures {
            builder = builder.consecutive_failures(failures);
        }
        if let Some(rate) = self.failure_rate {
            builder = builder.failure_rate(rate);
        }
        builder.build()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuitBreakers {
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_pending_requests: Option<u32>,
    #[serde(default)]
    max_requests: Option<u32>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    track_remaining: Option<bool>,
    #[serde(default)]
    thresholds: Option<Vec<RawThresholds>>,
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    failure_rate: Option<RawFailureRate>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    open_duration: Option<Duration>,
    #[serde(default)]
    half_open_probes: Option<u32>,
}

/// One entry of Envoy's `thresholds` list, or the flat keys. (`flatten` would lose
/// `deny_unknown_fields` and error paths, so the flat keys are spelled out in
/// `RawCircuitBreakers` too.)
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawThresholds {
    #[serde(default)]
    #[allow(dead_code)] // only DEFAULT parses: routes have no priority
    priority: Priority,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    max_pending_requests: Option<u32>,
    #[serde(default)]
    max_requests: Option<u32>,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    track_remaining: Option<bool>,
}

/// Envoy's routing priority. Routes have no priority here, so only `DEFAULT` is accepted.
#[derive(Deserialize, Default)]
enum Priority {
    #[default]
    #[serde(rename = "DEFAULT")]
    Default,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailureRate {
    #[serde(default)]
    percent: Option<u32>,
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    window: Option<Duration>,
    #[serde(default)]
    minimum_requests: Option<u32>,
}

impl TryFrom<RawCircuitBreakers> for CircuitBreakers {
    type Error = String;

    fn try_from(raw: RawCircuitBreakers) -> Result<Self, String> {
        let flat = RawThresholds {
            priority: Priority::Default,
            max_connections: raw.max_connections,
            max_pending_requests: raw.max_pending_requests,
            max_requests: raw.max_requests,
            max_retries: raw.max_retries,
            track_remaining: raw.track_remaining,
        };
        let flat_given = flat.max_connections.is_some()
            || flat.max_pending_requests.is_some()
            || flat.max_requests.is_some()
            || flat.max_retries.is_some()
            || flat.track_remaining.is_some();
        let thresholds = match raw.thresholds {
            Some(_) if flat_given => {
                return Err("give the thresholds either as flat keys (`max_requests: ...`) or as \
                            `thresholds: [{priority: DEFAULT, ...}]`, not both"
                    .to_owned());
            }
            Some(list) if list.len() > 1 => {
                return Err(format!(
                    "`thresholds` has {} entries, expected one (priority DEFAULT)",
                    list.len()
                ));
            }
            Some(list) => list.into_iter().next().unwrap_or_default(),
            None => flat,
        };

        if raw.consecutive_failures == Some(0) {
            return Err("`consecutive_failures` is 0, expected at least 1".to_owned());
        }
        if raw.half_open_probes == Some(0) {
            return Err("`half_open_probes` is 0, expected at least 1".to_owned());
        }
        let failure_rate = match raw.failure_rate {
            None => None,
            Some(rate) => {
                let percent = rate.percent.unwrap_or(50);
                if !(1..=100).contains(&percent) {
                    return Err(format!("`failure_rate.percent` is {percent}, expected 1 to 100"));
                }
                let window = rate.window.unwrap_or(Duration::from_secs(10));
                if window < Duration::from_millis(10) {
                    return Err("`failure_rate.window` is under 10ms, expected a longer window".to_owned());
                }
                if rate.minimum_requests == Some(0) {
                    return Err("`failure_rate.minimum_requests` is 0, expected at least 1".to_owned());
                }
                // `percent` is checked above, so the cast keeps its value.
                let mut built = FailureRate::percent(percent as u8).window(window);
                if let Some(minimum) = rate.minimum_requests {
                    built = built.minimum_requests(minimum);
                }
                Some(built)
            }
        };
        let classic = raw.consecutive_failures.is_some() || failure_rate.is_some();
        if !classic && (raw.open_duration.is_some() || raw.half_open_probes.is_some()) {
            return Err("`open_duration` and `half_open_probes` need `consecutive_failures` or \
                        `failure_rate` to open the circuit"
                .to_owned());
        }
        Ok(CircuitBreakers {
            max_connections: thresholds.max_connections.unwrap_or(DEFAULT_LIMIT),
            max_pending_requests: thresholds.max_pending_requests.unwrap_or(DEFAULT_LIMIT),
            max_requests: thresholds.max_requests.unwrap_or(DEFAULT_LIMIT),
            max_retries: thresholds.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            track_remaining: thresholds.track_remaining.unwrap_or(false),
            consecutive_failures: raw.consecutive_failures,
            failure_rate,
            open_duration: raw.open_duration.unwrap_or(Duration::from_secs(30)),
            half_open_probes: raw.half_open_probes.unwrap_or(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigErrorKind};

    fn load(breakers: &str) -> Result<Config, crate::config::ConfigError> {
        let yaml = format!(
            "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n  circuit_breakers:\n{breakers}"
        );
        Config::from_yaml(&yaml, "test.yaml")
    }

    fn breakers(yaml: &str) -> CircuitBreakers {
        let config = load(yaml).unwrap_or_else(|e| panic!("{e}"));
        config.services[0].circuit_breakers.clone().expect("circuit_breakers")
    }

    fn error(yaml: &str) -> String {
        let err = load(yaml).expect_err("an error");
        assert_eq!(err.kind(), ConfigErrorKind::Parse);
        err.to_string()
    }

    #[test]
    fn the_seed_envoy_shape_parses_as_written() {
        let seed = "    thresholds:\n    - priority: DEFAULT\n      max_connections: 1000\n      max_pending_requests: 500\n      max_requests: 2000\n      max_retries: 10\n      track_remaining: true\n";
        let b = breakers(seed);
        assert_eq!(
            (b.max_connections, b.max_pending_requests, b.max_requests, b.max_retries, b.track_remaining),
            (1000, 500, 2000, 10, true)
        );
        assert_eq!((b.consecutive_failures, b.failure_rate), (None, None));
        let snapshot = b.layer(false).snapshot();
        assert_eq!(
            (snapshot.max_connections, snapshot.max_pending_requests, snapshot.max_requests),
            (1000, 500, 2000)
        );
    }

    #[test]
    fn the_flat_shape_and_envoys_defaults() {
        let b = breakers(
            "    {max_connections: 1000, max_pending_requests: 500, max_requests: 2000, max_retries: 10}\n",
        );
        assert_eq!(
            (b.max_connections, b.max_pending_requests, b.max_requests, b.max_retries),
            (1000, 500, 2000, 10)
        );
        let b = breakers("    {max_requests: 1}\n");
        assert_eq!(
            (b.max_connections, b.max_pending_requests, b.max_requests, b.max_retries),
            (1024, 1024, 1, 3)
        );
        let b = breakers("    {thresholds: [{max_requests: 7}]}\n");
        assert_eq!(b.max_requests, 7, "priority defaults to DEFAULT");
    }

    #[test]
    fn the_classic_breakers_keys() {
        let b = breakers(
            "    consecutive_failures: 5\n    failure_rate: {percent: 40, window: 30s, minimum_requests: 50}\n    open_duration: 10s\n    half_open_probes: 2\n",
        );
        assert_eq!(b.consecutive_failures, Some(5));
        assert_eq!(
            b.failure_rate,
            Some(FailureRate::percent(40).window(Duration::from_secs(30)).minimum_requests(50))
        );
        assert_eq!((b.open_duration, b.half_open_probes), (Duration::from_secs(10), 2));
        let b = breakers("    failure_rate: {}\n");
        assert_eq!(b.failure_rate, Some(FailureRate::percent(50)));
        assert_eq!((b.open_duration, b.half_open_probes, b.max_requests), (Duration::from_secs(30), 1, 1024));
    }

    #[test]
    fn errors_name_the_path_and_what_was_expected() {
        let err = error("    {max_requests: 1, thresholds: [{max_requests: 2}]}\n");
        assert!(
            err.starts_with("test.yaml: services[0].circuit_breakers: give the thresholds either"),
            "{err}"
        );
        let err = error("    thresholds: [{priority: HIGH, max_requests: 1}]\n");
        assert!(err.starts_with("test.yaml: services[0].circuit_breakers.thresholds[0].priority: unknown variant `HIGH`, expected `DEFAULT`"), "{err}");
        let err = error("    thresholds: [{priority: DEFAULT}, {priority: DEFAULT}]\n");
        assert!(err.contains("`thresholds` has 2 entries, expected one"), "{err}");
        let err = error("    thresholds: [{max_requestz: 1}]\n");
        assert!(
            err.starts_with(
                "test.yaml: services[0].circuit_breakers.thresholds[0]: unknown field `max_requestz`"
            ),
            "{err}"
        );
        let err = error("    {max_requestz: 1}\n");
        assert!(
            err.starts_with("test.yaml: services[0].circuit_breakers: unknown field `max_requestz`"),
            "{err}"
        );
        let err = error("    {max_requests: -1}\n");
        assert!(err.contains("services[0].circuit_breakers"), "{err}");
        let err = error("    {consecutive_failures: 0}\n");
        assert!(err.contains("`consecutive_failures` is 0, expected at least 1"), "{err}");
        let err = error("    {consecutive_failures: 1, half_open_probes: 0}\n");
        assert!(err.contains("`half_open_probes` is 0, expected at least 1"), "{err}");
        let err = error("    {failure_rate: {percent: 101}}\n");
        assert!(err.contains("`failure_rate.percent` is 101, expected 1 to 100"), "{err}");
        let err = error("    {failure_rate: {window: 1ms}}\n");
        assert!(err.contains("`failure_rate.window` is under 10ms"), "{err}");
        let err = error("    {failure_rate: {minimum_requests: 0}}\n");
        assert!(err.contains("`failure_rate.minimum_requests` is 0"), "{err}");
        let err = error("    {failure_rate: {window: soon}}\n");
        assert!(
            err.contains("services[0].circuit_breakers.failure_rate.window: invalid duration `soon`"),
            "{err}"
        );
        let err = error("    {failure_rate: {rate: 5}}\n");
        assert!(err.contains("services[0].circuit_breakers.failure_rate: unknown field `rate`"), "{err}");
        let err = error("    {open_duration: 5s}\n");
        assert!(err.contains("need `consecutive_failures` or `failure_rate`"), "{err}");
    }
}
