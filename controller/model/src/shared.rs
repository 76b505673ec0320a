//! [`Shared`]: a part of the config handed from one snapshot version to the next.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// A value shared between snapshot versions (and with the gateway's compiled form of it).
///
/// Translation hands out the same allocation for a part whose inputs did not change (a route
/// of an unchanged VirtualService, the cluster of an unchanged service), so most of a new
/// snapshot is the previous one's parts. Two questions are asked of them, and this type
/// answers each in one place:
///
/// - **Equal?** (`==`): the same allocation, or equal content (`ptr_eq || eq`). For unchanged
///   parts the pointer answers at once; a part rebuilt with the same content still compares
///   equal. Used to publish only real changes and to build deltas.
/// - **The same object?** ([`Shared::is`]): pointer identity alone. Used where work done on
///   the object may be kept only for that very object (the gateway keeps a compiled cluster or
///   virtual host when the snapshot hands it the same definition).
///
/// Both are sound only because whoever compares keeps both values alive meanwhile (no
/// address reuse). Serialised as the value itself.
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    /// Whether both are the very same allocation.
    pub fn is(a: &Shared<T>, b: &Shared<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// Mutable access, copying the value first if another version still shares it.
    pub fn make_mut(this: &mut Shared<T>) -> &mut T
    where
        T: Clone,
    {
        Arc::make_mut(&mut this.0)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// `ptr_eq || eq`: see the type's documentation.
impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Shared<T>) -> bool {
        Shared::is(self, other) || *self.0 == *other.0
    }
}

impl<T: Eq> Eq for Shared<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Shared::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_by_pointer_or_content_the_same_only_by_pointer() {
        let a = Shared::new(vec![1, 2]);
        let same = a.clone();
        let equal = Shared::new(vec![1, 2]);
        let other = Shared::new(vec![3]);
        assert!(a == same && Shared::is(&a, &same));
        assert!(a == equal && !Shared::is(&a, &equal));
        assert!(a != other);
        let mut copied = a.clone();
        Shared::make_mut(&mut copied).push(3);
        assert!(!Shared::is(&a, &copied), "a shared value is copied before it changes");
        assert_eq!(*a, vec![1, 2]);
        assert_eq!(serde_json::to_string(&copied).unwrap(), "[1,2,3]");
        let back: Shared<Vec<i32>> = serde_json::from_str("[1,2,3]").unwrap();
        assert!(back == copied);
    }
}
