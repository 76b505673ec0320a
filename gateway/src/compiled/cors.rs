//! A route's `corsPolicy`, compiled: Envoy's CORS filter (`cors_filter.cc`) as Istio configures
//! it, decided from the request head alone. It runs before the route's fault and action, as the
//! filter runs before the fault filter and the router.

use super::matcher::{Matcher, RegexCache};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use meshgate_model::snapshot::Cors;

pub(crate) struct CompiledCors {
    origins: Box<[Matcher]>,
    /// A matcher matches `*`: every origin is allowed (Envoy's rule).
    any_origin: bool,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    answer_unmatched_preflights: bool,
}

/// What the policy makes of a request.
pub(crate) enum Verdict<'h> {
    /// No `Origin`, or an actual request from an origin not allowed: nothing changes.
    Pass,
    /// A preflight the gateway answers: 200 with these headers.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// An actual request from an allowed origin: its response gets the CORS headers.
    Allowed(&'h HeaderValue),
}

const TRUE: HeaderValue = HeaderValue::from_static("true");

impl CompiledCors {
    pub(crate) fn compile(def: &Cors, regexes: &mut RegexCache) -> Result<CompiledCors, regex::Error> {
        let origins =
            def.allow_origins.iter().map(|m| Matcher::compile(m, false, regexes)).collect::<Result<Box<[_]>, _>>()?;
        // Values the controller joined from header names and methods; one that is not a valid
        // header value is left out (the controller validated the parts).
        let value = |text: &str| (!text.is_empty()).then(|| HeaderValue::from_str(text).ok()).flatten();
        Ok(CompiledCors {
            any_origin: origins.iter().any(|m| m.matches("*")),
            origins,
            allow_methods: value(&def.allow_methods),
            allow_headers: value(&def.allow_headers),
            expose_headers: value(&def.expose_headers),
            max_age: def.max_age_seconds.map(HeaderValue::from),
            allow_credentials: def.allow_credentials,
            answer_unmatched_preflights: def.answer_unmatched_preflights,
        })
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.any_origin || origin.to_str().is_ok_and(|o| self.origins.iter().any(|m| m.matches(o)))
    }

