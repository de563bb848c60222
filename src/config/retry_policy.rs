//! `retry_policy` on services and routes: Envoy's retry policy keys, turned into a
//! [`RetryLayer`] and a [`RetryBudget`]. A route's `retry_policy` replaces its service's whole.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::duration;
use super::error::Invalid;
use crate::resilience::budget::{BudgetError, MaxRetries, RetryBudget};
use crate::resilience::classify::RetryOn;
use crate::resilience::retry::RetryLayer;

/// Envoy's default `max_retries` circuit-breaker threshold: retries in flight per service when no
/// `budget` is configured.
pub const DEFAULT_MAX_RETRIES: u32 = 3;

/// `retry_policy:` — when and how to retry a request (Envoy's `route.RetryPolicy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Envoy's comma-separated conditions: `5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `retriable-4xx`, `retriable-status-codes`. Required.
    #[serde(deserialize_with = "retry_on")]
    pub retry_on: String,
    /// Retries after the first try. Default 1, as in Envoy.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    /// Time allowed for each try (a timeout outcome when it expires). None: only the route
    /// timeout applies.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub per_try_timeout: Option<Duration>,
    /// `[previous_hosts]` or Envoy's `[{name: envoy.retry_host_predicates.previous_hosts}]`.
    #[serde(default)]
    pub retry_host_predicate: Vec<RetryHostPredicate>,
    /// Statuses retried under `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Also retry POST, PATCH and other non-idempotent methods. Default false.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Full-jitter backoff between tries.
    #[serde(default)]
    pub retry_back_off: RetryBackOff,
    /// The retry budget; without one, at most [`DEFAULT_MAX_RETRIES`] retries are in flight per
    /// service (Envoy's `max_retries` default).
    #[serde(default)]
    pub budget: Option<RetryBudgetConfig>,
}

fn default_num_retries() -> u32 {
    1
}

/// A `retry_host_predicate` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHostPredicate {
    /// Envoy's `previous_hosts`: a retry goes to a host not tried yet for this request.
    PreviousHosts,
}

/// `retry_back_off:` (Envoy's keys).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOff {
    /// The first retry waits up to this long. Default 25 ms.
    #[serde(default = "default_base_interval", deserialize_with = "duration::deserialize")]
    pub base_interval: Duration,
    /// No retry waits longer. Default 10 × `base_interval` (250 ms), as in Envoy.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub max_interval: Option<Duration>,
}

impl Default for RetryBackOff {
    fn default() -> Self {
        Self { base_interval: default_base_interval(), max_interval: None }
    }
}

fn default_base_interval() -> Duration {
    Duration::from_millis(25)
}

impl RetryBackOff {
    /// `max_interval`, or its default.
    pub fn max_interval(&self) -> Duration {
        self.max_interval.unwrap_or(self.base_interval.saturating_mul(10))
    }
}

/// `budget:` — Envoy's `retry_budget` (`budget_percent`, `min_retry_concurrency`) plus
/// Finagle's rate budget (`retry_ratio`, `min_retries_per_second`, `ttl`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries in flight may be this percentage of active requests. Default 20. Envoy's
    /// `{value: 20.0}` form is accepted too.
    #[serde(default = "default_budget_percent", deserialize_with = "percent")]
    pub budget_percent: f64,
    /// …but at least this many. Default 3.
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
    /// Retries allowed per request over `ttl` (0.2: one per five requests). Default 0.2.
    #[serde(default = "default_retry_ratio")]
    pub retry_ratio: f32,
    /// Retries always allowed per second, for quiet routes. Default 10.
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    /// How long a request's allowance lasts, 1 s to 60 s. Default 10 s.
    #[serde(default = "default_ttl", deserialize_with = "duration::deserialize")]
    pub ttl: Duration,
}

