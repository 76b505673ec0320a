//! Host name rules shared by Gateways and VirtualServices: exact names, `*.suffix` wildcards and
//! `*`, compared case-insensitively.

/// Does `pattern` (exact, `*.suffix` or `*`) cover `host` (which may itself be a wildcard)?
pub fn covers(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if host == "*" {
        return false;
    }
    match (pattern.strip_prefix('*'), host.strip_prefix('*')) {
        // *.example.com covers a.example.com and *.a.example.com, not example.com.
        (Some(psuffix), Some(hsuffix)) => hsuffix.ends_with(psuffix),
        (Some(psuffix), None) => host.len() > psuffix.len() && host.ends_with(psuffix),
        (None, Some(_)) => false,
        (None, None) => pattern == host,
    }
}

/// The hosts two host sets share: the more specific of each overlapping pair, as Istio
/// computes the virtual host names of a VirtualService bound to a Gateway server.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

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
    fn wildcard_coverage() {
        assert!(covers("*", "a.b"));
        assert!(covers("*", "*"));
        assert!(covers("*.magedu.com", "demoapp.magedu.com"));
        assert!(covers("*.magedu.com", "*.a.magedu.com"));
        assert!(!covers("*.magedu.com", "magedu.com"));
        assert!(!covers("demoapp.magedu.com", "*.magedu.com"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.c"));
        assert!(!covers("*.b", "*"));
    }

    #[test]
    fn intersection_keeps_the_more_specific() {
        assert_eq!(intersect("*", "demoapp.magedu.com").as_deref(), Some("demoapp.magedu.com"));
        assert_eq!(intersect("demoapp.magedu.com", "*").as_deref(), Some("demoapp.magedu.com"));
        assert_eq!(intersect("*.magedu.com", "*").as_deref(), Some("*.magedu.com"));
        assert_eq!(intersect("*.magedu.com", "kiali.magedu.com").as_deref(), Some("kiali.magedu.com"));
        assert_eq!(intersect("kiali.magedu.com", "grafana.magedu.com"), None);
    }

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
