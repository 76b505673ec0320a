//! Wiring of the embedded default: config files → controller (in-process) → snapshots →
//! compiled runtime → listeners; plus status/metrics/admin servers, signals and draining.

use crate::admin::{AdminApp, Role};
use crate::compiled::Current;
use crate::config::Config;
use crate::config_source;
use crate::listeners::http::{server_options, Edge, HttpHandler};
use crate::listeners::tcp::TcpHandler;
use crate::listeners::tls::TlsHandler;
use crate::listeners::{self, Acceptor, AppHandler, ConnectionHandler, Connections, HeadLimits};
use crate::proxy::{MeshProxy, Shared};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::{Metrics, SourceIdentity};
use crate::trace::{TraceIdentity, Tracer};
use crate::workers::{self, WorkerRef, Workers};
use anyhow::{Context, Result};
use meshgate_model::snapshot::{Protocol, Snapshot};
use pingora_core::server::configuration::ServerConf;
use pingora_proxy::HttpProxy;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

type Proxy = HttpProxy<MeshProxy>;

/// What runs on one port: each worker's accept loop and handler for the listener's protocol.
struct Running {
    acceptor: Acceptor,
    protocol: Protocol,
    /// The workers' TLS handlers (HTTPS ports), re-synced when certificates change.
    tls: Vec<Arc<TlsHandler>>,
}

/// The data-plane listeners: per Gateway port, one accept loop on every worker, with a
/// handler that follows the port's protocol (HTTP proxy, TLS by SNI, TCP).
struct DataPlane {
    config: Arc<Config>,
    conf: Arc<ServerConf>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    connections: Connections,
    workers: Vec<WorkerRef>,
    edge: Edge,
    running: BTreeMap<u16, Running>,
}

impl DataPlane {
    /// One handler per worker: each worker gets its own Pingora proxies, and so its own
    /// upstream connection pools, which no other thread touches.
    fn handlers(&self, port: u16, protocol: Protocol) -> (Vec<Arc<dyn ConnectionHandler>>, Vec<Arc<TlsHandler>>) {
        let mut handlers = Vec::with_capacity(self.workers.len());
        let mut tls = Vec::new();
        for _ in &self.workers {
            let (handler, worker_tls) = self.handler(port, protocol);
            handlers.push(handler);
            tls.extend(worker_tls);
        }
        (handlers, tls)
    }

    fn handler(&self, port: u16, protocol: Protocol) -> (Arc<dyn ConnectionHandler>, Option<Arc<TlsHandler>>) {
        match protocol {
            Protocol::Http => {
                let mut proxy = pingora_proxy::http_proxy(
                    &self.conf,
                    MeshProxy { port, shared: self.shared.clone(), tls_server: None },
                );
                // Envoy's codec is AUTO on gateways: HTTP/2 with prior knowledge works on
                // plain ports too (h2c, for gRPC without TLS).
                let mut options = server_options(&self.edge);
                options.h2c = true;
                proxy.server_options = Some(options);
                let proxy: Arc<Proxy> = Arc::new(proxy);
                let own = self.config.own_request_loop.then(|| MeshProxy {
                    port,
                    shared: self.shared.clone(),
                    tls_server: None,
                });
                (Arc::new(HttpHandler { proxy, edge: self.edge.clone(), own }), None)
            }
            Protocol::Https => {
                let tls = Arc::new(TlsHandler::new(port, self.shared.clone(), self.conf.clone(), self.edge.clone()));
                tls.sync();
                (tls.clone(), Some(tls))
            }
            Protocol::Tcp => (Arc::new(TcpHandler { port, shared: self.shared.clone() }), None),
        }
    }

