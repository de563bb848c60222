//! Upstream host sets: which host of a service gets the next request.
//!
//! A [`HostSet`] holds a service's targets (Kong's upstream targets), a load balancer and,
//! optionally, [outlier detection](super::outlier). [`HostSet::pick`] chooses a host for one
//! request or attempt:
//!
//! 1. **Ejected hosts get no traffic** — unless fewer than `healthy_panic_threshold` % of the
//!    hosts are in service (Envoy's panic mode, default 50 %): then the set routes across all its
//!    hosts, on the grounds that overloading the few healthy ones would take them down too. With
//!    the threshold at 0 there is no panic mode, and a set with no host in service answers
//!    [`NoHealthyUpstream`] (the proxy's 503 `no_healthy_upstream`).
//! 2. **Hosts already tried** by this request ([`PreviousHosts`], written by the retry layer) are
//!    avoided while an untried candidate exists (Envoy's `previous_hosts` retry predicate).
//! 3. The **load balancer** chooses among what is left: round robin (smooth weighted round robin
//!    when the targets' weights differ), or least request as power of two choices — two random
//!    candidates, the one with fewer requests in flight (relative to its weight) wins.
//!
//! The chosen [`PickedHost`] counts as in flight until it is dropped; [`PickedHost::record`]
//! charges the request's [`Outcome`] to the host's outlier detection. Time comes from the set's
//! [`Clock`] ([`SystemClock`] unless a test injects a [`ManualClock`]).
//!
//! ```
//! use http::StatusCode;
//! use portcullis::resilience::balance::{HostSet, LoadBalancer};
//! use portcullis::resilience::classify::Outcome;
//! use portcullis::resilience::outlier::OutlierDetection;
//!
//! let hosts = HostSet::builder()
//!     .host("127.0.0.1:9001")
//!     .weighted_host("127.0.0.1:9002", 3)
//!     .load_balancer(LoadBalancer::RoundRobin)
//!     .outlier_detection(OutlierDetection { max_ejection_percent: 50, ..Default::default() })
//!     .build()
//!     .unwrap();
//! let picks: Vec<String> = (0..4)
//!     .map(|_| hosts.pick(None).unwrap().address().to_string())
//!     .collect();
//! assert_eq!(picks.iter().filter(|h| h.ends_with("9002")).count(), 3);
//!
//! // Five 500s in a row from 9001 eject it: everything goes to 9002 for 30 s.
//! for _ in 0..5 {
//!     let host = loop {
//!         let host = hosts.pick(None).unwrap();
//!         if host.address().ends_with("9001") { break host; }
//!     };
//!     host.record(Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR));
//! }
//! assert!((0..10).all(|_| hosts.pick(None).unwrap().address().ends_with("9002")));
//! ```

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::Authority;

use super::classify::Outcome;
use super::outlier::{EjectionCounters, OutlierDetection, OutlierDetector};
use crate::ext::PreviousHosts;

/// How a [`HostSet`] chooses among its candidate hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    /// In turn; in proportion to the weights when they differ (Envoy `ROUND_ROBIN`, Kong
    /// `round-robin`).
    #[default]
    RoundRobin,
    /// Power of two choices on requests in flight, relative to weight (Envoy `LEAST_REQUEST`).
    LeastRequest,
}

impl LoadBalancer {
    /// The name used in config and metrics (`round_robin`, `least_request`).
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::RoundRobin => "round_robin",
            LoadBalancer::LeastRequest => "least_request",
        }
    }
}

