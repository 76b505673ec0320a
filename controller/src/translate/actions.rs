//! Route actions: `redirect` and `directResponse`, which the gateway answers itself, and
//! `rewrite` and `headers`, checked as Istio's validation checks them (`validateHTTPRedirect`,
//! `validateHTTPDirectResponse`, `validateHTTPRewrite`, `validateHTTPHeaderOperations`).

use super::routes::RegexChecks;
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{DerivePort, HeaderOperations, Headers, HttpDirectResponse, HttpRedirect, HttpRewrite};
use crate::snapshot::{
    DirectResponse, HeaderEdits, HeaderOps, Redirect, RedirectPort, RegexRewrite, Rewrite, RouteAction,
};
use base64::Engine;
use compact_str::CompactString;

/// Envoy refuses direct-response bodies past its `max_direct_response_body_size_bytes`; Istio
/// raises that to 1 MiB.
const MAX_DIRECT_BODY: usize = 1024 * 1024;

/// Whether `text` can stand as a URL's `host[:port]` (no path, query, fragment or user).
fn is_authority(text: &str) -> bool {
    !text.is_empty() && !text.bytes().any(|b| b.is_ascii_whitespace() || b"/?#@".contains(&b))
}

/// `redirect` at `field`, or `None` with the problem reported.
/// `redirect` at `field`; `prefix_matches_only` says whether every match block of the route
/// that has a uri condition matches a prefix (`prefixRewrite` needs it).
pub(super) fn redirect(
    r: &HttpRedirect,
    prefix_matches_only: bool,
    field: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<RouteAction> {
    let mut error = |at: &str, message: String| {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}{at}"), message));
    };
    if r.uri.is_none()
        && r.prefix_rewrite.is_none()
        && r.authority.is_none()
        && r.scheme.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        error("", "a redirect must set uri, prefixRewrite, authority, scheme, port or derivePort".into());
        return None;
    }
    if r.uri.is_some() && r.prefix_rewrite.is_some() {
        error(".prefixRewrite", "redirect may only specify one of uri or prefix_rewrite".into());
        return None;
    }
    if r.prefix_rewrite.is_some() && !prefix_matches_only {
        error(".prefixRewrite", "redirect prefix_rewrite requires all URI matches to use prefix match type".into());
        return None;
    }
    let code = match r.redirect_code {
        None | Some(0) => 301,
        Some(c @ 300..=399) => c as u16,
        Some(c) => {
            error(".redirectCode", format!("{c} is not a redirect code (3xx)"));
            return None;
        }
    };
    let port = match (r.port, r.derive_port) {
        (Some(_), Some(_)) => {
            error("", "port and derivePort are alternatives: set one".into());
            return None;
        }
        (Some(p), None) => match u16::try_from(p) {
            Ok(p) if p > 0 => RedirectPort::Port(p),
            _ => {
                error(".port", format!("{p} is not a port"));
                return None;
            }
        },
        (None, Some(DerivePort::FromProtocolDefault)) | (None, None) => RedirectPort::Unset,
        (None, Some(DerivePort::FromRequestPort)) => RedirectPort::Listener,
    };
    if let Some(uri) = r.uri.as_deref() {
        if !uri.starts_with('/') || uri.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            error(".uri", format!("{uri:?} is not a path (it starts with / and has no spaces)"));
            return None;
        }
    }
    if let Some(authority) = r.authority.as_deref() {
        if !is_authority(authority) {
            error(".authority", format!("{authority:?} is not a host[:port]"));
            return None;
        }
    }
    if let Some(scheme) = r.scheme.as_deref() {
        if scheme != "http" && scheme != "https" {
            error(".scheme", format!("invalid redirect scheme {scheme:?}, must be \"http\" or \"https\""));
            return None;
        }
    }
    if let Some(prefix) = r.prefix_rewrite.as_deref() {
        if prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            error(".prefixRewrite", format!("{prefix:?} is not a path prefix (no spaces)"));
            return None;
        }
    }
    Some(RouteAction::Redirect(Box::new(Redirect {
        path: r.uri.as_deref().map(Into::into),
        prefix_rewrite: r.prefix_rewrite.as_deref().map(Into::into),
        authority: r.authority.as_deref().map(Into::into),
        port,
        scheme: r.scheme.as_deref().map(Into::into),
        code,
    })))
}

