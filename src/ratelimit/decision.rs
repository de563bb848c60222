//! What every algorithm answers, and the clock it is asked with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the one time unit of the cores (Redis `TIME` gives the
/// same), fine enough for a token bucket refilling thousands of tokens a second.
pub type Micros = u64;

/// One second in [`Micros`].
pub const SECOND: Micros = 1_000_000;

/// The answer of one check of one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted (and was counted).
    pub allowed: bool,
    /// The limit (`X-RateLimit-Limit`).
    pub limit: u64,
    /// What is left after this request (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Time from `now` until the limit is fully available again (the end of the window for
    /// windows, a full bucket for buckets).
    pub reset: Micros,
    /// When denied: time from `now` until a request would be admitted. Zero when allowed.
    pub retry_after: Micros,
    /// Leaky bucket only: how long the admitted request waits for its slot. Zero otherwise.
    pub delay: Micros,
}

impl Decision {
    /// `Retry-After` in whole seconds, rounded up and at least 1 (a client told "0" retries at once).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.div_ceil(SECOND).max(1)
    }

    /// `RateLimit-Reset`: seconds from now, rounded up.
    pub fn reset_secs(&self) -> u64 {
        self.reset.div_ceil(SECOND)
    }
}

/// Where the layers and the memory store read the time: the system clock in production, a
/// [`ManualClock`] in tests.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, as microseconds since the Unix epoch.
    fn now(&self) -> Micros;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as Micros)
    }
}

/// A clock that only moves when told to; clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Micros) -> Self {
        Self(Arc::new(AtomicU64::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as Micros, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, to: Micros) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        self.0.load(Ordering::SeqCst)
    }
}
