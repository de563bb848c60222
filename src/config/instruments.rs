//! Live handles on the stateful parts a config build made (rate limiters, and the resilience
//! components as they land), so the gateway's admin endpoints can report on them: `/status`
//! reads them on every call, `/metrics` collects them on every scrape.
//!
//! A component built from the config registers itself here while the router is built
//! ([`Config::build_router_with`](super::Config::build_router_with)); plugin builders reach the
//! same value through their `PluginContext` (`ctx.instruments.borrow_mut()`).

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
///
/// How a stateful component plugs in — a circuit breaker, say, whose state is an atomic shared
/// by its layer's clones:
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU8, Ordering};
///
/// use portcullis::config::{Instruments, ServiceProbe};
/// # #[cfg(feature = "metrics")]
/// use portcullis::observe::metrics::prometheus_client::{
///     collector::Collector,
///     encoding::{DescriptorEncoder, EncodeMetric},
///     metrics::gauge::ConstGauge,
/// };
///
/// #[derive(Debug, Default)]
/// struct BreakerState(AtomicU8); // 0 closed, 1 open, 2 half-open
///
/// #[derive(Debug)]
/// struct BreakerProbe(Arc<BreakerState>);
///
/// // `/status`: `services[].breaker`.
/// impl ServiceProbe for BreakerProbe {
///     fn breaker_state(&self) -> Option<&'static str> {
///         Some(["closed", "open", "half_open"][usize::from(self.0.0.load(Ordering::Relaxed) % 3)])
///     }
/// }
///
/// // `/metrics`: `portcullis_breaker_open{service="orders"} 0`, read at scrape time.
/// # #[cfg(feature = "metrics")]
/// #[derive(Debug)]
/// struct BreakerGauge { service: String, state: Arc<BreakerState> }
///
/// # #[cfg(feature = "metrics")]
/// impl Collector for BreakerGauge {
///     fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
///         let open = ConstGauge::new(i64::from(self.state.0.load(Ordering::Relaxed) == 1));
///         let mut family = encoder.encode_descriptor("breaker_open", "1 while the breaker is open", None, open.metric_type())?;
///         open.encode(family.encode_family(&[("service", self.service.as_str())])?)
///     }
/// }
///
/// let state = Arc::new(BreakerState::default()); // the breaker layer holds a clone
/// let mut instruments = Instruments::default();   // in a plugin builder: ctx.instruments.borrow_mut()
/// instruments.service_probe("orders", Arc::new(BreakerProbe(state.clone())));
/// # #[cfg(feature = "metrics")]
/// instruments.collector(BreakerGauge { service: "orders".into(), state });
/// assert_eq!(instruments.probes_of("orders").find_map(|p| p.breaker_state()), Some("closed"));
/// ```
///
/// One collector per *metric name*: a second collector describing the same name would describe
/// the family twice, which Prometheus rejects. Register one collector per kind of component
/// that reports every instance (as [`Metrics::watch_rate_limiter`] does for rate limiters).
///
/// [`Metrics::watch_rate_limiter`]: crate::observe::metrics::Metrics::watch_rate_limiter
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
