//! Snapshot distribution, the side both ends share: the wire format, deltas between versions,
//! the HTTP transport and the client a gateway replica runs. The server is the controller's
//! (`controller::distribution::server`); the protocol is described there.

pub mod client;
pub mod delta;
pub mod transport;
pub mod wire;
