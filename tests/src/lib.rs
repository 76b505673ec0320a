//! End-to-end test harness for meshgate.
//!
//! The gateway is exercised as a black box: real upstream HTTP servers
//! ([`upstream`]), the real `gateway` binary launched as a child process
//! ([`gateway`]), a plain HTTP client ([`client`]) and config folders with
//! Kubernetes YAML builders ([`config`]). TLS suites add throw-away
//! certificates and Secrets ([`certs`]), HTTPS/h2c/gRPC upstream variants,
//! raw TCP upstreams ([`tcp`]) and handshake-level client probes. Waits for
//! asynchronous effects use [`assert_eventually!`] ([`eventually`]), which
//! reports the last value it saw. This crate deliberately does not
//! depend on the `gateway` or `controller` crates, so suites test only the
//! shipped contract and keep compiling while those crates change.
//!
//! Typical suite:
//!
//! ```ignore
//! use meshgate_e2e::prelude::*;
//!
//! let v1 = Upstream::new("reviews").version("v1").start().await;
//! let cfg = ConfigDir::new()?;
//! cfg.write("svc.yaml", &service_named("reviews", "default", "http", 9080, 9080))?;
//! cfg.write("ep.yaml", &endpoints_for("reviews", "default", Some("http"), &[(&v1, &[("version", "v1")])]))?;
//! cfg.write("gw.yaml", GATEWAY_AND_VIRTUALSERVICE_YAML)?;
//! let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80]).start().await?;
//! let r = get(gw.addr(80), "/reviews/1").host("bookinfo.example.com").send().await?;
//! assert_eq!(r.echo()?.version, "v1");
//! ```

/// The fake Kubernetes API server of the `--kube` suites. It lives in the `fake-apiserver`
/// crate so that the controller's unit tests use the same one without depending on this
/// harness; the same two names are re-exported here, so `apiserver::FakeApiServer` and the
/// prelude work as before.
pub mod apiserver {
    pub use fake_apiserver::{FakeApiServer, FAKE_API_TOKEN};
}
pub mod certs;
pub mod client;
pub mod collector;
pub mod config;
pub mod controller;
pub mod eventually;
pub mod gateway;
pub mod manifest;
pub mod tcp;
pub mod tls;
pub mod upstream;

/// The rustls this crate is built against, so suites can name
/// `rustls::version::TLS12` or `rustls::ProtocolVersion` without their own
/// (possibly mismatched) dependency.
pub use rustls;

pub use apiserver::{FakeApiServer, FAKE_API_TOKEN};
pub use certs::{generic_secret_yaml, self_signed, tls_secret_yaml, CertKey, TestCa};
pub use client::{
    admin_get, get, grpc_call, grpc_request, metric_sum, metric_value, metrics, post, raw_http, raw_http_timeout,
    request, tcp_exchange, tls_probe, tls_tcp_exchange, GrpcReply, GrpcRequest, HttpClient, RequestBuilder, Response,
    TlsInfo, TlsProbe,
};
pub use collector::{rotel_bin, Collector, ReceivedSpan};
pub use config::{
    docs, endpoint_slice, endpoints_for, namespace, pod, service, service_named, service_ports, BackendAddr, ConfigDir,
};
pub use controller::{controller_bin, meshctl_bin, run_meshctl, ControllerProcess, TEST_TOKEN};
pub use gateway::{free_addr, gateway_bin, run_analyze, GatewayBuilder, GatewayProcess};
pub use tcp::{TcpUpstream, TlsTcpUpstream, TlsTcpUpstreamBuilder};
pub use upstream::{grpc_frame, grpc_messages, pattern_bytes, Echo, TlsEcho, Upstream, UpstreamBuilder};

/// Everything a suite usually needs, plus `Duration`, `SocketAddr`,
/// `StatusCode`, `Version` and the TLS version constants.
pub mod prelude {
    pub use crate::apiserver::*;
    pub use crate::assert_eventually;
    pub use crate::certs::*;
    pub use crate::client::*;
    pub use crate::collector::*;
    pub use crate::config::*;
    pub use crate::controller::*;
    pub use crate::eventually::poll_until;
    pub use crate::gateway::*;
    pub use crate::tcp::*;
    pub use crate::upstream::*;
    pub use http::{Method, StatusCode, Version};
    pub use rustls::version::{TLS12, TLS13};
    pub use rustls::ProtocolVersion;
    pub use std::net::SocketAddr;
    pub use std::time::Duration;
}

#[cfg(test)]
mod selftest;
#[cfg(test)]
mod selftest_tls;