fn default_budget_percent() -> f64 {
    20.0
}
fn default_min_retry_concurrency() -> u32 {
    3
}
fn default_retry_ratio() -> f32 {
    0.2
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The retry layer this policy describes.
    pub fn layer(&self) -> RetryLayer {
        // Validated at load: both parse.
        let retry_on = self.retry_on.parse::<RetryOn>().unwrap_or_default();
        let codes = self.retriable_status_codes.iter().filter_map(|c| StatusCode::from_u16(*c).ok());
        let mut layer = RetryLayer::new(retry_on.with_status_codes(codes))
            .num_retries(self.num_retries)
            .backoff(self.retry_back_off.base_interval, self.retry_back_off.max_interval())
            .previous_hosts(self.retry_host_predicate.contains(&RetryHostPredicate::PreviousHosts))
            .retry_non_idempotent(self.retry_non_idempotent);
        if let Some(timeout) = self.per_try_timeout {
            layer = layer.per_try_timeout(timeout);
        }
        layer
    }

    /// The budget this policy describes, its retries in flight counted against `max_retries`
    /// (the service's `circuit_breakers` threshold, or [`DEFAULT_MAX_RETRIES`]; one cap per
    /// service, shared by every route's budget as Envoy keeps it per cluster).
    pub fn budget(&self, max_retries: &MaxRetries) -> Result<RetryBudget, BudgetError> {
        let mut builder = RetryBudget::builder().shared_max_retries(max_retries);
        if let Some(budget) = &self.budget {
            builder = builder.concurrency(budget.budget_percent, budget.min_retry_concurrency).rate(
                budget.retry_ratio,
                budget.min_retries_per_second,
                budget.ttl,
            );
        }
        builder.build()
    }

    /// The checks that need more than one key; `at` is the policy's path.
    pub(crate) fn validate(&self, at: &str) -> Result<(), Invalid> {
        if self.per_try_timeout == Some(Duration::ZERO) {
            return Err(Invalid::new(format!("{at}.per_try_timeout"), "expected a duration above zero"));
        }
        let back_off = &self.retry_back_off;
        if back_off.base_interval.is_zero() {
            return Err(Invalid::new(
                format!("{at}.retry_back_off.base_interval"),
                "expected a duration above zero",
            ));
        }
        if back_off.max_interval() < back_off.base_interval {
            return Err(Invalid::new(
                format!("{at}.retry_back_off.max_interval"),
                "expected a duration at least `base_interval`",
            ));
        }
        let lists_codes = self.retry_on.split(',').any(|c| c.trim() == "retriable-status-codes");
        for (index, code) in self.retriable_status_codes.iter().enumerate() {
            if !(100..=599).contains(code) {
                return Err(Invalid::new(
                    format!("{at}.retriable_status_codes[{index}]"),
                    format!("invalid status `{code}`, expected an HTTP status from 100 to 599"),
                ));
            }
        }
        if !self.retriable_status_codes.is_empty() && !lists_codes {
            return Err(Invalid::new(
                format!("{at}.retriable_status_codes"),
                "these codes are retried only with `retriable-status-codes` in `retry_on`",
            ));
        }
        if let Err(error) = self.budget(&MaxRetries::new(DEFAULT_MAX_RETRIES)) {
            let key = match error {
                BudgetError::Percent(_) => "budget_percent",
                BudgetError::Ratio(_) => "retry_ratio",
                BudgetError::Ttl(_) => "ttl",
                BudgetError::MinPerSecond(_) => "min_retries_per_second",
            };
            return Err(Invalid::new(format!("{at}.budget.{key}"), error.to_string()));
        }
        Ok(())
    }
}

fn retry_on<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<RetryOn>().map_err(de::Error::custom)?;
    Ok(text)
}

const PREDICATE_EXPECTED: &str = "`previous_hosts` or `{name: envoy.retry_host_predicates.previous_hosts}`";

impl<'de> Deserialize<'de> for RetryHostPredicate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Clone, Copy)]
        struct PredicateVisitor;

        impl<'de> Visitor<'de> for PredicateVisitor {
            type Value = RetryHostPredicate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(PREDICATE_EXPECTED)
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<RetryHostPredicate, E> {
                match name {
                    "previous_hosts" | "envoy.retry_host_predicates.previous_hosts" => {
                        Ok(RetryHostPredicate::PreviousHosts)
                    }
                    other => Err(E::custom(format!(
                        "unknown retry host predicate `{other}`, expected {PREDICATE_EXPECTED}"
                    ))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RetryHostPredicate, A::Error> {
                let mut predicate = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "name" => predicate = Some(self.visit_str(&map.next_value::<String>()?)?),
                        other => return Err(de::Error::unknown_field(other, &["name"])),
                    }
                }
                predicate.ok_or_else(|| de::Error::missing_field("name"))
            }
        }

        deserializer.deserialize_any(PredicateVisitor)
    }
}

