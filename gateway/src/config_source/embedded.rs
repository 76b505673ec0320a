//! The embedded controller (cargo feature `embedded`, on by default): YAML files translated
//! in-process, or the Kubernetes API read in-process (`--kube`, feature `kube`).

use crate::cli::RunArgs;
use crate::metrics::Metrics;
use anyhow::Result;
use controller::publish::{Outcome, Publisher};
use controller::source::watch as file_watch;
use controller::{Level, Options};
use meshgate_model::snapshot::Snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

fn identity(args: &RunArgs) -> Options {
    Options { labels: args.identity.labels.clone(), namespace: args.identity.namespace.clone() }
}

/// `--config`: the files, watched, translated on every change.
pub fn files(args: &RunArgs, metrics: Arc<Metrics>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let (mut publisher, snapshots) = Publisher::new(identity(args));
    // The quiet time that turns a burst of file events into one reload. Editors and `cp`
    // write a file within a few milliseconds; a longer wait only delays every change.
    let source = file_watch::FileSource {
        paths: args.config.clone(),
        options: controller::source::files::FileOptions {
            max_file_bytes: args.max_config_file_bytes.unwrap_or(controller::source::files::DEFAULT_MAX_FILE_BYTES),
        },
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

#[cfg(not(feature = "kube"))]
pub async fn kube(_: &RunArgs, _: Arc<Metrics>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    anyhow::bail!("this gateway was built without the `kube` feature; use --config or --controller")
}

/// The controller in-process on the Kubernetes API (single-replica installs).
#[cfg(feature = "kube")]
pub async fn kube(args: &RunArgs, metrics: Arc<Metrics>) -> Result<watch::Receiver<Arc<Snapshot>>> {
    use controller::source::kube::{self as source, KubeOptions};
    let identity = identity(args);
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
