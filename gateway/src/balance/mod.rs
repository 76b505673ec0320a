//! Upstream endpoint selection.
//!
//! A [`Balancer`] is built once per endpoint set (whenever the endpoints or the
//! DestinationRule change) and then shared read-only by every worker thread. The
//! per-request path, [`Balancer::pick`], touches only atomics and the thread-local
//! RNG, so it never blocks, never allocates and cannot contend on a lock.
//!
//! Every pick returns a [`Pick`] guard holding +1 on the chosen endpoint's in-flight
//! counter until the request finishes. LeastRequest reads those counters; the other
//! algorithms maintain them too, so admin output and metrics look the same whatever
//! the policy.

mod maglev;
mod ring_hash;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use maglev::Maglev;
use ring_hash::Ring;

/// Istio/Envoy default for `ringHash.minimumRingSize` (used when 0 is configured).
pub(crate) const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Envoy's default `maximum_ring_size`: bounds memory to 8M entries per ring.
pub(crate) const MAXIMUM_RING_SIZE: u64 = 8_388_608;
/// Istio/Envoy default Maglev table size (a prime).
pub(crate) const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

/// Upper bound on the round-robin schedule length (before the one-slot-per-endpoint
/// minimum). Larger weight sums are scaled down, trading a little precision for a
/// schedule that stays small and cache friendly.
const MAX_SCHEDULE: u64 = 1 << 14;

/// Ring and Maglev tables store endpoint indices as `u32`, with `u32::MAX` reserved as
/// a sentinel, so at most this many endpoints are considered (far beyond any real set).
const MAX_ENDPOINTS: usize = u32::MAX as usize;

/// Mirrors Istio DestinationRule loadBalancer settings after translation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Algorithm {
    RoundRobin,
    /// Envoy's LEAST_REQUEST: power of two random choices on in-flight requests (weighted when weights differ).
    LeastRequest,
    Random,
    /// consistentHash with ringHash (Envoy ring hash); minimum_ring_size default 1024, capped at 8M entries.
    RingHash {
        minimum_ring_size: u64,
    },
    /// consistentHash with maglev; table_size must be prime, default 65537 (if not prime, use next prime).
    Maglev {
        table_size: u64,
    },
}

/// Lock-free endpoint chooser for one endpoint set. `Send + Sync`; share it via `Arc`.
///
/// In-flight counters belong to this balancer: one rebuilt for a new endpoint set
/// starts from zero, while Picks from the old one keep decrementing the old counters.
pub(crate) struct Balancer {
    /// Shared with every outstanding [`Pick`], so a guard can outlive the balancer
    /// (e.g. across an endpoint update) and still decrement the right counter.
    in_flight: Arc<[AtomicU64]>,
    /// Inclusive prefix sums of the endpoint weights (0 counted as 1); turns a uniform number
    /// into a weighted index with one binary search. Used by Random and as the hash-less
    /// fallback. A weight is read back as the difference of two sums (a list of its own was
    /// 20k more blocks at 10k services).
    cumulative: Box<[u64]>,
    strategy: Strategy,
}

enum Strategy {
    RoundRobin { schedule: Box<[u32]>, cursor: AtomicUsize },
    LeastRequest,
    Random,
    RingHash(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// `endpoints[i] = (key, weight)`: key is a stable identity such as "10.1.2.3:8080" used to place the endpoint on a ring/table,
    /// weight >= 1 (treat 0 as 1). Index i is the endpoint index returned by pick().
    pub(crate) fn new(algorithm: &Algorithm, endpoints: &[(String, u32)]) -> Balancer {
        let endpoints = &endpoints[..endpoints.len().min(MAX_ENDPOINTS)];
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| (*w).max(1)).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let keys: Vec<&str> = endpoints.iter().map(|(k, _)| k.as_str()).collect();
        let strategy = match algorithm {
            Algorithm::RoundRobin => {
                Strategy::RoundRobin { schedule: round_robin_schedule(&weights), cursor: AtomicUsize::new(0) }
            }
            Algorithm::LeastRequest => Strategy::LeastRequest,
            Algorithm::Random => Strategy::Random,
            Algorithm::RingHash { minimum_ring_size } => {
                Strategy::RingHash(Ring::new(&keys, &weights, *minimum_ring_size))
            }
            Algorithm::Maglev { table_size } => Strategy::Maglev(Maglev::new(&keys, &weights, *table_size)),
        };
        Balancer { in_flight: endpoints.iter().map(|_| AtomicU64::new(0)).collect(), cumulative, strategy }
    }

