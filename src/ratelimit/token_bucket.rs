//! The token bucket as GCRA (the generic cell rate algorithm, as governor implements it): one
//! timestamp per key, the "theoretical arrival time", instead of a token count and a refill
//! timestamp.
//!
//! A bucket of `capacity` tokens refilled at `refill_per_second` admits a burst of `capacity`
//! requests and then one every `1 / refill_per_second`.

use super::decision::{Decision, Micros, SECOND};

/// The state of one bucket: the theoretical arrival time (0 = never seen, a full bucket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenBucketState {
    /// When the bucket will be full again, in microseconds since the epoch.
    pub tat: Micros,
}

/// A token bucket: `capacity` tokens, `refill_per_second` tokens added per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    /// The burst size (at least 1).
    pub capacity: u64,
    /// Microseconds per token (the emission interval).
    pub interval: Micros,
}

impl TokenBucket {
    /// A bucket of `capacity` tokens refilled at `refill_per_second` (> 0) tokens per second.
    pub fn new(capacity: u64, refill_per_second: f64) -> Self {
        let interval = (SECOND as f64 / refill_per_second.max(1e-6)).round().max(1.0) as Micros;
        Self { capacity: capacity.max(1), interval }
    }

    /// The time a full bucket represents (`capacity × interval`).
    fn burst(&self) -> Micros {
        self.capacity.saturating_mul(self.interval)
    }

    /// Decides one request at `now`; the new state is returned for the caller to store, so a
    /// denial by another limit of the same request leaves this bucket untouched.
    pub fn check(&self, state: &TokenBucketState, now: Micros) -> (Decision, TokenBucketState) {
        let tat = state.tat.max(now);
        let new_tat = tat + self.interval;
        let burst = self.burst();
        if new_tat - now > burst {
            let retry_after = new_tat - now - burst;
            let decision = Decision {
                allowed: false,
                limit: self.capacity,
                remaining: 0,
                reset: tat - now,
                retry_after,
                delay: 0,
            };
            return (decision, *state);
        }
        let decision = Decision {
            allowed: true,
            limit: self.capacity,
            remaining: (burst - (new_tat - now)) / self.interval,
            reset: new_tat - now,
            retry_after: 0,
            delay: 0,
        };
        (decision, TokenBucketState { tat: new_tat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let bucket = TokenBucket::new(5, 2.0); // a token every 500 ms
        let mut state = TokenBucketState::default();
        let t0 = 1_700_000_000 * SECOND;
        let mut remaining = Vec::new();
        for _ in 0..5 {
            let (d, next) = bucket.check(&state, t0);
            assert!(d.allowed);
            remaining.push(d.remaining);
            state = next;
        }
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let (d, next) = bucket.check(&state, t0);
        assert!(!d.allowed);
        assert_eq!(next, state, "a denial does not consume");
        assert_eq!(d.retry_after, SECOND / 2);
        assert_eq!(d.reset, 5 * SECOND / 2);
        // 499 ms later: still empty; 500 ms: one token.
        assert!(!bucket.check(&state, t0 + SECOND / 2 - 1).0.allowed);
        let (d, next) = bucket.check(&state, t0 + SECOND / 2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        state = next;
        // After 10 s the bucket is full again, but never fuller than capacity.
        let (d, _) = bucket.check(&state, t0 + 10 * SECOND);
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn steady_rate_is_the_refill_rate() {
        let bucket = TokenBucket::new(1, 10.0);
        let mut state = TokenBucketState::default();
        let t0 = 1_700_000_000 * SECOND;
        let admitted = (0..1000)
            .filter(|i| {
                let (d, next) = bucket.check(&state, t0 + i * SECOND / 100); // 100 req/s offered
                state = next;
                d.allowed
            })
            .count();
        assert_eq!(admitted, 100); // 10 s at 10/s
    }
}
