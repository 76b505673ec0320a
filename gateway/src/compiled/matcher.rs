//! Compiled route matchers. Regexes are compiled once per snapshot; matching never allocates
//! for the common cases (exact and prefix on path and headers; a header sent several times is
//! the one case that joins its values into a new string, as Envoy matches it).

use http::HeaderMap;
use meshgate_model::snapshot::{KeyMatch, RouteMatch, StringMatch};
use regex::Regex;
use std::sync::Arc;

/// What a route match looks at, borrowed from the request.
pub(crate) struct RequestView<'a> {
    /// `:path` as received, query included.
    pub(crate) path: &'a str,
    pub(crate) method: &'a str,
    pub(crate) scheme: &'a str,
    /// `Host` (HTTP/1) or `:authority` (HTTP/2) as the client sent it, port and case kept:
    /// Istio turns an `authority` match into an Envoy header match on `:authority`, which sees
    /// the raw value (only virtual host selection ignores the port).
    pub(crate) authority: &'a str,
    pub(crate) headers: &'a HeaderMap,
    /// The Gateway server port the request arrived on.
    pub(crate) port: u16,
}

impl RequestView<'_> {
    fn path_without_query(&self) -> &str {
        self.query_start().map_or(self.path, |i| &self.path[..i])
    }

    fn query(&self) -> &str {
        self.query_start().map_or("", |i| &self.path[i + 1..])
    }

    /// Where `?` is. A plain byte loop: paths are short, and `split_once('?')` paid for its
    /// general char searcher's setup on every exact or regex match.
    fn query_start(&self) -> Option<usize> {
        self.path.bytes().position(|b| b == b'?')
    }
}

#[derive(Debug)]
pub(crate) enum Matcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    /// Case-insensitive variants hold the lowercase pattern.
    ExactNoCase(Box<str>),
    PrefixNoCase(Box<str>),
    Regex(Arc<Regex>),
}

/// Compiled regexes by pattern, shared across one snapshot's routes: configs repeat patterns.
/// Shared by `Arc` rather than `Regex::clone`, which shares the program but builds a new
/// matching-cache pool (about 2 KB) per clone: 20 MB for 10k routes with the same pattern.
#[derive(Default)]
pub(crate) struct RegexCache(std::collections::HashMap<String, Arc<Regex>>);

impl RegexCache {
    pub(crate) fn get(&mut self, pattern: String) -> Result<Arc<Regex>, regex::Error> {
        if let Some(r) = self.0.get(&pattern) {
            return Ok(r.clone());
        }
        let r = Arc::new(Regex::new(&pattern)?);
        self.0.insert(pattern, r.clone());
        Ok(r)
    }
}

impl Matcher {
    pub(crate) fn compile(m: &StringMatch, ignore_case: bool, cache: &mut RegexCache) -> Result<Matcher, regex::Error> {
        Ok(match (m, ignore_case) {
            (StringMatch::Exact(s), false) => Matcher::Exact(s.as_str().into()),
            (StringMatch::Prefix(s), false) => Matcher::Prefix(s.as_str().into()),
            (StringMatch::Exact(s), true) => Matcher::ExactNoCase(s.to_ascii_lowercase().into()),
            (StringMatch::Prefix(s), true) => Matcher::PrefixNoCase(s.to_ascii_lowercase().into()),
            // Envoy's safe_regex must match the whole value; anchor explicitly.
            (StringMatch::Regex(r), ci) => {
                let flags = if ci { "(?i)" } else { "" };
                Matcher::Regex(cache.get(format!("{flags}^(?:{r})$"))?)
            }
        })
    }

    pub(crate) fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == &**s,
            Matcher::Prefix(s) => value.starts_with(&**s),
            Matcher::ExactNoCase(s) => value.eq_ignore_ascii_case(s),
            Matcher::PrefixNoCase(s) => {
                value.len() >= s.len() && value.is_char_boundary(s.len()) && value[..s.len()].eq_ignore_ascii_case(s)
            }
            Matcher::Regex(r) => r.is_match(value),
        }
    }

    fn is_prefix(&self) -> bool {
        matches!(self, Matcher::Prefix(_) | Matcher::PrefixNoCase(_))
    }
}

#[derive(Debug)]
struct Keyed {
    name: meshgate_model::CompactString,
    /// `name` as a header name, parsed once: a lookup by `&str` parses and lower-cases it on
    /// every request. `None` for a name no header can have, which then never matches.
    header: Option<http::HeaderName>,
    value: Option<Matcher>,
}

