//! Typed resources by kind/namespace/name, as loaded from files or the Kubernetes API.
//!
//! The store is the only input of translation, so file mode and cluster mode share one
//! translation (and its tests).

use crate::diagnostics::{codes, Diagnostic, Diagnostics, ObjectRef, Origin};
use crate::schema::core::{PodSummary, ServiceSummary};
use crate::schema::istio::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};
use crate::schema::security::PolicySpec;
use crate::schema::ObjectMeta;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kind::{same_objects, Selector};
use std::collections::BTreeMap;
use std::sync::Arc;

mod build;
pub mod kind;
pub use build::StoreBuilder;
pub use kind::{Kind, KindSpec, Object};

pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace/name`. Boxed strings: a key per object, 50k at 10k services, and never grown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Box<str>,
    pub name: Box<str>,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey { namespace: namespace.into(), name: name.into() }
    }
}

/// A store map's key: the object's own metadata (the resource holds the same), ordered by
/// namespace, then name. A key of its own cost two strings and 24 bytes more per object, 2.8 MB
/// at 10k services.
#[derive(Debug, Clone)]
pub struct MetaKey(Arc<ObjectMeta>);

impl MetaKey {
    pub fn new(meta: &Arc<ObjectMeta>) -> MetaKey {
        MetaKey(Arc::clone(meta))
    }
}

/// What a store map is looked up by: a namespace and a name, held or borrowed
/// (`store.pods.get(&("ns", "name") as &dyn Key)`, or [`lookup`]).
pub trait Key {
    fn namespace(&self) -> &str;
    fn name(&self) -> &str;
}

impl Key for MetaKey {
    fn namespace(&self) -> &str {
        namespace_of(&self.0)
    }
    fn name(&self) -> &str {
        &self.0.name
    }
}

impl Key for (&str, &str) {
    fn namespace(&self) -> &str {
        self.0
    }
    fn name(&self) -> &str {
        self.1
    }
}

impl PartialEq for dyn Key + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && self.namespace() == other.namespace()
    }
}

impl Eq for dyn Key + '_ {}

impl PartialOrd for dyn Key + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn Key + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.namespace(), self.name()).cmp(&(other.namespace(), other.name()))
    }
}

impl<'a> std::borrow::Borrow<dyn Key + 'a> for MetaKey {
    fn borrow(&self) -> &(dyn Key + 'a) {
        self
    }
}

// The same order as the borrowed form's, as `Borrow` requires.
impl PartialEq for MetaKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Key) == (other as &dyn Key)
    }
}

impl Eq for MetaKey {}

impl PartialOrd for MetaKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MetaKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self as &dyn Key).cmp(other as &dyn Key)
    }
}

impl std::hash::Hash for MetaKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.namespace(), self.name()).hash(state);
    }
}

/// The resource `namespace/name` of one kind.
pub fn lookup<'m, T>(objects: &'m Objects<T>, namespace: &str, name: &str) -> Option<&'m Resource<T>> {
    objects.get(&(namespace, name) as &dyn Key)
}

/// The namespace a resource lands in: its own, or `default` when it names none.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_NAMESPACE)
}

/// One resource with where it came from. `seq` keeps load order so "first defined wins"
/// orderings (Istio orders by creation time) are stable in file mode too.
#[derive(Debug, PartialEq)]
pub struct Resource<T> {
    /// Shared with the file cache's decoded copy, like `spec`.
    pub meta: Arc<ObjectMeta>,
    pub origin: Origin,
    pub seq: u64,
    /// Shared: a reload rebuilds the store from cached decoded files (`source::cache`), and
    /// sharing the specs makes that a reference count instead of a deep copy.
    pub spec: Arc<T>,
}

// By hand: the derive would ask for `T: Clone`, and the spec is shared, not copied.
impl<T> Clone for Resource<T> {
    fn clone(&self) -> Self {
        Resource { meta: self.meta.clone(), origin: self.origin.clone(), seq: self.seq, spec: self.spec.clone() }
    }
}

impl<T> Resource<T> {
    /// Its namespace, `default` when the metadata names none (derived, not stored: a copy per
    /// object was 2 MB at 10k services).
    pub fn namespace(&self) -> &str {
        namespace_of(&self.meta)
    }

    pub fn reference(&self, kind: Kind) -> ObjectRef {
        ObjectRef::new(kind, self.namespace(), &self.meta.name)
    }

    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// Istio orders competing resources by creation time, then by name; files add load order.
    /// Borrowed, so sorting 10k resources does not allocate (compare with [`Self::order_cmp`]).
    pub fn order_key(&self) -> (&str, u64, &str, &str) {
        (
            self.meta.creation_timestamp.as_deref().map_or("", |t| t.as_str()),
            self.seq,
            self.namespace(),
            &self.meta.name,
        )
    }
}

/// Resources sorted by [`Resource::order_key`]. The keys are taken once into a vector:
/// comparing through the references cost a cache miss per comparison at 10k resources.
pub fn in_order<'a, T>(resources: impl IntoIterator<Item = &'a Resource<T>>) -> Vec<&'a Resource<T>> {
    let mut keyed: Vec<_> = resources.into_iter().map(|r| (r.order_key(), r)).collect();
    // Stable, so resources with equal keys keep the map's order as before.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, r)| r).collect()
}

/// One kind's resources. Shared: a reload that leaves a kind alone (most edits touch one
/// object) keeps the same map, so cloning a store is cheap and translation can tell unchanged
/// kinds apart by pointer ([`Store::same_registry_inputs`]).
pub type Objects<T> = Arc<BTreeMap<MetaKey, Resource<T>>>;

/// `PartialEq` lets tests prove that an incremental reload equals a fresh load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Store {
    pub gateways: Objects<GatewaySpec>,
    pub virtual_services: Objects<VirtualServiceSpec>,
    pub destination_rules: Objects<DestinationRuleSpec>,
    pub service_entries: Objects<ServiceEntrySpec>,
    pub workload_entries: Objects<WorkloadEntrySpec>,
    pub services: Objects<ServiceSummary>,
    pub pods: Objects<PodSummary>,
    pub secrets: Objects<Secret>,
    pub endpoint_slices: Objects<EndpointSlice>,
    pub authorization_policies: Objects<PolicySpec>,
    pub request_authentications: Objects<PolicySpec>,
    /// Contents of files that Gateways and DestinationRules name by path (certificates, keys,
    /// CAs), read by the source so translation stays pure. `Err` holds the read error.
    pub files: BTreeMap<std::path::PathBuf, Result<String, String>>,
    /// Messages produced while loading (parse and schema errors).
    pub diagnostics: Diagnostics,
    next_seq: u64,
}

/// The warning for a second definition of one kind/namespace/name in one load.
pub(crate) fn duplicate_warning(previous: &Origin, origin: &Origin, reference: ObjectRef) -> Diagnostic {
    Diagnostic::warning(
        codes::DUPLICATE,
        "metadata.name",
        format!("defined again; this definition replaces the one at {previous}"),
    )
    .at(origin, Some(reference))
}

impl Store {
    /// Inserts or replaces an object. A second definition of the same kind/namespace/name in
    /// one load replaces the first with a warning, as a later `kubectl apply` would.
    pub fn insert(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        let seq = self.take_seq();
        if let Some((previous, origin, reference)) = object.kind().ops().insert(self, meta, origin, seq, &object) {
            self.diagnostics.push(duplicate_warning(&previous, &origin, reference));
        }
    }

    /// The next number in load order.
    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Gives the resource defined at `origin` new metadata and spec, keeping its place in load
    /// order. A reload whose edits leave every object's identity and position alone patches
    /// the previous store this way instead of inserting 50k objects again
    /// (`source::cache`). Does nothing when a later definition replaced the one at `origin`,
    /// or when the resource already holds these very objects.
    pub fn update_in_place(&mut self, meta: &Arc<ObjectMeta>, origin: &Origin, object: &Object) {
        object.kind().ops().update_in_place(self, meta, origin, object)
    }

    /// Number of resources the store holds (for logs and metrics).
    pub fn len(&self) -> usize {
        Kind::ALL.iter().map(|k| k.ops().len(self)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every certificate/key/CA file path Gateway servers and DestinationRules reference.
    pub fn referenced_files(&self) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for gw in self.gateways.values() {
            for tls in gw.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
                out.extend(
                    [&tls.server_certificate, &tls.private_key, &tls.ca_certificates].into_iter().flatten().cloned(),
                );
            }
        }
        for dr in self.destination_rules.values() {
            let mut policies: Vec<&crate::schema::istio::TrafficPolicy> =
                dr.spec.traffic_policy.as_deref().into_iter().collect();
            policies.extend(dr.spec.subsets.iter().filter_map(|s| s.traffic_policy.as_deref()));
            for p in policies {
                let mut tls: Vec<_> = p.tls.iter().collect();
                tls.extend(p.port_level_settings.iter().filter_map(|x| x.tls.as_ref()));
                for t in tls {
                    out.extend(
                        [&t.client_certificate, &t.private_key, &t.ca_certificates].into_iter().flatten().cloned(),
                    );
                }
            }
        }
        let mut out: Vec<std::path::PathBuf> = out.into_iter().filter(|p| !p.is_empty()).map(Into::into).collect();
        out.sort();
        out.dedup();
        out
    }
}

impl Store {
    /// Whether everything but VirtualServices (and load diagnostics) is the same objects in
    /// the same order: same keys, sequence numbers and shared metadata and specs. Pointer
    /// comparison is sound because `other` keeps its objects alive while we compare.
    pub fn same_except_virtual_services(&self, other: &Store) -> bool {
        Kind::ALL.iter().filter(|&&k| k != Kind::VirtualService).all(|k| k.ops().same(self, other))
            && self.files == other.files
    }

    /// Whether the kinds the service registry is built from (Services, Pods, EndpointSlices,
    /// ServiceEntries, WorkloadEntries) are the same objects in the same order; then the
    /// registry of `other` is this store's registry too.
    pub fn same_registry_inputs(&self, other: &Store) -> bool {
        same_objects(&self.service_entries, &other.service_entries)
            && same_objects(&self.workload_entries, &other.workload_entries)
            && same_objects(&self.services, &other.services)
            && same_objects(&self.pods, &other.pods)
            && same_objects(&self.endpoint_slices, &other.endpoint_slices)
    }

    /// After a load in which some files could not be read or parsed, brings back every
    /// resource those files held in `prev`, so a half-saved file never empties the config.
    pub fn restore_unreadable_files(&mut self, prev: &Store) -> Vec<Diagnostic> {
        let broken: Vec<Arc<std::path::Path>> = self
            .diagnostics
            .iter()
            .filter(|d| d.is_error() && d.resource.is_none())
            .filter_map(|d| d.origin.file.clone())
            .collect();
        if broken.is_empty() {
            return Vec::new();
        }
        self.restore_where(prev, &|origin, _, _, _| origin.file.as_ref().is_some_and(|f| broken.contains(f)))
    }

    /// Puts back the previous version of each rejected resource.
    pub fn restore_resources(&mut self, prev: &Store, refs: &[ObjectRef]) -> Vec<Diagnostic> {
        self.restore_where(prev, &|_, kind, ns, name| {
            refs.iter().any(|r| r.kind == kind.as_str() && r.namespace == ns && r.name == name)
        })
    }

    fn restore_where(&mut self, prev: &Store, pred: &Selector) -> Vec<Diagnostic> {
        let mut notes = Vec::new();
        for kind in Kind::ALL {
            kind.ops().restore(self, prev, pred, &mut notes);
        }
        notes
    }
}
