//! The service registry: every host a destination can name (Kubernetes Services and
//! ServiceEntry hosts) with its ports and ready endpoints, labels included.

use super::visibility::{self, Allowed};
use crate::by_name::{ByName, Named};
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::core::{PodSummary, ServiceSummary};
use crate::schema::istio::ServiceEntrySpec;
use crate::schema::{CompactString, Kind, Labels};
use crate::snapshot::{ServiceRef, UpstreamProtocol, Workload};
use crate::store::{Resource, Store};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use litemap::LiteMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ServiceInfo {
    /// Host, name and namespace, shared with the clusters of this service.
    pub service: Arc<ServiceRef>,
    pub ports: Box<[ServicePort]>,
    pub endpoints: Box<[RegistryEndpoint]>,
}

#[derive(Debug, Clone)]
pub struct ServicePort {
    pub number: u16,
    pub name: CompactString,
    pub protocol: UpstreamProtocol,
}

/// Istio's protocol selection for a Kubernetes Service port: `appProtocol` first, then the
/// port name prefix (`grpc`, `http2`, `tcp`...).
pub fn kube_port_protocol(name: &str, app_protocol: Option<&str>) -> UpstreamProtocol {
    let by = |p: &str| -> Option<UpstreamProtocol> {
        let p = p.to_ascii_lowercase();
        if p.starts_with("grpc") || p.starts_with("http2") || p == "kubernetes.io/h2c" || p == "h2c" {
            Some(UpstreamProtocol::Http2)
        } else if p.starts_with("http") || p.starts_with("kubernetes.io/ws") {
            Some(UpstreamProtocol::Http1)
        } else if ["tcp", "tls", "mongo", "mysql", "redis"].iter().any(|t| p.starts_with(t)) {
            Some(UpstreamProtocol::Tcp)
        } else {
            None
        }
    };
    app_protocol.and_then(by).or_else(|| by(name.split('-').next().unwrap_or(""))).unwrap_or(UpstreamProtocol::Http1)
}

/// A ServiceEntry port's `protocol` field.
fn entry_port_protocol(protocol: Option<&str>) -> UpstreamProtocol {
    match protocol.map(str::to_ascii_uppercase).as_deref() {
        Some("HTTP2" | "GRPC") => UpstreamProtocol::Http2,
        Some("TCP" | "TLS" | "HTTPS" | "MONGO" | "MYSQL" | "REDIS") => UpstreamProtocol::Tcp,
        _ => UpstreamProtocol::Http1,
    }
}

/// An endpoint of a service with its port per service port name.
#[derive(Debug, Clone)]
pub struct RegistryEndpoint {
    pub address: IpAddr,
    /// Service port number → endpoint port. A sorted vector: a B-tree's leaf is ~100 bytes
    /// for the one or two ports a service has, once per endpoint of every service.
    pub ports: LiteMap<u16, u16>,
    /// Labels and owning workload, shared with the snapshot's endpoints.
    pub workload: Arc<Workload>,
    pub weight: u32,
}

/// Services by host (the entries looked up by the host each holds).
#[derive(Debug, Default)]
pub struct Registry {
    services: ByName<ServiceInfo>,
    /// Hosts of ServiceEntries not exported to the gateway's namespace → `namespace/name` of
    /// the first such entry, so that a route to one says why its host is unknown.
    hidden: HashMap<String, String>,
}

impl Named for ServiceInfo {
    fn name(&self) -> &str {
        &self.service.host
    }
}

impl Registry {
    /// The services a gateway in namespace `consumer` sees: all Kubernetes Services, and the
    /// ServiceEntries exported to `consumer`.
    pub fn build(store: &Store, consumer: &str, problems: &mut Vec<Diagnostic>) -> Registry {
        let mut registry = Registry::default();
        let index = Index::build(store);
        for svc in store.services.values() {
            let info = kube_service(store, &index, svc);
            registry.services.insert(info, true);
        }
        for se in store.service_entries.values() {
            let mut local = Vec::new();
            visibility::check(&se.spec.export_to, se.namespace(), Allowed::NamespacesOrNone, &mut local);
            let rejected = local.iter().any(Diagnostic::is_error);
            problems.extend(local.into_iter().map(|d| d.at(&se.origin, Some(se.reference(Kind::ServiceEntry)))));
            if rejected {
                continue;
            }
            if !visibility::visible(&se.spec.export_to, se.namespace(), consumer) {
                // As in Istio, not a destination for this gateway: routes to its hosts find no
                // service (another entry for the host may still be visible).
                for host in &se.spec.hosts {
                    let name = format!("{}/{}", se.namespace(), se.meta.name);
                    registry.hidden.entry(host.to_ascii_lowercase()).or_insert(name);
                }
                continue;
            }
            for info in service_entry(store, se, problems) {
                // Kubernetes Services win over ServiceEntries for the same host, as in Istio.
                registry.services.insert(info, false);
            }
        }
        registry
    }

