//! The contract between control plane and data plane: one immutable routing snapshot.
//!
//! Listeners (one per Gateway server port) → virtual hosts → ordered routes → clusters →
//! endpoints with labels. Serialisable so a remote controller can stream it and
//! `config_dump` can print it. No pingora or kube types here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Assigned by the publisher; moves by one for every published change.
    pub version: u64,
    /// Sorted by port.
    pub listeners: Vec<Listener>,
    /// Keyed by cluster name (`outbound|PORT|SUBSET|HOST`, as Envoy in Istio names them).
    pub clusters: BTreeMap<String, Cluster>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
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
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub gateway: String,
    pub port_name: String,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    /// `domain:port`, as Istio names gateway virtual hosts.
    pub name: String,
    /// Exact names, `*.suffix` wildcards or `*`; lowercase.
    pub domains: Vec<String>,
    /// In order; the first whose match applies wins.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The http route's `name`, or `<vs-namespace>/<vs-name>.http[<i>]`.
    pub name: String,
    /// `namespace/name` of the VirtualService this route comes from.
    pub virtual_service: String,
    /// Match blocks are OR-ed; empty means "match everything".
    pub matches: Vec<RouteMatch>,
    pub action: RouteAction,
    /// Upstream response timeout; `None` means none (Istio's default).
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<KeyMatch>,
    pub without_headers: Vec<KeyMatch>,
    pub query_params: Vec<KeyMatch>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

/// A named header or query parameter and how its value must match; `None` means "present".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMatch {
    /// Header names are lowercase; query parameter names are as written.
    pub name: String,
    pub value: Option<StringMatch>,
}

/// Exact, prefix, or regex (RE2 syntax, must match the whole value as in Envoy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    /// Weighted destinations; weights are relative (they usually sum to 100).
    Route { destinations: Vec<WeightedCluster> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    pub service: ServiceRef,
    pub port: u16,
    pub subset: Option<String>,
    pub load_balancer: LoadBalancer,
    /// Ready endpoints only, after subset selection.
    pub endpoints: Vec<Endpoint>,
}

/// Identity of the destination service, for metrics labels and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    /// FQDN such as `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub host: String,
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    RoundRobin,
    /// Istio's default; also what LEAST_CONN and PASSTHROUGH become.
    LeastRequest,
    Random,
    ConsistentHash {
        key: HashKey,
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
    /// IP address literal.
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    /// Owning workload (Deployment name for pods created by one), for `destination_workload`.
    pub workload: String,
    pub workload_namespace: String,
}

impl Endpoint {
    /// Istio's `destination_version`: the `version` label (or its app.kubernetes.io form).
    pub fn version(&self) -> &str {
        self.labels
            .get("version")
            .or_else(|| self.labels.get("app.kubernetes.io/version"))
            .or_else(|| self.labels.get("service.istio.io/canonical-revision"))
            .map(String::as_str)
            .unwrap_or("unknown")
    }

    /// Istio's `destination_app`.
    pub fn app(&self) -> &str {
        self.labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map(String::as_str)
            .unwrap_or("unknown")
    }
}

impl Snapshot {
    /// A snapshot with everything but the version; used to publish only real changes.
    pub fn same_content(&self, other: &Snapshot) -> bool {
        self.listeners == other.listeners && self.clusters == other.clusters
    }
}
