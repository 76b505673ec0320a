//! The contract between control plane and data plane: one immutable routing snapshot.
//!
//! Listeners (one per Gateway server port) → virtual hosts → ordered routes → clusters →
//! endpoints with labels. Serialisable so a remote controller can stream it and
//! `config_dump` can print it. No pingora or kube types here.
//!
//! Versions share their unchanged parts: virtual hosts, routes and clusters are [`Shared`]
//! (equal by pointer or content; the same object by pointer, see its docs), and services,
//! workloads and names are `Arc`s deduplicated within a snapshot. Why each type is laid out
//! as it is (boxed fields, inline strings, what each saved at 10k services) is in
//! docs/benchmarks.md, "The snapshot's layout".
//!
//! # Adding a field
//!
//! A new field of a type here needs, besides its translation:
//! - **sharing**: inside a [`Shared`] part it is reused with its part; a field that holds its
//!   own shared values (like `Endpoint::workload`) is deduplicated after decoding in
//!   [`Snapshot::share_decoded_parts`] as translation shares it;
//! - **delta** (`distribution::delta`): a field of [`Snapshot`] itself must be carried by the delta
//!   format (and its equality by [`Snapshot::same_content`]); fields inside listeners, virtual
//!   hosts and clusters travel with them;
//! - **compile reuse** (the gateway's `compiled::compile`): a compiled cluster or virtual host
//!   is kept while the snapshot hands the same [`Shared`] definition; state the gateway
//!   derives from a field must be rebuilt when the definition changes, and a field read from
//!   elsewhere (like the secrets a cluster names) must be compared there too.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

pub use crate::shared::Shared;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Assigned by the publisher; moves by one for every published change.
    pub version: u64,
    /// Sorted by port.
    pub listeners: Vec<Listener>,
    /// Keyed by cluster name (`outbound|PORT|SUBSET|HOST`, as Envoy in Istio names them).
    /// Shared with the gateway's compiled clusters, which keep their definition to tell an
    /// unchanged cluster on the next snapshot.
    pub clusters: BTreeMap<ClusterName, Shared<Cluster>>,
    /// TLS material by name (`kubernetes://ns/secret` or `file://path`), referenced by
    /// listeners and clusters. Private keys are never printed (see [`Secret`]'s serializer).
    #[serde(default)]
    pub secrets: BTreeMap<String, Secret>,
    /// Security policies that select this gateway and that meshgate cannot enforce yet; while
    /// any is listed the gateway denies (see `translate::policies`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced_policies: Vec<UnenforcedPolicy>,
}

/// A `security.istio.io` policy by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnenforcedPolicy {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// PEM certificate material. `Debug` and the default serializer redact the private key so a
/// config dump never leaks it; the wire format for remote gateways uses [`Secret::key_pem`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Certificate chain, leaf first.
    pub cert_pem: Option<String>,
    #[serde(serialize_with = "redact", default)]
    pub key_pem: Option<String>,
    /// Trust anchors for verifying the peer (client certificates downstream, servers upstream).
    pub ca_pem: Option<String>,
}

fn redact<S: serde::Serializer>(key: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("cert_pem", &self.cert_pem.as_ref().map(|c| c.len()))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "[redacted]"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// What a listener speaks on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// Plain HTTP/1.1, and HTTP/2 with prior knowledge (h2c), HTTP routes.
    Http,
    /// TLS on the socket. Per server (chosen by SNI): terminated then HTTP/1.1 or HTTP/2 by
    /// ALPN (HTTP routes), terminated then TCP (tcp routes), or passed through (tls routes).
    Https,
    /// Raw TCP, tcp routes.
    Tcp,
}

/// Downstream TLS of one Gateway server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerTls {
    /// SNI names this server answers (exact, `*.suffix`, `*`); lowercase.
    pub hosts: Vec<String>,
    pub mode: ServerTlsMode,
    /// After termination the server speaks HTTP (HTTPS, HTTP2, GRPC servers) rather than raw
    /// TCP (TLS servers with SIMPLE/MUTUAL).
    pub http: bool,
    /// Keys into [`Snapshot::secrets`] for the certificates and keys, in `credentialNames`
    /// order (one for `credentialName` or files; none for passthrough).
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Key into [`Snapshot::secrets`] for the client CA (MUTUAL, OPTIONAL_MUTUAL).
    pub client_ca: Option<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    /// Cipher suite names as rustls spells them; empty means rustls's defaults.
    pub cipher_suites: Vec<String>,
    /// Accepted client certificate SANs (MUTUAL); empty accepts any certificate the CA signed.
    pub subject_alt_names: Vec<String>,
    /// `gateway ns/name`, `servers[i]` for diagnostics and metrics.
    pub server: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    Simple,
    Mutual,
    OptionalMutual,
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

