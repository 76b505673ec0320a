//! A cluster in runtime form: endpoints as socket addresses, TLS origination and the load
//! balancer (what telemetry says about it lives in `telemetry::destination`). Reused across snapshot swaps when its definition is unchanged, so in-flight
//! counts and round-robin positions survive config changes.

use crate::balance::{Algorithm, Balancer};
use crate::telemetry::destination::ClusterTelemetry;
use crate::tls::upstream::UpstreamTlsRuntime;
use meshgate_model::snapshot::{Cluster, HashAlgorithm, HashKey, LoadBalancer, Secret, Shared, UpstreamProtocol};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// One of the definition's endpoints, at the same index.
#[derive(Debug)]
pub(crate) struct EndpointRuntime {
    pub(crate) addr: SocketAddr,
}

pub(crate) struct ClusterRuntime {
    pub(crate) definition: Shared<Cluster>,
    /// The secrets the definition names, to tell a rotated certificate from an unchanged one.
    pub(crate) secrets: Box<[Option<Secret>]>,
    /// TLS origination; `Err` when its material could not be built (requests get 503 rather
    /// than going out in plain text). Boxed like the hash key and the telemetry: most
    /// clusters have no TLS and no hash key, and inline they were most of a 350-byte cluster.
    tls: Option<Box<Result<UpstreamTlsRuntime, String>>>,
    pub(crate) http2: bool,
    pub(crate) endpoints: Box<[EndpointRuntime]>,
    pub(crate) balancer: Balancer,
    pub(crate) hash_key: Option<Box<HashKey>>,
    telemetry: OnceLock<Box<ClusterTelemetry>>,
}

impl ClusterRuntime {
    /// The secrets a cluster definition depends on.
    pub(crate) fn referenced_secrets(def: &Cluster, secrets: &BTreeMap<String, Secret>) -> Box<[Option<Secret>]> {
        let Some(tls) = &def.tls else { return Box::default() };
        [&tls.ca, &tls.client_certificate].iter().map(|n| n.as_ref().and_then(|n| secrets.get(n)).cloned()).collect()
    }

    /// TLS origination: none (plain text), the compiled settings, or why they are unusable.
    pub(crate) fn tls(&self) -> Result<Option<&UpstreamTlsRuntime>, &str> {
        match self.tls.as_deref() {
            None => Ok(None),
            Some(Ok(tls)) => Ok(Some(tls)),
            Some(Err(why)) => Err(why),
        }
    }

    /// `connection_security_policy` label: `mutual_tls` when we present a client certificate.
    pub(crate) fn security_policy(&self) -> &'static str {
        if self.definition.tls.as_ref().is_some_and(|t| t.client_certificate.is_some()) {
            "mutual_tls"
        } else {
            "none"
        }
    }

    pub(crate) fn compile(def: &Shared<Cluster>, secrets: &BTreeMap<String, Secret>) -> ClusterRuntime {
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
    pub(crate) fn telemetry(&self) -> &ClusterTelemetry {
        self.telemetry.get_or_init(|| {
            let addresses = self.endpoints.iter().map(|e| e.addr);
            Box::new(ClusterTelemetry::build(&self.definition, addresses))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_model::snapshot::{Endpoint, ServiceRef, Workload};
    use std::sync::Arc;

    fn endpoint(address: &str, weight: u32, workload: &str) -> Endpoint {
        let workload = Arc::new(Workload { name: workload.into(), namespace: "default".into(), ..Default::default() });
        Endpoint { address: address.parse().unwrap(), port: 80, weight, workload }
    }

    #[test]
    fn labels_and_weights_stay_with_their_endpoints() {
        let def = Shared::new(Cluster {
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
