//! The runtime being served, swapped atomically: requests `load()` it, a snapshot swap
//! compiles the next one and stores it.

use super::Runtime;
use arc_swap::ArcSwap;
use meshgate_model::snapshot::Snapshot;
use std::sync::Arc;

/// The currently served runtime, swapped atomically.
pub(crate) struct Current {
    inner: ArcSwap<Runtime>,
    /// Whether unenforced security policies deny (`--unenforced-policy deny`).
    deny_unenforced: bool,
}

impl Current {
    /// Fails closed on unenforced security policies (see [`Current::with_unenforced_policy`]).
    pub(crate) fn new() -> Current {
        Current::with_unenforced_policy(true)
    }

    pub(crate) fn with_unenforced_policy(deny: bool) -> Current {
        Current { inner: ArcSwap::from_pointee(Runtime::empty()), deny_unenforced: deny }
    }

    pub(crate) fn load(&self) -> Arc<Runtime> {
        self.inner.load_full()
    }

    /// Compiles and publishes a snapshot; returns the new version.
    pub(crate) fn swap(&self, snapshot: Arc<Snapshot>) -> u64 {
        let previous = self.inner.load_full();
        let version = snapshot.version;
        let mut next = Runtime::compile(snapshot, Some(&previous));
        next.deny = self.denial(&next.snapshot);
        self.inner.store(Arc::new(next));
        version
    }

    /// The access log's reason when `snapshot` lists policies to fail closed on, logged at
    /// every reload either way (Envoy's RBAC filter names its policy the same way).
    fn denial(&self, snapshot: &Snapshot) -> Option<Box<str>> {
        let policies = &snapshot.unenforced_policies;
        if policies.is_empty() {
            return None;
        }
        let names: Vec<String> = policies.iter().map(|p| format!("{}/{}/{}", p.kind, p.namespace, p.name)).collect();
        if !self.deny_unenforced {
            tracing::error!(policies = ?names, "security policies select this gateway and are NOT enforced: requests are allowed (--unenforced-policy allow)");
            return None;
        }
        tracing::warn!(policies = ?names, "security policies select this gateway and meshgate cannot enforce them: every request is denied (403 RBAC: access denied)");
        let first = &policies[0];
        Some(format!("rbac_access_denied_unenforced_policy[ns[{}]-policy[{}]]", first.namespace, first.name).into())
    }
}

impl Default for Current {
    fn default() -> Self {
        Self::new()
    }
}
