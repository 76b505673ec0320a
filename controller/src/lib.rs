//! meshgate controller: Istio and Kubernetes resources in, one immutable routing snapshot out.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod analyze;
pub mod distribution;
pub mod meshctl;
pub mod publish;
pub mod schema;
pub mod source;
pub mod store;
pub mod synth;
pub mod translate;

// The contract's modules under their old names, so the controller's own code reads as before.
pub use meshgate_model::{by_name, diagnostics, memory, snapshot};

pub use diagnostics::{Diagnostic, Diagnostics, Level};
pub use snapshot::Snapshot;
pub use store::Store;
pub use translate::{translate, Options};
