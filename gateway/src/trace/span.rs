//! The gateway's server span for one request, encoded as an OTLP/HTTP JSON `Span`
//! (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding: ids as hex strings,
//! enums as integers, 64-bit integers as decimal strings).
//!
//! Only sampled requests get here. The span is written straight from borrowed request state
//! into one buffer, which is all that crosses to the exporter thread (the access log works
//! the same way, and lends its JSON string writer).

use super::context::{write_hex, SpanContext};
use crate::telemetry::access_log::line as json;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// OTLP `SpanKind.SPAN_KIND_SERVER`: the gateway serves the downstream request.
const KIND_SERVER: u8 = 2;
/// OTLP `Status.STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

/// What a span says about a finished request, taken from its exchange record.
pub(crate) struct RequestFacts<'a> {
    pub(crate) method: &'a str,
    pub(crate) scheme: &'static str,
    pub(crate) authority: &'a str,
    pub(crate) path: &'a str,
    pub(crate) protocol: &'static str,
    pub(crate) status_code: u16,
    pub(crate) response_flags: &'static str,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) duration: Duration,
    /// Gateway server port the request came in on.
    pub(crate) port: u16,
    /// The destination service host and port, e.g. `reviews.default.svc.cluster.local`, 9080.
    pub(crate) destination: Option<(&'a str, u16)>,
    /// Envoy-style cluster name, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub(crate) upstream_cluster: Option<&'a str>,
    pub(crate) upstream_address: Option<SocketAddr>,
    pub(crate) request_id: Option<&'a str>,
    pub(crate) user_agent: Option<&'a str>,
    pub(crate) downstream_address: Option<SocketAddr>,
    pub(crate) tracestate: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    pub(crate) fn of(x: &crate::telemetry::Exchange<'a>) -> RequestFacts<'a> {
        let cluster = x.cluster.map(|c| &*c.definition);
        RequestFacts {
            method: x.method(),
            scheme: if x.tls { "https" } else { "http" },
            authority: x.authority(),
            path: x.path(),
            protocol: x.protocol_name(),
            status_code: x.code,
            response_flags: x.flags.as_str(),
            request_bytes: x.bytes_received,
            response_bytes: x.bytes_sent,
            duration: x.duration,
            port: x.port,
            destination: cluster.map(|c| (&*c.service.host, c.port)),
            upstream_cluster: cluster.map(|c| &*c.name),
            upstream_address: x.upstream_address(),
            request_id: x.request_id().map(|id| id.as_str()),
            user_agent: x.user_agent(),
            downstream_address: x.downstream,
            tracestate: x.tracestate(),
        }
    }
}

/// Span attributes the same for every request of this gateway (Envoy sets these as tags).
pub(crate) struct GatewayTags {
    pub(crate) node_id: String,
    pub(crate) canonical_service: String,
    pub(crate) namespace: String,
}

/// Serialises one span as OTLP JSON, appended to `out` (the worker thread's span buffer).
///
/// Written field by field like the access log line (`access_log::line`): keys and the
/// gateway's own vocabulary (method, protocol, flags, hex ids, numbers) are copied as they are,
/// and request text is checked eight bytes at a time and copied whole unless it needs
/// escaping. Through serde_json, escaping every string byte by byte was 14,000 of the ~35,000
/// instructions tracing added to a sampled request (docs/benchmarks.md, "Tracing").
pub(crate) fn encode(out: &mut Vec<u8>, span: &SpanContext, facts: &RequestFacts, tags: &GatewayTags) {
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = end.saturating_sub(facts.duration);
    let mut hex = [0u8; 32];
    out.extend_from_slice(b"{\"traceId\":\"");
    write_hex(&mut hex, span.trace_id, 32);
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\",\"spanId\":\"");
    write_hex(&mut hex, u128::from(span.span_id), 16);
    out.extend_from_slice(&hex[..16]);
    out.push(b'"');
    if let Some(parent) = span.parent_id {
        out.extend_from_slice(b",\"parentSpanId\":\"");
        write_hex(&mut hex, u128::from(parent), 16);
        out.extend_from_slice(&hex[..16]);
        out.push(b'"');
    }
    if let Some(state) = facts.tracestate.filter(|_| !span.drop_tracestate) {
        out.extend_from_slice(b",\"traceState\":");
        json::string(out, state);
    }
    // Envoy's operation name for Istio routes: `<destination host>:<port>/*`. Without a
    // destination (404, 503 before routing) it uses the request's authority.
    out.extend_from_slice(b",\"name\":\"");
    let (host, port) = match facts.destination {
        Some(destination) => destination,
        None => (crate::head::strip_port(facts.authority), facts.port),
    };
    json::contents(out, host);
    out.push(b':');
    json::number(out, u64::from(port));
    out.extend_from_slice(b"/*\",\"kind\":");
    json::number(out, u64::from(KIND_SERVER));
    // 64-bit integers are JSON strings in OTLP (JSON numbers lose precision past 2^53).
    out.extend_from_slice(b",\"startTimeUnixNano\":\"");
    json::number(out, start.as_nanos() as u64);
    out.extend_from_slice(b"\",\"endTimeUnixNano\":\"");
    json::number(out, end.as_nanos() as u64);
    out.extend_from_slice(b"\",\"attributes\":[");
    let error = facts.status_code >= 500;
    let mut attrs = Attributes { out: &mut *out, first: true };
    attrs.string("node_id", &tags.node_id);
    if let Some(id) = facts.request_id {
        attrs.string("guid:x-request-id", id);
    }
    attrs.key("http.url", b"stringValue");
    attrs.out.push(b'"');
    attrs.out.extend_from_slice(facts.scheme.as_bytes());
    attrs.out.extend_from_slice(b"://");
    json::contents(attrs.out, facts.authority);
    json::contents(attrs.out, facts.path);
    attrs.out.extend_from_slice(b"\"}}");
    attrs.plain("http.method", facts.method);
    attrs.plain("downstream_cluster", "-");
    attrs.string("user_agent", facts.user_agent.unwrap_or("-"));
    attrs.plain("http.protocol", facts.protocol);
    if let Some(address) = facts.downstream_address {
        attrs.key("peer.address", b"stringValue");
        json::address(attrs.out, address);
        attrs.out.extend_from_slice(b"}}");
    }
    attrs.int("request_size", facts.request_bytes);
    if let Some(address) = facts.upstream_address {
        attrs.key("upstream_address", b"stringValue");
        json::address(attrs.out, address);
        attrs.out.extend_from_slice(b"}}");
    }
    if let Some(cluster) = facts.upstream_cluster {
        attrs.string("upstream_cluster", cluster);
        attrs.string("upstream_cluster.name", cluster);
    }
    attrs.int("http.status_code", u64::from(facts.status_code));
    attrs.int("response_size", facts.response_bytes);
    attrs.plain("response_flags", facts.response_flags);
    attrs.string("istio.canonical_service", &tags.canonical_service);
    attrs.string("istio.namespace", &tags.namespace);
    attrs.plain("component", "proxy");
    if error {
        attrs.plain("error", "true");
    }
    out.push(b']');
    if error {
        out.extend_from_slice(b",\"status\":{\"code\":");
        json::number(out, u64::from(STATUS_ERROR));
        out.push(b'}');
    }
    out.push(b'}');
}

