//! What telemetry says about a destination: Istio's destination label sets (each with its
//! metric series cache) and the access log's pre-encoded cluster and endpoint fields. A
//! compiled cluster holds one, built on first use; nothing here is needed for routing.

use super::access_log::{Prepared, UpstreamCluster, UpstreamHost};
use meshgate_model::snapshot::{Cluster, Endpoint};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Labels Istio's metrics carry for a destination. Endpoints with the same labels share one
/// (with its series cache), and the values are shared strings: a cluster's service names are
/// allocated once for all its endpoints, and "unknown" once for all clusters. Eight owned
/// strings per endpoint were a quarter of a 10k-service runtime.
#[derive(Debug)]
pub(crate) struct DestinationLabels {
    pub(crate) service: Arc<str>,
    pub(crate) service_name: Arc<str>,
    pub(crate) service_namespace: Arc<str>,
    pub(crate) workload: Arc<str>,
    pub(crate) workload_namespace: Arc<str>,
    pub(crate) app: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) cluster: Arc<str>,
    /// Resolved metric series for requests to this destination.
    pub(crate) series: super::metrics::SeriesCache,
}

/// `"unknown"`, the value of a label nothing provides.
fn unknown() -> Arc<str> {
    static UNKNOWN: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("unknown"));
    UNKNOWN.clone()
}

/// Shares equal label values (and equal label sets) among one cluster's endpoints.
struct LabelSets<'a> {
    service: Arc<DestinationLabels>,
    values: HashMap<&'a str, Arc<str>>,
    sets: HashMap<[&'a str; 4], Arc<DestinationLabels>>,
}

impl<'a> LabelSets<'a> {
    fn new(def: &Cluster) -> LabelSets<'a> {
        let service = Arc::new(DestinationLabels {
            service: (&*def.service.host).into(),
            service_name: def.service.name.as_str().into(),
            service_namespace: def.service.namespace.as_str().into(),
            workload: unknown(),
            workload_namespace: unknown(),
            app: unknown(),
            version: def.subset.as_deref().map_or_else(unknown, Arc::from),
            cluster: def.name.clone(),
            series: Default::default(),
        });
        LabelSets { service, values: HashMap::new(), sets: HashMap::new() }
    }

    fn value(&mut self, value: &'a str) -> Arc<str> {
        let s = &self.service;
        for known in [&s.service_namespace, &s.service_name, &s.version] {
            if **known == *value {
                return known.clone();
            }
        }
        if value == "unknown" {
            return unknown();
        }
        self.values.entry(value).or_insert_with(|| value.into()).clone()
    }

    fn endpoint(&mut self, e: &'a Endpoint) -> Arc<DestinationLabels> {
        let key = [e.workload.name.as_str(), e.workload.namespace.as_str(), e.app(), e.version()];
        if let Some(labels) = self.sets.get(&key) {
            return labels.clone();
        }
        let s = self.service.clone();
        let labels = Arc::new(DestinationLabels {
            service: s.service.clone(),
            service_name: s.service_name.clone(),
            service_namespace: s.service_namespace.clone(),
            workload: self.value(key[0]),
            workload_namespace: self.value(key[1]),
            app: self.value(key[2]),
            version: self.value(key[3]),
            cluster: s.cluster.clone(),
            series: Default::default(),
        });
        self.sets.insert(key, labels.clone());
        labels
    }
}

/// What metrics and access logs say about a cluster and its endpoints: Istio's destination
/// label sets (with their series caches) and the access log's pre-encoded names. Built by the
/// first request that records something for the cluster, not by the compile: at 10k services
/// these were ~12 MB for clusters most of which had not been requested yet
/// (docs/benchmarks.md, "Fifth round"). A cluster reused across snapshot swaps keeps it.
#[derive(Debug)]
pub(crate) struct ClusterTelemetry {
    /// Labels used when the cluster has no endpoint to name (503 no healthy upstream).
    pub(crate) service_labels: Arc<DestinationLabels>,
    /// `upstream_cluster` of access log lines, encoded once.
    pub(crate) log_name: Prepared<UpstreamCluster>,
    /// By the runtime endpoint's index.
    endpoints: Vec<EndpointTelemetry>,
}

#[derive(Debug)]
pub(crate) struct EndpointTelemetry {
    pub(crate) labels: Arc<DestinationLabels>,
    /// `upstream_host` of access log lines, encoded once.
    pub(crate) log_host: Prepared<UpstreamHost>,
}

impl ClusterTelemetry {
    /// For the cluster `def` whose endpoints are at `addresses` (the runtime's, in order).
    pub(crate) fn build(def: &Cluster, addresses: impl ExactSizeIterator<Item = SocketAddr>) -> ClusterTelemetry {
        let mut labels = LabelSets::new(def);
        let mut telemetry = Vec::with_capacity(addresses.len());
        for (addr, definition) in addresses.zip(def.endpoints.iter()) {
            let labels = labels.endpoint(definition);
            telemetry.push(EndpointTelemetry { labels, log_host: Prepared::address(addr) });
        }
        ClusterTelemetry { service_labels: labels.service, log_name: Prepared::string(&def.name), endpoints: telemetry }
    }

    /// The runtime endpoint `index`'s labels and log field.
    pub(crate) fn endpoint(&self, index: usize) -> &EndpointTelemetry {
        &self.endpoints[index]
    }
}