/// Where a [`HostSet`] reads the time: an injectable clock so that ejections are exact in tests.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests: share it (`Arc`) between the test and the
/// [`HostSet`].
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    offset_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock standing at the current instant.
    pub fn new() -> Self {
        Self { start: Instant::now(), offset_nanos: AtomicU64::new(0) }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_nanos.fetch_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_nanos(self.offset_nanos.load(Relaxed))
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// A host set that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostSetError {
    /// No host at all.
    #[error("a host set needs at least one host")]
    Empty,
    /// Not `host[:port]`.
    #[error("invalid host `{0}`: expected host:port")]
    InvalidAddress(String),
    /// The same address twice.
    #[error("duplicate host `{0}`")]
    Duplicate(String),
    /// Weight 0.
    #[error("host `{0}` has weight 0: expected a weight of at least 1")]
    ZeroWeight(String),
    /// `healthy_panic_threshold` above 100.
    #[error("healthy panic threshold {0} is over 100 %")]
    PanicThreshold(u8),
}

/// No host can take the request: every host is ejected and panic routing is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no healthy upstream")]
pub struct NoHealthyUpstream;

/// One upstream host of a [`HostSet`].
#[derive(Debug)]
pub struct Host {
    address: Arc<str>,
    authority: Authority,
    host_header: HeaderValue,
    weight: u32,
    in_flight: AtomicU32,
}

impl Host {
    /// `host:port`, as in [`UpstreamInfo::host`](crate::ext::UpstreamInfo::host) and
    /// [`PreviousHosts`].
    pub fn address(&self) -> &Arc<str> {
        &self.address
    }

    /// The address as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The `Host` header value for this host.
    pub fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// Its relative share of traffic.
    pub fn weight(&self) -> u32 {
        self.weight
    }
}

/// Builds a [`HostSet`].
#[derive(Debug)]
pub struct HostSetBuilder {
    hosts: Vec<(String, u32)>,
    load_balancer: LoadBalancer,
    outlier_detection: Option<OutlierDetection>,
    healthy_panic_threshold: u8,
    clock: Option<Arc<dyn Clock>>,
}

impl HostSetBuilder {
    /// Adds a host (`host:port`) with weight 1.
    pub fn host(self, address: impl Into<String>) -> Self {
        self.weighted_host(address, 1)
    }

    /// Adds a host (`host:port`) with a weight relative to the others' (Kong's target `weight`).
    pub fn weighted_host(mut self, address: impl Into<String>, weight: u32) -> Self {
        self.hosts.push((address.into(), weight));
        self
    }

    /// Round robin (the default) or least request.
    pub fn load_balancer(mut self, load_balancer: LoadBalancer) -> Self {
        self.load_balancer = load_balancer;
        self
    }

    /// Ejects misbehaving hosts (off by default, as in Envoy).
    pub fn outlier_detection(mut self, config: OutlierDetection) -> Self {
        self.outlier_detection = Some(config);
        self
    }

    /// Below this percentage of hosts in service, route across all hosts (default 50; 0 turns
    /// panic routing off).
    pub fn healthy_panic_threshold(mut self, percent: u8) -> Self {
        self.healthy_panic_threshold = percent;
        self
    }

    /// Reads time from `clock` instead of the system's.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Checks the hosts and builds the set.
    pub fn build(self) -> Result<HostSet, HostSetError> {
        if self.hosts.is_empty() {
            return Err(HostSetError::Empty);
        }
        if self.healthy_panic_threshold > 100 {
            return Err(HostSetError::PanicThreshold(self.healthy_panic_threshold));
        }
        let mut hosts: Vec<Host> = Vec::with_capacity(self.hosts.len());
        for (address, weight) in self.hosts {
            let invalid = || HostSetError::InvalidAddress(address.clone());
            let authority: Authority = address.parse().map_err(|_| invalid())?;
            if authority.host().is_empty() || authority.as_str().contains('@') {
                return Err(invalid());
            }
            if hosts.iter().any(|h| h.authority == authority) {
                return Err(HostSetError::Duplicate(address));
            }
            if weight == 0 {
                return Err(HostSetError::ZeroWeight(address));
            }
            let host_header = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?;
            hosts.push(Host {
                address: authority.as_str().into(),
                authority,
                host_header,
                weight,
                in_flight: AtomicU32::new(0),
            });
        }
        let system_clock = self.clock.is_none();
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let now = clock.now();
        let weighted = hosts.iter().any(|h| h.weight != hosts[0].weight);
        Ok(HostSet {
            inner: Arc::new(Inner {
                detector: self.outlier_detection.map(|config| OutlierDetector::new(config, hosts.len(), now)),
                smooth_weights: Mutex::new(vec![0; hosts.len()]),
                hosts: hosts.into_boxed_slice(),
                load_balancer: self.load_balancer,
                weighted,
                next: AtomicUsize::new(0),
                healthy_panic_threshold: u64::from(self.healthy_panic_threshold),
                clock,
                system_clock,
            }),
        })
    }
}

