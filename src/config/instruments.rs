//! Live handles on the stateful parts a config build made (rate limiters, and the resilience
//! components as they land), so the gateway's admin endpoints can report on them: `/status`
//! reads them on every call, `/metrics` collects them on every scrape.
//!
//! A component built from the config registers itself here while the router is built
//! ([`Config::build_router_with`](super::Config::build_router_with)); plugin builders reach the
//! same value through their `PluginContext`.

use std::fmt;
use std::sync::Arc;

/// Live state of one service for `GET /status`: implemented by the components that know it
/// (the circuit breaker, outlier detection) and registered with
/// [`Instruments::service_probe`].
pub trait ServiceProbe: Send + Sync + fmt::Debug + 'static {
    /// The circuit breaker's state (`closed`, `open`, `half_open`), if this probe knows it.
    fn breaker_state(&self) -> Option<&'static str> {
        None
    }

    /// Whether `target` (as `/status` lists it: the service URL for now, `http://host:port`
    /// per host once services have several) is ejected by outlier detection, if this probe
    /// knows it.
    fn is_ejected(&self, target: &str) -> Option<bool> {
        let _ = target;
        None
    }
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
    /// The limiter itself.
    pub layer: crate::ratelimit::RateLimitLayer,
}

/// What a config build exposes to the admin endpoints: the stateful parts it built register
/// here while the router is built ([`Config::build_router_with`](super::Config::build_router_with)),
/// and the gateway reads them for `/status` (on every call) and `/metrics` (on every scrape).
#[derive(Default)]
pub struct Instruments {
    pub(crate) services: Vec<(String, Arc<dyn ServiceProbe>)>,
    #[cfg(feature = "ratelimit")]
    pub(crate) rate_limiters: Vec<RateLimiterInstrument>,
    #[cfg(feature = "metrics")]
    pub(crate) collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
}

impl fmt::Debug for Instruments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Instruments");
        d.field("services", &self.services);
        #[cfg(feature = "ratelimit")]
        d.field("rate_limiters", &self.rate_limiters);
        #[cfg(feature = "metrics")]
        d.field("collectors", &self.collectors.len());
        d.finish()
    }
}

impl Instruments {
    /// Registers what `probe` knows about `service` (several probes may report on one service:
    /// the first that knows an answer gives it).
    pub fn service_probe(&mut self, service: &str, probe: Arc<dyn ServiceProbe>) {
        self.services.push((service.to_owned(), probe));
    }

    /// The probes registered for `service`.
    pub fn probes_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Arc<dyn ServiceProbe>> + 'a {
        self.services.iter().filter(move |(s, _)| s == service).map(|(_, p)| p)
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
    #[cfg(feature = "metrics")]
    pub(crate) fn take_collectors(&mut self) -> Vec<Box<dyn prometheus_client::collector::Collector>> {
        std::mem::take(&mut self.collectors)
    }
}
