//! meshgate gateway: a Pingora edge proxy serving Istio Gateway/VirtualService/DestinationRule.
#![forbid(unsafe_code)]

pub mod admin;
pub mod balance;
pub mod cli;
pub mod compiled;
pub mod config;
pub mod config_source;
pub mod head;
pub mod l4;
pub mod listeners;
pub mod proxy;
pub mod response_flag;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod trace;
