//! Maglev consistent hashing for `consistentHash.maglev`.
//!
//! Each endpoint walks its own permutation of the table (start `offset`, stride `skip`)
//! and claims the next free slot on each of its turns. Because `skip` is in
//! `1..M` and `M` is prime, every permutation visits every slot, so population always
//! terminates and lookups are a single modulo. Compared with a ring, Maglev trades a
//! little extra disruption on endpoint changes for near-perfect balance and O(1) lookup.

use xxhash_rust::xxh64::xxh64;

use super::DEFAULT_MAGLEV_TABLE_SIZE;

/// Largest table honoured (Envoy's limit); bounds build time and memory (20 MB).
const MAX_TABLE_SIZE: u64 = 5_000_011;
/// Marks a slot nobody has claimed yet (endpoint indices stay below it).
const EMPTY: u32 = u32::MAX;

/// The lookup table: `table[hash % M]` is the endpoint index.
pub(super) struct Maglev {
    table: Box<[u32]>,
}

/// One endpoint's progress through its permutation during population.
struct Walker {
    position: u64,
    skip: u64,
    weight: u64,
    turns: u64,
}

impl Maglev {
    pub(super) fn new(keys: &[&str], weights: &[u32], table_size: u64) -> Maglev {
        let Some(max_weight) = weights.iter().copied().max().map(u64::from) else {
            return Maglev { table: Box::new([]) };
        };
        let m = table_size_for(table_size, weights.len());
        let mut walkers: Vec<Walker> = keys
            .iter()
            .zip(weights)
            .map(|(key, &weight)| Walker {
                position: xxh64(key.as_bytes(), 0) % m,
                skip: xxh64(key.as_bytes(), 1) % (m - 1) + 1,
                weight: u64::from(weight),
                turns: 0,
            })
            .collect();
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < m {
            for (index, walker) in walkers.iter_mut().enumerate() {
                if filled == m {
                    break;
                }
                // Proportional turns: an endpoint with weight w takes a turn in w/max
                // of the rounds (the heaviest every round), so slot counts follow the
                // weights. Cross-multiplied to stay in integers.
                if round * walker.weight < walker.turns * max_weight {
                    continue;
                }
                walker.turns += 1;
                // Terminates: a free slot exists and the permutation covers all slots.
                loop {
                    let slot = walker.position as usize;
                    walker.position = (walker.position + walker.skip) % m;
                    if table[slot] == EMPTY {
                        table[slot] = index as u32;
                        break;
                    }
                }
                filled += 1;
            }
            round += 1;
        }
        Maglev { table: table.into_boxed_slice() }
    }

    /// `table[hash % M]`; with `exclude`, probes the following slots, which belong to
    /// effectively random other endpoints, so a retry spreads out yet stays stable.
    pub(super) fn lookup(&self, hash: u64, exclude: Option<usize>) -> Option<usize> {
        let m = self.table.len() as u64;
        let start = hash.checked_rem(m)? as usize;
        let (before, after) = self.table.split_at(start);
        after.iter().chain(before).map(|&index| index as usize).find(|&index| Some(index) != exclude)
    }
}

/// The prime table size actually used: 0 means the default, a non-prime is rounded up
/// to the next prime, and the size is raised to at least the endpoint count (otherwise
/// some endpoints could get no slot at all) and capped at [`MAX_TABLE_SIZE`].
fn table_size_for(requested: u64, endpoints: usize) -> u64 {
    let requested = match requested {
        0 => DEFAULT_MAGLEV_TABLE_SIZE,
        size => size.min(MAX_TABLE_SIZE),
    };
    next_prime(requested.max(endpoints as u64).max(2))
}

