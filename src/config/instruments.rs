//! Live handles on the stateful parts a config build made (services' circuit breakers and host
//! sets, routes' retry layers and budgets, rate limiters), so the gateway's admin endpoints can
//! report on them: `/status` reads them on every call, `/metrics` collects them on every scrape.
//!
//! A component built from the config registers itself here while the router is built
//! ([`Config::build_router_with`](super::Config::build_router_with)); plugin builders reach the
//! same value through their `PluginContext` (`ctx.instruments.borrow_mut()`).

use std::fmt;

use crate::resilience::balance::HostSet;
use crate::resilience::breaker::CircuitBreakerLayer;
use crate::resilience::budget::RetryBudget;
use crate::resilience::retry::RetryLayer;

/// One upstream service as built: its circuit breaker (shared by its routes) and its hosts.
///
/// Every field is a handle on live state (clones of the layers in the route stacks), so a
/// snapshot taken through it is current.
#[derive(Debug, Clone)]
pub struct ServiceInstrument {
    /// The service's name.
    pub name: String,
    /// The breaker, when the service has `circuit_breakers`.
    pub breaker: Option<CircuitBreakerLayer>,
    /// The service's hosts (one, the URL's authority, when it has no `targets`).
    pub hosts: HostSet,
}

/// One route's retries as built: its retry layer (counters of this route) and the budget it
/// draws on (shared by the routes inheriting one service-level `retry_policy`).
#[derive(Debug, Clone)]
pub struct RetryInstrument {
    /// The route's name as the router labels it.
    pub route: String,
    /// The route's service.
    pub service: String,
    /// The route's retry layer.
    pub layer: RetryLayer,
    /// The budget its retries draw on.
    pub budget: RetryBudget,
}

/// One rate limiter as built: where it is, and the layer (whose clones share its store and
/// counters).
#[cfg(feature = "ratelimit")]
#[derive(Debug, Clone)]
pub struct RateLimiterInstrument {
    /// The route's name as the router labels it.
    pub route: String,
    /// The route's service.
    pub service: String,
    /// `local` or `redis`.
    pub policy: &'static str,
    /// The consumer whose own quota this is (its id), `None` for the route's generic limiter.
    pub consumer: Option<String>,
    /// The limiter itself.
    pub layer: crate::ratelimit::RateLimitLayer,
}

