//! `controller`: serve routing snapshots to gateway replicas (`controller --config DIR` or
//! `controller --kube`), or validate Istio YAML and print the snapshot it translates to.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use controller::distribution::server::{serve, Distributor};
use controller::source::files;
use controller::source::run::{self as source, SourceArgs};
use controller::{analyze, translate, Options};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// `--config PATH...` (files, watched) or `--kube`, with the options of each.
    #[command(flatten)]
    source: SourceArgs,
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
    #[arg(long, default_value = meshgate_model::labels::DEFAULT_GATEWAY_LABELS, value_parser = controller::translate::parse_labels)]
    labels: BTreeMap<String, String>,
    #[arg(long, default_value = meshgate_model::labels::DEFAULT_GATEWAY_NAMESPACE)]
    namespace: String,
}

/// The controller's quiet time after a change, files or cluster: gateways poll, so a burst of
/// edits should become one version.
const DEBOUNCE: Duration = Duration::from_millis(100);

// Transparent huge pages off before std's first allocation (see the function).
meshgate_model::run_before_main!(meshgate_model::memory::disable_transparent_huge_pages);

fn main() -> Result<()> {
    // Once a reload settles, give back what it freed (the previous store, parsing and
    // translation garbage): without it the controller grew by ~40 MiB over ten edits of a
    // 10k-service folder (docs/benchmarks.md, "Sixth round").
    // SAFETY: `mi_collect` has no preconditions; it touches only mimalloc's own state.
    controller::memory::set_release(|| unsafe { libmimalloc_sys::mi_collect(true) });
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
    args.source.check()?;
    let identity = Options { labels: args.labels.clone(), namespace: args.namespace.clone() };
    let distributor = Distributor::new(token(&args)?, identity);
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving snapshots");
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(listener, distributor.clone(), shutdown_rx));

    let (apply, report) = (distributor.clone(), distributor.clone());
    let sink = source::Sink {
        on_store: move |store| apply.set_store(store),
        on_health: move |health| report.set_source_status(health),
    };
    source::start(&args.source, &args.namespace, DEBOUNCE, distributor.registry(), sink).await?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    Ok(())
}
