//! Forwarding for tcp routes (TCP servers, TLS-terminated TCP servers) and tls routes (SNI
//! passthrough): pick a destination, connect, splice bytes both ways, and tell telemetry.

use crate::compiled::cluster::ClusterRuntime;
use crate::compiled::{L4Route, Runtime};
use crate::l4::splice::{splice, Direction};
use crate::proxy::Shared;
use crate::response_flag::ResponseFlag;
use crate::telemetry::access_log::Prepared;
use crate::telemetry::Exchange;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Istio's default TCP connect timeout (DestinationRule connectionPool.tcp.connectTimeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's default tcp_proxy idle timeout in Istio.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the access log says about one TCP connection.
pub(crate) struct ConnectionInfo<'a> {
    /// The Gateway server port it came in on.
    pub(crate) port: u16,
    pub(crate) downstream: Option<std::net::SocketAddr>,
    /// SNI of passthrough and terminated TLS connections (logged as the authority).
    pub(crate) sni: Option<&'a str>,
}

/// Connects to an endpoint of the route's weighted destination and splices. Failures are
/// counted with Envoy's response flags (NR no route, NC no cluster, UH no endpoint, UF connect
/// failure), and every connection gets one access log line, as Envoy's tcp_proxy logs.
/// `runtime` is the one `route` was looked up in, so the denial below and the route come from
/// the same snapshot.
pub(crate) async fn forward<S>(
    shared: &Shared,
    runtime: &Runtime,
    route: Option<&L4Route>,
    downstream: S,
    info: ConnectionInfo<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let start = std::time::Instant::now();
    let mut log = L4Log { flags: ResponseFlag::None, cluster: None, endpoint: None, stats: Default::default() };
    forward_inner(shared, runtime, route, downstream, &mut log).await;
    if shared.access_log.enabled() {
        // Per connection, not per request: encoded here rather than kept in the route.
        let route_name = route.map(|r| Prepared::string(&r.name));
        shared.access_log.log(&Exchange {
            duration: start.elapsed(),
            head: None,
            port: info.port,
            tls: info.sni.is_some(),
            sni: info.sni,
            code: 0,
            flags: log.flags.into(),
            details: None,
            route_name: route_name.as_ref(),
            cluster: log.cluster.as_deref(),
            endpoint: log.endpoint,
            bytes_received: log.stats.downstream_to_upstream,
            bytes_sent: log.stats.upstream_to_downstream,
            upstream_service_time: None,
            generated_id: None,
            no_forwarded_for: true,
            downstream: info.downstream,
        });
    }
}

struct L4Log {
    flags: ResponseFlag,
    cluster: Option<Arc<ClusterRuntime>>,
    /// Index of the endpoint in `cluster`.
    endpoint: Option<usize>,
    stats: crate::l4::splice::SpliceStats,
}

async fn forward_inner<S>(shared: &Shared, runtime: &Runtime, route: Option<&L4Route>, downstream: S, log: &mut L4Log)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let metrics = &shared.metrics;
    // Envoy's network RBAC filter closes the connection before anything is proxied.
    if runtime.deny.is_some() {
        log.flags = ResponseFlag::UnenforcedPolicy;
        metrics.tcp_open(None, log.flags, "unknown").close();
        return;
    }
    let Some(route) = route else {
        log.flags = ResponseFlag::NoRoute;
        metrics.tcp_open(None, log.flags, "unknown").close();
        return;
    };
    // No destination, or one Envoy would have no cluster for (unknown host or subset).
    let Some(cluster) = route.destinations.pick().filter(|c| !c.definition.not_found) else {
        log.flags = ResponseFlag::NoClusterFound;
        metrics.tcp_open(None, log.flags, "unknown").close();
        return;
    };
    log.cluster = Some(cluster.clone());
    let Some(pick) = cluster.balancer.pick(None, None) else {
        log.flags = ResponseFlag::NoHealthyUpstream;
        metrics.tcp_open(Some(&cluster.telemetry().service_labels), log.flags, cluster.security_policy()).close();
        return;
    };
    let endpoint = &cluster.endpoints[pick.index()];
    let labels = &cluster.telemetry().endpoint(pick.index()).labels;
    log.endpoint = Some(pick.index());
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(route = route.name, upstream = %endpoint.addr, error = %e, "tcp connect failed");
            log.flags = ResponseFlag::UpstreamConnectionFailure;
            metrics.tcp_open(Some(labels), log.flags, cluster.security_policy()).close();
            return;
        }
        Err(_) => {
            log.flags = ResponseFlag::UpstreamConnectionFailure;
            metrics.tcp_open(Some(labels), log.flags, cluster.security_policy()).close();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let counters = metrics.tcp_open(Some(labels), ResponseFlag::None, cluster.security_policy());
    let stats = splice(downstream, upstream, IDLE_TIMEOUT, |direction, n| match direction {
        Direction::DownstreamToUpstream => counters.received.inc_by(n),
        Direction::UpstreamToDownstream => counters.sent.inc_by(n),
    })
    .await;
    counters.close();
    log.stats = stats;
    drop(pick);
    tracing::debug!(route = route.name, upstream = %endpoint.addr, ?stats, "tcp connection closed");
}
