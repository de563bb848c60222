//! Outlier detection: Envoy's passive health checking for the hosts of one upstream.
//!
//! Each response (through [`Outcome`], the one classifier) is charged to the host that served
//! it. A host is *ejected* — no traffic for a while — when it looks worse than it should:
//!
//! - **consecutive 5xx**: the `consecutive_5xx`-th upstream failure in a row (a 5xx status, a
//!   connect failure, a reset, a timeout) ejects it, with probability `enforcing_consecutive_5xx` %;
//! - **consecutive gateway failures**: the same for 502/503/504 and transport failures
//!   (`consecutive_gateway_failure`, enforced at `enforcing_consecutive_gateway_failure` %,
//!   Envoy's default 0: detected and counted, not enforced);
//! - **success rate**: every `interval`, among the hosts that served at least
//!   `success_rate_request_volume` requests in it — and only when at least
//!   `success_rate_minimum_hosts` did — a host whose success rate is below
//!   `mean − success_rate_stdev_factor · stdev` is ejected (`enforcing_success_rate` %).
//!
//! A host's n-th ejection in a row lasts `base_ejection_time × n`, at most
//! `max(max_ejection_time, base_ejection_time)`; each interval a host spends in service takes one
//! off that multiplier. An ejection that would leave more than `max_ejection_percent` of the hosts
//! ejected does not happen (Envoy counts the candidate too: with 2 hosts and the default 10 %,
//! nothing is ever ejected), unless `always_eject_one_host` is set and no host is ejected yet.
//! The gateway's own answers ([`Outcome::Local`]) never count.
//!
//! The detector is sans-IO: every method takes `now`, so tests drive it with any clock. The
//! interval work (success rates, the multiplier's decay) runs lazily, by the first call that
//! notices an interval boundary has passed, and is dated at that boundary; a host's ejection
//! ends exactly when its time is up (Envoy waits for the next interval tick). The request path
//! is a few relaxed atomics per host; only ejections and the interval work take a lock.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use http::StatusCode;
//! use portcullis::resilience::classify::Outcome;
//! use portcullis::resilience::outlier::{OutlierDetection, OutlierDetector};
//!
//! let config = OutlierDetection { max_ejection_percent: 50, ..OutlierDetection::default() };
//! let start = Instant::now();
//! let detector = OutlierDetector::new(config, 2, start);
//! for _ in 0..5 {
//!     detector.record(0, Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR), start);
//! }
//! assert!(detector.is_ejected(0, start));
//! assert!(!detector.is_ejected(0, start + Duration::from_secs(30)), "back after base_ejection_time");
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use super::classify::Outcome;

/// Envoy's `outlier_detection` settings; [`Default`] is Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Upstream failures in a row that eject a host (Envoy default 5; 0 disables).
    pub consecutive_5xx: u32,
    /// Gateway failures (502/503/504, connect failure, reset, timeout) in a row that eject a host
    /// (default 5; 0 disables).
    pub consecutive_gateway_failure: u32,
    /// Chance in percent that a consecutive-5xx detection ejects (default 100).
    pub enforcing_consecutive_5xx: u8,
    /// Chance in percent that a consecutive-gateway-failure detection ejects (Envoy default 0).
    pub enforcing_consecutive_gateway_failure: u8,
    /// Chance in percent that a success-rate detection ejects (default 100).
    pub enforcing_success_rate: u8,
    /// How often success rates are evaluated and ejection multipliers decay (default 10 s).
    pub interval: Duration,
    /// The first ejection's length; the n-th in a row lasts n times this (default 30 s).
    pub base_ejection_time: Duration,
    /// The longest ejection (default 300 s), never below `base_ejection_time`.
    pub max_ejection_time: Duration,
    /// At most this percentage of the hosts is ejected at once (default 10).
    pub max_ejection_percent: u8,
    /// Success-rate ejection needs at least this many hosts with enough volume (default 5).
    pub success_rate_minimum_hosts: u32,
    /// A host's success rate counts once it served this many requests in the interval
    /// (default 100).
    pub success_rate_request_volume: u32,
    /// The stdev factor of the success-rate threshold, `mean − factor · stdev` (default 1.9;
    /// Envoy's config writes it ×1000, `1900`).
    pub success_rate_stdev_factor: f64,
    /// Eject one host even when `max_ejection_percent` would allow none (default false).
    pub always_eject_one_host: bool,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            enforcing_consecutive_5xx: 100,
            enforcing_consecutive_gateway_failure: 0,
            enforcing_success_rate: 100,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            success_rate_stdev_factor: 1.9,
            always_eject_one_host: false,
        }
    }
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EjectionKind {
    /// `consecutive_5xx` upstream failures in a row.
    Consecutive5xx,
    /// `consecutive_gateway_failure` gateway failures in a row.
    ConsecutiveGatewayFailure,
    /// Success rate below the cluster's threshold over an interval.
    SuccessRate,
}

