//! The hybrid store (feature `redis`, Kong's `sync_rate`): decisions are local, counters are
//! shared through Redis in the background.
//!
//! Each gateway keeps, per key and window, the last counts Redis reported (`global`), the
//! requests it admitted since (`pending`), and those being pushed right now (`in_flight`). A
//! decision is the sliding- or fixed-window core on `global + in_flight + pending`: no network
//! round trip. Every `sync_every`, one pipelined round trip adds each key's pending counts to
//! Redis (into the window they were admitted in) and reads back the totals every gateway
//! pushed (`SET … PX ttl NX`, `INCRBY` or `GET` per counter, no script). Redis keeps the same
//! counters as [`RedisStore`] (one per key and window, `{<prefix>:<key>}:<period>:<index>`), so
//! the totals in Redis are exact; only decisions are approximate. Window indices come from each
//! gateway's clock (the store's [`clock`](HybridStore::clock)), not Redis `TIME`.
//!
//! **Accuracy.** Between two syncs a gateway does not see what the others admitted. With `G`
//! gateways sharing a limit `L` and a total rate `R` spread evenly, up to about
//! `R × sync_every × (G − 1) / G` requests beyond `L` are admitted per window (never more than
//! `(G − 1) × L`: each gateway alone never passes `L`). The test
//! `hybrid_accuracy_as_a_function_of_sync_every` (tests/it/ratelimit.rs) measures it: two
//! gateways, limit 100/minute, 1,000 requests/s alternating between them admit 1, 5, 25, 50,
//! 100 and 100 requests over the limit with `sync_every` 1, 10, 50, 100, 250 and 1,000 ms.
//! With a single gateway the hybrid store is exact.
//!
//! **Hot and cold keys.** A key decided on since the last sync is refreshed by the next one; a
//! key whose totals are older than two sync periods (or that this gateway never saw) is *cold*:
//! its first decision reads its totals from Redis (one round trip) and the key is hot again. So
//! busy clients are decided locally, and a slow client (fewer requests than syncs) costs a
//! round trip per request, as without `sync_rate`, and is counted exactly.
//!
//! **Failures.** A failed sync keeps the counts pending (they are pushed by the next sync that
//! succeeds) and decisions go on locally, so a Redis outage degrades the limit to per-gateway
//! counting instead of failing requests; the breaker of the underlying [`RedisStore`] spaces
//! the retries.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashMap};

use super::redis::RedisStore;
use super::{Decided, Store, StoreError};
use crate::ratelimit::decision::{Clock, Micros, SystemClock};
use crate::ratelimit::policy::{KeyState, Policy};
use crate::ratelimit::window::{WindowLimit, WindowState};

/// Window counters decided locally and synced to Redis every `sync_every` (Kong's `sync_rate`).
///
/// Only window policies (sliding or fixed) can be synced this way: a bucket's state is a
/// timestamp, not a sum of counts. Other policies get [`StoreError::Script`].
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use portcullis::ratelimit::{HybridStore, RedisStore, SlidingWindowLayer};
///
/// let redis = RedisStore::new("redis://127.0.0.1:6379/0", "orders-api").unwrap();
/// let store = HybridStore::new(redis, Duration::from_millis(100));
/// let layer = SlidingWindowLayer::new().minute(600).store(Arc::new(store));
/// # let _ = layer;
/// ```
pub struct HybridStore {
    redis: RedisStore,
    sync_every: Duration,
    clock: Arc<dyn Clock>,
    background: bool,
    started: AtomicBool,
    /// The policy of the one limiter using this store, set by its first decision (the sync
    /// needs its periods).
    policy: OnceLock<Arc<Policy>>,
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    max_keys_per_shard: usize,
    /// One sync at a time: a second one would take counts the first has in flight.
    syncing: tokio::sync::Mutex<()>,
}

/// Part of the keys, behind its own lock.
type Shard = HashMap<Box<str>, Slot, DefaultHashBuilder>;

/// One key's counters, one entry per window of the policy.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// What Redis reported at the last sync.
    global: [WindowState; 6],
    /// Admitted here, being pushed by the sync in flight.
    in_flight: [WindowState; 6],
    /// Admitted here since.
    pending: [WindowState; 6],
    last_seen: Micros,
    /// Decided since the last sync: refresh it at the next one.
    seen_since_sync: bool,
    /// When `global` was last read from Redis.
    refreshed_at: Micros,
}

