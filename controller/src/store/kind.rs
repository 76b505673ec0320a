//! Every kind the controller reads, described once.
//!
//! A kind is a marker type implementing [`KindSpec`]: its name, where the API serves it, the
//! type its objects decode into and the [`Store`] field holding them. The store, its builder,
//! decoding, restoring the last good version and the Kubernetes watches are written once over
//! that trait ([`KindOps`], implemented for every `KindSpec` by [`Ops`]), the way kube-rs's
//! `Store<K>` is written over `Resource`.
//!
//! Adding a kind: a marker type with its `impl KindSpec`, a [`Store`] field, one line in the
//! `kinds!` list below, and its translation.

use super::{namespace_of, Key, MetaKey, Objects, Resource, Store};
use crate::diagnostics::{codes, Diagnostic, ObjectRef, Origin};
use crate::schema::core::{PodSummary, ServiceSummary};
use crate::schema::istio::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};
use crate::schema::security::PolicySpec;
use crate::schema::ObjectMeta;
use crate::source::decode::{spec, whole, Problems};
use std::sync::Arc;

/// Which namespaces the Kubernetes source watches a kind in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every watched namespace (all of them when none are listed).
    Watched,
    /// The gateway's namespace and Istio's root namespace, whatever else is watched: the only
    /// places whose policies can select the gateway (`translate::policies`).
    GatewayAndRoot,
    /// The gateway's namespace only: Secrets hold private keys, and Istio reads
    /// `credentialName` only there.
    Gateway,
}

/// Where the API serves a kind.
#[derive(Debug, Clone, Copy)]
pub struct Api {
    /// API group, empty for the core group.
    pub group: &'static str,
    /// Lower-case plural, as in the resource's URL.
    pub plural: &'static str,
    /// Versions accepted in `apiVersion` of files. Istio serves the same objects in each of
    /// its versions, and users paste YAML from every era.
    pub versions: &'static [&'static str],
    /// Whether the watch follows the configured Istio version (with its fallback, see
    /// `source::kube`) rather than the first of `versions`; true for Istio's own kinds.
    pub istio: bool,
    pub scope: Scope,
}

const NETWORKING: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const SECURITY: &[&str] = &["v1beta1", "v1"];
const V1: &[&str] = &["v1"];

/// One kind: what it is called, where it comes from, what its objects are and where the
/// store keeps them.
pub trait KindSpec: 'static {
    const KIND: Kind;
    const API: Api;
    /// What the store keeps of an object (the spec of Istio kinds, a summary or the whole
    /// object of Kubernetes ones).
    type Spec: PartialEq + std::fmt::Debug + Send + Sync + 'static;

    /// Decodes a document (its top-level mapping), pushing problems with field paths under
    /// `prefix`. `None` rejects the object.
    fn decode(document: serde_norway::Mapping, prefix: &str, problems: &mut Problems) -> Option<Self::Spec>;

    fn objects(store: &Store) -> &Objects<Self::Spec>;
    fn objects_mut(store: &mut Store) -> &mut Objects<Self::Spec>;

    /// The object as the store's decoded form, and back (the variant of [`Object`]).
    fn wrap(spec: Arc<Self::Spec>) -> Object;
    fn unwrap(object: &Object) -> Option<&Arc<Self::Spec>>;

    /// The spec of an object known to be of this kind (the store dispatched on its kind).
    fn spec_of(object: &Object) -> &Arc<Self::Spec> {
        Self::unwrap(object).unwrap_or_else(|| panic!("a {} object given as {}", object.kind(), Self::KIND))
    }
}

