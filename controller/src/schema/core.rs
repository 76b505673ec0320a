//! The parts of Kubernetes core objects that translation reads, kept instead of the whole
//! object. A decoded `Pod` is 2 KB before any of its strings (`PodSpec` alone is 1.4 KB of
//! mostly empty options) and a `Service` 800 bytes; at 10k services with two Pods each that
//! was a third of the gateway's memory. Decoding still checks the whole object against the
//! Kubernetes schema (`source::decode`), then keeps this summary.

use super::{CompactString, Labels};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A Pod as an endpoint: its address, readiness, owner (the workload name of metrics) and
/// named container ports (for Services whose `targetPort` is a name).
/// Boxed strings and slices: one per Pod (20k at 10k services), never grown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodSummary {
    /// `status.podIP`.
    pub ip: Option<CompactString>,
    /// The `Ready` condition; a Pod without conditions counts as ready, as in file mode's
    /// hand-written Pods.
    pub ready: bool,
    /// Kind and name of the first owner reference. Boxed: a pointer when there is none, as in
    /// file mode (20k Pods at 10k services), and one block for both names when there is.
    pub owner: Option<Box<(CompactString, CompactString)>>,
    /// Container ports that have a name: (name, port).
    pub named_ports: Box<[(CompactString, u16)]>,
}

impl From<Pod> for PodSummary {
    fn from(pod: Pod) -> PodSummary {
        let status = pod.status.unwrap_or_default();
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True")
            .unwrap_or(true);
        let owner = pod
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(|o| Box::new((o.kind.into(), o.name.into())));
        let named_ports = pod
            .spec
            .map(|s| s.containers)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|c| c.ports.unwrap_or_default())
            .filter_map(|p| Some((p.name?.into(), u16::try_from(p.container_port).ok()?)))
            .collect();
        PodSummary { ip: status.pod_ip.map(Into::into), ready, owner, named_ports }
    }
}

/// A Service as a registry entry: its selector and ports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceSummary {
    /// `spec.selector`; `None` or empty selects no Pods.
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePortSummary>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePortSummary {
    pub port: i32,
    pub name: Option<String>,
    pub app_protocol: Option<String>,
    pub target_port: Option<IntOrString>,
}

impl From<Service> for ServiceSummary {
    fn from(svc: Service) -> ServiceSummary {
        let spec = svc.spec.unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePortSummary {
                port: p.port,
                name: p.name,
                app_protocol: p.app_protocol,
                target_port: p.target_port,
            })
            .collect();
        // Exact sizes: collected in place, the ports kept the capacity of Kubernetes' larger
        // port objects; collected from an iterator, the map kept room for four entries.
        let ports = crate::memory::exact(ports);
        let selector = spec.selector.map(|s| {
            let mut labels = Labels::with_capacity(s.len());
            for (k, v) in s {
                labels.insert(k.into(), v.into());
            }
            labels
        });
        ServiceSummary { selector, ports }
    }
}
