//! Prometheus metrics (feature `metrics`): a [`MetricsLayer`] that counts and times every
//! request, and a [`Metrics`] handle that renders them as Prometheus text.
//!
//! Built on [`prometheus_client`], the official Prometheus Rust client: typed label sets, no
//! global registry (each [`Metrics`] owns its own), OpenMetrics and Prometheus text output.
//!
//! # What is recorded
//!
//! The layer reads what the other layers already put in the *response* extensions, so it
//! re-computes nothing. Put it outside the router (and outside the sanitizer, so that refused
//! requests count too).
//!
//! | metric | labels | source |
//! |---|---|---|
//! | `portcullis_requests_total` | `route`, `service`, `status_class` (`2xx`, `4xx`, ...) | response status ([`MatchedRoute`] for the names) |
//! | `portcullis_request_duration_seconds` (histogram) | `route`, `service` | entering the layer to the response head |
//! | `portcullis_upstream_duration_seconds` (histogram) | `route`, `service` | [`UpstreamInfo`] latency |
//! | `portcullis_gateway_overhead_seconds` (histogram) | `route`, `service` | the two above, subtracted (proxied requests only) |
//! | `portcullis_rate_limit_decisions_total` | `route`, `service`, `outcome` (`allowed`, `limited`, `bypassed`, `unavailable`: the words of [`RateLimitOutcome::as_str`]) | [`RateLimitOutcome`] |
//! | `portcullis_auth_failures_total` | `plugin`, `reason` | [`AuthFailure`] |
//! | `portcullis_access_log_dropped_lines_total` | | [`Metrics::watch_access_log`] |
//! | `portcullis_connections_open` (gauge), `portcullis_connections_rejected_total` | | the gateway's proxy listener (`gateway.max_connections`), registered by `gateway::Gateway` (feature `gateway`) |
//! | `portcullis_circuit_breaker_state` (gauge, 1 for the current state) | `service`, `state` (`closed`, `open`, `half_open`) | [`Metrics::watch_service`] (feature `proxy`) |
//! | `portcullis_circuit_breaker_opened_total`, `_failed_fast_total`, `_overflows_total`; `portcullis_circuit_breaker_in_flight`, `_pending` (gauges) | `service` | [`Metrics::watch_service`] |
//! | `portcullis_upstream_host_ejected` (gauge, 0 or 1), `portcullis_upstream_host_ejections_total`, `portcullis_upstream_host_in_flight` (gauge) | `service`, `host` | [`Metrics::watch_service`] |
//! | `portcullis_upstream_ejected_hosts`, `portcullis_upstream_panic` (gauges) | `service` | [`Metrics::watch_service`] |
//! | `portcullis_retries_total`, `portcullis_retries_exhausted_total`, `portcullis_retry_budget_exhausted_total`, `portcullis_retry_overflow_total` | `route`, `service` | [`Metrics::watch_retries`] |
//!
//! A request is recorded when its response head is ready (an inner `Err` counts as `5xx`); a
//! request whose client went away before that is not recorded (the access log has it, as 499).
//!
//! Labels are bounded by construction: route and service names come from the router (the
//! config), `host` is an upstream address as the config spells it, the rest are fixed words. No consumer id, IP, path, header or token is ever a label.
//! Requests that matched no route have `route=""` and `service=""`.
//!
//! # Cost
//!
//! Each route's series are resolved once, on its first request, and cached by the identity of
//! the route's `Arc<RouteInfo>` in a lock-free table: a request costs one clock read, four
//! extension look-ups, a pointer-keyed probe and a handful of relaxed atomic adds. No string is
//! hashed and no lock is taken on the hot path (`benches/metrics.rs`).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use portcullis::observe::metrics::{Metrics, MetricsLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let metrics = Metrics::new();
//! let svc = ServiceBuilder::new().layer(MetricsLayer::new(metrics.clone())).service_fn(
//!     |_req: Request<()>| async { Ok::<_, Infallible>(Response::new(Bytes::from_static(b"hi"))) },
//! );
//! svc.oneshot(Request::get("/hello").body(()).unwrap()).await.unwrap();
//!
//! // Something of your own, read at scrape time.
//! metrics.register_gauge_fn("queue_depth", "Jobs waiting", || 3);
//!
//! let text = metrics.render();
//! assert!(text.contains(r#"portcullis_requests_total{route="",service="",status_class="2xx"} 1"#));
//! assert!(text.contains("portcullis_queue_depth 3"));
//! assert!(text.ends_with("# EOF\n"));
//! # }
//! ```
//!
//! # Contributing metrics from other components
//!
//! Three ways, all collected into the same output under the `portcullis_` prefix (write help
//! texts without a final period: the encoder adds one; leave `_total` off counter names: the
//! encoder adds it):
//!
//! - a number read at scrape time: [`Metrics::register_counter_fn`], [`Metrics::register_gauge_fn`];
//! - a `prometheus_client` metric the component updates itself (a `Family<Labels, Gauge>`, say):
//!   [`Metrics::register`];
//! - labelled series computed at scrape time (one per service, one per host): a
//!   [`Collector`], registered with [`Metrics::register_collector`]:
//!
//! ```
//! use prometheus_client::collector::Collector;
//! use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
//! use prometheus_client::metrics::gauge::ConstGauge;
//! use portcullis::observe::metrics::Metrics;
//!
//! /// Circuit breaker state per service, read when Prometheus scrapes.
//! #[derive(Debug)]
//! struct Breakers(Vec<(String, &'static str)>);
//!
//! impl Collector for Breakers {
//!     fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
//!         let gauge = ConstGauge::new(1i64);
//!         let mut family = encoder.encode_descriptor(
//!             "breaker_state",
//!             "Circuit breaker state (1 for the current state)",
//!             None,
//!             gauge.metric_type(),
//!         )?;
//!         for (service, state) in &self.0 {
//!             let labels = [("service", service.as_str()), ("state", *state)];
//!             gauge.encode(family.encode_family(&labels)?)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let metrics = Metrics::new();
//! metrics.register_collector(Breakers(vec![("orders".into(), "open")]));
//! assert!(metrics.render().contains(r#"portcullis_breaker_state{service="orders",state="open"} 1"#));
//! ```
//!
//! [`MatchedRoute`]: crate::ext::MatchedRoute
//! [`UpstreamInfo`]: crate::ext::UpstreamInfo
//! [`RateLimitOutcome`]: crate::ext::RateLimitOutcome
//! [`AuthFailure`]: crate::ext::AuthFailure

