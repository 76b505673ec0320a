//! What the Kubernetes source knows about its own state, for metrics and the status page.
//!
//! Plain counters behind one mutex: they change at watch-event rate (not request rate), so a
//! lock is cheap and keeps the per-kind record consistent. The controller binary decides how
//! to export [`HealthSummary`]; this module knows nothing about Prometheus.

use crate::schema::Kind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Why a list or watch failed. A closed set so metric label values stay bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorReason {
    /// 410: the watch's resourceVersion is too old; the watcher lists again.
    Gone,
    /// 403: RBAC does not allow list/watch of this kind.
    Forbidden,
    /// 404: the kind is not served (e.g. Istio CRDs not installed).
    NotFound,
    /// The API server could not be reached or the connection broke.
    Connect,
    /// Anything else (5xx, undecodable responses, ...).
    Other,
}

impl ErrorReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Gone => "gone",
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::NotFound => "not_found",
            ErrorReason::Connect => "connect",
            ErrorReason::Other => "other",
        }
    }
}

#[derive(Debug, Default)]
struct KindState {
    synced: bool,
    failing: bool,
    last_error_at: Option<tokio::time::Instant>,
    events: u64,
    errors: BTreeMap<ErrorReason, u64>,
    last_error: Option<String>,
}

/// How long after its last error a kind still counts as failing when nothing else was heard.
/// kube's watcher resumes a watch without emitting anything (no event marks a successful
/// restart), so without this a quiet kind would report failing forever after an outage. A
/// watch that keeps failing errs again within kube's backoff cap (30 s), well inside this.
pub(super) const FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(65);

/// Shared between the watch tasks (writers) and whoever reports on the source (readers).
#[derive(Debug, Default)]
pub struct SourceHealth {
    kinds: Mutex<BTreeMap<Kind, KindState>>,
    events: AtomicU64,
    published: AtomicU64,
}

/// A point-in-time copy of [`SourceHealth`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthSummary {
    /// Watch events received (all kinds, including initial list items).
    pub events: u64,
    /// Stores handed to `on_change`.
    pub published: u64,
    pub kinds: BTreeMap<String, KindSummary>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindSummary {
    /// Every watch of this kind has completed a full list, so the cache holds a complete view.
    pub synced: bool,
    /// The most recent list/watch attempt failed and no success has followed yet.
    pub failing: bool,
    pub events: u64,
    /// Error counts by [`ErrorReason::as_str`].
    pub errors: BTreeMap<&'static str, u64>,
    pub last_error: Option<String>,
}

impl SourceHealth {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn summary(&self) -> HealthSummary {
        let kinds = self.lock();
        HealthSummary {
            events: self.events.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            kinds: kinds
                .iter()
                .map(|(kind, s)| {
                    let summary = KindSummary {
                        synced: s.synced,
                        failing: s.failing && s.last_error_at.is_some_and(|t| t.elapsed() < FAILING_FOR),
                        events: s.events,
                        errors: s.errors.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
                        last_error: s.last_error.clone(),
                    };
                    (kind.as_str().to_string(), summary)
                })
                .collect(),
        }
    }

    /// True once a first complete Store has been handed to `on_change` (readiness).
    pub fn has_published(&self) -> bool {
        self.published.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn register(&self, kind: Kind) {
        self.lock().entry(kind).or_default();
    }

    pub(crate) fn event(&self, kind: Kind) {
        self.events.fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.lock();
        let state = kinds.entry(kind).or_default();
        state.events += 1;
        state.failing = false;
    }

    /// A list completed: whatever failed before has recovered.
    pub(crate) fn succeeded(&self, kind: Kind) {
        self.lock().entry(kind).or_default().failing = false;
    }

    pub(crate) fn error(&self, kind: Kind, reason: ErrorReason, message: String) {
        let mut kinds = self.lock();
        let state = kinds.entry(kind).or_default();
        *state.errors.entry(reason).or_default() += 1;
        state.failing = true;
        state.last_error_at = Some(tokio::time::Instant::now());
        state.last_error = Some(message);
    }

    pub(crate) fn set_synced(&self, kind: Kind, synced: bool) {
        self.lock().entry(kind).or_default().synced = synced;
    }

    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Kind, KindState>> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // that matters, so a poisoned lock is simply taken over.
        self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_kind_stops_failing_after_the_backoff_cap() {
        let health = SourceHealth::new();
        health.register(Kind::Pod);
        health.error(Kind::Pod, ErrorReason::Forbidden, "watch forbidden".into());
        assert!(health.summary().kinds["Pod"].failing);
        tokio::time::advance(std::time::Duration::from_secs(31)).await;
        assert!(health.summary().kinds["Pod"].failing, "within the backoff cap it still fails");
        tokio::time::advance(FAILING_FOR).await;
        let pod = &health.summary().kinds["Pod"];
        assert!(!pod.failing, "no error for longer than the backoff cap: the watch resumed");
        assert_eq!(pod.errors["forbidden"], 1, "the count stays");
    }
}
