//! Trace context on the wire: reading W3C `traceparent` and B3 (multi-header and single `b3`)
//! from the downstream request, and writing the gateway's span as the parent of the upstream
//! request.
//!
//! Everything here runs per request when tracing is on, sampled or not, so it works on the
//! header bytes in place: no allocation except the header values written upstream.

use http::{HeaderMap, HeaderName};
use pingora_http::RequestHeader;

// Names built once: a `&str` name is parsed (and lower-cased) on every lookup, and a
// non-standard one copied into a new allocation on every insert.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// The B3 header family a request arrived with; we answer in the same one (Envoy's Zipkin
/// tracer rewrites the B3 headers it received, so B3-only applications keep their trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum B3Style {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    Multi,
    /// One `b3: {trace}-{span}-{sampling}-{parent}` header.
    Single,
}

/// What the downstream request says about its trace, before the sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Extracted {
    /// Trace id and the caller's span id, when a well-formed context arrived.
    pub(crate) ids: Option<(u128, u64)>,
    /// Whether the ids came from `traceparent` (then `tracestate` belongs to them).
    pub(crate) from_traceparent: bool,
    /// The caller's sampling decision, if it made one.
    pub(crate) sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1` or `b3: …-d`): sample regardless of the ratio.
    pub(crate) debug: bool,
    /// B3 headers present (even with only a sampling decision): they are rewritten upstream.
    pub(crate) b3: Option<B3Style>,
    /// The B3 trace id had 16 hex digits; 64-bit ids are written back at that width so
    /// older Zipkin clients recognise their trace.
    pub(crate) b3_short_trace_id: bool,
}

/// Reads the incoming context. `traceparent` wins over B3 when both are valid (it is the
/// format Istio's OpenTelemetry provider uses); single `b3` wins over the multi headers, as the
/// B3 specification says.
pub(crate) fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);

    if let Some(single) = text(&B3) {
        if let Some(b3) = parse_b3_single(single) {
            out.b3 = Some(B3Style::Single);
            out.ids = b3.ids;
            out.sampled = b3.sampled;
            out.debug = b3.debug;
            out.b3_short_trace_id = b3.short_trace_id;
        }
    }
    if out.b3.is_none() {
        let trace = text(&X_B3_TRACEID);
        let span = text(&X_B3_SPANID);
        let sampled = text(&X_B3_SAMPLED);
        let flags = text(&X_B3_FLAGS);
        if trace.is_some() || span.is_some() || sampled.is_some() || flags.is_some() {
            out.b3 = Some(B3Style::Multi);
            if let (Some(trace), Some(span)) = (trace, span) {
                if let (Some(t), Some(s)) = (parse_b3_trace_id(trace), parse_span_id(span, true)) {
                    out.ids = Some((t, s));
                    out.b3_short_trace_id = trace.len() == 16;
                }
            }
            out.debug = flags == Some("1");
            out.sampled = match sampled {
                Some("1" | "true") => Some(true),
                Some("0" | "false") => Some(false),
                _ => None,
            };
        }
    }
    if let Some(tp) = text(&TRACEPARENT).and_then(parse_traceparent) {
        out.ids = Some((tp.trace_id, tp.parent_id));
        out.from_traceparent = true;
        out.sampled = Some(tp.sampled);
    }
    if out.debug {
        out.sampled = Some(true);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    sampled: bool,
}

/// `version-traceid-parentid-flags`, all lowercase hex (W3C Trace Context level 1). Versions
/// above 00 may append fields after another `-`; version ff is invalid.
fn parse_traceparent(s: &str) -> Option<TraceParent> {
    let b = s.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let version = parse_hex(&s[0..2], false)? as u8;
    if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let trace_id = parse_hex(&s[3..35], false).filter(|t| *t != 0)?;
    let parent_id = parse_span_id(&s[36..52], false)?;
    let flags = parse_hex(&s[53..55], false)? as u8;
    Some(TraceParent { trace_id, parent_id, sampled: flags & 1 == 1 })
}

#[derive(Debug, PartialEq, Eq)]
struct B3Single {
    ids: Option<(u128, u64)>,
    sampled: Option<bool>,
    debug: bool,
    short_trace_id: bool,
}

/// `b3: {sampling}` or `b3: {trace}-{span}[-{sampling}[-{parent}]]`.
fn parse_b3_single(s: &str) -> Option<B3Single> {
    let sampling = |f: &str| match f {
        "1" => Some((Some(true), false)),
        "0" => Some((Some(false), false)),
        "d" => Some((Some(true), true)),
        _ => None,
    };
    let mut fields = s.split('-');
    let first = fields.next()?;
    let Some(second) = fields.next() else {
        let (sampled, debug) = sampling(first)?;
        return Some(B3Single { ids: None, sampled, debug, short_trace_id: false });
    };
    let trace = parse_b3_trace_id(first)?;
    let span = parse_span_id(second, true)?;
    let (sampled, debug) = match fields.next() {
        Some(f) => sampling(f)?,
        None => (None, false),
    };
    if let Some(parent) = fields.next() {
        parse_span_id(parent, true)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(B3Single { ids: Some((trace, span)), sampled, debug, short_trace_id: first.len() == 16 })
}

/// 16 or 32 hex digits, not all zero.
fn parse_b3_trace_id(s: &str) -> Option<u128> {
    if s.len() != 16 && s.len() != 32 {
        return None;
    }
    parse_hex(s, true).filter(|t| *t != 0)
}

/// 16 hex digits, not all zero.
fn parse_span_id(s: &str, allow_upper: bool) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    parse_hex(s, allow_upper).map(|v| v as u64).filter(|v| *v != 0)
}

/// Up to 32 hex digits. W3C demands lowercase; B3 implementations are lenient about case.
fn parse_hex(s: &str, allow_upper: bool) -> Option<u128> {
    if s.is_empty() || s.len() > 32 {
        return None;
    }
    s.bytes().try_fold(0u128, |acc, c| {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' if allow_upper => c - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(digit))
    })
}

/// The gateway's span as seen on the wire: what the upstream request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpanContext {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// The caller's span, when the trace continues one.
    pub(crate) parent_id: Option<u64>,
    pub(crate) sampled: bool,
    pub(crate) debug: bool,
    pub(crate) b3: Option<B3Style>,
    pub(crate) b3_short_trace_id: bool,
    /// The trace is new or came from B3 while a `tracestate` describing something else may
    /// be present.
    pub(crate) drop_tracestate: bool,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn write_hex(out: &mut [u8], value: u128, digits: usize) {
    for (i, slot) in out[..digits].iter_mut().enumerate() {
        let shift = (digits - 1 - i) * 4;
        *slot = HEX[((value >> shift) & 0xf) as usize];
    }
}

impl SpanContext {
    /// Writes the context on the upstream request: `traceparent` always, the B3 headers in
    /// the style they arrived in. Each value is built on the stack; the header map copies it.
    pub(crate) fn inject(&self, upstream: &mut RequestHeader) -> pingora_error::Result<()> {
        let mut buf = [0u8; 55];
        upstream.insert_header(TRACEPARENT, header_value(self.traceparent(&mut buf)))?;
        if self.drop_tracestate {
            upstream.remove_header(&TRACESTATE);
        }
        match self.b3 {
            None => {}
            Some(B3Style::Multi) => {
                let mut trace = [0u8; 32];
                let mut span = [0u8; 16];
                upstream.insert_header(X_B3_TRACEID, header_value(self.b3_trace_id(&mut trace)))?;
                write_hex(&mut span, u128::from(self.span_id), 16);
                upstream.insert_header(X_B3_SPANID, header_value(&span))?;
                match self.parent_id {
                    Some(parent) => {
                        write_hex(&mut span, u128::from(parent), 16);
                        upstream.insert_header(X_B3_PARENTSPANID, header_value(&span))?;
                    }
                    None => {
                        upstream.remove_header(&X_B3_PARENTSPANID);
                    }
                }
                // Debug implies sampled; x-b3-flags stays as it came.
                upstream.insert_header(X_B3_SAMPLED, if self.sampled { "1" } else { "0" })?;
            }
            Some(B3Style::Single) => {
                // trace(≤32) - span(16) - sampling(1) - parent(16)
                let mut buf = [0u8; 32 + 1 + 16 + 1 + 1 + 1 + 16];
                let mut len = self.b3_trace_id(&mut buf).len();
                buf[len] = b'-';
                write_hex(&mut buf[len + 1..], u128::from(self.span_id), 16);
                len += 17;
                buf[len] = b'-';
                buf[len + 1] = match (self.debug, self.sampled) {
                    (true, _) => b'd',
                    (false, true) => b'1',
                    (false, false) => b'0',
                };
                len += 2;
                if let Some(parent) = self.parent_id {
                    buf[len] = b'-';
                    write_hex(&mut buf[len + 1..], u128::from(parent), 16);
                    len += 17;
                }
                upstream.insert_header(B3, header_value(&buf[..len]))?;
            }
        }
        Ok(())
    }

    /// `00-{trace}-{span}-{flags}`.
    pub(crate) fn traceparent<'a>(&self, buf: &'a mut [u8; 55]) -> &'a [u8] {
        buf[..3].copy_from_slice(b"00-");
        write_hex(&mut buf[3..], self.trace_id, 32);
        buf[35] = b'-';
        write_hex(&mut buf[36..], u128::from(self.span_id), 16);
        buf[52..55].copy_from_slice(if self.sampled { b"-01" } else { b"-00" });
        &buf[..]
    }

    fn b3_trace_id<'a>(&self, buf: &'a mut [u8]) -> &'a [u8] {
        let digits = if self.b3_short_trace_id && self.trace_id >> 64 == 0 { 16 } else { 32 };
        write_hex(buf, self.trace_id, digits);
        &buf[..digits]
    }
}

/// Hex digits and dashes are always valid header bytes.
fn header_value(bytes: &[u8]) -> http::HeaderValue {
    http::HeaderValue::from_bytes(bytes).expect("hex and dashes are valid header bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: u128 = 0x4bf92f3577b34da6a3ce929d0e0e4736;
    const SPAN: u64 = 0x00f067aa0ba902b7;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn traceparent_valid() {
        let e = extract(&headers(&[("traceparent", TP)]));
        assert_eq!(e.ids, Some((TRACE, SPAN)));
        assert_eq!(e.sampled, Some(true));
        assert!(e.from_traceparent);
        assert_eq!(e.b3, None);
        let unsampled = TP.replace("-01", "-00");
        assert_eq!(extract(&headers(&[("traceparent", &unsampled)])).sampled, Some(false));
        // Other flag bits do not matter; only bit 0 is "sampled".
        assert_eq!(parse_traceparent(&TP.replace("-01", "-03")).map(|t| t.sampled), Some(true));
        // A later version may append fields.
        let v1 = format!("01{}-extra", &TP[2..]);
        assert_eq!(parse_traceparent(&v1).map(|t| t.trace_id), Some(TRACE));
    }

    #[test]
    fn traceparent_malformed() {
        for bad in [
            "",
            "garbage",
            &TP[..54],
            &format!("{TP}0"),                                              // version 00 is exactly 55
            &format!("{TP}-x"),                                             // ... even with a dash
            &TP.replace("00-4b", "ff-4b"),                                  // version ff
            &TP.replace("4bf92f", "4BF92F"),                                // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",      // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",      // zero span id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",      // bad flags
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      // bad separator
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",      // bad hex
            "0-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",      // shifted
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra", // no dash after flags
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
            assert_eq!(extract(&headers(&[("traceparent", bad)])).ids, None, "{bad:?}");
        }
    }

    #[test]
    fn b3_multi() {
        let e = extract(&headers(&[
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(e.ids, Some((TRACE, SPAN)));
        assert_eq!(e.sampled, Some(true));
        assert_eq!(e.b3, Some(B3Style::Multi));
        assert!(!e.b3_short_trace_id && !e.from_traceparent);

        let e = extract(&headers(&[("x-b3-traceid", "A3CE929D0E0E4736"), ("x-b3-spanid", "00F067AA0BA902B7")]));
        assert_eq!(e.ids, Some((0xa3ce929d0e0e4736, SPAN)));
        assert!(e.b3_short_trace_id);
        assert_eq!(e.sampled, None, "no decision: the ratio decides");

        assert_eq!(extract(&headers(&[("x-b3-sampled", "false")])).sampled, Some(false));
        assert_eq!(extract(&headers(&[("x-b3-sampled", "true")])).sampled, Some(true));
        let debug = extract(&headers(&[("x-b3-sampled", "0"), ("x-b3-flags", "1")]));
        assert!(debug.debug);
        assert_eq!(debug.sampled, Some(true), "debug forces sampling");
    }

    #[test]
    fn b3_multi_malformed() {
        for (trace, span) in [
            ("4bf92f3577b34da6a3ce929d0e0e47", "00f067aa0ba902b7"), // 30 digits
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902"), // short span
            ("0000000000000000", "00f067aa0ba902b7"),               // zero trace
            ("4bf92f3577b34da6", "0000000000000000"),               // zero span
            ("4bf92f3577b34dzz", "00f067aa0ba902b7"),               // not hex
        ] {
            let e = extract(&headers(&[("x-b3-traceid", trace), ("x-b3-spanid", span)]));
            assert_eq!(e.ids, None, "{trace} {span}");
            assert_eq!(e.b3, Some(B3Style::Multi), "still rewritten upstream");
        }
        assert_eq!(extract(&headers(&[("x-b3-traceid", "4bf92f3577b34da6")])).ids, None, "span id missing");
        assert_eq!(extract(&headers(&[("x-b3-sampled", "yes")])).sampled, None);
    }

    #[test]
    fn b3_single() {
        let e = extract(&headers(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90")]));
        assert_eq!(e.ids, Some((TRACE, SPAN)));
        assert_eq!((e.sampled, e.b3), (Some(true), Some(B3Style::Single)));
        let e = extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")]));
        assert_eq!((e.ids, e.sampled, e.b3_short_trace_id), (Some((0xa3ce929d0e0e4736, SPAN)), None, true));
        let e = extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]));
        assert!(e.debug && e.sampled == Some(true));
        let deny = extract(&headers(&[("b3", "0")]));
        assert_eq!((deny.ids, deny.sampled, deny.b3), (None, Some(false), Some(B3Style::Single)));
        // Single wins over multi.
        let e = extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0"), ("x-b3-sampled", "1")]));
        assert_eq!((e.sampled, e.b3), (Some(false), Some(B3Style::Single)));
    }

    #[test]
    fn b3_single_malformed() {
        for bad in [
            "",
            "x",
            "2",
            "a3ce929d0e0e4736",                                       // trace without span
            "a3ce929d0e0e4736-00f067aa0ba902b7-2",                    // bad sampling
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b",     // short parent
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-05e3ac9a4f6e3b90-x", // extra field
            "a3ce929d0e0e47-00f067aa0ba902b7",                        // short trace
        ] {
            assert_eq!(parse_b3_single(bad), None, "{bad:?}");
        }
        // A malformed single header falls back to the multi headers.
        let e = extract(&headers(&[
            ("b3", "junk"),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
        ]));
        assert_eq!((e.b3, e.ids.map(|i| i.0)), (Some(B3Style::Multi), Some(0xa3ce929d0e0e4736)));
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let e = extract(&headers(&[
            ("traceparent", TP),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!((e.ids, e.sampled, e.from_traceparent), (Some((TRACE, SPAN)), Some(true), true));
        assert_eq!(e.b3, Some(B3Style::Multi), "B3 is rewritten to the same trace");
        // An invalid traceparent falls back to B3.
        let e = extract(&headers(&[
            ("traceparent", "00-bad"),
            ("x-b3-traceid", "1111111111111111"),
            ("x-b3-spanid", "2222222222222222"),
        ]));
        assert_eq!(e.ids, Some((0x1111111111111111, 0x2222222222222222)));
        assert!(!e.from_traceparent);
    }

    fn ctx(b3: Option<B3Style>) -> SpanContext {
        SpanContext {
            trace_id: TRACE,
            span_id: 0x1234_5678_9abc_def0,
            parent_id: Some(SPAN),
            sampled: true,
            debug: false,
            b3,
            b3_short_trace_id: false,
            drop_tracestate: false,
        }
    }

    fn upstream(pairs: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in pairs {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn get<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
        req.headers.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn inject_traceparent_only() {
        let mut req = upstream(&[("traceparent", TP), ("tracestate", "vendor=x")]);
        ctx(None).inject(&mut req).unwrap();
        assert_eq!(get(&req, "traceparent"), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-01"));
        assert_eq!(get(&req, "tracestate"), Some("vendor=x"), "passed through");
        assert_eq!(get(&req, "x-b3-traceid"), None, "B3 only when it came in");
        let mut c = ctx(None);
        c.sampled = false;
        c.drop_tracestate = true;
        c.inject(&mut req).unwrap();
        assert!(get(&req, "traceparent").unwrap().ends_with("-00"));
        assert_eq!(get(&req, "tracestate"), None);
    }

    #[test]
    fn inject_b3_multi() {
        let mut req = upstream(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-flags", "1")]);
        let mut c = ctx(Some(B3Style::Multi));
        c.trace_id = 0xa3ce929d0e0e4736;
        c.b3_short_trace_id = true;
        c.inject(&mut req).unwrap();
        assert_eq!(get(&req, "x-b3-traceid"), Some("a3ce929d0e0e4736"), "64-bit stays 64-bit");
        assert_eq!(get(&req, "x-b3-spanid"), Some("123456789abcdef0"));
        assert_eq!(get(&req, "x-b3-parentspanid"), Some("00f067aa0ba902b7"));
        assert_eq!(get(&req, "x-b3-sampled"), Some("1"));
        assert_eq!(get(&req, "x-b3-flags"), Some("1"));
        assert_eq!(get(&req, "traceparent"), Some("00-0000000000000000a3ce929d0e0e4736-123456789abcdef0-01"));

        let mut req = upstream(&[("x-b3-parentspanid", "1111111111111111")]);
        let mut c = ctx(Some(B3Style::Multi));
        c.parent_id = None;
        c.sampled = false;
        c.inject(&mut req).unwrap();
        assert_eq!(get(&req, "x-b3-traceid"), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(get(&req, "x-b3-parentspanid"), None, "a new trace has no parent");
        assert_eq!(get(&req, "x-b3-sampled"), Some("0"));
    }

    #[test]
    fn inject_b3_single() {
        let mut req = upstream(&[("b3", "0")]);
        ctx(Some(B3Style::Single)).inject(&mut req).unwrap();
        assert_eq!(get(&req, "b3"), Some("4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-1-00f067aa0ba902b7"));
        let mut c = ctx(Some(B3Style::Single));
        (c.parent_id, c.debug) = (None, true);
        c.inject(&mut req).unwrap();
        assert_eq!(get(&req, "b3"), Some("4bf92f3577b34da6a3ce929d0e0e4736-123456789abcdef0-d"));
        assert_eq!(get(&req, "x-b3-traceid"), None);
        // What we write, we read back.
        let e = extract(&req.headers);
        assert_eq!(e.ids, Some((TRACE, 0x1234_5678_9abc_def0)));
        assert!(e.from_traceparent && e.debug);
    }
}