/// The span's `attributes` array, written in place: `{"key":"…","value":{"<kind>":…}}`.
struct Attributes<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Attributes<'_> {
    /// Everything up to the value: `{"key":"<key>","value":{"<kind>":`. Keys are ours and
    /// need no escaping.
    fn key(&mut self, key: &'static str, kind: &[u8]) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.extend_from_slice(b"{\"key\":\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\",\"value\":{\"");
        self.out.extend_from_slice(kind);
        self.out.extend_from_slice(b"\":");
    }

    /// Request text: escaped when it needs to be.
    fn string(&mut self, key: &'static str, value: &str) {
        self.key(key, b"stringValue");
        json::string(self.out, value);
        self.out.extend_from_slice(b"}}");
    }

    /// The gateway's own vocabulary (a method token, protocol names, response flags): no
    /// quotes, backslashes or control bytes.
    fn plain(&mut self, key: &'static str, value: &str) {
        debug_assert!(!value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'), "{value:?}");
        self.key(key, b"stringValue");
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.extend_from_slice(b"\"}}");
    }

    /// OTLP JSON's `intValue` is a decimal string.
    fn int(&mut self, key: &'static str, value: u64) {
        self.key(key, b"intValue");
        self.out.push(b'"');
        json::number(self.out, value);
        self.out.extend_from_slice(b"\"}}");
    }
}

/// An OTLP `KeyValue` with a string value, for the resource attributes `export.rs` writes
/// once at startup.
#[derive(serde::Serialize)]
pub(crate) struct Attr<'a> {
    pub(crate) key: &'static str,
    pub(crate) value: Value<'a>,
}

