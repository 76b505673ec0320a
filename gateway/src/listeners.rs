//! Accept loops we own (rather than pingora's `Server`) so ports open and close live as
//! snapshots change, and so shutdown can stop accepting while connections drain.

use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::listener::Listener as L4Listener;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Counts open downstream connections so shutdown can wait for them.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<ConnectionsInner>,
}

struct ConnectionsInner {
    open: AtomicUsize,
    idle: Notify,
    active_gauge: prometheus::IntGauge,
    total: prometheus::IntCounter,
}

/// Decrements the open count on drop, whichever way the connection ends.
pub struct ConnectionGuard(Connections);

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
    pub fn new(active_gauge: prometheus::IntGauge, total: prometheus::IntCounter) -> Connections {
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

    pub fn count(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A running accept loop; dropping `stop` or sending `true` ends accepting.
pub struct Acceptor {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Acceptor {
    /// Stops accepting; connections already accepted keep running to completion.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        drop(self.task);
    }
}

/// Binds `addr` now (so errors surface to the caller) and starts accepting into `app`.
pub fn start<A>(
    addr: SocketAddr,
    app: Arc<A>,
    shutdown: ShutdownWatch,
    connections: Connections,
) -> std::io::Result<Acceptor>
where
    A: ServerApp + Send + Sync + 'static,
{
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let listener: L4Listener = tokio::net::TcpListener::from_std(std_listener)?.into();
    let (stop, mut stopped) = watch::channel(false);
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
                    let app = app.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        app.process_new(Box::new(stream), &shutdown).await;
                    });
                }
            }
        }
    });
    Ok(Acceptor { addr: bound, stop, task })
}
