//! Window counters: the sliding-window estimate (Cloudflare's) and the fixed window, sharing one
//! state of two counters.
//!
//! The sliding estimate weights the previous window's count by how much of it still overlaps the
//! last `period`: `previous × (period − elapsed) / period + current`. It needs two integers per key
//! (no log of timestamps) and closes the fixed window's boundary exploit, where a client spends
//! its whole limit just before a boundary and again just after it.

use super::decision::{Decision, Micros};

/// The state of one window for one key. `Default` is "never seen".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Index of the current window (`now / period`).
    pub index: u64,
    /// Requests counted in the current window.
    pub current: u64,
    /// Requests counted in the window before it.
    pub previous: u64,
}

/// A limit of `limit` requests per `period`, counted by a sliding or a fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimit {
    /// Requests admitted per period (at least 1).
    pub limit: u64,
    /// The period in microseconds (at least 1).
    pub period: Micros,
    /// Sliding estimate (true) or fixed window (false).
    pub sliding: bool,
}

impl WindowLimit {
    /// A sliding-window limit.
    pub fn sliding(limit: u64, period: Micros) -> Self {
        Self { limit: limit.max(1), period: period.max(1), sliding: true }
    }

    /// A fixed-window limit.
    pub fn fixed(limit: u64, period: Micros) -> Self {
        Self { limit: limit.max(1), period: period.max(1), sliding: false }
    }

    /// Moves `state` to the window containing `now` (without counting anything).
    #[inline]
    pub fn roll(&self, state: &mut WindowState, now: Micros) {
        // Still in the same window (the common case): a multiplication, not a division.
        let start = state.index.saturating_mul(self.period);
        if now >= start && now - start < self.period {
            return;
        }
        let index = now / self.period;
        state.previous = if index == state.index + 1 { state.current } else { 0 };
        state.current = 0;
        state.index = index;
    }

    /// The previous window's weighted share, rounded up so the estimate never under-counts.
    fn weighted_previous(&self, state: &WindowState, elapsed: Micros) -> u64 {
        if !self.sliding || state.previous == 0 {
            return 0;
        }
        let left = (self.period - elapsed) as u128;
        ((state.previous as u128 * left).div_ceil(self.period as u128)) as u64
    }

    /// Decides one request at `now` without changing `state` (beyond rolling it); call
    /// [`commit`](Self::commit) when every limit of the request allowed it, so rejected requests
    /// are never counted.
    #[inline]
    pub fn check(&self, state: &mut WindowState, now: Micros) -> Decision {
        self.roll(state, now);
        // No division within a window (see `roll`): the hot path of the memory store.
        let elapsed = now - state.index * self.period;
        let to_boundary = self.period - elapsed;
        let used = self.weighted_previous(state, elapsed) + state.current;
        if used < self.limit {
            return Decision {
                allowed: true,
                limit: self.limit,
                remaining: self.limit - used - 1,
                reset: to_boundary,
                retry_after: 0,
                delay: 0,
            };
        }
        Decision {
            allowed: false,
            limit: self.limit,
            remaining: 0,
            reset: to_boundary,
            retry_after: self.retry_after(state, elapsed),
            delay: 0,
        }
    }

    /// Counts an admitted request (after [`check`](Self::check) at the same `now`).
    pub fn commit(&self, state: &mut WindowState) {
        state.current += 1;
    }

