//! Kubernetes labels as the snapshot and the input schemas hold them.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Kubernetes labels and label selectors. A sorted vector: these maps hold a handful of
/// entries, and there are tens of thousands of them at scale (see the Cargo.toml note).
pub type Labels = litemap::LiteMap<CompactString, CompactString>;

/// A Pod's labels, shared by its metadata and the workload of every endpoint it backs. One
/// pointer, and no allocation when empty, as most resources' labels are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SharedLabels(Option<Arc<Labels>>);

impl std::ops::Deref for SharedLabels {
    type Target = Labels;

    fn deref(&self) -> &Labels {
        static EMPTY: Labels = Labels::new();
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl From<Labels> for SharedLabels {
    /// Kept exact size: decoded from JSON (no length ahead) a two-label map had room for four.
    fn from(labels: Labels) -> SharedLabels {
        if labels.is_empty() {
            return SharedLabels(None);
        }
        let mut pairs = labels.into_tuple_vec();
        pairs = crate::memory::exact(pairs);
        // Still sorted: the pairs come from a map in key order.
        SharedLabels(Some(Arc::new(Labels::from_sorted_store_unchecked(pairs))))
    }
}

impl FromIterator<(CompactString, CompactString)> for SharedLabels {
    fn from_iter<I: IntoIterator<Item = (CompactString, CompactString)>>(iter: I) -> SharedLabels {
        SharedLabels::from(iter.into_iter().collect::<Labels>())
    }
}

impl<'a> IntoIterator for &'a SharedLabels {
    type Item = (&'a CompactString, &'a CompactString);
    type IntoIter = <&'a Labels as IntoIterator>::IntoIter;

    fn into_iter(self) -> Self::IntoIter {
        (**self).iter()
    }
}

impl<'de> Deserialize<'de> for SharedLabels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Labels::deserialize(deserializer).map(SharedLabels::from)
    }
}

impl Serialize for SharedLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

/// The labels of the istio-ingressgateway Deployment, which meshgate replaces: Gateways select
/// them (`selector: {istio: ingressgateway}`). The default of both binaries' `--labels`.
pub const DEFAULT_GATEWAY_LABELS: &str = "istio=ingressgateway,app=istio-ingressgateway";

/// The namespace istio-ingressgateway runs in by default, and Istio's root namespace.
pub const DEFAULT_GATEWAY_NAMESPACE: &str = "istio-system";

/// `k=v,k=v` as the `--labels` flags of the binaries take it.
pub fn parse(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("label {pair:?} is not key=value"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}