impl EjectionKind {
    /// A short fixed name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionKind::Consecutive5xx => "consecutive_5xx",
            EjectionKind::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            EjectionKind::SuccessRate => "success_rate",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters since the detector started, per [`EjectionKind`] (index with `kind as usize`, or
/// use the named accessors).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EjectionCounters {
    /// Outliers detected (whether or not enforced), per kind.
    pub detected: [u64; 3],
    /// Ejections that happened, per kind.
    pub enforced: [u64; 3],
    /// Detections that `max_ejection_percent` prevented.
    pub overflow: u64,
}

impl EjectionCounters {
    /// Outliers of `kind` detected.
    pub fn detected(&self, kind: EjectionKind) -> u64 {
        self.detected[kind.index()]
    }

    /// Ejections of `kind` enforced.
    pub fn enforced(&self, kind: EjectionKind) -> u64 {
        self.enforced[kind.index()]
    }
}

/// One host's outlier state at a point in time.
#[derive(Debug, Clone, PartialEq)]
pub struct HostOutlierState {
    /// When the current ejection ends; `None` when the host is in service.
    pub ejected_until: Option<Instant>,
    /// Envoy's ejection multiplier: the next ejection lasts `base_ejection_time ×` (this + 1).
    pub ejection_multiplier: u32,
    /// Ejections of this host since the detector started.
    pub times_ejected: u64,
    /// Upstream failures in a row right now.
    pub consecutive_5xx: u32,
    /// Gateway failures in a row right now.
    pub consecutive_gateway_failure: u32,
    /// Success rate in percent over the last evaluated interval, when the host had
    /// `success_rate_request_volume` requests in it.
    pub success_rate: Option<f64>,
}

/// The detector's state at a point in time; see [`OutlierDetector::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSnapshot {
    /// Per host, in host order.
    pub hosts: Vec<HostOutlierState>,
    /// Hosts ejected right now.
    pub ejected: usize,
    /// The last interval's success-rate threshold, when enough hosts qualified.
    pub success_rate_threshold: Option<f64>,
    /// Detection and ejection counters.
    pub counters: EjectionCounters,
}

/// Per-host counters touched on the request path, one cache line each so that hosts served by
/// different cores do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
struct HostHealth {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    /// Requests in the current interval: total in the high half, successes in the low half, so
    /// one `fetch_add` counts a request.
    bucket: AtomicU64,
    /// End of the current ejection in nanoseconds since the detector's epoch; ejected while the
    /// clock is below it (0: never ejected).
    ejected_until: AtomicU64,
}

/// State changed only under the lock: ejections and the interval work.
#[derive(Debug)]
struct Shared {
    multiplier: Vec<u32>,
    times_ejected: Vec<u64>,
    success_rate: Vec<Option<f64>>,
    threshold: Option<f64>,
    /// The last interval boundary processed, counted from the epoch.
    last_tick: u64,
    counters: EjectionCounters,
    rng: u64,
}

/// Outlier detection over a fixed set of hosts, numbered `0..hosts`; see the
/// [module docs](self).
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierDetection,
    epoch: Instant,
    interval_nanos: u64,
    hosts: Box<[HostHealth]>,
    /// Nanoseconds since the epoch of the next interval boundary to process.
    next_tick: AtomicU64,
    /// The latest end of any ejection so far: past it, no host is ejected (one load answers
    /// the common case).
    latest_ejection_end: AtomicU64,
    shared: Mutex<Shared>,
}

