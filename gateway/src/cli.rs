//! Command-line contract (users' scripts and the Helm chart rely on it).

use crate::config::{self, Config, Source};
use crate::telemetry::access_log::Target;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "gateway", version, about = "meshgate: an istio-ingressgateway replacement on Pingora")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report problems in Istio YAML like `istioctl analyze`; exits 1 on errors.
    Analyze {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        identity: Identity,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Identity {
    /// This instance's labels; a Gateway applies when its selector is a subset of them.
    #[arg(long, default_value = meshgate_model::labels::DEFAULT_GATEWAY_LABELS, value_parser = meshgate_model::labels::parse)]
    pub labels: BTreeMap<String, String>,
    /// The gateway's own namespace: where `credentialName` Secrets live, what `sourceNamespace`
    /// matches compare with, and the `source_workload_namespace` metric label.
    #[arg(long, default_value = meshgate_model::labels::DEFAULT_GATEWAY_NAMESPACE)]
    pub namespace: String,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The embedded controller's source: `--config PATH...` (files, watched) or `--kube`, with
    /// the options of each (the same flags as the `controller` binary's).
    #[cfg(feature = "embedded")]
    #[command(flatten)]
    pub source: controller::source::run::SourceArgs,
    /// Take snapshots from a meshgate controller (`controller --kube`), e.g.
    /// http://meshgate-controller.istio-system:15010. The last snapshot keeps serving while
    /// the controller is unreachable.
    #[arg(long, value_name = "URL")]
    #[cfg_attr(feature = "embedded", arg(conflicts_with_all = ["config", "kube"]))]
    pub controller: Option<String>,
    /// File with the token the controller expects (or MESHGATE_TOKEN).
    #[arg(long, env = "MESHGATE_TOKEN_FILE", value_name = "PATH")]
    pub controller_token_file: Option<PathBuf>,
    /// This replica's name for `proxy-status` (the pod name in Kubernetes).
    #[arg(long, env = "POD_NAME")]
    pub name: Option<String>,
    /// Gateway server port -> listen address, e.g. 80=127.0.0.1:18080. Defaults follow
    /// istio-ingressgateway: 80=0.0.0.0:8080, 443=0.0.0.0:8443; any other port P listens on 0.0.0.0:P.
    #[arg(long = "port-map", value_name = "PORT=ADDR", value_parser = parse_port_map, num_args = 1..)]
    pub port_map: Vec<(u16, SocketAddr)>,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub status_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub metrics_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub identity: Identity,
    /// Access log: off, stdout, or a file path.
    #[arg(long, default_value = "stdout")]
    pub access_log: Target,
    /// On SIGTERM, how long in-flight requests may take before the process exits.
    #[arg(long, default_value_t = 5)]
    pub drain_seconds: u64,
    /// What to do while an AuthorizationPolicy or RequestAuthentication that meshgate cannot
    /// enforce selects this gateway: deny every request (403), or allow as if it were absent
    /// (logged as an error at every reload).
    #[arg(long, value_enum, default_value_t = UnenforcedPolicy::Deny)]
    pub unenforced_policy: UnenforcedPolicy,
    /// Which request loop serves plain HTTP/1 connections: Pingora's `ProxyHttp` path, or the
    /// prototype of meshgate's own loop on pingora-core's sessions (for measurements; it
    /// answers 501 to routes using what it does not have yet, see docs/architecture.md).
    #[arg(long, value_enum, default_value_t = RequestLoop::Pingora, env = "MESHGATE_REQUEST_LOOP")]
    pub request_loop: RequestLoop,
    /// Data-plane worker threads, each a single-threaded runtime with its own listening
    /// sockets and upstream pools (default: one per CPU the process may use, within its
    /// cgroup CPU limit).
    #[arg(long)]
    pub threads: Option<usize>,
    /// `source_workload` label of the metrics (Istio names the ingress gateway this way).
    #[arg(long, default_value = "istio-ingressgateway")]
    pub workload_name: String,
    #[command(flatten)]
    pub tracing: TraceArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What the data-plane listeners allow a client (docs/configuration.md, "Edge limits").
#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Downstream connections open at once on the data ports; past it, accepting pauses until
    /// one closes. Default: half the descriptor limit (raised to its hard limit at start)
    /// after a reserve, since each proxied request also holds an upstream connection.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time a client has to send a whole request head, from its first byte (from accept for
    /// a connection's first request); past it, 408 and the connection closes.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub request_header_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Time a request body may go without a byte arriving; past it, 408.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers) in KiB, as Envoy's
    /// `max_request_headers_kb`; past it, 431 and the connection closes.
    #[arg(long, value_name = "KIB", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_request_headers_kb: u32,
    /// Mirrored requests (`mirror`, `mirrors`) in flight at once; past it, copies are dropped
    /// and counted (`meshgate_mirror_requests_total{outcome="dropped"}`), so a slow or dead
    /// mirror target cannot grow the gateway's memory.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_mirrors_in_flight: usize,
}

/// A duration as Istio writes them (`10s`, `500ms`, `2m`); zero is refused (a timeout of
/// nothing would close every connection).
fn parse_duration(s: &str) -> Result<Duration, String> {
    match meshgate_model::duration::parse_duration_ms(s) {
        Some(0) => Err(format!("{s:?}: must be more than zero")),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("{s:?} is not a duration like 10s, 500ms or 2m")),
    }
}

