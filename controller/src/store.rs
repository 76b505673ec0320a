//! Typed resources by kind/namespace/name, as loaded from files or the Kubernetes API.
//!
//! The store is the only input of translation, so file mode and cluster mode share one
//! translation (and its tests).

use crate::diagnostics::{codes, Diagnostic, Diagnostics, ObjectRef, Origin};
use crate::schema::core::{PodSummary, ServiceSummary};
use crate::schema::istio::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};
use crate::schema::security::PolicySpec;
use crate::schema::{Kind, ObjectMeta};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Applies `$apply` (a local macro taking a per-kind field and a spec) to `$owner`'s field for
/// the object's kind: the one dispatch over kinds for the store and its builder, whose fields
/// have the same names.
macro_rules! by_kind {
    ($object:expr, $apply:ident, $owner:expr) => {
        match $object {
            Object::Gateway(s) => $apply!($owner.gateways, s),
            Object::VirtualService(s) => $apply!($owner.virtual_services, s),
            Object::DestinationRule(s) => $apply!($owner.destination_rules, s),
            Object::ServiceEntry(s) => $apply!($owner.service_entries, s),
            Object::WorkloadEntry(s) => $apply!($owner.workload_entries, s),
            Object::Service(s) => $apply!($owner.services, s),
            Object::Pod(s) => $apply!($owner.pods, s),
            Object::Secret(s) => $apply!($owner.secrets, s),
            Object::EndpointSlice(s) => $apply!($owner.endpoint_slices, s),
            Object::AuthorizationPolicy(s) => $apply!($owner.authorization_policies, s),
            Object::RequestAuthentication(s) => $apply!($owner.request_authentications, s),
        }
    };
}

mod build;
pub use build::StoreBuilder;

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

/// A typed object ready to be inserted (short-lived; size differences do not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Object {
    Gateway(Arc<GatewaySpec>),
    VirtualService(Arc<VirtualServiceSpec>),
    DestinationRule(Arc<DestinationRuleSpec>),
    ServiceEntry(Arc<ServiceEntrySpec>),
    WorkloadEntry(Arc<WorkloadEntrySpec>),
    Service(Arc<ServiceSummary>),
    Pod(Arc<PodSummary>),
    Secret(Arc<Secret>),
    EndpointSlice(Arc<EndpointSlice>),
    AuthorizationPolicy(Arc<PolicySpec>),
    RequestAuthentication(Arc<PolicySpec>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Gateway(_) => Kind::Gateway,
            Object::VirtualService(_) => Kind::VirtualService,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::ServiceEntry(_) => Kind::ServiceEntry,
            Object::WorkloadEntry(_) => Kind::WorkloadEntry,
            Object::Service(_) => Kind::Service,
            Object::Pod(_) => Kind::Pod,
            Object::Secret(_) => Kind::Secret,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }

    /// Whether both hold equal content (deep comparison).
    pub fn same_content(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Gateway(a), Object::Gateway(b)) => a == b,
            (Object::VirtualService(a), Object::VirtualService(b)) => a == b,
            (Object::DestinationRule(a), Object::DestinationRule(b)) => a == b,
            (Object::ServiceEntry(a), Object::ServiceEntry(b)) => a == b,
            (Object::WorkloadEntry(a), Object::WorkloadEntry(b)) => a == b,
            (Object::Service(a), Object::Service(b)) => a == b,
            (Object::Pod(a), Object::Pod(b)) => a == b,
            (Object::Secret(a), Object::Secret(b)) => a == b,
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => a == b,
            (Object::AuthorizationPolicy(a), Object::AuthorizationPolicy(b)) => a == b,
            (Object::RequestAuthentication(a), Object::RequestAuthentication(b)) => a == b,
            _ => false,
        }
    }
}

