//! Running the Kubernetes source inside a process: the API client, a translation thread that
//! always takes the newest Store, and the source's health as Prometheus metrics. Shared by
//! `controller --kube` and `gateway --kube`.

use super::{run, KubeOptions, SourceHealth};
use crate::store::Store;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("connecting to the Kubernetes API (in-cluster service account or KUBECONFIG): {0}")]
    Client(#[from] kube::Error),
    #[error("registering the Kubernetes source metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the translation thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Starts watching. `apply` runs on a dedicated thread (translation blocks for a while on large
/// configs and must not stall the watch tasks); when Stores arrive faster than it translates,
/// the intermediate ones are skipped. `on_health` receives the source's state every second.
pub async fn start(
    options: KubeOptions,
    registry: &Registry,
    mut apply: impl FnMut(Store) + Send + 'static,
    on_health: impl Fn(serde_json::Value) + Send + 'static,
) -> Result<Arc<SourceHealth>, EmbedError> {
    let client = kube::Client::try_default().await?;
    let health = Arc::new(SourceHealth::new());
    let mut metrics = HealthMetrics::register(registry)?;

    let (tx, rx) = std::sync::mpsc::channel::<Store>();
    std::thread::Builder::new().name("translate".into()).spawn(move || {
        while let Ok(first) = rx.recv() {
            let newest = rx.try_iter().last().unwrap_or(first);
            apply(newest);
        }
    })?;

    let watched = health.clone();
    tokio::spawn(async move {
        let result = run(client, options, watched, move |store| {
            let _ = tx.send(store);
        })
        .await;
        // Watches end only if their tasks died; exiting lets Kubernetes restart the process
        // instead of serving a snapshot that will never change again.
        tracing::error!(?result, "the Kubernetes source stopped; exiting");
        std::process::exit(1);
    });

    let reported = health.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let summary = reported.summary();
            metrics.update(&summary);
            on_health(serde_json::to_value(&summary).unwrap_or_default());
        }
    });
    Ok(health)
}

/// `meshgate_kube_*` series, updated from [`SourceHealth`] summaries.
struct HealthMetrics {
    errors: IntCounterVec,
    synced: IntGaugeVec,
    failing: IntGaugeVec,
    events: IntCounterVec,
    /// Counts already exported, so counters advance by the difference.
    seen: BTreeMap<(String, String), u64>,
}

impl HealthMetrics {
    fn register(registry: &Registry) -> Result<HealthMetrics, prometheus::Error> {
        let errors = IntCounterVec::new(
            Opts::new("meshgate_kube_watch_errors_total", "Failed Kubernetes lists/watches by kind and reason"),
            &["kind", "reason"],
        )?;
        let synced = IntGaugeVec::new(
            Opts::new("meshgate_kube_watch_synced", "1 when every watch of the kind has completed a full list"),
            &["kind"],
        )?;
        let failing = IntGaugeVec::new(
            Opts::new("meshgate_kube_watch_failing", "1 while the latest list/watch attempt of the kind failed"),
            &["kind"],
        )?;
        let events =
            IntCounterVec::new(Opts::new("meshgate_kube_watch_events_total", "Kubernetes watch events"), &["kind"])?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(synced.clone()))?;
        registry.register(Box::new(failing.clone()))?;
        registry.register(Box::new(events.clone()))?;
        Ok(HealthMetrics { errors, synced, failing, events, seen: BTreeMap::new() })
    }

    fn update(&mut self, summary: &super::HealthSummary) {
        for (kind, k) in &summary.kinds {
            self.synced.with_label_values(&[kind]).set(k.synced as i64);
            self.failing.with_label_values(&[kind]).set(k.failing as i64);
            let counts = k.errors.iter().map(|(r, n)| (r.to_string(), *n)).chain([("".to_string(), k.events)]);
            for (reason, total) in counts {
                let seen = self.seen.entry((kind.clone(), reason.clone())).or_default();
                let delta = total.saturating_sub(*seen);
                *seen = total.max(*seen);
                if delta == 0 {
                    continue;
                }
                if reason.is_empty() {
                    self.events.with_label_values(&[kind]).inc_by(delta);
                } else {
                    self.errors.with_label_values(&[kind, &reason]).inc_by(delta);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kube::{HealthSummary, KindSummary};

    #[test]
    fn counters_advance_by_the_difference() {
        let registry = Registry::new();
        let mut m = HealthMetrics::register(&registry).unwrap();
        let mut summary = HealthSummary::default();
        let mut kind = KindSummary { synced: true, events: 3, ..Default::default() };
        kind.errors.insert("gone", 1);
        summary.kinds.insert("VirtualService".into(), kind.clone());
        m.update(&summary);
        kind.errors.insert("gone", 2);
        kind.events = 5;
        summary.kinds.insert("VirtualService".into(), kind);
        m.update(&summary);
        assert_eq!(m.errors.with_label_values(&["VirtualService", "gone"]).get(), 2);
        assert_eq!(m.events.with_label_values(&["VirtualService"]).get(), 5);
        assert_eq!(m.synced.with_label_values(&["VirtualService"]).get(), 1);
    }
}
