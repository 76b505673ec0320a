//! Tables of entries looked up by a name each entry already holds (a service's host, a
//! cluster's name). A map keyed by a copy of the name cost a string and a key slot per entry,
//! tens of thousands at scale (docs/benchmarks.md, "Eighth round").

use std::hash::BuildHasher;
use std::sync::Arc;

/// The name an entry is found by.
pub trait Named {
    fn name(&self) -> &str;
}

impl<T: Named + ?Sized> Named for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
}

/// Entries by their [`Named::name`], one per name.
pub struct ByName<T>(hashbrown::HashTable<T>);

impl<T> Default for ByName<T> {
    fn default() -> Self {
        ByName(hashbrown::HashTable::new())
    }
}

impl<T> std::fmt::Debug for ByName<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ByName({} entries)", self.0.len())
    }
}

/// Fixed seeds: names come from the config, and the tables' order is never observed.
pub fn hash(name: &str) -> u64 {
    foldhash::fast::FixedState::default().hash_one(name)
}

impl<T: Named> ByName<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        ByName(hashbrown::HashTable::with_capacity(capacity))
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.find(hash(name), |e| e.name() == name)
    }

    /// Adds `entry`. One of the same name is replaced when `replace` says so, else kept.
    pub fn insert(&mut self, entry: T, replace: bool) {
        match self.0.entry(hash(entry.name()), |e| e.name() == entry.name(), |e| hash(e.name())) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                if replace {
                    *o.get_mut() = entry;
                }
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(&'static str, u32);
    impl Named for E {
        fn name(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn entries_are_found_by_their_own_name_and_replaced_only_when_asked() {
        let mut t = ByName::default();
        t.insert(E("a", 1), true);
        t.insert(E("b", 2), true);
        t.insert(E("a", 3), false);
        assert_eq!(t.get("a").map(|e| e.1), Some(1));
        t.insert(E("a", 4), true);
        assert_eq!(t.get("a").map(|e| e.1), Some(4));
        assert!(t.get("c").is_none());
        assert_eq!(t.len(), 2);
    }
}
