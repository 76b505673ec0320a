//! Envoy-style ketama ring for `consistentHash.ringHash`.
//!
//! The construction follows Envoy's ring hash load balancer: entry keys are
//! `"{key}_{n}"` hashed with xxHash64 (seed 0), the ring is scaled so the lightest
//! endpoint gets a whole number of entries with the total at least the minimum ring
//! size, and per-endpoint counts come from running sums so rounding never drifts.
//! Staying close to Envoy means the gateway and the mesh's sidecars tend to send the
//! same hash key to the same host, which is what sticky sessions and caches expect.

use xxhash_rust::xxh64::xxh64;

use super::{DEFAULT_MINIMUM_RING_SIZE, MAXIMUM_RING_SIZE};

/// Sorted `(hash, endpoint index)` pairs; a request goes to the first entry whose hash
/// is >= the request hash, wrapping to the start.
pub(super) struct Ring {
    entries: Vec<(u64, u32)>,
}

impl Ring {
    pub(super) fn new(keys: &[&str], weights: &[u32], minimum_ring_size: u64) -> Ring {
        let Some(scale) = entries_per_unit_weight(weights, minimum_ring_size) else {
            return Ring { entries: Vec::new() };
        };
        let total_weight: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let cap = MAXIMUM_RING_SIZE as usize;
        let mut entries = Vec::with_capacity((scale.ceil() as usize).min(cap));
        let mut buf = Vec::new();
        // Running sums: each endpoint gets `target - current` entries, so fractional
        // shares carry over to the next endpoint instead of being lost to rounding.
        let (mut current, mut target) = (0.0f64, 0.0f64);
        for (index, (key, &weight)) in keys.iter().zip(weights).enumerate() {
            target += scale * (f64::from(weight) / total_weight);
            buf.clear();
            buf.extend_from_slice(key.as_bytes());
            buf.push(b'_');
            let prefix = buf.len();
            let mut n = 0u64;
            while current < target && entries.len() < cap {
                buf.truncate(prefix);
                push_decimal(&mut buf, n);
                entries.push((xxh64(&buf, 0), index as u32));
                n += 1;
                current += 1.0;
            }
        }
        // Index as tie breaker keeps the order independent of the sort algorithm.
        entries.sort_unstable();
        Ring { entries }
    }

    /// Walks clockwise from the request hash; with `exclude`, keeps walking past that
    /// endpoint's entries, so a retry lands on a stable "next" host for the same hash.
    pub(super) fn lookup(&self, hash: u64, exclude: Option<usize>) -> Option<usize> {
        let start = self.entries.partition_point(|&(h, _)| h < hash);
        let (before, after) = self.entries.split_at(start);
        after.iter().chain(before).map(|&(_, index)| index as usize).find(|&index| Some(index) != exclude)
    }
}

/// Envoy's scale: with normalized weights `w / sum`, the lightest endpoint gets
/// `ceil(min_normalized * min_ring)` entries and everyone else proportionally more,
/// the whole ring capped at [`MAXIMUM_RING_SIZE`]. Returns the total entry count as a
/// fractional target, or None for an empty endpoint set.
fn entries_per_unit_weight(weights: &[u32], minimum_ring_size: u64) -> Option<f64> {
    let min_ring = match minimum_ring_size {
        0 => DEFAULT_MINIMUM_RING_SIZE,
        size => size.min(MAXIMUM_RING_SIZE),
    } as f64;
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let min_normalized = f64::from(weights.iter().copied().min()?) / total;
    Some(((min_normalized * min_ring).ceil() / min_normalized).min(MAXIMUM_RING_SIZE as f64))
}

