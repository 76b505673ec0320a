//! The embedded controller (cargo feature `embedded`, on by default): the source the flags name
//! (files, or the Kubernetes API with `--kube`), translated in-process.

use crate::config::Identity;
use crate::telemetry::metrics::Metrics;
use anyhow::Result;
use controller::publish::{Outcome, Publisher};
use controller::source::run::{self, Sink};
use controller::{Level, Options};
use meshgate_model::snapshot::Snapshot;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The quiet time that turns a burst of file events into one reload. Editors and `cp` write a
/// file within a few milliseconds; a longer wait only delays every change.
const FILE_DEBOUNCE: Duration = Duration::from_millis(10);

pub(super) async fn start(
    source: &run::SourceArgs,
    identity: &Identity,
    metrics: Arc<Metrics>,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let namespace = &identity.namespace;
    let identity = Options { labels: identity.labels.clone(), namespace: namespace.clone() };
    let (mut publisher, snapshots) = Publisher::new(identity);
    let registry = metrics.registry.clone();
    let on_store = move |store| {
        let started = Instant::now();
        let outcome = publisher.apply(store);
        report(&outcome, &metrics, started.elapsed());
    };
    let sink = Sink { on_store, on_health: |_| {} };
    run::start(source, namespace, FILE_DEBOUNCE, &registry, sink).await?;
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
