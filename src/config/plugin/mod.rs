//! The config side of each plugin: reads its Kong `config:` block into the layer's own builder.
//!
//! Each plugin has a module here with one function,
//! `build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError>`, that parses
//! `plugin.config` (use [`PluginContext::parse`] so errors name `...plugins[0].config.<key>`) and
//! returns how to wrap a route's stack. Mechanism stays in the layer modules; nothing here
//! decides how a request is handled.

pub(crate) mod acl;
pub(crate) mod key_auth;
pub(crate) mod oauth2_introspection;
#[cfg(feature = "ratelimit")]
mod rate_limiting;
mod request_transformer;
mod response_transformer;

use std::sync::Arc;

#[cfg(feature = "jwt")]
pub(crate) mod jwt;

use serde::de::DeserializeOwned;

use super::schema::{Config, Plugin, Route, Service};
use super::{ConfigError, RouteService};

/// Wraps a route's stack in one plugin's layer.
pub(crate) type Wrap = Arc<dyn Fn(RouteService) -> RouteService + Send + Sync>;

/// Where a plugin instance is being built.
#[allow(dead_code)] // `service` and `route`: for plugins that key on them (rate limiting).
pub(crate) struct PluginContext<'a> {
    /// The file, for errors.
    pub(crate) origin: &'a str,
    /// The whole config (consumers, for credentials and per-consumer plugins).
    pub(crate) config: &'a Config,
    /// The service of the route being built.
    pub(crate) service: &'a Service,
    /// The route being built.
    pub(crate) route: &'a Route,
    /// Where the plugin instance was written (`services[0].routes[1].plugins[0]`).
    pub(crate) path: String,
    /// Where stateful plugins register themselves for `/status` and `/metrics`.
    pub(crate) instruments: &'a std::cell::RefCell<super::Instruments>,
    /// The route's name as the router labels it (its `name`, else `<service>.routes[<i>]`).
    pub(crate) route_label: &'a str,
}

impl PluginContext<'_> {
    /// Parses `plugin.config` into `T` (use `#[serde(deny_unknown_fields)]` on it); errors name
    /// the path inside the config block.
    pub(crate) fn parse<T: DeserializeOwned>(&self, plugin: &Plugin) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(plugin.config.clone()).map_err(|error| {
            let inner = error.path().to_string();
            let path = match inner.as_str() {
                "." | "" => format!("{}.config", self.path),
                inner => format!("{}.config.{inner}", self.path),
            };
            ConfigError::invalid(self.origin, path, error.into_inner().to_string())
        })
    }

    /// An error at `key` inside this plugin's `config` block.
    pub(crate) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.origin, format!("{}.config.{key}", self.path), message)
    }
}

/// The identity of config consumer `c` as auth layers hand it on: `id` is the configured id, else
/// the username, else the custom id (Kong generates a UUID; a stable name is more useful in
/// logs and limits).
pub(crate) fn consumer_identity(c: &super::schema::Consumer) -> crate::consumer::Consumer {
    let id = c.id.as_deref().or(c.username.as_deref()).or(c.custom_id.as_deref()).unwrap_or_default();
    crate::consumer::Consumer {
        id: id.into(),
        username: c.username.as_deref().map(Into::into),
        custom_id: c.custom_id.as_deref().map(Into::into),
        ..crate::consumer::Consumer::default()
    }
}

/// Kong's plugin priorities: higher runs first (outermost in the stack).
pub(crate) fn priority(name: &str) -> i32 {
    match name {
        "oauth2-introspection" => 1700,
        "jwt" => 1450,
        "key-auth" => 1250,
        "acl" => 950,
        "rate-limiting" => 910,
        "request-transformer" => 801,
        "response-transformer" => 800,
        _ => 0,
    }
}

/// Builds one plugin instance; the registry ([`super::PLUGINS`]) has already refused names that
/// are unknown or not supported yet.
pub(crate) fn build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError> {
    match plugin.name.as_str() {
        "key-auth" => return key_auth::build(ctx, plugin),
        "acl" => return acl::build(ctx, plugin),
        "oauth2-introspection" => return oauth2_introspection::build(ctx, plugin),
        "request-transformer" => return request_transformer::build(ctx, plugin),
        "response-transformer" => return response_transformer::build(ctx, plugin),
        #[cfg(feature = "jwt")]
        "jwt" => return jwt::build(ctx, plugin),
        #[cfg(feature = "ratelimit")]
        "rate-limiting" => return rate_limiting::build(ctx, plugin),
        _ => {}
    }
    Err(ConfigError::unsupported(
        ctx.origin,
        format!("{}.name", ctx.path),
        format!("plugin `{}` is not supported yet", plugin.name),
    ))
}

/// The plugin instances that apply to `route` of `service`, one per name (the most specific:
/// route > service > global), in execution order (highest priority first), each with the path
/// where it was written.
pub(crate) fn applicable<'c>(config: &'c Config, s: usize, r: usize) -> Vec<(&'c Plugin, String)> {
    let service = &config.services[s];
    let route = &service.routes[r];
    let mut chosen: Vec<(&Plugin, String)> = Vec::new();
    let mut consider = |plugin: &'c Plugin, path: String| {
        if !plugin.enabled || chosen.iter().any(|(p, _)| p.name == plugin.name) {
            return;
        }
        chosen.push((plugin, path));
    };
    for (i, plugin) in route.plugins.iter().enumerate() {
        if plugin.consumer.is_none() {
            consider(plugin, format!("services[{s}].routes[{r}].plugins[{i}]"));
        }
    }
    for (i, plugin) in service.plugins.iter().enumerate() {
        if plugin.consumer.is_none() {
            consider(plugin, format!("services[{s}].plugins[{i}]"));
        }
    }
    let targets = |plugin: &Plugin| {
        let route_ok = plugin.route.as_ref().is_none_or(|name| route.name.as_ref() == Some(name));
        let service_ok = plugin.service.as_ref().is_none_or(|name| *name == service.name);
        route_ok && service_ok && plugin.consumer.is_none()
    };
    // Global plugins scoped to this route or service are more specific than unscoped ones.
    let mut globals: Vec<(usize, &Plugin)> =
        config.plugins.iter().enumerate().filter(|(_, p)| targets(p)).collect();
    globals.sort_by_key(|(_, p)| !(p.route.is_some() || p.service.is_some()));
    for (i, plugin) in globals {
        consider(plugin, format!("plugins[{i}]"));
    }
    chosen.sort_by_key(|(p, _)| -priority(&p.name));
    chosen
}
