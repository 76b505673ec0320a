//! networking.istio.io specs (Gateway, VirtualService, DestinationRule, ServiceEntry,
//! WorkloadEntry), field names as in Istio's API reference.

use super::{CompactString, Labels};
use indexmap::IndexMap;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Fields that Istio defines and meshgate parses but does not act on yet. Kept opaque so they
/// are recognised (a warning says "not supported yet") instead of reported as unknown.
/// Boxed: most of these fields are absent, and an inline `Value` is 32 bytes per field per
/// route or policy even when it is `None` (a route declares thirteen of them).
pub type Opaque = Box<serde_json::Value>;

// ---------------------------------------------------------------- Gateway

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: ServerPort,
    #[serde(default)]
    pub bind: Option<String>,
    /// Inline when short: a Gateway may list thousands.
    #[serde(default)]
    pub hosts: Vec<CompactString>,
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
}

/// Gateway `servers[].tls`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    #[serde(default)]
    pub https_redirect: bool,
    /// PASSTHROUGH, SIMPLE, MUTUAL, AUTO_PASSTHROUGH, ISTIO_MUTUAL, OPTIONAL_MUTUAL.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub server_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub ca_crl: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub credential_names: Vec<String>,
    #[serde(default)]
    pub tls_certificates: Vec<Opaque>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub verify_certificate_spki: Vec<String>,
    #[serde(default)]
    pub verify_certificate_hash: Vec<String>,
    /// TLS_AUTO, TLSV1_0, TLSV1_1, TLSV1_2, TLSV1_3.
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerPort {
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

// ---------------------------------------------------------------- VirtualService

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
/// Lists as boxed slices (16 bytes each, not 24): one spec per VirtualService, 10k at scale.
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Box<[CompactString]>,
    #[serde(default)]
    pub gateways: Box<[CompactString]>,
    #[serde(default)]
    pub http: Box<[HttpRoute]>,
    #[serde(default)]
    pub tls: Box<[TlsRoute]>,
    #[serde(default)]
    pub tcp: Box<[TcpRoute]>,
    #[serde(default)]
    pub export_to: Box<[String]>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub source_subnet: Option<String>,
}

/// Destination of a tcp or tls route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i64>,
}

/// An Istio `HTTPRoute`. The fields meshgate does not act on yet (redirect, rewrite, retries,
/// fault, mirrors, CORS, header edits) are kept behind one pointer: as twelve inline options
/// they were 96 of a route's 176 bytes, at 30k routes for 10k VirtualServices.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(from = "written::HttpRoute")]
pub struct HttpRoute {
    pub name: Option<Box<str>>,
    pub matches: Vec<HttpMatchRequest>,
    pub route: Vec<HttpRouteDestination>,
    /// Route timeout, protobuf Duration text such as "2s" or "0.5s".
    pub timeout: Option<Box<str>>,
    /// The fields a route rarely sets, behind one pointer.
    pub rest: Option<Box<HttpRouteRest>>,
}

impl HttpRoute {
    pub fn rest(&self) -> &HttpRouteRest {
        static NONE: HttpRouteRest = HttpRouteRest {
            redirect: None,
            direct_response: None,
            delegate: None,
            rewrite: None,
            retries: None,
            fault: None,
            mirror: None,
            mirrors: None,
            mirror_percentage: None,
            mirror_percent: None,
            cors_policy: None,
            headers: None,
        };
        self.rest.as_deref().unwrap_or(&NONE)
    }
}

/// `HTTPRoute` fields a route rarely sets: typed where implemented, [`Opaque`] where only
/// recognised (a warning says "not supported yet").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpRouteRest {
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<HttpRewrite>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    pub mirrors: Option<Vec<HttpMirrorPolicy>>,
    pub mirror_percentage: Option<Percent>,
    /// The deprecated integer percentage, used when `mirrorPercentage` is absent.
    pub mirror_percent: Option<u32>,
    pub cors_policy: Option<Box<CorsPolicy>>,
    pub headers: Option<Box<Headers>>,
}

