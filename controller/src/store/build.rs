//! Building a whole store at once, as a full reload does.
//!
//! [`Store::insert`] puts objects into the kinds' B-trees one at a time: in key order that
//! leaves every node about half full, and rebuilding the maps afterwards freed those nodes in
//! the middle of the heap, where their holes stayed (2 MiB of `gateway --config`'s RSS at 10k
//! services, docs/benchmarks.md "Eighth round"). The builder collects each kind's objects in a
//! vector instead (one large block, returned to the system whole when it is freed) and builds
//! every map once from sorted entries, with full nodes.

use super::{MetaKey, Objects, Resource, Store};
use crate::diagnostics::{Diagnostic, Origin};
use crate::schema::core::{PodSummary, ServiceSummary};
use crate::schema::istio::{DestinationRuleSpec, GatewaySpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec};
use crate::schema::security::PolicySpec;
use crate::schema::{Kind, ObjectMeta};
use crate::store::Object;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::hash::BuildHasher;
use std::sync::Arc;

/// One kind's objects in load order, with an index by key so that a second definition
/// replaces the first as [`Store::insert`] does.
struct Pending<T> {
    entries: Vec<(MetaKey, Resource<T>)>,
    /// Positions in `entries`, hashed by key.
    index: hashbrown::HashTable<u32>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending { entries: Vec::new(), index: hashbrown::HashTable::new() }
    }
}

/// Fixed seeds: the index lives for one build and its order is never observed.
fn hash(key: &MetaKey) -> u64 {
    foldhash::fast::FixedState::default().hash_one(key)
}

impl<T> Pending<T> {
    /// Adds `resource`; when the key was already defined, returns the replaced definition's
    /// origin with the one that replaced it.
    fn put(&mut self, key: MetaKey, resource: Resource<T>) -> Option<(Origin, &Resource<T>)> {
        let Pending { entries, index } = self;
        let at = hash(&key);
        if let Some(&i) = index.find(at, |&i| entries[i as usize].0 == key) {
            let slot = &mut entries[i as usize].1;
            let previous = std::mem::replace(slot, resource);
            return Some((previous.origin, slot));
        }
        let i = u32::try_from(entries.len()).expect("fewer than 4 billion objects of one kind");
        entries.push((key, resource));
        index.insert_unique(at, i, |&i| hash(&entries[i as usize].0));
        None
    }

    fn build(self) -> Objects<T> {
        drop(self.index);
        // `BTreeMap`'s `FromIterator` sorts the vector in place and builds full nodes from it.
        Arc::new(self.entries.into_iter().collect())
    }
}

/// A [`Store`] under construction: [`StoreBuilder::insert`] behaves as [`Store::insert`]
/// (same load order, replacements and duplicate warnings), [`StoreBuilder::build`] makes the
/// maps.
#[derive(Default)]
pub struct StoreBuilder {
    /// Diagnostics and load order go here as they come; the maps stay empty until `build`.
    store: Store,
    gateways: Pending<GatewaySpec>,
    virtual_services: Pending<VirtualServiceSpec>,
    destination_rules: Pending<DestinationRuleSpec>,
    service_entries: Pending<ServiceEntrySpec>,
    workload_entries: Pending<WorkloadEntrySpec>,
    services: Pending<ServiceSummary>,
    pods: Pending<PodSummary>,
    secrets: Pending<Secret>,
    endpoint_slices: Pending<EndpointSlice>,
    authorization_policies: Pending<PolicySpec>,
    request_authentications: Pending<PolicySpec>,
}

impl StoreBuilder {
    pub fn push_diagnostic(&mut self, diagnostic: Diagnostic) {
        self.store.diagnostics.push(diagnostic);
    }

    pub fn insert(&mut self, kind: Kind, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        let key = MetaKey::new(&meta);
        let seq = self.store.take_seq();
        macro_rules! put {
            ($pending:expr, $spec:expr) => {
                $pending
                    .put(key, Resource { meta, origin, seq, spec: $spec })
                    .map(|(previous, now)| (previous, now.origin.clone(), now.reference(kind)))
            };
        }
        let replaced = by_kind!(object, put, self);
        if let Some((previous, origin, reference)) = replaced {
            self.store.diagnostics.push(super::duplicate_warning(&previous, &origin, reference));
        }
    }

    pub fn build(self) -> Store {
        let mut store = self.store;
        store.gateways = self.gateways.build();
        store.virtual_services = self.virtual_services.build();
        store.destination_rules = self.destination_rules.build();
        store.service_entries = self.service_entries.build();
        store.workload_entries = self.workload_entries.build();
        store.services = self.services.build();
        store.pods = self.pods.build();
        store.secrets = self.secrets.build();
        store.endpoint_slices = self.endpoint_slices.build();
        store.authorization_policies = self.authorization_policies.build();
        store.request_authentications = self.request_authentications.build();
        store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::cache::{replay, Decoded};
    use crate::source::files;
    use crate::store::Key;

    #[test]
    fn building_equals_inserting_one_by_one() {
        let yaml = "\
apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 80}]}\n---
apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: b}\nspec: {hosts: [b]}\n---
apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\nspec: {ports: [{port: 80}]}\n---
apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: b}\nspec: {hosts: [c]}\n---
apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a]}\n";
        let mut decoded: Vec<Decoded> = Vec::new();
        let file: Arc<std::path::Path> = Arc::from(std::path::Path::new("x.yaml"));
        files::load_shared(&mut decoded, yaml, Some(file.clone()));
        let mut one_by_one = Store::default();
        replay(&decoded, Some(&file), &mut one_by_one);
        let mut builder = StoreBuilder::default();
        replay(&decoded, Some(&file), &mut builder);
        let built = builder.build();
        assert_eq!(built, one_by_one);
        // The second `b` replaced the first, with a warning at the second's place.
        assert_eq!(built.virtual_services.len(), 2);
        assert_eq!(built.diagnostics.warnings(), 1);
        let b = crate::store::lookup(&built.virtual_services, "default", "b").unwrap();
        assert_eq!(b.origin.document, Some(3));
        assert_eq!(built.virtual_services.keys().map(|k| k.name()).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn patching_new_metadata_replaces_the_key_too() {
        let pod = |labels: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {{{labels}}}}}\nstatus: {{podIP: 10.0.0.1}}\n"
            )
        };
        let file: Arc<std::path::Path> = Arc::from(std::path::Path::new("x.yaml"));
        let decode = |yaml: &str| {
            let mut decoded: Vec<Decoded> = Vec::new();
            files::load_shared(&mut decoded, yaml, Some(file.clone()));
            decoded
        };
        let mut builder = StoreBuilder::default();
        replay(&decode(&pod("app: a")), Some(&file), &mut builder);
        let mut store = builder.build();
        let edited = decode(&pod("app: b"));
        let Decoded::Object { meta, document, object } = &edited[0] else { panic!("a Pod") };
        store.update_in_place(meta, &Origin { file: Some(file.clone()), document: *document }, object);
        let (key, resource) = store.pods.iter().next().unwrap();
        assert_eq!(resource.meta.labels.get("app").map(|v| v.as_str()), Some("b"));
        // The key holds the new metadata, not the replaced one.
        assert!(Arc::ptr_eq(&key.0, &resource.meta));
        assert!(Arc::ptr_eq(&key.0, meta));
    }
}
