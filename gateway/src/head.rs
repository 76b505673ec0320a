//! Readers over the request head, allocation-free where the request path needs it: routing
//! and telemetry both read the head through these.

use http::HeaderName;
use pingora_http::RequestHeader;
use std::borrow::Cow;

// Names the proxy writes and telemetry reads, built once: a `&str` name is parsed (and
// lower-cased) on every lookup, and copied into a new allocation on every insert.
/// Envoy's request id header.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// `Host` (HTTP/1) or the URI authority (HTTP/2).
pub(crate) fn authority(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// Host without `:port` (IPv6 literals keep their brackets), as Istio gateways match it.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

pub(crate) fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

pub(crate) fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

pub(crate) fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
    })
}

/// `request_protocol` label: Istio reports `http` or `grpc`.
pub(crate) fn protocol_label(req: &RequestHeader) -> &'static str {
    let grpc = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        "grpc"
    } else {
        "http"
    }
}

/// Envoy's %PROTOCOL%.
pub(crate) fn protocol_name(req: &RequestHeader) -> &'static str {
    match req.version {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("demoapp.magedu.com:32070"), "demoapp.magedu.com");
        assert_eq!(strip_port("demoapp.magedu.com"), "demoapp.magedu.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn cookies_and_query() {
        let mut req = RequestHeader::build("GET", b"/x?user=7&b", None).unwrap();
        req.insert_header("cookie", "a=1; session=\"abc\"").unwrap();
        assert_eq!(cookie(&req, "session"), Some("abc"));
        assert_eq!(cookie(&req, "missing"), None);
        assert_eq!(query_param(&req, "user"), Some("7"));
        assert_eq!(query_param(&req, "b"), Some(""));
        assert_eq!(query_param(&req, "c"), None);
    }
}