    /// Choose an endpoint. `hash` is the request hash for RingHash/Maglev (None -> fall back to a random pick).
    /// `exclude` lets the caller skip endpoints (e.g. a retry avoiding the previous host); return None if nothing is eligible or empty.
    /// Never allocates, never blocks.
    ///
    /// An out-of-range `exclude` is ignored. Dropping the returned [`Pick`] ends the
    /// request as far as in-flight accounting is concerned, so keep it for the
    /// request's whole lifetime.
    #[must_use = "dropping the Pick immediately releases its in-flight slot"]
    pub(crate) fn pick(&self, hash: Option<u64>, exclude: Option<usize>) -> Option<Pick> {
        let exclude = exclude.filter(|&e| e < self.len());
        let eligible = self.len() - usize::from(exclude.is_some());
        if eligible == 0 {
            return None;
        }
        let index = match (&self.strategy, hash) {
            (Strategy::RoundRobin { schedule, cursor }, _) => round_robin(schedule, cursor, exclude),
            (Strategy::LeastRequest, _) => Some(self.least_request(eligible, exclude)),
            (Strategy::RingHash(ring), Some(hash)) => ring.lookup(hash, exclude),
            (Strategy::Maglev(table), Some(hash)) => table.lookup(hash, exclude),
            (Strategy::Random | Strategy::RingHash(_) | Strategy::Maglev(_), _) => self.weighted_random(exclude),
        }?;
        Some(self.acquire(index))
    }

    pub(crate) fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Current in-flight count for endpoint i (for tests/admin). 0 for an unknown index.
    pub(crate) fn in_flight(&self, index: usize) -> u64 {
        self.in_flight.get(index).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn acquire(&self, index: usize) -> Pick {
        if let Some(counter) = self.in_flight.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Pick { index, in_flight: Arc::clone(&self.in_flight) }
    }

    /// Endpoint `i`'s weight (at least 1).
    fn weight(&self, i: usize) -> Option<u64> {
        let end = *self.cumulative.get(i)?;
        Some(end - if i == 0 { 0 } else { self.cumulative[i - 1] })
    }

    /// Weighted random pick in O(log n). An excluded endpoint is removed by cutting its
    /// span out of the number line instead of retrying, so the remaining endpoints keep
    /// their relative weights and the call has a fixed cost.
    fn weighted_random(&self, exclude: Option<usize>) -> Option<usize> {
        let total = self.cumulative.last().copied()?;
        let (gap_start, gap_len) = match exclude {
            Some(e) => {
                let w = self.weight(e)?;
                (self.cumulative[e] - w, w)
            }
            None => (u64::MAX, 0),
        };
        let span = total.checked_sub(gap_len).filter(|&s| s > 0)?;
        let mut r = fastrand::u64(0..span);
        if r >= gap_start {
            r += gap_len;
        }
        Some(self.cumulative.partition_point(|&c| c <= r))
    }

    /// Power of two choices: two distinct uniformly random eligible endpoints, keep the
    /// one with the larger effective weight `weight / (in_flight + 1)` (Envoy's formula
    /// with the default active_request_bias of 1). With equal weights that is simply
    /// "fewer in-flight". Envoy switches to an EDF scheduler for unequal weights; that
    /// needs a lock, so here the same effective weight drives the two-choice comparison.
    fn least_request(&self, eligible: usize, exclude: Option<usize>) -> usize {
        // Map a rank among eligible endpoints to a real index by stepping over `exclude`.
        let index_of = |rank: usize| match exclude {
            Some(e) if rank >= e => rank + 1,
            _ => rank,
        };
        if eligible == 1 {
            return index_of(0);
        }
        let a = fastrand::usize(0..eligible);
        let mut b = fastrand::usize(0..eligible - 1);
        if b >= a {
            b += 1;
        }
        let (a, b) = (index_of(a), index_of(b));
        let weight = |i: usize| u128::from(self.weight(i).unwrap_or(1));
        let load = |i: usize| u128::from(self.in_flight(i)) + 1;
        // Compare wa/(la) with wb/(lb) without division: wa*lb vs wb*la.
        // (a, b) is a uniformly random ordered pair, so returning `a` on a tie is a
        // random tie break.
        if weight(b) * load(a) > weight(a) * load(b) {
            b
        } else {
            a
        }
    }
}

impl fmt::Debug for Balancer {
    /// Deliberately terse: a ring can hold millions of entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match &self.strategy {
            Strategy::RoundRobin { .. } => "RoundRobin",
            Strategy::LeastRequest => "LeastRequest",
            Strategy::Random => "Random",
            Strategy::RingHash(_) => "RingHash",
            Strategy::Maglev(_) => "Maglev",
        };
        f.debug_struct("Balancer")
            .field("algorithm", &algorithm)
            .field("endpoints", &self.len())
            .finish_non_exhaustive()
    }
}

