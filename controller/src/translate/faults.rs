//! `fault` as Istio's `validateHTTPFaultInjection` checks it and `TranslateFault` hands it to
//! Envoy's fault filter: a share of requests delayed and a share aborted, each share absent
//! meaning none (the deprecated integer `percent` counts for a delay without `percentage`).

use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{HttpFaultInjection, Percent};
use crate::snapshot::{AbortStatus, Fault, FaultAbort, FaultDelay};

/// gRPC status names, by code (Istio's `SupportedGRPCStatus`).
const GRPC_STATUS: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The route's fault injection, `Some(None)` when it injects nothing, or `None` with the
/// problem reported.
pub(super) fn fault(f: &HttpFaultInjection, field: &str, problems: &mut Vec<Diagnostic>) -> Option<Option<Box<Fault>>> {
    let mut ok = true;
    let mut error = |at: String, message: String| {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}{at}"), message));
        ok = false;
    };
    if f.delay.is_none() && f.abort.is_none() {
        error(String::new(), "HTTP fault injection must have an abort and/or a delay".into());
    }
    let per_million = |p: Option<Percent>, at: &str, error: &mut dyn FnMut(String, String)| match p {
        None => 0,
        Some(p) => super::per_million(p).unwrap_or_else(|m| {
            error(format!("{at}.percentage.value"), format!("percentage {m}"));
            0
        }),
    };
    let mut delay = None;
    if let Some(d) = &f.delay {
        let mut share = per_million(d.percentage, ".delay", &mut error);
        if d.percentage.is_none() {
            match d.percent.unwrap_or(0) {
                p @ 0..=100 => share = p.unsigned_abs() * 10_000,
                p => error(".delay.percent".into(), format!("percentage {p} is not in range 0..100")),
            }
        }
        match (&d.fixed_delay, &d.exponential_delay) {
            (Some(t), _) => match super::duration_ms(t, 1) {
                Ok(ms) => delay = Some(FaultDelay { fixed_delay_ms: ms, per_million: share }),
                Err(message) => error(".delay.fixedDelay".into(), message),
            },
            (None, Some(_)) => error(".delay.exponentialDelay".into(), "exponentialDelay not supported yet".into()),
            (None, None) => error(".delay.fixedDelay".into(), "a delay needs fixedDelay".into()),
        }
    }
    let mut abort = None;
    if let Some(a) = &f.abort {
        let share = per_million(a.percentage, ".abort", &mut error);
        let status = match (&a.http_status, &a.grpc_status, &a.http2_error) {
            (Some(code), _, _) => match u16::try_from(*code).ok().filter(|c| (200..=599).contains(c)) {
                Some(code) => Some(AbortStatus::Http(code)),
                None => {
                    error(".abort.httpStatus".into(), format!("HTTP status {code} is not in range 200-599"));
                    None
                }
            },
            (None, Some(name), _) => match GRPC_STATUS.iter().position(|s| **s == **name) {
                Some(code) => Some(AbortStatus::Grpc(code as u8)),
                None => {
                    error(
                        ".abort.grpcStatus".into(),
                        format!("gRPC status {name:?} is not supported; use a name such as \"UNAVAILABLE\" or \"NOT_FOUND\""),
                    );
                    None
                }
            },
            (None, None, Some(_)) => {
                error(".abort.http2Error".into(), "HTTP/2 abort fault injection not supported yet".into());
                None
            }
            (None, None, None) => {
                problems.push(Diagnostic::warning(
                    codes::SCHEMA,
                    format!("{field}.abort"),
                    "abort configured, but error type not set: nothing is aborted",
                ));
                None
            }
        };
        abort = status.map(|status| FaultAbort { status, per_million: share });
    }
    if !ok {
        return None;
    }
    Some((delay.is_some() || abort.is_some()).then(|| Box::new(Fault { delay, abort })))
}

/// The gRPC status name for `code`, for messages.
pub fn grpc_status_name(code: u8) -> &'static str {
    GRPC_STATUS.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(yaml: &str) -> (Option<Option<Box<Fault>>>, Vec<String>) {
        let f: HttpFaultInjection = serde_norway::from_str(yaml).unwrap();
        let mut problems = Vec::new();
        let out = fault(&f, "spec.http[0].fault", &mut problems);
        (out, problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect())
    }

    #[test]
    fn bookinfo_delay_and_abort() {
        // samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml and -abort.yaml.
        let (out, problems) = translate("delay:\n  percentage: {value: 100.0}\n  fixedDelay: 7s");
        assert!(problems.is_empty());
        let f = out.flatten().unwrap();
        assert_eq!(f.delay, Some(FaultDelay { fixed_delay_ms: 7000, per_million: 1_000_000 }));
        let (out, _) = translate("abort:\n  percentage: {value: 100.0}\n  httpStatus: 500");
        let f = out.flatten().unwrap();
        assert_eq!(f.abort, Some(FaultAbort { status: AbortStatus::Http(500), per_million: 1_000_000 }));
    }

    #[test]
    fn shares_default_to_none_and_the_legacy_percent_counts_for_delays() {
        let (out, _) = translate("delay: {fixedDelay: 5s}\nabort: {httpStatus: 503}");
        let f = out.flatten().unwrap();
        assert_eq!((f.delay.unwrap().per_million, f.abort.unwrap().per_million), (0, 0));
        let (out, _) = translate("delay: {fixedDelay: 5s, percent: 10}");
        assert_eq!(out.flatten().unwrap().delay.unwrap().per_million, 100_000);
        let (out, _) = translate("abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}");
        assert_eq!(out.flatten().unwrap().abort, Some(FaultAbort { status: AbortStatus::Grpc(14), per_million: 1000 }));
    }

    #[test]
    fn istio_validation_errors() {
        let (out, problems) = translate("{}");
        assert!(out.is_none());
        assert_eq!(problems, ["spec.http[0].fault: HTTP fault injection must have an abort and/or a delay"]);
        let (out, problems) = translate("abort: {httpStatus: 700, percentage: {value: 101}}");
        assert!(out.is_none());
        assert_eq!(
            problems,
            [
                "spec.http[0].fault.abort.percentage.value: percentage 101 is not in range 0..100",
                "spec.http[0].fault.abort.httpStatus: HTTP status 700 is not in range 200-599",
            ]
        );
        let (out, problems) = translate("abort: {grpcStatus: BROKEN}");
        assert!(out.is_none() && problems[0].contains("\"BROKEN\" is not supported"), "{problems:?}");
        let (out, problems) = translate("delay: {exponentialDelay: 1s}");
        assert!(out.is_none() && problems[0].ends_with("exponentialDelay not supported yet"), "{problems:?}");
    }
}
