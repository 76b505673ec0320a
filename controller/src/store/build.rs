//! Building a whole store at once, as a full reload does.
//!
//! [`Store::insert`] puts objects into the kinds' B-trees one at a time: in key order that
//! leaves every node about half full, and rebuilding the maps afterwards freed those nodes in
//! the middle of the heap, where their holes stayed (2 MiB of `gateway --config`'s RSS at 10k
//! services, docs/benchmarks.md "Eighth round"). The builder collects each kind's objects in a
//! vector instead (one large block, returned to the system whole when it is freed) and builds
//! every map once from sorted entries, with full nodes.

use super::kind::{Kind, KindSpec};
use super::{MetaKey, Objects, Resource, Store};
use crate::diagnostics::{Diagnostic, ObjectRef, Origin};
use crate::schema::ObjectMeta;
use crate::store::Object;
use std::hash::BuildHasher;
use std::sync::Arc;

/// One kind's objects in load order, with an index by key so that a second definition
/// replaces the first as [`Store::insert`] does.
pub(crate) struct Pending<K: KindSpec> {
    entries: Vec<(MetaKey, Resource<K::Spec>)>,
    /// Positions in `entries`, hashed by key.
    index: hashbrown::HashTable<u32>,
}

impl<K: KindSpec> Default for Pending<K> {
    fn default() -> Self {
        Pending { entries: Vec::new(), index: hashbrown::HashTable::new() }
    }
}

/// Fixed seeds: the index lives for one build and its order is never observed.
fn hash(key: &MetaKey) -> u64 {
    foldhash::fast::FixedState::default().hash_one(key)
}

impl<K: KindSpec> Pending<K> {
    /// Adds `resource`; when the key was already defined, returns the replaced definition's
    /// origin with the one that replaced it.
    fn put(&mut self, key: MetaKey, resource: Resource<K::Spec>) -> Option<(Origin, &Resource<K::Spec>)> {
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

    fn build(self) -> Objects<K::Spec> {
        drop(self.index);
        // `BTreeMap`'s `FromIterator` sorts the vector in place and builds full nodes from it.
        Arc::new(self.entries.into_iter().collect())
    }
}

/// A [`Pending`] of any kind, for the builder's one-per-kind list.
pub(crate) trait PendingObjects {
    /// Adds the object; when the key was already defined, returns the replaced definition's
    /// origin, the new one's and the object (for the duplicate warning).
    fn put(
        &mut self,
        meta: Arc<ObjectMeta>,
        origin: Origin,
        seq: u64,
        object: Object,
    ) -> Option<(Origin, Origin, ObjectRef)>;
    /// Moves the objects into their map in `store`.
    fn build_into(self: Box<Self>, store: &mut Store);
}

impl<K: KindSpec> PendingObjects for Pending<K> {
    fn put(
        &mut self,
        meta: Arc<ObjectMeta>,
        origin: Origin,
        seq: u64,
        object: Object,
    ) -> Option<(Origin, Origin, ObjectRef)> {
        let spec = K::spec_of(&object);
        let key = MetaKey::new(&meta);
        let resource = Resource { meta, origin, seq, spec: Arc::clone(spec) };
        self.put(key, resource).map(|(previous, now)| (previous, now.origin.clone(), now.reference(K::KIND)))
    }

    fn build_into(self: Box<Self>, store: &mut Store) {
        *K::objects_mut(store) = self.build();
    }
}

/// A [`Store`] under construction: [`StoreBuilder::insert`] behaves as [`Store::insert`]
/// (same load order, replacements and duplicate warnings), [`StoreBuilder::build`] makes the
/// maps.
pub struct StoreBuilder {
    /// Diagnostics and load order go here as they come; the maps stay empty until `build`.
    store: Store,
    /// One per kind, in [`Kind::ALL`]'s order.
    pending: Vec<Box<dyn PendingObjects>>,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder { store: Store::default(), pending: Kind::ALL.iter().map(|k| k.ops().pending()).collect() }
    }
}

impl StoreBuilder {
    pub fn push_diagnostic(&mut self, diagnostic: Diagnostic) {
        self.store.diagnostics.push(diagnostic);
    }

    pub fn insert(&mut self, meta: Arc<ObjectMeta>, origin: Origin, object: Object) {
        let seq = self.store.take_seq();
        // `Kind::ALL` lists the kinds in declaration order, so a kind's number is its place.
        if let Some((previous, origin, reference)) = self.pending[object.kind() as usize].put(meta, origin, seq, object)
        {
            self.store.diagnostics.push(super::duplicate_warning(&previous, &origin, reference));
        }
    }

    pub fn build(self) -> Store {
        let mut store = self.store;
        for pending in self.pending {
            pending.build_into(&mut store);
        }
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