    /// Opens listeners for new ports, closes those no snapshot listener needs any more, and
    /// swaps handlers where a port's protocol changed. Listeners whose port and protocol stay
    /// are not touched. Returns true when every wanted port is open.
    fn sync(&mut self, snapshot: &Snapshot) -> bool {
        let wanted: BTreeMap<u16, Protocol> = snapshot.listeners.iter().map(|l| (l.port, l.protocol)).collect();
        let gone: Vec<u16> = self.running.keys().filter(|p| !wanted.contains_key(p)).copied().collect();
        for port in gone {
            if let Some(r) = self.running.remove(&port) {
                tracing::info!(port, addr = %r.acceptor.addr, "listener closed");
                r.acceptor.stop();
            }
        }
        for (&port, &protocol) in &wanted {
            if let Some(r) = self.running.get_mut(&port) {
                if r.protocol == protocol {
                    for tls in &r.tls {
                        tls.sync();
                    }
                    continue;
                }
            }
            let (handlers, tls) = self.handlers(port, protocol);
            if let Some(r) = self.running.get_mut(&port) {
                tracing::info!(port, ?protocol, "listener protocol changed");
                r.acceptor.set_handlers(handlers);
                r.protocol = protocol;
                r.tls = tls;
                continue;
            }
            let addr = self.config.listen_addr(port);
            let (shutdown, connections) = (self.shutdown.clone(), self.connections.clone());
            match listeners::start_on_workers(addr, &self.workers, handlers, shutdown, connections) {
                Ok(acceptor) => {
                    tracing::info!(port, ?protocol, addr = %acceptor.addr, workers = self.workers.len(), "listener open");
                    self.running.insert(port, Running { acceptor, protocol, tls });
                }
                // A port we cannot bind must not take the others down; it is retried every
                // second and readiness stays false until it opens.
                Err(e) => tracing::error!(port, %addr, error = %e, "cannot listen for gateway port; retrying"),
            }
        }
        self.shared.metrics.listeners.set(self.running.len() as i64);
        wanted.keys().all(|p| self.running.contains_key(p))
    }

    /// Stops accepting everywhere and tells idle keep-alive connections to close.
    async fn stop_accepting(&mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            let handlers = r.acceptor.handlers();
            r.acceptor.stop();
            for handler in handlers {
                handler.cleanup().await;
            }
        }
    }
}

