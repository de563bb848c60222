//! A limit as configured (one algorithm, one or several windows) and the per-key state it keeps:
//! the part both stores share, so the memory store and the Redis scripts answer alike.

use super::decision::{Decision, Micros, SECOND};
use super::leaky_bucket::{LeakyBucket, LeakyBucketState};
use super::token_bucket::{TokenBucket, TokenBucketState};
use super::window::{WindowLimit, WindowState};

/// Kong's window names. Months and years are fixed lengths (30 and 365 days), not calendar
/// months: a limit then means the same thing whatever the date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// One second.
    Second,
    /// 60 seconds.
    Minute,
    /// 3,600 seconds.
    Hour,
    /// 86,400 seconds.
    Day,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Period; 6] =
        [Period::Second, Period::Minute, Period::Hour, Period::Day, Period::Month, Period::Year];

    /// The length in microseconds.
    pub fn micros(self) -> Micros {
        SECOND
            * match self {
                Period::Second => 1,
                Period::Minute => 60,
                Period::Hour => 3_600,
                Period::Day => 86_400,
                Period::Month => 30 * 86_400,
                Period::Year => 365 * 86_400,
            }
    }

    /// Kong's lowercase name (`minute`), used in the error message.
    pub fn name(self) -> &'static str {
        match self {
            Period::Second => "second",
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
            Period::Year => "year",
        }
    }
}

/// What one rate limiter enforces.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Up to six windows, each with its own limit; a request must fit all of them.
    Windows(Vec<(Period, WindowLimit)>),
    /// A token bucket.
    TokenBucket(TokenBucket),
    /// A leaky bucket (a delaying queue).
    LeakyBucket(LeakyBucket),
}

/// The state one key keeps under a [`Policy`] ([`Policy::initial_state`] is a key never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// One counter pair per window, in the policy's order.
    Windows([WindowState; 6]),
    /// A token bucket.
    TokenBucket(TokenBucketState),
    /// A leaky bucket.
    LeakyBucket(LeakyBucketState),
}

/// The answer for one request under a whole [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The time the decision was taken at (microseconds since the epoch).
    pub now: Micros,
    len: usize,
    items: [(Option<Period>, Decision); 6],
}

impl Verdict {
    fn new(now: Micros) -> Self {
        Self { now, len: 0, items: [(None, EMPTY); 6] }
    }

    /// A verdict of one decision.
    #[inline]
    pub(crate) fn one(now: Micros, period: Option<Period>, decision: Decision) -> Self {
        let mut verdict = Self::new(now);
        verdict.push(period, decision);
        verdict
    }

    fn push(&mut self, period: Option<Period>, decision: Decision) {
        if self.len < self.items.len() {
            self.items[self.len] = (period, decision);
            self.len += 1;
        }
    }

    /// One decision per window (`None` for the buckets), in the policy's order.
    pub fn decisions(&self) -> &[(Option<Period>, Decision)] {
        &self.items[..self.len]
    }

    /// Whether every limit admitted the request.
    pub fn allowed(&self) -> bool {
        self.decisions().iter().all(|(_, d)| d.allowed)
    }

    /// The decision that drives the headers: when denied, the denying window with the longest
    /// wait; when allowed, the most constrained window (fewest remaining, then latest reset).
    pub fn governing(&self) -> (Option<Period>, Decision) {
        let decisions = self.decisions();
        let denied = decisions.iter().filter(|(_, d)| !d.allowed).max_by_key(|(_, d)| d.retry_after);
        denied
            .or_else(|| decisions.iter().min_by_key(|(_, d)| (d.remaining, std::cmp::Reverse(d.reset))))
            .copied()
            .unwrap_or((None, EMPTY))
    }
}

const EMPTY: Decision =
    Decision { allowed: true, limit: 0, remaining: 0, reset: 0, retry_after: 0, delay: 0 };

impl Policy {
    /// A fresh state for a key.
    pub fn initial_state(&self) -> KeyState {
        match self {
            Policy::Windows(_) => KeyState::Windows([WindowState::default(); 6]),
            Policy::TokenBucket(_) => KeyState::TokenBucket(TokenBucketState::default()),
            Policy::LeakyBucket(_) => KeyState::LeakyBucket(LeakyBucketState::default()),
        }
    }

    /// How many windows a window policy has (0 for the buckets).
    pub(crate) fn window_count(&self) -> usize {
        match self {
            Policy::Windows(windows) => windows.len(),
            _ => 0,
        }
    }

