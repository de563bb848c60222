//! Exact order statistics over a count per distinct value.

use std::collections::{BTreeMap, HashMap};

/// A multiset of latencies: memory grows with the number of *distinct* values, not of samples.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    // Hashed while reading (O(1) a sample); sorted only when a report is made.
    counts: HashMap<u64, u64, BuildMix>,
    len: u64,
    // Neumaier-compensated sum, for the mean.
    sum: f64,
    compensation: f64,
}

/// The keys are float bits we produced ourselves, not attacker-chosen strings: a multiply-mix
/// is enough, and SipHash was a tenth of the analyzer's time.
#[derive(Debug, Default, Clone, Copy)]
struct BuildMix;

#[derive(Debug, Default)]
struct Mix(u64);

impl std::hash::BuildHasher for BuildMix {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

/// A key whose integer order is the float order (negative values included).
fn key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

fn value(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

impl Samples {
    /// Adds one sample (NaN is ignored).
    pub fn push(&mut self, x: f64) {
        if x.is_nan() {
            return;
        }
        *self.counts.entry(key(x)).or_default() += 1;
        self.len += 1;
        let t = self.sum + x;
        self.compensation += if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
    }

    /// How many samples.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many distinct values are held (the memory actually used).
    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The mean, or `None` without samples.
    pub fn mean(&self) -> Option<f64> {
        (self.len > 0).then(|| (self.sum + self.compensation) / self.len as f64)
    }

    /// Python's `statistics.quantiles(data, n=100)` (method `exclusive`): 99 cut points, or
    /// `None` with fewer than two samples (where Python raises).
    pub fn quantiles_100(&self) -> Option<Vec<f64>> {
        const N: i64 = 100;
        let ld = i64::try_from(self.len).ok()?;
        if ld < 2 {
            return None;
        }
        let m = ld + 1;
        // For each cut point: (j, delta) exactly as Python computes them (delta may be negative
        // or above N at the ends: the points are extrapolated), 0-based ranks j-1 and j.
        let cuts: Vec<(u64, i64)> = (1..N)
            .map(|i| {
                let j = (i * m / N).clamp(1, ld - 1);
                (j as u64, i * m - j * N)
            })
            .collect();
        let mut ranks: Vec<u64> = cuts.iter().flat_map(|&(j, _)| [j - 1, j]).collect();
        ranks.sort_unstable();
        ranks.dedup();
        let mut at = BTreeMap::new();
        let mut wanted = ranks.iter().peekable();
        let mut seen = 0u64;
        for (k, count) in self.sorted() {
            while let Some(&&rank) = wanted.peek() {
                if rank < seen + count {
                    at.insert(rank, value(k));
                    wanted.next();
                } else {
                    break;
                }
            }
            seen += count;
        }
        cuts.iter()
            .map(|&(j, delta)| {
                let lo = *at.get(&(j - 1))?;
                let hi = *at.get(&j)?;
                Some((lo * (N - delta) as f64 + hi * delta as f64) / N as f64)
            })
            .collect()
    }

    /// `(key, count)` in value order.
    fn sorted(&self) -> Vec<(u64, u64)> {
        let mut sorted: Vec<(u64, u64)> = self.counts.iter().map(|(&k, &c)| (k, c)).collect();
        sorted.sort_unstable_by_key(|&(k, _)| k);
        sorted
    }

    /// `bins` equal-width bins from the smallest to the largest sample: `(upper bound, count)`.
    pub fn histogram(&self, bins: usize) -> Vec<(f64, u64)> {
        let sorted = self.sorted();
        let (Some(&(lo, _)), Some(&(hi, _))) = (sorted.first(), sorted.last()) else {
            return Vec::new();
        };
        let (lo, hi) = (value(lo), value(hi));
        let bins = bins.max(1);
        let width = if hi > lo { (hi - lo) / bins as f64 } else { 1.0 };
        let mut out: Vec<(f64, u64)> = (1..=bins).map(|b| (lo + width * b as f64, 0)).collect();
        for (k, count) in sorted {
            let i = (((value(k) - lo) / width) as usize).min(bins - 1);
            out[i].1 += count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[f64]) -> Samples {
        let mut s = Samples::default();
        values.iter().for_each(|v| s.push(*v));
        s
    }

    #[test]
    fn matches_python_quantiles() {
        // python3 -c "from statistics import quantiles; print(quantiles([1..10], n=100))"
        let q = of(&[1., 2., 3., 4., 5., 6., 7., 8., 9., 10.]).quantiles_100().unwrap();
        assert_eq!(q.len(), 99);
        assert_eq!(q[49], 5.5);
        assert!((q[98] - 10.89).abs() < 1e-12);
        assert!((q[0] - 0.11).abs() < 1e-12, "{}", q[0]); // extrapolated below the minimum, as Python
        assert_eq!(of(&[3.0]).quantiles_100(), None);
        let q = of(&[2.0, 1.0]).quantiles_100().unwrap();
        assert!((q[49] - 1.5).abs() < 1e-12);
    }

    #[test]
    fn repeated_values_take_no_extra_memory() {
        let mut s = Samples::default();
        for i in 0..100_000 {
            s.push(f64::from(i % 7));
        }
        assert_eq!(s.len(), 100_000);
        assert_eq!(s.distinct(), 7);
        // 14285 full cycles of 0..=6 plus 0..=4: 299995 / 100000.
        assert!((s.mean().unwrap() - 2.99995).abs() < 1e-12);
        assert!(key(-1.0) < key(0.0) && key(0.0) < key(1.5));
        assert_eq!(value(key(-2.25)), -2.25);
    }
}
