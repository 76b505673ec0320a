//! `retries` as Istio's `ValidateHTTPRetry` checks it and `retry.ConvertPolicy` turns it into
//! Envoy's retry policy: no `retries` is Istio's default policy, `attempts: 0` none at all,
//! and a `retryOn` with bare status codes gets `retriable-status-codes` added.

use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::HttpRetry;
use crate::snapshot::{Retries, RetryOn, RetryPolicy};

/// Istio's default `retryOn` (pilot's `defaultRetryOn`).
pub const ISTIO_DEFAULT_RETRY_ON: [RetryOn; 5] = [
    RetryOn::ConnectFailure,
    RetryOn::RefusedStream,
    RetryOn::Unavailable,
    RetryOn::Cancelled,
    RetryOn::RetriableStatusCodes,
];

/// The gateway's bound on tries per request (Pingora's `max_retries`, 64) less the first.
const MAX_RETRIES: u32 = 63;

/// The route's retry policy, or `None` with the problem reported. `timeout_ms` is the route's
/// own timeout, for the warning about a per-try timeout that can never fire.
pub(super) fn retries(
    r: Option<&HttpRetry>,
    timeout_ms: Option<u32>,
    field: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Retries> {
    let Some(r) = r else { return Some(Retries::IstioDefault) };
    let mut ok = true;
    let mut error = |at: &str, message: String| {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}{at}"), message));
        ok = false;
    };
    if r.attempts < 0 {
        error(".attempts", format!("attempts {} cannot be negative", r.attempts));
    }
    if r.attempts == 0 && (r.per_try_timeout.is_some() || r.retry_on.is_some() || r.retry_remote_localities.is_some()) {
        error("", "http retry policy configured when attempts are set to 0 (disabled)".into());
    }
    let duration = |at: &str, text: &Option<Box<str>>, error: &mut dyn FnMut(&str, String)| {
        super::duration_ms(text.as_deref()?, 1).map_err(|message| error(at, message)).ok()
    };
    let per_try_timeout_ms = duration(".perTryTimeout", &r.per_try_timeout, &mut error);
    let backoff_base_ms = duration(".backoff", &r.backoff, &mut error);
    let mut retry_on = Vec::new();
    let mut status_codes = Vec::new();
    for part in r.retry_on.as_deref().unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(code) = part
            .parse::<u16>()
            .ok()
            .filter(|c| http::StatusCode::from_u16(*c).is_ok_and(|s| s.canonical_reason().is_some()))
        {
            status_codes.push(code);
        } else if let Some(condition) = RetryOn::parse(part) {
            retry_on.push(condition);
        } else {
            error(".retryOn", format!("{part:?} is not a valid retryOn policy"));
        }
    }
    if !ok {
        return None;
    }
    if r.attempts == 0 {
        return Some(Retries::Off);
    }
    if r.retry_on.as_deref().is_none_or(|s| s.trim().is_empty()) {
        retry_on.extend(ISTIO_DEFAULT_RETRY_ON);
    } else if !status_codes.is_empty() && !retry_on.contains(&RetryOn::RetriableStatusCodes) {
        retry_on.push(RetryOn::RetriableStatusCodes);
    }
    for condition in &retry_on {
        if matches!(condition, RetryOn::RetriableHeaders | RetryOn::EnvoyRatelimited | RetryOn::Http3PostConnectFailure)
        {
            problems.push(Diagnostic::warning(
                codes::UNSUPPORTED,
                format!("{field}.retryOn"),
                format!(
                    "{:?} never applies at meshgate (no retriable headers, rate limit service or HTTP/3 upstreams)",
                    condition.name()
                ),
            ));
        }
    }
    if r.retry_remote_localities == Some(true) {
        problems.push(Diagnostic::warning(
            codes::UNSUPPORTED,
            format!("{field}.retryRemoteLocalities"),
            "meshgate does not balance by locality: retries go to any other endpoint",
        ));
    }
    if let (Some(per_try), Some(timeout)) = (per_try_timeout_ms, timeout_ms) {
        if per_try > timeout {
            problems.push(Diagnostic::warning(
                codes::SCHEMA,
                format!("{field}.perTryTimeout"),
                format!("perTryTimeout ({per_try} ms) is longer than the route's timeout ({timeout} ms): the route timeout ends the request first"),
            ));
        }
    }
    if r.attempts > MAX_RETRIES as i32 {
        problems.push(Diagnostic::warning(
            codes::UNSUPPORTED,
            format!("{field}.attempts"),
            format!("{} retries asked, meshgate makes at most {MAX_RETRIES}", r.attempts),
        ));
    }
    Some(Retries::Policy(Box::new(RetryPolicy {
        attempts: r.attempts.unsigned_abs().min(MAX_RETRIES),
        per_try_timeout_ms,
        retry_on: crate::memory::boxed(retry_on),
        status_codes: crate::memory::boxed(status_codes),
        backoff_base_ms,
        other_endpoint: r.retry_ignore_previous_hosts.unwrap_or(true),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str, timeout_ms: Option<u32>) -> (Option<Retries>, Vec<String>) {
        let r: HttpRetry = serde_norway::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let out = retries(Some(&r), timeout_ms, "spec.http[0].retries", &mut problems);
        (out, problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect())
    }

    #[test]
    fn istio_reference_policy() {
        // The HTTPRetry example of Istio's VirtualService reference.
        let (out, problems) =
            policy("attempts: 3\nperTryTimeout: 2s\nretryOn: gateway-error,connect-failure,refused-stream", None);
        assert!(problems.is_empty(), "{problems:?}");
        let Some(Retries::Policy(p)) = out else { panic!("{out:?}") };
        assert_eq!((p.attempts, p.per_try_timeout_ms, p.backoff_base_ms), (3, Some(2000), None));
        assert_eq!(&*p.retry_on, &[RetryOn::GatewayError, RetryOn::ConnectFailure, RetryOn::RefusedStream]);
        assert!(p.other_endpoint);
    }

    #[test]
    fn status_codes_bring_retriable_status_codes_and_no_retry_on_keeps_the_default() {
        let (out, _) = policy("attempts: 2\nretryOn: 5xx, 503,409", None);
        let Some(Retries::Policy(p)) = out else { panic!() };
        assert_eq!(&*p.retry_on, &[RetryOn::FiveXx, RetryOn::RetriableStatusCodes]);
        assert_eq!(&*p.status_codes, &[503, 409]);
        let (out, _) = policy("attempts: 4", None);
        let Some(Retries::Policy(p)) = out else { panic!() };
        assert_eq!(&*p.retry_on, &ISTIO_DEFAULT_RETRY_ON);
        assert_eq!(p.attempts, 4);
    }

    #[test]
    fn attempts_zero_turns_retries_off_and_takes_nothing_else() {
        assert_eq!(policy("attempts: 0", None).0, Some(Retries::Off));
        let (out, problems) = policy("attempts: 0\nretryOn: 5xx", None);
        assert!(out.is_none());
        assert_eq!(
            problems,
            ["spec.http[0].retries: http retry policy configured when attempts are set to 0 (disabled)"]
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let (out, problems) = policy("attempts: -1\nperTryTimeout: soon\nretryOn: 5xx,sometimes,999", None);
        assert!(out.is_none());
        assert_eq!(
            problems,
            [
                "spec.http[0].retries.attempts: attempts -1 cannot be negative",
                "spec.http[0].retries.perTryTimeout: invalid duration \"soon\"; write e.g. \"2s\" or \"500ms\"",
                "spec.http[0].retries.retryOn: \"sometimes\" is not a valid retryOn policy",
                "spec.http[0].retries.retryOn: \"999\" is not a valid retryOn policy",
            ]
        );
    }

    #[test]
    fn a_per_try_timeout_past_the_route_timeout_warns() {
        let (out, problems) = policy("attempts: 2\nperTryTimeout: 5s", Some(1000));
        assert!(out.is_some());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("longer than the route's timeout"), "{problems:?}");
    }
}
