//! The leaky bucket as a queue: requests leave at a uniform `drain_per_second`; an admitted
//! request waits for its slot, at most `capacity` wait at once, and the rest are rejected.
//!
//! This shapes traffic for a fragile backend: however bursty the clients, the upstream sees
//! requests spaced `1 / drain_per_second` apart.

use super::decision::{Decision, Micros, SECOND};

/// The state of one queue: when the next slot is free (0 = never seen, an empty queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeakyBucketState {
    /// The earliest time the next request may leave, in microseconds since the epoch.
    pub next_slot: Micros,
}

/// A leaky bucket: a queue of `capacity` requests drained at `1 / interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakyBucket {
    /// How many requests may wait at once (at least 1; a request leaving now counts as one).
    pub capacity: u64,
    /// Microseconds between two departures.
    pub interval: Micros,
}

impl LeakyBucket {
    /// A queue of `capacity` drained at `drain_per_second` (> 0) requests per second.
    pub fn new(capacity: u64, drain_per_second: f64) -> Self {
        let interval = (SECOND as f64 / drain_per_second.max(1e-6)).round().max(1.0) as Micros;
        Self { capacity: capacity.max(1), interval }
    }

    /// Decides one request at `now`: admitted with the `delay` until its slot, or rejected
    /// when `capacity` requests are already waiting. The new state is returned for the caller
    /// to store when the whole request is admitted.
    pub fn check(&self, state: &LeakyBucketState, now: Micros) -> (Decision, LeakyBucketState) {
        let slot = state.next_slot.max(now);
        let delay = slot - now;
        // Requests already waiting, the one leaving at `slot` included.
        let waiting = delay.div_ceil(self.interval);
        if waiting >= self.capacity {
            // The oldest wait ends `interval` before the queue has room again.
            let retry_after = delay - (self.capacity - 1) * self.interval;
            let decision = Decision {
                allowed: false,
                limit: self.capacity,
                remaining: 0,
                reset: delay,
                retry_after: retry_after.max(1),
                delay: 0,
            };
            return (decision, *state);
        }
        let next = LeakyBucketState { next_slot: slot + self.interval };
        let decision = Decision {
            allowed: true,
            limit: self.capacity,
            remaining: self.capacity - waiting - 1,
            reset: next.next_slot - now,
            retry_after: 0,
            delay,
        };
        (decision, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admitted_requests_leave_at_the_drain_rate_and_overflow_is_rejected() {
        let bucket = LeakyBucket::new(3, 4.0); // a departure every 250 ms, 3 places
        let mut state = LeakyBucketState::default();
        let t0 = 1_700_000_000 * SECOND;
        let mut delays = Vec::new();
        for _ in 0..3 {
            let (d, next) = bucket.check(&state, t0);
            assert!(d.allowed);
            delays.push(d.delay);
            state = next;
        }
        assert_eq!(delays, [0, SECOND / 4, SECOND / 2]);
        let (d, next) = bucket.check(&state, t0);
        assert!(!d.allowed, "the queue is full");
        assert_eq!(next, state);
        assert_eq!(d.retry_after, SECOND / 4);
        // Once the first has left, one more fits, at the next free slot.
        let (d, _) = bucket.check(&state, t0 + SECOND / 4);
        assert!(d.allowed);
        assert_eq!(d.delay, SECOND / 2);
    }
}
