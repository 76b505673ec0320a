//! `corsPolicy` → the route's CORS settings, with Istio's validation (`validateCORSPolicy`)
//! and translation (`TranslateCORSPolicy`: lists joined with `,`, `maxAge` in whole seconds).

use super::routes::{string_match, RegexChecks};
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::CorsPolicy;
use crate::schema::CompactString;
use crate::snapshot::{Cors, StringMatch};

/// Istio's `supportedCORSMethods`.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"];

/// The route's CORS settings, or `None` with the problem reported.
pub(super) fn cors(
    policy: &CorsPolicy,
    field: &str,
    regexes: &RegexChecks,
    problems: &mut Vec<Diagnostic>,
) -> Option<Box<Cors>> {
    let before = problems.len();
    let error = |at: String, message: String, problems: &mut Vec<Diagnostic>| {
        problems.push(Diagnostic::error(codes::SCHEMA, at, message));
    };
    let mut allow_origins = Vec::new();
    for (i, origin) in policy.allow_origins.iter().enumerate() {
        let at = format!("{field}.allowOrigins[{i}]");
        match string_match(origin, &at, false, regexes, problems) {
            Ok(Some(m)) if !matcher_text(&m).is_empty() => allow_origins.push(m),
            Ok(_) => error(at, "'' is not a valid match type for CORS allow origins".into(), problems),
            Err(()) => {}
        }
    }
    if policy.allow_origins.is_empty() {
        // The deprecated `allowOrigin`: exact origins.
        allow_origins.extend(policy.allow_origin.iter().map(|o| StringMatch::Exact(CompactString::from(&**o))));
    }
    for (i, method) in policy.allow_methods.iter().enumerate() {
        if !METHODS.contains(&&**method) {
            error(format!("{field}.allowMethods[{i}]"), format!("{method:?} is not a supported HTTP method"), problems);
        }
    }
    for (list, name) in [(&policy.allow_headers, "allowHeaders"), (&policy.expose_headers, "exposeHeaders")] {
        for (i, header) in list.iter().enumerate() {
            let at = format!("{field}.{name}[{i}]");
            if header.is_empty() {
                error(at, "header name cannot be empty".into(), problems);
            } else if &**header != "*" && http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                error(at, format!("header name {header} is not a valid header name"), problems);
            }
        }
    }
    let max_age_seconds = match &policy.max_age {
        None => None,
        Some(text) => match super::duration_ms(text, 0) {
            Ok(ms) if ms % 1000 != 0 => {
                error(
                    format!("{field}.maxAge"),
                    "max_age duration is accurate only to seconds precision".into(),
                    problems,
                );
                None
            }
            Ok(ms) => Some(u64::from(ms / 1000)),
            Err(message) => {
                error(format!("{field}.maxAge"), message, problems);
                None
            }
        },
    };
    let answer_unmatched_preflights = match policy.unmatched_preflights.as_deref() {
        None | Some("UNSPECIFIED" | "FORWARD") => false,
        Some("IGNORE") => true,
        Some(other) => {
            error(
                format!("{field}.unmatchedPreflights"),
                format!("{other:?} is not one of UNSPECIFIED, FORWARD, IGNORE"),
                problems,
            );
            false
        }
    };
    if problems[before..].iter().any(Diagnostic::is_error) {
        return None;
    }
    let join = |list: &[Box<str>]| CompactString::from(list.join(","));
    Some(Box::new(Cors {
        allow_origins: crate::memory::boxed(allow_origins),
        allow_methods: join(&policy.allow_methods),
        allow_headers: join(&policy.allow_headers),
        expose_headers: join(&policy.expose_headers),
        max_age_seconds,
        allow_credentials: policy.allow_credentials.unwrap_or(false),
        answer_unmatched_preflights,
    }))
}

fn matcher_text(m: &StringMatch) -> &str {
    match m {
        StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Regex(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Option<Box<Cors>>, Vec<String>) {
        let policy: CorsPolicy = serde_norway::from_str(yaml).expect("cors yaml");
        let mut problems = Vec::new();
        let out = cors(&policy, "spec.http[0].corsPolicy", &RegexChecks::default(), &mut problems);
        (out, problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect())
    }

    /// The policy of Istio's API reference example.
    #[test]
    fn istio_reference_example() {
        let (out, problems) = run(
            "{allowOrigins: [{exact: 'https://example.com'}], allowMethods: [POST, GET], allowCredentials: false, \
             allowHeaders: [X-Foo-Bar], maxAge: 24h}",
        );
        let cors = out.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(&*cors.allow_origins, &[StringMatch::Exact("https://example.com".into())]);
        assert_eq!((cors.allow_methods.as_str(), cors.allow_headers.as_str()), ("POST,GET", "X-Foo-Bar"));
        assert_eq!(
            (cors.max_age_seconds, cors.allow_credentials, cors.answer_unmatched_preflights),
            (Some(86400), false, false)
        );
        let (out, _) = run("{allowOrigin: ['https://a.example'], unmatchedPreflights: IGNORE}");
        let cors = out.unwrap();
        assert_eq!(&*cors.allow_origins, &[StringMatch::Exact("https://a.example".into())]);
        assert!(cors.answer_unmatched_preflights);
    }

    #[test]
    fn istio_validation_errors() {
        for (yaml, expected) in [
            ("{allowOrigins: [{exact: ''}]}", "spec.http[0].corsPolicy.allowOrigins[0]: '' is not a valid match type"),
            ("{allowOrigins: [{regex: '('}]}", "spec.http[0].corsPolicy.allowOrigins[0].regex: invalid RE2 regex"),
            (
                "{allowMethods: [GET, FETCH]}",
                "spec.http[0].corsPolicy.allowMethods[1]: \"FETCH\" is not a supported HTTP method",
            ),
            (
                "{allowHeaders: ['bad header']}",
                "spec.http[0].corsPolicy.allowHeaders[0]: header name bad header is not a valid header name",
            ),
            ("{exposeHeaders: ['']}", "spec.http[0].corsPolicy.exposeHeaders[0]: header name cannot be empty"),
            ("{maxAge: 1.5s}", "spec.http[0].corsPolicy.maxAge: max_age duration is accurate only to seconds"),
            ("{unmatchedPreflights: DROP}", "spec.http[0].corsPolicy.unmatchedPreflights: \"DROP\" is not one of"),
        ] {
            let (out, problems) = run(yaml);
            assert!(out.is_none(), "{yaml}");
            assert!(problems.iter().any(|p| p.starts_with(expected)), "{yaml}: {problems:?}");
        }
    }
}