const ONE_REQUEST: u64 = 1 << 32;

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

// === impl OutlierDetector ===

impl OutlierDetector {
    /// A detector for `hosts` hosts, with its clock starting at `now` (interval boundaries fall
    /// at `now + k · interval`).
    pub fn new(config: OutlierDetection, hosts: usize, now: Instant) -> Self {
        let interval_nanos = nanos(config.interval).max(1);
        // Enforcement percentages need a little randomness; the seed only has to differ
        // between detectors.
        let seed = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), hosts);
        Self {
            epoch: now,
            interval_nanos,
            hosts: (0..hosts).map(|_| HostHealth::default()).collect(),
            next_tick: AtomicU64::new(interval_nanos),
            latest_ejection_end: AtomicU64::new(0),
            shared: Mutex::new(Shared {
                multiplier: vec![0; hosts],
                times_ejected: vec![0; hosts],
                success_rate: vec![None; hosts],
                threshold: None,
                last_tick: 0,
                counters: EjectionCounters::default(),
                rng: seed | 1,
            }),
            config,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &OutlierDetection {
        &self.config
    }

    /// How many hosts the detector watches.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the detector watches no host at all.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub(crate) fn since_epoch(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    fn instant(&self, since_epoch: u64) -> Instant {
        self.epoch + Duration::from_nanos(since_epoch)
    }

    /// Whether `host` is ejected at `now`. Out-of-range hosts are not.
    pub fn is_ejected(&self, host: usize, now: Instant) -> bool {
        self.ejected_at(host, self.since_epoch(now))
    }

    /// Whether no host at all is ejected at `now`.
    #[inline]
    pub(crate) fn none_ejected_at(&self, now: u64) -> bool {
        self.latest_ejection_end.load(Relaxed) <= now
    }

    #[inline]
    pub(crate) fn ejected_at(&self, host: usize, now: u64) -> bool {
        self.hosts.get(host).is_some_and(|h| h.ejected_until.load(Relaxed) > now)
    }

    /// Runs the interval work if an interval boundary passed; the request path calls this (and
    /// [`record`](Self::record) does) so ejections by success rate happen without a timer task.
    #[inline]
    pub fn tick(&self, now: Instant) {
        self.tick_at(self.since_epoch(now));
    }

    #[inline]
    pub(crate) fn tick_at(&self, now: u64) {
        if now >= self.next_tick.load(Relaxed) {
            self.run_intervals(now);
        }
    }

    /// Charges `outcome` to `host` at `now`, ejecting it when it crossed a threshold.
    pub fn record(&self, host: usize, outcome: Outcome, now: Instant) {
        self.record_at(host, outcome, self.since_epoch(now));
    }

    fn record_at(&self, host: usize, outcome: Outcome, now: u64) {
        // The interval ends before this outcome is counted: it belongs to the new interval.
        self.tick_at(now);
        self.count(host, outcome, || now);
    }

    /// Counts `outcome` for `host` without running the interval work; `now` is read only when
    /// a failure needs the time (the success path stays free of clock reads).
    #[inline]
    pub(crate) fn count(&self, host: usize, outcome: Outcome, now: impl FnOnce() -> u64) {
        let Some(health) = self.hosts.get(host) else { return };
        if outcome.is_success() {
            health.bucket.fetch_add(ONE_REQUEST | 1, Relaxed);
            // Plain loads first: most hosts are healthy and their counters already 0, so the
            // cache line is not written on every success.
            if health.consecutive_5xx.load(Relaxed) != 0 {
                health.consecutive_5xx.store(0, Relaxed);
            }
            if health.consecutive_gateway.load(Relaxed) != 0 {
                health.consecutive_gateway.store(0, Relaxed);
            }
            return;
        }
        if !outcome.is_failure() {
            return; // the gateway's own answer: says nothing about the host
        }
        health.bucket.fetch_add(ONE_REQUEST, Relaxed);
        let now = now();
        // Failures finishing while the host is out (requests already in flight, panic routing)
        // start no new streak: Envoy resets the streaks when the host comes back.
        if health.ejected_until.load(Relaxed) > now {
            return;
        }
        if outcome.is_gateway_failure() {
            let streak = health.consecutive_gateway.fetch_add(1, Relaxed) + 1;
            // `==`: exactly one caller sees the threshold crossed, however many race.
            if streak == self.config.consecutive_gateway_failure {
                self.on_streak(host, EjectionKind::ConsecutiveGatewayFailure, now);
            }
        } else if health.consecutive_gateway.load(Relaxed) != 0 {
            health.consecutive_gateway.store(0, Relaxed);
        }
        let streak = health.consecutive_5xx.fetch_add(1, Relaxed) + 1;
        if streak == self.config.consecutive_5xx {
            self.on_streak(host, EjectionKind::Consecutive5xx, now);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // The state stays consistent across a panic elsewhere (plain counters), so keep going.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_streak(&self, host: usize, kind: EjectionKind, now: u64) {
        let mut shared = self.lock();
        if self.ejected_at(host, now) {
            return;
        }
        self.try_eject(&mut shared, host, kind, now);
        // Envoy resets the streak whether or not the ejection happened, so the next ejection
        // needs a full new streak.
        let health = &self.hosts[host];
        match kind {
            EjectionKind::Consecutive5xx => health.consecutive_5xx.store(0, Relaxed),
            EjectionKind::ConsecutiveGatewayFailure => health.consecutive_gateway.store(0, Relaxed),
            EjectionKind::SuccessRate => {}
        }
    }

    fn ejected_count(&self, now: u64) -> usize {
        self.hosts.iter().filter(|h| h.ejected_until.load(Relaxed) > now).count()
    }

    /// Envoy's `ejectHost`: the max-percent rule, then the enforcement roll.
    fn try_eject(&self, shared: &mut Shared, host: usize, kind: EjectionKind, now: u64) {
        shared.counters.detected[kind.index()] += 1;
        let active = self.ejected_count(now) as u64;
        let total = self.hosts.len() as u64;
        // Envoy counts the candidate: ejecting must keep (active + 1) / total within the limit.
        let within = 100 * (active + 1) <= u64::from(self.config.max_ejection_percent.min(100)) * total;
        if !(within || (self.config.always_eject_one_host && active == 0)) {
            shared.counters.overflow += 1;
            return;
        }
        let enforcing = match kind {
            EjectionKind::Consecutive5xx => self.config.enforcing_consecutive_5xx,
            EjectionKind::ConsecutiveGatewayFailure => self.config.enforcing_consecutive_gateway_failure,
            EjectionKind::SuccessRate => self.config.enforcing_success_rate,
        };
        if !shared.roll(enforcing) {
            return;
        }
        shared.counters.enforced[kind.index()] += 1;
        let base = nanos(self.config.base_ejection_time);
        let max = nanos(self.config.max_ejection_time).max(base);
        // Envoy stops growing the multiplier once it has reached the maximum duration.
        if u64::from(shared.multiplier[host]).saturating_mul(base) < max {
            shared.multiplier[host] += 1;
        }
        shared.times_ejected[host] += 1;
        let length = base.saturating_mul(u64::from(shared.multiplier[host])).min(max);
        let until = now.saturating_add(length);
        self.hosts[host].ejected_until.store(until, Relaxed);
        self.latest_ejection_end.fetch_max(until, Relaxed);
        tracing::debug!(target: "portcullis::outlier", host, kind = kind.as_str(), ejected_for = ?Duration::from_nanos(length), "host ejected");
    }

    #[cold]
    fn run_intervals(&self, now: u64) {
        // One caller does the work; the others go on (the boundary is re-checked under the lock).
        let mut shared = match self.shared.try_lock() {
            Ok(shared) => shared,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let tick = now / self.interval_nanos;
        if tick <= shared.last_tick {
            return;
        }
        let tick_at = tick.saturating_mul(self.interval_nanos);
        let hosts = self.hosts.len();
        let mut rates: Vec<(usize, f64)> = Vec::with_capacity(hosts);
        for (i, health) in self.hosts.iter().enumerate() {
            // The boundary `tick_at` closes the interval's bucket.
            let bucket = health.bucket.swap(0, Relaxed);
            let (total, ok) = (bucket >> 32, bucket & u64::from(u32::MAX));
            let until = health.ejected_until.load(Relaxed);
            // Each boundary a host spends in service takes one off its multiplier; the boundary
            // that brings it back does not (Envoy's `checkHostForUneject`).
            let back_at_tick = until.div_ceil(self.interval_nanos);
            let in_service_ticks = tick.saturating_sub(back_at_tick.max(shared.last_tick));
            let decay = u32::try_from(in_service_ticks).unwrap_or(u32::MAX);
            shared.multiplier[i] = shared.multiplier[i].saturating_sub(decay);
            shared.success_rate[i] = None;
            if until > tick_at {
                continue; // ejected hosts are left out of the success-rate statistics
            }
            if total >= u64::from(self.config.success_rate_request_volume) && total > 0 {
                let rate = 100.0 * ok as f64 / total as f64;
                shared.success_rate[i] = Some(rate);
                rates.push((i, rate));
            }
        }
        shared.last_tick = tick;
        self.next_tick.store(tick.saturating_add(1).saturating_mul(self.interval_nanos), Relaxed);
        shared.threshold = None;
        let minimum = self.config.success_rate_minimum_hosts as usize;
        if hosts < minimum || rates.is_empty() || rates.len() < minimum {
            return;
        }
        let n = rates.len() as f64;
        let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
        let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
        let threshold = mean - self.config.success_rate_stdev_factor * variance.sqrt();
        shared.threshold = Some(threshold);
        for (host, rate) in rates {
            if rate < threshold {
                self.try_eject(&mut shared, host, EjectionKind::SuccessRate, tick_at);
            }
        }
    }

    /// The state of every host at `now`, for `/status` and `/metrics`.
    pub fn snapshot(&self, now: Instant) -> OutlierSnapshot {
        let now_nanos = self.since_epoch(now);
        let shared = self.lock();
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, health)| {
                let until = health.ejected_until.load(Relaxed);
                HostOutlierState {
                    ejected_until: (until > now_nanos).then(|| self.instant(until)),
                    ejection_multiplier: shared.multiplier[i],
                    times_ejected: shared.times_ejected[i],
                    consecutive_5xx: health.consecutive_5xx.load(Relaxed),
                    consecutive_gateway_failure: health.consecutive_gateway.load(Relaxed),
                    success_rate: shared.success_rate[i],
                }
            })
            .collect::<Vec<_>>();
        OutlierSnapshot {
            ejected: hosts.iter().filter(|h| h.ejected_until.is_some()).count(),
            hosts,
            success_rate_threshold: shared.threshold,
            counters: shared.counters,
        }
    }
}

