//! The embedded store: sharded in-memory maps, bounded in keys and bytes.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{Decided, Store};
use crate::ratelimit::decision::{Clock, Micros, SECOND, SystemClock};
use crate::ratelimit::leaky_bucket::LeakyBucketState;
use crate::ratelimit::policy::{KeyState, Policy, Verdict};
use crate::ratelimit::token_bucket::TokenBucketState;
use crate::ratelimit::window::WindowState;

/// The embedded store: sharded maps behind their own mutexes (no global lock: two keys in
/// different shards never contend), bounded in keys, and so in bytes: the layers hand it keys
/// of at most [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES) (longer ones are hashed), so a key costs
/// its slot plus at most that many boxed bytes.
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

/// One key. Kept small (80 bytes) and free of pointers in the common case (a short key, one
/// window), because at 10k keys a decision's cost is mostly the cache misses of finding its
/// slot: the hash, the key bytes and the state sit together.
struct Slot {
    hash: u64,
    last_seen: Micros,
    state: SlotState,
    key: SlotKey,
}

/// The bytes of a key: inline up to [`INLINE_KEY`] bytes (`consumer:…`, `ip:…`), zero-padded
/// so that comparing two inline keys is two fixed-size vector compares, not a `memcmp` call;
/// else boxed.
#[derive(Clone, PartialEq, Eq)]
enum SlotKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Boxed(Box<str>),
}

const INLINE_KEY: usize = 30;

/// A key being looked up: padded like an inline [`SlotKey`], or borrowed (no allocation).
enum Probe<'k> {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Long(&'k str),
}

impl<'k> Probe<'k> {
    #[inline]
    fn new(key: &'k str) -> Self {
        match padded(key.as_bytes()) {
            Some(bytes) => Probe::Inline { len: key.len() as u8, bytes },
            None => Probe::Long(key),
        }
    }

    /// The key to store for a new slot.
    fn to_slot_key(&self) -> SlotKey {
        match self {
            Probe::Inline { len, bytes } => SlotKey::Inline { len: *len, bytes: *bytes },
            Probe::Long(key) => SlotKey::Boxed((*key).into()),
        }
    }
}

/// `key` zero-padded to [`INLINE_KEY`] bytes, when it fits. Two overlapping fixed-size copies
/// instead of one of `key.len()` bytes: a variable-length copy is a `memcpy` call, which cost
/// a sixth of a decision.
#[inline]
fn padded(key: &[u8]) -> Option<[u8; INLINE_KEY]> {
    fn two<const N: usize>(out: &mut [u8; INLINE_KEY], key: &[u8]) {
        let len = key.len();
        let (head, tail) = (&key[..N], &key[len - N..]);
        out[..N].copy_from_slice(head);
        out[len - N..len].copy_from_slice(tail);
    }
    let mut out = [0; INLINE_KEY];
    match key.len() {
        16..=INLINE_KEY => two::<16>(&mut out, key),
        8..=15 => two::<8>(&mut out, key),
        4..=7 => two::<4>(&mut out, key),
        0..=3 => {
            for (o, k) in out.iter_mut().zip(key) {
                *o = *k;
            }
        }
        _ => return None,
    }
    Some(out)
}

impl SlotKey {
    /// Whether this is the key being looked up.
    #[inline]
    fn is(&self, probe: &Probe<'_>) -> bool {
        match (self, probe) {
            (SlotKey::Inline { len, bytes }, Probe::Inline { len: probe_len, bytes: probe_bytes }) => {
                len == probe_len && bytes == probe_bytes
            }
            (SlotKey::Boxed(stored), Probe::Long(key)) => **stored == **key,
            _ => false,
        }
    }
}

/// A [`KeyState`] without its unused windows: one window inline, several boxed.
enum SlotState {
    Window(WindowState),
    Windows(Box<KeyState>),
    TokenBucket(TokenBucketState),
    LeakyBucket(LeakyBucketState),
}

impl SlotState {
    fn new(state: KeyState, windows: usize) -> Self {
        match state {
            KeyState::Windows(states) if windows == 1 => SlotState::Window(states[0]),
            KeyState::TokenBucket(state) => SlotState::TokenBucket(state),
            KeyState::LeakyBucket(state) => SlotState::LeakyBucket(state),
            state => SlotState::Windows(Box::new(state)),
        }
    }