/// Appends the decimal digits of `n` without going through the formatter (no
/// allocation per ring entry, and no fallible `write!`).
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let start = buf.len();
    loop {
        buf.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[start..].reverse();
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::balance::hash_key;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring(keys: &[String], weights: &[u32], min: u64) -> Ring {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ring::new(&keys, weights, min)
    }

    fn entries_of(ring: &Ring, index: usize) -> usize {
        ring.entries.iter().filter(|&&(_, i)| i as usize == index).count()
    }

    fn request_hashes(n: u32) -> impl Iterator<Item = u64> {
        (0..n).map(|k| hash_key(format!("user-{k}").as_bytes()))
    }

    #[test]
    fn decimal_formatting() {
        for n in [0u64, 7, 10, 1234, u64::MAX] {
            let mut buf = b"x_".to_vec();
            push_decimal(&mut buf, n);
            assert_eq!(buf, format!("x_{n}").into_bytes());
        }
    }

    #[test]
    fn entry_hashes_use_key_underscore_index() {
        let r = ring(&keys(1), &[1], 4);
        let mut expected: Vec<u64> = (0..4).map(|n| xxh64(format!("10.0.0.0:8080_{n}").as_bytes(), 0)).collect();
        expected.sort_unstable();
        let actual: Vec<u64> = r.entries.iter().map(|&(h, _)| h).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn ring_size_follows_envoy_scaling() {
        // Equal weights: each endpoint gets ceil(1024 / n) entries.
        let r = ring(&keys(10), &[1; 10], 0);
        assert_eq!(r.entries.len(), 1030);
        assert!((0..10).all(|i| entries_of(&r, i) == 103));
        // Total never falls below the minimum.
        for n in 1..40 {
            let r = ring(&keys(n), &vec![1; n], 1000);
            assert!(r.entries.len() >= 1000, "n = {n}");
        }
    }

    #[test]
    fn entries_are_proportional_to_weight() {
        let r = ring(&keys(3), &[1, 2, 3], 600);
        assert_eq!((entries_of(&r, 0), entries_of(&r, 1), entries_of(&r, 2)), (100, 200, 300));
        // The lightest endpoint gets at least one entry even when it is tiny.
        let r = ring(&keys(2), &[1, 5_000], 16);
        assert_eq!(entries_of(&r, 0), 1);
        assert_eq!(entries_of(&r, 1), 5_000);
    }

    #[test]
    fn ring_is_capped() {
        let scale = entries_per_unit_weight(&[1, u32::MAX], 1024);
        assert_eq!(scale, Some(MAXIMUM_RING_SIZE as f64));
        let scale = entries_per_unit_weight(&[1, 1], u64::MAX);
        assert_eq!(scale, Some(MAXIMUM_RING_SIZE as f64));
        assert_eq!(entries_per_unit_weight(&[], 1024), None);
    }

    #[test]
    fn lookup_takes_first_entry_at_or_after_hash_and_wraps() {
        let r = ring(&keys(4), &[1; 4], 64);
        let (first, last) = (r.entries[0], r.entries[r.entries.len() - 1]);
        for &(h, i) in &r.entries {
            assert_eq!(r.lookup(h, None), Some(i as usize));
        }
        let (h1, _) = r.entries[10];
        let (h2, i2) = r.entries[11];
        assert_ne!(h1, h2);
        assert_eq!(r.lookup(h1 + 1, None), Some(i2 as usize));
        assert_eq!(r.lookup(0, None), Some(first.1 as usize));
        if last.0 < u64::MAX {
            assert_eq!(r.lookup(last.0 + 1, None), Some(first.1 as usize));
        }
    }

    #[test]
    fn exclusion_walks_to_the_next_other_endpoint() {
        let r = ring(&keys(3), &[1; 3], 30);
        for k in request_hashes(1_000) {
            let owner = r.lookup(k, None).expect("non-empty ring");
            let start = r.entries.partition_point(|&(h, _)| h < k);
            let next_other =
                r.entries[start..].iter().chain(&r.entries[..start]).map(|&(_, i)| i as usize).find(|&i| i != owner);
            assert_eq!(r.lookup(k, Some(owner)), next_other);
        }
        let single = ring(&keys(1), &[1], 8);
        assert_eq!(single.lookup(5, Some(0)), None);
        assert_eq!(ring(&[], &[], 8).lookup(5, None), None);
    }

    #[test]
    fn equal_weights_spread_evenly() {
        let r = ring(&keys(8), &[1; 8], 4096);
        let mut counts = [0usize; 8];
        for h in request_hashes(80_000) {
            counts[r.lookup(h, None).expect("non-empty ring")] += 1;
        }
        for count in counts {
            assert!((7_000..13_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn weighted_shares() {
        let r = ring(&keys(2), &[1, 3], 1024);
        let on_heavy = request_hashes(40_000).filter(|&h| r.lookup(h, None) == Some(1)).count();
        assert!((27_000..33_000).contains(&on_heavy), "{on_heavy}");
    }

    #[test]
    fn removing_an_endpoint_remaps_about_one_nth() {
        let n = 10;
        let all = keys(n);
        let removed = &all[3];
        let before = ring(&all, &vec![1; n], 1024);
        let survivors: Vec<String> = all.iter().filter(|k| *k != removed).cloned().collect();
        let after = ring(&survivors, &vec![1; n - 1], 1024);
        let old_hashes: HashSet<u64> = before.entries.iter().map(|&(h, _)| h).collect();
        let total = 10_000;
        let mut moved = 0;
        for h in request_hashes(total) {
            let old = before.lookup(h, None).map(|i| &all[i]);
            let new = after.lookup(h, None).map(|i| &survivors[i]);
            if old == new {
                continue;
            }
            moved += 1;
            if old != Some(removed) {
                // A survivor only loses a key to an entry that was not on the old ring:
                // Envoy's scaling grows each survivor from 103 to 114 entries.
                let at = after.entries.partition_point(|&(e, _)| e < h) % after.entries.len();
                assert!(!old_hashes.contains(&after.entries[at].0));
            }
        }
        // The removed endpoint's ~1/n plus what the added entries capture (~1/n less
        // what they take from their own endpoint): a bit under 2/n.
        let expected = total as usize / n;
        assert!(moved >= expected / 2 && moved < 2 * expected, "moved {moved}");
    }
}