    pub(crate) fn judge<'h>(&self, method: &Method, headers: &'h HeaderMap) -> Verdict<'h> {
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else { return Verdict::Pass };
        let allowed = self.origin_allowed(origin);
        let requested_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD).filter(|m| !m.is_empty());
        let Some(requested_method) = requested_method.filter(|_| method == Method::OPTIONS) else {
            return if allowed { Verdict::Allowed(origin) } else { Verdict::Pass };
        };
        // A preflight. One from an origin not allowed goes upstream unless
        // `unmatchedPreflights: IGNORE`; then it gets the answer without `allow-origin`.
        if !allowed && !self.answer_unmatched_preflights {
            return Verdict::Pass;
        }
        let mut out = Vec::with_capacity(5);
        if allowed {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        }
        if self.allow_credentials {
            out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        // `*` echoes what the browser asks for, as Envoy does.
        let echo = |configured: &Option<HeaderValue>, requested: Option<&HeaderValue>| match configured {
            Some(v) if v == "*" => requested.cloned(),
            other => other.clone(),
        };
        if let Some(v) = echo(&self.allow_methods, Some(requested_method)) {
            out.push((header::ACCESS_CONTROL_ALLOW_METHODS, v));
        }
        if let Some(v) = echo(&self.allow_headers, headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS)) {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(v) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, v.clone()));
        }
        Verdict::Preflight(out)
    }

    /// The headers an allowed origin's actual response gets (set: they replace the upstream's).
    pub(crate) fn response_headers(&self, origin: HeaderValue) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        [
            Some((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)),
            self.allow_credentials.then_some((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE)),
            self.expose_headers.clone().map(|v| (header::ACCESS_CONTROL_EXPOSE_HEADERS, v)),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_model::snapshot::StringMatch;

    fn policy(origins: Vec<StringMatch>, ignore: bool) -> CompiledCors {
        let def = Cors {
            allow_origins: origins.into_boxed_slice(),
            allow_methods: "POST,GET".into(),
            allow_headers: "X-Foo-Bar".into(),
            expose_headers: "X-Expose".into(),
            max_age_seconds: Some(86400),
            allow_credentials: true,
            answer_unmatched_preflights: ignore,
        };
        CompiledCors::compile(&def, &mut RegexCache::default()).unwrap()
    }

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    fn names(v: &Verdict) -> Vec<String> {
        match v {
            Verdict::Preflight(h) => h.iter().map(|(k, v)| format!("{k}: {}", v.to_str().unwrap())).collect(),
            Verdict::Allowed(o) => vec![format!("allowed {}", o.to_str().unwrap())],
            Verdict::Pass => vec!["pass".into()],
        }
    }

    #[test]
    fn preflights_and_actual_requests_as_envoy_judges_them() {
        let p = policy(vec![StringMatch::Exact("https://example.com".into())], false);
        let preflight = head(&[("origin", "https://example.com"), ("access-control-request-method", "POST")]);
        assert_eq!(
            names(&p.judge(&Method::OPTIONS, &preflight)),
            [
                "access-control-allow-origin: https://example.com",
                "access-control-allow-credentials: true",
                "access-control-allow-methods: POST,GET",
                "access-control-allow-headers: X-Foo-Bar",
                "access-control-max-age: 86400"
            ]
        );
        // An OPTIONS without Access-Control-Request-Method is an actual request.
        let options = head(&[("origin", "https://example.com")]);
        assert_eq!(names(&p.judge(&Method::OPTIONS, &options)), ["allowed https://example.com"]);
        assert_eq!(names(&p.judge(&Method::GET, &options)), ["allowed https://example.com"]);
        // Another origin: forwarded as it is; no Origin: not CORS.
        let other = head(&[("origin", "https://evil.example"), ("access-control-request-method", "POST")]);
        assert_eq!(names(&p.judge(&Method::OPTIONS, &other)), ["pass"]);
        assert_eq!(names(&p.judge(&Method::GET, &head(&[]))), ["pass"]);
        // IGNORE answers it, without allow-origin.
        let ignoring = policy(vec![StringMatch::Exact("https://example.com".into())], true);
        let answer = names(&ignoring.judge(&Method::OPTIONS, &other));
        assert!(answer.iter().all(|h| !h.starts_with("access-control-allow-origin")), "{answer:?}");
        assert!(answer.contains(&"access-control-max-age: 86400".to_string()), "{answer:?}");
    }

    #[test]
    fn origin_matchers_and_wildcards() {
        let p =
            policy(vec![StringMatch::Prefix("https://".into()), StringMatch::Regex(r".*\.example\.org".into())], false);
        let judge = |origin: &'static str| names(&p.judge(&Method::GET, &head(&[("origin", origin)])))[0].clone();
        assert_eq!(judge("https://a.test"), "allowed https://a.test");
        assert_eq!(judge("http://b.example.org"), "allowed http://b.example.org");
        assert_eq!(judge("http://b.example.org.evil"), "pass");
        let star = policy(vec![StringMatch::Exact("*".into())], false);
        let anything = head(&[("origin", "http://anything")]);
        assert_eq!(names(&star.judge(&Method::GET, &anything)), ["allowed http://anything"]);
    }

    #[test]
    fn star_methods_and_headers_echo_the_request() {
        let mut def = Cors {
            allow_origins: vec![StringMatch::Exact("*".into())].into_boxed_slice(),
            allow_methods: "*".into(),
            allow_headers: "*".into(),
            expose_headers: "".into(),
            max_age_seconds: None,
            allow_credentials: false,
            answer_unmatched_preflights: false,
        };
        let p = CompiledCors::compile(&def, &mut RegexCache::default()).unwrap();
        let preflight = head(&[
            ("origin", "http://a"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "x-a,x-b"),
        ]);
        assert_eq!(
            names(&p.judge(&Method::OPTIONS, &preflight)),
            [
                "access-control-allow-origin: http://a",
                "access-control-allow-methods: PUT",
                "access-control-allow-headers: x-a,x-b"
            ]
        );
        def.allow_methods = "".into();
        let p = CompiledCors::compile(&def, &mut RegexCache::default()).unwrap();
        assert_eq!(p.response_headers(HeaderValue::from_static("http://a")).count(), 1);
    }
}
