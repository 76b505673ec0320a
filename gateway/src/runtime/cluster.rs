//! A cluster in runtime form: endpoints as socket addresses with their metric labels, and the
//! load balancer. Reused across snapshot swaps when its definition is unchanged, so in-flight
//! counts and round-robin positions survive config changes.

use crate::access_log::{Prepared, UpstreamCluster, UpstreamHost};
use crate::balance::{Algorithm, Balancer};
use crate::tls::upstream::UpstreamTlsRuntime;
use controller::snapshot::{Cluster, HashAlgorithm, HashKey, LoadBalancer, Secret, UpstreamProtocol};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Labels Istio's metrics carry for a destination; built once per endpoint.
#[derive(Debug)]
pub struct DestinationLabels {
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
    pub workload: String,
    pub workload_namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
    /// Resolved metric series for requests to this destination.
    pub series: crate::metrics::SeriesCache,
}

#[derive(Debug)]
pub struct EndpointRuntime {
    pub addr: SocketAddr,
    /// `upstream_host` of access log lines, encoded once.
    pub log_host: Prepared<UpstreamHost>,
    pub labels: Arc<DestinationLabels>,
}

pub struct ClusterRuntime {
    pub definition: Arc<Cluster>,
    /// The secrets the definition names, to tell a rotated certificate from an unchanged one.
    pub secrets: Vec<Option<Secret>>,
    /// TLS origination; `Err` when its material could not be built (requests get 503 rather
    /// than going out in plain text).
    pub tls: Result<Option<UpstreamTlsRuntime>, String>,
    pub http2: bool,
    /// `connection_security_policy` label: `mutual_tls` when we present a client certificate.
    pub security_policy: &'static str,
    pub endpoints: Vec<EndpointRuntime>,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    /// Labels used when the cluster has no endpoint to name (503 no healthy upstream).
    pub service_labels: Arc<DestinationLabels>,
    /// `upstream_cluster` of access log lines, encoded once.
    pub log_name: Prepared<UpstreamCluster>,
}

impl ClusterRuntime {
    /// The secrets a cluster definition depends on.
    pub fn referenced_secrets(def: &Cluster, secrets: &BTreeMap<String, Secret>) -> Vec<Option<Secret>> {
        let Some(tls) = &def.tls else { return Vec::new() };
        [&tls.ca, &tls.client_certificate].iter().map(|n| n.as_ref().and_then(|n| secrets.get(n)).cloned()).collect()
    }

    pub fn compile(def: &Arc<Cluster>, secrets: &BTreeMap<String, Secret>) -> ClusterRuntime {
        let tls = match &def.tls {
            None => Ok(None),
            Some(t) => UpstreamTlsRuntime::compile(t, &def.service.host, secrets).map(Some).map_err(|e| {
                tracing::error!(cluster = def.name, error = %e, "upstream TLS unusable; requests to this cluster get 503");
                e.to_string()
            }),
        };
        let service_labels = Arc::new(DestinationLabels {
            service: def.service.host.clone(),
            service_name: def.service.name.clone(),
            service_namespace: def.service.namespace.clone(),
            workload: "unknown".into(),
            workload_namespace: "unknown".into(),
            app: "unknown".into(),
            version: def.subset.clone().unwrap_or_else(|| "unknown".into()),
            cluster: def.name.clone(),
            series: Default::default(),
        });
        let mut endpoints = Vec::new();
        for e in &def.endpoints {
            // Addresses were validated as IP literals by the controller; skip anything else.
            let Ok(ip) = e.address.parse::<std::net::IpAddr>() else { continue };
            let addr = SocketAddr::new(ip, e.port);
            endpoints.push(EndpointRuntime {
                addr,
                log_host: Prepared::address(addr),
                labels: Arc::new(DestinationLabels {
                    service: def.service.host.clone(),
                    service_name: def.service.name.clone(),
                    service_namespace: def.service.namespace.clone(),
                    workload: e.workload.clone(),
                    workload_namespace: e.workload_namespace.clone(),
                    app: e.app().to_string(),
                    version: e.version().to_string(),
                    cluster: def.name.clone(),
                    series: Default::default(),
                }),
            });
        }
        let keyed: Vec<(String, u32)> =
            endpoints.iter().zip(&def.endpoints).map(|(e, d)| (e.addr.to_string(), d.weight.max(1))).collect();
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
            security_policy: if def.tls.as_ref().is_some_and(|t| t.client_certificate.is_some()) {
                "mutual_tls"
            } else {
                "none"
            },
            balancer: Balancer::new(&algorithm, &keyed),
            endpoints,
            hash_key,
            service_labels,
            log_name: Prepared::string(&def.name),
        }
    }
}