    /// [`decide`](Self::decide) for a one-window policy on that window's state alone (the
    /// memory store's hot path). Any other policy: the state is a fresh key's.
    #[inline]
    pub(crate) fn decide_one_window(&self, state: &mut WindowState, now: Micros) -> Verdict {
        let mut verdict = Verdict::new(now);
        if let Policy::Windows(windows) = self {
            if let [(period, limit)] = windows.as_slice() {
                let decision = limit.check(state, now);
                if decision.allowed {
                    limit.commit(state);
                }
                verdict.push(Some(*period), decision);
                return verdict;
            }
        }
        let mut fresh = self.initial_state();
        self.decide(&mut fresh, now)
    }

    /// Decides one request at `now` and updates `state` only if it is admitted.
    pub fn decide(&self, state: &mut KeyState, now: Micros) -> Verdict {
        let mut verdict = Verdict::new(now);
        match (self, state) {
            (Policy::Windows(windows), KeyState::Windows(states)) => {
                for ((period, limit), state) in windows.iter().zip(states.iter_mut()) {
                    verdict.push(Some(*period), limit.check(state, now));
                }
                if verdict.allowed() {
                    for ((_, limit), state) in windows.iter().zip(states.iter_mut()) {
                        limit.commit(state);
                    }
                }
            }
            (Policy::TokenBucket(bucket), KeyState::TokenBucket(state)) => {
                let (decision, next) = bucket.check(state, now);
                *state = next;
                verdict.push(None, decision);
            }
            (Policy::LeakyBucket(bucket), KeyState::LeakyBucket(state)) => {
                let (decision, next) = bucket.check(state, now);
                *state = next;
                verdict.push(None, decision);
            }
            (_, state) => {
                // A state of another policy (never happens within one store): start over.
                *state = self.initial_state();
                return self.decide(state, now);
            }
        }
        verdict
    }

    /// Whether `state` at `now` is indistinguishable from a key never seen, so dropping it
    /// loses nothing.
    pub fn is_idle(&self, state: &KeyState, now: Micros) -> bool {
        match (self, state) {
            (Policy::Windows(windows), KeyState::Windows(states)) => {
                windows.iter().zip(states.iter()).all(|((_, limit), s)| {
                    let index = now / limit.period;
                    (s.current == 0 && s.previous == 0) || s.index + 1 < index
                })
            }
            (Policy::TokenBucket(_), KeyState::TokenBucket(s)) => s.tat <= now,
            (Policy::LeakyBucket(_), KeyState::LeakyBucket(s)) => s.next_slot <= now,
            _ => true,
        }
    }

    /// The longest time a key's state matters after its last request (its TTL).
    pub fn ttl(&self) -> Micros {
        match self {
            Policy::Windows(windows) => windows.iter().map(|(_, l)| 2 * l.period).max().unwrap_or(SECOND),
            Policy::TokenBucket(b) => b.capacity.saturating_mul(b.interval),
            Policy::LeakyBucket(b) => b.capacity.saturating_mul(b.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_windows_the_most_constrained_governs_and_denials_count_nowhere() {
        let policy = Policy::Windows(vec![
            (Period::Second, WindowLimit::sliding(3, Period::Second.micros())),
            (Period::Minute, WindowLimit::sliding(5, Period::Minute.micros())),
        ]);
        let mut state = policy.initial_state();
        let t0 = 1_700_000_040 * SECOND;
        let v = policy.decide(&mut state, t0);
        assert_eq!(v.governing().0, Some(Period::Second)); // 2 left of 3, 4 of 5
        policy.decide(&mut state, t0);
        policy.decide(&mut state, t0);
        let v = policy.decide(&mut state, t0);
        assert!(!v.allowed());
        assert_eq!(v.governing().0, Some(Period::Second));
        // Two seconds later: the second window is free, the minute has 2 left.
        let v = policy.decide(&mut state, t0 + 2 * SECOND);
        assert!(v.allowed());
        assert_eq!(v.governing(), (Some(Period::Minute), v.decisions()[1].1));
        assert_eq!(v.governing().1.remaining, 1, "the denial at t0 was not counted in the minute");
    }

    #[test]
    fn idle_states_are_forgettable() {
        let policy =
            Policy::Windows(vec![(Period::Minute, WindowLimit::sliding(5, Period::Minute.micros()))]);
        let mut state = policy.initial_state();
        let t0 = 1_700_000_040 * SECOND;
        policy.decide(&mut state, t0);
        assert!(!policy.is_idle(&state, t0 + 61 * SECOND));
        assert!(policy.is_idle(&state, t0 + 120 * SECOND));
    }
}