    fn to_key_state(&self) -> KeyState {
        match self {
            SlotState::Window(state) => {
                let mut states = [WindowState::default(); 6];
                states[0] = *state;
                KeyState::Windows(states)
            }
            SlotState::Windows(state) => **state,
            SlotState::TokenBucket(state) => KeyState::TokenBucket(*state),
            SlotState::LeakyBucket(state) => KeyState::LeakyBucket(*state),
        }
    }

    /// Decides under `policy`, in place.
    #[inline]
    fn decide(&mut self, policy: &Policy, now: Micros) -> Verdict {
        match (self, policy) {
            // The common case, without a six-window state to copy in and out.
            (SlotState::Window(state), Policy::Windows(windows)) if windows.len() == 1 => {
                policy.decide_one_window(state, now)
            }
            (SlotState::Windows(state), _) => policy.decide(state, now),
            (SlotState::TokenBucket(state), Policy::TokenBucket(bucket)) => {
                let (decision, next) = bucket.check(state, now);
                *state = next;
                Verdict::one(now, None, decision)
            }
            (SlotState::LeakyBucket(state), Policy::LeakyBucket(bucket)) => {
                let (decision, next) = bucket.check(state, now);
                *state = next;
                Verdict::one(now, None, decision)
            }
            (slot, _) => {
                let mut state = slot.to_key_state();
                let verdict = policy.decide(&mut state, now);
                *slot = SlotState::new(state, policy.window_count());
                verdict
            }
        }
    }
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
    /// The default bound: 100,000 keys (about 20 MB at most, plus up to 25.6 MB for keys longer
    /// than the inline slot; see [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES)).
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
    // Inlined so the caller's verdict is built in place, not copied out (400 bytes).
    #[inline]
    pub fn decide_at(&self, key: &str, policy: &Policy, now: Micros) -> Verdict {
        let hash = self.hasher.hash_one(key);
        let probe = Probe::new(key);
        // Middle bits pick the shard: the table uses the low bits and the top seven.
        let index = ((hash >> 32) as usize) % self.shards.len();
        let mut shard = lock(&self.shards[index]);
        if let Some(slot) = shard.table.find_mut(hash, |s| s.hash == hash && s.key.is(&probe)) {
            slot.last_seen = now;
            return slot.state.decide(policy, now);
        }
        let mut state = policy.initial_state();
        let verdict = policy.decide(&mut state, now);
        if !policy.is_idle(&state, now) {
            if shard.table.len() >= self.max_keys_per_shard {
                shard.make_room(policy, now, self.max_keys_per_shard);
            }
            let slot = Slot {
                hash,
                last_seen: now,
                state: SlotState::new(state, policy.window_count()),
                key: probe.to_slot_key(),
            };
            shard.table.insert_unique(hash, slot, |s| s.hash);
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
            self.table.retain(|s| !policy.is_idle(&s.state.to_key_state(), now));
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
    use crate::ratelimit::decision::ManualClock;
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

    #[test]
    fn short_long_and_multi_window_keys_keep_their_own_counts() {
        let store = MemoryStore::with_clock(1000, Arc::new(ManualClock::new(0)));
        let t0 = 1_700_000_040 * SECOND;
        let long_a = format!("credential:{}a", "x".repeat(40));
        let long_b = format!("credential:{}b", "x".repeat(40));
        let exact = "k".repeat(INLINE_KEY);
        for len in 0..=INLINE_KEY + 1 {
            let key: String = (0..len).map(|i| char::from(b'a' + i as u8)).collect();
            match padded(key.as_bytes()) {
                Some(bytes) => {
                    assert_eq!(&bytes[..len], key.as_bytes());
                    assert!(bytes[len..].iter().all(|&b| b == 0));
                }
                None => assert!(len > INLINE_KEY),
            }
        }
        let policies = [
            per_minute(2),
            Policy::Windows(vec![
                (Period::Second, WindowLimit::sliding(2, Period::Second.micros())),
                (Period::Minute, WindowLimit::sliding(5, Period::Minute.micros())),
            ]),
            Policy::TokenBucket(crate::ratelimit::token_bucket::TokenBucket::new(2, 0.001)),
        ];
        for (p, policy) in policies.iter().enumerate() {
            for key in [long_a.as_str(), long_b.as_str(), exact.as_str(), "ip:192.0.2.1"] {
                let key = format!("{p}{key}");
                let allowed: Vec<bool> =
                    (0..3).map(|_| store.decide_at(&key, policy, t0).allowed()).collect();
                assert_eq!(allowed, [true, true, false], "{key}");
            }
        }
        assert_eq!(store.len(), 12);
    }
}
