//! Snapshot distribution from one controller to many gateway replicas.
//!
//! The protocol is a long-poll over HTTP/1.1 with JSON bodies, chosen over a stream because it
//! survives every proxy and load balancer between pods, needs no framing of its own, and makes
//! acknowledgement natural: each poll says which version the gateway *applied* (`acked`) and
//! which it *holds* (`have`). The controller answers at once when its version differs from
//! `have`, otherwise it holds the request until a new version or the wait expires (204).
//!
//! ```text
//! POST /v1/snapshot   Authorization: Bearer <token>   {PollRequest}  → 200 {SnapshotMessage} | 204
//! GET  /v1/status     Authorization: Bearer <token>                  → 200 {ControllerStatus}
//! GET  /healthz/ready                                                → 200 once a snapshot exists
//! GET  /metrics                                                      → Prometheus text
//! ```
//!
//! Every data endpoint requires the shared token: snapshots carry private keys of the
//! gateway's TLS certificates, so the channel is never open. Translation depends on who asks
//! (Gateways select gateway pods by labels, `credentialName` Secrets live in the gateway's
//! namespace), so the controller keeps one publisher per distinct identity it has seen.

pub mod server;
#[cfg(test)]
mod tests;

// The side a gateway replica shares lives in the contract crate.
pub use meshgate_model::distribution::{client, delta, transport, wire};
