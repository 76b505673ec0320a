//! The gateway's settings as the rest of the code reads them: plain data built once from the
//! command line (`cli::RunArgs::config`), so the data plane, tracing and the config sources
//! never see clap's types and tests build settings directly.

pub use crate::telemetry::access_log::Target;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    /// Gateway server port → listen address overrides (`--port-map`).
    pub port_map: Vec<(u16, SocketAddr)>,
    pub status_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub identity: Identity,
    pub access_log: Target,
    /// How long in-flight requests may take after SIGTERM.
    pub drain: Duration,
    /// Deny every request while a security policy meshgate cannot enforce selects the gateway
    /// (fail closed, the default), rather than serve as if it were absent.
    pub deny_unenforced_policies: bool,
    /// Worker threads; `None` is one per CPU.
    pub threads: Option<usize>,
    pub tracing: Tracing,
    pub limits: Limits,
    /// Plain HTTP/1 requests through meshgate's own request loop (a prototype) instead of
    /// Pingora's `ProxyHttp` path.
    pub own_request_loop: bool,
}

/// What the data-plane listeners allow a client: connections, time and header size
/// (docs/configuration.md, "Edge limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Downstream connections open at once on the data ports; `None` derives it from the
    /// descriptor limit.
    pub max_connections: Option<usize>,
    /// How long a request head may take, from its first byte (from accept for a connection's
    /// first request) to its last.
    pub request_header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// How long a request body may go without a byte arriving.
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_request_header_bytes: usize,
    /// Mirrored requests in flight at once; past it, copies are dropped (and counted).
    pub max_mirrors_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: None,
            request_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            max_request_header_bytes: 60 * 1024,
            max_mirrors_in_flight: 1024,
        }
    }
}

/// Who this gateway is: which Gateways select it and how its metrics and spans name it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
    /// `source_workload` of the metrics and the traces' service name.
    pub workload: String,
}

/// Where snapshots come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A meshgate controller (`--controller`).
    Controller {
        url: String,
        /// `--controller-token-file`; `MESHGATE_TOKEN` when `None`.
        token_file: Option<PathBuf>,
        /// This replica's name for `proxy-status`.
        replica: String,
    },
    /// The embedded controller (files or the Kubernetes API), with the controller's own
    /// source options.
    #[cfg(feature = "embedded")]
    Embedded(controller::source::run::SourceArgs),
    /// A gateway built without the embedded controller and not given `--controller`.
    #[cfg(not(feature = "embedded"))]
    None,
}

/// Distributed tracing: off without a collector.
#[derive(Debug, Clone)]
pub struct Tracing {
    /// OTLP/HTTP collector URL.
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces sampled (0–100).
    pub sampling_percent: f64,
}

impl Config {
    /// Where the gateway listens for a Gateway server port: the `--port-map` entry, else
    /// istio-ingressgateway's defaults (80 → 8080, 443 → 8443, any other port on itself).
    pub fn listen_addr(&self, port: u16) -> SocketAddr {
        if let Some((_, addr)) = self.port_map.iter().rev().find(|(p, _)| *p == port) {
            return *addr;
        }
        let target = match port {
            80 => 8080,
            443 => 8443,
            p => p,
        };
        SocketAddr::from(([0, 0, 0, 0], target))
    }
}
