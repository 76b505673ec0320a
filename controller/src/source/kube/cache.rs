//! The objects every watch currently sees, and how they become one [`Store`].
//!
//! Each object the API server sends (minus bookkeeping fields) goes through
//! [`decode::add_document`] once, when it arrives or changes, so the Kubernetes source reports
//! problems with the same codes and field paths as the file source; what is kept is that result
//! and a fingerprint of the JSON. A Store is built by replaying those results: an event decodes
//! one object, not every object in the cluster (about half a second at 10k services), and
//! unchanged objects keep their decoded specs, so translation reuses its work for them as it
//! does for unchanged files.

use crate::diagnostics::Origin;
use crate::schema::Kind;
use crate::source::cache::{replay, Decoded};
use crate::source::decode;
use crate::store::{ObjectKey, Store, StoreBuilder};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What one watch tells the cache.
#[derive(Debug)]
pub(super) enum Update {
    /// A complete list (initial or after a relist): replaces everything this watch saw.
    Listed {
        stream: usize,
        objects: Vec<(ObjectKey, Value)>,
    },
    Applied {
        stream: usize,
        key: ObjectKey,
        object: Value,
    },
    Deleted {
        stream: usize,
        key: ObjectKey,
    },
    /// The kind cannot be listed (403/404) before any list succeeded: counts as an empty list
    /// so the other kinds still publish. A later successful list replaces it.
    Unavailable {
        stream: usize,
    },
}

/// One watch: a kind, cluster-wide or in one namespace.
#[derive(Debug)]
pub(super) struct Stream {
    pub kind: Kind,
    /// The watch completed a list, or was declared unavailable before its first one.
    pub ready: bool,
    /// A list actually succeeded (for `SourceHealth::synced`).
    pub listed: bool,
    objects: BTreeMap<ObjectKey, Kept>,
}

/// What decoding an object produced, and a fingerprint of the JSON it came from to tell a
/// changed object from one sent again. The JSON itself is not kept: at 10k services its
/// `serde_json::Value`s took 275 MiB, the decoded objects 49 MiB.
#[derive(Debug)]
struct Kept {
    fingerprint: u64,
    decoded: Vec<Decoded>,
}

impl Kept {
    fn new(json: &Value, fingerprint: u64) -> Kept {
        let mut decoded = Vec::new();
        match serde_norway::to_value(json) {
            // No file and no document index: diagnostics print the origin as `<api>`.
            Ok(value) => decode::add_document(&mut decoded, value, &Origin::default()),
            // JSON always maps to YAML; this would be a serde_norway bug, so it is only logged.
            Err(e) => tracing::error!(error = %e, "cannot convert an API object to YAML"),
        }
        decoded = crate::memory::exact(decoded);
        Kept { fingerprint, decoded }
    }
}

/// A 64-bit hash of the object's JSON text. Objects arrive stripped of the fields that change
/// on every write (`resourceVersion`, `managedFields`), so equal content hashes equal; a
/// different key order would only cost an unneeded decode.
fn fingerprint(json: &Value) -> u64 {
    let text = serde_json::to_vec(json).unwrap_or_default();
    xxhash_rust::xxh64::xxh64(&text, 0)
}

#[derive(Debug, Default)]
pub(super) struct Cache {
    streams: Vec<Stream>,
}

impl Cache {
    pub(super) fn add_stream(&mut self, kind: Kind) -> usize {
        self.streams.push(Stream { kind, ready: false, listed: false, objects: BTreeMap::new() });
        self.streams.len() - 1
    }

    pub(super) fn all_ready(&self) -> bool {
        self.streams.iter().all(|s| s.ready)
    }

    /// True when every watch of `kind` has completed a list.
    pub(super) fn kind_synced(&self, kind: Kind) -> bool {
        self.streams.iter().filter(|s| s.kind == kind).all(|s| s.listed)
    }

