//! meshgate gateway: a Pingora edge proxy serving Istio Gateway/VirtualService/DestinationRule.
//!
//! The binary's library: `cli` (the flags), `config` (the settings they make) and `server`
//! (running them) are its interface; everything else is the data plane's own, `pub(crate)`
//! under the `unreachable_pub` lint. `bench` opens what the benchmarks measure.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod balance;
#[doc(hidden)]
pub mod bench;
pub mod cli;
pub(crate) mod compiled;
pub mod config;
pub(crate) mod config_source;
pub(crate) mod head;
pub(crate) mod l4;
pub(crate) mod listeners;
pub(crate) mod proxy;
pub(crate) mod response_flag;
pub mod server;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod trace;
pub(crate) mod workers;
