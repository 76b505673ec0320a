//! Host names and host patterns as Istio and Envoy read them: an exact name, `*.suffix` or
//! `*`, lowercase. One module for the translation (which hosts of a VirtualService meet a
//! Gateway server's) and the gateway (which virtual host or TLS server a request or SNI gets).

use compact_str::CompactString;
use foldhash::HashMap;

/// One pattern, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPattern<'a> {
    /// `*`: every host (and clients that send no SNI).
    Any,
    /// `*.example.com`, held as `.example.com`: names below it, not `example.com` itself.
    Suffix(&'a str),
    Exact(&'a str),
}

impl<'a> HostPattern<'a> {
    pub fn parse(pattern: &'a str) -> HostPattern<'a> {
        match pattern.strip_prefix('*') {
            Some("") => HostPattern::Any,
            Some(suffix) => HostPattern::Suffix(suffix),
            None => HostPattern::Exact(pattern),
        }
    }

    /// How specifically this pattern matches the name `host`, for "most specific wins":
    /// exact beats the longest suffix, which beats `*`. `None` when it does not match.
    pub fn specificity(self, host: &str) -> Option<usize> {
        match self {
            HostPattern::Exact(e) => (e == host).then_some(usize::MAX),
            HostPattern::Suffix(s) => (host.len() > s.len() && host.ends_with(s)).then_some(s.len() + 1),
            HostPattern::Any => Some(0),
        }
    }
}

/// Does `pattern` cover `host`, which may itself be a pattern? `*.example.com` covers
/// `a.example.com` and `*.a.example.com`, not `example.com`; only `*` covers `*`.
pub fn covers(pattern: &str, host: &str) -> bool {
    match (HostPattern::parse(pattern), HostPattern::parse(host)) {
        (HostPattern::Any, _) => true,
        (_, HostPattern::Any) => false,
        (HostPattern::Suffix(p), HostPattern::Suffix(h)) => h.ends_with(p),
        (p, HostPattern::Exact(h)) => p.specificity(h).is_some(),
        (HostPattern::Exact(_), HostPattern::Suffix(_)) => false,
    }
}

/// The more specific of two overlapping patterns, as Istio names the virtual hosts of a
/// VirtualService bound to a Gateway server; `None` when they do not overlap.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    if covers(a, b) {
        Some(b.to_string())
    } else if covers(b, a) {
        Some(a.to_string())
    } else {
        None
    }
}

/// Values by host pattern, looked up by a concrete name the way Envoy picks a virtual host:
/// the exact name, then the longest `*.suffix`, then `*`. Built once per snapshot; a lookup
/// hashes the name once and does not allocate.
#[derive(Debug, Clone)]
pub struct HostMap<T> {
    exact: HashMap<CompactString, T>,
    /// Suffixes with their leading dot, longest first.
    suffixes: Vec<(CompactString, T)>,
    any: Option<T>,
}

impl<T> Default for HostMap<T> {
    fn default() -> Self {
        HostMap { exact: HashMap::default(), suffixes: Vec::new(), any: None }
    }
}

impl<T> HostMap<T> {
    /// Adds `value` for `pattern` (lowercase); a later value for the same pattern replaces it.
    pub fn insert(&mut self, pattern: &str, value: T) {
        match HostPattern::parse(pattern) {
            HostPattern::Any => self.any = Some(value),
            HostPattern::Exact(name) => {
                self.exact.insert(name.into(), value);
            }
            HostPattern::Suffix(suffix) => {
                if let Some(slot) = self.suffixes.iter_mut().find(|(s, _)| s == suffix) {
                    slot.1 = value;
                    return;
                }
                // Longest first; among equal lengths, in insertion order.
                let at = self.suffixes.iter().position(|(s, _)| s.len() < suffix.len()).unwrap_or(self.suffixes.len());
                self.suffixes.insert(at, (suffix.into(), value));
            }
        }
    }

    /// The value for `host` (lowercase, without port), with its specificity.
    pub fn find_ranked(&self, host: &str) -> Option<(usize, &T)> {
        if let Some(v) = self.exact.get(host) {
            return Some((usize::MAX, v));
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(suffix, v)| (suffix.len() + 1, v))
            .or(self.any.as_ref().map(|v| (0, v)))
    }

    pub fn find(&self, host: &str) -> Option<&T> {
        self.find_ranked(host).map(|(_, v)| v)
    }

    /// The value of an exact name, not looked up through the patterns.
    pub fn exact(&self, host: &str) -> Option<&T> {
        self.exact.get(host)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty() && self.any.is_none()
    }
}

impl<'a, S: AsRef<str> + 'a> FromIterator<&'a S> for HostMap<()> {
    /// A set of patterns (SNI names of a server or a tls route).
    fn from_iter<I: IntoIterator<Item = &'a S>>(patterns: I) -> HostMap<()> {
        let mut out = HostMap::default();
        for p in patterns {
            out.insert(p.as_ref(), ());
        }
        out
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
    fn lookup_prefers_exact_then_the_longest_suffix_then_any() {
        let mut map = HostMap::default();
        map.insert("*", "any");
        map.insert("*.example.com", "short");
        map.insert("*.a.example.com", "long");
        map.insert("x.a.example.com", "exact");
        assert_eq!(map.find("x.a.example.com"), Some(&"exact"));
        assert_eq!(map.find("y.a.example.com"), Some(&"long"));
        assert_eq!(map.find("b.example.com"), Some(&"short"));
        assert_eq!(map.find("example.com"), Some(&"any"), "a suffix does not cover its own domain");
        assert_eq!(map.find_ranked("y.a.example.com").map(|(r, _)| r), Some(".a.example.com".len() + 1));
        map.insert("*.example.com", "replaced");
        assert_eq!(map.find("b.example.com"), Some(&"replaced"));
        let set: HostMap<()> = ["a.com".to_string(), "*.b.com".to_string()].iter().collect();
        assert!(set.find("a.com").is_some() && set.find("x.b.com").is_some() && set.find("c.com").is_none());
        assert!(HostMap::<()>::default().is_empty());
    }
}