impl Keyed {
    fn compile(k: &KeyMatch, cache: &mut RegexCache) -> Result<Keyed, regex::Error> {
        Ok(Keyed {
            name: k.name.clone(),
            header: http::HeaderName::from_bytes(k.name.as_bytes()).ok(),
            value: k.value.as_ref().map(|v| Matcher::compile(v, false, cache)).transpose()?,
        })
    }
}

/// One Istio `HTTPMatchRequest`: every condition must hold. Only the conditions the match
/// sets are kept, in the order they are checked: most matches set one or two of Istio's eight
/// fields, and a struct with a slot for each was ~160 bytes per match (6 MB of a 10k-service
/// runtime, docs/benchmarks.md "Fifth round").
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    conditions: Box<[Condition]>,
}

#[derive(Debug)]
enum Condition {
    Port(u16),
    Uri(Matcher),
    Method(Matcher),
    Scheme(Matcher),
    Authority(Matcher),
    // Boxed: a header name with its parsed form is three times the other variants.
    Header(Box<Keyed>),
    WithoutHeader(Box<Keyed>),
    QueryParam(Box<Keyed>),
}

impl CompiledMatch {
    pub(crate) fn compile(m: &RouteMatch, cache: &mut RegexCache) -> Result<CompiledMatch, regex::Error> {
        let mut conditions = Vec::new();
        if let Some(port) = m.port {
            conditions.push(Condition::Port(port));
        }
        let mut string = |value: &Option<Box<StringMatch>>, ignore_case, condition: fn(Matcher) -> Condition| {
            value.as_ref().map(|v| Matcher::compile(v, ignore_case, cache).map(condition)).transpose()
        };
        let strings = [
            string(&m.uri, m.ignore_uri_case, Condition::Uri)?,
            string(&m.method, false, Condition::Method)?,
            string(&m.scheme, false, Condition::Scheme)?,
            string(&m.authority, false, Condition::Authority)?,
        ];
        conditions.extend(strings.into_iter().flatten());
        for k in &m.headers {
            conditions.push(Condition::Header(Box::new(Keyed::compile(k, cache)?)));
        }
        for k in &m.without_headers {
            conditions.push(Condition::WithoutHeader(Box::new(Keyed::compile(k, cache)?)));
        }
        for k in &m.query_params {
            conditions.push(Condition::QueryParam(Box::new(Keyed::compile(k, cache)?)));
        }
        Ok(CompiledMatch { conditions: conditions.into_boxed_slice() })
    }

    /// What a `rewrite.uri` replaces when this block matched.
    pub(crate) fn uri_part(&self) -> super::rewrite::UriPart {
        use super::rewrite::UriPart;
        self.conditions
            .iter()
            .find_map(|c| match c {
                Condition::Uri(Matcher::Prefix(p) | Matcher::PrefixNoCase(p)) => Some(UriPart::Prefix(p.len())),
                Condition::Uri(_) => Some(UriPart::Whole),
                _ => None,
            })
            .unwrap_or(UriPart::Root)
    }

    pub(crate) fn matches(&self, req: &RequestView) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::Port(p) => *p == req.port,
            // Envoy: prefix matches the raw :path; exact and regex ignore the query string.
            Condition::Uri(uri) => uri.matches(if uri.is_prefix() { req.path } else { req.path_without_query() }),
            Condition::Method(m) => m.matches(req.method),
            Condition::Scheme(m) => m.matches(req.scheme),
            Condition::Authority(m) => m.matches(req.authority),
            Condition::Header(h) => header_matches(h, req.headers, false),
            Condition::WithoutHeader(h) => !header_matches(h, req.headers, true),
            Condition::QueryParam(q) => query_matches(q, req.query()),
        })
    }
}

/// Envoy's header match: the values of a repeated header are joined with `,` and matched as
/// one (`HeaderUtility::getAllOfHeaderAsString`). A header sent once is matched in place; only a
/// repeated one allocates the joined value. `missing_as_empty` is Istio's
/// `treat_missing_header_as_empty` for `withoutHeaders` with a value: an absent header is
/// matched as the empty string (so `withoutHeaders: {x: {exact: ""}}` does not match a request
/// without `x`).
fn header_matches(k: &Keyed, headers: &HeaderMap, missing_as_empty: bool) -> bool {
    let missing = || missing_as_empty && k.value.as_ref().is_some_and(|m| m.matches(""));
    let Some(name) = &k.header else { return missing() };
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else { return missing() };
    let Some(m) = &k.value else { return true };
    let Some(second) = values.next() else { return text(first).is_some_and(|v| m.matches(v)) };
    let mut joined = String::new();
    for (i, v) in [first, second].into_iter().chain(values).enumerate() {
        let Some(v) = text(v) else { return false };
        if i > 0 {
            joined.push(',');
        }
        joined.push_str(v);
    }
    m.matches(&joined)
}

