//! `meshctl`: istioctl-style diagnostics for meshgate.
//!
//! ```text
//! meshctl proxy-status                       # every gateway replica: acked version, SYNCED/STALE
//! meshctl proxy-config routes [ADMIN]        # listeners|routes|clusters|endpoints|secrets, -o json
//! meshctl analyze FILES... | --controller    # problems in YAML, or in the live config
//! ```

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use controller::distribution::transport;
use controller::distribution::wire::ControllerStatus;
use controller::meshctl::proxy_config::{self, Filter};
use controller::meshctl::{proxy_status, CertificateInfo, EndpointStatus};
use controller::snapshot::Snapshot;
use controller::{analyze, Options};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "meshctl", version, about = "Diagnostics for meshgate gateways, in istioctl's words")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sync state of every gateway replica connected to the controller.
    #[command(alias = "ps")]
    ProxyStatus {
        #[command(flatten)]
        controller: ControllerArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What one gateway serves, read from its admin endpoint
    /// (in Kubernetes: `kubectl -n istio-system port-forward deploy/istio-ingressgateway 15000`).
    #[command(alias = "pc")]
    ProxyConfig {
        #[arg(value_enum)]
        view: View,
        /// The gateway's admin address (host:port or URL); overrides --admin.
        gateway: Option<String>,
        #[arg(long, default_value = "127.0.0.1:15000", env = "MESHGATE_ADMIN")]
        admin: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only this Gateway port (listeners, routes) or service port (clusters, endpoints).
        #[arg(long)]
        port: Option<u16>,
        /// Only this listener/route name (routes, listeners) or secret name (secrets).
        #[arg(long)]
        name: Option<String>,
        /// Only clusters whose service host contains this (clusters, endpoints).
        #[arg(long)]
        fqdn: Option<String>,
        /// Only clusters of this subset.
        #[arg(long)]
        subset: Option<String>,
    },
    /// Report problems like `istioctl analyze`: in files, or (with --live) in the config the
    /// controller serves. Exits 1 when there are errors.
    Analyze {
        paths: Vec<PathBuf>,
        /// Analyze the live config of the controller instead of files.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        controller: ControllerArgs,
    },
}

#[derive(Args)]
struct ControllerArgs {
    #[arg(long, env = "MESHGATE_CONTROLLER", default_value = "127.0.0.1:15010")]
    controller: String,
    #[arg(long, env = "MESHGATE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl ControllerArgs {
    async fn status(&self) -> Result<ControllerStatus> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            None => std::env::var("MESHGATE_TOKEN")
                .context("the controller needs its token: --token-file or MESHGATE_TOKEN")?,
        };
        let url = format!("{}/v1/status", transport::normalize(&self.controller));
        let body = transport::get(&url, Some(token.trim()), TIMEOUT).await?;
        serde_json::from_slice(&body).with_context(|| format!("decoding {url}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum View {
    #[value(alias = "listener")]
    Listeners,
    #[value(alias = "route")]
    Routes,
    #[value(alias = "cluster")]
    Clusters,
    #[value(alias = "endpoint")]
    Endpoints,
    #[value(alias = "secret")]
    Secrets,
    All,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line per cause, no backtrace: this is a CLI for people.
            eprintln!("Error: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(command: Command) -> Result<i32> {
    match command {
        Command::ProxyStatus { controller, output } => {
            let status = controller.status().await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status.gateways)?),
                Output::Table => print!("{}", proxy_status::table(&status).render()),
            }
            Ok(0)
        }
        Command::ProxyConfig { view, gateway, admin, output, port, name, fqdn, subset } => {
            let admin = transport::normalize(gateway.as_deref().unwrap_or(&admin));
            let filter = Filter { port, name, fqdn, subset };
            proxy_config(view, &admin, output, &filter).await?;
            Ok(0)
        }
        Command::Analyze { paths, live, controller } => {
            if live {
                let status = controller.status().await?;
                let errors = status.diagnostics.iter().filter(|f| f.level == "error").count();
                let warnings = status.diagnostics.iter().filter(|f| f.level == "warning").count();
                for f in status.diagnostics.iter().filter(|f| f.level != "info") {
                    let level = if f.level == "error" { "Error" } else { "Warning" };
                    let field = if f.field.is_empty() { String::new() } else { format!(" {}:", f.field) };
                    println!("{level} [{}] {}:{field} {}", f.code, f.resource, f.message);
                }
                if errors + warnings == 0 {
                    println!("✔ No validation issues found in the live config.");
                } else {
                    println!("{errors} error(s), {warnings} warning(s)");
                }
                return Ok(if errors > 0 { 1 } else { 0 });
            }
            anyhow::ensure!(!paths.is_empty(), "give files or folders to analyze, or --live");
            let (text, code) = analyze::report(&analyze::analyze(&paths, &Options::default()));
            print!("{text}");
            Ok(code)
        }
    }
}

async fn proxy_config(view: View, admin: &str, output: Output, filter: &Filter) -> Result<()> {
    let fetch = |path: &'static str| {
        let url = format!("{admin}{path}");
        async move { transport::get(&url, None, TIMEOUT).await.with_context(|| format!("reading {url}")) }
    };
    let views = match view {
        View::All => vec![View::Listeners, View::Routes, View::Clusters, View::Endpoints, View::Secrets],
        v => vec![v],
    };
    let snapshot: Snapshot = if views.iter().any(|v| matches!(v, View::Listeners | View::Routes | View::Clusters)) {
        serde_json::from_slice(&fetch("/config_dump").await?).context("decoding /config_dump")?
    } else {
        Snapshot::default()
    };
    for (i, v) in views.iter().enumerate() {
        if i > 0 {
            println!();
        }
        match v {
            View::Listeners | View::Routes | View::Clusters => {
                let name = if *v == View::Clusters { "clusters" } else { "listeners" };
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&proxy_config::json_view(&snapshot, name, filter))?);
                    continue;
                }
                let table = match v {
                    View::Listeners => proxy_config::listeners(&snapshot, filter),
                    View::Routes => proxy_config::routes(&snapshot, filter),
                    _ => proxy_config::clusters_table(&snapshot, filter),
                };
                print!("{}", table.render());
            }
            View::Endpoints => {
                let endpoints: Vec<EndpointStatus> =
                    serde_json::from_slice(&fetch("/clusters?format=json").await?).context("decoding /clusters")?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&endpoints)?),
                    Output::Table => print!("{}", proxy_config::endpoints(&endpoints, filter).render()),
                }
            }
            View::Secrets => {
                let certs: Vec<CertificateInfo> =
                    serde_json::from_slice(&fetch("/certs").await?).context("decoding /certs")?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&certs)?),
                    Output::Table => print!("{}", proxy_config::secrets(&certs, filter).render()),
                }
            }
            View::All => unreachable!("expanded above"),
        }
    }
    Ok(())
}
