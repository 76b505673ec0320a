//! `mirror` with `mirrorPercentage` (or the legacy `mirrorPercent`), and `mirrors`: the
//! destinations a route copies its requests to, with Istio's validation (`validateHTTPRoute`,
//! `validateHTTPMirrors`) and shares (`MirrorPercent`, `MirrorPercentByPolicy`).

use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{Destination, HttpRouteRest};

/// A mirror destination before it is resolved to a cluster.
pub(super) struct Target<'a> {
    pub destination: &'a Destination,
    /// Share of requests copied, per million; targets at 0 % are left out, as Istio does.
    pub per_million: u32,
    /// Where the destination is written, for the resolution's diagnostics.
    pub field: String,
}

/// The route's mirror targets, or `None` with the problem reported.
pub(super) fn targets<'a>(
    rest: &'a HttpRouteRest,
    field: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Vec<Target<'a>>> {
    // Reported together at the end: every wrong field at once, as Istio's validation does.
    let mut errors = Vec::new();
    let mut error = |at: String, message: String| errors.push(Diagnostic::error(codes::SCHEMA, at, message));
    let mirrors = rest.mirrors.as_deref().unwrap_or_default();
    if rest.mirror.is_some() && !mirrors.is_empty() {
        error(format!("{field}.mirrors"), "HTTP route cannot contain both mirror and mirrors".into());
    }
    let mut out = Vec::new();
    if let Some(destination) = &rest.mirror {
        // Istio: `mirrorPercentage`, else the deprecated integer `mirrorPercent`, else 100 %.
        let share = match (&rest.mirror_percentage, rest.mirror_percent) {
            (Some(p), _) => super::per_million(*p)
                .map_err(|m| error(format!("{field}.mirrorPercentage.value"), format!("mirror_percentage {m}")))
                .unwrap_or(0),
            (None, Some(p)) => {
                problems.push(Diagnostic::warning(
                    codes::SCHEMA,
                    format!("{field}.mirrorPercent"),
                    "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
                ));
                if p > 100 {
                    error(
                        format!("{field}.mirrorPercent"),
                        format!("mirror_percent must have a max value of 100 (it has {p})"),
                    );
                }
                p.min(100) * 10_000
            }
            (None, None) => 1_000_000,
        };
        out.push(Target { destination, per_million: share, field: format!("{field}.mirror") });
    } else if rest.mirror_percentage.is_some() || rest.mirror_percent.is_some() {
        problems.push(Diagnostic::warning(
            codes::SCHEMA,
            format!("{field}.mirrorPercentage"),
            "a mirror percentage without a mirror does nothing (mirrors take their own percentage)",
        ));
    }
    for (i, m) in mirrors.iter().enumerate() {
        let at = format!("{field}.mirrors[{i}]");
        let share = match &m.percentage {
            None => 1_000_000,
            Some(p) => super::per_million(*p)
                .map_err(|msg| error(format!("{at}.percentage.value"), format!("mirror percentage {msg}")))
                .unwrap_or(0),
        };
        match &m.destination {
            Some(destination) => {
                out.push(Target { destination, per_million: share, field: format!("{at}.destination") })
            }
            None => error(format!("{at}.destination"), "destination is required for mirrors".into()),
        }
    }
    if !errors.is_empty() {
        problems.extend(errors);
        return None;
    }
    out.retain(|t| t.per_million > 0);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::istio::HttpRoute;

    fn run(yaml: &str) -> (Option<Vec<(String, u32)>>, Vec<String>) {
        let route: HttpRoute = serde_norway::from_str(yaml).expect("route yaml");
        let mut problems = Vec::new();
        let out = targets(route.rest(), "spec.http[0]", &mut problems)
            .map(|t| t.iter().map(|t| (t.destination.host.to_string(), t.per_million)).collect());
        (out, problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect())
    }

    #[test]
    fn shares_as_istio_computes_them() {
        let (out, problems) = run("{route: [{destination: {host: a}}], mirror: {host: b}}");
        assert_eq!(out, Some(vec![("b".into(), 1_000_000)]), "{problems:?}");
        let (out, _) = run("{route: [{destination: {host: a}}], mirror: {host: b}, mirrorPercentage: {value: 12.5}}");
        assert_eq!(out, Some(vec![("b".into(), 125_000)]));
        // Zero mirrors nothing.
        let (out, _) = run("{route: [{destination: {host: a}}], mirror: {host: b}, mirrorPercentage: {value: 0}}");
        assert_eq!(out, Some(vec![]));
        let (out, problems) = run("{route: [{destination: {host: a}}], mirror: {host: b}, mirrorPercent: 40}");
        assert_eq!(out, Some(vec![("b".into(), 400_000)]));
        assert!(problems[0].contains("deprecated"), "{problems:?}");
        let (out, _) = run(
            "{route: [{destination: {host: a}}], mirrors: [{destination: {host: b}}, {destination: {host: c}, percentage: {value: 50}}]}",
        );
        assert_eq!(out, Some(vec![("b".into(), 1_000_000), ("c".into(), 500_000)]));
    }

    #[test]
    fn istio_validation_errors() {
        for (yaml, expected) in [
            (
                "{mirror: {host: b}, mirrors: [{destination: {host: c}}]}",
                "spec.http[0].mirrors: HTTP route cannot contain both mirror and mirrors",
            ),
            (
                "{mirror: {host: b}, mirrorPercentage: {value: 101}}",
                "spec.http[0].mirrorPercentage.value: mirror_percentage",
            ),
            (
                "{mirror: {host: b}, mirrorPercent: 101}",
                "spec.http[0].mirrorPercent: mirror_percent must have a max value of 100",
            ),
            ("{mirrors: [{percentage: {value: 5}}]}", "spec.http[0].mirrors[0].destination: destination is required"),
            (
                "{mirrors: [{destination: {host: b}, percentage: {value: -1}}]}",
                "spec.http[0].mirrors[0].percentage.value: mirror percentage",
            ),
        ] {
            let (out, problems) = run(yaml);
            assert!(out.is_none(), "{yaml}");
            assert!(problems.iter().any(|p| p.starts_with(expected)), "{yaml}: {problems:?}");
        }
    }
}