impl fmt::Debug for HybridStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridStore")
            .field("redis", &self.redis)
            .field("sync_every", &self.sync_every)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Keys pushed and refreshed.
    pub keys: usize,
    /// Admitted requests pushed to Redis (summed over keys, first window).
    pub pushed: u64,
}

impl HybridStore {
    /// A store deciding locally and syncing with `redis` every `sync_every` (at least 1 ms),
    /// in a background task started by the first decision (inside a tokio runtime).
    pub fn new(redis: RedisStore, sync_every: Duration) -> Self {
        let max_keys = super::MemoryStore::DEFAULT_MAX_KEYS;
        let shards = (max_keys / 1024).clamp(1, 64);
        Self {
            redis,
            sync_every: sync_every.max(Duration::from_millis(1)),
            clock: Arc::new(SystemClock),
            background: true,
            started: AtomicBool::new(false),
            policy: OnceLock::new(),
            shards: (0..shards).map(|_| Mutex::new(HashMap::default())).collect(),
            hasher: DefaultHashBuilder::default(),
            max_keys_per_shard: max_keys.div_ceil(shards),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads the time from `clock` (tests use a [`ManualClock`](crate::ratelimit::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether a background task syncs every `sync_every` (default true); without it, only
    /// [`sync`](Self::sync) does (tests drive it step by step).
    pub fn background_sync(mut self, on: bool) -> Self {
        self.background = on;
        self
    }

    /// The sync interval.
    pub fn sync_every(&self) -> Duration {
        self.sync_every
    }

    /// How many keys are held locally.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no key is held locally.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn windows(&self) -> Option<&[(crate::ratelimit::Period, WindowLimit)]> {
        match self.policy.get().map(|p| &**p) {
            Some(Policy::Windows(windows)) => Some(windows),
            _ => None,
        }
    }

    /// Pushes the pending counts of every key decided since the last sync to Redis and reads
    /// back their totals, in one pipelined round trip; forgets keys whose windows have passed.
    pub async fn sync(&self) -> Result<SyncReport, StoreError> {
        let Some(windows) = self.windows() else { return Ok(SyncReport::default()) };
        let _one_at_a_time = self.syncing.lock().await;
        let policy = self.policy.get().map(|p| &**p);
        let now = self.clock.now();
        let mut batch: Vec<(Box<str>, [WindowState; 6])> = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|key, slot| {
                let pending = slot.pending;
                if !slot.seen_since_sync && pending.iter().all(|w| w.current + w.previous == 0) {
                    // Not asked about since the last sync: no need to refresh it; forget it
                    // once its windows have passed.
                    let state = KeyState::Windows(slot.global);
                    return !policy.is_some_and(|p| p.is_idle(&state, now));
                }
                slot.seen_since_sync = false;
                // Into the windows of `now`: what was admitted in the previous window is pushed
                // there, anything older no longer matters to any decision.
                let mut pending = pending;
                for ((_, limit), state) in windows.iter().zip(pending.iter_mut()) {
                    limit.roll(state, now);
                }
                slot.in_flight = pending;
                slot.pending = [WindowState::default(); 6];
                batch.push((key.clone(), pending));
                true
            });
        }
        if batch.is_empty() {
            return Ok(SyncReport::default());
        }
        let mut pipe = redis::Pipeline::with_capacity(4 * windows.len() * batch.len());
        for (key, pending) in &batch {
            self.push_and_read(&mut pipe, key, windows, pending);
        }
        let result = tokio::time::timeout(self.redis.command_timeout(), async {
            let mut connection = self.redis.connection().await?;
            pipe.query_async::<Vec<Option<i64>>>(&mut connection).await
        })
        .await;
        let per_key = 2 * windows.len();
        let replies = match result {
            Ok(Ok(replies)) if replies.len() == per_key * batch.len() => replies,
            failed => {
                self.restore(windows, &batch, now);
                return Err(match failed {
                    Err(_) => {
                        self.redis.trip();
                        StoreError::Unavailable(format!(
                            "no answer within {:?}",
                            self.redis.command_timeout()
                        ))
                    }
                    Ok(Err(error)) => {
                        let error = super::redis::classify(error);
                        if matches!(error, StoreError::Unavailable(_)) {
                            self.redis.trip();
                        }
                        error
                    }
                    Ok(Ok(replies)) => StoreError::Script(format!(
                        "{} replies for {} keys of {} windows",
                        replies.len(),
                        batch.len(),
                        windows.len()
                    )),
                });
            }
        };
        let mut report = SyncReport { keys: batch.len(), pushed: 0 };
        for ((key, pushed), reply) in batch.iter().zip(replies.chunks(per_key)) {
            report.pushed += pushed[0].current + pushed[0].previous;
            self.set_global(key, &totals(pushed, reply), now);
            if let Some(slot) = lock(self.shard(key)).get_mut(key) {
                slot.in_flight = [WindowState::default(); 6];
            }
        }
        Ok(report)
    }

    /// Appends one key's part of a sync to `pipe`: per window, its pending counts added to the
    /// counters of their windows (`SET … PX ttl NX` then `INCRBY`, the synchronous store's
    /// layout), or the counters read (`GET`) where nothing is pending. Two replies per window:
    /// the current and the previous window's totals.
    fn push_and_read(
        &self,
        pipe: &mut redis::Pipeline,
        key: &str,
        windows: &[(crate::ratelimit::Period, WindowLimit)],
        pending: &[WindowState; 6],
    ) {
        let mut keys = self.redis.window_keys(key);
        for ((_, limit), state) in windows.iter().zip(pending) {
            let ttl_ms = super::redis::window_ttl_ms(limit);
            let counts = [(state.index, state.current), (state.index.wrapping_sub(1), state.previous)];
            for (index, count) in counts {
                let counter = keys.window(limit.period, index);
                if count == 0 {
                    pipe.cmd("GET").arg(counter);
                } else {
                    pipe.cmd("SET").arg(counter).arg(0).arg("PX").arg(ttl_ms).arg("NX").ignore();
                    pipe.cmd("INCRBY").arg(counter).arg(count);
                }
            }
        }
    }

    /// Sets `key`'s totals from what Redis reported.
    fn set_global(&self, key: &str, totals: &[WindowState], now: Micros) {
        let mut shard = lock(self.shard(key));
        let slot = shard.entry_ref(key).or_default();
        for (global, &read) in slot.global.iter_mut().zip(totals) {
            // Redis totals only grow within a window (the hybrid store only adds), so a smaller
            // one is a stale read (a cold read that left before a sync's push and returned after
            // it): keep what is known, or this gateway would forget counts it pushed itself and
            // admit them again.
            *global = match read.index.cmp(&global.index) {
                std::cmp::Ordering::Greater => read,
                std::cmp::Ordering::Equal => WindowState {
                    index: read.index,
                    current: read.current.max(global.current),
                    previous: read.previous.max(global.previous),
                },
                std::cmp::Ordering::Less => *global,
            };
        }
        slot.refreshed_at = now;
    }

    /// Reads `key`'s totals from Redis (a key this gateway has not decided on for a while).
    async fn refresh(&self, key: &str) -> Result<(), StoreError> {
        let Some(windows) = self.windows() else { return Ok(()) };
        let now = self.clock.now();
        let mut windows_now = [WindowState::default(); 6];
        for ((_, limit), state) in windows.iter().zip(windows_now.iter_mut()) {
            limit.roll(state, now);
        }
        let mut pipe = redis::Pipeline::with_capacity(2 * windows.len());
        self.push_and_read(&mut pipe, key, windows, &windows_now);
        let reply = tokio::time::timeout(self.redis.command_timeout(), async {
            let mut connection = self.redis.connection().await?;
            pipe.query_async::<Vec<Option<i64>>>(&mut connection).await
        })
        .await;
        match reply {
            Ok(Ok(reply)) if reply.len() == 2 * windows.len() => {
                self.redis.close();
                self.set_global(key, &totals(&windows_now, &reply), now);
                Ok(())
            }
            Ok(Ok(reply)) => {
                self.redis.close();
                Err(StoreError::Script(format!("{} replies for {} windows", reply.len(), windows.len())))
            }
            Ok(Err(error)) if !super::redis::is_unavailable(&error) => {
                self.redis.close();
                Err(StoreError::Script(error.to_string()))
            }
            failed => {
                self.redis.trip();
                Err(StoreError::Unavailable(match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {:?}", self.redis.command_timeout()),
                }))
            }
        }
    }

