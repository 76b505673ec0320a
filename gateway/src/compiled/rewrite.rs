//! A route's `rewrite`, compiled once per snapshot: the upstream request's new path (from the
//! matched prefix, the whole path, or a regex substitution) and authority. Pure: the request
//! path applies the result (`proxy::upstream_request_filter`).

use super::matcher::RegexCache;
use http::HeaderValue;
use meshgate_model::snapshot::Rewrite;
use regex::Regex;
use std::sync::Arc;

/// Which part of the path a route's matching block matched, and so what `rewrite.uri`
/// replaces (Envoy's `prefix_rewrite` as Istio configures it per match block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriPart {
    /// A prefix match: that many leading bytes.
    Prefix(usize),
    /// An exact or regex match: the whole path (the query stays).
    Whole,
    /// No uri condition: Envoy's route matches the prefix `/`, so the leading `/` is replaced.
    Root,
}

#[derive(Debug)]
pub(crate) struct CompiledRewrite {
    uri: Option<Box<str>>,
    /// Every match in the path is replaced; the substitution in the regex crate's syntax.
    regex: Option<(Arc<Regex>, Box<str>)>,
    pub(crate) authority: Option<HeaderValue>,
}

impl CompiledRewrite {
    pub(crate) fn compile(r: &Rewrite, cache: &mut RegexCache) -> Result<CompiledRewrite, String> {
        let regex = match &r.uri_regex {
            None => None,
            Some(rr) => {
                let regex = cache.get(rr.pattern.to_string()).map_err(|e| e.to_string())?;
                Some((regex, re2_substitution(&rr.substitution).into()))
            }
        };
        let authority = match &r.authority {
            None => None,
            Some(a) => Some(HeaderValue::from_str(a).map_err(|e| format!("authority {a:?}: {e}"))?),
        };
        Ok(CompiledRewrite { uri: r.uri.as_deref().map(Into::into), regex, authority })
    }

    /// The upstream request's path and query for `path_and_query` as received, or `None` when
    /// the rewrite leaves the path alone (authority only).
    pub(crate) fn path(&self, path_and_query: &str, part: UriPart) -> Option<String> {
        let (path, query) = match path_and_query.find('?') {
            Some(i) => path_and_query.split_at(i),
            None => (path_and_query, ""),
        };
        if let Some((regex, substitution)) = &self.regex {
            let mut out = regex.replace_all(path, &**substitution).into_owned();
            out.push_str(query);
            return Some(out);
        }
        let uri = self.uri.as_deref()?;
        let rest = match part {
            // The prefix was matched against the raw path, query included.
            UriPart::Prefix(len) => path_and_query.get(len..).unwrap_or(""),
            UriPart::Whole => query,
            UriPart::Root => path_and_query.get(1..).unwrap_or(""),
        };
        let mut out = String::with_capacity(uri.len() + rest.len());
        out.push_str(uri);
        out.push_str(rest);
        Some(out)
    }
}

/// RE2's substitution syntax (`\1` for a group, `\\` for a backslash), as Envoy takes it, in
/// the regex crate's (`${1}`, with `$` escaped as `$$`).
fn re2_substitution(re2: &str) -> String {
    let mut out = String::with_capacity(re2.len() + 4);
    let mut chars = re2.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_model::snapshot::RegexRewrite;

    fn compiled(uri: Option<&str>, regex: Option<(&str, &str)>) -> CompiledRewrite {
        let r = Rewrite {
            uri: uri.map(Into::into),
            authority: None,
            uri_regex: regex.map(|(p, s)| RegexRewrite { pattern: p.into(), substitution: s.into() }),
        };
        CompiledRewrite::compile(&r, &mut RegexCache::default()).unwrap()
    }

    #[test]
    fn uri_replaces_what_the_match_matched() {
        let r = compiled(Some("/v1/bookRatings"), None);
        assert_eq!(
            r.path("/ratings/1?x=y", UriPart::Prefix("/ratings".len())).as_deref(),
            Some("/v1/bookRatings/1?x=y")
        );
        assert_eq!(r.path("/ratings?x=y", UriPart::Whole).as_deref(), Some("/v1/bookRatings?x=y"));
        assert_eq!(r.path("/a/b", UriPart::Root).as_deref(), Some("/v1/bookRatingsa/b"), "Envoy's prefix `/`");
        // Istio's well-known case: prefix /foo rewritten to / keeps the slash after it.
        let slash = compiled(Some("/"), None);
        assert_eq!(slash.path("/foo/bar", UriPart::Prefix(4)).as_deref(), Some("//bar"));
        assert_eq!(slash.path("/foo/bar", UriPart::Prefix(5)).as_deref(), Some("/bar"));
    }

    #[test]
    fn regex_rewrites_the_path_with_re2_groups_and_keeps_the_query() {
        // Istio's reference example.
        let r = compiled(None, Some(("^/service/([^/]+)(/.*)$", "\\2/instance/\\1")));
        assert_eq!(r.path("/service/foo/v1/api?q=1", UriPart::Whole).as_deref(), Some("/v1/api/instance/foo?q=1"));
        let dollars = compiled(None, Some(("a", "$x\\\\")));
        assert_eq!(dollars.path("/a", UriPart::Whole).as_deref(), Some("/$x\\"));
        assert_eq!(compiled(None, None).path("/a", UriPart::Whole), None, "authority only");
    }
}