/// Istio's `HTTPRedirect`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<Box<str>>,
    #[serde(default)]
    pub authority: Option<Box<str>>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub derive_port: Option<DerivePort>,
    #[serde(default)]
    pub scheme: Option<Box<str>>,
    #[serde(default)]
    pub redirect_code: Option<u32>,
    #[serde(default)]
    pub prefix_rewrite: Option<Box<str>>,
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    #[serde(default)]
    pub uri: Option<Box<str>>,
    #[serde(default)]
    pub authority: Option<Box<str>>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `RegexRewrite`: every match of `match` in the path is replaced by `rewrite` (RE2 syntax,
/// `\1` for a capture group).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RegexRewrite {
    #[serde(default, rename = "match")]
    pub pattern: String,
    #[serde(default)]
    pub rewrite: String,
}

/// `HTTPRedirect.derivePort`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DerivePort {
    FromProtocolDefault,
    FromRequestPort,
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: i32,
    #[serde(default)]
    pub per_try_timeout: Option<Box<str>>,
    /// Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` conditions and status codes,
    /// comma-separated.
    #[serde(default)]
    pub retry_on: Option<Box<str>>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<Box<str>>,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<Box<str>>,
    #[serde(default)]
    pub exponential_delay: Option<Box<str>>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// The deprecated integer percentage, used when `percentage` is absent.
    #[serde(default)]
    pub percent: Option<i32>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<i32>,
    #[serde(default)]
    pub grpc_status: Option<Box<str>>,
    #[serde(default)]
    pub http2_error: Option<Box<str>>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Istio's `HTTPMirrorPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    #[serde(default)]
    pub destination: Option<Destination>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Istio's `Delegate`: the VirtualService whose routes this route's matches lead to.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    #[serde(default)]
    pub name: Box<str>,
    #[serde(default)]
    pub namespace: Option<Box<str>>,
}

/// Istio's `CorsPolicy`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// The deprecated exact origins, used when `allowOrigins` is empty.
    #[serde(default)]
    pub allow_origin: Vec<Box<str>>,
    #[serde(default)]
    pub allow_methods: Vec<Box<str>>,
    #[serde(default)]
    pub allow_headers: Vec<Box<str>>,
    #[serde(default)]
    pub expose_headers: Vec<Box<str>>,
    #[serde(default)]
    pub max_age: Option<Box<str>>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED` (forward), `FORWARD` or `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<Box<str>>,
}

/// Istio's `Percent`: a double in 0..=100.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// `HTTPBody`: text, or base64 bytes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpBody {
    #[serde(default)]
    pub string: Option<String>,
    #[serde(default)]
    pub bytes: Option<String>,
}

impl From<written::HttpRoute> for HttpRoute {
    fn from(w: written::HttpRoute) -> HttpRoute {
        let rest = HttpRouteRest {
            redirect: w.redirect,
            direct_response: w.direct_response,
            delegate: w.delegate,
            rewrite: w.rewrite,
            retries: w.retries,
            fault: w.fault,
            mirror: w.mirror,
            mirrors: w.mirrors,
            mirror_percentage: w.mirror_percentage,
            mirror_percent: w.mirror_percent,
            cors_policy: w.cors_policy,
            headers: w.headers,
        };
        HttpRoute {
            name: w.name,
            matches: w.matches,
            route: w.route,
            timeout: w.timeout,
            rest: (rest != HttpRouteRest::default()).then(|| Box::new(rest)),
        }
    }
}

/// An Istio `HTTPMatchRequest`. A match nearly always sets a uri or a header and nothing
/// else, so the other conditions are behind one pointer: inline they were 130 of a match's
/// 160 bytes, at 30k matches for 10k VirtualServices.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(from = "written::HttpMatchRequest")]
pub struct HttpMatchRequest {
    pub uri: Option<Box<StringMatch>>,
    pub headers: KeyedMatches,
    pub ignore_uri_case: bool,
    pub more: Option<Box<MoreConditions>>,
}

impl HttpMatchRequest {
    /// The conditions other than uri and headers (all unset when there are none).
    pub fn more(&self) -> &MoreConditions {
        static NONE: MoreConditions = MoreConditions {
            name: None,
            scheme: None,
            method: None,
            authority: None,
            without_headers: KeyedMatches::NONE,
            query_params: KeyedMatches::NONE,
            port: None,
            source_labels: BTreeMap::new(),
            gateways: Vec::new(),
            source_namespace: None,
            stat_prefix: None,
        };
        self.more.as_deref().unwrap_or(&NONE)
    }
}