/// A tcp (or tls passthrough) route: the first whose match applies wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L4Route {
    pub name: String,
    pub virtual_service: String,
    /// A tls route for passthrough servers (matched by SNI) rather than a tcp route.
    pub passthrough: bool,
    /// SNI patterns (tls routes only); empty matches any.
    pub sni_hosts: Vec<String>,
    /// Gateway port the match is limited to.
    pub port: Option<u16>,
    pub destinations: Vec<WeightedCluster>,
    /// For a tcp route of a TLS-terminating server: the server it is bound to
    /// ([`ServerTls::server`]); each such server has its own tcp routes, as each has its own
    /// filter chain in Envoy. `None` for the tcp routes of a TCP port and for tls routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    /// Istio's name for the route config: `http.<port>`.
    pub name: String,
    /// The Gateway server `port.number` (the Service port); the gateway maps it to an address.
    pub port: u16,
    pub protocol: Protocol,
    /// The Gateway servers that make up this listener, for diagnostics (`gateway ns/name`).
    pub servers: Vec<ServerInfo>,
    /// Shared between snapshot versions: a VirtualService the translation reuses hands out
    /// the same host, so an edit allocates only the hosts it changes, and the gateway (and a
    /// replica applying a delta) tells an unchanged host by its pointer.
    #[serde(deserialize_with = "crate::memory::exact_list")]
    pub virtual_hosts: Vec<Shared<VirtualHost>>,
    /// TLS servers of an HTTPS or TLS listener, in Gateway order; chosen by SNI.
    #[serde(default)]
    pub tls: Vec<ServerTls>,
    /// Routes of TCP listeners and TLS listeners (passthrough or terminated).
    #[serde(default)]
    pub l4_routes: Vec<L4Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub gateway: String,
    pub port_name: String,
    pub hosts: Vec<CompactString>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// `domain:port`, as Istio names gateway virtual hosts.
    pub name: CompactString,
    /// Exact names, `*.suffix` wildcards or `*`; lowercase.
    #[serde(deserialize_with = "crate::memory::exact_list")]
    pub domains: Vec<CompactString>,
    /// In order; the first whose match applies wins. Shared with the translation cache
    /// (`translate::Reuse`): a VirtualService that did not change hands out the same routes.
    #[serde(deserialize_with = "crate::memory::exact_list")]
    pub routes: Vec<Shared<Route>>,
    /// `tls.httpsRedirect` on the Gateway server: every request gets a 301 to https.
    #[serde(default)]
    pub https_redirect: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The http route's `name`, or `<vs-namespace>/<vs-name>.http[<i>]`.
    pub name: CompactString,
    /// `namespace/name` of the VirtualService this route comes from.
    pub virtual_service: Arc<str>,
    /// Match blocks are OR-ed; empty means "match everything".
    #[serde(deserialize_with = "crate::memory::exact_slice")]
    pub matches: Box<[RouteMatch]>,
    pub action: RouteAction,
    /// Upstream response timeout; `None` means none (Istio's default). Longer than 49 days
    /// is capped there.
    pub timeout_ms: Option<u32>,
    /// `rewrite`: what the upstream request's path and authority become.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<Rewrite>>,
    /// `headers`: edits of every request and response of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<HeaderEdits>>,
    /// `retries`: Istio's default policy unless the route has its own.
    #[serde(default, skip_serializing_if = "Retries::is_istio_default")]
    pub retries: Retries,
    /// `fault`: delays and aborts injected before the upstream is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Box<Fault>>,
    /// `mirror` / `mirrors`: fire-and-forget copies of the route's requests.
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub mirrors: Box<[Mirror]>,
    /// `corsPolicy`: preflights answered by the gateway, CORS headers on responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<Cors>>,
}

/// One of a route's mirrors (Envoy's `RequestMirrorPolicy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub cluster: ClusterName,
    /// Share of requests copied, per million; never 0 (Istio drops a 0 % mirror).
    pub per_million: u32,
}

/// Istio's `CorsPolicy`, as Envoy's CORS filter gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cors {
    /// The origins allowed; a matcher that matches `*` allows every origin (Envoy's rule).
    pub allow_origins: Box<[StringMatch]>,
    /// Header values as sent (lists joined with `,`); empty ones are not sent.
    pub allow_methods: CompactString,
    pub allow_headers: CompactString,
    pub expose_headers: CompactString,
    /// `access-control-max-age`, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// `unmatchedPreflights: IGNORE`: a preflight from an origin not allowed gets an empty 200
    /// instead of going upstream (Istio's default forwards it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_unmatched_preflights: bool,
}