    pub fn get(&self, host: &str) -> Option<&ServiceInfo> {
        self.services.get(host)
    }

    /// The ServiceEntry (`namespace/name`) that defines `host` but is not exported to the
    /// gateway's namespace.
    pub fn hidden(&self, host: &str) -> Option<&str> {
        self.hidden.get(host).map(String::as_str)
    }
}

/// Lookups that would otherwise scan every slice or pod per Service (quadratic at scale).
struct Index<'a> {
    /// (namespace, `kubernetes.io/service-name`) → slices.
    slices: HashMap<(&'a str, &'a str), Vec<&'a Resource<EndpointSlice>>>,
    /// (namespace, label key, label value) → pods carrying it.
    pods: HashMap<(&'a str, &'a str, &'a str), Vec<&'a Resource<PodSummary>>>,
}

impl<'a> Index<'a> {
    fn build(store: &'a Store) -> Index<'a> {
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for s in store.endpoint_slices.values() {
            if let Some(svc) = s.meta.labels.get("kubernetes.io/service-name") {
                slices.entry((s.namespace(), svc.as_str())).or_default().push(s);
            }
        }
        let mut pods: HashMap<_, Vec<_>> = HashMap::new();
        for p in store.pods.values() {
            for (k, v) in &p.meta.labels {
                pods.entry((p.namespace(), k.as_str(), v.as_str())).or_default().push(p);
            }
        }
        Index { slices, pods }
    }

    /// Pods in `ns` matching every selector label: candidates from the rarest label.
    fn selected_pods(&self, ns: &str, selector: &Labels) -> Vec<&'a Resource<PodSummary>> {
        let candidates = selector
            .iter()
            .map(|(k, v)| self.pods.get(&(ns, k.as_str(), v.as_str())).map_or(&[][..], Vec::as_slice))
            .min_by_key(|c| c.len())
            .unwrap_or(&[]);
        candidates.iter().filter(|p| selector.iter().all(|(k, v)| p.meta.labels.get(k) == Some(v))).copied().collect()
    }
}

fn kube_service(store: &Store, index: &Index, svc: &Resource<ServiceSummary>) -> ServiceInfo {
    let name = svc.meta.name.clone();
    let ns = svc.namespace().to_string();
    let spec = &svc.spec;
    let ports: Vec<(ServicePort, Option<&IntOrString>)> = spec
        .ports
        .iter()
        .filter_map(|p| {
            let number = u16::try_from(p.port).ok()?;
            let name: CompactString = p.name.as_deref().unwrap_or_default().into();
            let protocol = kube_port_protocol(&name, p.app_protocol.as_deref());
            Some((ServicePort { number, name, protocol }, p.target_port.as_ref()))
        })
        .collect();

    let slices: Vec<_> = index.slices.get(&(ns.as_str(), name.as_str())).cloned().unwrap_or_default();

    let mut endpoints = Vec::new();
    if !slices.is_empty() {
        for slice in slices {
            let slice_ports = slice.spec.ports.clone().unwrap_or_default();
            for ep in &slice.spec.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                let pod =
                    ep.target_ref.as_ref().filter(|r| r.kind.as_deref().unwrap_or("Pod") == "Pod").and_then(|r| {
                        let pns = r.namespace.as_deref().unwrap_or(ns.as_str());
                        crate::store::lookup(&store.pods, pns, r.name.as_deref()?)
                    });
                let mut mapped = LiteMap::new();
                for (sp, _) in &ports {
                    let found = slice_ports.iter().find(|p| p.name.clone().unwrap_or_default() == sp.name);
                    if let Some(port) = found.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()) {
                        mapped.insert(sp.number, port);
                    }
                }
                let workload = Arc::new(Workload {
                    labels: pod.map(|p| p.meta.labels.clone()).unwrap_or_default(),
                    name: pod.map(workload_of).unwrap_or_else(|| name.clone()),
                    namespace: pod.map_or(ns.as_str(), |p| p.namespace()).into(),
                });
                // FQDN-type slices (and anything else that is not an IP) carry no address
                // meshgate can connect to without DNS.
                for address in ep.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    endpoints.push(RegistryEndpoint {
                        address,
                        ports: mapped.clone(),
                        workload: workload.clone(),
                        weight: 1,
                    });
                }
            }
        }
    } else if let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
        // No EndpointSlices in the config: derive endpoints from Pods as the endpoints
        // controller would (file mode convenience: Pods with status.podIP).
        for pod in index.selected_pods(&ns, selector) {
            let Some(ip) = pod.spec.ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else { continue };
            if !pod.spec.ready {
                continue;
            }
            let mut mapped = LiteMap::new();
            for (sp, target) in &ports {
                if let Some(port) = target_port(&pod.spec, sp.number, *target) {
                    mapped.insert(sp.number, port);
                }
            }
            endpoints.push(RegistryEndpoint {
                address: ip,
                ports: mapped,
                workload: Arc::new(Workload {
                    labels: pod.meta.labels.clone(),
                    name: workload_of(pod),
                    namespace: pod.namespace().into(),
                }),
                weight: 1,
            });
        }
    }

    // Exact sizes: the registry is kept between translations. (Collected in place, the ports
    // kept the capacity of the vector they came from.)
    ServiceInfo {
        service: Arc::new(ServiceRef {
            host: format!("{name}.{ns}.svc.cluster.local").into(),
            name,
            namespace: ns.into(),
        }),
        ports: crate::memory::boxed(ports.into_iter().map(|(p, _)| p).collect()),
        endpoints: crate::memory::boxed(endpoints),
    }
}

