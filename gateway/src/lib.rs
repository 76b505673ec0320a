//! meshgate gateway: a Pingora edge proxy serving Istio Gateway/VirtualService/DestinationRule.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod cli;
pub mod compiled;
pub mod config_source;
pub mod l4;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod response_flag;
pub mod server;
pub mod tls;
pub mod trace;