mod histogram;
mod layer;
#[cfg(feature = "proxy")]
mod resilience;
mod routes;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response};
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Metric, Registry, Unit};

pub use layer::{MetricsLayer, MetricsService, ResponseFuture};

use self::histogram::LatencyHistogram;
use self::routes::RouteCache;
use crate::ext::RateLimitOutcome;
use crate::observe::access_log::LogSink;

/// `Content-Type` of the OpenMetrics text format ([`Format::OpenMetrics`]).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `Content-Type` of the Prometheus text format 0.0.4 ([`Format::PrometheusText`]).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`# EOF` at the end, `_total` only on samples).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// OpenMetrics when the scraper's `Accept` asks for it (as Prometheus does), else the
    /// classic text format that every scraper reads.
    pub fn negotiate(headers: &HeaderMap) -> Self {
        const OPENMETRICS: &[u8] = b"application/openmetrics-text";
        let wants_openmetrics = headers.get_all(ACCEPT).iter().any(|value| {
            value.as_bytes().windows(OPENMETRICS.len()).any(|w| w.eq_ignore_ascii_case(OPENMETRICS))
        });
        if wants_openmetrics { Format::OpenMetrics } else { Format::PrometheusText }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::PrometheusText => PROMETHEUS_TEXT_CONTENT_TYPE,
        }
    }
}

