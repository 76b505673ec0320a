//! `meshctl`: istioctl-style views of what gateways serve (`proxy-config`), whether they are in
//! sync with the controller (`proxy-status`), and what is wrong with the config (`analyze`).
//!
//! The gateway's admin endpoint serves the data (`/config_dump`, `/clusters?format=json`,
//! `/certs`); the types of the two JSON documents that are not the snapshot itself live here
//! so producer and consumer cannot drift apart.

pub mod proxy_config;
pub mod proxy_status;
pub mod table;

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