/// The rarely set conditions of an `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MoreConditions {
    pub name: Option<Box<str>>,
    pub scheme: Option<Box<StringMatch>>,
    pub method: Option<Box<StringMatch>>,
    pub authority: Option<Box<StringMatch>>,
    pub without_headers: KeyedMatches,
    pub query_params: KeyedMatches,
    pub port: Option<u32>,
    pub source_labels: BTreeMap<String, String>,
    pub gateways: Vec<String>,
    pub source_namespace: Option<Box<str>>,
    pub stat_prefix: Option<Box<str>>,
}

impl From<written::HttpMatchRequest> for HttpMatchRequest {
    fn from(w: written::HttpMatchRequest) -> HttpMatchRequest {
        let more = MoreConditions {
            name: w.name,
            scheme: w.scheme,
            method: w.method,
            authority: w.authority,
            without_headers: w.without_headers,
            query_params: w.query_params,
            port: w.port,
            source_labels: w.source_labels,
            gateways: w.gateways,
            source_namespace: w.source_namespace,
            stat_prefix: w.stat_prefix,
        };
        HttpMatchRequest {
            uri: w.uri,
            headers: w.headers,
            ignore_uri_case: w.ignore_uri_case,
            more: (more != MoreConditions::default()).then(|| Box::new(more)),
        }
    }
}

/// `HTTPRoute` and `HTTPMatchRequest` as written, field for field: what decoding (with its
/// unknown-field warnings and error paths) sees, converted at once to the compact forms above.
mod written {
    use super::{HttpMatchRequest as Match, HttpRouteDestination, KeyedMatches, StringMatch};
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct HttpRoute {
        #[serde(default)]
        pub name: Option<Box<str>>,
        #[serde(default, rename = "match")]
        pub matches: Vec<Match>,
        #[serde(default)]
        pub route: Vec<HttpRouteDestination>,
        #[serde(default)]
        pub timeout: Option<Box<str>>,
        #[serde(default)]
        pub redirect: Option<super::HttpRedirect>,
        #[serde(default)]
        pub direct_response: Option<super::HttpDirectResponse>,
        #[serde(default)]
        pub delegate: Option<super::Delegate>,
        #[serde(default)]
        pub rewrite: Option<super::HttpRewrite>,
        #[serde(default)]
        pub retries: Option<super::HttpRetry>,
        #[serde(default)]
        pub fault: Option<super::HttpFaultInjection>,
        #[serde(default)]
        pub mirror: Option<super::Destination>,
        #[serde(default)]
        pub mirrors: Option<Vec<super::HttpMirrorPolicy>>,
        #[serde(default)]
        pub mirror_percentage: Option<super::Percent>,
        #[serde(default)]
        pub mirror_percent: Option<u32>,
        #[serde(default)]
        pub cors_policy: Option<Box<super::CorsPolicy>>,
        #[serde(default)]
        pub headers: Option<Box<super::Headers>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct HttpMatchRequest {
        #[serde(default)]
        pub name: Option<Box<str>>,
        #[serde(default)]
        pub uri: Option<Box<StringMatch>>,
        #[serde(default)]
        pub scheme: Option<Box<StringMatch>>,
        #[serde(default)]
        pub method: Option<Box<StringMatch>>,
        #[serde(default)]
        pub authority: Option<Box<StringMatch>>,
        #[serde(default)]
        pub headers: KeyedMatches,
        #[serde(default)]
        pub without_headers: KeyedMatches,
        #[serde(default)]
        pub query_params: KeyedMatches,
        #[serde(default)]
        pub port: Option<u32>,
        #[serde(default)]
        pub ignore_uri_case: bool,
        #[serde(default)]
        pub source_labels: BTreeMap<String, String>,
        #[serde(default)]
        pub gateways: Vec<String>,
        #[serde(default)]
        pub source_namespace: Option<Box<str>>,
        #[serde(default)]
        pub stat_prefix: Option<Box<str>>,
    }
}

/// A map of name to `StringMatch` (headers, withoutHeaders, queryParams) in the order written.
/// Decoded exactly as an `IndexMap` (same errors, a repeated key keeps its first position and
/// takes the last value), then kept as a boxed slice of pairs: the map's hash index and
/// spare capacity were most of the 230 bytes a one-header match took. Nothing when empty,
/// which it nearly always is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyedMatches(Option<Box<[(CompactString, StringMatch)]>>);

type PairRef<'a> = fn(&'a (CompactString, StringMatch)) -> (&'a CompactString, &'a StringMatch);

