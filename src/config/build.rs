//! Config → tower services: the one place where policy (the file) meets mechanism (the layers).
//! Nothing here decides how a request is handled; it only chooses and stacks layers.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::plugin::{self, PluginContext, Wrap};
use super::retry_policy::{DEFAULT_MAX_RETRIES, RetryPolicy};
use super::schema::{Config, Plugin, RoutePath, Service};
use super::{ConfigError, Instruments};
use crate::body::Body;
use crate::proxy::Proxy;
use crate::resilience::budget::{MaxRetries, RetryBudgetLayer};
use crate::router::{Route, Router};
use crate::timeout::RouteTimeoutLayer;

/// The per-route stack behind the router: the route's layers, then the proxy.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl Config {
    /// Builds the router with one proxying stack per route.
    ///
    /// `origin` names the file in errors, as [`Config::from_file`] does.
    pub fn build_router(&self, origin: &str) -> Result<Router<RouteService>, ConfigError> {
        self.build_router_with(origin, &mut Instruments::default())
    }

    /// [`build_router`](Self::build_router), registering the stateful parts it builds (rate
    /// limiters, ...) in `instruments` for the admin endpoints.
    pub fn build_router_with(
        &self,
        origin: &str,
        instruments: &mut Instruments,
    ) -> Result<Router<RouteService>, ConfigError> {
        let cell = std::cell::RefCell::new(std::mem::take(instruments));
        let built = self.build_router_into(origin, &cell);
        *instruments = cell.into_inner();
        built
    }

    fn build_router_into(
        &self,
        origin: &str,
        instruments: &std::cell::RefCell<Instruments>,
    ) -> Result<Router<RouteService>, ConfigError> {
        let mut builder = Router::builder();
        // Router errors name a route by its insertion index; this maps it back to the file.
        let mut locations = Vec::new();
        let mut built = Built::default();
        for (s, service) in self.services.iter().enumerate() {
            let upstream = service.upstream();
            let url = format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.path);
            let mut proxy = Proxy::builder(&url)
                .map_err(|e| ConfigError::invalid(origin, format!("services[{s}].url"), e.to_string()))?
                .connect_timeout(service.connect_timeout)
                .response_read_timeout(service.read_timeout)
                .request_write_timeout(service.write_timeout)
                .http2_only(service.http2);
            // Validation has checked the targets; an error here is a bug, reported as config.
            let hosts = super::hosts::host_set(service)
                .map_err(|e| ConfigError::invalid(origin, format!("services[{s}].targets"), e.to_string()))?;
            if let Some(hosts) = hosts {
                proxy = proxy.hosts(hosts);
            }
            let proxy = proxy.build::<Body>();
            // One breaker per service, shared by its routes (an Envoy cluster's breakers).
            let breaker = service.circuit_breakers.as_ref().map(|b| b.layer(service.http2));
            // Clones share the live state: the admin endpoints read what the stacks update.
            instruments.borrow_mut().service(&service.name, breaker.clone(), proxy.hosts().clone());
            // One budget per retry policy: the routes that inherit the service's policy share it.
            // Envoy's `max_retries` threshold is the cluster's: one cap for every budget here.
            let max_retries = MaxRetries::new(
                service.circuit_breakers.as_ref().map_or(DEFAULT_MAX_RETRIES, |b| b.max_retries),
            );
            let retry_budget = |at: String, policy: &RetryPolicy| {
                policy.budget(&max_retries).map_err(|e| ConfigError::invalid(origin, at, e.to_string()))
            };
            let service_retry = match &service.retry_policy {
                Some(policy) => Some((policy, retry_budget(format!("services[{s}].retry_policy"), policy)?)),
                None => None,
            };
            for (r, route) in service.routes.iter().enumerate() {
                let timeout = route.timeout.or(service.timeout);
                let retry = match &route.retry_policy {
                    Some(policy) => Some((
                        policy,
                        retry_budget(format!("services[{s}].routes[{r}].retry_policy"), policy)?,
                    )),
                    None => service_retry.clone(),
                };
                // Unnamed routes are logged and templated by their place in the file, so every
                // proxied request has a `route_name` (log analyzers group by it).
                let route_label =
                    route.name.clone().unwrap_or_else(|| format!("{}.routes[{r}]", service.name));
                let (retry_layer, budget_layer) = match retry {
                    Some((policy, budget)) => {
                        let layer = policy.layer();
                        instruments.borrow_mut().retry(
                            &route_label,
                            &service.name,
                            layer.clone(),
                            budget.clone(),
                        );
                        (Some(layer), Some(RetryBudgetLayer::new(budget)))
                    }
                    None => (None, None),
                };
                // Outermost first: the route timeout covers every try and backoff; the budget
                // counts each client request once, outside the retries.
                let stack = ServiceBuilder::new()
                    .option_layer(timeout.map(RouteTimeoutLayer::new))
                    .option_layer(breaker.clone())
                    .option_layer(budget_layer)
                    .option_layer(retry_layer)
                    .service(proxy.clone());
                let mut stack = BoxCloneSyncService::new(stack);
                // Innermost first: the highest-priority plugin ends up outermost and runs first.
                for applicable in plugin::applicable(self, s, r).into_iter().rev() {
                    let ctx = |path: String, consumer| PluginContext {
                        origin,
                        config: self,
                        service,
                        path,
                        consumer,
                        instruments,
                        route_label: &route_label,
                    };
                    let generic = match applicable.generic {
                        Some(i) => Some(built.wrap(&ctx(i.path, None), i.plugin, None)?),
                        None => None,
                    };
                    if applicable.consumers.is_empty() {
                        stack = generic.map_or(stack.clone(), |wrap| wrap(stack));
                        continue;
                    }
                    // Consumer-scoped instances: each wraps the same inner stack; a request picks
                    // one by its consumer.
                    let mut by_consumer = HashMap::new();
                    for (c, i) in applicable.consumers {
                        let consumer = &self.consumers[c];
                        let wrap = built.wrap(&ctx(i.path, Some(consumer)), i.plugin, Some(c))?;
                        by_consumer.insert(plugin::consumer_identity(consumer).id, wrap(stack.clone()));
                    }
                    let generic = generic.map_or(stack.clone(), |wrap| wrap(stack));
                    stack = BoxCloneSyncService::new(plugin::ConsumerScoped::new(generic, by_consumer));
                }
                let mut spec = Route::new()
                    .service_name(service.name.clone())
                    .paths(route.paths.iter().map(RoutePath::to_string))
                    .methods(route.methods.iter().map(|m| m.as_str().to_owned()))
                    .hosts(route.hosts.iter().cloned())
                    .strip_path(route.strip_path)
                    .preserve_host(route.preserve_host)
                    .regex_priority(route.regex_priority)
                    .case_insensitive_paths(route.case_insensitive_paths);
                spec = spec.name(route_label);
                for (header, values) in &route.headers {
                    spec = spec.header(header.clone(), values.iter().cloned());
                }
                locations.push(format!("services[{s}].routes[{r}]"));
                builder = builder.route(spec, stack);
            }
        }
        self.check_unbuilt_plugins(origin, &built.paths)?;
        builder.build().map_err(|e| {
            let at = e.route().and_then(|label| locations.get(label.index).cloned());
            ConfigError::invalid(origin, at.unwrap_or_else(|| "services".to_owned()), e.to_string())
        })
    }

    /// Builds, and drops, every plugin instance that no route runs (on a service without
    /// routes, global in a file without routes, disabled, outranked on every route, or scoped to
    /// a consumer and route that never meet), so that its config errors surface at load like
    /// any other's, with the file and the path. Kong validates every plugin entity whether or
    /// not it ends up running.
    ///
    /// Each is built by its own `build` (the only parser of its `config`), with its own service
    /// when it is written in one or names a route, else the first one, else a placeholder;
    /// whatever it registers goes to a scratch [`Instruments`] dropped with it, so `/status`
    /// and `/metrics` list only what runs.
    fn check_unbuilt_plugins(&self, origin: &str, built: &HashSet<String>) -> Result<(), ConfigError> {
        let mut placeholder: Option<Service> = None;
        for written in plugin::written(self) {
            if built.contains(&written.path) {
                continue;
            }
            if placeholder.is_none() {
                placeholder = Some(placeholder_service(origin, &written.path)?);
            }
            let Some(placeholder) = &placeholder else { continue };
            let s = written.service.or((!self.services.is_empty()).then_some(0));
            let service = s.map_or(placeholder, |s| &self.services[s]);
            let scratch = RefCell::new(Instruments::default());
            let ctx = PluginContext {
                origin,
                config: self,
                service,
                route_label: &written.path,
                path: written.path.clone(),
                consumer: written.consumer.map(|c| &self.consumers[c]),
                instruments: &scratch,
            };
            plugin::build(&ctx, written.plugin)?;
        }
        Ok(())
    }
}

