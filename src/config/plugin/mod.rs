//! The config side of each plugin: reads its Kong `config:` block into the layer's own builder.
//!
//! Each plugin has a module here with one function,
//! `build(ctx: &PluginContext<'_>, plugin: &Plugin) -> Result<Wrap, ConfigError>`, that parses
//! `plugin.config` (use [`PluginContext::parse`] so errors name `...plugins[0].config.<key>`) and
//! returns how to wrap a route's stack. Mechanism stays in the layer modules; nothing here
//! decides how a request is handled.
//!
//! An instance is built once and its [`Wrap`] wraps every route it applies to, so the layer it
//! captured (and the state that layer shares between clones) serves all of them, unless
//! [`shared_across_routes`] says the plugin is built per route. An instance that no route runs
//! is built too, and dropped, so its config errors are reported all the same.

pub(crate) mod acl;
mod consumer_scope;
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

pub(crate) use consumer_scope::ConsumerScoped;

use super::schema::{Config, Plugin, Service};
use super::{ConfigError, RouteService};

/// Wraps a route's stack in one plugin's layer.
pub(crate) type Wrap = Arc<dyn Fn(RouteService) -> RouteService + Send + Sync>;

/// Where a plugin instance is being built.
// `service`, `route` and `consumer` key a rate limit's Redis counters.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct PluginContext<'a> {
    /// The file, for errors.
    pub(crate) origin: &'a str,
    /// The whole config (consumers, for credentials and per-consumer plugins).
    pub(crate) config: &'a Config,
    /// The service of the route being built. For a plugin shared across routes
    /// ([`shared_across_routes`]) only the first route's, so such a plugin must not read it (nor
    /// `route_label`); for an instance no route runs, its own service, the first, or a stand-in.
    pub(crate) service: &'a Service,
    /// Where the plugin instance was written (`services[0].routes[1].plugins[0]`).
    pub(crate) path: String,
    /// Where stateful plugins register themselves for `/status` and `/metrics`.
    pub(crate) instruments: &'a std::cell::RefCell<super::Instruments>,
    /// The route's name as the router labels it (its `name`, else `<service>.routes[<i>]`).
    pub(crate) route_label: &'a str,
    /// The consumer this instance is scoped to (it runs only for that consumer's requests);
    /// `None` for the instance every other caller gets. Plugins keeping state keep this
    /// instance's apart (a rate limit's Redis keys).
    pub(crate) consumer: Option<&'a super::schema::Consumer>,
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

/// Whether one built instance of plugin `name` may wrap every route it applies to, so the
/// routes share its state (Kong builds a plugin instance once and runs it on each of its
/// routes). Its `build` must then not read `ctx.service` or `ctx.route_label`:
/// the router builds it for the first route it meets and reuses the [`Wrap`] for the others.
///
/// Anything not listed is built once per route, as every plugin was before: always correct,
/// only dearer in memory and, for caches, in hit rate.
pub(crate) fn shared_across_routes(name: &str) -> bool {
    match name {
        // Auth: credentials, key maps, the verified-token cache and each credential's JWKS
        // cache are per instance, not per route; one instance per route would fetch a JWKS
        // and introspect a token once per route.
        "jwt" | "key-auth" | "oauth2-introspection" => true,
        // Groups lists, read-only.
        "acl" => true,
        // Rules compiled at load; route captures in templates are read per request from
        // `RouteMatch`, so one compiled rule set serves every route.
        "request-transformer" | "response-transformer" => true,
        // Per route by design: Kong keys a limit's counters by route and service, the Redis
        // store's key prefix is the route's, and `/status` and `/metrics` list one limiter per
        // route label (`ctx.route_label`). A global `minute: 2` admits 2 on each route.
        "rate-limiting" => false,
        _ => false,
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

/// How specific an instance's scope is, most specific first (Kong's precedence, without
/// consumer groups): consumer+route+service, consumer+route, consumer+service, route+service,
/// consumer, route, service, global.
fn rank(consumer: bool, route: bool, service: bool) -> u8 {
    match (consumer, route, service) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, true) => 2,
        (false, true, true) => 3,
        (true, false, false) => 4,
        (false, true, false) => 5,
        (false, false, true) => 6,
        (false, false, false) => 7,
    }
}

