//! TCP forwarding for tcp routes (TCP servers, TLS-terminated TCP servers) and tls routes
//! (SNI passthrough): pick a destination, connect, splice bytes both ways.

use crate::l4::splice::{splice, Direction};
use crate::listeners::ConnectionHandler;
use crate::proxy::Shared;
use crate::runtime::L4Route;
use async_trait::async_trait;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Istio's default TCP connect timeout (DestinationRule connectionPool.tcp.connectTimeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default tcp_proxy idle timeout in Istio.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Forwards a connection along the first tcp route of the listener.
pub struct TcpHandler {
    pub port: u16,
    pub shared: Arc<Shared>,
}

#[async_trait]
impl ConnectionHandler for TcpHandler {
    async fn handle(&self, stream: L4Stream, _shutdown: &ShutdownWatch) {
        let runtime = self.shared.current.load();
        let Some(listener) = runtime.listeners.get(&self.port) else { return };
        let route = listener.l4_route(false, None);
        forward(&self.shared, route, stream).await;
    }
}

/// Connects to an endpoint of the route's weighted destination and splices. Failures are
/// counted with Envoy's response flags (NR no route, UH no endpoint, UF connect failure).
pub async fn forward<S>(shared: &Shared, route: Option<&L4Route>, downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let metrics = &shared.metrics;
    let Some(route) = route else {
        metrics.tcp_open(None, "NR", "unknown").close();
        return;
    };
    let Some(cluster) = route.destinations.pick() else {
        metrics.tcp_open(None, "NC", "unknown").close();
        return;
    };
    let Some(pick) = cluster.balancer.pick(None, None) else {
        metrics.tcp_open(Some(&cluster.service_labels), "UH", cluster.security_policy).close();
        return;
    };
    let endpoint = &cluster.endpoints[pick.index()];
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(route = route.name, upstream = %endpoint.addr, error = %e, "tcp connect failed");
            metrics.tcp_open(Some(&endpoint.labels), "UF", cluster.security_policy).close();
            return;
        }
        Err(_) => {
            metrics.tcp_open(Some(&endpoint.labels), "UF", cluster.security_policy).close();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let counters = metrics.tcp_open(Some(&endpoint.labels), "-", cluster.security_policy);
    let stats = splice(downstream, upstream, IDLE_TIMEOUT, |direction, n| match direction {
        Direction::DownstreamToUpstream => counters.received.inc_by(n),
        Direction::UpstreamToDownstream => counters.sent.inc_by(n),
    })
    .await;
    counters.close();
    drop(pick);
    tracing::debug!(route = route.name, upstream = %endpoint.addr, ?stats, "tcp connection closed");
}
