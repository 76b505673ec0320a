//! Where snapshots come from: YAML files translated in-process (the embedded default), a
//! remote controller (`--controller`), or the Kubernetes API in-process (`--kube`). Each
//! yields the same stream of versioned snapshots for the data plane. A gateway built without
//! the `embedded` feature (the replica the Helm chart deploys) takes them from a controller only.

#[cfg(feature = "embedded")]
mod embedded;

use crate::config::{Config, Source};
use crate::telemetry::metrics::Metrics;
use anyhow::{Context, Result};
use meshgate_model::distribution::client::{self, ClientOptions, Event};
use meshgate_model::snapshot::Snapshot;
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Starts the configured source. `applied` follows the version the data plane serves (the
/// remote source reports it to the controller as its acknowledgement).
pub(crate) async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    applied: watch::Receiver<u64>,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    match &config.source {
        Source::Controller { url, token_file, replica } => {
            remote(config, url, token_file.as_deref(), replica, metrics, applied)
        }
        #[cfg(feature = "embedded")]
        Source::Embedded(source) => {
            // The gateway has a third source, so it names it too.
            source.check().map_err(|_| {
                anyhow::anyhow!(
                    "give a config source: --config PATH (a folder or file of Istio YAML), --controller URL or --kube"
                )
            })?;
            embedded::start(source, &config.identity, metrics).await
        }
        #[cfg(not(feature = "embedded"))]
        Source::None => anyhow::bail!(
            "this gateway was built without the embedded controller (feature `embedded`): use --controller URL"
        ),
    }
}

fn remote(
    config: &Config,
    url: &str,
    token_file: Option<&std::path::Path>,
    replica: &str,
    metrics: Arc<Metrics>,
    applied: watch::Receiver<u64>,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the controller token from {}", path.display()))?,
        None => std::env::var("MESHGATE_TOKEN")
            .context("--controller needs a token: --controller-token-file PATH or MESHGATE_TOKEN")?,
    };
    let options = ClientOptions {
        url: url.to_string(),
        token: token.trim().to_string(),
        gateway: replica.to_string(),
        namespace: config.identity.namespace.clone(),
        labels: config.identity.labels.clone(),
        wait: Duration::from_secs(30),
        after_decode: Some(meshgate_model::memory::release_freed),
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
