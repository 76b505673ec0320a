//! A cluster in runtime form: endpoints as socket addresses with their metric labels, and the
//! load balancer. Reused across snapshot swaps when its definition is unchanged, so in-flight
//! counts and round-robin positions survive config changes.

use crate::access_log::{Prepared, UpstreamCluster, UpstreamHost};
use crate::balance::{Algorithm, Balancer};
use crate::tls::upstream::UpstreamTlsRuntime;
use meshgate_model::snapshot::{Cluster, Endpoint, HashAlgorithm, HashKey, LoadBalancer, Secret, UpstreamProtocol};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Labels Istio's metrics carry for a destination. Endpoints with the same labels share one
/// (with its series cache), and the values are shared strings: a cluster's service names are
/// allocated once for all its endpoints, and "unknown" once for all clusters. Eight owned
/// strings per endpoint were a quarter of a 10k-service runtime.
#[derive(Debug)]
pub struct DestinationLabels {
    pub service: Arc<str>,
    pub service_name: Arc<str>,
    pub service_namespace: Arc<str>,
    pub workload: Arc<str>,
    pub workload_namespace: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub cluster: Arc<str>,
    /// Resolved metric series for requests to this destination.
    pub series: crate::metrics::SeriesCache,
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

/// One of the definition's endpoints, at the same index.
#[derive(Debug)]
pub struct EndpointRuntime {
    pub addr: SocketAddr,
}

/// What metrics and access logs say about a cluster and its endpoints: Istio's destination
/// label sets (with their series caches) and the access log's pre-encoded names. Built by the
/// first request that records something for the cluster, not by the compile: at 10k services
/// these were ~12 MB for clusters most of which had not been requested yet
/// (docs/benchmarks.md, "Fifth round"). A cluster reused across snapshot swaps keeps it.
#[derive(Debug)]
pub struct Telemetry {
    /// Labels used when the cluster has no endpoint to name (503 no healthy upstream).
    pub service_labels: Arc<DestinationLabels>,
    /// `upstream_cluster` of access log lines, encoded once.
    pub log_name: Prepared<UpstreamCluster>,
    /// By the runtime endpoint's index.
    endpoints: Vec<EndpointTelemetry>,
}

#[derive(Debug)]
pub struct EndpointTelemetry {
    pub labels: Arc<DestinationLabels>,
    /// `upstream_host` of access log lines, encoded once.
    pub log_host: Prepared<UpstreamHost>,
}

impl Telemetry {
    fn build(def: &Cluster, endpoints: &[EndpointRuntime]) -> Telemetry {
        let mut labels = LabelSets::new(def);
        let mut telemetry = Vec::with_capacity(endpoints.len());
        for (e, definition) in endpoints.iter().zip(def.endpoints.iter()) {
            let labels = labels.endpoint(definition);
            telemetry.push(EndpointTelemetry { labels, log_host: Prepared::address(e.addr) });
        }
        Telemetry { service_labels: labels.service, log_name: Prepared::string(&def.name), endpoints: telemetry }
    }

    /// The runtime endpoint `index`'s labels and log field.
    pub fn endpoint(&self, index: usize) -> &EndpointTelemetry {
        &self.endpoints[index]
    }
}

pub struct ClusterRuntime {
    pub definition: Arc<Cluster>,
    /// The secrets the definition names, to tell a rotated certificate from an unchanged one.
    pub secrets: Box<[Option<Secret>]>,
    /// TLS origination; `Err` when its material could not be built (requests get 503 rather
    /// than going out in plain text). Boxed like the hash key and the telemetry: most
    /// clusters have no TLS and no hash key, and inline they were most of a 350-byte cluster.
    tls: Option<Box<Result<UpstreamTlsRuntime, String>>>,
    pub http2: bool,
    pub endpoints: Box<[EndpointRuntime]>,
    pub balancer: Balancer,
    pub hash_key: Option<Box<HashKey>>,
    telemetry: OnceLock<Box<Telemetry>>,
}

impl ClusterRuntime {
    /// The secrets a cluster definition depends on.
    pub fn referenced_secrets(def: &Cluster, secrets: &BTreeMap<String, Secret>) -> Box<[Option<Secret>]> {
        let Some(tls) = &def.tls else { return Box::default() };
        [&tls.ca, &tls.client_certificate].iter().map(|n| n.as_ref().and_then(|n| secrets.get(n)).cloned()).collect()
    }

