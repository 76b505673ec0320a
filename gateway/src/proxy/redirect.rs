//! The `location` of a route's `redirect`: each part of the request's URL the redirect sets is
//! replaced, as Envoy's redirect action builds it from Istio's `HTTPRedirect`.

use crate::compiled::rewrite::UriPart;
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
    /// The port of the Gateway server the request came in on (`derivePort: FROM_REQUEST_PORT`).
    pub(super) server_port: u16,
    /// What the route's match block matched of the path (for `prefixRewrite`).
    pub(super) matched: UriPart,
}

/// Where `redirect` sends a request for `url`: Envoy's `newUri` with the redirect Istio
/// configures (`ApplyRedirect`).
pub(super) fn location(redirect: &Redirect, url: &RequestUrl<'_>) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(url.scheme);
    // Istio leaves a port that is the scheme's default out of the route.
    let port = match redirect.port {
        RedirectPort::Unset => None,
        RedirectPort::Listener => Some(url.server_port),
        RedirectPort::Port(p) => Some(p),
    }
    .filter(|&p| p != default_port(scheme));
    let host = match redirect.authority.as_deref() {
        // Taken as written: the request's port goes.
        Some(authority) => authority,
        None => {
            let (host, request_port) = split_port(url.authority);
            // Envoy's `processRequestHost`: a port of the redirect replaces the request's; a
            // scheme change drops the old scheme's default port.
            let old_default =
                scheme != url.scheme && request_port.and_then(|p| p.parse().ok()) == Some(default_port(url.scheme));
            if port.is_some() || old_default {
                host
            } else {
                url.authority
            }
        }
    };
    let (request_path, request_query) = match url.path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url.path_and_query, None),
    };
    let mut out = String::with_capacity(scheme.len() + host.len() + url.path_and_query.len() + 16);
    out.push_str(scheme);
    out.push_str("://");
    out.push_str(host);
    if let Some(p) = port {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(p));
    }
    match (redirect.path.as_deref(), redirect.prefix_rewrite.as_deref()) {
        // A path with a query of its own replaces the request's; otherwise the query stays.
        (Some(path), _) if path.contains('?') => out.push_str(path),
        (Some(path), _) => {
            out.push_str(path);
            if let Some(q) = request_query {
                out.push('?');
                out.push_str(q);
            }
        }
        // The matched prefix replaced; the rest of the path and the query stay.
        (None, Some(prefix)) => {
            out.push_str(prefix);
            out.push_str(match url.matched {
                UriPart::Prefix(len) => url.path_and_query.get(len..).unwrap_or(""),
                UriPart::Root => url.path_and_query.get(1..).unwrap_or(""),
                UriPart::Whole => request_query.map_or("", |_| &url.path_and_query[request_path.len()..]),
            });
        }
        (None, None) => out.push_str(url.path_and_query),
    }
    out
}

/// `host[:port]` as host (IPv6 literals keep their brackets) and port, if it has one.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let host = head::strip_port(authority);
    (host, authority[host.len()..].strip_prefix(':').filter(|p| !p.is_empty()))
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(path: Option<&str>, authority: Option<&str>, port: RedirectPort, scheme: Option<&str>) -> Redirect {
        Redirect {
            path: path.map(Into::into),
            prefix_rewrite: None,
            authority: authority.map(Into::into),
            port,
            scheme: scheme.map(Into::into),
            code: 301,
        }
    }

    fn at(scheme: &'static str, authority: &'static str, path_and_query: &'static str) -> RequestUrl<'static> {
        RequestUrl { scheme, authority, path_and_query, server_port: 8080, matched: UriPart::Root }
    }

    #[test]
    fn each_part_that_is_set_is_replaced() {
        use RedirectPort::*;
        let cases = [
            // Istio's reference: uri and authority; the request's port goes with its host.
            (
                redirect(Some("/v1/bookRatings"), Some("newratings.default.svc.cluster.local"), Unset, None),
                at("http", "ratings.example.com:8080", "/v1/getProductRatings?x=1"),
                "http://newratings.default.svc.cluster.local/v1/bookRatings?x=1",
            ),
            // The query of the redirect's own uri wins.
            (redirect(Some("/new?a=b"), None, Unset, None), at("http", "h", "/old?x=1"), "http://h/new?a=b"),
            // The request's port is kept…
            (redirect(Some("/n"), None, Unset, None), at("http", "h:8080", "/o"), "http://h:8080/n"),
            // …unless the scheme changes and it was the old default…
            (redirect(None, None, Unset, Some("https")), at("http", "h:80", "/o"), "https://h/o"),
            (redirect(None, None, Unset, Some("https")), at("http", "h:8080", "/o"), "https://h:8080/o"),
            // …or the redirect has a port: its own, or the Gateway server's (FROM_REQUEST_PORT).
            (redirect(None, None, Port(8443), Some("https")), at("http", "h:8080", "/o"), "https://h:8443/o"),
            // Istio drops a port that is the scheme's default from the route, so then the
            // request's port stays, as Envoy keeps it without a port of the redirect.
            (redirect(None, None, Port(443), Some("https")), at("http", "h:8080", "/o"), "https://h:8080/o"),
            (redirect(None, None, Port(443), Some("https")), at("http", "h", "/o"), "https://h/o"),
            (redirect(None, None, Port(80), None), at("http", "h:8080", "/o"), "http://h:8080/o"),
            (redirect(None, None, Listener, None), at("http", "h:9999", "/o"), "http://h:8080/o"),
            // An authority is taken as written; IPv6 literals keep brackets.
            (redirect(None, Some("b.com:9000"), Unset, None), at("http", "a.com:8080", "/"), "http://b.com:9000/"),
            (redirect(None, None, Port(81), None), at("http", "[::1]:8080", "/"), "http://[::1]:81/"),
        ];
        for (r, url, want) in cases {
            assert_eq!(location(&r, &url), want, "{r:?} {}", url.authority);
        }
    }

    #[test]
    fn a_prefix_rewrite_replaces_the_matched_prefix() {
        let r = Redirect { prefix_rewrite: Some("/bar".into()), ..redirect(None, None, RedirectPort::Unset, None) };
        let url = |path, matched| RequestUrl { matched, ..at("http", "h", path) };
        assert_eq!(location(&r, &url("/foo/baz?q=1", UriPart::Prefix(4))), "http://h/bar/baz?q=1");
        // Istio's note: `/` as the rewrite of a `/foo` match gives `//baz`.
        let slash = Redirect { prefix_rewrite: Some("/".into()), ..r.clone() };
        assert_eq!(location(&slash, &url("/foo/baz", UriPart::Prefix(4))), "http://h//baz");
        assert_eq!(location(&r, &url("/x", UriPart::Root)), "http://h/barx");
    }
}
