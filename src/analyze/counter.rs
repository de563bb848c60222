//! Counts per key (client IP, consumer) in first-seen order, with each key stored once.

use std::hash::{BuildHasher, RandomState};

/// Counts in first-seen order, as a Python `dict` keeps them (ties in the top-10 lists keep it).
///
/// The keys are the one part of the report that grows with the log's *diversity* (every client
/// IP that got a 401 must be counted to know the top 10 exactly), so they are packed: the key
/// bytes back to back in one string, an end offset and a count per key (`u32`s), and an
/// open-addressing table of entry numbers at most three quarters full. About 30 bytes a key (an
/// IPv4 address) where a `HashMap<String, _>` plus an ordered list took about 150.
#[derive(Debug, Default)]
pub(super) struct Counter {
    hasher: RandomState,
    /// Entry number + 1 (0: empty); a power of two long, at most three quarters full.
    slots: Vec<u32>,
    /// Every key's bytes, in first-seen order.
    keys: String,
    /// Where key `i` ends in `keys` (it starts where key `i - 1` ends).
    ends: Vec<u32>,
    /// Saturating: four billion 401s from one IP would take a terabyte of log.
    counts: Vec<u32>,
}

impl Counter {
    fn key(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.keys[start..self.ends[i] as usize]
    }

    /// The slot holding `key`, or the empty slot where it belongs.
    fn find(&self, key: &str) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.hasher.hash_one(key) as usize & mask;
        loop {
            match self.slots[at] {
                0 => return at,
                entry if self.key(entry as usize - 1) == key => return at,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Whether one more entry keeps the table at most three quarters full.
    fn has_room(&self) -> bool {
        (self.counts.len() + 1) * 4 <= self.slots.len() * 3
    }

    pub(super) fn add(&mut self, key: &str) {
        // Offsets and entry numbers are u32: past 4 GiB of keys or a billion of them, new keys
        // are no longer added (existing ones still count) rather than wrap.
        let fits = self.keys.len() + key.len() <= u32::MAX as usize && self.counts.len() < 1 << 30;
        if self.slots.is_empty() || (!self.has_room() && fits) {
            self.grow();
        }
        let at = self.find(key);
        match self.slots[at] {
            0 if fits && self.has_room() => {
                self.keys.push_str(key);
                self.ends.push(self.keys.len() as u32);
                self.counts.push(1);
                self.slots[at] = self.counts.len() as u32;
            }
            0 => {}
            entry => {
                let count = &mut self.counts[entry as usize - 1];
                *count = count.saturating_add(1);
            }
        }
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(64);
        self.slots = vec![0; len];
        for i in 0..self.counts.len() {
            let at = self.find(self.key(i));
            self.slots[at] = i as u32 + 1;
        }
    }

    /// Most first, ties in first-seen order (Python's stable `sorted(key=-count)`).
    pub(super) fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut order: Vec<usize> = (0..self.counts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.counts[i]));
        order.into_iter().take(n).map(|i| (self.key(i).to_owned(), u64::from(self.counts[i]))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_in_first_seen_order_across_growth() {
        let mut counter = Counter::default();
        for round in 0..3u64 {
            for i in 0..10_000u64 {
                // Key i is added (i % 5) + 1 times per round.
                for _ in 0..=(i % 5) {
                    counter.add(&format!("10.0.{}.{}", i / 256, i % 256));
                }
            }
            assert_eq!(counter.counts.len(), 10_000, "round {round}");
        }
        let top = counter.top(3);
        // The first keys with i % 5 == 4, in first-seen order.
        assert_eq!(
            top,
            [("10.0.0.4".to_owned(), 15), ("10.0.0.9".to_owned(), 15), ("10.0.0.14".to_owned(), 15)]
        );
        assert_eq!(counter.counts.iter().map(|&c| u64::from(c)).sum::<u64>(), 3 * (10_000 / 5) * 15);
        assert_eq!(counter.slots.len(), 16_384, "at most three quarters full, a power of two");
        assert_eq!(Counter::default().top(10), []);
    }
}
