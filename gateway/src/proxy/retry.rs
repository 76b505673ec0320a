//! A request's tries against its route's retry policy and timeout: when a failure or a
//! response is retried, which endpoint the retry goes to, and the route timeout's deadline.
//!
//! ```text
//!  upstream_peer ───── first try: deadline = now + route timeout
//!                      a retry: back off (jittered), pick another endpoint, count it
//!                      every try: read timeout = min(perTryTimeout, time left)
//!  fail_to_connect ─── Failure::Connect            ┐ retried when the policy says so, a retry
//!  error_while_proxy ─ Reset / RefusedStream /     │ is left, the deadline has not passed,
//!                      PerTryTimeout               │ no response byte went downstream and the
//!  upstream_response ─ Response { status, grpc }   ┘ request body can be sent again
//!  body filter ─────── deadline passed: 504 UT (or the stream is cut, once headers went down)
//! ```
//!
//! Pingora's own retry of a request that failed on a reused pooled connection (idempotent,
//! body replayable) stays as it was: same endpoint, no backoff, not counted as a retry.

use crate::balance::{Balancer, Pick};
use crate::compiled::retry_policy::{CompiledRetry, Failure};
use std::time::{Duration, Instant};

/// Envoy's `host_selection_retry_max_attempts` as Istio sets it: picks per retry to find an
/// endpoint not tried yet.
const HOST_SELECTION_ATTEMPTS: usize = 5;

#[derive(Debug, Default)]
pub(super) struct Tries {
    /// Tries started.
    started: u32,
    /// Endpoints tried, by index (the first 64).
    tried: u64,
    /// The route timeout's end, set when the first try starts.
    deadline: Option<Instant>,
    /// A policy retry was decided: the next `upstream_peer` backs off and picks again.
    pending: bool,
    /// A retriable outcome came after the last retry (Envoy's flag URX).
    pub(super) exhausted: bool,
}

/// Why no retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Retry,
    /// The policy does not retry this failure.
    NotRetriable,
    /// It does, but the retries are used up.
    Exhausted,
    /// It does, but the request cannot be sent again (a response byte went downstream, the
    /// body outgrew the replay buffer, the deadline passed).
    Impossible,
}