/// What a config build exposes to the admin endpoints: the stateful parts it built register
/// here while the router is built ([`Config::build_router_with`](super::Config::build_router_with)),
/// and the gateway reads them for `/status` (on every call) and `/metrics` (on every scrape).
///
/// The resilience components register as typed handles ([`service`](Self::service),
/// [`retry`](Self::retry)); the gateway reports them in `/status` and through one collector in
/// `/metrics` ([`Metrics::watch_service`], [`Metrics::watch_retries`]). Anything else with live
/// state can add its own Prometheus [`collector`](Self::collector):
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use portcullis::config::Instruments;
/// use portcullis::resilience::balance::HostSet;
/// use portcullis::resilience::breaker::CircuitBreakerLayer;
/// # #[cfg(feature = "metrics")]
/// use portcullis::observe::metrics::prometheus_client::{
///     collector::Collector,
///     encoding::{DescriptorEncoder, EncodeMetric},
///     metrics::counter::ConstCounter,
/// };
///
/// let mut instruments = Instruments::default(); // in a plugin builder: ctx.instruments.borrow_mut()
/// let breaker = CircuitBreakerLayer::builder().consecutive_failures(5).build();
/// let hosts = HostSet::builder().host("10.0.0.5:8080").build().unwrap();
/// instruments.service("orders", Some(breaker.clone()), hosts);
/// let orders = instruments.service_named("orders").unwrap();
/// assert_eq!(orders.breaker.as_ref().unwrap().snapshot().state.as_str(), "closed");
/// assert_eq!(&*orders.hosts.status().hosts[0].address, "10.0.0.5:8080");
///
/// // `/metrics`: `portcullis_cache_hits_total{cache="tokens"} 0`, read at scrape time.
/// # #[cfg(feature = "metrics")]
/// #[derive(Debug)]
/// struct CacheHits(Arc<AtomicU64>);
///
/// # #[cfg(feature = "metrics")]
/// impl Collector for CacheHits {
///     fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
///         let hits = ConstCounter::new(self.0.load(Ordering::Relaxed));
///         let mut family = encoder.encode_descriptor("cache_hits", "Token cache hits", None, hits.metric_type())?;
///         hits.encode(family.encode_family(&[("cache", "tokens")])?)
///     }
/// }
///
/// # #[cfg(feature = "metrics")]
/// instruments.collector(CacheHits(Arc::default()));
/// ```
///
/// One collector per *metric name*: a second collector describing the same name would describe
/// the family twice, which Prometheus rejects. Register one collector per kind of component
/// that reports every instance (as [`Metrics::watch_rate_limiter`] does for rate limiters).
///
/// [`Metrics::watch_rate_limiter`]: crate::observe::metrics::Metrics::watch_rate_limiter
/// [`Metrics::watch_service`]: crate::observe::metrics::Metrics::watch_service
/// [`Metrics::watch_retries`]: crate::observe::metrics::Metrics::watch_retries
#[derive(Default)]
pub struct Instruments {
    pub(crate) services: Vec<ServiceInstrument>,
    pub(crate) retries: Vec<RetryInstrument>,
    #[cfg(feature = "ratelimit")]
    pub(crate) rate_limiters: Vec<RateLimiterInstrument>,
    #[cfg(feature = "metrics")]
    pub(crate) collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Instruments");
        d.field("services", &self.services);
        d.field("retries", &self.retries);
        #[cfg(feature = "ratelimit")]
        d.field("rate_limiters", &self.rate_limiters);
        #[cfg(feature = "metrics")]
        d.field("collectors", &self.collectors.len());
        d.finish()
    }
}

impl Instruments {
    /// Registers an upstream service: its breaker (if it has one) and its hosts. Pass clones of
    /// the layers the route stacks use, so that the registered handles see their state.
    pub fn service(&mut self, name: &str, breaker: Option<CircuitBreakerLayer>, hosts: HostSet) {
        self.services.push(ServiceInstrument { name: name.to_owned(), breaker, hosts });
    }

    /// The services registered, in registration (config) order.
    pub fn services(&self) -> &[ServiceInstrument] {
        &self.services
    }

    /// The service registered as `name`, if any.
    pub fn service_named(&self, name: &str) -> Option<&ServiceInstrument> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Registers a route's retry layer and the budget it draws on.
    pub fn retry(&mut self, route: &str, service: &str, layer: RetryLayer, budget: RetryBudget) {
        self.retries.push(RetryInstrument {
            route: route.to_owned(),
            service: service.to_owned(),
            layer,
            budget,
        });
    }

    /// The routes' retries registered, in registration (config) order.
    pub fn retries(&self) -> &[RetryInstrument] {
        &self.retries
    }

    /// Registers a rate limiter.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limiter(&mut self, limiter: RateLimiterInstrument) {
        self.rate_limiters.push(limiter);
    }

    /// The rate limiters built.
    #[cfg(feature = "ratelimit")]
    pub fn rate_limiters(&self) -> &[RateLimiterInstrument] {
        &self.rate_limiters
    }

    /// Registers a Prometheus collector, encoded on every scrape of the gateway's `/metrics`
    /// (metric names get the `portcullis_` prefix; see
    /// [`Metrics::register_collector`](crate::observe::metrics::Metrics::register_collector)).
    #[cfg(feature = "metrics")]
    pub fn collector(&mut self, collector: impl prometheus_client::collector::Collector) {
        self.collectors.push(Box::new(collector));
    }

    /// Takes the collectors out (the gateway moves them into its metrics).
    #[cfg(all(feature = "metrics", feature = "gateway"))]
    pub(crate) fn take_collectors(&mut self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        std::mem::take(&mut self.collectors)
    }
}