    pub(super) fn kind_of(&self, stream: usize) -> Kind {
        self.streams[stream].kind
    }

    /// Applies one update; returns whether the visible contents (or readiness) changed, so an
    /// event that changes nothing (a relist with the same objects, a status heartbeat we
    /// stripped) does not cause a publication.
    pub(super) fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Listed { stream, objects } => {
                let s = &mut self.streams[stream];
                let mut changed = !s.ready || s.objects.len() != objects.len();
                let mut previous = std::mem::take(&mut s.objects);
                for (key, json) in objects {
                    // A relist mostly returns what the watch already had: keep those decoded.
                    let print = fingerprint(&json);
                    let kept = match previous.remove(&key) {
                        Some(kept) if kept.fingerprint == print => kept,
                        _ => {
                            changed = true;
                            Kept::new(&json, print)
                        }
                    };
                    s.objects.insert(key, kept);
                }
                s.ready = true;
                s.listed = true;
                changed
            }
            Update::Applied { stream, key, object } => {
                let s = &mut self.streams[stream];
                let print = fingerprint(&object);
                if s.objects.get(&key).is_some_and(|kept| kept.fingerprint == print) {
                    return false;
                }
                s.objects.insert(key, Kept::new(&object, print));
                true
            }
            Update::Deleted { stream, key } => self.streams[stream].objects.remove(&key).is_some(),
            Update::Unavailable { stream } => {
                let s = &mut self.streams[stream];
                let changed = !s.ready;
                s.ready = true;
                changed
            }
        }
    }

    /// One Store from everything the watches see. Secrets are kept only when a Gateway or
    /// DestinationRule names them by `credentialName` (or as its `<name>-cacert` companion), so
    /// unrelated credentials in the gateway namespace never reach translation or snapshots.
    pub(super) fn build(&self, gateway_namespace: &str) -> Store {
        let mut builder = StoreBuilder::default();
        for stream in self.streams.iter().filter(|s| s.kind != Kind::Secret) {
            for kept in stream.objects.values() {
                replay(&kept.decoded, None, &mut builder);
            }
        }
        // Secrets are few: inserted one by one into the built store.
        let mut store = builder.build();
        let wanted = credential_names(&store, gateway_namespace);
        for stream in self.streams.iter().filter(|s| s.kind == Kind::Secret) {
            for (key, kept) in &stream.objects {
                let name = &*key.name;
                let companion_of = name.strip_suffix("-cacert");
                let referenced = wanted.contains(name) || companion_of.is_some_and(|n| wanted.contains(n));
                if &*key.namespace == gateway_namespace && referenced {
                    replay(&kept.decoded, None, &mut store);
                }
            }
        }
        store
    }
}

/// Secret names (in the gateway namespace) that Gateways and DestinationRules reference.
/// `ns/name` references count only for the gateway namespace, the only one we watch Secrets in.
fn credential_names(store: &Store, gateway_namespace: &str) -> BTreeSet<String> {
    let mut names: Vec<&str> = Vec::new();
    for gw in store.gateways.values() {
        for tls in gw.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
            names.extend(tls.credential_name.as_deref());
            names.extend(tls.credential_names.iter().map(String::as_str));
        }
    }
    for dr in store.destination_rules.values() {
        let mut policies: Vec<&crate::schema::istio::TrafficPolicy> =
            dr.spec.traffic_policy.as_deref().into_iter().collect();
        policies.extend(dr.spec.subsets.iter().filter_map(|s| s.traffic_policy.as_deref()));
        for p in policies {
            names.extend(p.tls.as_ref().and_then(|t| t.credential_name.as_deref()));
            names.extend(p.port_level_settings.iter().filter_map(|x| x.tls.as_ref()?.credential_name.as_deref()));
        }
    }
    names
        .into_iter()
        .filter_map(|n| match n.split_once('/') {
            Some((ns, name)) => (ns == gateway_namespace).then_some(name),
            None => Some(n),
        })
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}
