//! `oauth2-introspection`: Kong's options into an [`IntrospectionLayer`].

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use super::acl::{anonymous_with_groups, identity_with_groups};
use super::{PluginContext, Wrap};
use crate::auth::introspection::{ConsumerBy, DEFAULT_NEGATIVE_TTL, IntrospectionLayer, MAX_CACHE_TTL};
use crate::config::ConfigError;
use crate::config::duration;
use crate::config::schema::Plugin;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectionConfig {
    introspection_url: String,
    #[serde(default)]
    authorization_value: Option<String>,
    #[serde(default)]
    token_type_hint: Option<String>,
    /// Kong writes integer milliseconds (`10000`); `2s` works too.
    #[serde(default = "default_timeout", deserialize_with = "duration::deserialize")]
    timeout: Duration,
    /// Kong writes seconds (`60`); `1m` works too.
    #[serde(default, deserialize_with = "duration::deserialize_secs_option")]
    ttl: Option<Duration>,
    /// portcullis: how long an inactive answer is reused (default 5 s; 0 disables); seconds or
    /// a duration, like `ttl`.
    #[serde(default, deserialize_with = "duration::deserialize_secs_option")]
    negative_ttl: Option<Duration>,
    #[serde(default)]
    consumer_by: ConsumerByName,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous: Option<String>,
    #[serde(default = "yes")]
    run_on_preflight: bool,
    /// Kong's connection keep-alive in ms: accepted; the pooled client keeps connections anyway.
    #[serde(default)]
    #[allow(dead_code)]
    keepalive: Option<u64>,
    /// portcullis: at most this many active tokens cached (default 10 000).
    #[serde(default)]
    cache_size: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ConsumerByName {
    #[default]
    Username,
    ClientId,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn yes() -> bool {
    true
}

/// `ttl`-style keys, at most [`MAX_CACHE_TTL`].
fn at_most_a_day(
    ctx: &PluginContext<'_>,
    key: &str,
    value: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(duration) if duration > MAX_CACHE_TTL => Err(ctx.error(
            key,
            format!(
                "invalid {key} `{}`: expected seconds from 0 to {} (one day)",
                humantime::format_duration(duration),
                MAX_CACHE_TTL.as_secs()
            ),
        )),
        other => Ok(other),
    }
}

pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    let config: IntrospectionConfig = ctx.parse(plugin)?;
    let url: http::Uri = config
        .introspection_url
        .parse()
        .ok()
        .filter(|u: &http::Uri| u.scheme() == Some(&http::uri::Scheme::HTTP) && u.authority().is_some())
        .ok_or_else(|| {
            let why = if config.introspection_url.starts_with("https://") {
                "https introspection endpoints are not supported yet: expected http://host[:port]/path"
            } else {
                "expected an absolute http://host[:port]/path URL"
            };
            ctx.error("introspection_url", why)
        })?;
    let ttl = at_most_a_day(ctx, "ttl", config.ttl)?.unwrap_or(Duration::from_secs(60));
    let negative_ttl =
        at_most_a_day(ctx, "negative_ttl", config.negative_ttl)?.unwrap_or(DEFAULT_NEGATIVE_TTL);
    let consumer_by = match config.consumer_by {
        ConsumerByName::Username => ConsumerBy::Username,
        ConsumerByName::ClientId => ConsumerBy::ClientId,
    };
    let mut builder = IntrospectionLayer::builder(url)
        .timeout(config.timeout)
        .ttl(ttl)
        .negative_ttl(negative_ttl)
        .consumer_by(consumer_by)
        .hide_credentials(config.hide_credentials)
        .run_on_preflight(config.run_on_preflight);
    if let Some(value) = &config.authorization_value {
        builder = builder
            .authorization_value(value)
            .map_err(|_| ctx.error("authorization_value", "not a valid header value"))?;
    }
    if let Some(hint) = config.token_type_hint {
        builder = builder.token_type_hint(hint);
    }
    if let Some(size) = config.cache_size {
        builder = builder.cache_capacity(size);
    }
    // Kong: `username` names a consumer's username, `client_id` its custom_id.
    for (index, consumer) in ctx.config.consumers.iter().enumerate() {
        let key = match consumer_by {
            ConsumerBy::Username => &consumer.username,
            ConsumerBy::ClientId => &consumer.custom_id,
        };
        if let Some(key) = key {
            builder = builder.consumer(key.clone(), identity_with_groups(ctx.origin, index, consumer)?);
        }
    }
    if let Some(name) = config.anonymous.as_deref().filter(|n| !n.is_empty()) {
        builder = builder.anonymous(anonymous_with_groups(ctx, ctx.config, name)?);
    }
    let layer = builder.build();
    Ok(Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner))))
}
