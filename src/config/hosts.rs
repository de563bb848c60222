//! A service's host set in config: `targets` (Kong's upstream targets), the load-balancing
//! policy, `healthy_panic_threshold` and Envoy's `outlier_detection`. Mechanism lives in
//! [`resilience::balance`](crate::resilience::balance) and
//! [`resilience::outlier`](crate::resilience::outlier); this module only reads the keys.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::duration;
use super::error::Invalid;
use super::schema::Service;
use crate::resilience::balance::{HostSet, HostSetError, LoadBalancer};
use crate::resilience::outlier::OutlierDetection;

/// Kong's default target port when a target has none.
pub const DEFAULT_TARGET_PORT: u16 = 8000;
/// Kong's default target weight.
pub const DEFAULT_TARGET_WEIGHT: u32 = 100;

/// One `targets[]` entry: `"host:port"` or `{target: "host:port", weight: 100}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`; the port is Kong's 8000 when the file gives none.
    pub target: String,
    /// Relative share of traffic, 1 to 65535 (Kong's default 100).
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetMap {
    target: String,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    #[allow(dead_code)] // accepted for Kong compatibility
    tags: Vec<String>,
}

fn default_weight() -> u32 {
    DEFAULT_TARGET_WEIGHT
}

impl Target {
    fn parse<E: de::Error>(text: &str, weight: u32) -> Result<Self, E> {
        let expected =
            || E::custom(format_args!("invalid target `{text}`, expected `host:port` like `127.0.0.1:9001`"));
        let authority: http::uri::Authority = text.parse().map_err(|_| expected())?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(expected());
        }
        if text.ends_with(':') {
            return Err(expected());
        }
        let target = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:{DEFAULT_TARGET_PORT}", authority.host()),
        };
        if !(1..=65535).contains(&weight) {
            return Err(E::custom(format_args!(
                "invalid weight {weight} for target `{text}`, expected 1 to 65535 (remove a target to take it out)"
            )));
        }
        Ok(Self { target, weight })
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = Target;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`host:port` or `{target: host:port, weight: 100}`")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Target, E> {
                Target::parse(text, DEFAULT_TARGET_WEIGHT)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Target, A::Error> {
                let map = TargetMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Target::parse(&map.target, map.weight)
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

/// `lb_policy` (Envoy: `ROUND_ROBIN`, `LEAST_REQUEST`) or `algorithm` (Kong: `round-robin`,
/// `least-connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbPolicy(pub LoadBalancer);

impl<'de> Deserialize<'de> for LbPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().replace('-', "_").as_str() {
            "round_robin" => Ok(Self(LoadBalancer::RoundRobin)),
            // Kong's least-connections counts in-flight requests too; P2C is Envoy's version.
            "least_request" | "least_connections" => Ok(Self(LoadBalancer::LeastRequest)),
            "consistent_hashing" | "ring_hash" | "maglev" | "latency" | "random" => {
                Err(de::Error::custom(format_args!(
                    "load-balancing policy `{text}` is not supported yet, expected `ROUND_ROBIN` (`round-robin`) or `LEAST_REQUEST` (`least-connections`)"
                )))
            }
            _ => Err(de::Error::custom(format_args!(
                "unknown load-balancing policy `{text}`, expected `ROUND_ROBIN` (`round-robin`) or `LEAST_REQUEST` (`least-connections`)"
            ))),
        }
    }
}