/// `directResponse` at `field`, or `None` with the problem reported.
pub(super) fn direct_response(
    d: &HttpDirectResponse,
    field: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<RouteAction> {
    let mut error = |at: &str, message: String| {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}{at}"), message));
    };
    let status = match d.status {
        s @ 200..=599 => s as u16,
        s => {
            error(".status", format!("{s} is not a status a direct response may have (200 to 599)"));
            return None;
        }
    };
    let body = match d.body.as_ref().map(|b| (b.string.as_deref(), b.bytes.as_deref())) {
        None | Some((None, None)) => None,
        Some((Some(_), Some(_))) => {
            error(".body", "string and bytes are alternatives: set one".into());
            return None;
        }
        Some((Some(text), None)) => Some(text.as_bytes().to_vec()),
        Some((None, Some(encoded))) => match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                error(".body.bytes", format!("not base64: {e}"));
                return None;
            }
        },
    };
    if let Some(body) = &body {
        if body.len() > MAX_DIRECT_BODY {
            error(".body", format!("{} bytes is more than a direct response may carry (1 MiB)", body.len()));
            return None;
        }
    }
    Some(RouteAction::DirectResponse(Box::new(DirectResponse { status, body: body.map(Vec::into_boxed_slice) })))
}

/// `rewrite` at `field`, or `None` with the problem reported.
pub(super) fn rewrite(
    r: &HttpRewrite,
    field: &str,
    regexes: &RegexChecks,
    problems: &mut Vec<Diagnostic>,
) -> Option<Rewrite> {
    let mut error = |at: &str, message: String| {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}{at}"), message));
    };
    if r.uri.is_none() && r.authority.is_none() && r.uri_regex_rewrite.is_none() {
        error("", "a rewrite must set uri, uriRegexRewrite or authority".into());
        return None;
    }
    if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
        error("", "uri and uriRegexRewrite are alternatives: set one".into());
        return None;
    }
    if let Some(authority) = r.authority.as_deref() {
        if !is_authority(authority) {
            error(".authority", format!("{authority:?} is not a host[:port]"));
            return None;
        }
    }
    if let Some(uri) = r.uri.as_deref() {
        if uri.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#') {
            error(".uri", format!("{uri:?} is not a path"));
            return None;
        }
    }
    let uri_regex = match &r.uri_regex_rewrite {
        None => None,
        Some(rr) => {
            if rr.pattern.is_empty() {
                error(".uriRegexRewrite.match", "a pattern is required".into());
                return None;
            }
            if let Err(e) = regexes.check(&rr.pattern) {
                error(".uriRegexRewrite.match", format!("invalid regex: {e}"));
                return None;
            }
            Some(RegexRewrite { pattern: rr.pattern.as_str().into(), substitution: rr.rewrite.as_str().into() })
        }
    };
    Some(Rewrite {
        uri: r.uri.as_deref().map(Into::into),
        authority: r.authority.as_deref().map(Into::into),
        uri_regex,
    })
}

/// `headers` (of a route or a destination) at `field`, or `None` with the problem reported.
/// `:authority` is `host` (Istio turns a request `set` of either into the authority).
pub(super) fn headers(h: &Headers, field: &str, problems: &mut Vec<Diagnostic>) -> Option<Option<Box<HeaderEdits>>> {
    let edits = HeaderEdits {
        request: header_ops(h.request.as_ref(), &format!("{field}.request"), problems)?,
        response: header_ops(h.response.as_ref(), &format!("{field}.response"), problems)?,
    };
    Some((!edits.request.is_empty() || !edits.response.is_empty()).then(|| Box::new(edits)))
}