impl Shared {
    /// True with probability `percent` %.
    fn roll(&mut self, percent: u8) -> bool {
        match percent {
            0 => false,
            100.. => true,
            _ => {
                // xorshift64: enough for a ramp-up percentage.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                self.rng % 100 < u64::from(percent)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    const S500: Outcome = Outcome::Upstream(StatusCode::INTERNAL_SERVER_ERROR);
    const S200: Outcome = Outcome::Upstream(StatusCode::OK);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn detector(hosts: usize, config: OutlierDetection) -> (OutlierDetector, Instant) {
        let start = Instant::now();
        (OutlierDetector::new(config, hosts, start), start)
    }

    fn half() -> OutlierDetection {
        OutlierDetection { max_ejection_percent: 50, ..OutlierDetection::default() }
    }

    #[test]
    fn exactly_the_fifth_consecutive_5xx_ejects() {
        let (d, t) = detector(2, half());
        for n in 1..=4 {
            d.record(0, S500, t);
            assert!(!d.is_ejected(0, t), "ejected after {n} failures");
        }
        d.record(0, S500, t);
        assert!(d.is_ejected(0, t));
        assert!(!d.is_ejected(1, t));
        assert!(d.is_ejected(0, t + secs(30) - Duration::from_nanos(1)));
        assert!(!d.is_ejected(0, t + secs(30)));
        let snap = d.snapshot(t);
        assert_eq!(snap.ejected, 1);
        assert_eq!(snap.hosts[0].times_ejected, 1);
        assert_eq!(snap.hosts[0].ejected_until, Some(t + secs(30)));
        assert_eq!(snap.counters.enforced(EjectionKind::Consecutive5xx), 1);
    }

    #[test]
    fn one_success_resets_the_streak() {
        let (d, t) = detector(2, half());
        for _ in 0..4 {
            d.record(0, S500, t);
        }
        d.record(0, S200, t);
        for _ in 0..4 {
            d.record(0, S500, t);
        }
        assert!(!d.is_ejected(0, t));
        assert_eq!(d.snapshot(t).hosts[0].consecutive_5xx, 4);
        d.record(0, S500, t);
        assert!(d.is_ejected(0, t));
    }

    #[test]
    fn local_answers_neither_count_nor_reset() {
        let (d, t) = detector(2, half());
        for _ in 0..4 {
            d.record(0, S500, t);
            d.record(0, Outcome::Local(StatusCode::TOO_MANY_REQUESTS), t);
        }
        d.record(0, S500, t);
        assert!(d.is_ejected(0, t));
    }

    #[test]
    fn the_second_ejection_lasts_twice_the_base() {
        let (d, t) = detector(2, half());
        let eject = |at: Instant| {
            for _ in 0..5 {
                d.record(0, S500, at);
            }
        };
        eject(t);
        assert!(!d.is_ejected(0, t + secs(30)));
        // Back at 30 s and failing again at once: no interval in service has decayed the
        // multiplier yet.
        let again = t + secs(30);
        eject(again);
        assert!(d.is_ejected(0, again + secs(60) - Duration::from_millis(1)));
        assert!(!d.is_ejected(0, again + secs(60)));
        let snap = d.snapshot(again);
        assert_eq!((snap.hosts[0].times_ejected, snap.hosts[0].ejection_multiplier), (2, 2));
        assert_eq!(snap.hosts[0].ejected_until, Some(again + secs(60)));
    }

    #[test]
    fn ejections_grow_to_max_ejection_time_and_decay_in_service() {
        let config = OutlierDetection { max_ejection_time: secs(70), ..half() };
        let (d, t) = detector(2, config);
        let mut now = t;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            for _ in 0..5 {
                d.record(0, S500, now);
            }
            let until = d.snapshot(now).hosts[0].ejected_until.unwrap();
            lengths.push(until - now);
            now = until;
        }
        assert_eq!(lengths, [secs(30), secs(60), secs(70), secs(70)]);
        // Each boundary in service after the one that brought it back takes one off.
        let back = now;
        assert_eq!(d.snapshot(back).hosts[0].ejection_multiplier, 3);
        d.tick(back + secs(20));
        assert_eq!(d.snapshot(back).hosts[0].ejection_multiplier, 1);
        d.tick(back + secs(30));
        assert_eq!(d.snapshot(back).hosts[0].ejection_multiplier, 0);
    }

    #[test]
    fn default_ten_percent_with_two_hosts_ejects_nothing() {
        let (d, t) = detector(2, OutlierDetection::default());
        for _ in 0..20 {
            d.record(0, S500, t);
        }
        assert!(!d.is_ejected(0, t));
        let snap = d.snapshot(t);
        assert_eq!(snap.counters.overflow, 4);
        assert_eq!(snap.counters.detected(EjectionKind::Consecutive5xx), 4);

        let always = OutlierDetection { always_eject_one_host: true, ..OutlierDetection::default() };
        let (d, t) = detector(2, always);
        for _ in 0..5 {
            d.record(0, S500, t);
            d.record(1, S500, t);
        }
        assert!(d.is_ejected(0, t));
        assert!(!d.is_ejected(1, t), "only one host: the other is over the limit");
    }

    #[test]
    fn max_ejection_percent_counts_the_candidate() {
        // 50 % of 4 hosts: two may be out, not three.
        let (d, t) = detector(4, half());
        for host in 0..3 {
            for _ in 0..5 {
                d.record(host, S500, t);
            }
        }
        assert_eq!(d.snapshot(t).ejected, 2);
        assert!(!d.is_ejected(2, t));
    }

    #[test]
    fn gateway_failures_are_enforced_only_when_asked() {
        let gateway = Outcome::Upstream(StatusCode::BAD_GATEWAY);
        let config = OutlierDetection { consecutive_5xx: 0, ..half() };
        let (d, t) = detector(2, config.clone());
        for _ in 0..5 {
            d.record(0, Outcome::ConnectFailure, t);
        }
        assert!(!d.is_ejected(0, t), "Envoy's default enforcing_consecutive_gateway_failure is 0");
        assert_eq!(d.snapshot(t).counters.detected(EjectionKind::ConsecutiveGatewayFailure), 1);

        let enforced = OutlierDetection {
            consecutive_gateway_failure: 3,
            enforcing_consecutive_gateway_failure: 100,
            ..config
        };
        let (d, t) = detector(2, enforced);
        d.record(0, gateway, t);
        d.record(0, S500, t); // a 500 is not a gateway failure: the streak starts over
        d.record(0, Outcome::ConnectFailure, t);
        d.record(0, Outcome::Timeout, t);
        assert!(!d.is_ejected(0, t));
        d.record(0, gateway, t);
        assert!(d.is_ejected(0, t));
        assert_eq!(d.snapshot(t).counters.enforced(EjectionKind::ConsecutiveGatewayFailure), 1);
    }

    #[test]
    fn enforcing_zero_detects_without_ejecting() {
        let (d, t) = detector(2, OutlierDetection { enforcing_consecutive_5xx: 0, ..half() });
        for _ in 0..10 {
            d.record(0, S500, t);
        }
        assert!(!d.is_ejected(0, t));
        assert_eq!(d.snapshot(t).counters.detected(EjectionKind::Consecutive5xx), 2);
    }

    fn success_rate_config() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 0,
            max_ejection_percent: 20,
            success_rate_minimum_hosts: 5,
            success_rate_request_volume: 100,
            ..OutlierDetection::default()
        }
    }