/// The hosts of one upstream service; cheap to clone (clones share the hosts, the balancer's
/// position and the outlier state). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HostSet {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    hosts: Box<[Host]>,
    load_balancer: LoadBalancer,
    /// Whether weights differ (plain round robin is a counter; weighted needs a lock).
    weighted: bool,
    next: AtomicUsize,
    /// Smooth weighted round robin's current weights (nginx's algorithm).
    smooth_weights: Mutex<Vec<i64>>,
    detector: Option<OutlierDetector>,
    healthy_panic_threshold: u64,
    clock: Arc<dyn Clock>,
    /// `clock` is the [`SystemClock`]: call `Instant::now` directly rather than through the
    /// vtable.
    system_clock: bool,
}

/// A host chosen for one request, in flight until dropped; see [`HostSet::pick`].
#[derive(Debug)]
pub struct PickedHost {
    set: Arc<Inner>,
    index: usize,
}

/// One host's state, for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStatus {
    /// `host:port`.
    pub address: Arc<str>,
    /// Its weight.
    pub weight: u32,
    /// Requests sent to it whose response head has not arrived yet.
    pub in_flight: u32,
    /// Whether outlier detection has it ejected now.
    pub ejected: bool,
    /// When the ejection ends.
    pub ejected_until: Option<Instant>,
    /// How long the ejection still lasts.
    pub ejected_for: Option<Duration>,
    /// Ejections since the set was built.
    pub times_ejected: u64,
    /// The multiplier of the next ejection's length (Envoy's ejection backoff).
    pub ejection_multiplier: u32,
    /// Upstream failures in a row right now.
    pub consecutive_5xx: u32,
    /// Gateway failures in a row right now.
    pub consecutive_gateway_failure: u32,
    /// Success rate in percent over the last interval, when it had enough volume.
    pub success_rate: Option<f64>,
}

/// A [`HostSet`]'s state at one instant, for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSetStatus {
    /// The balancer in use.
    pub load_balancer: LoadBalancer,
    /// Per host, in config order.
    pub hosts: Vec<HostStatus>,
    /// Whether the set routes across all hosts because too few are in service.
    pub panic: bool,
    /// Whether outlier detection is on.
    pub outlier_detection: bool,
    /// The last interval's success-rate ejection threshold, when enough hosts qualified.
    pub success_rate_threshold: Option<f64>,
    /// Detections, ejections and overflows since the set was built.
    pub ejections: EjectionCounters,
}

// === impl HostSet ===

impl HostSet {
    /// Starts a set: add hosts, then [`build`](HostSetBuilder::build).
    pub fn builder() -> HostSetBuilder {
        HostSetBuilder {
            hosts: Vec::new(),
            load_balancer: LoadBalancer::default(),
            outlier_detection: None,
            healthy_panic_threshold: 50,
            clock: None,
        }
    }

    /// The hosts, in config order.
    pub fn hosts(&self) -> &[Host] {
        &self.inner.hosts
    }

    /// The outlier detector, when outlier detection is on.
    pub fn outlier_detector(&self) -> Option<&OutlierDetector> {
        self.inner.detector.as_ref()
    }

    /// Chooses the host for one request (or attempt); see the [module docs](self) for the
    /// rules. `previous` is the request's [`PreviousHosts`], if any.
    pub fn pick(&self, previous: Option<&PreviousHosts>) -> Result<PickedHost, NoHealthyUpstream> {
        let inner = &*self.inner;
        let index = inner.choose(previous)?;
        inner.hosts[index].in_flight.fetch_add(1, Relaxed);
        Ok(PickedHost { set: self.inner.clone(), index })
    }

