//! TLS listeners: read the ClientHello, choose the Gateway server by SNI, then terminate
//! (HTTP through that server's pingora proxy, or TCP) or pass the bytes through untouched.
//!
//! ```text
//!  accept ─► read ClientHello (rewound afterwards) ─► server by SNI ─┬─ passthrough ─► tls route ─► splice
//!                                                                    ├─ terminate ─► HTTP proxy (h1/h2 by ALPN)
//!                                                                    └─ terminate ─► tcp route ─► splice
//! ```

use super::buffered::Buffered;
use super::http::{serve_tls, server_options, Edge};
use super::tcp::peer_addr;
use super::ConnectionHandler;
use crate::l4::client_hello::read_client_hello;
use crate::l4::forward::{forward, ConnectionInfo};
use crate::proxy::{MeshProxy, Shared};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use pingora_core::protocols::IO;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) type Proxy = HttpProxy<MeshProxy>;

pub(crate) struct TlsHandler {
    pub(crate) port: u16,
    pub(crate) shared: Arc<Shared>,
    conf: Arc<ServerConf>,
    edge: Edge,
    /// One pingora proxy per terminating HTTP server (keyed by server name), so a request
    /// knows which certificate its connection got (for 421). Rebuilt on sync, never locked.
    proxies: ArcSwap<HashMap<String, Arc<Proxy>>>,
}

impl TlsHandler {
    pub(crate) fn new(port: u16, shared: Arc<Shared>, conf: Arc<ServerConf>, edge: Edge) -> TlsHandler {
        TlsHandler { port, shared, conf, edge, proxies: ArcSwap::from_pointee(HashMap::new()) }
    }

    /// Makes sure every HTTP server of the listener has a proxy; keeps existing ones (and
    /// their upstream connection pools).
    pub(crate) fn sync(&self) {
        let runtime = self.shared.current.load();
        let Some(listener) = runtime.listeners.get(&self.port) else { return };
        let old = self.proxies.load();
        let mut next = HashMap::new();
        for server in listener.tls.iter().filter(|s| s.def.http) {
            let name = server.def.server.clone();
            let proxy = old.get(&name).cloned().unwrap_or_else(|| {
                let app = MeshProxy { port: self.port, shared: self.shared.clone(), tls_server: Some(name.clone()) };
                let mut proxy = pingora_proxy::http_proxy(&self.conf, app);
                proxy.server_options = Some(server_options(&self.edge));
                Arc::new(proxy)
            });
            next.insert(name, proxy);
        }
        self.proxies.store(Arc::new(next));
    }

    /// Terminates TLS on `stream`; a failure is counted and logged, and ends the connection.
    async fn handshake<S: IO + 'static>(
        &self,
        acceptor: &Acceptor,
        stream: S,
        sni: Option<&str>,
    ) -> Option<TlsStream<S>> {
        // The handshake gets the header timeout too: a client that starts one and stalls holds
        // a connection as a slow head does.
        match tokio::time::timeout(self.edge.head.header_timeout, acceptor.tls_handshake(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Err(_) => {
                tracing::debug!(port = self.port, sni, "TLS handshake timed out");
                self.failed("handshake_timeout");
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(port = self.port, sni, error = %e, "TLS handshake failed");
                self.failed("handshake");
                None
            }
        }
    }

    fn failed(&self, reason: &str) {
        self.shared.metrics.tls_handshake_failures.with_label_values(&[&self.port.to_string(), reason]).inc();
    }
}

#[async_trait]
impl ConnectionHandler for TlsHandler {
    async fn handle(&self, mut stream: L4Stream, shutdown: &ShutdownWatch) {
        let downstream = peer_addr(&stream);
        let (consumed, hello) = read_client_hello(&mut stream, self.edge.head.header_timeout).await;
        stream.rewind(&consumed);
        let hello = match hello {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(port = self.port, error = %e, "no usable ClientHello");
                self.failed("no_client_hello");
                return;
            }
        };
        let runtime = self.shared.current.load();
        let Some(listener) = runtime.listeners.get(&self.port) else { return };
        let sni = hello.server_name.as_deref();
        let Some(server) = listener.select_tls(sni).cloned() else {
            tracing::debug!(port = self.port, sni, "no server for this SNI; closing");
            self.failed("unknown_sni");
            return;
        };
        let Some(acceptor) = &server.acceptor else {
            let route = listener.l4_route(true, sni, None);
            forward(&self.shared, &runtime, route, stream, ConnectionInfo { port: self.port, downstream, sni }).await;
            return;
        };
        if server.def.http {
            // Under TLS, as under plain HTTP: the encrypted records of a response's head and
            // body leave in one write when Pingora flushes, instead of one `writev` each
            // (`Buffered`; Pingora's own TLS listeners buffer the same way). Not before the
            // handshake has succeeded: a failed one's alert must reach the client unflushed.
            let (stream, buffering) = Buffered::deferred(stream);
            let Some(tls) = self.handshake(acceptor, stream, sni).await else { return };
            buffering.on();
            let proxy = self.proxies.load().get(&server.def.server).cloned();
            match proxy {
                Some(proxy) => {
                    drop(runtime);
                    serve_tls(&proxy, Box::new(tls), shutdown, &self.edge).await;
                }
                None => tracing::warn!(server = server.def.server, "no proxy for server yet"),
            }
        } else {
            let Some(tls) = self.handshake(acceptor, stream, sni).await else { return };
            // The tcp routes of the server the SNI chose, as each server is its own filter chain.
            let route = listener.l4_route(false, sni, Some(&server.def.server));
            forward(&self.shared, &runtime, route, tls, ConnectionInfo { port: self.port, downstream, sni }).await;
        }
    }

    async fn cleanup(&self) {
        for proxy in self.proxies.load().values() {
            proxy.cleanup().await;
        }
    }
}