/// A route's retry policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retries {
    /// No `retries` on the route: Istio's default, 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with no
    /// retriable status (Istio 1.24 took 503 out; docs/compatibility.md), another endpoint for
    /// each retry unless the cluster hashes consistently. No allocation: most routes have it.
    #[default]
    IstioDefault,
    /// `attempts: 0`.
    Off,
    Policy(Box<RetryPolicy>),
}

impl Retries {
    pub fn is_istio_default(&self) -> bool {
        matches!(self, Retries::IstioDefault)
    }
}

/// Istio's `HTTPRetry`, as Envoy's `RetryPolicy` gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Retries after the first try (Envoy's `num_retries`).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u32>,
    pub retry_on: Box<[RetryOn]>,
    /// For [`RetryOn::RetriableStatusCodes`].
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub status_codes: Box<[u16]>,
    /// The backoff's base interval; Envoy's 25 ms when `None`. The cap is ten times it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u32>,
    /// Each retry goes to an endpoint not tried yet (Envoy's `previous_hosts` predicate);
    /// never under consistent hashing, as Istio leaves it out there.
    pub other_endpoint: bool,
}

/// Envoy's retry conditions (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    #[serde(rename = "5xx")]
    FiveXx,
    GatewayError,
    Reset,
    ResetBeforeRequest,
    ConnectFailure,
    #[serde(rename = "retriable-4xx")]
    Retriable4xx,
    RefusedStream,
    RetriableStatusCodes,
    RetriableHeaders,
    EnvoyRatelimited,
    Http3PostConnectFailure,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

impl RetryOn {
    pub const ALL: [RetryOn; 16] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::Retriable4xx,
        RetryOn::RefusedStream,
        RetryOn::RetriableStatusCodes,
        RetryOn::RetriableHeaders,
        RetryOn::EnvoyRatelimited,
        RetryOn::Http3PostConnectFailure,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::Internal,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];

    /// The name Envoy and Istio's `retryOn` use.
    pub fn name(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::RetriableHeaders => "retriable-headers",
            RetryOn::EnvoyRatelimited => "envoy-ratelimited",
            RetryOn::Http3PostConnectFailure => "http3-post-connect-failure",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::Internal => "internal",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
        }
    }

    pub fn parse(name: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Istio's `HTTPFaultInjection`: Envoy's fault filter, before the router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    pub fixed_delay_ms: u32,
    /// Share of requests delayed, per million (Envoy's `FractionalPercent`).
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    /// Share of requests aborted, per million.
    pub per_million: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    Http(u16),
    /// A gRPC status code (`grpcStatus` by name in Istio).
    Grpc(u8),
}

/// Istio's `Headers`, for a route or one of its destinations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderEdits {
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response: HeaderOps,
}

/// Applied in this order, as Envoy applies them: `remove`, then `set` (replacing every value),
/// then `add` (appending). Names are lowercase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub remove: Box<[CompactString]>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub set: Box<[(CompactString, CompactString)]>,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    pub add: Box<[(CompactString, CompactString)]>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    /// Replaces the matched prefix (a prefix match), or the whole path (an exact or regex
    /// match); with no uri match, the leading `/` (Envoy's behaviour for a route matching `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<CompactString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<CompactString>,
    /// `uriRegexRewrite`: every match of `pattern` in the path is replaced by `substitution`
    /// (RE2 syntax, `\1` for a capture group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex: Option<RegexRewrite>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegexRewrite {
    pub pattern: CompactString,
    pub substitution: CompactString,
}

/// One match block: every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub uri: Option<Box<StringMatch>>,
    pub scheme: Option<Box<StringMatch>>,
    pub method: Option<Box<StringMatch>>,
    pub authority: Option<Box<StringMatch>>,
    #[serde(deserialize_with = "crate::memory::exact_slice")]
    pub headers: Box<[KeyMatch]>,
    #[serde(deserialize_with = "crate::memory::exact_slice")]
    pub without_headers: Box<[KeyMatch]>,
    #[serde(deserialize_with = "crate::memory::exact_slice")]
    pub query_params: Box<[KeyMatch]>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

/// A named header or query parameter and how its value must match; `None` means "present".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMatch {
    /// Header names are lowercase; query parameter names are as written.
    pub name: CompactString,
    pub value: Option<StringMatch>,
}