/// Returned by pick(). Holds +1 on the endpoint's in-flight counter until dropped (used by LeastRequest; maintain it for all algorithms).
///
/// Owns an `Arc` to the counters rather than borrowing the balancer, so it is
/// `Send + Sync + 'static` and can live in a per-request context across awaits.
pub(crate) struct Pick {
    index: usize,
    in_flight: Arc<[AtomicU64]>,
}

impl Pick {
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick").field("index", &self.index).finish()
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(counter) = self.in_flight.get(self.index) {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// xxHash64 (seed 0) of the bytes: the request hash for consistentHash keys (header value, cookie value, source IP, query param value).
///
/// Seed 0 is what Envoy uses for these keys, keeping hashes comparable with sidecars.
pub(crate) fn hash_key(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(bytes, 0)
}

/// One shared cursor over a precomputed schedule: each pick is a single `fetch_add`.
/// When the scheduled endpoint is excluded, the scan continues along the schedule, so
/// the substitute still follows the weighted order.
fn round_robin(schedule: &[u32], cursor: &AtomicUsize, exclude: Option<usize>) -> Option<usize> {
    if schedule.is_empty() {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed) % schedule.len();
    let (before, after) = schedule.split_at(start);
    after.iter().chain(before).map(|&i| i as usize).find(|&i| Some(i) != exclude)
}

/// Builds an interleaved weighted schedule: endpoint `i` with weight `w` gets `w` slots
/// at the centres of `w` equal sub-intervals, i.e. positions `(2k + 1) / (2w)`, and all
/// slots are merged in position order. Heavy endpoints are thus spread out instead of
/// bursting, and equal weights give the strict rotation 0, 1, 2, ...
///
/// Weights are first divided by their GCD (100/200 becomes 1/2), then scaled down if
/// their sum still exceeds [`MAX_SCHEDULE`], keeping at least one slot per endpoint.
fn round_robin_schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = u64::from(weights.iter().fold(0, |g, &w| gcd(g, w)).max(1));
    let total: u64 = weights.iter().map(|&w| u64::from(w) / divisor).sum();
    let turns: Vec<u64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w) / divisor;
            if total > MAX_SCHEDULE {
                (w * MAX_SCHEDULE / total).max(1)
            } else {
                w
            }
        })
        .collect();
    let mut slots: Vec<(u64, u32)> =
        turns.iter().enumerate().flat_map(|(i, &t)| (0..t).map(move |k| (k, i as u32))).collect();
    // Compare (2ka + 1) / ta with (2kb + 1) / tb by cross-multiplying; ties by index.
    slots.sort_unstable_by(|&(ka, ia), &(kb, ib)| {
        let (ta, tb) = (turns[ia as usize], turns[ib as usize]);
        ((2 * ka + 1) * tb).cmp(&((2 * kb + 1) * ta)).then(ia.cmp(&ib))
    });
    slots.into_iter().map(|(_, i)| i).collect()
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(weights: &[u32]) -> Vec<(String, u32)> {
        weights.iter().enumerate().map(|(i, &w)| (format!("10.0.0.{i}:8080"), w)).collect()
    }

    fn all_algorithms() -> Vec<Algorithm> {
        vec![
            Algorithm::RoundRobin,
            Algorithm::LeastRequest,
            Algorithm::Random,
            Algorithm::RingHash { minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE },
            Algorithm::Maglev { table_size: DEFAULT_MAGLEV_TABLE_SIZE },
        ]
    }

    /// Counts how often each endpoint is chosen over `picks` picks (guards dropped at once).
    fn histogram(b: &Balancer, picks: usize, exclude: Option<usize>) -> Vec<usize> {
        let mut counts = vec![0; b.len()];
        for _ in 0..picks {
            let pick = b.pick(None, exclude).expect("an eligible endpoint");
            counts[pick.index()] += 1;
        }
        counts
    }

    fn assert_near(actual: usize, expected: f64, tolerance: f64) {
        let deviation = (actual as f64 - expected).abs() / expected;
        assert!(deviation <= tolerance, "{actual} is not within {tolerance} of {expected}");
    }

    #[test]
    fn thread_safety_bounds() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        send_sync_static::<Pick>();
        send_sync_static::<Balancer>();
    }

    #[test]
    fn hash_key_is_xxh64_seed_0() {
        assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(hash_key(b"abc"), xxhash_rust::xxh64::xxh64(b"abc", 0));
        assert_ne!(hash_key(b"user-1"), hash_key(b"user-2"));
    }

    #[test]
    fn empty_balancer_picks_nothing() {
        for algorithm in all_algorithms() {
            let b = Balancer::new(&algorithm, &[]);
            assert_eq!(b.len(), 0);
            assert_eq!(b.len(), 0);
            assert!(b.pick(Some(42), None).is_none(), "{algorithm:?}");
            assert!(b.pick(None, Some(0)).is_none(), "{algorithm:?}");
            assert_eq!(b.in_flight(0), 0);
        }
    }

    #[test]
    fn single_endpoint_and_exclusion() {
        for algorithm in all_algorithms() {
            let b = Balancer::new(&algorithm, &endpoints(&[0]));
            assert_eq!(b.len(), 1);
            for hash in [None, Some(0), Some(u64::MAX), Some(hash_key(b"x"))] {
                assert_eq!(b.pick(hash, None).map(|p| p.index()), Some(0));
                // Out-of-range exclusions are ignored.
                assert_eq!(b.pick(hash, Some(7)).map(|p| p.index()), Some(0));
                assert!(b.pick(hash, Some(0)).is_none(), "{algorithm:?}");
            }
        }
    }

    #[test]
    fn exclude_is_honoured_by_every_algorithm() {
        for algorithm in all_algorithms() {
            let b = Balancer::new(&algorithm, &endpoints(&[1, 5, 2, 1]));
            let mut seen = [false; 4];
            for k in 0..2_000u64 {
                for hash in [None, Some(hash_key(&k.to_le_bytes()))] {
                    let pick = b.pick(hash, Some(1)).expect("eligible endpoints remain");
                    assert_ne!(pick.index(), 1, "{algorithm:?}");
                    seen[pick.index()] = true;
                }
            }
            assert_eq!(seen, [true, false, true, true], "{algorithm:?}");
        }
    }

    #[test]
    fn two_endpoints_excluding_one_yields_the_other() {
        for algorithm in all_algorithms() {
            let b = Balancer::new(&algorithm, &endpoints(&[1, 9]));
            for k in 0..500u64 {
                let hash = Some(hash_key(&k.to_le_bytes()));
                assert_eq!(b.pick(hash, Some(1)).map(|p| p.index()), Some(0));
                assert_eq!(b.pick(hash, Some(0)).map(|p| p.index()), Some(1));
            }
        }
    }

    #[test]
    fn pick_guard_tracks_in_flight() {
        for algorithm in all_algorithms() {
            let b = Balancer::new(&algorithm, &endpoints(&[1, 1]));
            let first = b.pick(Some(1), None).expect("pick");
            let second = b.pick(Some(1), None).expect("pick");
            let total = |b: &Balancer| b.in_flight(0) + b.in_flight(1);
            assert_eq!(total(&b), 2, "{algorithm:?}");
            assert!(b.in_flight(first.index()) >= 1);
            drop(first);
            assert_eq!(total(&b), 1);
            assert_eq!(b.in_flight(second.index()), 1);
            drop(second);
            assert_eq!(total(&b), 0);
        }
    }

    #[test]
    fn pick_outlives_balancer() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1]));
        let counters = Arc::clone(&b.in_flight);
        let pick = b.pick(None, None).expect("pick");
        drop(b);
        assert_eq!(counters[0].load(Ordering::Relaxed), 1);
        drop(pick);
        assert_eq!(counters[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn round_robin_equal_weights_rotate_strictly() {
        let b = Balancer::new(&Algorithm::RoundRobin, &endpoints(&[3, 3, 3]));
        let order: Vec<usize> = (0..9).filter_map(|_| b.pick(None, None).map(|p| p.index())).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_weighted_is_exact_and_interleaved() {
        let b = Balancer::new(&Algorithm::RoundRobin, &endpoints(&[1, 2]));
        let order: Vec<usize> = (0..6).filter_map(|_| b.pick(None, None).map(|p| p.index())).collect();
        assert_eq!(order, [1, 0, 1, 1, 0, 1]);

        let b = Balancer::new(&Algorithm::RoundRobin, &endpoints(&[5, 1, 3, 1]));
        assert_eq!(histogram(&b, 10 * 1_000, None), [5_000, 1_000, 3_000, 1_000]);
        // Heavy endpoints are spread out rather than served in one burst.
        let Strategy::RoundRobin { schedule, .. } = &b.strategy else { unreachable!() };
        let longest_run = schedule.chunk_by(|a, b| a == b).map(<[u32]>::len).max().unwrap_or(0);
        assert!(longest_run <= 2, "schedule {schedule:?}");
    }

    #[test]
    fn round_robin_schedule_is_bounded() {
        let schedule = round_robin_schedule(&[u32::MAX, 1, u32::MAX / 2]);
        assert!(schedule.len() as u64 <= MAX_SCHEDULE + 3);
        let count = |i: u32| schedule.iter().filter(|&&s| s == i).count();
        assert!(count(1) >= 1, "every endpoint keeps a slot");
        assert_near(count(0), 2.0 * count(2) as f64, 0.01);
        // GCD reduction keeps small schedules small.
        assert_eq!(&*round_robin_schedule(&[100, 200]), &[1, 0, 1]);
    }

    #[test]
    fn round_robin_exclusion_keeps_weighted_order() {
        let b = Balancer::new(&Algorithm::RoundRobin, &endpoints(&[1, 1, 1]));
        let order: Vec<usize> = (0..6).filter_map(|_| b.pick(None, Some(1)).map(|p| p.index())).collect();
        // Slots 0, (1 -> 2), 2, 0, (1 -> 2), 2.
        assert_eq!(order, [0, 2, 2, 0, 2, 2]);
    }

    #[test]
    fn round_robin_is_exact_under_concurrency() {
        let b = Arc::new(Balancer::new(&Algorithm::RoundRobin, &endpoints(&[1, 3])));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || histogram(&b, 10_000, None))
            })
            .collect();
        let mut total = [0; 2];
        for handle in handles {
            let counts = handle.join().expect("worker thread");
            total[0] += counts[0];
            total[1] += counts[1];
        }
        assert_eq!(total, [10_000, 30_000]);
        assert_eq!(b.in_flight(0) + b.in_flight(1), 0);
    }

    #[test]
    fn random_is_weighted() {
        let b = Balancer::new(&Algorithm::Random, &endpoints(&[1, 2, 7, 0]));
        let picks = 220_000;
        let counts = histogram(&b, picks, None);
        for (count, weight) in counts.iter().zip([1.0, 2.0, 7.0, 1.0]) {
            assert_near(*count, picks as f64 * weight / 11.0, 0.05);
        }
    }

    #[test]
    fn random_exclusion_keeps_relative_weights() {
        let b = Balancer::new(&Algorithm::Random, &endpoints(&[1, 6, 3]));
        let counts = histogram(&b, 100_000, Some(1));
        assert_eq!(counts[1], 0);
        assert_near(counts[0], 25_000.0, 0.05);
        assert_near(counts[2], 75_000.0, 0.05);
    }

    #[test]
    fn hashless_consistent_hash_falls_back_to_weighted_random() {
        for algorithm in [Algorithm::RingHash { minimum_ring_size: 0 }, Algorithm::Maglev { table_size: 0 }] {
            let b = Balancer::new(&algorithm, &endpoints(&[1, 3]));
            let counts = histogram(&b, 100_000, None);
            assert_near(counts[0], 25_000.0, 0.05);
            assert_near(counts[1], 75_000.0, 0.05);
        }
    }

    #[test]
    fn consistent_hash_is_stable_per_hash() {
        for algorithm in &all_algorithms()[3..] {
            let b = Balancer::new(algorithm, &endpoints(&[1, 2, 3, 4, 5]));
            let again = Balancer::new(algorithm, &endpoints(&[1, 2, 3, 4, 5]));
            for k in 0..1_000u32 {
                let hash = Some(hash_key(format!("session-{k}").as_bytes()));
                let first = b.pick(hash, None).map(|p| p.index());
                assert_eq!(first, b.pick(hash, None).map(|p| p.index()));
                assert_eq!(first, again.pick(hash, None).map(|p| p.index()));
                // A retry avoiding that host is stable too.
                let retry = b.pick(hash, first).map(|p| p.index());
                assert_eq!(retry, b.pick(hash, first).map(|p| p.index()));
                assert_ne!(retry, first);
            }
        }
    }

    #[test]
    fn least_request_equal_load_is_uniform() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1, 1, 1]));
        for count in histogram(&b, 60_000, None) {
            assert_near(count, 20_000.0, 0.05);
        }
    }

    #[test]
    fn least_request_avoids_the_loaded_endpoint() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1, 1, 1, 1]));
        let held: Vec<Pick> = (0..50).map(|_| b.acquire(2)).collect();
        assert_eq!(b.in_flight(2), 50);
        // Two distinct candidates: endpoint 2 always meets a less loaded rival.
        let counts = histogram(&b, 10_000, None);
        assert_eq!(counts[2], 0);
        drop(held);
        assert_eq!(b.in_flight(2), 0);
        assert!(histogram(&b, 10_000, None)[2] > 1_000);
    }

    #[test]
    fn least_request_prefers_fewer_in_flight_among_candidates() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1, 1]));
        let _held: Vec<Pick> = (0..3).map(|_| b.acquire(0)).collect();
        // Holding new picks: the lighter endpoint fills up until the two balance.
        let more: Vec<Pick> = (0..3).filter_map(|_| b.pick(None, None)).collect();
        assert!(more.iter().all(|p| p.index() == 1));
        assert_eq!((b.in_flight(0), b.in_flight(1)), (3, 3));
    }

    #[test]
    fn least_request_weighted_balances_in_flight_by_weight() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1, 3]));
        // Idle: the heavier endpoint has the larger effective weight.
        assert_eq!(histogram(&b, 100, None), [0, 100]);
        // Steady state with 40 concurrent requests served first-in first-out.
        let mut window = std::collections::VecDeque::new();
        let mut counts = [0usize; 2];
        for _ in 0..40_000 {
            if window.len() == 40 {
                window.pop_front();
            }
            let pick = b.pick(None, None).expect("pick");
            counts[pick.index()] += 1;
            window.push_back(pick);
        }
        assert_near(counts[0], 10_000.0, 0.1);
        assert_near(counts[1], 30_000.0, 0.1);
    }

    #[test]
    fn least_request_weighted_still_avoids_overload() {
        let b = Balancer::new(&Algorithm::LeastRequest, &endpoints(&[1, 10, 1]));
        let _held: Vec<Pick> = (0..100).map(|_| b.acquire(1)).collect();
        // 10 / 101 < 1 / 1: the heavy but swamped endpoint loses every comparison.
        assert_eq!(histogram(&b, 5_000, None)[1], 0);
    }

    #[test]
    fn debug_is_terse() {
        let b = Balancer::new(&Algorithm::Maglev { table_size: 0 }, &endpoints(&[1, 1]));
        let text = format!("{b:?}");
        assert!(text.contains("Maglev") && text.contains("endpoints: 2"), "{text}");
    }
}
