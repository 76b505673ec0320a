//! meshgate controller: Istio and Kubernetes resources in, one immutable routing snapshot out.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod api;
pub mod by_name;
pub mod diagnostics;
pub mod inspect;
pub mod memory;
pub mod publish;
pub mod remote;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod synth;
pub mod translate;

pub use diagnostics::{Diagnostic, Diagnostics, Level};
pub use snapshot::Snapshot;
pub use store::Store;
pub use translate::{translate, Options};