/// `outlier_detection:` — Envoy's keys and defaults (see
/// [`OutlierDetection`](crate::resilience::outlier::OutlierDetection)).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetectionConfig {
    /// Upstream failures in a row that eject a host (default 5).
    pub consecutive_5xx: u32,
    /// Gateway failures in a row that eject a host (default 5).
    pub consecutive_gateway_failure: u32,
    /// Percent chance a consecutive-5xx detection ejects (default 100).
    #[serde(deserialize_with = "percent")]
    pub enforcing_consecutive_5xx: u8,
    /// Percent chance a consecutive-gateway-failure detection ejects (default 0).
    #[serde(deserialize_with = "percent")]
    pub enforcing_consecutive_gateway_failure: u8,
    /// Percent chance a success-rate detection ejects (default 100).
    #[serde(deserialize_with = "percent")]
    pub enforcing_success_rate: u8,
    /// Between success-rate evaluations (default 10 s).
    #[serde(deserialize_with = "positive_duration")]
    pub interval: Duration,
    /// The first ejection's length (default 30 s).
    #[serde(deserialize_with = "positive_duration")]
    pub base_ejection_time: Duration,
    /// The longest ejection (default 300 s).
    #[serde(deserialize_with = "positive_duration")]
    pub max_ejection_time: Duration,
    /// At most this percentage of hosts ejected at once (default 10).
    #[serde(deserialize_with = "percent")]
    pub max_ejection_percent: u8,
    /// Hosts with enough volume needed for success-rate ejection (default 5).
    pub success_rate_minimum_hosts: u32,
    /// Requests in an interval for a host's success rate to count (default 100).
    pub success_rate_request_volume: u32,
    /// Envoy's stdev factor ×1000 (default 1900, i.e. 1.9).
    pub success_rate_stdev_factor: u32,
    /// Eject one host even when `max_ejection_percent` allows none (default false).
    pub always_eject_one_host: bool,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        let d = OutlierDetection::default();
        Self {
            consecutive_5xx: d.consecutive_5xx,
            consecutive_gateway_failure: d.consecutive_gateway_failure,
            enforcing_consecutive_5xx: d.enforcing_consecutive_5xx,
            enforcing_consecutive_gateway_failure: d.enforcing_consecutive_gateway_failure,
            enforcing_success_rate: d.enforcing_success_rate,
            interval: d.interval,
            base_ejection_time: d.base_ejection_time,
            max_ejection_time: d.max_ejection_time,
            max_ejection_percent: d.max_ejection_percent,
            success_rate_minimum_hosts: d.success_rate_minimum_hosts,
            success_rate_request_volume: d.success_rate_request_volume,
            success_rate_stdev_factor: 1900,
            always_eject_one_host: d.always_eject_one_host,
        }
    }
}

impl OutlierDetectionConfig {
    /// The mechanism's settings.
    pub fn to_outlier_detection(&self) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: self.consecutive_5xx,
            consecutive_gateway_failure: self.consecutive_gateway_failure,
            enforcing_consecutive_5xx: self.enforcing_consecutive_5xx,
            enforcing_consecutive_gateway_failure: self.enforcing_consecutive_gateway_failure,
            enforcing_success_rate: self.enforcing_success_rate,
            interval: self.interval,
            base_ejection_time: self.base_ejection_time,
            max_ejection_time: self.max_ejection_time,
            max_ejection_percent: self.max_ejection_percent,
            success_rate_minimum_hosts: self.success_rate_minimum_hosts,
            success_rate_request_volume: self.success_rate_request_volume,
            success_rate_stdev_factor: f64::from(self.success_rate_stdev_factor) / 1000.0,
            always_eject_one_host: self.always_eject_one_host,
        }
    }
}

/// `deserialize_with` for a percentage, 0 to 100.
pub(crate) fn percent<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    let value = u64::deserialize(deserializer)?;
    u8::try_from(value)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| de::Error::custom(format_args!("invalid percentage {value}, expected 0 to 100")))
}

fn positive_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let value = duration::deserialize(deserializer)?;
    if value.is_zero() {
        return Err(de::Error::custom("a zero duration, expected more than 0 (like `10s`)"));
    }
    Ok(value)
}

/// Checks what one key cannot: duplicate targets, and `lb_policy` with `algorithm`.
pub(crate) fn validate(at: &str, service: &Service) -> Result<(), Invalid> {
    for (index, target) in service.targets.iter().enumerate() {
        if let Some(first) = service.targets[..index].iter().position(|t| t.target == target.target) {
            return Err(Invalid::new(
                format!("{at}.targets[{index}]"),
                format!("duplicate target `{}` (first at {at}.targets[{first}])", target.target),
            ));
        }
    }
    if service.lb_policy.is_some() && service.algorithm.is_some() {
        return Err(Invalid::new(
            format!("{at}.algorithm"),
            "both `lb_policy` (Envoy) and `algorithm` (Kong) are set, expected one of them",
        ));
    }
    Ok(())
}

/// The service's host set, when it has anything a plain URL does not: targets, a policy,
/// a panic threshold or outlier detection.
pub(crate) fn host_set(service: &Service) -> Result<Option<HostSet>, HostSetError> {
    let policy = service.lb_policy.or(service.algorithm);
    if service.targets.is_empty()
        && policy.is_none()
        && service.healthy_panic_threshold.is_none()
        && service.outlier_detection.is_none()
    {
        return Ok(None);
    }
    let mut builder = HostSet::builder();
    if service.targets.is_empty() {
        builder = builder.host(service.upstream().authority.as_str());
    }
    for target in &service.targets {
        builder = builder.weighted_host(target.target.clone(), target.weight);
    }
    if let Some(LbPolicy(policy)) = policy {
        builder = builder.load_balancer(policy);
    }
    if let Some(threshold) = service.healthy_panic_threshold {
        builder = builder.healthy_panic_threshold(threshold);
    }
    if let Some(outlier) = &service.outlier_detection {
        builder = builder.outlier_detection(outlier.to_outlier_detection());
    }
    builder.build().map(Some)
}
