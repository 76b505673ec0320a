//! Host name rules of the input resources: `ns/host` server hosts and short names. Pattern
//! coverage and intersection are the contract crate's (`meshgate_model::host`), shared with
//! the gateway's lookups.

pub use meshgate_model::host::{covers, intersect};

/// Splits a Gateway server host `ns/host` into a namespace filter and host. `./host` means
/// the Gateway's namespace; `*/host` and a bare `host` mean any namespace.
pub fn split_server_host<'a>(entry: &'a str, gateway_namespace: &'a str) -> (Option<&'a str>, &'a str) {
    match entry.split_once('/') {
        Some((".", host)) => (Some(gateway_namespace), host),
        Some(("*", host)) => (None, host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, entry),
    }
}

/// Resolves a destination or VirtualService host written as a short name in `namespace`:
/// `reviews` → `reviews.<ns>.svc.cluster.local`. Names with a dot and wildcards stay as
/// written, as Istio does.
pub fn resolve_short_name(host: &str, namespace: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host.contains('.') || host.contains('*') {
        host
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_host_namespaces() {
        assert_eq!(split_server_host("./a.com", "istio-system"), (Some("istio-system"), "a.com"));
        assert_eq!(split_server_host("*/a.com", "x"), (None, "a.com"));
        assert_eq!(split_server_host("prod/a.com", "x"), (Some("prod"), "a.com"));
        assert_eq!(split_server_host("a.com", "x"), (None, "a.com"));
    }

    #[test]
    fn short_names() {
        assert_eq!(resolve_short_name("reviews", "default"), "reviews.default.svc.cluster.local");
        assert_eq!(resolve_short_name("Reviews.prod", "default"), "reviews.prod");
        assert_eq!(resolve_short_name("*", "default"), "*");
    }
}