/// One plugin instance and where it was written.
pub(crate) struct Instance<'c> {
    /// The instance.
    pub(crate) plugin: &'c Plugin,
    /// Where it was written (`consumers[0].plugins[1]`), for errors.
    pub(crate) path: String,
}

/// One plugin (by name) as it applies to a route: the instance every caller gets, and the
/// consumers that get their own instance instead.
pub(crate) struct Applicable<'c> {
    /// For callers without an instance of their own; `None` when the plugin runs only for some
    /// consumers.
    pub(crate) generic: Option<Instance<'c>>,
    /// `(index in consumers, instance)`, for each consumer whose own instance wins over
    /// `generic` by precedence.
    pub(crate) consumers: Vec<(usize, Instance<'c>)>,
}

impl Applicable<'_> {
    fn name(&self) -> &str {
        match (&self.generic, self.consumers.first()) {
            (Some(i), _) | (None, Some((_, i))) => &i.plugin.name,
            (None, None) => "",
        }
    }
}

/// One plugin instance as written in the file, whether or not it applies to any route: where
/// it is, and the service and consumer its place or its references scope it to.
pub(crate) struct Written<'c> {
    /// The instance.
    pub(crate) plugin: &'c Plugin,
    /// Where it was written (`services[0].plugins[1]`).
    pub(crate) path: String,
    /// Its service (index), when it is written in one (or in one of its routes) or names one
    /// (or one of its routes).
    pub(crate) service: Option<usize>,
    /// Its consumer (index), when it is a consumer's own or names one.
    pub(crate) consumer: Option<usize>,
}

/// Every plugin instance in the file, enabled or not, in file order: routes' (within their
/// services), services', global, consumers'.
pub(crate) fn written<'c>(config: &'c Config) -> Vec<Written<'c>> {
    let service_named = |name: &Option<String>| {
        name.as_ref().and_then(|name| config.services.iter().position(|s| s.name == *name))
    };
    let service_of_route_named = |name: &Option<String>| {
        let name = name.as_ref()?;
        config
            .services
            .iter()
            .position(|service| service.routes.iter().any(|r| r.name.as_ref() == Some(name)))
    };
    let by_field = |plugin: &Plugin| plugin.consumer.as_deref().and_then(|c| consumer_index(config, c));
    let mut out = Vec::new();
    for (s, service) in config.services.iter().enumerate() {
        for (r, route) in service.routes.iter().enumerate() {
            for (i, plugin) in route.plugins.iter().enumerate() {
                let path = format!("services[{s}].routes[{r}].plugins[{i}]");
                out.push(Written { plugin, path, service: Some(s), consumer: by_field(plugin) });
            }
        }
    }
    for (s, service) in config.services.iter().enumerate() {
        for (i, plugin) in service.plugins.iter().enumerate() {
            let path = format!("services[{s}].plugins[{i}]");
            out.push(Written { plugin, path, service: Some(s), consumer: by_field(plugin) });
        }
    }
    let referenced = |plugin: &'c Plugin, path: String, consumer: Option<usize>| {
        let service = service_named(&plugin.service).or_else(|| service_of_route_named(&plugin.route));
        Written { plugin, path, service, consumer }
    };
    for (i, plugin) in config.plugins.iter().enumerate() {
        out.push(referenced(plugin, format!("plugins[{i}]"), by_field(plugin)));
    }
    for (c, consumer) in config.consumers.iter().enumerate() {
        for (i, plugin) in consumer.plugins.iter().enumerate() {
            out.push(referenced(plugin, format!("consumers[{c}].plugins[{i}]"), Some(c)));
        }
    }
    out
}

/// Which consumer `reference` names (by username, custom_id or id, as validation checked).
fn consumer_index(config: &Config, reference: &str) -> Option<usize> {
    config
        .consumers
        .iter()
        .position(|c| [&c.id, &c.username, &c.custom_id].iter().any(|v| v.as_deref() == Some(reference)))
}

