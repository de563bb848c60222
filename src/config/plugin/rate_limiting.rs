//! Kong's `rate-limiting` plugin: its keys, plus `algorithm`, `capacity`, `refill_per_second`
//! and `drain_per_second`, built into the [`ratelimit`](crate::ratelimit) layers.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::{PluginContext, Wrap};
use crate::config::ConfigError;
use crate::config::schema::Plugin;
use crate::ratelimit::{
    LeakyBucketLayer, LimitBy, Period, RateLimitLayer, SlidingWindowLayer, TokenBucketLayer,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitingConfig {
    second: Option<f64>,
    minute: Option<f64>,
    hour: Option<f64>,
    day: Option<f64>,
    month: Option<f64>,
    year: Option<f64>,
    #[serde(default)]
    limit_by: LimitByName,
    header_name: Option<String>,
    path: Option<String>,
    /// portcullis: IPv6 clients are counted per network of this many bits (default 64).
    ipv6_prefix: Option<i64>,
    #[serde(default)]
    policy: PolicyName,
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_database: Option<u32>,
    redis_username: Option<String>,
    redis_password: Option<String>,
    /// Kong's integer milliseconds, or a duration (`200ms`).
    #[serde(default, deserialize_with = "crate::config::duration::deserialize_option")]
    redis_timeout: Option<Duration>,
    /// How long the breaker around Redis stays open after a failure before one request probes
    /// again (default 1 s); milliseconds or a duration, like `redis_timeout`.
    #[serde(default, deserialize_with = "crate::config::duration::deserialize_option")]
    redis_breaker_cooldown: Option<Duration>,
    #[serde(default = "yes")]
    fault_tolerant: bool,
    #[serde(default)]
    hide_client_headers: bool,
    error_code: Option<u16>,
    error_message: Option<String>,
    /// Kong's sync interval, in seconds: `-1` (default) or `0` decide on Redis per request; a
    /// positive value decides locally and syncs the counters every `sync_rate` seconds (or a
    /// duration: `500ms`).
    sync_rate: Option<SyncRate>,
    #[serde(default)]
    algorithm: Algorithm,
    capacity: Option<u64>,
    refill_per_second: Option<f64>,
    drain_per_second: Option<f64>,
}

fn yes() -> bool {
    true
}

/// Kong's `sync_rate`: seconds, with `-1` (and `0`) meaning "every request"; a duration works too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SyncRate {
    Seconds(f64),
    Duration(String),
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LimitByName {
    #[default]
    Consumer,
    Credential,
    Ip,
    Header,
    Path,
    Service,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum PolicyName {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Algorithm {
    #[default]
    SlidingWindow,
    FixedWindow,
    TokenBucket,
    LeakyBucket,
}

/// Builds the `rate-limiting` layer of one route.
pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: RateLimitingConfig = ctx.parse(plugin)?;
    let layer = layer(ctx, &config)?;
    ctx.instruments.borrow_mut().rate_limiter(crate::config::RateLimiterInstrument {
        route: ctx.route_label.to_owned(),
        service: ctx.service.name.clone(),
        policy: if config.policy == PolicyName::Local { "local" } else { "redis" },
        consumer: ctx.consumer.map(|c| super::consumer_identity(c).id.to_string()),
        layer: layer.clone(),
    });
    Ok(Arc::new(move |svc| BoxCloneSyncService::new(layer.layer(svc))))
}

fn layer(ctx: &PluginContext<'_>, c: &RateLimitingConfig) -> Result<RateLimitLayer, ConfigError> {
    let limit_by = match c.limit_by {
        LimitByName::Consumer => LimitBy::Consumer,
        LimitByName::Credential => LimitBy::Credential,
        LimitByName::Ip => LimitBy::ClientIp,
        // Kong requires `path` with `limit_by: path` and counts only that path; another path
        // falls back to the client IP.
        LimitByName::Path => {
            let path =
                c.path.as_deref().ok_or_else(|| ctx.error("path", "required when `limit_by` is `path`"))?;
            if !path.starts_with('/') {
                return Err(ctx.error("path", format!("expected a path starting with `/`, got `{path}`")));
            }
            LimitBy::path(path)
        }
        LimitByName::Service => LimitBy::Service,
        LimitByName::Header => {
            let name = c
                .header_name
                .as_deref()
                .ok_or_else(|| ctx.error("header_name", "required when `limit_by` is `header`"))?;
            LimitBy::Header(
                HeaderName::try_from(name)
                    .map_err(|_| ctx.error("header_name", "not a valid header name"))?,
            )
        }
    };
    if c.path.is_some() && c.limit_by != LimitByName::Path {
        return Err(ctx.error("path", "only meaningful with `limit_by: path`"));
    }
    let ipv6_prefix = match c.ipv6_prefix {
        None => crate::ratelimit::DEFAULT_IPV6_PREFIX,
        Some(bits @ 1..=128) => bits as u8,
        Some(bits) => return Err(ctx.error("ipv6_prefix", format!("expected 1..=128 bits, got {bits}"))),
    };
    let error_code = match c.error_code {
        None => StatusCode::TOO_MANY_REQUESTS,
        Some(code) => StatusCode::from_u16(code)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .ok_or_else(|| ctx.error("error_code", "expected an HTTP error status (400-599)"))?,
    };
    let store = redis_store(ctx, c)?;

    macro_rules! common {
        ($layer:expr) => {{
            let mut layer = $layer
                .limit_by(limit_by)
                .ipv6_prefix(ipv6_prefix)
                .hide_client_headers(c.hide_client_headers)
                .error_code(error_code)
                .fault_tolerant(c.fault_tolerant);
            if let Some(message) = &c.error_message {
                layer = layer.error_message(message.clone());
            }
            if let Some(store) = store.clone() {
                layer = layer.shared_store(store);
            }
            RateLimitLayer::from(layer)
        }};
    }

    match c.algorithm {
        Algorithm::SlidingWindow | Algorithm::FixedWindow => {
            for key in ["capacity", "refill_per_second", "drain_per_second"] {
                let set = match key {
                    "capacity" => c.capacity.is_some(),
                    "refill_per_second" => c.refill_per_second.is_some(),
                    _ => c.drain_per_second.is_some(),
                };
                if set {
                    return Err(ctx.error(key, "only used by `algorithm: token-bucket` or `leaky-bucket`"));
                }
            }
            let windows = windows(ctx, c)?;
            if windows.is_empty() {
                return Err(ConfigError::invalid(
                    ctx.origin,
                    format!("{}.config", ctx.path),
                    "at least one of `second`, `minute`, `hour`, `day`, `month`, `year` is required",
                ));
            }
            let mut layer = SlidingWindowLayer::new();
            for (period, limit) in windows {
                layer = layer.window(period, limit);
            }
            if c.algorithm == Algorithm::FixedWindow {
                layer = layer.fixed_window();
            }
            Ok(common!(layer))
        }
        Algorithm::TokenBucket => {
            no_windows(ctx, c, "token-bucket")?;
            let capacity = positive_int(ctx, "capacity", c.capacity)?;
            let refill = positive_rate(ctx, "refill_per_second", c.refill_per_second)?;
            Ok(common!(TokenBucketLayer::new(capacity, refill)))
        }
        Algorithm::LeakyBucket => {
            no_windows(ctx, c, "leaky-bucket")?;
            let capacity = positive_int(ctx, "capacity", c.capacity)?;
            let drain = positive_rate(ctx, "drain_per_second", c.drain_per_second)?;
            Ok(common!(LeakyBucketLayer::new(capacity, drain)))
        }
    }
}

/// The configured windows, shortest first; each limit a whole number ≥ 1 and none below a
/// shorter window's (Kong: "the limit for hour cannot be lower than the limit for minute").
fn windows(ctx: &PluginContext<'_>, c: &RateLimitingConfig) -> Result<Vec<(Period, u64)>, ConfigError> {
    let given = [c.second, c.minute, c.hour, c.day, c.month, c.year];
    let mut windows: Vec<(Period, u64)> = Vec::new();
    for (period, value) in Period::ALL.into_iter().zip(given) {
        let Some(value) = value else { continue };
        if !(value >= 1.0 && value.fract() == 0.0 && value <= u64::MAX as f64) {
            return Err(
                ctx.error(period.name(), format!("expected a whole number of requests ≥ 1, got {value}"))
            );
        }
        let limit = value as u64;
        let shorter = windows.last().copied().filter(|&(_, shorter_limit)| limit < shorter_limit);
        if let Some((shorter, shorter_limit)) = shorter {
            return Err(ctx.error(
                period.name(),
                format!(
                    "the limit for {} ({limit}) cannot be lower than the limit for {} ({shorter_limit})",
                    period.name(),
                    shorter.name()
                ),
            ));
        }
        windows.push((period, limit));
    }
    Ok(windows)
}

fn no_windows(ctx: &PluginContext<'_>, c: &RateLimitingConfig, algorithm: &str) -> Result<(), ConfigError> {
    let given = [c.second, c.minute, c.hour, c.day, c.month, c.year];
    match Period::ALL.into_iter().zip(given).find(|(_, v)| v.is_some()) {
        Some((period, _)) => Err(ctx.error(period.name(), format!("not used by `algorithm: {algorithm}`"))),
        None => Ok(()),
    }
}

fn positive_int(ctx: &PluginContext<'_>, key: &str, value: Option<u64>) -> Result<u64, ConfigError> {
    match value {
        Some(v) if v >= 1 => Ok(v),
        Some(_) => Err(ctx.error(key, "expected a whole number ≥ 1")),
        None => Err(ctx.error(key, "required by this algorithm")),
    }
}

fn positive_rate(ctx: &PluginContext<'_>, key: &str, value: Option<f64>) -> Result<f64, ConfigError> {
    match value {
        Some(v) if v > 0.0 && v.is_finite() => Ok(v),
        Some(_) => Err(ctx.error(key, "expected a rate > 0")),
        None => Err(ctx.error(key, "required by this algorithm")),
    }
}

/// The Redis store of `policy: redis`, keyed by the route so that every gateway sharing the
/// Redis shares the limit; `None` for `policy: local`.
fn redis_store(
    ctx: &PluginContext<'_>,
    c: &RateLimitingConfig,
) -> Result<Option<Arc<dyn crate::ratelimit::Store>>, ConfigError> {
    let invalid_sync_rate = |rate: &dyn std::fmt::Display| {
        ctx.error("sync_rate", format!("expected -1 (every request), seconds > 0 or a duration, got {rate}"))
    };
    let sync_every = match &c.sync_rate {
        None => None,
        Some(SyncRate::Seconds(rate)) if *rate == -1.0 || *rate == 0.0 => None,
        Some(SyncRate::Seconds(rate)) => {
            Some(Duration::try_from_secs_f64(*rate).map_err(|_| invalid_sync_rate(rate))?)
        }
        Some(SyncRate::Duration(text)) => match crate::config::duration::parse_secs(text) {
            Ok(every) if every.is_zero() => None,
            Ok(every) => Some(every),
            Err(_) => return Err(invalid_sync_rate(text)),
        },
    };
    if sync_every.is_some() {
        if c.policy == PolicyName::Local {
            return Err(ctx.error("sync_rate", "only used with `policy: redis`"));
        }
        if matches!(c.algorithm, Algorithm::TokenBucket | Algorithm::LeakyBucket) {
            return Err(ctx.error(
                "sync_rate",
                "only window algorithms (`sliding-window`, `fixed-window`) can sync counters; buckets decide on Redis",
            ));
        }
    }
    if c.policy == PolicyName::Local {
        // (Kong's exports carry `redis_timeout` whatever the policy; this key is ours.)
        if c.redis_breaker_cooldown.is_some() {
            return Err(ctx.error("redis_breaker_cooldown", "only used with `policy: redis`"));
        }
        return Ok(None);
    }
    let Some(host) = c.redis_host.as_deref().filter(|h| !h.is_empty()) else {
        return Err(ctx.error("redis_host", "required when `policy` is `redis`"));
    };
    #[cfg(feature = "redis")]
    {
        let auth = match (&c.redis_username, &c.redis_password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            _ => String::new(),
        };
        let url = format!(
            "redis://{auth}{host}:{}/{}",
            c.redis_port.unwrap_or(6379),
            c.redis_database.unwrap_or(0)
        );
        // Kong keys counters by service and route: the route's label (its name, or
        // `<service>.routes[i]`), so a service-level limit on unnamed routes is per route in
        // Redis as it is in memory.
        let mut prefix = format!("portcullis:rl:{}:{}", ctx.service.name, ctx.route_label);
        // A consumer's own quota never shares a counter with the route's generic one.
        if let Some(consumer) = ctx.consumer {
            prefix.push_str(":consumer=");
            prefix.push_str(&super::consumer_identity(consumer).id);
        }
        let mut store = crate::ratelimit::RedisStore::new(&url, prefix)
            .map_err(|e| ctx.error("redis_host", e.to_string()))?
            .timeout(c.redis_timeout.unwrap_or(Duration::from_millis(2000)).max(Duration::from_millis(1)));
        if let Some(cooldown) = c.redis_breaker_cooldown {
            store = store.cooldown(cooldown);
        }
        match sync_every {
            Some(every) => Ok(Some(Arc::new(Arc::new(crate::ratelimit::HybridStore::new(store, every))))),
            None => Ok(Some(Arc::new(Arc::new(store)))),
        }
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (host, &c.redis_port, &c.redis_database, &c.redis_username, &c.redis_password);
        let _ = (c.redis_timeout, sync_every);
        Err(ConfigError::unsupported(
            ctx.origin,
            format!("{}.config.policy", ctx.path),
            "`policy: redis` needs portcullis built with the `redis` feature",
        ))
    }
}
