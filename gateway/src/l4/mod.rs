//! The layer-4 data path: TLS passthrough and TCP routing.
//!
//! Istio `Gateway` servers with `tls.mode: PASSTHROUGH` (and `TCP`/`TLS` routes in a
//! `VirtualService`) are routed on what the client reveals before any HTTP exists: the SNI and
//! ALPN of its ClientHello. Pingora handles HTTP; this module supplies the two pieces it lacks:
//!
//! * [`client_hello::read_client_hello`] peeks the ClientHello without terminating TLS, handing
//!   back every consumed byte so the connection can still be terminated locally (after rewinding)
//!   or forwarded verbatim to a passthrough upstream.
//! * [`forward::forward`] routes a connection (tcp and tls routes), connects and logs it.
//! * [`splice::splice`] shovels bytes between the downstream and upstream connections once a
//!   route is chosen, honouring half-close and an idle timeout.

pub(crate) mod client_hello;
pub(crate) mod forward;
pub(crate) mod splice;
