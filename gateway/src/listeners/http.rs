//! The data ports' HTTP connections: HTTP/2 (h2c on plain ports, ALPN `h2` after TLS) goes to
//! Pingora's own HTTP/2 server; HTTP/1 runs in our request loop on Pingora's sessions, with
//! the connection behind a [`Guarded`] stream (head deadlines and size) and pipelining on.
//!
//! Pingora's `ServerApp::process_new` does the same dispatch, but times each read on its own
//! (a client sending a byte a minute keeps a head open for ever), waits for 24 bytes with no
//! deadline to rule out the h2c preface (a silent connection stays open for ever, and a short
//! request stalls), and drops the connection when a client pipelines.

use super::buffered::Buffered;
use super::guard::{phase_of, GuardCounters, Guarded, HeadDone, HeadLimits, Phase};
use super::ConnectionHandler;
use crate::proxy::MeshProxy;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;
use std::time::Duration;

type Proxy = HttpProxy<MeshProxy>;

/// HTTP/2's connection preface, which an h2c client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Called when a request's head has been parsed (the first request hook) with the session's
/// stream: the connection's reads are body reads from now on. Tells whether the head may be
/// over the size limit. A no-op for HTTP/2, whose streams have no guard.
pub(crate) fn head_done(stream: Option<&Stream>) -> HeadDone {
    stream.and_then(phase_of).map_or(HeadDone { oversized: false }, Phase::head_done)
}

/// What the data ports allow a client, as the connection code needs it.
#[derive(Clone)]
pub(crate) struct Edge {
    pub(crate) head: HeadLimits,
    pub(crate) counters: GuardCounters,
    pub(crate) body_read_timeout: Duration,
}

/// Pingora's options for the data ports' HTTP servers (h2c is the plain ports' to add).
pub(crate) fn server_options(edge: &Edge) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    // An HTTP/2 connection with no stream open closes after the idle timeout, as HTTP/1
    // keep-alive connections do.
    options.h2_idle_timeout = Some(edge.head.idle_timeout);
    options
}

/// The handler of a plain HTTP port.
pub(crate) struct HttpHandler {
    pub(crate) proxy: Arc<Proxy>,
    pub(crate) edge: Edge,
    /// `--request-loop own`: HTTP/1 requests go through meshgate's own loop (prototype).
    pub(crate) own: Option<MeshProxy>,
}

#[async_trait]
impl ConnectionHandler for HttpHandler {
    async fn handle(&self, stream: L4Stream, shutdown: &ShutdownWatch) {
        let mut stream = Buffered::new(stream);
        let h2c = match tokio::time::timeout(self.edge.head.header_timeout, stream.starts_with(H2_PREFACE)).await {
            Ok(Ok(h2c)) => h2c,
            // Closed before a request: nothing to answer.
            Ok(Err(_)) => return,
            Err(_) => {
                self.edge.counters.idle.inc();
                return;
            }
        };
        if h2c {
            self.proxy.process_new(Box::new(stream), shutdown).await;
        } else {
            match &self.own {
                Some(own) => serve_h1_own(own, Box::new(stream), shutdown, &self.edge).await,
                None => serve_h1(&self.proxy, Box::new(stream), shutdown, &self.edge).await,
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

/// Serves a TLS-terminated connection: HTTP/2 when ALPN chose it, else HTTP/1.
pub(crate) async fn serve_tls(proxy: &Arc<Proxy>, stream: Stream, shutdown: &ShutdownWatch, edge: &Edge) {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        proxy.process_new(stream, shutdown).await;
    } else {
        serve_h1(proxy, stream, shutdown, edge).await;
    }
}

/// HTTP/1 requests on one connection, one session after another, as Pingora's own loop runs
/// them, with the connection behind a [`Guarded`] stream.
async fn serve_h1(proxy: &Arc<Proxy>, stream: Stream, shutdown: &ShutdownWatch, edge: &Edge) {
    let stream: Stream = Box::new(Guarded::new(stream, edge.head, edge.counters.clone()));
    let mut session = ServerSession::new_http1(stream);
    configure(&mut session, shutdown, edge);
    let mut result = proxy.process_new_http(session, shutdown).await;
    while let Some((stream, settings)) = result.map(|r| r.consume()) {
        if let Some(phase) = phase_of(&stream) {
            phase.idle();
        }
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        configure(&mut session, shutdown, edge);
        result = proxy.process_new_http(session, shutdown).await;
    }
}

/// `--request-loop own`: HTTP/1 requests through meshgate's own loop (a prototype). Between
/// requests only the stream is kept: the next request's first bytes are read into a small
/// buffer before a session (with its 4 KiB read buffer) exists, and each request's future is
/// boxed, so an idle keep-alive connection holds neither (Pingora's loop keeps ~17 KiB of
/// both per idle connection; docs/benchmarks.md, "Per idle connection").
async fn serve_h1_own(own: &MeshProxy, stream: Stream, shutdown: &ShutdownWatch, edge: &Edge) {
    use tokio::io::AsyncReadExt;
    let mut stream: Stream = Box::new(Guarded::new(stream, edge.head, edge.counters.clone()));
    let mut prefix: Option<bytes::BytesMut> = None;
    let mut shutdown = shutdown.clone();
    loop {
        if prefix.is_none() {
            let mut first = [0u8; 256];
            let read = tokio::select! {
                read = stream.read(&mut first) => read,
                // Draining: a connection waiting for its next request closes now.
                _ = shutdown.wait_for(|draining| *draining) => return,
            };
            match read {
                Ok(n) if n > 0 => prefix = Some(bytes::BytesMut::from(&first[..n])),
                _ => return,
            }
        }
        let mut session = ServerSession::new_http1(stream);
        configure(&mut session, &shutdown, edge);
        if let Some(prefix) = prefix.take() {
            session.set_pipelined_prefix(prefix);
        }
        let Some((next, pipelined)) = Box::pin(crate::proxy::own_loop::serve(own, session)).await else { return };
        if let Some(phase) = phase_of(&next) {
            phase.idle();
        }
        (stream, prefix) = (next, pipelined);
    }
}

fn configure(session: &mut ServerSession, shutdown: &ShutdownWatch, edge: &Edge) {
    if *shutdown.borrow() {
        // Draining: this request is the connection's last.
        session.set_keepalive(None);
    } else {
        // Kept alive with no timer of Pingora's: the guard times the wait for the next request.
        session.set_keepalive(Some(0));
    }
    // Pingora's per-read timeout now only times body reads (the guard times heads).
    session.set_read_timeout(Some(edge.body_read_timeout));
    // Requests a client pipelines are answered in order (RFC 9112 §9.3.2); without this,
    // Pingora drops the connection when it reads past a request.
    session.set_pipelining_enabled(true);
}