    /// Whether `key`'s totals are recent enough to decide on locally: read from Redis within
    /// the last two sync periods (which every key decided on since is part of).
    fn is_hot(&self, key: &str, now: Micros) -> bool {
        let fresh_after = now.saturating_sub(2 * self.sync_every.as_micros() as Micros);
        lock(self.shard(key))
            .get(key)
            .is_some_and(|slot| slot.refreshed_at >= fresh_after && slot.refreshed_at > 0)
    }

    /// A failed sync: what was in flight is pending again, for the next one.
    fn restore(
        &self,
        windows: &[(crate::ratelimit::Period, WindowLimit)],
        batch: &[(Box<str>, [WindowState; 6])],
        now: Micros,
    ) {
        for (key, _) in batch {
            let mut shard = lock(self.shard(key));
            let Some(slot) = shard.get_mut(key) else { continue };
            for (i, (_, limit)) in windows.iter().enumerate() {
                let mut back = slot.in_flight[i];
                limit.roll(&mut back, now);
                limit.roll(&mut slot.pending[i], now);
                slot.pending[i].current += back.current;
                slot.pending[i].previous += back.previous;
            }
            slot.in_flight = [WindowState::default(); 6];
        }
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let hash = self.hasher.hash_one(key);
        &self.shards[((hash >> 32) as usize) % self.shards.len()]
    }

