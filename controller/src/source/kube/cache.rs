//! The objects every watch currently sees, and how they become one [`Store`].
//!
//! Objects are kept as JSON exactly as the API server sent them (minus bookkeeping fields), and
//! go through [`decode::add_document`] when a Store is built, so the Kubernetes source reports
//! problems with the same codes and field paths as the file source.

use crate::api::Kind;
use crate::diagnostics::Origin;
use crate::source::decode;
use crate::store::{ObjectKey, Store};
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
    objects: BTreeMap<ObjectKey, Value>,
}

#[derive(Debug, Default)]
pub(super) struct Cache {
    streams: Vec<Stream>,
}

impl Cache {
    pub fn add_stream(&mut self, kind: Kind) -> usize {
        self.streams.push(Stream { kind, ready: false, listed: false, objects: BTreeMap::new() });
        self.streams.len() - 1
    }

    pub fn all_ready(&self) -> bool {
        self.streams.iter().all(|s| s.ready)
    }

    /// True when every watch of `kind` has completed a list.
    pub fn kind_synced(&self, kind: Kind) -> bool {
        self.streams.iter().filter(|s| s.kind == kind).all(|s| s.listed)
    }

    pub fn kind_of(&self, stream: usize) -> Kind {
        self.streams[stream].kind
    }

    /// Applies one update; returns whether the visible contents (or readiness) changed, so an
    /// event that changes nothing (a relist with the same objects, a status heartbeat we
    /// stripped) does not cause a publication.
    pub fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Listed { stream, objects } => {
                let s = &mut self.streams[stream];
                let objects: BTreeMap<ObjectKey, Value> = objects.into_iter().collect();
                let changed = !s.ready || s.objects != objects;
                s.objects = objects;
                s.ready = true;
                s.listed = true;
                changed
            }
            Update::Applied { stream, key, object } => {
                let s = &mut self.streams[stream];
                s.objects.insert(key, object.clone()).as_ref() != Some(&object)
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
    pub fn build(&self, gateway_namespace: &str) -> Store {
        let mut store = Store::default();
        // No file and no document index: diagnostics print the origin as `<api>`.
        let origin = Origin::default();
        for stream in self.streams.iter().filter(|s| s.kind != Kind::Secret) {
            for object in stream.objects.values() {
                add(&mut store, object, &origin);
            }
        }
        let wanted = credential_names(&store, gateway_namespace);
        for stream in self.streams.iter().filter(|s| s.kind == Kind::Secret) {
            for (key, object) in &stream.objects {
                let name = key.name.as_str();
                let companion_of = name.strip_suffix("-cacert");
                let referenced = wanted.contains(name) || companion_of.is_some_and(|n| wanted.contains(n));
                if key.namespace == gateway_namespace && referenced {
                    add(&mut store, object, &origin);
                }
            }
        }
        store.compact();
        store
    }
}

fn add(store: &mut Store, object: &Value, origin: &Origin) {
    match serde_yaml::to_value(object) {
        Ok(value) => decode::add_document(store, value, origin),
        // JSON always maps to YAML; this would be a serde_yaml bug, so it is only logged.
        Err(e) => tracing::error!(error = %e, "cannot convert an API object to YAML"),
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
        let mut policies: Vec<&crate::api::istio::TrafficPolicy> =
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