/// `budget_percent: 20` or Envoy's `budget_percent: {value: 20.0}`.
fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    struct PercentVisitor;

    impl<'de> Visitor<'de> for PercentVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a percentage like `20` or `{value: 20.0}`")
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<f64, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<f64, E> {
            Ok(value as f64)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<f64, A::Error> {
            let mut value = None;
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "value" => value = Some(map.next_value::<f64>()?),
                    other => return Err(de::Error::unknown_field(other, &["value"])),
                }
            }
            value.ok_or_else(|| de::Error::missing_field("value"))
        }
    }

    deserializer.deserialize_any(PercentVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    fn load(policy: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(
            &format!(
                "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n  retry_policy: {policy}\n  routes:\n  - paths: [/a]\n"
            ),
            "test.yaml",
        )
    }

    fn error(policy: &str) -> String {
        load(policy).unwrap_err().to_string()
    }

    #[test]
    fn the_seed_envoy_policy_parses_as_written() {
        let config = load(
            "\n    retry_on: \"5xx,reset,connect-failure,retriable-4xx\"\n    num_retries: 2\n    per_try_timeout: 2s\n    retry_host_predicate:\n    - name: envoy.retry_host_predicates.previous_hosts\n",
        )
        .unwrap();
        let policy = config.services[0].retry_policy.as_ref().unwrap();
        assert_eq!(policy.num_retries, 2);
        assert_eq!(policy.per_try_timeout, Some(Duration::from_secs(2)));
        assert_eq!(policy.retry_host_predicate, [RetryHostPredicate::PreviousHosts]);
        assert_eq!(
            (policy.retry_back_off.base_interval, policy.retry_back_off.max_interval()),
            (Duration::from_millis(25), Duration::from_millis(250))
        );
        assert!(policy.budget.is_none() && !policy.retry_non_idempotent);
    }

    #[test]
    fn every_key_in_its_short_form() {
        let config = load(
            "{retry_on: \"gateway-error,retriable-status-codes\", num_retries: 3, retry_host_predicate: [previous_hosts], retriable_status_codes: [418], retry_non_idempotent: true, retry_back_off: {base_interval: 10ms, max_interval: 1s}, budget: {budget_percent: {value: 50.0}, min_retry_concurrency: 5, retry_ratio: 0.5, min_retries_per_second: 2, ttl: 5s}}",
        )
        .unwrap();
        let policy = config.services[0].retry_policy.as_ref().unwrap();
        assert_eq!(policy.retry_host_predicate, [RetryHostPredicate::PreviousHosts]);
        assert_eq!(policy.retriable_status_codes, [418]);
        assert_eq!(policy.retry_back_off.max_interval(), Duration::from_secs(1));
        let budget = policy.budget.unwrap();
        assert_eq!(
            (budget.budget_percent, budget.min_retry_concurrency, budget.min_retries_per_second, budget.ttl),
            (50.0, 5, 2, Duration::from_secs(5))
        );
        assert!(policy.budget(&MaxRetries::new(DEFAULT_MAX_RETRIES)).is_ok());
    }

    #[test]
    fn errors_name_the_file_the_path_and_what_was_expected() {
        let cases = [
            ("{num_retries: 2}", "test.yaml: services[0].retry_policy: missing field `retry_on`"),
            (
                "{retry_on: \"5xx,sometimes\"}",
                "test.yaml: services[0].retry_policy.retry_on: unknown retry_on condition `sometimes`: expected a comma-separated list of 5xx, gateway-error",
            ),
            (
                "{retry_on: 5xx, retry_host_predicate: [{name: envoy.retry_host_predicates.canary_hosts}]}",
                "test.yaml: services[0].retry_policy.retry_host_predicate[0]: unknown retry host predicate `envoy.retry_host_predicates.canary_hosts`, expected `previous_hosts` or `{name: envoy.retry_host_predicates.previous_hosts}`",
            ),
            (
                "{retry_on: 5xx, per_try_timeout: soon}",
                "test.yaml: services[0].retry_policy.per_try_timeout: invalid duration `soon`",
            ),
            (
                "{retry_on: 5xx, per_try_timeout: 0s}",
                "test.yaml: services[0].retry_policy.per_try_timeout: expected a duration above zero",
            ),
            (
                "{retry_on: 5xx, retriable_status_codes: [418]}",
                "test.yaml: services[0].retry_policy.retriable_status_codes: these codes are retried only with `retriable-status-codes` in `retry_on`",
            ),
            (
                "{retry_on: retriable-status-codes, retriable_status_codes: [200, 99]}",
                "test.yaml: services[0].retry_policy.retriable_status_codes[1]: invalid status `99`, expected an HTTP status from 100 to 599",
            ),
            (
                "{retry_on: 5xx, retry_back_off: {base_interval: 100ms, max_interval: 50ms}}",
                "test.yaml: services[0].retry_policy.retry_back_off.max_interval: expected a duration at least `base_interval`",
            ),
            (
                "{retry_on: 5xx, budget: {ttl: 90s}}",
                "test.yaml: services[0].retry_policy.budget.ttl: ttl 90s is out of range: expected from 1s to 60s",
            ),
            (
                "{retry_on: 5xx, budget: {budget_percent: 150}}",
                "test.yaml: services[0].retry_policy.budget.budget_percent: budget_percent 150 is out of range: expected a percentage from 0 to 100",
            ),
            ("{retry_on: 5xx, tries: 3}", "test.yaml: services[0].retry_policy: unknown field `tries`"),
        ];
        for (policy, expected) in cases {
            let error = error(policy);
            assert!(error.starts_with(expected), "{policy}\n  got:      {error}\n  expected: {expected}");
        }
        // On a route, the path says so.
        let err = Config::from_yaml(
            "_format_version: \"3.0\"\nservices:\n- name: svc\n  url: http://127.0.0.1:9000\n  routes:\n  - paths: [/a]\n    retry_policy: {retry_on: 5xx, per_try_timeout: 0ms}\n",
            "test.yaml",
        )
        .unwrap_err();
        assert_eq!(err.path(), "services[0].routes[0].retry_policy.per_try_timeout");
    }
}