/// OTLP `AnyValue`: the variant name is the JSON key.
#[derive(serde::Serialize)]
pub(crate) enum Value<'a> {
    #[serde(rename = "stringValue")]
    Str(&'a str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(span: &SpanContext, facts: &RequestFacts, tags: &GatewayTags) -> Vec<u8> {
        let mut out = b"<earlier span>".to_vec();
        encode(&mut out, span, facts, tags);
        out.split_off(b"<earlier span>".len())
    }

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            method: "GET",
            scheme: "http",
            authority: "bookinfo.example.com:8080",
            path: "/reviews/1",
            protocol: "HTTP/1.1",
            status_code: 503,
            response_flags: "UH",
            request_bytes: 5,
            response_bytes: 19,
            duration: Duration::from_millis(3),
            port: 80,
            destination: Some(("reviews.default.svc.cluster.local", 9080)),
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local"),
            upstream_address: None,
            request_id: Some("abc"),
            user_agent: None,
            downstream_address: Some("127.0.0.1:5555".parse().unwrap()),
            tracestate: Some("k=v"),
        }
    }

    #[test]
    fn otlp_json_shape() {
        let ctx = SpanContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0xab,
            parent_id: Some(0x00f067aa0ba902b7),
            sampled: true,
            debug: false,
            b3: None,
            b3_short_trace_id: false,
            drop_tracestate: false,
        };
        let tags = GatewayTags { node_id: "router~x".into(), canonical_service: "gw".into(), namespace: "ns".into() };
        let json: serde_json::Value = serde_json::from_slice(&encoded(&ctx, &facts(), &tags)).unwrap();
        assert_eq!(json["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(json["spanId"], "00000000000000ab");
        assert_eq!(json["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(json["traceState"], "k=v");
        assert_eq!(json["name"], "reviews.default.svc.cluster.local:9080/*");
        assert_eq!(json["kind"], 2);
        assert_eq!(json["status"]["code"], 2);
        let start: u64 = json["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = json["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert_eq!(end - start, 3_000_000);
        let attrs = json["attributes"].as_array().unwrap();
        let get = |k: &str| attrs.iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
        assert_eq!(get("http.status_code").unwrap()["intValue"], "503");
        assert_eq!(get("http.url").unwrap()["stringValue"], "http://bookinfo.example.com:8080/reviews/1");
        assert_eq!(get("error").unwrap()["stringValue"], "true");
        assert_eq!(get("component").unwrap()["stringValue"], "proxy");
        assert_eq!(get("upstream_address"), None);
        assert_eq!(get("peer.address").unwrap()["stringValue"], "127.0.0.1:5555");

        let root = SpanContext { parent_id: None, drop_tracestate: true, ..ctx };
        let mut ok = facts();
        (ok.status_code, ok.destination) = (200, None);
        let json: serde_json::Value = serde_json::from_slice(&encoded(&root, &ok, &tags)).unwrap();
        assert_eq!(json.get("parentSpanId"), None);
        assert_eq!(json.get("traceState"), None);
        assert_eq!(json.get("status"), None);
        assert_eq!(json["name"], "bookinfo.example.com:80/*");
    }

    #[test]
    fn request_text_is_escaped() {
        let ctx = SpanContext {
            trace_id: 1,
            span_id: 2,
            parent_id: None,
            sampled: true,
            debug: false,
            b3: None,
            b3_short_trace_id: false,
            drop_tracestate: false,
        };
        let tags =
            GatewayTags { node_id: "router~\"q\"".into(), canonical_service: "gw".into(), namespace: "ns".into() };
        let mut f = facts();
        f.path = "/a\"b\\c";
        f.user_agent = Some("tab\there, é");
        f.tracestate = Some("k=\u{1}");
        f.upstream_address = Some("[::1]:9080".parse().unwrap());
        f.downstream_address = Some("[2001:db8::7]:5555".parse().unwrap());
        f.destination = Some(("svc\"x", 9080));
        let json: serde_json::Value = serde_json::from_slice(&encoded(&ctx, &f, &tags)).unwrap();
        assert_eq!(json["traceId"], "00000000000000000000000000000001");
        assert_eq!(json["name"], "svc\"x:9080/*");
        assert_eq!(json["traceState"], "k=\u{1}");
        let attrs = json["attributes"].as_array().unwrap();
        let get = |k: &str| attrs.iter().find(|a| a["key"] == k).map(|a| a["value"]["stringValue"].clone());
        assert_eq!(get("http.url").unwrap(), "http://bookinfo.example.com:8080/a\"b\\c");
        assert_eq!(get("user_agent").unwrap(), "tab\there, é");
        assert_eq!(get("node_id").unwrap(), "router~\"q\"");
        assert_eq!(get("upstream_address").unwrap(), "[::1]:9080");
        assert_eq!(get("peer.address").unwrap(), "[2001:db8::7]:5555");
    }
}
