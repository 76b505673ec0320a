//! `controller`: serve routing snapshots to gateway replicas (`controller --config DIR` or
//! `controller --kube`), or validate Istio YAML and print the snapshot it translates to.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use controller::remote::server::{serve, Distributor};
use controller::source::{files, watch as file_watch};
use controller::{analyze, translate, Options};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc, as in the gateway: a reload at 10k services allocates and frees millions of
/// small objects, and glibc's malloc spent about a third of it consolidating free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "controller", version, about = "meshgate control plane")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Report problems in Istio YAML like `istioctl analyze`.
    Analyze { paths: Vec<PathBuf> },
    /// Print the routing snapshot the files translate to, as JSON.
    Snapshot { paths: Vec<PathBuf> },
}

#[derive(Args)]
struct ServeArgs {
    /// Files or folders of Istio/Kubernetes YAML to serve; watched for changes.
    #[arg(long = "config", value_name = "PATH", num_args = 1.., conflicts_with = "kube")]
    config: Vec<PathBuf>,
    /// Read resources from the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long)]
    kube: bool,
    /// Where gateways poll for snapshots (istiod's plaintext xDS port is 15010).
    #[arg(long, default_value = "0.0.0.0:15010")]
    listen: SocketAddr,
    /// File holding the shared token gateways present; required (snapshots carry TLS keys).
    #[arg(long, env = "MESHGATE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The token itself (prefer --token-file: arguments show in `ps`).
    #[arg(long, env = "MESHGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Identity translated before any gateway connects (for readiness and analysis).
    #[arg(long, default_value = "istio=ingressgateway,app=istio-ingressgateway", value_parser = controller::translate::parse_labels)]
    labels: BTreeMap<String, String>,
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// With --kube: namespaces to watch (default: all).
    #[arg(long, value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// With --kube: only resources labelled `istio.io/rev=<revision>` ("default" also takes
    /// unlabelled ones), as istiod revisions select their config.
    #[arg(long)]
    revision: Option<String>,
    /// Quiet time after a change before translating (a burst of changes is one version).
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// With --config: larger config and certificate files are not read (an error names them;
    /// what they held before keeps serving).
    #[arg(long, value_name = "BYTES", default_value_t = files::DEFAULT_MAX_FILE_BYTES)]
    max_config_file_bytes: u64,
}

fn main() -> Result<()> {
    controller::memory::disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Analyze { paths }) => {
            let (text, code) = analyze::report(&analyze::analyze(&paths, &Options::default()));
            print!("{text}");
            std::process::exit(code);
        }
        Some(Command::Snapshot { paths }) => {
            let (snapshot, _) = translate(&files::load(&paths), &Options::default());
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
            Ok(())
        }
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli.serve)),
    }
}

fn token(args: &ServeArgs) -> Result<String> {
    let token = match (&args.token_file, &args.token) {
        (Some(path), _) => {
            std::fs::read_to_string(path).with_context(|| format!("reading the token file {}", path.display()))?
        }
        (None, Some(token)) => token.clone(),
        (None, None) => anyhow::bail!("a token is required (--token-file or MESHGATE_TOKEN): snapshots carry TLS keys"),
    };
    let token = token.trim().to_string();
    anyhow::ensure!(token.len() >= 16, "the token must be at least 16 characters");
    Ok(token)
}

async fn run(args: ServeArgs) -> Result<()> {
    anyhow::ensure!(args.kube || !args.config.is_empty(), "give --config PATH or --kube as the resource source");
    let identity = Options { labels: args.labels.clone(), namespace: args.namespace.clone() };
    let distributor = Distributor::new(token(&args)?, identity);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving snapshots");
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(listener, distributor.clone(), shutdown_rx));

    let debounce = Duration::from_millis(args.debounce_ms);
    if args.kube {
        start_kube(&args, distributor.clone(), debounce).await?;
    } else {
        let d = distributor.clone();
        // Once the folder settles, give back what the reload freed (the previous store, parsing
        // and translation garbage): without it the controller grew by ~40 MiB over ten edits
        // of a 10k-service folder (docs/benchmarks.md, "Sixth round").
        // SAFETY: `mi_collect` has no preconditions; it touches only mimalloc's own state.
        let release = || unsafe { libmimalloc_sys::mi_collect(true) };
        let source = file_watch::FileSource {
            paths: args.config.clone(),
            options: files::FileOptions { max_file_bytes: args.max_config_file_bytes },
        };
        file_watch::spawn_loop(source, debounce, move |store| d.set_store(store), release)?;
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    Ok(())
}

#[cfg(not(feature = "kube"))]
async fn start_kube(_: &ServeArgs, _: Arc<Distributor>, _: Duration) -> Result<()> {
    anyhow::bail!("this controller was built without the `kube` feature")
}

#[cfg(feature = "kube")]
async fn start_kube(args: &ServeArgs, distributor: Arc<Distributor>, debounce: Duration) -> Result<()> {
    use controller::source::kube::{self, KubeOptions};
    let options = KubeOptions {
        namespaces: args.watch_namespaces.clone(),
        gateway_namespace: args.namespace.clone(),
        revision: args.revision.clone(),
        debounce,
        ..Default::default()
    };
    let (apply, report) = (distributor.clone(), distributor.clone());
    kube::start(
        options,
        distributor.registry(),
        move |store| apply.set_store(store),
        move |health| report.set_source_status(health),
    )
    .await?;
    tracing::info!(namespaces = ?args.watch_namespaces, "watching the Kubernetes API");
    Ok(())
}