/// The metrics of one gateway (or one stack): a registry and the series [`MetricsLayer`]
/// records into. Clones share everything (an `Arc`).
#[derive(Clone)]
pub struct Metrics {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What the clones of a [`Metrics`] share.
pub(crate) struct Shared {
    /// Only scrapes and registrations take this lock, never a request.
    registry: Mutex<Registry>,
    pub(crate) families: Families,
    pub(crate) routes: RouteCache,
    /// The rate limiters whose store errors are reported (one collector for all, so the
    /// metric is described once).
    #[cfg(feature = "ratelimit")]
    rate_limiters: Arc<Mutex<Vec<(String, crate::ratelimit::RateLimitLayer)>>>,
    /// The breakers, host sets and retry layers reported (one collector for all).
    #[cfg(feature = "proxy")]
    resilience: Arc<Mutex<resilience::Watched>>,
}

/// Label set of the per-route series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) route: String,
    pub(crate) service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    route: String,
    service: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RateLimitLabels {
    route: String,
    service: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthLabels {
    plugin: &'static str,
    reason: &'static str,
}

type HistogramFamily = Family<RouteLabels, LatencyHistogram, fn() -> LatencyHistogram>;

/// The families [`MetricsLayer`] records into.
pub(crate) struct Families {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    upstream: HistogramFamily,
    overhead: HistogramFamily,
    rate_limit: Family<RateLimitLabels, Counter>,
    auth_failures: Family<AuthLabels, Counter>,
}

/// Status classes, indexed by `status / 100 - 1`; anything else is `other`.
pub(crate) const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

impl Families {
    pub(crate) fn request_counter(&self, labels: &RouteLabels, class: usize) -> Counter {
        let status_class = STATUS_CLASSES.get(class).copied().unwrap_or("other");
        self.requests.get_or_create_owned(&RequestLabels {
            route: labels.route.clone(),
            service: labels.service.clone(),
            status_class,
        })
    }

    pub(crate) fn rate_limit_counter(&self, labels: &RouteLabels, outcome: usize) -> Counter {
        let outcome = RateLimitOutcome::ALL.get(outcome).map_or("other", |o| o.as_str());
        self.rate_limit.get_or_create_owned(&RateLimitLabels {
            route: labels.route.clone(),
            service: labels.service.clone(),
            outcome,
        })
    }

    pub(crate) fn duration(&self, labels: &RouteLabels) -> LatencyHistogram {
        self.duration.get_or_create_owned(labels)
    }

    pub(crate) fn upstream(&self, labels: &RouteLabels) -> LatencyHistogram {
        self.upstream.get_or_create_owned(labels)
    }

    pub(crate) fn overhead(&self, labels: &RouteLabels) -> LatencyHistogram {
        self.overhead.get_or_create_owned(labels)
    }

    /// Auth failures are rarer than requests and keyed by two static words: the family's own
    /// map is cheap enough.
    pub(crate) fn auth_failure(&self, plugin: &'static str, reason: &'static str) {
        self.auth_failures.get_or_create(&AuthLabels { plugin, reason }).inc();
    }
}

impl Metrics {
    /// Empty metrics; every name gets the `portcullis_` prefix.
    pub fn new() -> Self {
        let families = Families {
            requests: Family::default(),
            duration: Family::new_with_constructor(LatencyHistogram::request as fn() -> LatencyHistogram),
            upstream: Family::new_with_constructor(LatencyHistogram::request as fn() -> LatencyHistogram),
            overhead: Family::new_with_constructor(LatencyHistogram::overhead as fn() -> LatencyHistogram),
            rate_limit: Family::default(),
            auth_failures: Family::default(),
        };
        let mut registry = Registry::with_prefix("portcullis");
        registry.register(
            "requests",
            "Requests by route, service and status class",
            families.requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Time from entering the gateway to the response head, upstream included",
            Unit::Seconds,
            families.duration.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time from sending the request upstream to the upstream's response head",
            Unit::Seconds,
            families.upstream.clone(),
        );
        registry.register_with_unit(
            "gateway_overhead",
            "Time spent in the gateway itself: request duration minus upstream duration (proxied requests)",
            Unit::Seconds,
            families.overhead.clone(),
        );
        registry.register(
            "rate_limit_decisions",
            "Rate-limit decisions by route and outcome (allowed, limited, bypassed)",
            families.rate_limit.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by an auth plugin, by plugin and reason",
            families.auth_failures.clone(),
        );
        #[cfg(feature = "ratelimit")]
        let rate_limiters = Arc::new(Mutex::new(Vec::new()));
        #[cfg(feature = "ratelimit")]
        registry.register_collector(Box::new(RateLimitStoreErrors(rate_limiters.clone())));
        #[cfg(feature = "proxy")]
        let resilience = Arc::new(Mutex::new(resilience::Watched::default()));
        #[cfg(feature = "proxy")]
        registry.register_collector(Box::new(resilience::ResilienceCollector(resilience.clone())));
        let routes = RouteCache::new();
        Self {
            shared: Arc::new(Shared {
                registry: Mutex::new(registry),
                families,
                routes,
                #[cfg(feature = "ratelimit")]
                rate_limiters,
                #[cfg(feature = "proxy")]
                resilience,
            }),
        }
    }

    /// A layer recording into these metrics.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer::new(self.clone())
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while encoding leaves the registry as it was: keep serving it.
        self.shared.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every metric as OpenMetrics text (ends with `# EOF`).
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// Every metric in `format`.
    pub fn render_as(&self, format: Format) -> String {
        let registry = self.registry();
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a `String` cannot fail; a collector that fails leaves its part out.
        let result = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
            Format::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            }
        };
        if let Err(error) = result {
            tracing::warn!(target: "portcullis::metrics", %error, "a metric failed to encode");
        }
        text
    }

