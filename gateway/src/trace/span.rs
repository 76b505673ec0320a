//! The gateway's server span for one request, encoded as an OTLP/HTTP JSON `Span`
//! (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding: ids as hex strings,
//! enums as integers, 64-bit integers as decimal strings).
//!
//! Only sampled requests get here. The span is serialised straight from borrowed request
//! state into one buffer, which is all that crosses to the exporter thread (the access log
//! works the same way).

use super::context::{write_hex, SpanContext};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// OTLP `SpanKind.SPAN_KIND_SERVER`: the gateway serves the downstream request.
const KIND_SERVER: u8 = 2;
/// OTLP `Status.STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

/// What a span says about a finished request, taken from its exchange record.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub scheme: &'static str,
    pub authority: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub status_code: u16,
    pub response_flags: &'static str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration: Duration,
    /// Gateway server port the request came in on.
    pub port: u16,
    /// The destination service host and port, e.g. `reviews.default.svc.cluster.local`, 9080.
    pub destination: Option<(&'a str, u16)>,
    /// Envoy-style cluster name, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub upstream_cluster: Option<&'a str>,
    pub upstream_address: Option<SocketAddr>,
    pub request_id: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub downstream_address: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    pub fn of(x: &crate::telemetry::Exchange<'a>, downstream_address: Option<&'a str>) -> RequestFacts<'a> {
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
            downstream_address,
            tracestate: x.tracestate(),
        }
    }
}

/// Span attributes the same for every request of this gateway (Envoy sets these as tags).
pub struct GatewayTags {
    pub node_id: String,
    pub canonical_service: String,
    pub namespace: String,
}

/// Serialises one span as OTLP JSON into a fresh buffer.
pub fn encode(span: &SpanContext, facts: &RequestFacts, tags: &GatewayTags) -> Vec<u8> {
    let end = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = end.saturating_sub(facts.duration);
    // Envoy's operation name for Istio routes: `<destination host>:<port>/*`. Without a
    // destination (404, 503 before routing) it uses the request's authority.
    let name = match facts.destination {
        Some((host, port)) => format!("{host}:{port}/*"),
        None => format!("{}:{}/*", crate::head::strip_port(facts.authority), facts.port),
    };
    let url = format!("{}://{}{}", facts.scheme, facts.authority, facts.path);
    let upstream_address = facts.upstream_address.map(|a| a.to_string());
    let error = facts.status_code >= 500;
    let attributes = [
        Some(attr("node_id", Value::Str(&tags.node_id))),
        facts.request_id.map(|id| attr("guid:x-request-id", Value::Str(id))),
        Some(attr("http.url", Value::Str(&url))),
        Some(attr("http.method", Value::Str(facts.method))),
        Some(attr("downstream_cluster", Value::Str("-"))),
        Some(attr("user_agent", Value::Str(facts.user_agent.unwrap_or("-")))),
        Some(attr("http.protocol", Value::Str(facts.protocol))),
        facts.downstream_address.map(|a| attr("peer.address", Value::Str(a))),
        Some(attr("request_size", Value::Int(facts.request_bytes as i64))),
        upstream_address.as_deref().map(|a| attr("upstream_address", Value::Str(a))),
        facts.upstream_cluster.map(|c| attr("upstream_cluster", Value::Str(c))),
        facts.upstream_cluster.map(|c| attr("upstream_cluster.name", Value::Str(c))),
        Some(attr("http.status_code", Value::Int(i64::from(facts.status_code)))),
        Some(attr("response_size", Value::Int(facts.response_bytes as i64))),
        Some(attr("response_flags", Value::Str(facts.response_flags))),
        Some(attr("istio.canonical_service", Value::Str(&tags.canonical_service))),
        Some(attr("istio.namespace", Value::Str(&tags.namespace))),
        Some(attr("component", Value::Str("proxy"))),
        error.then(|| attr("error", Value::Str("true"))),
    ];
    let wire = WireSpan {
        trace_id: Hex::<32>(span.trace_id),
        span_id: Hex::<16>(u128::from(span.span_id)),
        parent_span_id: span.parent_id.map(|p| Hex::<16>(u128::from(p))),
        trace_state: facts.tracestate.filter(|_| !span.drop_tracestate),
        name: &name,
        kind: KIND_SERVER,
        start_time_unix_nano: Decimal(start.as_nanos() as u64),
        end_time_unix_nano: Decimal(end.as_nanos() as u64),
        attributes: Present(&attributes),
        status: error.then_some(Status { code: STATUS_ERROR }),
    };
    let mut out = Vec::with_capacity(1024);
    // Writing into a Vec cannot fail and every field serialises.
    let _ = serde_json::to_writer(&mut out, &wire);
    out
}

fn attr<'a>(key: &'static str, value: Value<'a>) -> Attr<'a> {
    Attr { key, value }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireSpan<'a> {
    trace_id: Hex<32>,
    span_id: Hex<16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<Hex<16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_state: Option<&'a str>,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: Decimal,
    end_time_unix_nano: Decimal,
    attributes: Present<'a, Attr<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

#[derive(serde::Serialize)]
pub(crate) struct Attr<'a> {
    pub key: &'static str,
    pub value: Value<'a>,
}

/// OTLP `AnyValue`: the variant name is the JSON key.
#[derive(serde::Serialize)]
pub(crate) enum Value<'a> {
    #[serde(rename = "stringValue")]
    Str(&'a str),
    #[serde(rename = "intValue")]
    Int(#[serde(serialize_with = "decimal")] i64),
}

#[derive(serde::Serialize)]
struct Status {
    code: u8,
}

/// The `Some` entries of a fixed array, as a JSON array (no intermediate Vec).
struct Present<'a, T>(&'a [Option<T>]);

impl<T: Serialize> Serialize for Present<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for item in self.0.iter().flatten() {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

/// Lowercase hex of N digits, as OTLP JSON encodes trace and span ids.
struct Hex<const N: usize>(u128);

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 32];
        write_hex(&mut buf, self.0, N);
        s.serialize_str(std::str::from_utf8(&buf[..N]).unwrap_or_default())
    }
}

/// 64-bit integers are JSON strings in OTLP (JSON numbers lose precision past 2^53).
struct Decimal(u64);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn decimal<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            downstream_address: Some("127.0.0.1:5555"),
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
        let json: serde_json::Value = serde_json::from_slice(&encode(&ctx, &facts(), &tags)).unwrap();
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

        let root = SpanContext { parent_id: None, drop_tracestate: true, ..ctx };
        let mut ok = facts();
        (ok.status_code, ok.destination) = (200, None);
        let json: serde_json::Value = serde_json::from_slice(&encode(&root, &ok, &tags)).unwrap();
        assert_eq!(json.get("parentSpanId"), None);
        assert_eq!(json.get("traceState"), None);
        assert_eq!(json.get("status"), None);
        assert_eq!(json["name"], "bookinfo.example.com:80/*");
    }
}