/// Generates [`Kind`], [`Object`] and the dispatch from a kind to its [`KindOps`] from one list.
macro_rules! kinds {
    ($($kind:ident),+ $(,)?) => {
        /// Kinds the controller understands. Everything else is skipped with a debug log.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        pub enum Kind {
            $($kind,)+
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)+];

            /// The operations of this kind's store, decoding and watches.
            pub(crate) fn ops(self) -> &'static dyn KindOps {
                match self {
                    $(Kind::$kind => &Ops::<kinds::$kind>::NEW,)+
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$kind => stringify!($kind),)+
                }
            }
        }

        /// A decoded object ready to be inserted, of any kind (shared, so a file's decoded
        /// copy and the store hold one spec).
        #[derive(Debug, Clone)]
        pub enum Object {
            $($kind(Arc<<kinds::$kind as KindSpec>::Spec>),)+
        }

        impl Object {
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$kind(_) => Kind::$kind,)+
                }
            }
        }

        $(
            impl kinds::$kind {
                fn wrap_spec(spec: Arc<<Self as KindSpec>::Spec>) -> Object {
                    Object::$kind(spec)
                }
                fn unwrap_spec(object: &Object) -> Option<&Arc<<Self as KindSpec>::Spec>> {
                    match object {
                        Object::$kind(spec) => Some(spec),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )+
    };
}

kinds! {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Service,
    Pod,
    Secret,
    EndpointSlice,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    /// Maps `apiVersion` + `kind` to a known kind.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Kind::ALL.iter().copied().find(|k| {
            let api = k.api();
            k.as_str() == kind && api.group == group && api.versions.contains(&version)
        })
    }

    pub fn api(self) -> &'static Api {
        self.ops().api()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Object {
    /// Whether both hold equal content (deep comparison).
    pub fn same_content(&self, other: &Object) -> bool {
        self.kind() == other.kind() && self.kind().ops().same_content(self, other)
    }
}

/// The marker types, one per kind.
pub mod kinds {
    use super::*;

    /// Implements [`KindSpec`] for a marker: `decode` is `spec` (Istio kinds: the `spec`
    /// mapping) or `whole::<T>` (Kubernetes kinds: the whole object as k8s-openapi's `T`,
    /// converted into the stored form).
    macro_rules! kind {
        ($kind:ident, $spec:ty, $field:ident, $api:expr, spec) => {
            kind!(@impl $kind, $spec, $field, $api, |document, prefix, problems| spec(document, prefix, problems));
        };
        ($kind:ident, $spec:ty, $field:ident, $api:expr, whole $whole:ty) => {
            kind!(@impl $kind, $spec, $field, $api, |document, prefix, problems| {
                whole::<$whole>(document, prefix, problems).map(Into::into)
            });
        };
        (@impl $kind:ident, $spec:ty, $field:ident, $api:expr, |$d:ident, $p:ident, $pr:ident| $decode:expr) => {
            pub struct $kind;

            impl KindSpec for $kind {
                const KIND: Kind = Kind::$kind;
                const API: Api = $api;
                type Spec = $spec;

                fn decode($d: serde_norway::Mapping, $p: &str, $pr: &mut Problems) -> Option<$spec> {
                    $decode
                }
                fn objects(store: &Store) -> &Objects<$spec> {
                    &store.$field
                }
                fn objects_mut(store: &mut Store) -> &mut Objects<$spec> {
                    &mut store.$field
                }
                fn wrap(spec: Arc<$spec>) -> Object {
                    Self::wrap_spec(spec)
                }
                fn unwrap(object: &Object) -> Option<&Arc<$spec>> {
                    Self::unwrap_spec(object)
                }
            }
        };
    }

    const fn istio(group: &'static str, plural: &'static str, versions: &'static [&'static str], scope: Scope) -> Api {
        Api { group, plural, versions, istio: true, scope }
    }

    const fn core(group: &'static str, plural: &'static str, scope: Scope) -> Api {
        Api { group, plural, versions: V1, istio: false, scope }
    }

    const NET: &str = "networking.istio.io";
    const SEC: &str = "security.istio.io";

    use k8s_openapi::api::core::v1 as core_v1;
    use k8s_openapi::api::discovery::v1 as discovery_v1;

    // (marker, stored type, store field, where the API serves it, how it decodes)
    kind!(Gateway, GatewaySpec, gateways, istio(NET, "gateways", NETWORKING, Scope::Watched), spec);
    kind!(
        VirtualService,
        VirtualServiceSpec,
        virtual_services,
        istio(NET, "virtualservices", NETWORKING, Scope::Watched),
        spec
    );
    kind!(
        DestinationRule,
        DestinationRuleSpec,
        destination_rules,
        istio(NET, "destinationrules", NETWORKING, Scope::Watched),
        spec
    );
    kind!(
        ServiceEntry,
        ServiceEntrySpec,
        service_entries,
        istio(NET, "serviceentries", NETWORKING, Scope::Watched),
        spec
    );
    kind!(
        WorkloadEntry,
        WorkloadEntrySpec,
        workload_entries,
        istio(NET, "workloadentries", NETWORKING, Scope::Watched),
        spec
    );
    kind!(Service, ServiceSummary, services, core("", "services", Scope::Watched), whole core_v1::Service);
    kind!(Pod, PodSummary, pods, core("", "pods", Scope::Watched), whole core_v1::Pod);
    kind!(Secret, core_v1::Secret, secrets, core("", "secrets", Scope::Gateway), whole core_v1::Secret);
    kind!(
        EndpointSlice,
        discovery_v1::EndpointSlice,
        endpoint_slices,
        core("discovery.k8s.io", "endpointslices", Scope::Watched),
        whole discovery_v1::EndpointSlice
    );
    kind!(
        AuthorizationPolicy,
        PolicySpec,
        authorization_policies,
        istio(SEC, "authorizationpolicies", SECURITY, Scope::GatewayAndRoot),
        spec
    );
    kind!(
        RequestAuthentication,
        PolicySpec,
        request_authentications,
        istio(SEC, "requestauthentications", SECURITY, Scope::GatewayAndRoot),
        spec
    );
}