    /// TLS origination: none (plain text), the compiled settings, or why they are unusable.
    pub fn tls(&self) -> Result<Option<&UpstreamTlsRuntime>, &str> {
        match self.tls.as_deref() {
            None => Ok(None),
            Some(Ok(tls)) => Ok(Some(tls)),
            Some(Err(why)) => Err(why),
        }
    }

    /// `connection_security_policy` label: `mutual_tls` when we present a client certificate.
    pub fn security_policy(&self) -> &'static str {
        if self.definition.tls.as_ref().is_some_and(|t| t.client_certificate.is_some()) {
            "mutual_tls"
        } else {
            "none"
        }
    }

    pub fn compile(def: &Arc<Cluster>, secrets: &BTreeMap<String, Secret>) -> ClusterRuntime {
        let tls = def.tls.as_ref().map(|t| {
            Box::new(UpstreamTlsRuntime::compile(t, &def.service.host, secrets).map_err(|e| {
                tracing::error!(cluster = &*def.name, error = %e, "upstream TLS unusable; requests to this cluster get 503");
                e.to_string()
            }))
        });
        let endpoints: Vec<EndpointRuntime> =
            def.endpoints.iter().map(|e| EndpointRuntime { addr: SocketAddr::new(e.address, e.port) }).collect();
        let keyed: Vec<(String, u32)> =
            endpoints.iter().zip(def.endpoints.iter()).map(|(e, d)| (e.addr.to_string(), d.weight.max(1))).collect();
        let (algorithm, hash_key) = match &def.load_balancer {
            LoadBalancer::RoundRobin => (Algorithm::RoundRobin, None),
            LoadBalancer::LeastRequest => (Algorithm::LeastRequest, None),
            LoadBalancer::Random => (Algorithm::Random, None),
            LoadBalancer::ConsistentHash { key, algorithm } => (
                match algorithm {
                    HashAlgorithm::RingHash { minimum_ring_size } => {
                        Algorithm::RingHash { minimum_ring_size: *minimum_ring_size }
                    }
                    HashAlgorithm::Maglev { table_size } => Algorithm::Maglev { table_size: *table_size },
                },
                Some(key.clone()),
            ),
        };
        ClusterRuntime {
            definition: def.clone(),
            secrets: Self::referenced_secrets(def, secrets),
            tls,
            http2: def.upstream_protocol == UpstreamProtocol::Http2,
            balancer: Balancer::new(&algorithm, &keyed),
            endpoints: meshgate_model::memory::boxed(endpoints),
            hash_key,
            telemetry: OnceLock::new(),
        }
    }

    /// Labels and log fields, built on first use (a lock-free load after that).
    pub fn telemetry(&self) -> &Telemetry {
        self.telemetry.get_or_init(|| Box::new(Telemetry::build(&self.definition, &self.endpoints)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_model::snapshot::{ServiceRef, Workload};

    fn endpoint(address: &str, weight: u32, workload: &str) -> Endpoint {
        let workload = Arc::new(Workload { name: workload.into(), namespace: "default".into(), ..Default::default() });
        Endpoint { address: address.parse().unwrap(), port: 80, weight, workload }
    }

    #[test]
    fn labels_and_weights_stay_with_their_endpoints() {
        let def = Arc::new(Cluster {
            name: "outbound|80||svc.default.svc.cluster.local".into(),
            service: Arc::new(ServiceRef {
                host: "svc.default.svc.cluster.local".into(),
                name: "svc".into(),
                namespace: "default".into(),
            }),
            port: 80,
            subset: None,
            load_balancer: LoadBalancer::RoundRobin,
            endpoints: vec![endpoint("10.0.0.1", 1, "b"), endpoint("10.0.0.2", 3, "c")],
            upstream_protocol: UpstreamProtocol::Http1,
            tls: None,
            not_found: false,
        });
        let cluster = ClusterRuntime::compile(&def, &BTreeMap::new());
        assert_eq!(cluster.endpoints.len(), 2);
        let telemetry = cluster.telemetry();
        assert_eq!(&*telemetry.endpoint(0).labels.workload, "b");
        assert_eq!(&*telemetry.endpoint(1).labels.workload, "c");
        // Weighted round robin over one cycle: 1 pick of 10.0.0.1 and 3 of 10.0.0.2.
        let picks: Vec<usize> = (0..4).map(|_| cluster.balancer.pick(None, None).unwrap().index()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 1, "{picks:?}");
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 3, "{picks:?}");
    }
}
