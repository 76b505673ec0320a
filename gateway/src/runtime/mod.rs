//! The snapshot compiled for the request path: host tables, matchers, weighted destinations
//! and clusters with load-balancer state. Built once per snapshot, published with one
//! `ArcSwap::store`; requests only `load()`.

pub mod cluster;
pub mod matcher;

use arc_swap::ArcSwap;
use cluster::ClusterRuntime;
use controller::snapshot::{RouteAction, Snapshot};
use matcher::{CompiledMatch, RequestView};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Route {
    pub name: String,
    pub virtual_service: String,
    matches: Vec<CompiledMatch>,
    /// (cluster, cumulative weight) for a binary search over one random number.
    destinations: Vec<(Arc<ClusterRuntime>, u32)>,
    total_weight: u32,
    pub timeout: Option<Duration>,
}

impl Route {
    pub fn matches(&self, req: &RequestView) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// Weighted choice among the destinations.
    pub fn pick_cluster(&self) -> Option<&Arc<ClusterRuntime>> {
        match self.destinations.len() {
            0 => None,
            1 => Some(&self.destinations[0].0),
            _ => {
                let r = fastrand::u32(0..self.total_weight.max(1));
                let i = self.destinations.partition_point(|(_, cum)| *cum <= r);
                self.destinations.get(i).map(|(c, _)| c)
            }
        }
    }
}

pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Arc<Route>>,
}

/// Host → virtual host: exact names, then the longest `*.suffix`, then `*` (Envoy's order).
#[derive(Default)]
pub struct HostTable {
    exact: HashMap<String, Arc<VirtualHost>>,
    /// Suffix including the leading dot, longest first.
    wildcards: Vec<(String, Arc<VirtualHost>)>,
    any: Option<Arc<VirtualHost>>,
}

impl HostTable {
    /// `host` must be lowercase and without port.
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualHost>> {
        if let Some(v) = self.exact.get(host) {
            return Some(v);
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
            .map(|(_, v)| v)
            .or(self.any.as_ref())
    }
}

pub struct Listener {
    pub port: u16,
    pub name: String,
    pub hosts: HostTable,
}

pub struct Runtime {
    pub snapshot: Arc<Snapshot>,
    pub listeners: HashMap<u16, Listener>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
}

impl Runtime {
    pub fn empty() -> Runtime {
        Runtime { snapshot: Arc::new(Snapshot::default()), listeners: HashMap::new(), clusters: HashMap::new() }
    }

    /// Compiles a snapshot, reusing unchanged clusters from `previous` (their balancer state
    /// carries over). Regexes were validated by the controller; one that still fails to
    /// compile drops its route with an error log rather than failing the swap.
    pub fn compile(snapshot: Arc<Snapshot>, previous: Option<&Runtime>) -> Runtime {
        let mut clusters = HashMap::new();
        for (name, def) in &snapshot.clusters {
            let reused = previous.and_then(|p| p.clusters.get(name)).filter(|c| c.definition == *def).cloned();
            clusters.insert(name.clone(), reused.unwrap_or_else(|| Arc::new(ClusterRuntime::compile(def))));
        }
        let mut listeners = HashMap::new();
        for l in &snapshot.listeners {
            let mut hosts = HostTable::default();
            for vh in &l.virtual_hosts {
                let routes = vh.routes.iter().filter_map(|r| compile_route(r, &clusters)).map(Arc::new).collect();
                let compiled = Arc::new(VirtualHost { name: vh.name.clone(), routes });
                for domain in &vh.domains {
                    if domain == "*" {
                        hosts.any = Some(compiled.clone());
                    } else if let Some(suffix) = domain.strip_prefix('*') {
                        hosts.wildcards.push((suffix.to_string(), compiled.clone()));
                    } else {
                        hosts.exact.insert(domain.clone(), compiled.clone());
                    }
                }
            }
            hosts.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            listeners.insert(l.port, Listener { port: l.port, name: l.name.clone(), hosts });
        }
        Runtime { snapshot, listeners, clusters }
    }
}

fn compile_route(r: &controller::snapshot::Route, clusters: &HashMap<String, Arc<ClusterRuntime>>) -> Option<Route> {
    let matches = match r.matches.iter().map(CompiledMatch::compile).collect::<Result<Vec<_>, _>>() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(route = r.name, error = %e, "route dropped: matcher does not compile");
            return None;
        }
    };
    let RouteAction::Route { destinations } = &r.action;
    let mut cumulative = 0u32;
    let mut out = Vec::new();
    for d in destinations {
        if d.weight == 0 {
            continue;
        }
        let Some(c) = clusters.get(&d.cluster) else { continue };
        cumulative = cumulative.saturating_add(d.weight);
        out.push((c.clone(), cumulative));
    }
    Some(Route {
        name: r.name.clone(),
        virtual_service: r.virtual_service.clone(),
        matches,
        destinations: out,
        total_weight: cumulative,
        timeout: r.timeout_ms.map(Duration::from_millis),
    })
}

/// The currently served runtime, swapped atomically.
pub struct Current {
    inner: ArcSwap<Runtime>,
}

impl Current {
    pub fn new() -> Current {
        Current { inner: ArcSwap::from_pointee(Runtime::empty()) }
    }

    pub fn load(&self) -> Arc<Runtime> {
        self.inner.load_full()
    }

    /// Compiles and publishes a snapshot; returns the new version.
    pub fn swap(&self, snapshot: Arc<Snapshot>) -> u64 {
        let previous = self.inner.load_full();
        let version = snapshot.version;
        let next = Runtime::compile(snapshot, Some(&previous));
        self.inner.store(Arc::new(next));
        version
    }

    pub fn version(&self) -> u64 {
        self.inner.load().snapshot.version
    }
}

impl Default for Current {
    fn default() -> Self {
        Self::new()
    }
}