/// Which previous resources to bring back: (origin, kind, namespace, name).
pub(crate) type Selector<'a> = dyn Fn(&Origin, Kind, &str, &str) -> bool + 'a;

/// The store operations of one kind, written once for every [`KindSpec`] by [`Ops`].
pub(crate) trait KindOps: Sync {
    fn api(&self) -> &'static Api;
    fn decode(&self, document: serde_norway::Mapping, prefix: &str, problems: &mut Problems) -> Option<Object>;
    fn same_content(&self, a: &Object, b: &Object) -> bool;
    fn len(&self, store: &Store) -> usize;
    /// Inserts; when the key was defined already, returns the replaced definition's origin,
    /// the new one's and the object (for the duplicate warning).
    fn insert(
        &self,
        store: &mut Store,
        meta: Arc<ObjectMeta>,
        origin: Origin,
        seq: u64,
        object: &Object,
    ) -> Option<(Origin, Origin, ObjectRef)>;
    fn update_in_place(&self, store: &mut Store, meta: &Arc<ObjectMeta>, origin: &Origin, object: &Object);
    /// Whether both stores hold the same objects of this kind (see [`same_objects`]).
    fn same(&self, a: &Store, b: &Store) -> bool;
    fn restore(&self, store: &mut Store, prev: &Store, pred: &Selector, notes: &mut Vec<Diagnostic>);
    fn pending(&self) -> Box<dyn super::build::PendingObjects>;
}

/// [`KindOps`] of the kind `K` (`fn() -> K`: `Sync` whatever `K` is).
pub(crate) struct Ops<K>(std::marker::PhantomData<fn() -> K>);

impl<K: KindSpec> Ops<K> {
    const NEW: Self = Ops(std::marker::PhantomData);
}

