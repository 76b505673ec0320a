//! Versioned publication of snapshots with "last known good" per resource.
//!
//! A resource that was valid and becomes invalid keeps serving in its last valid form (with a
//! warning); a file that cannot be read or parsed keeps all its previous resources. Only real
//! changes move the version and wake the gateway.

use crate::diagnostics::{Diagnostics, Level, ObjectRef};
use crate::snapshot::Snapshot;
use crate::store::Store;
use crate::translate::{translate_reusing, Options, Reuse};
use std::sync::Arc;
use tokio::sync::watch;

/// What one `apply` did, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub version: u64,
    pub changed: bool,
    pub diagnostics: Diagnostics,
    /// Resources left out (or kept at their last good version) because of errors, plus files
    /// that could not be read or parsed.
    pub rejected: usize,
}

pub struct Publisher {
    options: Options,
    tx: watch::Sender<Arc<Snapshot>>,
    version: u64,
    last_good: Option<Store>,
    /// The translation results of `last_good`, reused by the next translation.
    reuse: Reuse,
}

impl Publisher {
    /// The receiver starts at an empty version-0 snapshot, which means "nothing served yet".
    pub fn new(options: Options) -> (Publisher, watch::Receiver<Arc<Snapshot>>) {
        let (tx, rx) = watch::channel(Arc::new(Snapshot::default()));
        (Publisher { options, tx, version: 0, last_good: None, reuse: Reuse::default() }, rx)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Translates `store` (after restoring last good versions of rejected resources) and
    /// publishes the result if it differs from what is served.
    pub fn apply(&mut self, mut store: Store) -> Outcome {
        let mut notes = Vec::new();
        if let Some(prev) = &self.last_good {
            notes.extend(store.restore_unreadable_files(prev));
        }
        let previous = self.last_good.as_ref().map(|prev| (prev, &self.reuse));
        let (mut snapshot, mut diagnostics, mut reuse) = translate_reusing(&store, &self.options, previous);
        let rejected_refs = rejected(&diagnostics);
        if let Some(prev) = self.last_good.as_ref().filter(|_| !rejected_refs.is_empty()) {
            let restored = store.restore_resources(prev, &rejected_refs);
            if !restored.is_empty() {
                // Translate again with the restored versions, but keep the errors that
                // rejected the new versions: they are what the user has to fix.
                let first_errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
                let previous = self.last_good.as_ref().map(|prev| (prev, &self.reuse));
                let (s, mut d, r) = translate_reusing(&store, &self.options, previous);
                d.items.retain(|x| !first_errors.contains(x));
                d.extend(first_errors);
                snapshot = s;
                diagnostics = d;
                reuse = r;
                notes.extend(restored);
            }
        }
        diagnostics.extend(notes);
        // Rejected resources plus files that could not be read or parsed at all.
        let broken_files: std::collections::BTreeSet<_> = diagnostics
            .iter()
            .filter(|d| d.is_error() && d.resource.is_none())
            .filter_map(|d| d.origin.file.clone())
            .collect();
        let rejected = rejected(&diagnostics).len() + broken_files.len();
        // The previous store is freed after the new snapshot is sent: at 10k services freeing
        // it takes tens of milliseconds that the gateway need not wait for.
        let previous = self.last_good.replace(store);
        let previous_reuse = std::mem::replace(&mut self.reuse, reuse);

        let changed = self.version == 0 || !self.tx.borrow().same_content(&snapshot);
        if changed {
            self.version += 1;
            snapshot.version = self.version;
            let replaced = self.tx.send_replace(Arc::new(snapshot));
            drop(replaced);
        }
        drop((previous, previous_reuse));
        Outcome { version: self.version, changed, diagnostics, rejected }
    }
}

/// Every resource an error rejected.
fn rejected(diagnostics: &Diagnostics) -> Vec<ObjectRef> {
    let mut out: Vec<_> = diagnostics
        .iter()
        .filter(|d| d.level == Level::Error)
        // An unenforced policy is applied (as "deny everything"), not rejected: restoring an
        // earlier version of it (say, an AUDIT one) would open access again.
        .filter(|d| d.code != crate::diagnostics::codes::UNENFORCED)
        .filter_map(|d| d.resource.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::load_text;

    const GOOD: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /good}}]
    route: [{destination: {host: a.example.com}}]
"#;

    fn store(text: &str, file: &str) -> Store {
        let mut s = Store::default();
        load_text(&mut s, text, Some(std::path::Path::new(file)));
        s
    }

    #[test]
    fn versions_move_only_on_change() {
        let (mut p, rx) = Publisher::new(Options::default());
        assert_eq!(rx.borrow().version, 0);
        assert_eq!(p.apply(store(GOOD, "a.yaml")).version, 1);
        let again = p.apply(store(GOOD, "a.yaml"));
        assert!(!again.changed);
        assert_eq!(again.version, 1);
        assert_eq!(p.apply(store(&GOOD.replace("/good", "/better"), "a.yaml")).version, 2);
        assert_eq!(rx.borrow().version, 2);
    }

    #[test]
    fn rejected_resources_keep_their_last_good_version() {
        let (mut p, rx) = Publisher::new(Options::default());
        p.apply(store(GOOD, "a.yaml"));
        let bad = GOOD.replace("{prefix: /good}", "{regex: \"([\"}");
        let outcome = p.apply(store(&bad, "a.yaml"));
        assert_eq!(outcome.rejected, 1);
        assert!(outcome.diagnostics.iter().any(|d| d.is_error() && d.field.ends_with("uri.regex")));
        assert!(outcome.diagnostics.iter().any(|d| d.code == crate::diagnostics::codes::KEPT));
        assert!(!outcome.changed, "the served snapshot did not change");
        let snap = rx.borrow().clone();
        assert_eq!(snap.listeners[0].virtual_hosts[0].routes.len(), 1);
    }

    #[test]
    fn unparseable_files_keep_their_resources() {
        let (mut p, rx) = Publisher::new(Options::default());
        p.apply(store(GOOD, "a.yaml"));
        let outcome = p.apply(store("kind: [oops\n", "a.yaml"));
        assert_eq!(outcome.rejected, 1);
        assert_eq!(rx.borrow().listeners.len(), 1, "the Gateway from the broken file still serves");
        // Removing the file's content on purpose (an empty file) does remove the resources.
        let outcome = p.apply(store("", "a.yaml"));
        assert!(outcome.changed);
        assert!(rx.borrow().listeners.is_empty());
    }

    #[test]
    fn an_unenforced_policy_is_applied_not_rejected() {
        // An AUDIT policy (access unchanged) edited into an ALLOW list: restoring the AUDIT
        // version as "last good" would open the gateway.
        let policy = |action: &str| {
            format!(
                "{GOOD}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{app: istio-ingressgateway}}}}\n  action: {action}\n  rules: [{{from: [{{source: {{ipBlocks: [1.2.3.4]}}}}]}}]\n"
            )
        };
        let (mut p, rx) = Publisher::new(Options::default());
        p.apply(store(&policy("AUDIT"), "a.yaml"));
        assert!(rx.borrow().unenforced_policies.is_empty());
        let outcome = p.apply(store(&policy("ALLOW"), "a.yaml"));
        assert_eq!(outcome.rejected, 0);
        assert!(outcome.changed);
        assert_eq!(rx.borrow().unenforced_policies.len(), 1);
        assert!(!outcome.diagnostics.iter().any(|d| d.code == crate::diagnostics::codes::KEPT));
    }
}
