//! The handler of a TCP port: each accepted connection goes to the port's tcp route
//! (`l4::forward`).

use crate::l4::forward::{forward, ConnectionInfo};
use crate::listeners::ConnectionHandler;
use crate::proxy::Shared;
use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;

/// Forwards a connection along the first tcp route of the port's TCP server.
pub(crate) struct TcpHandler {
    pub(crate) port: u16,
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl ConnectionHandler for TcpHandler {
    async fn handle(&self, stream: L4Stream, _shutdown: &ShutdownWatch) {
        let runtime = self.shared.current.load();
        let Some(listener) = runtime.listeners.get(&self.port) else { return };
        let route = listener.l4_route(false, None, None);
        let info = ConnectionInfo { port: self.port, downstream: peer_addr(&stream), sni: None };
        forward(&self.shared, &runtime, route, stream, info).await;
    }
}

/// The client address of an accepted connection, from pingora's socket digest.
pub(crate) fn peer_addr(stream: &L4Stream) -> Option<std::net::SocketAddr> {
    use pingora_core::protocols::GetSocketDigest;
    stream.get_socket_digest()?.peer_addr()?.as_inet().copied()
}