    /// Every host's state now.
    pub fn status(&self) -> HostSetStatus {
        let inner = &*self.inner;
        let now = inner.now();
        let outlier = inner.detector.as_ref().map(|d| d.snapshot(now));
        let hosts: Vec<HostStatus> = inner
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let state = outlier.as_ref().map(|o| &o.hosts[i]);
                let until = state.and_then(|s| s.ejected_until);
                HostStatus {
                    address: host.address.clone(),
                    weight: host.weight,
                    in_flight: host.in_flight.load(Relaxed),
                    ejected: until.is_some(),
                    ejected_until: until,
                    ejected_for: until.map(|u| u.saturating_duration_since(now)),
                    times_ejected: state.map_or(0, |s| s.times_ejected),
                    ejection_multiplier: state.map_or(0, |s| s.ejection_multiplier),
                    consecutive_5xx: state.map_or(0, |s| s.consecutive_5xx),
                    consecutive_gateway_failure: state.map_or(0, |s| s.consecutive_gateway_failure),
                    success_rate: state.and_then(|s| s.success_rate),
                }
            })
            .collect();
        let healthy = hosts.iter().filter(|h| !h.ejected).count() as u64;
        HostSetStatus {
            load_balancer: inner.load_balancer,
            panic: inner.in_panic(healthy),
            outlier_detection: outlier.is_some(),
            success_rate_threshold: outlier.as_ref().and_then(|o| o.success_rate_threshold),
            ejections: outlier.map(|o| o.counters).unwrap_or_default(),
            hosts,
        }
    }
}

impl Inner {
    #[inline]
    fn now(&self) -> Instant {
        if self.system_clock { Instant::now() } else { self.clock.now() }
    }

    fn in_panic(&self, healthy: u64) -> bool {
        100 * healthy < self.healthy_panic_threshold * self.hosts.len() as u64
    }

    fn choose(&self, previous: Option<&PreviousHosts>) -> Result<usize, NoHealthyUpstream> {
        let previous = previous.filter(|p| !p.0.is_empty());
        if self.hosts.len() == 1 && self.detector.is_none() {
            return Ok(0); // one URL, nothing to decide
        }
        // Time is read only when something depends on it.
        let detector = self.detector.as_ref().map(|d| {
            let now = d.since_epoch(self.now());
            d.tick_at(now);
            (d, now)
        });
        let all_in_service = detector.is_none_or(|(d, now)| d.none_ejected_at(now));
        if all_in_service && previous.is_none() {
            return Ok(self.balance(self.hosts.len(), |_| true, |n| n));
        }
        if self.hosts.len() <= 64 {
            return self.choose_masked(detector, previous);
        }
        // More than 64 hosts: the same rules with predicates instead of bit masks.
        let in_service = |i: usize| detector.is_none_or(|(d, now)| !d.ejected_at(i, now));
        let healthy = (0..self.hosts.len()).filter(|&i| in_service(i)).count() as u64;
        let panic = self.in_panic(healthy);
        if healthy == 0 && !panic {
            return Err(NoHealthyUpstream);
        }
        let candidate = |i: usize| panic || in_service(i);
        let untried = |i: usize| candidate(i) && previous.is_none_or(|p| !p.contains(&self.hosts[i].address));
        let untried_count = (0..self.hosts.len()).filter(|&i| untried(i)).count();
        let nth_of = |eligible: &dyn Fn(usize) -> bool, n: usize| {
            (0..self.hosts.len()).filter(|&i| eligible(i)).nth(n).unwrap_or(0)
        };
        // All candidates tried already: any candidate will do (Envoy gives up on the predicate).
        if untried_count > 0 {
            Ok(self.balance(untried_count, untried, |n| nth_of(&untried, n)))
        } else {
            let count = (0..self.hosts.len()).filter(|&i| candidate(i)).count();
            Ok(self.balance(count, candidate, |n| nth_of(&candidate, n)))
        }
    }