impl KeyedMatches {
    /// No conditions (for constant defaults).
    pub const NONE: KeyedMatches = KeyedMatches(None);

    pub fn iter(&self) -> std::iter::Map<std::slice::Iter<'_, (CompactString, StringMatch)>, PairRef<'_>> {
        self.0.as_deref().unwrap_or_default().iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<&StringMatch> {
        self.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    }

    /// `base`'s conditions with `over`'s added, replacing those of the same key (Istio's
    /// `maps.MergeCopy`).
    pub fn merged(base: &KeyedMatches, over: &KeyedMatches) -> KeyedMatches {
        let mut pairs: Vec<(CompactString, StringMatch)> =
            base.iter().filter(|(k, _)| over.get(k).is_none()).map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.extend(over.iter().map(|(k, v)| (k.clone(), v.clone())));
        KeyedMatches((!pairs.is_empty()).then(|| pairs.into_boxed_slice()))
    }
}

impl<'a> IntoIterator for &'a KeyedMatches {
    type Item = (&'a CompactString, &'a StringMatch);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (CompactString, StringMatch)>, PairRef<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'de> Deserialize<'de> for KeyedMatches {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs: Vec<_> = IndexMap::<CompactString, StringMatch>::deserialize(deserializer)?.into_iter().collect();
        Ok(KeyedMatches((!pairs.is_empty()).then(|| pairs.into_boxed_slice())))
    }
}

/// Istio's `StringMatch` oneof. An empty object means "present" for header matches.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<CompactString>,
    #[serde(default)]
    pub prefix: Option<CompactString>,
    #[serde(default)]
    pub regex: Option<CompactString>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<i32>,
    #[serde(default)]
    pub headers: Option<Box<Headers>>,
}

/// Istio's `Headers`: edits of the request going up and of the response coming down.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Inline when short (most are): one per route destination, 40k at 10k VirtualServices.
    pub host: CompactString,
    #[serde(default)]
    pub subset: Option<CompactString>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: u32,
}

// ---------------------------------------------------------------- DestinationRule

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: CompactString,
    /// Boxed: a `TrafficPolicy` is 650 bytes inline and most subsets have none.
    #[serde(default)]
    pub traffic_policy: Option<Box<TrafficPolicy>>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: CompactString,
    #[serde(default)]
    pub labels: Labels,
    /// Boxed: a `TrafficPolicy` is 650 bytes inline and most subsets have none.
    #[serde(default)]
    pub traffic_policy: Option<Box<TrafficPolicy>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    #[serde(default)]
    pub connection_pool: Option<Opaque>,
    #[serde(default)]
    pub outlier_detection: Option<Opaque>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    #[serde(default)]
    pub tunnel: Option<Opaque>,
    #[serde(default)]
    pub proxy_protocol: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(default)]
    pub connection_pool: Option<Opaque>,
    #[serde(default)]
    pub outlier_detection: Option<Opaque>,
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

/// DestinationRule `trafficPolicy.tls`: TLS origination to upstreams.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    /// ROUND_ROBIN, LEAST_CONN, RANDOM, PASSTHROUGH, LEAST_REQUEST, UNSPECIFIED.
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default)]
    pub locality_lb_setting: Option<Opaque>,
    #[serde(default)]
    pub warmup_duration_secs: Option<Opaque>,
    #[serde(default)]
    pub warmup: Option<Opaque>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<MagLev>,
    /// Deprecated top-level form of `ringHash.minimumRingSize`.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MagLev {
    #[serde(default)]
    pub table_size: Option<u64>,
}

// ---------------------------------------------------------------- ServiceEntry, WorkloadEntry

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub number: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_port: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}
