//! The layers: one [`RateLimitLayer`] mechanism, and [`SlidingWindowLayer`], [`TokenBucketLayer`]
//! and [`LeakyBucketLayer`] to configure it by algorithm.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::StatusCode;
use tower::Layer;

use super::decision::Micros;
use super::leaky_bucket::LeakyBucket;
use super::limit_by::{DEFAULT_IPV6_PREFIX, LimitBy};
use super::policy::{Period, Policy};
use super::service::RateLimit;
use super::store::{MemoryStore, Store};
use super::token_bucket::TokenBucket;
use super::window::WindowLimit;

/// How a limiter answers; cloned into each layer (cheap: an `Arc`).
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) policy: Arc<Policy>,
    pub(crate) limit_by: LimitBy,
    /// IPv6 client IPs are counted per network of this many bits (1..=128).
    pub(crate) ipv6_prefix: u8,
    pub(crate) hide_client_headers: bool,
    pub(crate) error_code: StatusCode,
    pub(crate) error_message: Option<Cow<'static, str>>,
    pub(crate) fault_tolerant: bool,
}

/// What the clones of one layer share: the store and the counters.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) stats: Stats,
}

/// How often the store failed, by kind.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) unavailable: AtomicU64,
    pub(crate) script_errors: AtomicU64,
    pub(crate) bypassed: AtomicU64,
}

/// Counters of a limiter's store failures (shared by every clone of the layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitStats {
    /// Decisions that failed because the store was unreachable, slow, or its breaker open.
    pub unavailable: u64,
    /// Decisions that failed because the store answered with an error (a script error, a key of
    /// the wrong type).
    pub script_errors: u64,
    /// Requests admitted without a decision (`fault_tolerant`).
    pub bypassed: u64,
}

/// A rate limiter for any policy; the named layers below build it.
///
/// Clones share one store, so one limit: clone the layer freely.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    pub(crate) options: Options,
    pub(crate) shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A limiter enforcing `policy` per client IP in a fresh [`MemoryStore`].
    pub fn new(policy: Policy) -> Self {
        Self {
            options: Options {
                policy: Arc::new(policy),
                limit_by: LimitBy::default(),
                ipv6_prefix: DEFAULT_IPV6_PREFIX,
                hide_client_headers: false,
                error_code: StatusCode::TOO_MANY_REQUESTS,
                error_message: None,
                fault_tolerant: true,
            },
            shared: Arc::new(Shared { store: Arc::new(MemoryStore::default()), stats: Stats::default() }),
        }
    }

    /// The policy enforced.
    pub fn policy(&self) -> &Policy {
        &self.options.policy
    }

    /// Store failures so far.
    pub fn stats(&self) -> RateLimitStats {
        let s = &self.shared.stats;
        RateLimitStats {
            unavailable: s.unavailable.load(Ordering::Relaxed),
            script_errors: s.script_errors.load(Ordering::Relaxed),
            bypassed: s.bypassed.load(Ordering::Relaxed),
        }
    }

    /// Whether the store can decide right now ([`Store::is_available`]).
    pub fn store_available(&self) -> bool {
        self.shared.store.is_available()
    }

    fn set_policy(&mut self, policy: Policy) {
        self.options.policy = Arc::new(policy);
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.options.clone(), self.shared.clone())
    }
}

/// The builder methods every named layer shares.
macro_rules! common_options {
    ($layer:ident) => {
        impl $layer {
            /// What the limit is counted per (default: the client IP).
            pub fn limit_by(mut self, limit_by: LimitBy) -> Self {
                self.inner.options.limit_by = limit_by;
                self
            }

            /// Counts IPv6 clients per network of `bits` bits (default 64: a subscriber's `/64`,
            /// whose 2^64 addresses would otherwise each get a bucket); 128 counts each address.
            /// Clamped to 1..=128. IPv4 clients (and IPv4-mapped IPv6) count per address.
            pub fn ipv6_prefix(mut self, bits: u8) -> Self {
                self.inner.options.ipv6_prefix = bits.clamp(1, 128);
                self
            }

            /// Keeps the state in `store` (default: a fresh [`MemoryStore`]).
            pub fn store(mut self, store: impl Store) -> Self {
                self.inner.shared = Arc::new(Shared { store: Arc::new(store), stats: Stats::default() });
                self
            }

            /// Keeps the state in a store shared with other limiters.
            pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
                self.inner.shared = Arc::new(Shared { store, stats: Stats::default() });
                self
            }

            /// Leaves the rate-limit headers off the responses (Kong's `hide_client_headers`);
            /// a rejection keeps its `Retry-After`.
            pub fn hide_client_headers(mut self, hide: bool) -> Self {
                self.inner.options.hide_client_headers = hide;
                self
            }

            /// The status of a rejection (default 429).
            pub fn error_code(mut self, status: StatusCode) -> Self {
                self.inner.options.error_code = status;
                self
            }

            /// The `message` of a rejection (default: `Request limit of 1000/hour exceeded.
            /// Retry after 47 seconds.`).
            pub fn error_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
                self.inner.options.error_message = Some(message.into());
                self
            }

            /// When the store fails: admit without headers (`true`, the default) or answer 503.
            pub fn fault_tolerant(mut self, tolerant: bool) -> Self {
                self.inner.options.fault_tolerant = tolerant;
                self
            }

            /// Store failures so far.
            pub fn stats(&self) -> RateLimitStats {
                self.inner.stats()
            }

            /// The policy enforced.
            pub fn policy(&self) -> &Policy {
                self.inner.policy()
            }
        }

        impl<S> Layer<S> for $layer {
            type Service = RateLimit<S>;

            fn layer(&self, inner: S) -> Self::Service {
                self.inner.layer(inner)
            }
        }

        impl From<$layer> for RateLimitLayer {
            fn from(layer: $layer) -> Self {
                layer.inner
            }
        }
    };
}

