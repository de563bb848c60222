//! Exact order statistics over a count per distinct value.

use std::collections::BTreeMap;

/// A multiset of latencies: memory grows with the number of *distinct* values, not of samples.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    // Distinct values (order keys, ascending) and their counts. A sample first goes to
    // `pending`; a full `pending` is sorted and merged in. Sequential writes and one sort per
    // batch cost less than a hash probe per sample once the values outgrow the caches, and
    // take 12 bytes a distinct value instead of a hash table's ~30.
    keys: Vec<u64>,
    counts: Vec<u32>,
    pending: Vec<u64>,
    len: u64,
    // Neumaier-compensated sum, for the mean.
    sum: f64,
    compensation: f64,
}

/// `pending` is merged once it holds this many samples, or a quarter as many as there are
/// distinct values (so merging moves at most four values a sample, and `pending` adds at most
/// a sixth to the memory of the merged lists).
const MIN_BATCH: usize = 1 << 14;

/// A key whose integer order is the float order (negative values included).
fn key(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 { !bits } else { bits | 1 << 63 }
}

fn value(key: u64) -> f64 {
    f64::from_bits(if key >> 63 == 1 { key & !(1 << 63) } else { !key })
}

/// LSD radix sort of `keys` by bytes, skipping a byte all keys share (the sign and exponent
/// bytes of latencies mostly are).
fn radix_sort(keys: &mut Vec<u64>, scratch: &mut Vec<u64>) {
    scratch.clear();
    scratch.resize(keys.len(), 0);
    let (first, rest) = match keys.split_first() {
        Some((first, rest)) => (*first, rest),
        None => return,
    };
    let varying = rest.iter().fold(0u64, |acc, &k| acc | (k ^ first));
    for shift in (0..64).step_by(8) {
        if (varying >> shift) & 0xff == 0 {
            continue;
        }
        let mut offsets = [0usize; 256];
        for &k in keys.iter() {
            offsets[((k >> shift) & 0xff) as usize] += 1;
        }
        let mut total = 0;
        for slot in offsets.iter_mut() {
            let count = *slot;
            *slot = total;
            total += count;
        }
        for &k in keys.iter() {
            let digit = ((k >> shift) & 0xff) as usize;
            scratch[offsets[digit]] = k;
            offsets[digit] += 1;
        }
        std::mem::swap(keys, scratch);
    }
}

/// Merges the sorted `batch` into the sorted `keys`/`counts`, in place: the lists grow by the
/// number of new values and are filled from the back, so no second copy of them ever exists.
fn merge(keys: &mut Vec<u64>, counts: &mut Vec<u32>, batch: &[u64]) {
    let old = keys.len();
    // How many distinct batch values are new.
    let (mut i, mut j, mut new) = (0, 0, 0);
    while j < batch.len() {
        let k = batch[j];
        while j < batch.len() && batch[j] == k {
            j += 1;
        }
        while i < old && keys[i] < k {
            i += 1;
        }
        if i == old || keys[i] != k {
            new += 1;
        }
    }
    // Exactly: doubling would leave up to half of the largest lists unused, for good.
    keys.reserve_exact(new);
    counts.reserve_exact(new);
    keys.resize(old + new, 0);
    counts.resize(old + new, 0);
    // Fill from the back: `out` never overtakes the unread old values (it is ahead of them by
    // the number of new values still to place).
    let (mut i, mut j, mut out) = (old, batch.len(), old + new);
    while j > 0 {
        let k = batch[j - 1];
        let mut n = 0u32;
        while j > 0 && batch[j - 1] == k {
            n = n.saturating_add(1);
            j -= 1;
        }
        while i > 0 && keys[i - 1] > k {
            out -= 1;
            keys[out] = keys[i - 1];
            counts[out] = counts[i - 1];
            i -= 1;
        }
        if i > 0 && keys[i - 1] == k {
            n = n.saturating_add(counts[i - 1]);
            i -= 1;
        }
        out -= 1;
        keys[out] = k;
        counts[out] = n;
    }
}

impl Samples {
    /// Adds one sample (NaN is ignored).
    pub fn push(&mut self, x: f64) {
        if x.is_nan() {
            return;
        }
        self.pending.push(key(x));
        if self.pending.len() >= MIN_BATCH.max(self.keys.len() / 4) {
            self.flush();
        }
        self.len += 1;
        let t = self.sum + x;
        self.compensation += if self.sum.abs() >= x.abs() { (self.sum - t) + x } else { (x - t) + self.sum };
        self.sum = t;
    }

    /// Merges `pending` into the distinct values.
    fn flush(&mut self) {
        let mut batch = std::mem::take(&mut self.pending);
        let mut scratch = Vec::new();
        radix_sort(&mut batch, &mut scratch);
        merge(&mut self.keys, &mut self.counts, &batch);
        // Reuse the batch's allocation for the next one.
        batch.clear();
        self.pending = batch;
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
        self.sorted().len()
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

    /// `(key, count)` in value order, pending samples included.
    fn sorted(&self) -> Vec<(u64, u64)> {
        let mut batch = self.pending.clone();
        radix_sort(&mut batch, &mut Vec::new());
        let (mut keys, mut counts) = (self.keys.clone(), self.counts.clone());
        merge(&mut keys, &mut counts, &batch);
        keys.into_iter().zip(counts.into_iter().map(u64::from)).collect()
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

    #[test]
    fn batches_merge_into_exact_counts() {
        // Enough samples for many merges, values repeating across batches, negatives included.
        let mut s = Samples::default();
        let mut expected = std::collections::BTreeMap::new();
        let mut x = 12345u64;
        for _ in 0..200_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = ((x >> 33) % 50_000) as f64 / 1000.0 - 5.0;
            s.push(v);
            *expected.entry(key(v)).or_insert(0u64) += 1;
        }
        let got = s.sorted();
        assert_eq!(got.len(), expected.len());
        assert!(got.iter().zip(&expected).all(|(a, (k, c))| a.0 == *k && a.1 == *c));
        let mut sorted: Vec<f64> =
            got.iter().flat_map(|&(k, c)| std::iter::repeat_n(value(k), c as usize)).collect();
        assert_eq!(sorted.len(), 200_000);
        sorted.dedup();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]));
    }
}
