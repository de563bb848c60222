//! Where per-key state lives: the [`Store`] trait and the in-memory [`MemoryStore`].

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::core::{Clock, Micros, SECOND, SystemClock};
use super::policy::{KeyState, Policy, Verdict};

/// Why a store could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached in time (connection refused, timeout, open breaker).
    #[error("rate-limit store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error (a script bug, a wrong type at a key): counted apart,
    /// because retrying or failing open will not fix it.
    #[error("rate-limit store script error: {0}")]
    Script(String),
}

/// A boxed decision in flight, for stores that go over the network.
pub type PendingVerdict = Pin<Box<dyn Future<Output = Result<Verdict, StoreError>> + Send>>;

/// A store's answer: at once (memory) or later (network).
// Returned by value and consumed at once: boxing `Ready` would cost the allocation it avoids.
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    /// Decided synchronously; the layer answers without an extra allocation.
    Ready(Result<Verdict, StoreError>),
    /// Decided later.
    Pending(PendingVerdict),
}

impl fmt::Debug for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decided::Ready(r) => f.debug_tuple("Ready").field(r).finish(),
            Decided::Pending(_) => f.write_str("Pending"),
        }
    }
}

/// Keeps per-key state for one rate limiter and decides requests under its [`Policy`].
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Decides one request for `key`, counting it only when admitted.
    fn decide(&self, key: &str, policy: &Arc<Policy>) -> Decided;

    /// Whether the store can decide right now, for health reports (`GET /status`): `false`
    /// while a networked store is known to be unreachable. In-memory stores always can.
    fn is_available(&self) -> bool {
        true
    }
}

/// The embedded store: sharded maps behind their own mutexes (no global lock: two keys in
/// different shards never contend), bounded in keys.
///
/// A key whose state is back to "never seen" (its windows passed, its bucket refilled) is
/// *idle* and dropped without changing any answer. When a shard is full of busy keys, the least
/// recently seen of a small sample is evicted: an attacker rotating keys can then only make the
/// limiter forget, never grow.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Randomly seeded: clients cannot aim their keys at one shard or one bucket.
    hasher: DefaultHashBuilder,
    max_keys_per_shard: usize,
    clock: Arc<dyn Clock>,
}

struct Shard {
    table: HashTable<Slot>,
    last_sweep: Micros,
}

/// One key: its hash is kept so the table never rehashes a string.
struct Slot {
    hash: u64,
    key: Box<str>,
    state: KeyState,
    last_seen: Micros,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_KEYS)
    }
}

impl MemoryStore {
    /// The default bound: 100,000 keys (about 20 MB at most).
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    /// A store holding at most about `max_keys` keys, on the system clock.
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Arc::new(SystemClock))
    }

    /// A store reading the time from `clock` (tests use a [`ManualClock`](super::ManualClock)).
    pub fn with_clock(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        // Enough shards that 2-16 threads rarely meet on one lock; a small store needs none.
        let shards = (max_keys / 1024).clamp(1, 64);
        let per_shard = max_keys.div_ceil(shards).max(1);
        let shards =
            (0..shards).map(|_| Mutex::new(Shard { table: HashTable::new(), last_sweep: 0 })).collect();
        Self { shards, hasher: DefaultHashBuilder::default(), max_keys_per_shard: per_shard, clock }
    }

    /// The key bound (rounded up to a multiple of the shard count).
    pub fn max_keys(&self) -> usize {
        self.max_keys_per_shard * self.shards.len()
    }

    /// How many keys are held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides one request for `key` at `now` (the synchronous core of [`Store::decide`]).
    pub fn decide_at(&self, key: &str, policy: &Policy, now: Micros) -> Verdict {
        let hash = self.hasher.hash_one(key);
        // Middle bits pick the shard: the table uses the low bits and the top seven.
        let index = ((hash >> 32) as usize) % self.shards.len();
        let mut shard = lock(&self.shards[index]);
        if let Some(slot) = shard.table.find_mut(hash, |s| *s.key == *key) {
            slot.last_seen = now;
            return policy.decide(&mut slot.state, now);
        }
        let mut state = policy.initial_state();
        let verdict = policy.decide(&mut state, now);
        if !policy.is_idle(&state, now) {
            if shard.table.len() >= self.max_keys_per_shard {
                shard.make_room(policy, now, self.max_keys_per_shard);
            }
            shard
                .table
                .insert_unique(hash, Slot { hash, key: key.into(), state, last_seen: now }, |s| s.hash);
        }
        verdict
    }
}

impl Shard {
    /// Frees at least one place in a shard holding `max` keys.
    fn make_room(&mut self, policy: &Policy, now: Micros, max: usize) {
        // A full sweep is O(shard); at most once a second, so rotating keys cannot make every
        // insertion pay for it.
        if now.saturating_sub(self.last_sweep) >= SECOND {
            self.last_sweep = now;
            self.table.retain(|s| !policy.is_idle(&s.state, now));
        }
        while self.table.len() >= max {
            let oldest =
                self.table.iter().take(8).min_by_key(|s| s.last_seen).map(|s| (s.hash, s.key.clone()));
            let Some((hash, key)) = oldest else { break };
            if let Ok(entry) = self.table.find_entry(hash, |s| s.key == key) {
                entry.remove();
            }
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding the lock leaves counters, not invariants: keep using them.
    shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Store for MemoryStore {
    fn decide(&self, key: &str, policy: &Arc<Policy>) -> Decided {
        Decided::Ready(Ok(self.decide_at(key, policy, self.clock.now())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::core::ManualClock;
    use crate::ratelimit::policy::Period;
    use crate::ratelimit::window::WindowLimit;

    fn per_minute(limit: u64) -> Policy {
        Policy::Windows(vec![(Period::Minute, WindowLimit::sliding(limit, Period::Minute.micros()))])
    }

    #[test]
    fn stays_under_its_bound_while_keys_rotate() {
        let store = MemoryStore::with_clock(64, Arc::new(ManualClock::new(0)));
        let policy = per_minute(10);
        let t0 = 1_700_000_040 * SECOND;
        for i in 0..10_000u64 {
            store.decide_at(&format!("k{i}"), &policy, t0 + i);
            assert!(store.len() <= store.max_keys());
        }
        assert!(store.len() >= store.max_keys() / 2, "the bound is used, not emptied");
    }

    #[test]
    fn idle_keys_are_dropped_and_busy_ones_kept() {
        let store = MemoryStore::with_clock(8, Arc::new(ManualClock::new(0)));
        let policy = per_minute(10);
        let t0 = 1_700_000_040 * SECOND;
        for i in 0..7 {
            store.decide_at(&format!("old{i}"), &policy, t0);
        }
        store.decide_at("busy", &policy, t0 + 170 * SECOND);
        assert_eq!(store.len(), 8);
        // At t0 + 180 s the old keys are idle: the full store drops them, not the busy one.
        store.decide_at("new", &policy, t0 + 180 * SECOND);
        assert_eq!(store.len(), 2);
        let v = store.decide_at("busy", &policy, t0 + 180 * SECOND);
        assert_eq!(v.governing().1.remaining, 8, "the busy key kept its count");
    }
}
