//! A cluster in runtime form: endpoints as socket addresses with their metric labels, and the
//! load balancer. Reused across snapshot swaps when its definition is unchanged, so in-flight
//! counts and round-robin positions survive config changes.

use crate::balance::{Algorithm, Balancer};
use controller::snapshot::{Cluster, HashAlgorithm, HashKey, LoadBalancer};
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
}

#[derive(Debug)]
pub struct EndpointRuntime {
    pub addr: SocketAddr,
    pub labels: Arc<DestinationLabels>,
}

pub struct ClusterRuntime {
    pub definition: Cluster,
    pub endpoints: Vec<EndpointRuntime>,
    pub balancer: Balancer,
    pub hash_key: Option<HashKey>,
    /// Labels used when the cluster has no endpoint to name (503 no healthy upstream).
    pub service_labels: Arc<DestinationLabels>,
}

impl ClusterRuntime {
    pub fn compile(def: &Cluster) -> ClusterRuntime {
        let service_labels = Arc::new(DestinationLabels {
            service: def.service.host.clone(),
            service_name: def.service.name.clone(),
            service_namespace: def.service.namespace.clone(),
            workload: "unknown".into(),
            workload_namespace: "unknown".into(),
            app: "unknown".into(),
            version: def.subset.clone().unwrap_or_else(|| "unknown".into()),
            cluster: def.name.clone(),
        });
        let mut endpoints = Vec::new();
        for e in &def.endpoints {
            // Addresses were validated as IP literals by the controller; skip anything else.
            let Ok(ip) = e.address.parse::<std::net::IpAddr>() else { continue };
            endpoints.push(EndpointRuntime {
                addr: SocketAddr::new(ip, e.port),
                labels: Arc::new(DestinationLabels {
                    service: def.service.host.clone(),
                    service_name: def.service.name.clone(),
                    service_namespace: def.service.namespace.clone(),
                    workload: e.workload.clone(),
                    workload_namespace: e.workload_namespace.clone(),
                    app: e.app().to_string(),
                    version: e.version().to_string(),
                    cluster: def.name.clone(),
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
            balancer: Balancer::new(&algorithm, &keyed),
            endpoints,
            hash_key,
            service_labels,
        }
    }
}
