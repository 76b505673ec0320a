//! Where snapshots come from: YAML files translated in-process (the embedded default), a
//! remote controller (`--controller`), or the Kubernetes API in-process (`--kube`). Each
//! yields the same stream of versioned snapshots for the data plane.

use crate::cli::RunArgs;
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use controller::publish::{Outcome, Publisher};
use controller::remote::client::{self, ClientOptions, Event};
use controller::snapshot::Snapshot;
use controller::source::watch as file_watch;
use controller::{Level, Options};
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Starts the configured source. `applied` follows the version the data plane serves (the
/// remote source reports it to the controller as its acknowledgement).
pub async fn start(
    args: &RunArgs,
    metrics: Arc<Metrics>,
    applied: watch::Receiver<u64>,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let identity = Options { labels: args.identity.labels.clone(), namespace: args.identity.namespace.clone() };
    if let Some(url) = &args.controller {
        return remote(args, url, metrics, applied);
    }
    if args.kube {
        return kube(args, identity, metrics).await;
    }
    anyhow::ensure!(
        !args.config.is_empty(),
        "give a config source: --config PATH (a folder or file of Istio YAML), --controller URL or --kube"
    );
    let (mut publisher, snapshots) = Publisher::new(identity);
    // The quiet time that turns a burst of file events into one reload. Editors and `cp`
    // write a file within a few milliseconds; a longer wait only delays every change.
    let source = file_watch::FileSource {
        paths: args.config.clone(),
        options: controller::source::files::FileOptions { max_file_bytes: args.max_config_file_bytes },
    };
    file_watch::spawn_loop(
        source,
        Duration::from_millis(10),
        move |store| {
            let started = Instant::now();
            let outcome = publisher.apply(store);
            report(&outcome, &metrics, started.elapsed());
        },
        // Parsing and translation garbage, and the previous store, were freed on this thread.
        // Given back once the config settles, not right after publishing, where the
        // collection competed with the data plane's compile of the new snapshot.
        crate::memory::release_freed,
    )?;
    Ok(snapshots)
}

fn remote(
    args: &RunArgs,
    url: &str,
    metrics: Arc<Metrics>,
    applied: watch::Receiver<u64>,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let token = match &args.controller_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the controller token from {}", path.display()))?,
        None => std::env::var("MESHGATE_TOKEN")
            .context("--controller needs a token: --controller-token-file PATH or MESHGATE_TOKEN")?,
    };
    let options = ClientOptions {
        url: url.to_string(),
        token: token.trim().to_string(),
        gateway: args.replica_name(),
        namespace: args.identity.namespace.clone(),
        labels: args.identity.labels.clone(),
        wait: Duration::from_secs(30),
        after_decode: Some(crate::memory::release_freed),
    };
    let connected = IntGauge::new(
        "meshgate_controller_connected",
        "1 while the last poll of the controller succeeded, 0 while it is unreachable",
    )?;
    let errors = IntCounter::new("meshgate_controller_poll_errors_total", "Failed polls of the controller")?;
    metrics.registry.register(Box::new(connected.clone()))?;
    metrics.registry.register(Box::new(errors.clone()))?;
    tracing::info!(url, gateway = options.gateway, "taking snapshots from the controller");
    let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    tokio::spawn(client::run(options, tx, applied, move |event| match event {
        Event::Received { version, delta } => {
            connected.set(1);
            tracing::info!(version, delta, "snapshot received from the controller");
        }
        Event::Unchanged => connected.set(1),
        Event::Failed { error, retry_in } => {
            connected.set(0);
            errors.inc();
            tracing::warn!(%error, ?retry_in, "controller unreachable; serving the last snapshot");
        }
    }));
    Ok(rx)
}

#[cfg(not(feature = "kube"))]
async fn kube(_: &RunArgs, _: Options, _: Arc<Metrics>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    anyhow::bail!("this gateway was built without the `kube` feature; use --config or --controller")
}

/// The controller in-process on the Kubernetes API (single-replica installs).
#[cfg(feature = "kube")]
async fn kube(args: &RunArgs, identity: Options, metrics: Arc<Metrics>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    use controller::source::kube::{self as source, KubeOptions};
    let options = KubeOptions {
        namespaces: args.watch_namespaces.clone(),
        gateway_namespace: identity.namespace.clone(),
        ..Default::default()
    };
    let (mut publisher, snapshots) = Publisher::new(identity);
    let registry = metrics.registry.clone();
    source::start(
        options,
        &registry,
        move |store| {
            let started = Instant::now();
            let outcome = publisher.apply(store);
            report(&outcome, &metrics, started.elapsed())
        },
        |_| {},
    )
    .await?;
    tracing::info!(namespaces = ?args.watch_namespaces, "watching the Kubernetes API");
    Ok(snapshots)
}

/// Logs what one `apply` did; `took` (translation and publication) is logged so that slow
/// reloads of large configs are visible without a profiler.
fn report(outcome: &Outcome, metrics: &Metrics, took: Duration) {
    for d in outcome.diagnostics.iter() {
        match d.level {
            Level::Error => tracing::error!("{d}"),
            Level::Warning => tracing::warn!("{d}"),
            Level::Info => tracing::info!("{d}"),
        }
    }
    metrics.config_rejected.set(outcome.rejected as i64);
    let result = if outcome.rejected > 0 { "partial" } else { "ok" };
    metrics.config_reloads.with_label_values(&[result]).inc();
    if outcome.changed {
        tracing::info!(
            version = outcome.version,
            errors = outcome.diagnostics.errors(),
            warnings = outcome.diagnostics.warnings(),
            ms = took.as_millis() as u64,
            "config translated"
        );
    } else {
        tracing::debug!(version = outcome.version, ms = took.as_millis() as u64, "config unchanged");
    }
}
