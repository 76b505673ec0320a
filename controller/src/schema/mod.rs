//! Input schemas: the Istio and Kubernetes resources exactly as users write them.
//!
//! Nothing downstream of [`crate::store`] touches raw YAML; translation works on these typed
//! structs. Fields the gateway does not implement yet are still declared (as opaque JSON) so a
//! user gets "not supported yet" rather than "unknown field".

pub mod core;
pub mod istio;
pub mod security;

pub use compact_str::CompactString;
use serde::Deserialize;

pub use meshgate_model::labels::{Labels, SharedLabels};

/// The part of `metadata` every resource shares. There are tens of thousands at scale, so
/// rarely set strings are boxed and fields nothing reads (annotations) are not kept.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: CompactString,
    #[serde(default)]
    pub namespace: Option<CompactString>,
    #[serde(default)]
    pub labels: SharedLabels,
    /// Boxed (one pointer): file-mode objects have none. RFC 3339, so the text orders as the
    /// time does.
    #[serde(default)]
    pub creation_timestamp: Option<Box<CompactString>>,
}

/// The kinds, described once in [`crate::store::kind`].
pub use crate::store::Kind;