    /// Time until one more request fits.
    fn retry_after(&self, state: &WindowState, elapsed: Micros) -> Micros {
        let to_boundary = self.period - elapsed;
        if !self.sliding {
            return to_boundary;
        }
        let period = self.period as u128;
        // Solve ceil(prev × (period − e) / period) + cur ≤ limit − 1 for the smallest e.
        let first_fit = |prev: u64, cur: u64| -> Option<Micros> {
            if cur + 1 > self.limit {
                return None;
            }
            if prev == 0 {
                return Some(0);
            }
            let room = (self.limit - 1 - cur) as u128;
            // prev × (period − e) ≤ room × period  ⇔  e ≥ period − room × period / prev
            let e = period.saturating_sub(room * period / prev as u128);
            Some(e as Micros)
        };
        match first_fit(state.previous, state.current) {
            Some(e) if e > elapsed && e <= self.period => e - elapsed,
            Some(e) if e <= elapsed => 1,
            _ => {
                // Not before the boundary: the current count becomes the previous one.
                let e = first_fit(state.current, 0).unwrap_or(self.period);
                to_boundary + e.max(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::decision::SECOND;

    const MINUTE: Micros = 60 * SECOND;

    fn run(limit: &WindowLimit, state: &mut WindowState, now: Micros) -> Decision {
        let d = limit.check(state, now);
        if d.allowed {
            limit.commit(state);
        }
        d
    }

    #[test]
    fn kong_minute_6_sequence() {
        for limit in [WindowLimit::sliding(6, MINUTE), WindowLimit::fixed(6, MINUTE)] {
            let mut state = WindowState::default();
            let now = 1_700_000_040 * SECOND; // a minute boundary
            let answers: Vec<_> = (0..7).map(|i| run(&limit, &mut state, now + i * SECOND)).collect();
            let allowed: Vec<_> = answers.iter().map(|d| d.allowed).collect();
            assert_eq!(allowed, [true, true, true, true, true, true, false]);
            let remaining: Vec<_> = answers.iter().map(|d| d.remaining).collect();
            assert_eq!(remaining, [5, 4, 3, 2, 1, 0, 0]);
            assert_eq!(answers[0].reset, MINUTE);
            assert_eq!(answers[6].reset, MINUTE - 6 * SECOND);
            assert_eq!(state.current, 6, "the rejected request was not counted");
            if !limit.sliding {
                assert_eq!(answers[6].retry_after, MINUTE - 6 * SECOND);
            }
        }
    }

    /// 100 just before a boundary and 100 just after under 100/minute.
    fn boundary_exploit(limit: WindowLimit) -> (usize, usize) {
        let mut state = WindowState::default();
        let boundary = 1_700_000_040 * SECOND; // a multiple of 60 s
        let before = (0..100).filter(|_| run(&limit, &mut state, boundary - SECOND / 10).allowed).count();
        let after = (0..100).filter(|_| run(&limit, &mut state, boundary + SECOND / 10).allowed).count();
        (before, after)
    }

    #[test]
    fn boundary_exploit_sliding_rejects_the_second_burst() {
        assert_eq!(boundary_exploit(WindowLimit::sliding(100, MINUTE)), (100, 0));
    }

    #[test]
    fn boundary_exploit_fixed_admits_the_second_burst() {
        assert_eq!(boundary_exploit(WindowLimit::fixed(100, MINUTE)), (100, 100));
    }

    #[test]
    fn sliding_estimate_frees_capacity_gradually() {
        let limit = WindowLimit::sliding(10, MINUTE);
        let mut state = WindowState::default();
        let t0 = 1_700_000_040 * SECOND;
        for _ in 0..10 {
            assert!(run(&limit, &mut state, t0).allowed);
        }
        let denied = run(&limit, &mut state, t0 + 30 * SECOND);
        assert!(!denied.allowed);
        // Next window, 10 previous: a slot opens when 10 × (60 − e)/60 ≤ 9, at e = 6 s.
        assert_eq!(denied.retry_after, 30 * SECOND + 6 * SECOND);
        assert!(!run(&limit, &mut state, t0 + MINUTE + 5 * SECOND).allowed);
        let d = run(&limit, &mut state, t0 + MINUTE + 6 * SECOND);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Half way through, half of the previous window still counts.
        let d = run(&limit, &mut state, t0 + MINUTE + 30 * SECOND);
        assert!(d.allowed);
        assert_eq!(d.remaining, 10 - 5 - 2);
        // Two windows later everything is forgotten.
        let d = run(&limit, &mut state, t0 + 3 * MINUTE);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn retry_after_is_exact_and_the_request_then_fits() {
        let limit = WindowLimit::sliding(7, MINUTE);
        let mut state = WindowState::default();
        let t0 = 1_700_000_040 * SECOND + 13 * SECOND;
        for _ in 0..7 {
            assert!(run(&limit, &mut state, t0).allowed);
        }
        let d = run(&limit, &mut state, t0 + SECOND);
        assert!(!d.allowed);
        assert!(!run(&limit, &mut state, t0 + SECOND + d.retry_after - 1).allowed);
        assert!(run(&limit, &mut state, t0 + SECOND + d.retry_after).allowed);
    }
}
