//! The resilience components' state, read at scrape time: one collector for every circuit
//! breaker, host set and retry layer a gateway built, so each metric name is described once
//! whatever the number of services and routes.
//!
//! Labels come from the config only: service and route names, and host addresses as the
//! config's `targets` (or `url`) spell them.

use std::fmt;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::resilience::balance::{HostSet, HostSetStatus};
use crate::resilience::breaker::{BreakerSnapshot, BreakerState, CircuitBreakerLayer};
use crate::resilience::retry::{RetryLayer, RetrySnapshot};

const BREAKER_STATES: [BreakerState; 3] = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];

/// What the collector reports on; [`Metrics::watch_service`](super::Metrics::watch_service) and
/// [`Metrics::watch_retries`](super::Metrics::watch_retries) add to it.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    pub(crate) services: Vec<(String, Option<CircuitBreakerLayer>, HostSet)>,
    pub(crate) retries: Vec<(String, String, RetryLayer)>,
}

/// The one collector of resilience metrics.
#[derive(Debug)]
pub(crate) struct ResilienceCollector(pub(crate) Arc<Mutex<Watched>>);

/// A sample's value: counters are `u64`, gauges `i64`.
trait Sample: Copy {
    const KIND: MetricType;
    fn encode(self, metric: MetricEncoder<'_>) -> Result<(), fmt::Error>;
}

impl Sample for u64 {
    const KIND: MetricType = MetricType::Counter;
    fn encode(self, mut metric: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        metric.encode_counter::<NoLabelSet, u64, u64>(&self, None)
    }
}

impl Sample for i64 {
    const KIND: MetricType = MetricType::Gauge;
    fn encode(self, mut metric: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        metric.encode_gauge(&self)
    }
}

type Emit<'a, V> = dyn FnMut(&[(&str, &str)], V) -> Result<(), fmt::Error> + 'a;

/// One family (a counter when `V` is `u64`, a gauge when `i64`): described once, then the
/// samples `samples` emits for each item. Nothing at all when there are no items.
fn family<T, V: Sample>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    items: &[T],
    mut samples: impl FnMut(&T, &mut Emit<'_, V>) -> Result<(), fmt::Error>,
) -> Result<(), fmt::Error> {
    if items.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, V::KIND)?;
    for item in items {
        samples(item, &mut |labels, value| value.encode(family.encode_family(&labels)?))?;
    }
    Ok(())
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for ResilienceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        // Snapshot everything first, so the lock is held for the reads only.
        let (breakers, hosts, retries) = {
            let watched = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let breakers: Vec<(String, BreakerSnapshot)> = watched
                .services
                .iter()
                .filter_map(|(name, breaker, _)| breaker.as_ref().map(|b| (name.clone(), b.snapshot())))
                .collect();
            let hosts: Vec<(String, HostSetStatus)> =
                watched.services.iter().map(|(name, _, hosts)| (name.clone(), hosts.status())).collect();
            let retries: Vec<(String, String, RetrySnapshot)> = watched
                .retries
                .iter()
                .map(|(route, service, layer)| (route.clone(), service.clone(), layer.snapshot()))
                .collect();
            (breakers, hosts, retries)
        };
        let e = &mut encoder;

        family(
            e,
            "circuit_breaker_state",
            "Circuit breaker state per service: 1 for the current state (closed, open, half_open), 0 for the others",
            &breakers,
            |(service, b), emit| {
                for state in BREAKER_STATES {
                    emit(&[("service", service), ("state", state.as_str())], i64::from(b.state == state))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "circuit_breaker_opened",
            "Times the circuit breaker opened (half-open to open included)",
            &breakers,
            |(service, b), emit| emit(&[("service", service)], b.times_opened),
        )?;
        family(
            e,
            "circuit_breaker_failed_fast",
            "Requests answered 503 because the circuit was open or its half-open probes were taken",
            &breakers,
            |(service, b), emit| emit(&[("service", service)], b.failed_fast),
        )?;
        family(
            e,
            "circuit_breaker_overflows",
            "Requests answered 503 because a threshold (max_requests, max_pending_requests, max_connections) was reached",
            &breakers,
            |(service, b), emit| emit(&[("service", service)], b.overflows),
        )?;
        family(
            e,
            "circuit_breaker_in_flight",
            "Requests in flight through the service's circuit breaker",
            &breakers,
            |(service, b), emit| emit(&[("service", service)], i64::from(b.in_flight)),
        )?;
        family(
            e,
            "circuit_breaker_pending",
            "Requests waiting for a connection under the service's circuit breaker",
            &breakers,
            |(service, b), emit| emit(&[("service", service)], i64::from(b.pending)),
        )?;

        family(
            e,
            "upstream_host_in_flight",
            "Requests sent to the host whose response head has not arrived yet",
            &hosts,
            |(service, set), emit| {
                for host in &set.hosts {
                    emit(&[("service", service), ("host", &host.address)], i64::from(host.in_flight))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "upstream_host_ejected",
            "1 while outlier detection has the host ejected",
            &hosts,
            |(service, set), emit| {
                for host in &set.hosts {
                    emit(&[("service", service), ("host", &host.address)], i64::from(host.ejected))?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "upstream_host_ejections",
            "Times outlier detection ejected the host",
            &hosts,
            |(service, set), emit| {
                for host in &set.hosts {
                    emit(&[("service", service), ("host", &host.address)], host.times_ejected)?;
                }
                Ok(())
            },
        )?;
        family(
            e,
            "upstream_ejected_hosts",
            "Hosts of the service ejected right now",
            &hosts,
            |(service, set), emit| {
                let ejected = set.hosts.iter().filter(|h| h.ejected).count();
                emit(&[("service", service)], gauge(ejected))
            },
        )?;
        family(
            e,
            "upstream_panic",
            "1 while the service routes across all its hosts because too few are healthy (panic mode)",
            &hosts,
            |(service, set), emit| emit(&[("service", service)], i64::from(set.panic)),
        )?;

        family(e, "retries", "Retries sent, by route", &retries, |(route, service, r), emit| {
            emit(&[("route", route), ("service", service)], r.retries)
        })?;
        family(
            e,
            "retries_exhausted",
            "Requests whose last try was still retriable when num_retries ran out",
            &retries,
            |(route, service, r), emit| emit(&[("route", route), ("service", service)], r.exhausted),
        )?;
        family(
            e,
            "retry_budget_exhausted",
            "Retries skipped because the retry budget was spent",
            &retries,
            |(route, service, r), emit| emit(&[("route", route), ("service", service)], r.budget_exhausted),
        )?;
        family(
            e,
            "retry_overflow",
            "Retries skipped because max_retries retries were in flight",
            &retries,
            |(route, service, r), emit| emit(&[("route", route), ("service", service)], r.overflow),
        )?;
        Ok(())
    }
}