    /// `per_host[i]` successes out of 100 requests for host i, spread over the first interval.
    fn feed(d: &OutlierDetector, t: Instant, per_host: &[u32]) {
        for (host, &ok) in per_host.iter().enumerate() {
            for n in 0..100 {
                d.record(host, if n < ok { S200 } else { S500 }, t + Duration::from_millis(u64::from(n)));
            }
        }
    }

    #[test]
    fn success_rate_ejects_the_outlier() {
        let (d, t) = detector(5, success_rate_config());
        feed(&d, t, &[50, 100, 100, 100, 100]);
        assert!(!d.is_ejected(0, t + secs(9)), "nothing happens before the interval ends");
        // The first request after the boundary runs the evaluation, dated at the boundary.
        d.tick(t + secs(12));
        let snap = d.snapshot(t + secs(12));
        // mean 90, stdev 20: threshold 90 − 1.9 · 20 = 52.
        assert!((snap.success_rate_threshold.unwrap() - 52.0).abs() < 1e-9);
        assert_eq!(snap.hosts[0].success_rate, Some(50.0));
        assert_eq!(snap.hosts[1].success_rate, Some(100.0));
        assert_eq!(snap.hosts[0].ejected_until, Some(t + secs(10) + secs(30)));
        assert_eq!(snap.ejected, 1);
        assert_eq!(snap.counters.enforced(EjectionKind::SuccessRate), 1);
    }

    #[test]
    fn success_rate_needs_volume_and_enough_hosts() {
        // Host 4 has only 99 requests: four qualifying hosts are fewer than the minimum five.
        let (d, t) = detector(5, success_rate_config());
        feed(&d, t, &[50, 100, 100, 100]);
        for n in 0..99 {
            d.record(4, S200, t + Duration::from_millis(n));
        }
        d.tick(t + secs(10));
        let snap = d.snapshot(t + secs(10));
        assert_eq!(snap.ejected, 0);
        assert_eq!(snap.success_rate_threshold, None);
        assert_eq!(snap.hosts[4].success_rate, None);

        // Each interval stands alone: the next one starts from empty buckets.
        d.tick(t + secs(20));
        assert_eq!(d.snapshot(t + secs(20)).hosts[0].success_rate, None);
    }

    #[test]
    fn success_rate_within_the_spread_stays() {
        let (d, t) = detector(5, success_rate_config());
        feed(&d, t, &[90, 95, 100, 95, 90]);
        d.tick(t + secs(10));
        assert_eq!(d.snapshot(t + secs(10)).ejected, 0);
    }
}