impl Tries {
    pub(super) fn started(&self) -> u32 {
        self.started
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn deadline_passed(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Whether a retry is being prepared (the next try is a policy retry).
    pub(super) fn retry_pending(&self) -> bool {
        self.pending
    }

    /// Starts a try on endpoint `index`; returns the read timeout for it (the per-try
    /// timeout, shortened to the time left before the deadline). `timeout` is the route's.
    pub(super) fn start(
        &mut self,
        index: usize,
        now: Instant,
        timeout: Option<Duration>,
        policy: &CompiledRetry,
    ) -> Option<Duration> {
        if self.started == 0 {
            self.deadline = timeout.map(|t| now + t);
        }
        self.started += 1;
        self.pending = false;
        if index < 64 {
            self.tried |= 1 << index;
        }
        let left = self.deadline.map(|d| d.saturating_duration_since(now));
        match (policy.per_try_timeout, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Decides on `failure`; `replayable` says whether the request can be sent again.
    pub(super) fn judge(
        &mut self,
        policy: &CompiledRetry,
        failure: Failure,
        replayable: bool,
        now: Instant,
    ) -> Verdict {
        if !policy.retries(failure) {
            return Verdict::NotRetriable;
        }
        if self.started > policy.retries {
            self.exhausted = true;
            return Verdict::Exhausted;
        }
        if !replayable || self.deadline_passed(now) {
            return Verdict::Impossible;
        }
        self.pending = true;
        Verdict::Retry
    }

    /// The endpoint for a retry: with `other_endpoint` (and no hash), one not tried yet if
    /// one turns up in a few picks, else another one; under consistent hashing, the hash's.
    /// `None` when there is no other endpoint: the retry stays on this one.
    pub(super) fn pick(
        &self,
        balancer: &Balancer,
        hash: Option<u64>,
        last: usize,
        policy: &CompiledRetry,
    ) -> Option<Pick> {
        if hash.is_some() || !policy.other_endpoint {
            return balancer.pick(hash, None);
        }
        let mut pick = balancer.pick(None, Some(last))?;
        for _ in 1..HOST_SELECTION_ATTEMPTS {
            if pick.index() >= 64 || self.tried & (1 << pick.index()) == 0 {
                break;
            }
            pick = balancer.pick(None, Some(last))?;
        }
        Some(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Algorithm;
    use meshgate_model::snapshot::{Retries, RetryOn, RetryPolicy};

    fn policy(retries: u32, per_try_ms: Option<u32>) -> CompiledRetry {
        *CompiledRetry::compile(&Retries::Policy(Box::new(RetryPolicy {
            attempts: retries,
            per_try_timeout_ms: per_try_ms,
            retry_on: Box::new([RetryOn::FiveXx]),
            status_codes: Box::new([]),
            backoff_base_ms: None,
            other_endpoint: true,
        })))
        .unwrap()
    }

    #[test]
    fn retries_until_the_policy_count_then_flags_exhaustion() {
        let p = policy(2, None);
        let now = Instant::now();
        let mut t = Tries::default();
        let failure = Failure::Response { status: 503, grpc_status: None };
        t.start(0, now, None, &p);
        assert_eq!(t.judge(&p, failure, true, now), Verdict::Retry);
        assert!(t.retry_pending());
        t.start(1, now, None, &p);
        assert_eq!(t.judge(&p, failure, true, now), Verdict::Retry);
        t.start(2, now, None, &p);
        assert_eq!(t.judge(&p, failure, true, now), Verdict::Exhausted);
        assert!(t.exhausted && t.started() == 3);
        let mut t = Tries::default();
        t.start(0, now, None, &p);
        assert_eq!(t.judge(&p, Failure::Response { status: 404, grpc_status: None }, true, now), Verdict::NotRetriable);
        assert_eq!(t.judge(&p, failure, false, now), Verdict::Impossible, "a body that cannot be replayed");
    }

    #[test]
    fn each_try_reads_for_the_per_try_timeout_or_the_time_left() {
        let p = policy(3, Some(2000));
        let now = Instant::now();
        let mut t = Tries::default();
        assert_eq!(t.start(0, now, Some(Duration::from_secs(5)), &p), Some(Duration::from_secs(2)));
        let later = now + Duration::from_millis(4000);
        assert_eq!(
            t.start(1, later, Some(Duration::from_secs(99)), &p),
            Some(Duration::from_secs(1)),
            "the deadline stays"
        );
        let failure = Failure::PerTryTimeout;
        assert_eq!(t.judge(&p, failure, true, now + Duration::from_secs(5)), Verdict::Impossible);
        let mut t = Tries::default();
        assert_eq!(t.start(0, now, None, CompiledRetry::istio_default()), None);
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_tried_yet() {
        let endpoints: Vec<(String, u32)> = (0..3).map(|i| (format!("10.0.0.{i}:80"), 1)).collect();
        let balancer = Balancer::new(&Algorithm::LeastRequest, &endpoints);
        let p = policy(2, None);
        for _ in 0..50 {
            let mut t = Tries::default();
            let now = Instant::now();
            t.start(0, now, None, &p);
            let second = t.pick(&balancer, None, 0, &p).unwrap();
            assert_ne!(second.index(), 0);
            t.start(second.index(), now, None, &p);
            let third = t.pick(&balancer, None, second.index(), &p).unwrap();
            assert!(third.index() != 0 && third.index() != second.index(), "{}", third.index());
        }
        // Under consistent hashing the hash decides, as Istio drops previous_hosts there.
        let balancer = Balancer::new(&Algorithm::RingHash { minimum_ring_size: 1024 }, &endpoints);
        let t = Tries::default();
        let a = t.pick(&balancer, Some(42), 0, &p).unwrap().index();
        assert_eq!(t.pick(&balancer, Some(42), a, &p).unwrap().index(), a);
    }
}