    /// Decides one request for `key` at `now` from the local counters.
    fn decide_at(
        &self,
        key: &str,
        policy: &Policy,
        now: Micros,
    ) -> Result<crate::ratelimit::Verdict, StoreError> {
        let Policy::Windows(windows) = policy else {
            return Err(StoreError::Script("the hybrid store syncs window limits only".into()));
        };
        let mut shard = lock(self.shard(key));
        if !shard.contains_key(key) && shard.len() >= self.max_keys_per_shard {
            // Full: forget the least recently seen of a sample (its pending counts are lost,
            // so the limit can only be undercounted, never the memory grow).
            let oldest = shard.iter().take(8).min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                shard.remove(&oldest);
            }
        }
        let slot = shard.entry_ref(key).or_default();
        slot.last_seen = now;
        slot.seen_since_sync = true;
        let mut seen = [WindowState::default(); 6];
        for (i, (_, limit)) in windows.iter().enumerate() {
            limit.roll(&mut slot.global[i], now);
            limit.roll(&mut slot.in_flight[i], now);
            limit.roll(&mut slot.pending[i], now);
            let (g, f, p) = (slot.global[i], slot.in_flight[i], slot.pending[i]);
            seen[i] = WindowState {
                index: g.index,
                current: g.current + f.current + p.current,
                previous: g.previous + f.previous + p.previous,
            };
        }
        let verdict = policy.decide(&mut KeyState::Windows(seen), now);
        if verdict.allowed() {
            for state in slot.pending.iter_mut().take(windows.len()) {
                state.current += 1;
            }
        }
        Ok(verdict)
    }

    fn start_background(self: &Arc<Self>) {
        if !self.background || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.started.store(false, Ordering::Release);
            return;
        };
        let store: Weak<Self> = Arc::downgrade(self);
        let every = self.sync_every;
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // The limiter is gone (config reloaded, gateway stopped): so is the task.
                let Some(store) = store.upgrade() else { return };
                if let Err(error) = store.sync().await {
                    tracing::warn!(target: "portcullis::ratelimit", %error, "rate-limit sync failed");
                }
            }
        });
    }
}

/// The totals of one key's windows from its replies to [`HybridStore::push_and_read`] (two per
/// window), in the windows `pushed` was rolled to.
fn totals(pushed: &[WindowState; 6], reply: &[Option<i64>]) -> [WindowState; 6] {
    let mut totals = [WindowState::default(); 6];
    let count = |i: usize| reply.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
    for (i, (total, pushed)) in totals.iter_mut().zip(pushed).enumerate().take(reply.len() / 2) {
        *total = WindowState { index: pushed.index, current: count(2 * i), previous: count(2 * i + 1) };
    }
    totals
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store for Arc<HybridStore> {
    fn decide(&self, key: &str, policy: &Arc<Policy>) -> Decided {
        if self.policy.get().is_none() {
            let _ = self.policy.set(policy.clone());
            self.start_background();
        }
        let now = self.clock.now();
        // A key this gateway has not decided on lately may have been counted elsewhere: read
        // its totals first (one round trip, then it is hot). With Redis unreachable (breaker
        // open), decide on what is known.
        if self.is_hot(key, now) || !matches!(&**policy, Policy::Windows(_)) || !self.redis.admit() {
            return Decided::Ready(self.decide_at(key, policy, now));
        }
        let (this, key, policy) = (self.clone(), key.to_owned(), policy.clone());
        Decided::Pending(Box::pin(async move {
            if let Err(error) = this.refresh(&key).await {
                tracing::warn!(target: "portcullis::ratelimit", %error, "rate-limit refresh failed; deciding locally");
            }
            this.decide_at(&key, &policy, this.clock.now())
        }))
    }
}