/// The warning for a second definition of one kind/namespace/name in one load.
fn duplicate_warning(previous: &Origin, origin: &Origin, reference: ObjectRef) -> Diagnostic {
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
    pub fn insert(&mut self, kind: Kind, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        let key = MetaKey::new(&meta);
        let seq = self.take_seq();
        // A reload inserts every object again (50k at 10k services): the origin moves into
        // the map and is copied back only for the rare duplicate warning.
        macro_rules! put {
            ($map:expr, $spec:expr) => {{
                let resource = Resource { meta, origin, seq, spec: $spec };
                match Arc::make_mut(&mut $map).entry(key) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(resource);
                        None
                    }
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        let previous = std::mem::replace(o.get_mut(), resource);
                        let now = o.get();
                        Some((previous.origin, now.origin.clone(), now.reference(kind)))
                    }
                }
            }};
        }
        let replaced = by_kind!(object, put, self);
        if let Some((previous, origin, reference)) = replaced {
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
        let key = (namespace_of(meta), meta.name.as_str());
        let key = &key as &dyn Key;
        macro_rules! update {
            ($map:expr, $spec:expr) => {{
                let stale = $map.get(key).is_some_and(|r| {
                    r.origin == *origin && !(Arc::ptr_eq(&r.meta, meta) && Arc::ptr_eq(&r.spec, $spec))
                });
                if stale {
                    // Copies the kind's map when the previous store still shares it.
                    let map = Arc::make_mut(&mut $map);
                    if let Some(r) = map.get_mut(key) {
                        r.spec = Arc::clone($spec);
                        if !Arc::ptr_eq(&r.meta, meta) {
                            // The key is the metadata too: replaced with it, not left holding
                            // the old one (same namespace and name, so the same place).
                            let (_, mut r) = map.remove_entry(key).expect("just found");
                            r.meta = Arc::clone(meta);
                            map.insert(MetaKey::new(meta), r);
                        }
                    }
                }
            }};
        }
        by_kind!(object, update, self)
    }

    /// Number of resources the store holds (for logs and metrics).
    pub fn len(&self) -> usize {
        self.gateways.len()
            + self.virtual_services.len()
            + self.destination_rules.len()
            + self.service_entries.len()
            + self.workload_entries.len()
            + self.services.len()
            + self.pods.len()
            + self.secrets.len()
            + self.endpoint_slices.len()
            + self.authorization_policies.len()
            + self.request_authentications.len()
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
        same_objects(&self.gateways, &other.gateways)
            && same_objects(&self.destination_rules, &other.destination_rules)
            && self.same_registry_inputs(other)
            && same_objects(&self.secrets, &other.secrets)
            && same_objects(&self.authorization_policies, &other.authorization_policies)
            && same_objects(&self.request_authentications, &other.request_authentications)
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
        restore_map(&mut self.gateways, &prev.gateways, Kind::Gateway, pred, &mut notes);
        restore_map(&mut self.virtual_services, &prev.virtual_services, Kind::VirtualService, pred, &mut notes);
        restore_map(&mut self.destination_rules, &prev.destination_rules, Kind::DestinationRule, pred, &mut notes);
        restore_map(&mut self.service_entries, &prev.service_entries, Kind::ServiceEntry, pred, &mut notes);
        restore_map(&mut self.workload_entries, &prev.workload_entries, Kind::WorkloadEntry, pred, &mut notes);
        restore_map(&mut self.services, &prev.services, Kind::Service, pred, &mut notes);
        restore_map(&mut self.pods, &prev.pods, Kind::Pod, pred, &mut notes);
        restore_map(&mut self.secrets, &prev.secrets, Kind::Secret, pred, &mut notes);
        restore_map(&mut self.endpoint_slices, &prev.endpoint_slices, Kind::EndpointSlice, pred, &mut notes);
        restore_map(
            &mut self.authorization_policies,
            &prev.authorization_policies,
            Kind::AuthorizationPolicy,
            pred,
            &mut notes,
        );
        restore_map(
            &mut self.request_authentications,
            &prev.request_authentications,
            Kind::RequestAuthentication,
            pred,
            &mut notes,
        );
        notes
    }
}

/// Same keys, sequence numbers and shared metadata and specs, in the same order.
fn same_objects<T>(a: &Objects<T>, b: &Objects<T>) -> bool {
    Arc::ptr_eq(a, b)
        || a.len() == b.len()
            && a.iter().zip(b.iter()).all(|((ka, a), (kb, b))| {
                ka == kb && a.seq == b.seq && Arc::ptr_eq(&a.meta, &b.meta) && Arc::ptr_eq(&a.spec, &b.spec)
            })
}

/// Which previous resources to bring back: (origin, kind, namespace, name).
type Selector<'a> = dyn Fn(&Origin, Kind, &str, &str) -> bool + 'a;

fn restore_map<T: PartialEq>(
    map: &mut Objects<T>,
    old: &Objects<T>,
    kind: Kind,
    pred: &Selector,
    notes: &mut Vec<Diagnostic>,
) {
    for (key, r) in old.iter() {
        if !pred(&r.origin, kind, r.namespace(), &r.meta.name) {
            continue;
        }
        let same = map.get(key).is_some_and(|cur| cur.spec == r.spec && cur.meta == r.meta);
        if same {
            continue;
        }
        let origin = map.get(key).map(|c| c.origin.clone()).unwrap_or_else(|| r.origin.clone());
        Arc::make_mut(map).insert(key.clone(), r.clone());
        notes.push(
            Diagnostic::warning(codes::KEPT, "", "rejected; the last valid version keeps serving until this is fixed")
                .at(&origin, Some(ObjectRef::new(kind, r.namespace(), &r.meta.name))),
        );
    }
}