/// Distributed tracing (docs/configuration.md#tracing). Off unless `--otlp-endpoint` is set.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    /// OTLP/HTTP (JSON) collector URL for the gateway's spans, e.g.
    /// http://127.0.0.1:4318/v1/traces; `/v1/traces` is used when the URL has no path.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Percentage of new traces to sample (0-100), as Istio's meshConfig sampling; an incoming
    /// sampled/unsampled decision is always followed.
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0, value_parser = parse_percent)]
    pub trace_sampling: f64,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage between 0 and 100")),
    }
}

fn parse_port_map(s: &str) -> Result<(u16, SocketAddr), String> {
    let (port, addr) = s.split_once('=').ok_or_else(|| format!("{s:?} is not PORT=ADDR"))?;
    let port: u16 = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
    let addr: SocketAddr = addr.parse().map_err(|_| format!("{addr:?} is not an address like 0.0.0.0:8080"))?;
    Ok((port, addr))
}

impl RunArgs {
    /// The settings these flags give.
    pub fn config(self) -> Config {
        let source = match self.controller {
            Some(url) => {
                Source::Controller { url, token_file: self.controller_token_file, replica: replica_name(self.name) }
            }
            #[cfg(feature = "embedded")]
            None => Source::Embedded(self.source),
            #[cfg(not(feature = "embedded"))]
            None => Source::None,
        };
        Config {
            source,
            port_map: self.port_map,
            status_addr: self.status_addr,
            metrics_addr: self.metrics_addr,
            admin_addr: self.admin_addr,
            identity: config::Identity {
                labels: self.identity.labels,
                namespace: self.identity.namespace,
                workload: self.workload_name,
            },
            access_log: self.access_log,
            drain: std::time::Duration::from_secs(self.drain_seconds),
            deny_unenforced_policies: self.unenforced_policy == UnenforcedPolicy::Deny,
            own_request_loop: self.request_loop == RequestLoop::Own,
            threads: self.threads,
            tracing: config::Tracing {
                otlp_endpoint: self.tracing.otlp_endpoint,
                sampling_percent: self.tracing.trace_sampling,
            },
            limits: config::Limits {
                max_connections: self.limits.max_connections,
                request_header_timeout: self.limits.request_header_timeout,
                idle_timeout: self.limits.idle_timeout,
                body_read_timeout: self.limits.body_read_timeout,
                max_request_header_bytes: self.limits.max_request_headers_kb as usize * 1024,
                max_mirrors_in_flight: self.limits.max_mirrors_in_flight,
            },
        }
    }
}

/// `--name`, else the host name (a pod's host name is its name).
fn replica_name(name: Option<String>) -> String {
    name.filter(|n| !n.is_empty()).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "gateway".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_map_defaults_and_overrides() {
        let cli = Cli::parse_from(["gateway", "--config", "x", "--port-map", "80=127.0.0.1:18080"]);
        let config = cli.run.config();
        assert_eq!(config.listen_addr(80), "127.0.0.1:18080".parse().unwrap());
        assert_eq!(config.listen_addr(443), "0.0.0.0:8443".parse().unwrap());
        assert_eq!(config.listen_addr(15029), "0.0.0.0:15029".parse().unwrap());
        assert_eq!(config.identity.labels.get("istio").map(String::as_str), Some("ingressgateway"));
        assert!(config.deny_unenforced_policies, "fail closed by default");
    }

    #[test]
    fn config_sources_are_exclusive() {
        assert!(Cli::try_parse_from(["gateway", "--config", "x", "--controller", "http://c:15010"]).is_err());
        assert!(Cli::try_parse_from(["gateway", "--controller", "http://c:15010", "--kube"]).is_err());
        let cli = Cli::parse_from(["gateway", "--controller", "c:15010", "--name", "gw-1"]);
        let Source::Controller { url, replica, .. } = cli.run.config().source else { panic!("a controller source") };
        assert_eq!((url.as_str(), replica.as_str()), ("c:15010", "gw-1"));
    }

    #[test]
    fn edge_limits() {
        let limits = Cli::parse_from(["gateway", "--config", "x"]).run.config().limits;
        assert_eq!(limits.request_header_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_request_header_bytes, 60 * 1024);
        assert_eq!(limits.max_connections, None);
        let cli = Cli::parse_from([
            "gateway",
            "--config",
            "x",
            "--request-header-timeout",
            "500ms",
            "--idle-timeout",
            "2m",
            "--max-request-headers-kb",
            "8",
            "--max-connections",
            "100",
        ]);
        let limits = cli.run.config().limits;
        assert_eq!(limits.request_header_timeout, Duration::from_millis(500));
        assert_eq!(limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(limits.max_request_header_bytes, 8 * 1024);
        assert_eq!(limits.max_connections, Some(100));
        for bad in [["--idle-timeout", "0s"], ["--request-header-timeout", "10"], ["--max-request-headers-kb", "0"]] {
            assert!(Cli::try_parse_from(["gateway", "--config", "x", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn analyze_subcommand() {
        let cli = Cli::parse_from(["gateway", "analyze", "a", "b"]);
        assert!(matches!(cli.command, Some(Command::Analyze { paths, .. }) if paths.len() == 2));
    }
}

/// `--request-loop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RequestLoop {
    Pingora,
    Own,
}

/// `--unenforced-policy`: fail closed (the default) or open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnenforcedPolicy {
    Deny,
    Allow,
}
