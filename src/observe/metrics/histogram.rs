//! A latency histogram on plain atomics.
//!
//! `prometheus_client::metrics::histogram::Histogram` takes a mutex on every observation; three
//! of them per request, on the same few series from every core, would be the most expensive
//! part of the layer. Here an observation is a scan of a dozen integer bounds and two relaxed
//! `fetch_add`s. The count is the sum of the buckets when encoded, so `_count` always equals the
//! `+Inf` bucket; `_sum` may lag the buckets by the observations in flight, as in every client.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) for whole-request and upstream latency: 0.5 ms to 10 s.
pub(super) const REQUEST_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds (seconds) for the gateway's own overhead: 25 µs to 100 ms.
pub(super) const OVERHEAD_BUCKETS: &[f64] =
    &[0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// The most bounds a histogram has (the `+Inf` bucket comes on top).
const MAX_BOUNDS: usize = 15;

/// A fixed-bucket histogram of durations, shared by its clones.
#[derive(Debug, Clone)]
pub(crate) struct LatencyHistogram(Arc<Inner>);

/// Everything inline in one allocation: an observation touches no other pointer.
#[derive(Debug)]
struct Inner {
    /// `bounds` in nanoseconds, so an observation compares integers; unused entries are
    /// `u64::MAX`, so they never match before the `+Inf` bucket.
    bounds_ns: [u64; MAX_BOUNDS],
    /// One count per bound, then the `+Inf` bucket (at `bounds.len()`); not cumulative.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum_ns: AtomicU64,
    bounds: &'static [f64],
}

impl LatencyHistogram {
    pub(super) fn new(bounds: &'static [f64]) -> Self {
        let bounds = &bounds[..bounds.len().min(MAX_BOUNDS)];
        let mut bounds_ns = [u64::MAX; MAX_BOUNDS];
        for (ns, b) in bounds_ns.iter_mut().zip(bounds) {
            *ns = (b * 1e9).round() as u64;
        }
        Self(Arc::new(Inner { bounds_ns, counts: Default::default(), sum_ns: AtomicU64::new(0), bounds }))
    }

    pub(super) fn request() -> Self {
        Self::new(REQUEST_BUCKETS)
    }

    pub(super) fn overhead() -> Self {
        Self::new(OVERHEAD_BUCKETS)
    }

    #[inline]
    pub(super) fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        let i = inner.bounds_ns.iter().position(|&b| ns <= b).unwrap_or(inner.bounds.len());
        // Past the last real bound every entry is `u64::MAX`: `i` is at most `bounds.len()`,
        // the `+Inf` bucket, except for an observation of exactly `u64::MAX` ns.
        let i = i.min(inner.bounds.len());
        if let Some(count) = inner.counts.get(i) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far (for tests).
    #[cfg(test)]
    pub(super) fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        let mut buckets = Vec::with_capacity(inner.bounds.len() + 1);
        let mut count = 0;
        for (i, c) in inner.counts.iter().enumerate().take(inner.bounds.len() + 1) {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((inner.bounds.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn buckets_are_cumulative_and_count_matches() {
        let h = LatencyHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500)); // le 0.001
        h.observe(Duration::from_millis(1)); // le 0.001 (bounds are inclusive)
        h.observe(Duration::from_millis(5)); // le 0.01
        h.observe(Duration::from_secs(2)); // +Inf
        let mut registry = Registry::default();
        registry.register("t", "test", h.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_bucket{le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"0.01\"} 3\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_count 4\n"), "{text}");
        assert!(text.contains("t_sum 2.0065\n"), "{text}");
        assert_eq!(h.count(), 4);
    }
}
