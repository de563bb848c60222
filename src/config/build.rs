//! Config → tower services: the one place where policy (the file) meets mechanism (the layers).
//! Nothing here decides how a request is handled; it only chooses and stacks layers.

use std::convert::Infallible;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::plugin::{self, PluginContext};
use super::retry_policy::{DEFAULT_MAX_RETRIES, RetryPolicy};
use super::schema::{Config, RoutePath};
use super::{ConfigError, Instruments};
use crate::body::Body;
use crate::proxy::Proxy;
use crate::resilience::budget::RetryBudgetLayer;
use crate::router::{Route, Router};
use crate::timeout::RouteTimeoutLayer;

/// The per-route stack behind the router: the route's layers, then the proxy.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl Config {
    /// Per-consumer plugin instances (a consumer's own rate-limiting quota) are not wired yet:
    /// refuse them rather than ignore them silently.
    fn refuse_consumer_scoped_plugins(&self, origin: &str) -> Result<(), ConfigError> {
        let not_yet = "consumer-scoped plugins are not supported yet";
        for (c, consumer) in self.consumers.iter().enumerate() {
            let has_plugins = match &consumer.plugins {
                None | Some(serde_yaml_ng::Value::Null) => false,
                Some(serde_yaml_ng::Value::Sequence(list)) => !list.is_empty(),
                Some(_) => true,
            };
            if has_plugins {
                return Err(ConfigError::unsupported(origin, format!("consumers[{c}].plugins"), not_yet));
            }
        }
        let scoped = self.services.iter().enumerate().flat_map(|(s, service)| {
            let on_service = service
                .plugins
                .iter()
                .enumerate()
                .map(move |(i, p)| (format!("services[{s}].plugins[{i}]"), p));
            let on_routes = service.routes.iter().enumerate().flat_map(move |(r, route)| {
                route
                    .plugins
                    .iter()
                    .enumerate()
                    .map(move |(i, p)| (format!("services[{s}].routes[{r}].plugins[{i}]"), p))
            });
            on_service.chain(on_routes)
        });
        let global = self.plugins.iter().enumerate().map(|(i, p)| (format!("plugins[{i}]"), p));
        for (at, plugin) in global.chain(scoped) {
            if plugin.consumer.is_some() {
                return Err(ConfigError::unsupported(origin, format!("{at}.consumer"), not_yet));
            }
        }
        Ok(())
    }

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
        self.refuse_consumer_scoped_plugins(origin)?;
        let mut builder = Router::builder();
        // Router errors name a route by its insertion index; this maps it back to the file.
        let mut locations = Vec::new();
        for (s, service) in self.services.iter().enumerate() {
            let upstream = service.upstream();
            let url = format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.path);
            let mut proxy = Proxy::builder(&url)
                .map_err(|e| ConfigError::invalid(origin, format!("services[{s}].url"), e.to_string()))?
                .connect_timeout(service.connect_timeout)
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
            // Envoy's `max_retries` threshold caps the retries in flight under each budget.
            let max_retries =
                service.circuit_breakers.as_ref().map_or(DEFAULT_MAX_RETRIES, |b| b.max_retries);
            let retry_budget = |at: String, policy: &RetryPolicy| {
                policy.budget(max_retries).map_err(|e| ConfigError::invalid(origin, at, e.to_string()))
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
                for (plugin, path) in plugin::applicable(self, s, r).into_iter().rev() {
                    let ctx = PluginContext {
                        origin,
                        config: self,
                        service,
                        route,
                        path,
                        instruments,
                        route_label: &route_label,
                    };
                    stack = plugin::build(&ctx, plugin)?(stack);
                }
                let mut spec = Route::new()
                    .service_name(service.name.clone())
                    .paths(route.paths.iter().map(RoutePath::to_string))
                    .methods(route.methods.iter().map(|m| m.as_str().to_owned()))
                    .hosts(route.hosts.iter().cloned())
                    .strip_path(route.strip_path)
                    .preserve_host(route.preserve_host)
                    .regex_priority(route.regex_priority);
                spec = spec.name(route_label);
                for (header, values) in &route.headers {
                    spec = spec.header(header.clone(), values.iter().cloned());
                }
                locations.push(format!("services[{s}].routes[{r}]"));
                builder = builder.route(spec, stack);
            }
        }
        builder.build().map_err(|e| {
            let at = e.route().and_then(|label| locations.get(label.index).cloned());
            ConfigError::invalid(origin, at.unwrap_or_else(|| "services".to_owned()), e.to_string())
        })
    }
}
