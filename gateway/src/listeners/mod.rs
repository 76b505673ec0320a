//! Accept loops we own (rather than pingora's `Server`) so ports open and close live as
//! snapshots change, and so shutdown can stop accepting while connections drain.
//!
//! Each port has a [`ConnectionHandler`] that can be swapped while the socket stays bound
//! (a port moving from HTTP to HTTPS keeps its listening socket).

mod buffered;
mod connections;
mod guard;
pub(crate) mod http;
pub(crate) mod tcp;
pub(crate) mod tls;

use crate::workers::WorkerRef;
use arc_swap::ArcSwap;
use async_trait::async_trait;
pub(crate) use connections::{Connections, Overload};
pub(crate) use guard::{GuardCounters, HeadLimits};
use pingora_core::apps::ServerApp;
use pingora_core::protocols::l4::listener::Listener as L4Listener;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::server::ShutdownWatch;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

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

/// The accept loops of one address: one per worker for a data port (each worker's own
/// `SO_REUSEPORT` socket), or one on the control runtime for the admin ports. Dropping it or
/// [`Acceptor::stop`] ends accepting.
pub(crate) struct Acceptor {
    pub(crate) addr: SocketAddr,
    /// Each loop's handler, in worker order.
    handlers: Vec<Arc<ArcSwap<Arc<dyn ConnectionHandler>>>>,
    stop: watch::Sender<bool>,
}

impl Acceptor {
    pub(crate) fn handlers(&self) -> Vec<Arc<dyn ConnectionHandler>> {
        self.handlers.iter().map(|h| h.load_full().as_ref().clone()).collect()
    }

    /// New connections go to `handlers` (one per loop, in worker order); connections already
    /// accepted stay where they are.
    pub(crate) fn set_handlers(&self, handlers: Vec<Arc<dyn ConnectionHandler>>) {
        for (slot, handler) in self.handlers.iter().zip(handlers) {
            slot.store(Arc::new(handler));
        }
    }

    /// Stops accepting; connections already accepted keep running to completion.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(true);
    }
}

/// Pending connections the kernel queues per socket before accept (Envoy's default).
const BACKLOG: i32 = 1024;

/// Binds `addr` once per worker with `SO_REUSEPORT` (now, so errors surface to the caller):
/// the kernel spreads new connections over the sockets, and each worker accepts and serves
/// its own, so a connection never crosses threads. `handlers` come in worker order.
pub(crate) fn start_on_workers(
    addr: SocketAddr,
    workers: &[WorkerRef],
    handlers: Vec<Arc<dyn ConnectionHandler>>,
    shutdown: ShutdownWatch,
    connections: Connections,
) -> std::io::Result<Acceptor> {
    let first = bind(addr, true)?;
    // Port 0 picks a port: every other worker's socket joins that one.
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers.len() {
        sockets.push(bind(bound, true)?);
    }
    let (stop, stopped) = watch::channel(false);
    let mut slots = Vec::with_capacity(workers.len());
    for ((worker, socket), handler) in workers.iter().zip(sockets).zip(handlers) {
        let slot = Arc::new(ArcSwap::from_pointee(handler));
        let accepted = Some(worker.accepted.clone());
        worker.handle.spawn(accept_loop(
            socket,
            slot.clone(),
            stopped.clone(),
            shutdown.clone(),
            connections.clone(),
            accepted,
        ));
        slots.push(slot);
    }
    Ok(Acceptor { addr: bound, handlers: slots, stop })
}

/// Binds `addr` (now, so errors surface to the caller) and accepts into `handler` on the
/// current runtime: the admin, status and metrics ports, which run beside the workers.
pub(crate) fn start(
    addr: SocketAddr,
    handler: Arc<dyn ConnectionHandler>,
    shutdown: ShutdownWatch,
    connections: Connections,
) -> std::io::Result<Acceptor> {
    let socket = bind(addr, false)?;
    let bound = socket.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let slot = Arc::new(ArcSwap::from_pointee(handler));
    tokio::spawn(accept_loop(socket, slot.clone(), stopped, shutdown, connections, None));
    Ok(Acceptor { addr: bound, handlers: vec![slot], stop })
}

/// A listening socket as std's `TcpListener::bind` makes one (SO_REUSEADDR), optionally
/// sharing its address with the other workers' sockets.
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The accept loop of one socket, spawned on the runtime that serves its connections (the
/// socket registers with that runtime's reactor when the loop starts). `accepted` counts the
/// worker's connections.
async fn accept_loop(
    socket: std::net::TcpListener,
    handler: Arc<ArcSwap<Arc<dyn ConnectionHandler>>>,
    mut stopped: watch::Receiver<bool>,
    shutdown: ShutdownWatch,
    connections: Connections,
    accepted: Option<prometheus::IntCounter>,
) {
    let bound = socket.local_addr().ok();
    let listener: L4Listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l.into(),
        Err(e) => {
            tracing::error!(?bound, error = %e, "cannot register listener");
            return;
        }
    };
    loop {
        // At the connection limit, wait for a connection to close before accepting: new
        // clients wait in the kernel's backlog instead of costing a descriptor each.
        if connections.full() {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = connections.admit() => continue,
            }
        }
        let result = tokio::select! {
            _ = stopped.changed() => break,
            result = listener.accept() => result,
        };
        let mut stream = match result {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(?bound, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay();
        let guard = connections.open();
        if let Some(counter) = &accepted {
            counter.inc();
        }
        let handler = handler.load_full();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            handler.handle(stream, &shutdown).await;
        });
    }
}