/// The plugins that apply to `route` of `service`, one entry per name, in execution order
/// (highest priority first).
///
/// Among the enabled instances targeting the route, the most specific scope wins (see
/// [`rank`]): the generic instance is the best one without a consumer, and a consumer gets its
/// own best instance when that one is more specific than the generic one. Instances come from
/// the route, the service, the global list (`service:`/`route:`/`consumer:` references) and the
/// consumers' own lists (`service:`/`route:` references); within one rank the first found
/// (route, service, global, consumers) wins.
pub(crate) fn applicable<'c>(config: &'c Config, s: usize, r: usize) -> Vec<Applicable<'c>> {
    let service = &config.services[s];
    let route = &service.routes[r];
    // (name, consumer, rank, instance) for every enabled instance targeting this route.
    let mut found: Vec<(Option<usize>, u8, Instance<'c>)> = Vec::new();
    let targets = |plugin: &Plugin| {
        plugin.route.as_ref().is_none_or(|name| route.name.as_ref() == Some(name))
            && plugin.service.as_ref().is_none_or(|name| *name == service.name)
    };
    let mut consider =
        |plugin: &'c Plugin, path: String, consumer: Option<usize>, route: bool, service: bool| {
            if plugin.enabled {
                let rank = rank(
                    consumer.is_some(),
                    route || plugin.route.is_some(),
                    service || plugin.service.is_some(),
                );
                found.push((consumer, rank, Instance { plugin, path }));
            }
        };
    let by_field = |plugin: &Plugin| plugin.consumer.as_deref().and_then(|c| consumer_index(config, c));
    for (i, plugin) in route.plugins.iter().enumerate() {
        consider(plugin, format!("services[{s}].routes[{r}].plugins[{i}]"), by_field(plugin), true, false);
    }
    for (i, plugin) in service.plugins.iter().enumerate() {
        consider(plugin, format!("services[{s}].plugins[{i}]"), by_field(plugin), false, true);
    }
    for (i, plugin) in config.plugins.iter().enumerate().filter(|(_, p)| targets(p)) {
        consider(plugin, format!("plugins[{i}]"), by_field(plugin), false, false);
    }
    for (c, consumer) in config.consumers.iter().enumerate() {
        for (i, plugin) in consumer.plugins.iter().enumerate().filter(|(_, p)| targets(p)) {
            consider(plugin, format!("consumers[{c}].plugins[{i}]"), Some(c), false, false);
        }
    }
    // Stable: equal ranks keep the order found.
    found.sort_by_key(|(_, rank, _)| *rank);

    let mut chosen: Vec<(Applicable<'c>, u8)> = Vec::new();
    for (consumer, rank, instance) in found {
        let index = match chosen.iter().position(|(a, _)| a.name() == instance.plugin.name) {
            Some(index) => index,
            None => {
                chosen.push((Applicable { generic: None, consumers: Vec::new() }, u8::MAX));
                chosen.len() - 1
            }
        };
        let (entry, generic_rank) = &mut chosen[index];
        match consumer {
            // Sorted by rank: the first generic instance is the best one, and a consumer's own
            // instance found before it is more specific.
            None if entry.generic.is_none() => {
                entry.generic = Some(instance);
                *generic_rank = rank;
            }
            Some(c) if rank < *generic_rank && !entry.consumers.iter().any(|(seen, _)| *seen == c) => {
                entry.consumers.push((c, instance));
            }
            _ => {}
        }
    }
    let mut chosen: Vec<Applicable<'c>> = chosen.into_iter().map(|(a, _)| a).collect();
    chosen.sort_by_key(|a| -priority(a.name()));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginSpec;

    /// An applicable plugin as paths: the generic instance's, and `(consumer index, path)`s.
    type Applied = (Option<String>, Vec<(usize, String)>);

    fn applied(yaml: &str, s: usize, r: usize) -> Vec<Applied> {
        let registry: Vec<PluginSpec> =
            crate::config::PLUGINS.iter().map(|p| PluginSpec { supported: true, ..*p }).collect();
        let config = Config::from_yaml_with(yaml, "t.yaml", &registry).unwrap();
        applicable(&config, s, r)
            .into_iter()
            .map(|a| (a.generic.map(|i| i.path), a.consumers.into_iter().map(|(c, i)| (c, i.path)).collect()))
            .collect()
    }

    const BASE: &str = r#"_format_version: "3.0"
consumers:
- {username: alice, id: c-alice}
- {username: bob, custom_id: "1002"}
- {username: carol}
services:
- name: svc
  url: http://127.0.0.1:1
  plugins: [{name: rate-limiting, config: {minute: 7}}]
  routes:
  - name: r0
    paths: [/a]
  - name: r1
    paths: [/b]
    plugins:
    - {name: rate-limiting, config: {minute: 5}}
    - {name: rate-limiting, consumer: alice, config: {minute: 4}}
"#;

    #[test]
    fn kong_precedence_per_consumer() {
        let yaml = format!(
            "{BASE}plugins:\n- {{name: rate-limiting, consumer: c-alice, config: {{minute: 2}}}}\n\
             - {{name: rate-limiting, consumer: '1002', service: svc, config: {{minute: 3}}}}\n\
             - {{name: rate-limiting, config: {{minute: 9}}}}\n"
        );
        // r0: the service's instance for everyone; alice's own (consumer alone, by id) beats
        // it, bob's consumer+service one (by custom_id) too; the global one loses to the service.
        assert_eq!(
            applied(&yaml, 0, 0),
            [(
                Some("services[0].plugins[0]".into()),
                vec![(1, "plugins[1]".into()), (0, "plugins[0]".into())]
            )]
        );
        // r1: the route's instance; alice's consumer+route instance beats her consumer-alone one.
        assert_eq!(
            applied(&yaml, 0, 1),
            [(
                Some("services[0].routes[1].plugins[0]".into()),
                vec![(0, "services[0].routes[1].plugins[1]".into()), (1, "plugins[1]".into())]
            )]
        );
    }

    #[test]
    fn a_consumers_own_list_scoped_further_and_plugins_only_some_consumers_have() {
        let yaml = BASE.replace(
            "- {username: carol}",
            "- username: carol\n  plugins:\n  - {name: rate-limiting, route: r0, config: {minute: 1}}\n  - {name: request-transformer, enabled: false}\n  - {name: response-transformer}\n",
        );
        let r0 = applied(&yaml, 0, 0);
        assert_eq!(
            r0,
            [
                (Some("services[0].plugins[0]".into()), vec![(2, "consumers[2].plugins[0]".into())]),
                (None, vec![(2, "consumers[2].plugins[2]".into())]),
            ]
        );
        // On r1 carol's rate limit (scoped to r0) does not apply: she gets the route's.
        let r1 = applied(&yaml, 0, 1);
        assert_eq!(r1[0].1, [(0, "services[0].routes[1].plugins[1]".to_owned())]);
    }

    #[test]
    fn every_written_instance_with_its_scope() {
        let yaml = format!(
            "{BASE}- name: bare\n  url: http://127.0.0.1:1\n  plugins: [{{name: key-auth}}]\n\
             plugins:\n- {{name: acl, route: r1, config: {{allow: [a]}}}}\n\
             - {{name: rate-limiting, service: bare, consumer: bob, enabled: false}}\n"
        )
        .replace("- {username: carol}", "- username: carol\n  plugins: [{name: response-transformer}]");
        let registry: Vec<PluginSpec> =
            crate::config::PLUGINS.iter().map(|p| PluginSpec { supported: true, ..*p }).collect();
        let config = Config::from_yaml_with(&yaml, "t.yaml", &registry).unwrap();
        let found: Vec<_> = written(&config)
            .into_iter()
            .map(|w| (w.path, w.plugin.name.clone(), w.service, w.consumer))
            .collect();
        let rl = || "rate-limiting".to_owned();
        assert_eq!(
            found,
            [
                ("services[0].routes[1].plugins[0]".into(), rl(), Some(0), None),
                ("services[0].routes[1].plugins[1]".into(), rl(), Some(0), Some(0)),
                ("services[0].plugins[0]".into(), rl(), Some(0), None),
                ("services[1].plugins[0]".into(), "key-auth".into(), Some(1), None),
                ("plugins[0]".into(), "acl".into(), Some(0), None),
                ("plugins[1]".into(), rl(), Some(1), Some(1)),
                ("consumers[2].plugins[0]".into(), "response-transformer".into(), None, Some(2)),
            ]
        );
    }

    #[test]
    fn a_route_and_service_scoped_global_beats_a_consumer_alone() {
        let yaml = format!(
            "{BASE}plugins:\n- {{name: rate-limiting, consumer: carol, config: {{minute: 2}}}}\n\
             - {{name: rate-limiting, route: r0, service: svc, config: {{minute: 3}}}}\n"
        );
        assert_eq!(applied(&yaml, 0, 0), [(Some("plugins[1]".into()), vec![])]);
    }
}
