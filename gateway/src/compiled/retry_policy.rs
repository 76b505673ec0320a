//! A route's retry policy as the request path asks it: which failures and which responses
//! are retried, how many times, how long each try may take, how long to back off. Envoy's
//! `RetryStateImpl` semantics:
//!
//! - a connect failure is retried under `connect-failure`, `reset`, `reset-before-request`,
//!   `5xx` and `gateway-error` (a failed connect is a reset before the request was sent);
//! - a reset or a per-try timeout after the request went out under `reset`, `5xx` and
//!   `gateway-error`; a refused HTTP/2 stream under `refused-stream` too;
//! - a response under `5xx` (any 5xx), `gateway-error` (502, 503, 504), `retriable-4xx`
//!   (409), `retriable-status-codes` (the listed codes), and for gRPC responses that carry
//!   `grpc-status` in their headers, the gRPC conditions.

use meshgate_model::snapshot::{Retries, RetryOn, RetryPolicy};
use std::time::Duration;

/// Envoy's default backoff base interval; the cap is ten times the base.
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Conditions as bits, so the request path tests a failure with one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Conditions(u32);

impl Conditions {
    fn bit(on: RetryOn) -> u32 {
        1 << (on as u32)
    }

    fn of(list: &[RetryOn]) -> Conditions {
        Conditions(list.iter().fold(0, |bits, &on| bits | Conditions::bit(on)))
    }

    fn any(self, list: &[RetryOn]) -> bool {
        self.0 & Conditions::of(list).0 != 0
    }
}

/// What failed, for [`CompiledRetry::retries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection to the endpoint (refused, unreachable, connect timeout, TLS handshake).
    Connect,
    /// The connection or stream broke after the request went out.
    Reset,
    /// The upstream refused the HTTP/2 stream.
    RefusedStream,
    /// The try ran past `perTryTimeout`.
    PerTryTimeout,
    /// The response's status, and its `grpc-status` header if it had one.
    Response { status: u16, grpc_status: Option<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompiledRetry {
    /// Retries after the first try.
    pub(crate) retries: u32,
    pub(crate) per_try_timeout: Option<Duration>,
    on: Conditions,
    status_codes: Box<[u16]>,
    backoff_base: Duration,
    /// Each retry to an endpoint not tried yet (unless the cluster hashes consistently).
    pub(crate) other_endpoint: bool,
}

impl CompiledRetry {
    /// Istio's default policy (pilot's `DefaultPolicy`).
    pub(crate) fn istio_default() -> &'static CompiledRetry {
        static DEFAULT: std::sync::LazyLock<CompiledRetry> = std::sync::LazyLock::new(|| CompiledRetry {
            retries: 2,
            per_try_timeout: None,
            on: Conditions::of(&[
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
                RetryOn::Cancelled,
                RetryOn::RetriableStatusCodes,
            ]),
            status_codes: Box::new([]),
            backoff_base: DEFAULT_BACKOFF_BASE,
            other_endpoint: true,
        });
        &DEFAULT
    }

    /// `attempts: 0`.
    pub(crate) fn off() -> &'static CompiledRetry {
        static OFF: std::sync::LazyLock<CompiledRetry> = std::sync::LazyLock::new(|| CompiledRetry {
            retries: 0,
            per_try_timeout: None,
            on: Conditions(0),
            status_codes: Box::new([]),
            backoff_base: DEFAULT_BACKOFF_BASE,
            other_endpoint: false,
        });
        &OFF
    }

    /// A route's own policy; `None` for the two shared ones ([`Retries::IstioDefault`],
    /// [`Retries::Off`]), which [`CompiledRetry::of`] hands out without a copy per route.
    pub(crate) fn compile(retries: &Retries) -> Option<Box<CompiledRetry>> {
        let Retries::Policy(p) = retries else { return None };
        let RetryPolicy { attempts, per_try_timeout_ms, retry_on, status_codes, backoff_base_ms, other_endpoint } =
            &**p;
        Some(Box::new(CompiledRetry {
            retries: *attempts,
            per_try_timeout: per_try_timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
            on: Conditions::of(retry_on),
            status_codes: status_codes.clone(),
            backoff_base: backoff_base_ms.map_or(DEFAULT_BACKOFF_BASE, |ms| Duration::from_millis(u64::from(ms))),
            other_endpoint: *other_endpoint,
        }))
    }

    /// The policy for a route's definition and its compiled own policy.
    pub(crate) fn of<'a>(retries: &Retries, own: Option<&'a CompiledRetry>) -> &'a CompiledRetry {
        match (retries, own) {
            (_, Some(own)) => own,
            (Retries::Off, None) => CompiledRetry::off(),
            _ => CompiledRetry::istio_default(),
        }
    }

    /// Whether the policy retries this failure (the caller checks the count and whether a
    /// retry is still possible).
    pub(crate) fn retries(&self, failure: Failure) -> bool {
        use RetryOn::*;
        let on = self.on;
        match failure {
            Failure::Connect => on.any(&[ConnectFailure, Reset, ResetBeforeRequest, FiveXx, GatewayError]),
            Failure::Reset | Failure::PerTryTimeout => on.any(&[Reset, FiveXx, GatewayError]),
            Failure::RefusedStream => on.any(&[RefusedStream, Reset, FiveXx, GatewayError]),
            Failure::Response { status, grpc_status } => {
                (on.any(&[FiveXx]) && (500..600).contains(&status))
                    || (on.any(&[GatewayError]) && matches!(status, 502..=504))
                    || (on.any(&[Retriable4xx]) && status == 409)
                    || (on.any(&[RetriableStatusCodes]) && self.status_codes.contains(&status))
                    || grpc_status.is_some_and(|g| self.retries_grpc(g))
            }
        }
    }

    fn retries_grpc(&self, code: u8) -> bool {
        use RetryOn::*;
        let condition = match code {
            1 => Cancelled,
            4 => DeadlineExceeded,
            8 => ResourceExhausted,
            13 => Internal,
            14 => Unavailable,
            _ => return false,
        };
        self.on.any(&[condition])
    }

    /// Whether a response with this status could be retried at all: the request path reads
    /// `grpc-status` only then, and most responses (2xx) are decided by this one test. `grpc`
    /// says the upstream speaks HTTP/2, the only way a gRPC status comes back.
    pub(crate) fn may_retry_status(&self, status: u16, grpc: bool) -> bool {
        self.retries > 0
            && ((status >= 400 && self.retries_some_status())
                || (grpc && status == 200 && self.on.0 & GRPC_BITS.0 != 0))
    }

    /// Whether any HTTP status is retried: Istio's default policy names
    /// `retriable-status-codes` with no codes, so its error responses need no judgement.
    fn retries_some_status(&self) -> bool {
        use RetryOn::*;
        self.on.any(&[FiveXx, GatewayError, Retriable4xx])
            || (self.on.any(&[RetriableStatusCodes]) && !self.status_codes.is_empty())
    }

    /// The wait before retry `n` (1 for the first): Envoy's fully jittered exponential
    /// backoff, a random time below `base * 2^(n-1)`, capped at ten times the base.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let cap = self.backoff_base * 10;
        let ceiling = self.backoff_base.saturating_mul(1 << n.saturating_sub(1).min(16)).min(cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(0..ms))
    }
}