    /// The answer to a scrape: the format the `Accept` header asks for ([`Format::negotiate`]),
    /// with its `Content-Type`.
    pub fn scrape_response<B: From<Bytes>>(&self, request_headers: &HeaderMap) -> Response<B> {
        let format = Format::negotiate(request_headers);
        let mut response = Response::new(B::from(Bytes::from(self.render_as(format))));
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
        response
    }

    /// Registers a `prometheus_client` metric that its owner updates (a `Counter`, a
    /// `Family<Labels, Gauge>`, ...). `name` gets the `portcullis_` prefix; leave `_total` off
    /// counter names, the encoder adds it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers a [`Collector`]: its `encode` runs on every scrape, so it can report labelled
    /// series computed then (breaker state per service, ejected hosts).
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry().register_collector(Box::new(collector));
    }

    /// The collectors a config build gathered ([`Instruments`](crate::config::Instruments)).
    #[cfg(feature = "gateway")]
    pub(crate) fn register_boxed_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// A counter whose value `read` returns at scrape time (`name` without `_total`).
    pub fn register_counter_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.register(name, help, ReadAtScrape { kind: MetricType::Counter, read: Box::new(read) });
    }

    /// A gauge whose value `read` returns at scrape time.
    pub fn register_gauge_fn(&self, name: &str, help: &str, read: impl Fn() -> i64 + Send + Sync + 'static) {
        self.register(name, help, ReadAtScrape { kind: MetricType::Gauge, read: Box::new(read) });
    }

    /// Exposes the access log's dropped lines (call it once per sink) as `portcullis_access_log_dropped_lines_total`
    /// and its written lines as `portcullis_access_log_lines_total`.
    pub fn watch_access_log(&self, sink: &LogSink) {
        let dropped = sink.clone();
        self.register_counter_fn(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind",
            move || dropped.dropped(),
        );
        let written = sink.clone();
        self.register_counter_fn("access_log_lines", "Access-log lines written", move || {
            written.lines_written()
        });
    }

    /// Exposes a rate limiter's store failures as
    /// `portcullis_rate_limit_store_errors_total{route, kind}` (`kind`: `unavailable`,
    /// `script`), read at scrape time.
    #[cfg(feature = "ratelimit")]
    pub fn watch_rate_limiter(&self, route: &str, limiter: &crate::ratelimit::RateLimitLayer) {
        let mut limiters = self.shared.rate_limiters.lock().unwrap_or_else(|p| p.into_inner());
        limiters.push((route.to_owned(), limiter.clone()));
    }

    /// Exposes an upstream service's circuit breaker (if any) and hosts, read at scrape time:
    ///
    /// - `portcullis_circuit_breaker_state{service, state}` (gauge: 1 for the current state of
    ///   `closed`, `open`, `half_open`, 0 for the others), `portcullis_circuit_breaker_opened_total`,
    ///   `..._failed_fast_total`, `..._overflows_total`, `portcullis_circuit_breaker_in_flight`,
    ///   `..._pending` (all `{service}`), for services with a breaker;
    /// - `portcullis_upstream_host_in_flight{service, host}`, `portcullis_upstream_host_ejected`
    ///   (gauge, 0 or 1), `portcullis_upstream_host_ejections_total`, and per service
    ///   `portcullis_upstream_ejected_hosts{service}` and `portcullis_upstream_panic{service}`
    ///   (gauge, 0 or 1). `host` is the address as the config spells it.
    #[cfg(feature = "proxy")]
    pub fn watch_service(
        &self,
        service: &str,
        breaker: Option<&crate::resilience::breaker::CircuitBreakerLayer>,
        hosts: &crate::resilience::balance::HostSet,
    ) {
        let mut watched = self.shared.resilience.lock().unwrap_or_else(|p| p.into_inner());
        watched.services.push((service.to_owned(), breaker.cloned(), hosts.clone()));
    }

    /// Exposes a route's retry counters, read at scrape time:
    /// `portcullis_retries_total{route, service}`, `portcullis_retries_exhausted_total`,
    /// `portcullis_retry_budget_exhausted_total`, `portcullis_retry_overflow_total`.
    #[cfg(feature = "proxy")]
    pub fn watch_retries(&self, route: &str, service: &str, retry: &crate::resilience::retry::RetryLayer) {
        let mut watched = self.shared.resilience.lock().unwrap_or_else(|p| p.into_inner());
        watched.retries.push((route.to_owned(), service.to_owned(), retry.clone()));
    }
}