/// Exact, prefix, or regex (RE2 syntax, must match the whole value as in Envoy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(CompactString),
    Prefix(CompactString),
    Regex(CompactString),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Weighted destinations; weights are relative (they usually sum to 100).
    Route {
        #[serde(deserialize_with = "crate::memory::exact_slice")]
        destinations: Box<[WeightedCluster]>,
    },
    /// `redirect`: the gateway answers with a 3xx and a `location`.
    Redirect(Box<Redirect>),
    /// `directResponse`: the gateway answers with a fixed status and body.
    DirectResponse(Box<DirectResponse>),
}

impl RouteAction {
    /// Where the route sends requests; empty when the gateway answers them itself.
    pub fn destinations(&self) -> &[WeightedCluster] {
        match self {
            RouteAction::Route { destinations } => destinations,
            RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => &[],
        }
    }

    /// [`destinations`](Self::destinations), to edit.
    pub fn destinations_mut(&mut self) -> &mut [WeightedCluster] {
        match self {
            RouteAction::Route { destinations } => destinations,
            RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => &mut [],
        }
    }
}

/// Istio's `HTTPRedirect`: each part of the request's URL that is set is replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redirect {
    /// The new path (with a query of its own, or the request's query is kept).
    pub path: Option<CompactString>,
    /// `prefixRewrite`: what replaces the prefix the route matched (the rest of the path and
    /// the query stay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<CompactString>,
    /// The new host (`authority`), taken as written: the request's port goes.
    pub authority: Option<CompactString>,
    pub port: RedirectPort,
    pub scheme: Option<CompactString>,
    /// 301 unless `redirectCode` says otherwise.
    pub code: u16,
}

/// The port of a redirect's `location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPort {
    /// No `port`, or `derivePort: FROM_PROTOCOL_DEFAULT` (which Istio sends Envoy as no port
    /// setting): the request's port stays, unless the scheme changes and it was the old
    /// scheme's default (Envoy's `processRequestHost`).
    Unset,
    /// `derivePort: FROM_REQUEST_PORT`: the port of the Gateway server the request came in on
    /// (Istio writes that listener's port into the route).
    Listener,
    /// `port`. Like the listener's, left out of the URL when it is the scheme's default.
    Port(u16),
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<[u8]>>,
}

/// A cluster's name, shared by the cluster, the snapshot's and the gateway's cluster maps and
/// every route destination naming it (serialised as the plain string).
pub type ClusterName = Arc<str>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub cluster: ClusterName,
    pub weight: u32,
    /// The destination's own `headers`, applied before the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Box<HeaderEdits>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: ClusterName,
    /// Shared by the service's clusters (one per subset and port) and the service registry.
    pub service: Arc<ServiceRef>,
    pub port: u16,
    pub subset: Option<CompactString>,
    pub load_balancer: LoadBalancer,
    /// Ready endpoints only, after subset selection.
    #[serde(deserialize_with = "crate::memory::exact_list")]
    pub endpoints: Vec<Endpoint>,
    /// What the upstream speaks (Istio's protocol selection from the service port).
    #[serde(default)]
    pub upstream_protocol: UpstreamProtocol,
    /// TLS origination from the DestinationRule; `None` is plain text.
    #[serde(default)]
    pub tls: Option<Box<UpstreamTls>>,
    /// No Service or ServiceEntry defines the host, or no DestinationRule defines the subset:
    /// Envoy would have no such cluster, and a request routed to it gets 503 with flag `NC`
    /// (cluster not found), not `UH`. Kept so that route weights still count it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_found: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 (h2c in plain text, ALPN h2 over TLS): ports named `grpc*`/`http2*` or with
    /// appProtocol grpc/http2/kubernetes.io/h2c.
    Http2,
    /// Raw TCP (tcp routes).
    Tcp,
}

/// DestinationRule `trafficPolicy.tls` (SIMPLE or MUTUAL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamTls {
    /// SNI to send as configured; empty means "choose": the first DNS subjectAltName if any,
    /// else the destination host.
    pub sni: String,
    /// Key into [`Snapshot::secrets`] for the CA; `None` means the system roots.
    pub ca: Option<String>,
    /// Key into [`Snapshot::secrets`] for the client certificate (MUTUAL).
    pub client_certificate: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
}