impl<K: KindSpec> KindOps for Ops<K> {
    fn api(&self) -> &'static Api {
        &K::API
    }

    fn decode(&self, document: serde_norway::Mapping, prefix: &str, problems: &mut Problems) -> Option<Object> {
        K::decode(document, prefix, problems).map(|spec| K::wrap(Arc::new(spec)))
    }

    fn same_content(&self, a: &Object, b: &Object) -> bool {
        K::spec_of(a) == K::spec_of(b)
    }

    fn len(&self, store: &Store) -> usize {
        K::objects(store).len()
    }

    fn insert(
        &self,
        store: &mut Store,
        meta: Arc<ObjectMeta>,
        origin: Origin,
        seq: u64,
        object: &Object,
    ) -> Option<(Origin, Origin, ObjectRef)> {
        let key = MetaKey::new(&meta);
        let resource = Resource { meta, origin, seq, spec: Arc::clone(K::spec_of(object)) };
        match Arc::make_mut(K::objects_mut(store)).entry(key) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(resource);
                None
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                // A reload inserts every object again (50k at 10k services): the origin moves
                // into the map and is copied back only for this rare warning.
                let previous = std::mem::replace(o.get_mut(), resource);
                Some((previous.origin, o.get().origin.clone(), o.get().reference(K::KIND)))
            }
        }
    }

    fn update_in_place(&self, store: &mut Store, meta: &Arc<ObjectMeta>, origin: &Origin, object: &Object) {
        let spec = K::spec_of(object);
        let key = (namespace_of(meta), meta.name.as_str());
        let key = &key as &dyn Key;
        let map = K::objects_mut(store);
        let stale = map
            .get(key)
            .is_some_and(|r| r.origin == *origin && !(Arc::ptr_eq(&r.meta, meta) && Arc::ptr_eq(&r.spec, spec)));
        if !stale {
            return;
        }
        // Copies the kind's map when the previous store still shares it.
        let map = Arc::make_mut(map);
        if let Some(r) = map.get_mut(key) {
            r.spec = Arc::clone(spec);
            if !Arc::ptr_eq(&r.meta, meta) {
                // The key is the metadata too: replaced with it, not left holding the old one
                // (same namespace and name, so the same place).
                let (_, mut r) = map.remove_entry(key).expect("just found");
                r.meta = Arc::clone(meta);
                map.insert(MetaKey::new(meta), r);
            }
        }
    }

    fn same(&self, a: &Store, b: &Store) -> bool {
        same_objects(K::objects(a), K::objects(b))
    }

    fn restore(&self, store: &mut Store, prev: &Store, pred: &Selector, notes: &mut Vec<Diagnostic>) {
        let map = K::objects_mut(store);
        for (key, r) in K::objects(prev).iter() {
            if !pred(&r.origin, K::KIND, r.namespace(), &r.meta.name) {
                continue;
            }
            let same = map.get(key).is_some_and(|cur| cur.spec == r.spec && cur.meta == r.meta);
            if same {
                continue;
            }
            let origin = map.get(key).map(|c| c.origin.clone()).unwrap_or_else(|| r.origin.clone());
            Arc::make_mut(map).insert(key.clone(), r.clone());
            notes.push(
                Diagnostic::warning(
                    codes::KEPT,
                    "",
                    "rejected; the last valid version keeps serving until this is fixed",
                )
                .at(&origin, Some(r.reference(K::KIND))),
            );
        }
    }

    fn pending(&self) -> Box<dyn super::build::PendingObjects> {
        Box::new(super::build::Pending::<K>::default())
    }
}

/// Same keys, sequence numbers and shared metadata and specs, in the same order. Pointer
/// comparison is sound because both stores keep their objects alive while we compare.
pub(crate) fn same_objects<T>(a: &Objects<T>, b: &Objects<T>) -> bool {
    Arc::ptr_eq(a, b)
        || a.len() == b.len()
            && a.iter().zip(b.iter()).all(|((ka, a), (kb, b))| {
                ka == kb && a.seq == b.seq && Arc::ptr_eq(&a.meta, &b.meta) && Arc::ptr_eq(&a.spec, &b.spec)
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_all_istio_versions_and_core_kinds() {
        for v in ["v1alpha3", "v1beta1", "v1"] {
            let api = format!("networking.istio.io/{v}");
            assert_eq!(Kind::from_type(&api, "Gateway"), Some(Kind::Gateway));
        }
        assert_eq!(Kind::from_type("networking.istio.io/v2", "Gateway"), None);
        assert_eq!(Kind::from_type("v1", "Service"), Some(Kind::Service));
        assert_eq!(Kind::from_type("discovery.k8s.io/v1", "EndpointSlice"), Some(Kind::EndpointSlice));
        assert_eq!(Kind::from_type("security.istio.io/v1", "AuthorizationPolicy"), Some(Kind::AuthorizationPolicy));
        assert_eq!(
            Kind::from_type("security.istio.io/v1beta1", "RequestAuthentication"),
            Some(Kind::RequestAuthentication)
        );
        assert_eq!(Kind::from_type("security.istio.io/v1alpha3", "AuthorizationPolicy"), None);
        assert_eq!(Kind::from_type("apps/v1", "Deployment"), None);
        assert_eq!(Kind::from_type("v1", "Namespace"), None);
        // The core group has no group part; a group-qualified Service is someone else's.
        assert_eq!(Kind::from_type("example.com/v1", "Service"), None);
    }

    #[test]
    fn every_kind_names_its_own_store_and_object() {
        // The builder indexes its per-kind lists by `kind as usize`.
        for (i, &kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
        let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), Kind::ALL.len());
        for &kind in Kind::ALL {
            assert!(!kind.api().plural.is_empty(), "{kind}");
            assert_eq!(Kind::from_type(&version_of(kind), kind.as_str()), Some(kind));
        }
    }

    fn version_of(kind: Kind) -> String {
        let api = kind.api();
        let version = api.versions.last().unwrap();
        if api.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", api.group)
        }
    }
}
