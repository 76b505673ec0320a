//! `meshctl`: istioctl-style views of what gateways serve (`proxy-config`), whether they are in
//! sync with the controller (`proxy-status`), and what is wrong with the config (`analyze`).
//!
//! The gateway's admin endpoint serves the data (`/config_dump`, `/clusters?format=json`,
//! `/certs`); the types of the two JSON documents that are not the snapshot itself live in the
//! contract crate (`meshgate_model::admin`) so producer and consumer cannot drift apart.

pub mod proxy_config;
pub mod proxy_status;
pub mod table;

pub use meshgate_model::admin::{CertificateInfo, EndpointStatus};
