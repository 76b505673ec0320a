//! Accept loops we own (rather than pingora's `Server`) so ports open and close live as
//! snapshots change, and so shutdown can stop accepting while connections drain.
//!
//! Each port has a [`ConnectionHandler`] that can be swapped while the socket stays bound
//! (a port moving from HTTP to HTTPS keeps its listening socket).

mod buffered;
pub(crate) mod tcp;
pub(crate) mod tls;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::listener::Listener as L4Listener;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Counts open downstream connections so shutdown can wait for them.
#[derive(Clone)]
pub(crate) struct Connections {
    inner: Arc<ConnectionsInner>,
}

struct ConnectionsInner {
    open: AtomicUsize,
    idle: Notify,
    active_gauge: prometheus::IntGauge,
    total: prometheus::IntCounter,
}

/// Decrements the open count on drop, whichever way the connection ends.
pub(crate) struct ConnectionGuard(Connections);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        inner.active_gauge.dec();
        if inner.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.idle.notify_waiters();
        }
    }
}

impl Connections {
    pub(crate) fn new(active_gauge: prometheus::IntGauge, total: prometheus::IntCounter) -> Connections {
        Connections {
            inner: Arc::new(ConnectionsInner { open: AtomicUsize::new(0), idle: Notify::new(), active_gauge, total }),
        }
    }

    fn open(&self) -> ConnectionGuard {
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        self.inner.active_gauge.inc();
        self.inner.total.inc();
        ConnectionGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What to do with an accepted connection.
#[async_trait]
pub(crate) trait ConnectionHandler: Send + Sync + 'static {
    async fn handle(&self, stream: L4Stream, shutdown: &ShutdownWatch);

    /// Closes idle keep-alive connections at shutdown.
    async fn cleanup(&self) {}
}

/// Hands connections to a pingora app (HTTP proxy or the admin servers).
pub(crate) struct AppHandler<A>(pub Arc<A>);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ConnectionHandler for AppHandler<A> {
    async fn handle(&self, stream: L4Stream, shutdown: &ShutdownWatch) {
        self.0.process_new(Box::new(buffered::Buffered::new(stream)), shutdown).await;
    }

    async fn cleanup(&self) {
        self.0.cleanup().await;
    }
}

/// A running accept loop; dropping `stop` or sending `true` ends accepting.
pub(crate) struct Acceptor {
    pub(crate) addr: SocketAddr,
    handler: Arc<ArcSwap<Arc<dyn ConnectionHandler>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Acceptor {
    pub(crate) fn handler(&self) -> Arc<dyn ConnectionHandler> {
        self.handler.load_full().as_ref().clone()
    }

    /// New connections go to `handler`; connections already accepted stay where they are.
    pub(crate) fn set_handler(&self, handler: Arc<dyn ConnectionHandler>) {
        self.handler.store(Arc::new(handler));
    }

    /// Stops accepting; connections already accepted keep running to completion.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.task);
    }
}

/// Binds `addr` now (so errors surface to the caller) and starts accepting into `handler`.
pub(crate) fn start(
    addr: SocketAddr,
    handler: Arc<dyn ConnectionHandler>,
    shutdown: ShutdownWatch,
    connections: Connections,
) -> std::io::Result<Acceptor> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let listener: L4Listener = tokio::net::TcpListener::from_std(std_listener)?.into();
    let (stop, mut stopped) = watch::channel(false);
    let handler = Arc::new(ArcSwap::from_pointee(handler));
    let current = handler.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let mut stream = match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(%bound, error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay();
                    let guard = connections.open();
                    let handler = current.load_full();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        handler.handle(stream, &shutdown).await;
                    });
                }
            }
        }
    });
    Ok(Acceptor { addr: bound, handler, stop, task })
}