/// Kong's `rate-limiting`: limits per second, minute, hour, day, month and year, several at
/// once, counted by a sliding window (default) or a fixed one.
///
/// A new layer has no window and admits everything; add windows with [`second`](Self::second)
/// … [`year`](Self::year).
#[derive(Debug, Clone)]
pub struct SlidingWindowLayer {
    inner: RateLimitLayer,
    windows: Vec<(Period, u64)>,
    sliding: bool,
}

impl Default for SlidingWindowLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl SlidingWindowLayer {
    /// A layer with no window yet.
    pub fn new() -> Self {
        Self { inner: RateLimitLayer::new(Policy::Windows(Vec::new())), windows: Vec::new(), sliding: true }
    }

    /// Sets the limit of one window (a limit of 0 is taken as 1).
    pub fn window(mut self, period: Period, limit: u64) -> Self {
        self.windows.retain(|(p, _)| *p != period);
        self.windows.push((period, limit));
        self.windows.sort();
        self.rebuild();
        self
    }

    /// Requests per second.
    pub fn second(self, limit: u64) -> Self {
        self.window(Period::Second, limit)
    }

    /// Requests per minute.
    pub fn minute(self, limit: u64) -> Self {
        self.window(Period::Minute, limit)
    }

    /// Requests per hour.
    pub fn hour(self, limit: u64) -> Self {
        self.window(Period::Hour, limit)
    }

    /// Requests per day.
    pub fn day(self, limit: u64) -> Self {
        self.window(Period::Day, limit)
    }

    /// Requests per 30 days.
    pub fn month(self, limit: u64) -> Self {
        self.window(Period::Month, limit)
    }

    /// Requests per 365 days.
    pub fn year(self, limit: u64) -> Self {
        self.window(Period::Year, limit)
    }

    /// Counts in fixed windows (Kong's own behaviour: cheaper to explain, but a client can send
    /// twice the limit across a boundary) instead of the sliding estimate.
    pub fn fixed_window(mut self) -> Self {
        self.sliding = false;
        self.rebuild();
        self
    }

    fn rebuild(&mut self) {
        let sliding = self.sliding;
        let windows = self
            .windows
            .iter()
            .map(|&(period, limit)| {
                let micros: Micros = period.micros();
                let limit = if sliding {
                    WindowLimit::sliding(limit, micros)
                } else {
                    WindowLimit::fixed(limit, micros)
                };
                (period, limit)
            })
            .collect();
        self.inner.set_policy(Policy::Windows(windows));
    }
}

common_options!(SlidingWindowLayer);

/// A token bucket per key: bursts up to `capacity`, then `refill_per_second` requests a second.
/// For clients that are bursty by nature (a page load, a batch job's start).
#[derive(Debug, Clone)]
pub struct TokenBucketLayer {
    inner: RateLimitLayer,
}

impl TokenBucketLayer {
    /// A bucket of `capacity` tokens refilled at `refill_per_second` tokens a second.
    pub fn new(capacity: u64, refill_per_second: f64) -> Self {
        Self {
            inner: RateLimitLayer::new(Policy::TokenBucket(TokenBucket::new(capacity, refill_per_second))),
        }
    }
}

common_options!(TokenBucketLayer);

/// A leaky bucket per key: admitted requests are delayed to leave at a uniform
/// `drain_per_second`; at most `capacity` wait, the rest are rejected. For fragile backends.
#[derive(Debug, Clone)]
pub struct LeakyBucketLayer {
    inner: RateLimitLayer,
}

impl LeakyBucketLayer {
    /// A queue of `capacity` requests drained at `drain_per_second` requests a second.
    pub fn new(capacity: u64, drain_per_second: f64) -> Self {
        Self { inner: RateLimitLayer::new(Policy::LeakyBucket(LeakyBucket::new(capacity, drain_per_second))) }
    }
}

common_options!(LeakyBucketLayer);
