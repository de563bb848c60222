//! Per-route series, resolved once per route and found again by pointer.
//!
//! The router hands every request of a route the same `Arc<RouteInfo>`, so its address names
//! the route. The first request of a route takes a slot in a fixed open-addressed table of
//! `OnceLock`s (lock-free to read; the slot keeps the `Arc` alive, so the address cannot be
//! reused by another route while the slot names it) and resolves its label sets there; every
//! later request finds the slot with one multiply and a pointer comparison (a few, when
//! addresses collide). Each series inside a
//! slot is created on its first use, so a route that is never rate limited shows no rate-limit
//! series. Past the table's capacity (routes rebuilt by many reloads) or after 32 occupied
//! slots in a row, routes are found by name under a mutex: slower, still correct.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use super::histogram::LatencyHistogram;
use super::{Families, RouteLabels, STATUS_CLASSES};
use crate::ext::RateLimitOutcome;
use crate::ext::RouteInfo;

/// Slots in the table; a power of two.
const SLOTS: usize = 512;
/// Keeps the top `log2(SLOTS)` bits of the 64-bit hash.
const SHIFT: u32 = 64 - SLOTS.trailing_zeros();
/// Slots probed before a route is looked up by name instead (a full table must not cost every
/// overflowing request a scan of all slots).
const PROBES: usize = 32;

/// The series of one (route, service) pair.
pub(crate) struct RouteMetrics {
    labels: RouteLabels,
    requests: [OnceLock<Counter>; STATUS_CLASSES.len()],
    duration: OnceLock<LatencyHistogram>,
    upstream: OnceLock<LatencyHistogram>,
    overhead: OnceLock<LatencyHistogram>,
    rate_limit: [OnceLock<Counter>; RateLimitOutcome::ALL.len()],
}

/// What one request reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    pub(crate) status: u16,
    pub(crate) total: Duration,
    pub(crate) upstream: Option<Duration>,
    /// Index into [`RateLimitOutcome::ALL`].
    pub(crate) rate_limit: Option<usize>,
}

impl RouteMetrics {
    fn new(labels: RouteLabels) -> Self {
        Self {
            labels,
            requests: Default::default(),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
            overhead: OnceLock::new(),
            rate_limit: Default::default(),
        }
    }

    fn of(route: &RouteInfo) -> Self {
        Self::new(labels_of(route))
    }

    pub(crate) fn record(&self, families: &Families, o: Observation) {
        let class = match o.status / 100 {
            c @ 1..=5 => usize::from(c) - 1,
            _ => STATUS_CLASSES.len() - 1,
        };
        if let Some(slot) = self.requests.get(class) {
            slot.get_or_init(|| families.request_counter(&self.labels, class)).inc();
        }
        self.duration.get_or_init(|| families.duration(&self.labels)).observe(o.total);
        if let Some(upstream) = o.upstream {
            self.upstream.get_or_init(|| families.upstream(&self.labels)).observe(upstream);
            let overhead = o.total.saturating_sub(upstream);
            self.overhead.get_or_init(|| families.overhead(&self.labels)).observe(overhead);
        }
        if let Some(slot) = o.rate_limit.and_then(|i| self.rate_limit.get(i).map(|s| (i, s))) {
            let (outcome, slot) = slot;
            slot.get_or_init(|| families.rate_limit_counter(&self.labels, outcome)).inc();
        }
    }
}

fn labels_of(route: &RouteInfo) -> RouteLabels {
    RouteLabels {
        route: route.name.as_deref().unwrap_or_default().to_owned(),
        service: route.service_name.as_deref().unwrap_or_default().to_owned(),
    }
}

/// A route (kept alive, so its address stays its own) and its series.
type Slot = OnceLock<(Arc<RouteInfo>, RouteMetrics)>;

/// Finds a route's [`RouteMetrics`] without hashing a string or taking a lock.
pub(crate) struct RouteCache {
    slots: Box<[Slot]>,
    /// Routes that found no free slot, by name.
    overflow: Mutex<HashMap<RouteLabels, Arc<RouteMetrics>>>,
    /// Requests no route matched (404, refused before routing).
    unmatched: RouteMetrics,
}

impl RouteCache {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            overflow: Mutex::new(HashMap::new()),
            unmatched: RouteMetrics::new(RouteLabels { route: String::new(), service: String::new() }),
        }
    }

    /// Runs `f` with the series of `route` (`None`: no route matched).
    pub(crate) fn with<R>(&self, route: Option<&Arc<RouteInfo>>, f: impl FnOnce(&RouteMetrics) -> R) -> R {
        let Some(route) = route else { return f(&self.unmatched) };
        // Fibonacci hashing of the address; the low bits of an allocation are always zero.
        let start =
            ((Arc::as_ptr(route) as usize as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> SHIFT) as usize;
        for i in 0..PROBES {
            let Some(slot) = self.slots.get((start + i) & (SLOTS - 1)) else { break };
            let (owner, metrics) = slot.get_or_init(|| (route.clone(), RouteMetrics::of(route)));
            if Arc::ptr_eq(owner, route) {
                return f(metrics);
            }
        }
        let metrics = {
            let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            overflow.entry(labels_of(route)).or_insert_with(|| Arc::new(RouteMetrics::of(route))).clone()
        };
        f(&metrics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Arc<RouteInfo> {
        Arc::new(RouteInfo {
            name: Some(name.into()),
            service_name: Some("svc".into()),
            preserve_host: false,
        })
    }

    #[test]
    fn one_route_one_slot_and_overflow_still_finds_routes() {
        let cache = RouteCache::new();
        let a = route("a");
        let first = cache.with(Some(&a), |m| m as *const RouteMetrics);
        let again = cache.with(Some(&a), |m| m as *const RouteMetrics);
        assert_eq!(first, again);
        // Fill every slot, then one more: it is served from the overflow map, by name.
        let routes: Vec<_> = (0..SLOTS + 3).map(|i| route(&format!("r{i}"))).collect();
        for r in &routes {
            let name = cache.with(Some(r), |m| m.labels.route.clone());
            assert_eq!(Some(name.as_str()), r.name.as_deref());
        }
        let used = cache.slots.iter().filter(|s| s.get().is_some()).count();
        let overflowed = cache.overflow.lock().unwrap().len();
        assert!(overflowed >= 4, "{overflowed}");
        assert_eq!(used + overflowed, SLOTS + 3 + 1);
        // An overflowed route keeps its series.
        let last = routes.last().unwrap();
        let first = cache.with(Some(last), |m| m as *const RouteMetrics);
        assert_eq!(first, cache.with(Some(last), |m| m as *const RouteMetrics));
        let unmatched = cache.with(None, |m| m.labels.clone());
        assert_eq!(unmatched, RouteLabels { route: String::new(), service: String::new() });
    }
}