/// A counter or gauge read from a closure when encoded.
struct ReadAtScrape<T> {
    kind: MetricType,
    read: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> fmt::Debug for ReadAtScrape<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadAtScrape").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl EncodeMetric for ReadAtScrape<u64> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.encode_counter::<NoLabelSet, u64, u64>(&(self.read)(), None)
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

impl EncodeMetric for ReadAtScrape<i64> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.encode_gauge(&(self.read)())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

#[cfg(feature = "ratelimit")]
#[derive(Debug)]
struct RateLimitStoreErrors(Arc<Mutex<Vec<(String, crate::ratelimit::RateLimitLayer)>>>);

#[cfg(feature = "ratelimit")]
impl Collector for RateLimitStoreErrors {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        let limiters = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if limiters.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "rate_limit_store_errors",
            "Rate-limit decisions the store could not make, by route and kind (unavailable, script)",
            None,
            MetricType::Counter,
        )?;
        // A route may have several limiters (a consumer's own quota beside the generic one):
        // one series per route, their sum, as Prometheus forbids a series twice.
        let mut by_route: Vec<(&str, u64, u64)> = Vec::new();
        for (route, limiter) in limiters.iter() {
            let stats = limiter.stats();
            match by_route.iter_mut().find(|(r, _, _)| *r == route.as_str()) {
                Some(entry) => {
                    entry.1 += stats.unavailable;
                    entry.2 += stats.script_errors;
                }
                None => by_route.push((route, stats.unavailable, stats.script_errors)),
            }
        }
        for (route, unavailable, script) in by_route {
            for (kind, n) in [("unavailable", unavailable), ("script", script)] {
                let labels = [("route", route), ("kind", kind)];
                let mut metric = family.encode_family(&labels)?;
                metric.encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