/// The plugin instances built so far while building the routes.
#[derive(Default)]
struct Built {
    /// The instances that every route they apply to shares ([`plugin::shared_across_routes`]),
    /// by path and consumer index.
    shared: HashMap<(String, Option<usize>), Wrap>,
    /// Every instance built for some route, shared or not.
    paths: HashSet<String>,
}

impl Built {
    /// The [`Wrap`] of the instance at `ctx.path` (scoped to consumer `consumer`, by index) for
    /// the route in `ctx`: built once and reused on every route when the plugin allows it, so
    /// those routes share its state (one JWKS cache, one introspection cache); built anew for
    /// each route otherwise.
    fn wrap(
        &mut self,
        ctx: &PluginContext<'_>,
        plugin: &Plugin,
        consumer: Option<usize>,
    ) -> Result<Wrap, ConfigError> {
        if !self.paths.contains(&ctx.path) {
            self.paths.insert(ctx.path.clone());
        }
        if !plugin::shared_across_routes(&plugin.name) {
            return plugin::build(ctx, plugin);
        }
        let key = (ctx.path.clone(), consumer);
        if let Some(wrap) = self.shared.get(&key) {
            return Ok(wrap.clone());
        }
        let wrap = plugin::build(ctx, plugin)?;
        self.shared.insert(key, wrap.clone());
        Ok(wrap)
    }
}

/// A service and a route with every field at its default, for checking plugin instances in a
/// file that has none to build them against.
fn placeholder_service(origin: &str, path: &str) -> Result<Service, ConfigError> {
    // Parses from a mapping with an empty name; a failure would be a bug in the schema.
    serde_yaml_ng::from_str("name: ''")
        .map_err(|e| ConfigError::invalid(origin, path.to_owned(), format!("internal error: {e}")))
}
