//! Config → tower services: the one place where policy (the file) meets mechanism (the layers).
//! Nothing here decides how a request is handled; it only chooses and stacks layers.

use std::collections::HashMap;
use std::convert::Infallible;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::ConfigError;
use super::plugin::{self, PluginContext};
use super::schema::{Config, RoutePath};
use crate::body::Body;
use crate::proxy::Proxy;
use crate::router::{Route, Router};
use crate::timeout::RouteTimeoutLayer;

/// The per-route stack behind the router: the route's layers, then the proxy.
pub type RouteService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

impl Config {
    /// Builds the router with one proxying stack per route.
    ///
    /// `origin` names the file in errors, as [`Config::from_file`] does.
    pub fn build_router(&self, origin: &str) -> Result<Router<RouteService>, ConfigError> {
        let mut builder = Router::builder();
        // Router errors name a route by its insertion index; this maps it back to the file.
        let mut locations = Vec::new();
        for (s, service) in self.services.iter().enumerate() {
            let upstream = service.upstream();
            let url = format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.path);
            let proxy = Proxy::builder(&url)
                .map_err(|e| ConfigError::invalid(origin, format!("services[{s}].url"), e.to_string()))?
                .connect_timeout(service.connect_timeout)
                .http2_only(service.http2)
                .build::<Body>();
            for (r, route) in service.routes.iter().enumerate() {
                let timeout = route.timeout.or(service.timeout);
                let stack = ServiceBuilder::new()
                    .option_layer(timeout.map(RouteTimeoutLayer::new))
                    .service(proxy.clone());
                let mut stack = BoxCloneSyncService::new(stack);
                // Innermost first: the highest-priority plugin ends up outermost and runs first.
                for applicable in plugin::applicable(self, s, r).into_iter().rev() {
                    let ctx = |path: String, consumer| PluginContext {
                        origin,
                        config: self,
                        service,
                        route,
                        path,
                        consumer,
                    };
                    let generic = match applicable.generic {
                        Some(i) => Some(plugin::build(&ctx(i.path, None), i.plugin)?),
                        None => None,
                    };
                    if applicable.consumers.is_empty() {
                        stack = generic.map_or(stack.clone(), |wrap| wrap(stack));
                        continue;
                    }
                    // Consumer-scoped instances: each built once, here, around the same inner
                    // stack; a request picks one by its consumer.
                    let mut by_consumer = HashMap::new();
                    for (c, i) in applicable.consumers {
                        let consumer = &self.consumers[c];
                        let wrap = plugin::build(&ctx(i.path, Some(consumer)), i.plugin)?;
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
                    .regex_priority(route.regex_priority);
                // Unnamed routes are logged and templated by their place in the file, so every
                // proxied request has a `route_name` (log analyzers group by it).
                spec =
                    spec.name(route.name.clone().unwrap_or_else(|| format!("{}.routes[{r}]", service.name)));
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
