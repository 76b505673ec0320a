//! Input schemas: the Istio and Kubernetes resources exactly as users write them.
//!
//! Nothing downstream of [`crate::store`] touches raw YAML; translation works on these typed
//! structs. Fields the gateway does not implement yet are still declared (as opaque JSON) so a
//! user gets "not supported yet" rather than "unknown field".

pub mod core;
pub mod istio;
pub mod security;

pub use compact_str::CompactString;
use serde::Deserialize;

pub use meshgate_model::labels::{Labels, SharedLabels};

/// The part of `metadata` every resource shares. There are tens of thousands at scale, so
/// rarely set strings are boxed and fields nothing reads (annotations) are not kept.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: CompactString,
    #[serde(default)]
    pub namespace: Option<CompactString>,
    #[serde(default)]
    pub labels: SharedLabels,
    /// Boxed (one pointer): file-mode objects have none. RFC 3339, so the text orders as the
    /// time does.
    #[serde(default)]
    pub creation_timestamp: Option<Box<CompactString>>,
}

/// Kinds the controller understands. Everything else is skipped with a debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Service,
    Pod,
    Secret,
    EndpointSlice,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    /// Maps `apiVersion` + `kind` to a known kind. Istio kinds are accepted in every served
    /// version (v1alpha3, v1beta1, v1) because users paste YAML from all eras.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let version = api_version.rsplit('/').next().unwrap_or("");
        match (group, kind) {
            ("networking.istio.io", _) if !matches!(version, "v1alpha3" | "v1beta1" | "v1") => None,
            ("networking.istio.io", "Gateway") => Some(Kind::Gateway),
            ("networking.istio.io", "VirtualService") => Some(Kind::VirtualService),
            ("networking.istio.io", "DestinationRule") => Some(Kind::DestinationRule),
            ("networking.istio.io", "ServiceEntry") => Some(Kind::ServiceEntry),
            ("networking.istio.io", "WorkloadEntry") => Some(Kind::WorkloadEntry),
            ("security.istio.io", _) if !matches!(version, "v1beta1" | "v1") => None,
            ("security.istio.io", "AuthorizationPolicy") => Some(Kind::AuthorizationPolicy),
            ("security.istio.io", "RequestAuthentication") => Some(Kind::RequestAuthentication),
            ("", "Service") if version == "v1" => Some(Kind::Service),
            ("", "Pod") if version == "v1" => Some(Kind::Pod),
            ("", "Secret") if version == "v1" => Some(Kind::Secret),
            ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Some(Kind::EndpointSlice),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_all_istio_versions_and_core_kinds() {
        for v in ["v1alpha3", "v1beta1", "v1"] {
            let api = format!("networking.istio.io/{v}");
            assert_eq!(Kind::from_type(&api, "Gateway"), Some(Kind::Gateway));
        }
        assert_eq!(Kind::from_type("networking.istio.io/v2", "Gateway"), None);
        assert_eq!(Kind::from_type("v1", "Service"), Some(Kind::Service));
        assert_eq!(Kind::from_type("discovery.k8s.io/v1", "EndpointSlice"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::from_type("security.istio.io/v1", "AuthorizationPolicy"), Some(Kind::AuthorizationPolicy));
        assert_eq!(
            Kind::from_type("security.istio.io/v1beta1", "RequestAuthentication"),
            Some(Kind::RequestAuthentication)
        );
        assert_eq!(Kind::from_type("apps/v1", "Deployment"), None);
        assert_eq!(Kind::from_type("v1", "Namespace"), None);
    }
}