/// Identity of the destination service, for metrics labels and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceRef {
    /// FQDN such as `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub host: Box<str>,
    pub name: CompactString,
    pub namespace: CompactString,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    RoundRobin,
    /// Istio's default; also what LEAST_CONN and PASSTHROUGH become.
    LeastRequest,
    Random,
    ConsistentHash {
        key: Box<HashKey>,
        algorithm: HashAlgorithm,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    Header(String),
    Cookie {
        name: String,
        path: Option<String>,
        /// Max-Age of the cookie the gateway sets when the request has none; `None` or 0 sets a
        /// session cookie.
        ttl_seconds: Option<u64>,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// On the wire as its text (`"10.0.0.7"`, `"fd00::7"`); the gateway uses it as it is.
    pub address: std::net::IpAddr,
    pub port: u16,
    pub weight: u32,
    /// Shared with the service registry and every other cluster of the same service (its
    /// default and subset clusters): one copy of a pod's labels and names, not one per cluster.
    pub workload: Arc<Workload>,
}

/// Who serves at an endpoint.
#[derive(Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// The Pod's own labels (shared with its metadata).
    pub labels: crate::labels::SharedLabels,
    /// Owning workload (Deployment name for pods created by one), for `destination_workload`.
    pub name: CompactString,
    pub namespace: CompactString,
}

impl Endpoint {
    pub fn labels(&self) -> &crate::labels::Labels {
        &self.workload.labels
    }

    /// Istio's `destination_version`: the `version` label (or its app.kubernetes.io form).
    pub fn version(&self) -> &str {
        let labels = self.labels();
        labels
            .get("version")
            .or_else(|| labels.get("app.kubernetes.io/version"))
            .or_else(|| labels.get("service.istio.io/canonical-revision"))
            .map(CompactString::as_str)
            .unwrap_or("unknown")
    }

    /// Istio's `destination_app`.
    pub fn app(&self) -> &str {
        let labels = self.labels();
        labels
            .get("app")
            .or_else(|| labels.get("app.kubernetes.io/name"))
            .map(CompactString::as_str)
            .unwrap_or("unknown")
    }
}

impl VirtualHost {
    /// The host of one domain on a listener port, named `domain:port` as Istio names gateway
    /// virtual hosts.
    pub fn new(domain: &str, port: u16, routes: Vec<Shared<Route>>, https_redirect: bool) -> VirtualHost {
        VirtualHost {
            name: compact_str::format_compact!("{domain}:{port}"),
            domains: vec![domain.into()],
            routes,
            https_redirect,
        }
    }
}

impl Snapshot {
    /// A snapshot with everything but the version; used to publish only real changes. Parts
    /// shared with the previous translation compare by pointer first ([`Shared`]).
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.listeners == other.listeners
            && self.clusters == other.clusters
            && self.secrets == other.secrets
            && self.unenforced_policies == other.unenforced_policies
    }

    /// Shares the parts a decoded snapshot holds as separate equal copies, as translation
    /// shares them: each cluster's name (its map key) with the cluster and every destination
    /// naming it, a service's `ServiceRef` among its clusters, each workload among the
    /// endpoints it serves, and a VirtualService's name among its routes. A gateway replica
    /// calls this on a snapshot from the wire, whose decoding made a copy of each.
    pub fn share_decoded_parts(&mut self) {
        let Snapshot { listeners, clusters, .. } = self;
        // Looked up by value through the `Arc`s they hold: no key copies per cluster or endpoint.
        let mut services: HashSet<Arc<ServiceRef>> = HashSet::new();
        let mut workloads: HashSet<Arc<Workload>> = HashSet::new();
        for (name, cluster) in clusters.iter_mut() {
            let cluster = Shared::make_mut(cluster);
            cluster.name = name.clone();
            cluster.service = first_of(&mut services, &cluster.service);
            for endpoint in &mut cluster.endpoints {
                endpoint.workload = first_of(&mut workloads, &endpoint.workload);
            }
        }
        let share = |destinations: &mut [WeightedCluster]| {
            for d in destinations {
                if let Some((name, _)) = clusters.get_key_value(&d.cluster) {
                    d.cluster = name.clone();
                }
            }
        };
        let mut virtual_services: HashSet<Arc<str>> = HashSet::new();
        for listener in listeners {
            for host in &mut listener.virtual_hosts {
                for route in &mut Shared::make_mut(host).routes {
                    let route = Shared::make_mut(route);
                    route.virtual_service = first_of(&mut virtual_services, &route.virtual_service);
                    share(route.action.destinations_mut());
                }
            }
            for route in &mut listener.l4_routes {
                share(&mut route.destinations);
            }
        }
    }
}

/// The first of the equal values `seen` met, remembering `item` when it is the first.
fn first_of<T: Hash + Eq + ?Sized>(seen: &mut HashSet<Arc<T>>, item: &Arc<T>) -> Arc<T> {
    match seen.get(&**item) {
        Some(first) => first.clone(),
        None => {
            seen.insert(item.clone());
            item.clone()
        }
    }
}
