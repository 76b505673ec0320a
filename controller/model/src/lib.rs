//! The contract between meshgate's control plane (`controller`) and data plane (`gateway`):
//! the routing snapshot, its wire and delta format, the client that follows a controller, the
//! diagnostics both sides report, and the payloads of the gateway's admin endpoint.
//!
//! Depends on neither kube nor pingora: a gateway replica that takes its snapshots from a
//! controller needs this crate and nothing of the controller's.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod admin;
pub mod by_name;
pub mod diagnostics;
pub mod distribution;
pub mod duration;
pub mod host;
pub mod labels;
pub mod memory;
pub mod shared;
pub mod snapshot;

pub use compact_str::CompactString;
pub use diagnostics::{Diagnostic, Diagnostics, Level};
pub use snapshot::Snapshot;
