//! The `location` of a route's `redirect`: each part of the request's URL the redirect sets is
//! replaced, as Envoy's redirect action builds it from Istio's `HTTPRedirect`.

use crate::head;
use meshgate_model::snapshot::{Redirect, RedirectPort};

/// The request's URL as the redirect sees it.
pub(super) struct RequestUrl<'a> {
    /// `http` or `https`, as the client connected.
    pub(super) scheme: &'a str,
    /// Host as sent, port included when it had one.
    pub(super) authority: &'a str,
    /// Path and query as sent.
    pub(super) path_and_query: &'a str,
}

/// Where `redirect` sends a request for `url`.
pub(super) fn location(redirect: &Redirect, url: &RequestUrl<'_>) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(url.scheme);
    let (request_host, request_port) = split_port(url.authority);
    // An authority with its own port replaces both.
    let (host, authority_port) = match redirect.authority.as_deref() {
        Some(a) => split_port(a),
        None => (request_host, None),
    };
    let port = match redirect.port {
        RedirectPort::Port(p) => Some(p.to_string()),
        RedirectPort::SchemeDefault => None,
        RedirectPort::Request => match authority_port.or(request_port) {
            // A port that was only the old scheme's default goes with it (Envoy's rule).
            Some(p) if scheme != url.scheme && p == default_port(url.scheme) => None,
            p => p.map(str::to_string),
        },
    };
    let (request_path, request_query) = match url.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url.path_and_query, None),
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + url.path_and_query.len() + 16);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    if let Some(p) = &port {
        out.push(':');
        out.push_str(p);
    }
    match redirect.path.as_deref() {
        // A path with a query of its own replaces the request's; otherwise the query stays.
        Some(path) if path.contains('?') => out.push_str(path),
        path => {
            out.push_str(path.unwrap_or(request_path));
            if let Some(q) = request_query {
                out.push('?');
                out.push_str(q);
            }
        }
    }
    out
}

/// `host[:port]` as host (IPv6 literals keep their brackets) and port, if it has one.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host = head::strip_port(authority);
    (host, authority[host.len()..].strip_prefix(':').filter(|p| !p.is_empty()))
}

fn default_port(scheme: &str) -> &'static str {
    if scheme == "https" {
        "443"
    } else {
        "80"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(path: Option<&str>, authority: Option<&str>, port: RedirectPort, scheme: Option<&str>) -> Redirect {
        Redirect {
            path: path.map(Into::into),
            authority: authority.map(Into::into),
            port,
            scheme: scheme.map(Into::into),
            code: 301,
        }
    }

    fn at(scheme: &'static str, authority: &'static str, path_and_query: &'static str) -> RequestUrl<'static> {
        RequestUrl { scheme, authority, path_and_query }
    }

    #[test]
    fn each_part_that_is_set_is_replaced() {
        use RedirectPort::*;
        let cases = [
            // Istio's task: uri and authority.
            (
                redirect(Some("/v1/bookinfo"), Some("newratings.default.svc.cluster.local"), Request, None),
                at("http", "ratings.example.com", "/v1/getProductRatings?x=1"),
                "http://newratings.default.svc.cluster.local/v1/bookinfo?x=1",
            ),
            // The query of the redirect's own uri wins.
            (redirect(Some("/new?a=b"), None, Request, None), at("http", "h", "/old?x=1"), "http://h/new?a=b"),
            // The request's port is kept…
            (redirect(Some("/n"), None, Request, None), at("http", "h:8080", "/o"), "http://h:8080/n"),
            // …unless the scheme changes and it was the old default…
            (redirect(None, None, Request, Some("https")), at("http", "h:80", "/o"), "https://h/o"),
            (redirect(None, None, Request, Some("https")), at("http", "h:8080", "/o"), "https://h:8080/o"),
            // …or derivePort: FROM_PROTOCOL_DEFAULT, or a port of its own.
            (redirect(None, None, SchemeDefault, Some("https")), at("http", "h:8080", "/o"), "https://h/o"),
            (redirect(None, None, Port(8443), Some("https")), at("http", "h:8080", "/o"), "https://h:8443/o"),
            // An authority with a port replaces host and port; IPv6 literals keep brackets.
            (redirect(None, Some("b.com:9000"), Request, None), at("http", "a.com:8080", "/"), "http://b.com:9000/"),
            (redirect(None, None, Port(81), None), at("http", "[::1]:8080", "/"), "http://[::1]:81/"),
        ];
        for (r, url, want) in cases {
            assert_eq!(location(&r, &url), want, "{r:?} {}", url.authority);
        }
    }
}