/// Smallest prime >= n. Trial division is plenty for table sizes of a few million.
fn next_prime(n: u64) -> u64 {
    (n..).find(|&c| is_prime(c)).unwrap_or(n)
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    (3..).step_by(2).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::hash_key;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn maglev(keys: &[String], weights: &[u32], size: u64) -> Maglev {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Maglev::new(&keys, weights, size)
    }

    fn slots_of(m: &Maglev, index: usize) -> usize {
        m.table.iter().filter(|&&i| i as usize == index).count()
    }

    fn request_hashes(n: u32) -> impl Iterator<Item = u64> {
        (0..n).map(|k| hash_key(format!("user-{k}").as_bytes()))
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(4_999_999) && is_prime(MAX_TABLE_SIZE));
        assert!(!is_prime(65535) && !is_prime(1009 * 1013));
        assert_eq!(next_prime(1000), 1009);
        assert_eq!(next_prime(65537), 65537);
    }

    #[test]
    fn table_size_rules() {
        assert_eq!(table_size_for(0, 3), DEFAULT_MAGLEV_TABLE_SIZE);
        assert_eq!(table_size_for(251, 3), 251);
        assert_eq!(table_size_for(1000, 3), 1009);
        assert_eq!(table_size_for(7, 10), 11);
        assert_eq!(table_size_for(1, 1), 2);
        assert_eq!(table_size_for(u64::MAX, 3), MAX_TABLE_SIZE);
    }

    #[test]
    fn table_is_fully_populated_and_balanced() {
        let m = maglev(&keys(7), &[1; 7], 0);
        assert_eq!(m.table.len() as u64, DEFAULT_MAGLEV_TABLE_SIZE);
        assert!(m.table.iter().all(|&i| i < 7));
        // Equal weights take strict turns, so slot counts differ by at most one.
        let counts: Vec<usize> = (0..7).map(|i| slots_of(&m, i)).collect();
        let (min, max) = (counts.iter().min(), counts.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
    }

    #[test]
    fn slots_follow_weights() {
        let m = maglev(&keys(3), &[1, 2, 5], 0);
        let expected = [1.0, 2.0, 5.0].map(|w| w / 8.0 * DEFAULT_MAGLEV_TABLE_SIZE as f64);
        for (index, expected) in expected.into_iter().enumerate() {
            let slots = slots_of(&m, index) as f64;
            assert!((slots - expected).abs() < 3.0, "{index}: {slots} vs {expected}");
        }
        // Even a vanishingly light endpoint keeps a slot.
        let m = maglev(&keys(2), &[1, u32::MAX], 101);
        assert_eq!(slots_of(&m, 0), 1);
    }

    #[test]
    fn lookup_and_exclusion() {
        let m = maglev(&keys(5), &[1; 5], 0);
        for h in request_hashes(1_000) {
            let slot = (h % m.table.len() as u64) as usize;
            let owner = m.table[slot] as usize;
            assert_eq!(m.lookup(h, None), Some(owner));
            let next = m.table[slot..].iter().chain(&m.table[..slot]).map(|&i| i as usize).find(|&i| i != owner);
            assert_eq!(m.lookup(h, Some(owner)), next);
        }
        assert_eq!(maglev(&keys(1), &[1], 0).lookup(9, Some(0)), None);
        assert_eq!(maglev(&[], &[], 0).lookup(9, None), None);
    }

    #[test]
    fn removing_an_endpoint_remaps_about_one_nth() {
        let n = 10;
        let all = keys(n);
        let before = maglev(&all, &vec![1; n], 0);
        let survivors: Vec<String> = all.iter().filter(|k| *k != &all[6]).cloned().collect();
        let after = maglev(&survivors, &vec![1; n - 1], 0);
        let total = 10_000;
        let moved = request_hashes(total)
            .filter(|&h| {
                let old = before.lookup(h, None).map(|i| &all[i]);
                let new = after.lookup(h, None).map(|i| &survivors[i]);
                old != new
            })
            .count();
        let expected = total as usize / n;
        assert!(moved >= expected / 2 && moved < 2 * expected, "moved {moved}");
    }
}