const GRPC_BITS: Conditions = Conditions(
    1 << RetryOn::Cancelled as u32
        | 1 << RetryOn::DeadlineExceeded as u32
        | 1 << RetryOn::Internal as u32
        | 1 << RetryOn::ResourceExhausted as u32
        | 1 << RetryOn::Unavailable as u32,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryOn], codes: &[u16]) -> CompiledRetry {
        *CompiledRetry::compile(&Retries::Policy(Box::new(RetryPolicy {
            attempts: 3,
            per_try_timeout_ms: None,
            retry_on: on.into(),
            status_codes: codes.into(),
            backoff_base_ms: None,
            other_endpoint: true,
        })))
        .unwrap()
    }

    fn response(status: u16) -> Failure {
        Failure::Response { status, grpc_status: None }
    }

    #[test]
    fn istio_default_retries_connect_failures_and_unavailable_grpc_but_no_status() {
        let p = CompiledRetry::istio_default();
        assert_eq!(p.retries, 2);
        assert!(p.retries(Failure::Connect));
        assert!(p.retries(Failure::RefusedStream));
        assert!(!p.retries(Failure::Reset));
        assert!(!p.retries(Failure::PerTryTimeout));
        assert!(!p.retries(response(503)), "Istio 1.24 took 503 out of the default");
        assert!(p.retries(Failure::Response { status: 200, grpc_status: Some(14) }));
        assert!(p.retries(Failure::Response { status: 200, grpc_status: Some(1) }));
        assert!(!p.retries(Failure::Response { status: 200, grpc_status: Some(13) }));
        assert!(p.may_retry_status(200, true) && !p.may_retry_status(200, false));
        // It retries no status: its error responses are not judged at all.
        assert!(!p.may_retry_status(503, false) && !CompiledRetry::off().may_retry_status(503, false));
        assert!(policy(&[RetryOn::FiveXx], &[]).may_retry_status(503, false));
        assert!(policy(&[RetryOn::RetriableStatusCodes], &[418]).may_retry_status(418, false));
    }

    #[test]
    fn each_http_condition() {
        use RetryOn::*;
        let five = policy(&[FiveXx], &[]);
        assert!(five.retries(response(500)) && five.retries(response(599)) && !five.retries(response(429)));
        assert!(five.retries(Failure::Connect) && five.retries(Failure::Reset) && five.retries(Failure::PerTryTimeout));
        let gateway = policy(&[GatewayError], &[]);
        assert!(gateway.retries(response(502)) && gateway.retries(response(504)) && !gateway.retries(response(500)));
        assert!(gateway.retries(Failure::Reset));
        let reset = policy(&[Reset], &[]);
        assert!(reset.retries(Failure::Reset) && reset.retries(Failure::Connect) && !reset.retries(response(503)));
        let connect = policy(&[ConnectFailure], &[]);
        assert!(connect.retries(Failure::Connect) && !connect.retries(Failure::Reset));
        let four = policy(&[Retriable4xx], &[]);
        assert!(four.retries(response(409)) && !four.retries(response(404)));
        let codes = policy(&[RetriableStatusCodes], &[503, 429]);
        assert!(codes.retries(response(429)) && codes.retries(response(503)) && !codes.retries(response(502)));
        let grpc = policy(&[DeadlineExceeded, Internal, ResourceExhausted], &[]);
        for (code, retried) in [(4, true), (13, true), (8, true), (14, false), (0, false)] {
            assert_eq!(grpc.retries(Failure::Response { status: 200, grpc_status: Some(code) }), retried, "{code}");
        }
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling_capped_at_ten_times_the_base() {
        let p = CompiledRetry::istio_default();
        for _ in 0..200 {
            assert!(p.backoff(1) < Duration::from_millis(25));
            assert!(p.backoff(2) < Duration::from_millis(50));
            assert!(p.backoff(9) < Duration::from_millis(250));
        }
        assert!((0..200).any(|_| p.backoff(9) > Duration::from_millis(200)), "the cap, not the doubling, bounds it");
    }
}