pub async fn run(config: Config) -> Result<()> {
    let config = Arc::new(config);
    let identity = &config.identity;
    let metrics = Arc::new(Metrics::new(SourceIdentity {
        workload: identity.workload.clone(),
        namespace: identity.namespace.clone(),
        app: identity.labels.get("app").cloned().unwrap_or_else(|| "istio-ingressgateway".into()),
        version: "unknown".into(),
    }));
    let access_log =
        AccessLog::start(&config.access_log, metrics.access_log_dropped.clone()).context("opening the access log")?;
    let current = Arc::new(Current::with_unenforced_policy(config.deny_unenforced_policies));
    let tracer = Tracer::start(
        &config.tracing,
        TraceIdentity { workload: identity.workload.clone(), namespace: identity.namespace.clone() },
        metrics.trace.clone(),
    )
    .context("starting tracing")?
    .map(Arc::new);
    let shared = Arc::new(Shared {
        current: current.clone(),
        metrics: metrics.clone(),
        access_log,
        tracer: tracer.clone(),
        max_request_header_bytes: config.limits.max_request_header_bytes,
        mirroring: crate::proxy::mirror::Mirroring::new(config.limits.max_mirrors_in_flight),
    });
    let draining = Arc::new(AtomicBool::new(false));
    let serving = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let limit = connection_limit(&config.limits);
    metrics.connection_limit.set(limit as i64);
    let connections = Connections::new(
        metrics.downstream_active.clone(),
        metrics.downstream_total.clone(),
        limit,
        Some(metrics.overload.clone()),
    );

    // Status, metrics and admin servers come up first so probes answer (503) while loading.
    let mut side = Vec::new();
    for (role, addr) in
        [(Role::Status, config.status_addr), (Role::Metrics, config.metrics_addr), (Role::Admin, config.admin_addr)]
    {
        let app = Arc::new(AdminApp {
            role,
            current: current.clone(),
            metrics: metrics.clone(),
            serving: serving.clone(),
            draining: draining.clone(),
        });
        // Not limited: the descriptors the data ports' limit leaves in reserve serve these, so
        // probes and scrapes answer while the data ports are full.
        let side_conns = Connections::new(
            prometheus::IntGauge::new("side_active", "-")?,
            prometheus::IntCounter::new("side_total", "-")?,
            usize::MAX,
            None,
        );
        let acceptor = listeners::start(addr, Arc::new(AppHandler(app)), shutdown_rx.clone(), side_conns)
            .with_context(|| format!("listening on {addr} for {role:?}"))?;
        tracing::info!(?role, addr = %acceptor.addr, "admin listener open");
        side.push(acceptor);
    }

    let (applied, applied_rx) = watch::channel(0u64);
    let mut snapshots = config_source::start(&config, metrics.clone(), applied_rx).await?;

    // Pingora's max_retries counts attempts. Retries are decided by the route's policy (see
    // proxy/retry.rs); this only bounds them, with room for Pingora's retries of requests
    // that failed on a stale pooled connection.
    let conf = ServerConf { max_retries: 64, ..Default::default() };
    let workers = Workers::start(config.threads.unwrap_or_else(workers::default_count), &metrics.worker_connections)
        .context("starting worker threads")?;
    tracing::info!(workers = workers.len(), "data-plane workers started");
    let mut data = DataPlane {
        config: config.clone(),
        conf: Arc::new(conf),
        shared,
        shutdown: shutdown_rx.clone(),
        connections: connections.clone(),
        workers: workers.refs(),
        edge: Edge {
            head: HeadLimits {
                header_timeout: config.limits.request_header_timeout,
                idle_timeout: config.limits.idle_timeout,
                max_head_bytes: config.limits.max_request_header_bytes,
            },
            counters: metrics.guard.clone(),
            body_read_timeout: config.limits.body_read_timeout,
        },
        running: BTreeMap::new(),
    };

    let mut retry = tokio::time::interval(Duration::from_secs(1));
    let mut all_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                if snapshot.version == 0 {
                    continue;
                }
                // Compile off the async workers: large configs must not stall requests.
                let cur = current.clone();
                let snap = snapshot.clone();
                let started = std::time::Instant::now();
                // The previous runtime is freed there too; give its pages back.
                let version = tokio::task::spawn_blocking(move || {
                    let version = cur.swap(snap);
                    meshgate_model::memory::release_freed();
                    version
                })
                .await?;
                let compile_ms = started.elapsed().as_millis() as u64;
                all_open = data.sync(&snapshot);
                serving.store(all_open, Ordering::Release);
                applied.send_replace(version);
                metrics.config_version.set(version as i64);
                metrics.config_swaps.inc();
                crate::tls::report_expiry(&current.load(), &metrics.certificate_expiry);
                tracing::info!(version, listeners = snapshot.listeners.len(), clusters = snapshot.clusters.len(), compile_ms, "snapshot serving");
            }
            _ = retry.tick(), if !all_open => {
                let snapshot = current.load().snapshot.clone();
                all_open = data.sync(&snapshot);
                serving.store(all_open, Ordering::Release);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    // Drain: fail readiness, stop accepting, close idle keep-alives, wait for in-flight work.
    tracing::info!(drain_seconds = config.drain.as_secs(), open = connections.count(), "draining");
    draining.store(true, Ordering::Release);
    let _ = shutdown_tx.send(true);
    data.stop_accepting().await;
    let drained = tokio::time::timeout(config.drain, connections.wait_idle()).await.is_ok();
    tracing::info!(drained, open = connections.count(), "exiting");
    for s in side {
        s.stop();
    }
    // Connections still open past the drain deadline end with their worker.
    let _ = tokio::task::spawn_blocking(move || workers.stop()).await;
    // Access log lines wait in per-thread buffers for the writer's next tick; write them now.
    let access_log = data.shared.access_log.clone();
    let _ = tokio::task::spawn_blocking(move || access_log.flush()).await;
    // Spans of the last requests would otherwise die with the process.
    if let Some(tracer) = tracer {
        let _ = tokio::task::spawn_blocking(move || tracer.flush(Duration::from_secs(2))).await;
    }
    Ok(())
}

/// Descriptors kept out of the data ports' connection limit: the admin ports, config files,
/// the controller or API server, log files and pooled upstream connections.
const DESCRIPTOR_RESERVE: u64 = 256;

/// The data ports' connection limit: `--max-connections`, else half of what the descriptor
/// limit leaves after the reserve (256, or a quarter of a smaller limit) (a proxied request holds an upstream connection too). The
/// soft descriptor limit is raised to the hard one first, as Go's runtime and Envoy's
/// deployments do: the soft limit of 1024 most shells start with would otherwise cap the
/// gateway at a few hundred clients.
fn connection_limit(limits: &crate::config::Limits) -> usize {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the descriptor limit; assuming 1024");
            1024
        }
    };
    let reserve = DESCRIPTOR_RESERVE.min(nofile / 4);
    let derived = (nofile.saturating_sub(reserve) / 2).max(1);
    let limit = limits.max_connections.unwrap_or(usize::try_from(derived).unwrap_or(usize::MAX));
    tracing::info!(descriptors = nofile, max_connections = limit, "downstream connection limit");
    limit
}