fn header_ops(ops: Option<&HeaderOperations>, field: &str, problems: &mut Vec<Diagnostic>) -> Option<HeaderOps> {
    let Some(ops) = ops else { return Some(HeaderOps::default()) };
    let name_of = |name: &str, at: String, problems: &mut Vec<Diagnostic>| -> Option<CompactString> {
        let lower = name.to_ascii_lowercase();
        let lower = if lower == ":authority" { "host".to_string() } else { lower };
        if lower.starts_with(':') || http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                at,
                format!("{name:?} is not a header name that may be edited"),
            ));
            return None;
        }
        Some(lower.into())
    };
    let pairs = |map: &std::collections::BTreeMap<String, String>, kind: &str, problems: &mut Vec<Diagnostic>| {
        let mut out = Vec::with_capacity(map.len());
        for (name, value) in map {
            let at = format!("{field}.{kind}.{name}");
            let name = name_of(name, at.clone(), problems)?;
            if http::HeaderValue::from_str(value).is_err() {
                problems.push(Diagnostic::error(codes::SCHEMA, at, "not a valid header value"));
                return None;
            }
            if value.contains('%') {
                problems.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    at,
                    "Envoy's %…% header formatters are not expanded: the value is sent as written",
                ));
            }
            out.push((name, CompactString::from(value.as_str())));
        }
        Some(crate::memory::boxed(out))
    };
    let set = pairs(&ops.set, "set", problems)?;
    let add = pairs(&ops.add, "add", problems)?;
    let mut remove = Vec::with_capacity(ops.remove.len());
    for (i, name) in ops.remove.iter().enumerate() {
        remove.push(name_of(name, format!("{field}.remove[{i}]"), problems)?);
    }
    Some(HeaderOps { remove: crate::memory::boxed(remove), set, add })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_norway::from_str(text).unwrap()
    }

    fn errors(problems: &[Diagnostic]) -> Vec<String> {
        problems.iter().map(|p| format!("{}: {}", p.field, p.message)).collect()
    }

    #[test]
    fn redirects_as_istio_validates_them() {
        let mut problems = Vec::new();
        let ok = redirect(
            &yaml("{uri: /v1/bookinfo, authority: newratings.default.svc.cluster.local}"),
            true,
            "r",
            &mut problems,
        );
        let Some(RouteAction::Redirect(r)) = ok else { panic!("{problems:?}") };
        assert_eq!((r.code, r.port), (301, RedirectPort::Unset));
        let Some(RouteAction::Redirect(r)) = redirect(
            &yaml("{scheme: https, derivePort: FROM_PROTOCOL_DEFAULT, redirectCode: 308}"),
            true,
            "r",
            &mut problems,
        ) else {
            panic!("{problems:?}")
        };
        assert_eq!((r.code, r.port, r.scheme.as_deref()), (308, RedirectPort::Unset, Some("https")));
        assert!(problems.is_empty());
        for (bad, field) in [
            ("{redirectCode: 302}", "r"),
            ("{uri: /a, redirectCode: 200}", "r.redirectCode"),
            ("{uri: /a, port: 70000}", "r.port"),
            ("{uri: /a, port: 8443, derivePort: FROM_REQUEST_PORT}", "r"),
            ("{uri: no-slash}", "r.uri"),
            ("{authority: 'a.com/x'}", "r.authority"),
            ("{scheme: HTTPS}", "r.scheme"),
            ("{scheme: ftp}", "r.scheme"),
            ("{uri: /a, prefixRewrite: /b}", "r.prefixRewrite"),
        ] {
            let mut problems = Vec::new();
            assert!(redirect(&yaml(bad), true, "r", &mut problems).is_none(), "{bad}");
            assert_eq!(problems.len(), 1, "{bad}: {:?}", errors(&problems));
            assert_eq!(problems[0].field, field, "{bad}: {:?}", errors(&problems));
        }
    }

    #[test]
    fn a_prefix_rewrite_needs_prefix_matches() {
        let mut problems = Vec::new();
        let Some(RouteAction::Redirect(r)) = redirect(&yaml("{prefixRewrite: /bar}"), true, "r", &mut problems) else {
            panic!("{problems:?}")
        };
        assert_eq!(r.prefix_rewrite.as_deref(), Some("/bar"));
        assert!(redirect(&yaml("{prefixRewrite: /bar}"), false, "r", &mut problems).is_none());
        assert_eq!(
            errors(&problems),
            ["r.prefixRewrite: redirect prefix_rewrite requires all URI matches to use prefix match type"]
        );
    }

    #[test]
    fn rewrites_as_istio_validates_them() {
        let regexes = RegexChecks::default();
        let mut problems = Vec::new();
        let r = rewrite(
            &yaml("{uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\\2/instance/\\1'}}"),
            "w",
            &regexes,
            &mut problems,
        );
        let r = r.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(r.uri_regex.unwrap().substitution.as_str(), "\\2/instance/\\1");
        assert!(rewrite(&yaml("{uri: /, authority: b.example.com}"), "w", &regexes, &mut problems).is_some());
        assert!(problems.is_empty());
        for (bad, field) in [
            ("{}", "w"),
            ("{uri: /a, uriRegexRewrite: {match: a, rewrite: b}}", "w"),
            ("{uriRegexRewrite: {match: '(', rewrite: b}}", "w.uriRegexRewrite.match"),
            ("{authority: 'a b'}", "w.authority"),
            ("{uri: '/a?b'}", "w.uri"),
        ] {
            let mut problems = Vec::new();
            assert!(rewrite(&yaml(bad), "w", &regexes, &mut problems).is_none(), "{bad}");
            assert_eq!(problems[0].field, field, "{bad}: {:?}", errors(&problems));
        }
    }

    #[test]
    fn header_edits_as_istio_validates_them() {
        let mut problems = Vec::new();
        let h = headers(
            &yaml("{request: {set: {X-Env: prod, ':authority': a.example.com}, remove: [Cookie]}, response: {add: {x-served-by: mg}}}"),
            "h",
            &mut problems,
        );
        let h = h.unwrap().unwrap();
        assert!(problems.is_empty(), "{:?}", errors(&problems));
        let set: Vec<_> = h.request.set.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(set, [("host", "a.example.com"), ("x-env", "prod")]);
        assert_eq!(&*h.request.remove, ["cookie"]);
        assert_eq!(h.response.add.len(), 1);
        assert!(headers(&yaml("{request: {}}"), "h", &mut problems).unwrap().is_none(), "nothing to do");
        for (bad, field) in [
            ("{request: {set: {'bad name': x}}}", "h.request.set.bad name"),
            ("{request: {remove: [':path']}}", "h.request.remove[0]"),
            ("{response: {add: {x: \"a\\nb\"}}}", "h.response.add.x"),
        ] {
            let mut problems = Vec::new();
            assert!(headers(&yaml(bad), "h", &mut problems).is_none(), "{bad}");
            assert_eq!(problems[0].field, field, "{bad}: {:?}", errors(&problems));
        }
        let mut problems = Vec::new();
        headers(&yaml("{request: {set: {x-client: '%DOWNSTREAM_REMOTE_ADDRESS%'}}}"), "h", &mut problems).unwrap();
        assert_eq!(problems[0].code, codes::UNSUPPORTED);
    }

    #[test]
    fn direct_responses_as_istio_validates_them() {
        let mut problems = Vec::new();
        let Some(RouteAction::DirectResponse(d)) =
            direct_response(&yaml("{status: 503, body: {string: unknown path}}"), "d", &mut problems)
        else {
            panic!("{problems:?}")
        };
        assert_eq!((d.status, d.body.as_deref()), (503, Some(&b"unknown path"[..])));
        let Some(RouteAction::DirectResponse(d)) =
            direct_response(&yaml("{status: 200, body: {bytes: aGVsbG8=}}"), "d", &mut problems)
        else {
            panic!("{problems:?}")
        };
        assert_eq!(d.body.as_deref(), Some(&b"hello"[..]));
        let Some(RouteAction::DirectResponse(d)) = direct_response(&yaml("{status: 204}"), "d", &mut problems) else {
            panic!("{problems:?}")
        };
        assert_eq!(d.body, None);
        assert!(problems.is_empty());
        for (bad, field) in [
            ("{status: 100}", "d.status"),
            ("{status: 600}", "d.status"),
            ("{status: 200, body: {string: a, bytes: YQ==}}", "d.body"),
            ("{status: 200, body: {bytes: '!!'}}", "d.body.bytes"),
        ] {
            let mut problems = Vec::new();
            assert!(direct_response(&yaml(bad), "d", &mut problems).is_none(), "{bad}");
            assert_eq!(problems[0].field, field, "{bad}: {:?}", errors(&problems));
        }
    }
}
