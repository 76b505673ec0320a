//! Raw TCP upstreams for TCP routes and TLS passthrough.
//!
//! HTTP echo servers cannot show what a byte-level proxy does, so these speak
//! no protocol at all: on connect they announce themselves with one line
//! (which backend did the gateway pick?), then echo every byte back. When the
//! client half-closes, they finish echoing what they read and close their
//! side too; a client therefore sees EOF only if the gateway propagated its
//! FIN upstream and the upstream's FIN back, which is what half-close tests
//! need to observe.
//!
//! [`TlsTcpUpstream`] terminates TLS itself (the gateway must pass it through
//! untouched) and includes the SNI it received in its greeting, proving the
//! ClientHello reached it unmodified.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::SupportedProtocolVersion;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::certs::CertKey;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    active: AtomicU64,
    bytes: AtomicU64,
    handshake_failures: AtomicU64,
    snis: Mutex<Vec<String>>,
}

/// Decrements the active-connection gauge however the task ends.
struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The accept loop, listener and counters both upstream kinds share.
#[derive(Debug)]
struct Core {
    addr: SocketAddr,
    name: String,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, aborting connections.
        self.task.abort();
    }
}

impl Core {
    async fn start(name: String, bind: SocketAddr, acceptor: Option<TlsAcceptor>) -> io::Result<Core> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(listener, name.clone(), stats.clone(), acceptor));
        Ok(Core { addr, name, stats, task })
    }

    async fn wait_for_connections(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.stats.connections.load(Ordering::SeqCst) < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

async fn accept_loop(listener: TcpListener, name: String, stats: Arc<Stats>, acceptor: Option<TlsAcceptor>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                stats.connections.fetch_add(1, Ordering::SeqCst);
                stats.active.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(stats.clone());
                let stats = stats.clone();
                let acceptor = acceptor.clone();
                let name = name.clone();
                conns.spawn(async move {
                    let _guard = guard;
                    let Some(acceptor) = acceptor else {
                        return echo(stream, format!("{name}\n"), &stats).await;
                    };
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        _ => {
                            stats.handshake_failures.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    let sni = tls.get_ref().1.server_name().unwrap_or_default().to_string();
                    stats.snis.lock().unwrap().push(sni.clone());
                    echo(tls, format!("{name} sni={sni}\n"), &stats).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Greets, echoes until the client's EOF (or an error), then shuts down the
/// write side (for TLS: close_notify, then FIN).
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, greeting: String, stats: &Stats) {
    if s.write_all(greeting.as_bytes()).await.is_err() || s.flush().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                stats.bytes.fetch_add(n as u64, Ordering::SeqCst);
                if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown().await;
}

macro_rules! common_accessors {
    () => {
        /// The bound address.
        pub fn addr(&self) -> SocketAddr {
            self.core.addr
        }

        /// The name announced in the greeting line.
        pub fn name(&self) -> &str {
            &self.core.name
        }

        /// TCP connections accepted so far.
        pub fn connections(&self) -> u64 {
            self.core.stats.connections.load(Ordering::SeqCst)
        }

        /// Connections currently open (a proxy that leaks upstream
        /// connections after the client left shows up here).
        pub fn active_connections(&self) -> u64 {
            self.core.stats.active.load(Ordering::SeqCst)
        }

        /// Payload bytes received (and echoed) so far, greeting excluded.
        pub fn bytes_received(&self) -> u64 {
            self.core.stats.bytes.load(Ordering::SeqCst)
        }

        /// Waits until at least `n` connections were accepted; false on timeout.
        pub async fn wait_for_connections(&self, n: u64, timeout: Duration) -> bool {
            self.core.wait_for_connections(n, timeout).await
        }
    };
}

/// A running TCP echo upstream; stops when dropped.
#[derive(Debug)]
pub struct TcpUpstream {
    core: Core,
}

impl TcpUpstream {
    /// Starts on `127.0.0.1:0`; on connect it writes `"{name}\n"`, then
    /// echoes. Panics if it cannot bind.
    pub async fn start(name: impl Into<String>) -> TcpUpstream {
        Self::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("tcp upstream: bind")
    }

    /// Like [`start`](Self::start) on a chosen address (another loopback IP,
    /// a fixed port).
    pub async fn start_on(name: impl Into<String>, bind: SocketAddr) -> io::Result<TcpUpstream> {
        Ok(TcpUpstream { core: Core::start(name.into(), bind, None).await? })
    }

    common_accessors!();
}

/// A running TLS-terminating TCP echo upstream; stops when dropped.
#[derive(Debug)]
pub struct TlsTcpUpstream {
    core: Core,
}

/// Builder returned by [`TlsTcpUpstream::builder`].
#[derive(Debug, Clone)]
pub struct TlsTcpUpstreamBuilder {
    name: String,
    cert: CertKey,
    bind: SocketAddr,
    client_ca: Option<String>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<String>,
}

impl TlsTcpUpstreamBuilder {
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Require client certificates from this CA (end-to-end mTLS through a
    /// passthrough gateway).
    pub fn client_ca(mut self, ca_pem: impl Into<String>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Restrict TLS versions (default 1.2 and 1.3).
    pub fn versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// ALPN protocols to accept (default none).
    pub fn alpn(mut self, protocols: &[&str]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Binds and starts; errors on bind or TLS setup failure.
    pub async fn start(self) -> io::Result<TlsTcpUpstream> {
        let alpn: Vec<&str> = self.alpn.iter().map(String::as_str).collect();
        let config = crate::tls::server_config(&self.cert, self.client_ca.as_deref(), &self.versions, &alpn)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}")))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        Ok(TlsTcpUpstream { core: Core::start(self.name, self.bind, Some(acceptor)).await? })
    }
}

impl TlsTcpUpstream {
    /// Starts on `127.0.0.1:0` presenting `cert`; after the handshake it
    /// writes `"{name} sni={sni}\n"` (empty SNI when none was sent), then
    /// echoes the decrypted bytes. Panics if it cannot start.
    pub async fn start(name: impl Into<String>, cert: CertKey) -> TlsTcpUpstream {
        Self::builder(name, cert).start().await.expect("tls tcp upstream: start")
    }

    pub fn builder(name: impl Into<String>, cert: CertKey) -> TlsTcpUpstreamBuilder {
        TlsTcpUpstreamBuilder {
            name: name.into(),
            cert,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            client_ca: None,
            versions: Vec::new(),
            alpn: Vec::new(),
        }
    }

    common_accessors!();

    /// SNI of every completed handshake, in order (empty string: no SNI).
    pub fn snis(&self) -> Vec<String> {
        self.core.stats.snis.lock().unwrap().clone()
    }

    /// Handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.core.stats.handshake_failures.load(Ordering::SeqCst)
    }
}