fn target_port(pod: &PodSummary, port: u16, target: Option<&IntOrString>) -> Option<u16> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => pod.named_ports.iter().find(|(n, _)| **n == **name).map(|(_, p)| *p),
    }
}

/// The workload a pod belongs to: Deployment name when the pod was made by a ReplicaSet
/// (strip the pod-template-hash), else the owner's name, else the pod's own name.
fn workload_of(pod: &Resource<PodSummary>) -> CompactString {
    let hash = pod.meta.labels.get("pod-template-hash");
    match (pod.spec.owner.as_deref(), hash) {
        (Some((kind, name)), Some(hash)) if kind == "ReplicaSet" => {
            name.strip_suffix(&format!("-{hash}")).unwrap_or(name).into()
        }
        (Some((_, name)), _) => name.clone(),
        (None, _) => pod.meta.name.clone(),
    }
}

fn service_entry(store: &Store, se: &Resource<ServiceEntrySpec>, problems: &mut Vec<Diagnostic>) -> Vec<ServiceInfo> {
    let spec = &se.spec;
    let resolution = spec.resolution.as_deref().unwrap_or("NONE");
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .filter_map(|p| {
            Some(ServicePort {
                number: u16::try_from(p.number).ok()?,
                name: p.name.as_str().into(),
                protocol: entry_port_protocol(p.protocol.as_deref()),
            })
        })
        .collect();
    let target_of = |number: u16| {
        spec.ports
            .iter()
            .find(|p| p.number == u32::from(number))
            .and_then(|p| p.target_port)
            .and_then(|t| u16::try_from(t).ok())
            .unwrap_or(number)
    };

    // Inline endpoints and WorkloadEntries selected by workloadSelector, same namespace.
    let mut workloads: Vec<(String, &crate::schema::istio::WorkloadEntrySpec, CompactString)> = spec
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("spec.endpoints[{i}]"), e, se.meta.name.clone()))
        .collect();
    if let Some(selector) = &spec.workload_selector {
        for we in store.workload_entries.values().filter(|w| w.namespace() == se.namespace()) {
            if selector.labels.iter().all(|(k, v)| we.spec.labels.get(k) == Some(v)) {
                workloads.push((String::new(), &we.spec, we.meta.name.clone()));
            }
        }
    }

    let mut endpoints = Vec::new();
    for (field, w, workload) in workloads {
        let Ok(address) = w.address.parse::<IpAddr>() else {
            problems.push(
                Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.address").trim_start_matches('.').to_string(),
                    format!(
                        "endpoint address {:?} is not an IP address; DNS endpoints are not supported yet, endpoint ignored",
                        w.address
                    ),
                )
                .at(&se.origin, Some(se.reference(Kind::ServiceEntry))),
            );
            continue;
        };
        let mut mapped = LiteMap::new();
        for p in &ports {
            let port = w
                .ports
                .get(p.name.as_str())
                .and_then(|n| u16::try_from(*n).ok())
                .unwrap_or_else(|| target_of(p.number));
            mapped.insert(p.number, port);
        }
        endpoints.push(RegistryEndpoint {
            address,
            ports: mapped,
            workload: Arc::new(Workload {
                labels: w.labels.clone().into(),
                name: workload,
                namespace: se.namespace().into(),
            }),
            weight: w.weight.unwrap_or(1).max(1),
        });
    }
    if resolution == "NONE" && !endpoints.is_empty() {
        tracing::debug!(serviceentry = se.meta.name.as_str(), "resolution NONE with endpoints: using them");
    }

    spec.hosts
        .iter()
        .map(|h| {
            let host = h.to_ascii_lowercase();
            ServiceInfo {
                service: Arc::new(ServiceRef {
                    name: host.as_str().into(),
                    host: host.into(),
                    namespace: se.namespace().into(),
                }),
                ports: ports.clone().into_boxed_slice(),
                endpoints: endpoints.clone().into_boxed_slice(),
            }
        })
        .collect()
}