    /// [`choose`](Self::choose) for up to 64 hosts: one pass builds bit masks, and counting or
    /// finding the n-th candidate is bit arithmetic.
    fn choose_masked(
        &self,
        detector: Option<(&OutlierDetector, u64)>,
        previous: Option<&PreviousHosts>,
    ) -> Result<usize, NoHealthyUpstream> {
        let hosts = self.hosts.len();
        let all = u64::MAX >> (64 - hosts);
        let mut in_service = all;
        if let Some((detector, now)) = detector {
            for i in 0..hosts {
                if detector.ejected_at(i, now) {
                    in_service &= !(1 << i);
                }
            }
        }
        let panic = self.in_panic(u64::from(in_service.count_ones()));
        let candidates = if panic { all } else { in_service };
        if candidates == 0 {
            return Err(NoHealthyUpstream);
        }
        let mut tried = 0u64;
        for address in previous.map_or(&[][..], |p| &p.0[..]) {
            // Addresses come from `UpstreamInfo::host`, clones of ours: the pointer usually matches.
            let found = self.hosts.iter().position(|h| Arc::ptr_eq(&h.address, address));
            if let Some(i) = found.or_else(|| self.hosts.iter().position(|h| h.address == *address)) {
                tried |= 1 << i;
            }
        }
        // All candidates tried already: any candidate will do (Envoy gives up on the predicate).
        let chosen = match candidates & !tried {
            0 => candidates,
            untried => untried,
        };
        let nth = |n: usize| {
            let mut mask = chosen;
            for _ in 0..n {
                mask &= mask - 1; // clears the lowest set bit
            }
            mask.trailing_zeros() as usize
        };
        Ok(self.balance(chosen.count_ones() as usize, |i| chosen >> i & 1 == 1, nth))
    }

    /// Chooses one of the `count` (≥ 1) hosts that pass `eligible`; `nth(n)` is the n-th of them.
    fn balance(&self, count: usize, eligible: impl Fn(usize) -> bool, nth: impl Fn(usize) -> usize) -> usize {
        if count == 1 {
            return nth(0);
        }
        match self.load_balancer {
            LoadBalancer::RoundRobin if self.weighted => self.smooth_weighted(eligible),
            LoadBalancer::RoundRobin => nth(self.next.fetch_add(1, Relaxed) % count),
            LoadBalancer::LeastRequest => {
                let first = random_below(count);
                let mut second = random_below(count - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (nth(first), nth(second));
                let load = |i: usize| u64::from(self.hosts[i].in_flight.load(Relaxed));
                let weight = |i: usize| u64::from(self.hosts[i].weight);
                // a/wa <= b/wb without division.
                if load(a) * weight(b) <= load(b) * weight(a) { a } else { b }
            }
        }
    }

    /// nginx's smooth weighted round robin over the eligible hosts: each pick adds every
    /// weight to its host's current value, takes the largest, and subtracts the total from it.
    /// Spreads a 5:1:1 split as a a b a c a a rather than a a a a a b c.
    fn smooth_weighted(&self, eligible: impl Fn(usize) -> bool) -> usize {
        let mut current = self.smooth_weights.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, host) in self.hosts.iter().enumerate() {
            if !eligible(i) {
                continue;
            }
            let weight = i64::from(host.weight);
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let best = best.unwrap_or(0);
        current[best] -= total;
        best
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        // Seeded per thread from std's random hasher keys; only has to differ between threads.
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8) | 1
    });
}

/// A uniform-enough number in `0..n` (xorshift64*, per thread: no shared cache line).
fn random_below(n: usize) -> usize {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        rng.set(x);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Multiply-shift maps 64 random bits onto 0..n without a division.
        ((u128::from(r) * n as u128) >> 64) as usize
    })
}

// === impl PickedHost ===