/// A header value as text. Envoy compares bytes; a value that is not UTF-8 cannot meet a
/// (UTF-8) pattern anyway.
fn text(v: &http::HeaderValue) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()).ok()
}

/// Envoy looks at the first occurrence of a repeated query parameter only.
fn query_matches(k: &Keyed, query: &str) -> bool {
    let first = query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == k.name).then_some(value)
    });
    first.is_some_and(|value| k.value.as_ref().is_none_or(|m| m.matches(value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView { path, method: "GET", scheme: "http", authority: "bookinfo.com", headers, port: 80 }
    }

    fn compile(m: RouteMatch) -> CompiledMatch {
        CompiledMatch::compile(&m, &mut RegexCache::default()).unwrap()
    }

    #[test]
    fn uri_kinds() {
        let h = HeaderMap::new();
        let exact = compile(RouteMatch {
            uri: Some(Box::new(StringMatch::Exact("/productpage".into()))),
            ..Default::default()
        });
        assert!(exact.matches(&view("/productpage", &h)));
        assert!(exact.matches(&view("/productpage?u=1", &h)));
        assert!(!exact.matches(&view("/productpage/x", &h)));
        let prefix =
            compile(RouteMatch { uri: Some(Box::new(StringMatch::Prefix("/static".into()))), ..Default::default() });
        assert!(prefix.matches(&view("/static/css", &h)));
        assert!(!prefix.matches(&view("/stat", &h)));
        let regex = compile(RouteMatch {
            uri: Some(Box::new(StringMatch::Regex("/api/v[0-9]+/.*".into()))),
            ..Default::default()
        });
        assert!(regex.matches(&view("/api/v1/products", &h)));
        assert!(!regex.matches(&view("/x/api/v1/products", &h)), "regex is a full match");
        let ci = compile(RouteMatch {
            uri: Some(Box::new(StringMatch::Prefix("/Static".into()))),
            ignore_uri_case: true,
            ..Default::default()
        });
        assert!(ci.matches(&view("/STATIC/a", &h)));
    }

    #[test]
    fn headers_presence_and_absence() {
        let mut h = HeaderMap::new();
        h.insert("end-user", "jason".parse().unwrap());
        let m = compile(RouteMatch {
            headers: vec![KeyMatch { name: "end-user".into(), value: Some(StringMatch::Exact("jason".into())) }].into(),
            ..Default::default()
        });
        assert!(m.matches(&view("/", &h)));
        let present = compile(RouteMatch {
            headers: vec![KeyMatch { name: "end-user".into(), value: None }].into(),
            ..Default::default()
        });
        assert!(present.matches(&view("/", &h)));
        assert!(!present.matches(&view("/", &HeaderMap::new())));
        let without = compile(RouteMatch {
            without_headers: vec![KeyMatch { name: "end-user".into(), value: None }].into(),
            ..Default::default()
        });
        assert!(!without.matches(&view("/", &h)));
        assert!(without.matches(&view("/", &HeaderMap::new())));
    }

    fn header(name: &str, value: Option<StringMatch>) -> Box<[KeyMatch]> {
        vec![KeyMatch { name: name.into(), value }].into()
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        // Envoy: `x-tag: a` and `x-tag: b` are matched as "a,b".
        let mut h = HeaderMap::new();
        h.append("x-tag", "a".parse().unwrap());
        h.append("x-tag", "b".parse().unwrap());
        let exact = |v: &str| {
            compile(RouteMatch { headers: header("x-tag", Some(StringMatch::Exact(v.into()))), ..Default::default() })
        };
        assert!(exact("a,b").matches(&view("/", &h)));
        assert!(!exact("a").matches(&view("/", &h)), "not the first value alone");
        assert!(!exact("b").matches(&view("/", &h)));
        let prefix = compile(RouteMatch {
            headers: header("x-tag", Some(StringMatch::Prefix("a,".into()))),
            ..Default::default()
        });
        assert!(prefix.matches(&view("/", &h)));
        let regex = compile(RouteMatch {
            headers: header("x-tag", Some(StringMatch::Regex("a,b".into()))),
            ..Default::default()
        });
        assert!(regex.matches(&view("/", &h)));
        let without = compile(RouteMatch {
            without_headers: header("x-tag", Some(StringMatch::Exact("a".into()))),
            ..Default::default()
        });
        assert!(without.matches(&view("/", &h)), "\"a,b\" is not \"a\"");
        let without = compile(RouteMatch {
            without_headers: header("x-tag", Some(StringMatch::Exact("a,b".into()))),
            ..Default::default()
        });
        assert!(!without.matches(&view("/", &h)));
        h.append("x-tag", "c".parse().unwrap());
        assert!(exact("a,b,c").matches(&view("/", &h)));
        let mut once = HeaderMap::new();
        once.insert("x-tag", "a".parse().unwrap());
        assert!(exact("a").matches(&view("/", &once)));
    }

    #[test]
    fn without_headers_treat_a_missing_header_as_empty() {
        // Istio sets treat_missing_header_as_empty on withoutHeaders with a value.
        let none = HeaderMap::new();
        let empty = compile(RouteMatch {
            without_headers: header("x", Some(StringMatch::Exact("".into()))),
            ..Default::default()
        });
        assert!(!empty.matches(&view("/", &none)));
        let any = compile(RouteMatch {
            without_headers: header("x", Some(StringMatch::Regex(".*".into()))),
            ..Default::default()
        });
        assert!(!any.matches(&view("/", &none)));
        let value = compile(RouteMatch {
            without_headers: header("x", Some(StringMatch::Exact("v".into()))),
            ..Default::default()
        });
        assert!(value.matches(&view("/", &none)));
        let present = compile(RouteMatch { without_headers: header("x", None), ..Default::default() });
        assert!(present.matches(&view("/", &none)));
    }

    #[test]
    fn query_params_match_the_first_occurrence() {
        let h = HeaderMap::new();
        let m = compile(RouteMatch {
            query_params: vec![KeyMatch { name: "v".into(), value: Some(StringMatch::Exact("2".into())) }].into(),
            ..Default::default()
        });
        assert!(m.matches(&view("/x?v=2&v=1", &h)));
        assert!(!m.matches(&view("/x?v=1&v=2", &h)), "Envoy ignores all but the first value");
    }

    #[test]
    fn query_params_and_port() {
        let h = HeaderMap::new();
        let m = compile(RouteMatch {
            query_params: vec![KeyMatch { name: "v".into(), value: Some(StringMatch::Exact("2".into())) }].into(),
            port: Some(80),
            ..Default::default()
        });
        assert!(m.matches(&view("/x?a=1&v=2", &h)));
        assert!(!m.matches(&view("/x?v=3", &h)));
        assert!(!m.matches(&view("/x", &h)));
        let mut other_port = view("/x?v=2", &h);
        other_port.port = 81;
        assert!(!m.matches(&other_port));
    }

    #[test]
    fn method_and_authority() {
        let h = HeaderMap::new();
        let m = compile(RouteMatch {
            method: Some(Box::new(StringMatch::Exact("POST".into()))),
            authority: Some(Box::new(StringMatch::Prefix("book".into()))),
            ..Default::default()
        });
        let mut v = view("/", &h);
        assert!(!m.matches(&v));
        v.method = "POST";
        assert!(m.matches(&v));
    }

    #[test]
    fn authority_is_compared_as_sent() {
        // Istio: `authority` becomes an Envoy header match on `:authority`, port included.
        let h = HeaderMap::new();
        let exact = compile(RouteMatch {
            authority: Some(Box::new(StringMatch::Exact("bookinfo.com".into()))),
            ..Default::default()
        });
        let mut v = view("/", &h);
        assert!(exact.matches(&v));
        v.authority = "bookinfo.com:8080";
        assert!(!exact.matches(&v));
        v.authority = "Bookinfo.com";
        assert!(!exact.matches(&v), "header values are case-sensitive");
        let with_port = compile(RouteMatch {
            authority: Some(Box::new(StringMatch::Regex("bookinfo\\.com(:[0-9]+)?".into()))),
            ..Default::default()
        });
        v.authority = "bookinfo.com:8080";
        assert!(with_port.matches(&v));
    }
}
