//! The JSON documents of the gateway's admin endpoint besides the snapshot itself
//! (`/clusters?format=json`, `/certs`), read by `meshctl proxy-config`.

use serde::{Deserialize, Serialize};

/// One endpoint of one cluster as the gateway sees it (`/clusters?format=json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub cluster: String,
    pub address: String,
    /// `HEALTHY` (meshgate has no active health checks; endpoints come from the registry).
    pub health: String,
    /// Requests in flight to this endpoint right now.
    pub in_flight: u64,
}

/// One certificate the gateway holds (`/certs`), like `istioctl proxy-config secret`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// Secret name as the snapshot references it, e.g. `kubernetes://istio-system/bookinfo-cert`.
    pub name: String,
    /// `Cert Chain` (certificate with key) or `CA`.
    pub kind: String,
    pub serial: String,
    /// As `openssl x509 -dates` prints them.
    pub not_before: String,
    pub not_after: String,
    /// Inside its validity period now.
    pub valid: bool,
    pub subject_alt_names: Vec<String>,
}