impl PickedHost {
    /// The chosen host.
    pub fn host(&self) -> &Host {
        &self.set.hosts[self.index]
    }

    /// The chosen host's `host:port`.
    pub fn address(&self) -> &Arc<str> {
        &self.host().address
    }

    /// Its position in the set (config order).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Charges the request's outcome to the host (outlier detection) and ends it in-flight
    /// count. Dropping without recording (a cancelled request) only ends the in-flight count.
    pub fn record(self, outcome: Outcome) {
        if let Some(detector) = &self.set.detector {
            // `pick` ran the interval work; only a failure needs the time (when an ejection
            // starts), so a success reads no clock.
            detector.count(self.index, outcome, || detector.since_epoch(self.set.now()));
        }
    }
}

impl Drop for PickedHost {
    fn drop(&mut self) {
        self.set.hosts[self.index].in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    const S500: Outcome = Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR);

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 9001 + i)).collect()
    }

    fn set(n: usize, configure: impl FnOnce(HostSetBuilder) -> HostSetBuilder) -> HostSet {
        let builder = addresses(n).into_iter().fold(HostSet::builder(), HostSetBuilder::host);
        // A clock that stands still unless a test moves it: durations in the status are exact.
        let builder = builder.clock(ManualClock::new());
        configure(builder).build().unwrap()
    }

    fn counts(hosts: &HostSet, picks: usize, previous: Option<&PreviousHosts>) -> Vec<usize> {
        let mut counts = vec![0; hosts.hosts().len()];
        for _ in 0..picks {
            counts[hosts.pick(previous).unwrap().index()] += 1;
        }
        counts
    }

    fn eject(hosts: &HostSet, index: usize) {
        for _ in 0..5 {
            hosts.inner.detector.as_ref().unwrap().record(index, S500, hosts.inner.now());
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let hosts = set(3, |b| b);
        let order: Vec<usize> = (0..6).map(|_| hosts.pick(None).unwrap().index()).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        // Clones share the position.
        assert_eq!(hosts.clone().pick(None).unwrap().index(), 0);
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let hosts = HostSet::builder()
            .weighted_host("a:1", 5)
            .weighted_host("b:1", 1)
            .weighted_host("c:1", 1)
            .build()
            .unwrap();
        let order: Vec<usize> = (0..7).map(|_| hosts.pick(None).unwrap().index()).collect();
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&hosts, 700, None), [500, 100, 100]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let hosts = set(2, |b| b.load_balancer(LoadBalancer::LeastRequest));
        let busy = hosts.pick(None).unwrap();
        let other = 1 - busy.index();
        assert_eq!(hosts.status().hosts[busy.index()].in_flight, 1);
        for _ in 0..50 {
            assert_eq!(hosts.pick(None).unwrap().index(), other);
        }
        drop(busy);
        assert!(hosts.status().hosts.iter().all(|h| h.in_flight == 0));
    }

    #[test]
    fn least_request_spreads_over_idle_hosts() {
        let hosts = set(4, |b| b.load_balancer(LoadBalancer::LeastRequest));
        let spread = counts(&hosts, 4000, None);
        assert!(spread.iter().all(|&n| n > 700), "{spread:?}");
    }

    #[test]
    fn ejected_hosts_get_no_traffic() {
        let hosts = set(4, |b| {
            b.outlier_detection(OutlierDetection { max_ejection_percent: 50, ..Default::default() })
        });
        eject(&hosts, 1);
        assert_eq!(counts(&hosts, 30, None), [10, 0, 10, 10]);
        let status = hosts.status();
        assert!(status.hosts[1].ejected && !status.panic);
        assert_eq!(status.hosts[1].ejected_for, Some(Duration::from_secs(30)));
    }

    #[test]
    fn previous_hosts_are_avoided_while_another_candidate_exists() {
        let hosts = set(3, |b| {
            b.outlier_detection(OutlierDetection { max_ejection_percent: 50, ..Default::default() })
        });
        let tried = PreviousHosts(vec!["127.0.0.1:9001".into()]);
        assert_eq!(counts(&hosts, 10, Some(&tried)), [0, 5, 5]);
        // 9002 ejected and 9001 tried: 9003 is the one left.
        eject(&hosts, 1);
        assert_eq!(counts(&hosts, 10, Some(&tried)), [0, 0, 10]);
        // Everything in service tried: any host in service rather than none.
        let all = PreviousHosts(vec!["127.0.0.1:9001".into(), "127.0.0.1:9003".into()]);
        assert_eq!(counts(&hosts, 10, Some(&all)), [5, 0, 5]);
    }

    #[test]
    fn more_than_64_hosts_follow_the_same_rules() {
        let half = OutlierDetection { max_ejection_percent: 50, ..Default::default() };
        let hosts = set(70, |b| b.outlier_detection(half));
        eject(&hosts, 0);
        eject(&hosts, 69);
        let tried = PreviousHosts(vec![hosts.hosts()[1].address().clone()]);
        let spread = counts(&hosts, 670, Some(&tried));
        assert_eq!((spread[0], spread[1], spread[69]), (0, 0, 0));
        assert!(spread[2..69].iter().all(|&n| n == 10), "{spread:?}");
    }

    #[test]
    fn panic_routes_across_all_hosts() {
        let all_out = OutlierDetection { max_ejection_percent: 100, ..Default::default() };
        let hosts = set(3, |b| b.outlier_detection(all_out.clone()));
        eject(&hosts, 0);
        // 2 of 3 in service: 66 % ≥ 50 %, no panic.
        assert_eq!(counts(&hosts, 10, None), [0, 5, 5]);
        eject(&hosts, 1);
        // 1 of 3: below the threshold, so all three hosts share the traffic again.
        assert!(hosts.status().panic);
        assert_eq!(counts(&hosts, 30, None), [10, 10, 10]);

        let strict = set(2, |b| b.outlier_detection(all_out).healthy_panic_threshold(0));
        eject(&strict, 0);
        assert_eq!(counts(&strict, 4, None), [0, 4]);
        eject(&strict, 1);
        assert!(!strict.status().panic);
        assert_eq!(strict.pick(None).unwrap_err(), NoHealthyUpstream);
    }

    #[test]
    fn ejections_end_on_the_injected_clock() {
        let clock = Arc::new(ManualClock::new());
        let hosts = set(2, |b| {
            b.clock(clock.clone())
                .outlier_detection(OutlierDetection { max_ejection_percent: 50, ..Default::default() })
        });
        for _ in 0..5 {
            let host = loop {
                let host = hosts.pick(None).unwrap();
                if host.index() == 0 {
                    break host;
                }
            };
            host.record(S500);
        }
        assert_eq!(counts(&hosts, 4, None), [0, 4]);
        clock.advance(Duration::from_secs(29));
        assert_eq!(counts(&hosts, 4, None), [0, 4]);
        clock.advance(Duration::from_secs(1));
        assert_eq!(counts(&hosts, 4, None), [2, 2]);
        assert_eq!(hosts.status().hosts[0].times_ejected, 1);
    }

    #[test]
    fn bad_host_sets() {
        assert_eq!(HostSet::builder().build().unwrap_err(), HostSetError::Empty);
        let dup = HostSet::builder().host("a:1").host("a:1").build().unwrap_err();
        assert_eq!(dup, HostSetError::Duplicate("a:1".into()));
        let zero = HostSet::builder().weighted_host("a:1", 0).build().unwrap_err();
        assert_eq!(zero, HostSetError::ZeroWeight("a:1".into()));
        for bad in ["", "a b:1", "u@a:1", "http://a:1"] {
            assert!(
                matches!(HostSet::builder().host(bad).build(), Err(HostSetError::InvalidAddress(_))),
                "{bad}"
            );
        }
        let panic = HostSet::builder().host("a:1").healthy_panic_threshold(101).build().unwrap_err();
        assert_eq!(panic, HostSetError::PanicThreshold(101));
    }
}
