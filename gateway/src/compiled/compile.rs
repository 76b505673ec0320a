//! Snapshot → runtime: host tables, compiled routes and TLS servers, and clusters whose
//! load-balancer state survives the swap when their definition did not change.

use super::headers::CompiledEdits;
use super::rewrite::CompiledRewrite;
use super::*;

impl Runtime {
    /// Compiles a snapshot, reusing unchanged clusters from `previous` (their balancer state
    /// carries over). Regexes were validated by the controller; one that still fails to
    /// compile drops its route with an error log rather than failing the swap.
    pub fn compile(snapshot: Arc<Snapshot>, previous: Option<&Runtime>) -> Runtime {
        let mut clusters = Clusters::default();
        let mut reused_clusters = 0;
        for (name, def) in &snapshot.clusters {
            let secrets = ClusterRuntime::referenced_secrets(def, &snapshot.secrets);
            let reused = previous
                .and_then(|p| p.clusters.get(name))
                .filter(|c| c.definition == *def && c.secrets == secrets)
                .cloned();
            reused_clusters += usize::from(reused.is_some());
            let compiled = reused.unwrap_or_else(|| Arc::new(ClusterRuntime::compile(def, &snapshot.secrets)));
            clusters.insert(compiled, true);
        }
        // Every cluster, by name, is the previous compile's: routes compiled against them
        // still point at the right ones, so an unchanged virtual host needs no check of its
        // destinations (10k of them at scale, a string lookup per destination).
        let same_clusters =
            previous.is_some_and(|p| p.clusters.len() == clusters.len()) && reused_clusters == clusters.len();
        let mut listeners = HashMap::default();
        let mut regexes = RegexCache::default();
        for l in &snapshot.listeners {
            let mut hosts = HostTable::default();
            let previous_hosts = previous.and_then(|p| p.listeners.get(&l.port)).map(|l| &l.virtual_hosts);
            let mut virtual_hosts = ByName::with_capacity(l.virtual_hosts.len());
            for vh in &l.virtual_hosts {
                let kept = previous_hosts
                    .and_then(|hosts| hosts.get(&vh.name))
                    .filter(|c| c.definition == *vh && (same_clusters || c.uses_clusters_of(vh, &clusters)));
                let compiled = match kept {
                    Some(c) if Shared::is(&c.definition, vh) => c.clone(),
                    // Equal but not shared (a host two VirtualServices make is built anew by
                    // each translation): the compiled routes serve, the new definition is kept.
                    Some(c) => Arc::new(VirtualHost {
                        definition: vh.clone(),
                        routes: c.routes.clone(),
                        https_redirect: c.https_redirect,
                    }),
                    None => {
                        let routes: Vec<_> = vh
                            .routes
                            .iter()
                            .filter_map(|r| compile_route(r, &clusters, &mut regexes))
                            .map(Arc::new)
                            .collect();
                        Arc::new(VirtualHost {
                            definition: vh.clone(),
                            routes: meshgate_model::memory::boxed(routes),
                            https_redirect: vh.https_redirect,
                        })
                    }
                };
                virtual_hosts.insert(compiled.clone(), true);
                for domain in &vh.domains {
                    hosts.insert(domain, compiled.clone());
                }
            }
            let previous_listener = previous.and_then(|p| p.listeners.get(&l.port));
            let tls = l.tls.iter().filter_map(|t| compile_tls(t, &snapshot, previous_listener)).collect();
            let l4_routes = l
                .l4_routes
                .iter()
                .map(|r| L4Route {
                    name: r.name.clone(),
                    passthrough: r.passthrough,
                    sni: r.sni_hosts.iter().collect(),
                    port: r.port,
                    server: r.server.clone(),
                    destinations: Destinations::compile(&r.destinations, &clusters),
                })
                .collect();
            listeners.insert(l.port, Listener { port: l.port, hosts, virtual_hosts, tls, l4_routes });
        }
        Runtime { snapshot, listeners, clusters, deny: None }
    }
}

impl VirtualHost {
    /// The compiled routes point at exactly the clusters `def` resolves to now (a changed
    /// cluster is a new `Arc`, so routes compiled against the old one must be rebuilt).
    fn uses_clusters_of(&self, def: &meshgate_model::snapshot::VirtualHost, clusters: &Clusters) -> bool {
        // A route that did not compile was left out; then the pairing below does not hold.
        self.routes.len() == def.routes.len()
            && self.routes.iter().zip(&def.routes).all(|(compiled, route)| {
                compiled.destinations.same_as(route.action.destinations(), clusters)
                    && compiled.mirrors.len() == route.mirrors.len()
                    && compiled
                        .mirrors
                        .iter()
                        .zip(&route.mirrors)
                        .all(|(c, m)| clusters.get(&m.cluster).is_some_and(|now| Arc::ptr_eq(now, &c.cluster)))
            })
    }
}

fn compile_route(
    r: &Shared<meshgate_model::snapshot::Route>,
    clusters: &Clusters,
    regexes: &mut RegexCache,
) -> Option<Route> {
    // Collecting through `Result` reserves room for four; runtimes keep one per route.
    let matches = match r.matches.iter().map(|m| CompiledMatch::compile(m, regexes)).collect::<Result<Vec<_>, _>>() {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(route = r.name.as_str(), error = %e, "route dropped: matcher does not compile");
            return None;
        }
    };
    let rewrite = match r.rewrite.as_deref().map(|rw| CompiledRewrite::compile(rw, regexes)).transpose() {
        Ok(rw) => rw.map(Box::new),
        Err(e) => {
            tracing::error!(route = r.name.as_str(), error = %e, "route dropped: rewrite does not compile");
            return None;
        }
    };
    let headers = match r.headers.as_deref().map(CompiledEdits::compile).transpose() {
        Ok(h) => h.map(Arc::new),
        Err(e) => {
            tracing::error!(route = r.name.as_str(), error = %e, "route dropped: headers do not compile");
            return None;
        }
    };
    let cors = match r.cors.as_deref().map(|c| super::cors::CompiledCors::compile(c, regexes)).transpose() {
        Ok(c) => c.map(Box::new),
        Err(e) => {
            tracing::error!(route = r.name.as_str(), error = %e, "route dropped: corsPolicy does not compile");
            return None;
        }
    };
    // A mirror whose cluster is not in the snapshot cannot be sent; the translation always
    // adds it, so this only guards the contract.
    let mirrors = r
        .mirrors
        .iter()
        .filter_map(|m| {
            clusters.get(&m.cluster).map(|c| MirrorRuntime { cluster: c.clone(), per_million: m.per_million })
        })
        .collect();
    Some(Route {
        definition: r.clone(),
        mirrors,
        cors,
        direct_body: match &r.action {
            meshgate_model::snapshot::RouteAction::DirectResponse(d) => {
                d.body.as_deref().map(bytes::Bytes::copy_from_slice)
            }
            _ => None,
        },
        headers,
        matches: meshgate_model::memory::boxed(matches),
        destinations: Destinations::compile(r.action.destinations(), clusters),
        rewrite,
        retry: super::retry_policy::CompiledRetry::compile(&r.retries),
        log_name: OnceLock::new(),
    })
}

/// Builds one TLS server. If its material does not build, the previous compiled version of
/// the same server (same name) keeps serving; without one the server is left out.
fn compile_tls(def: &ServerTls, snapshot: &Snapshot, previous: Option<&Listener>) -> Option<Arc<TlsServer>> {
    let hosts: HostPatterns = def.hosts.iter().collect();
    if def.mode == ServerTlsMode::Passthrough {
        return Some(Arc::new(TlsServer { def: def.clone(), hosts, acceptor: None, served: Vec::new() }));
    }
    match crate::tls::server_config(def, &snapshot.secrets) {
        Ok(built) => Some(Arc::new(TlsServer {
            def: def.clone(),
            hosts,
            acceptor: Some(Arc::new(pingora_core::listeners::tls::Acceptor::from_server_config(built.config))),
            served: built.served,
        })),
        Err(e) => {
            let kept = previous.and_then(|l| l.tls.iter().find(|t| t.def.server == def.server)).cloned();
            tracing::error!(server = def.server, error = %e, kept_previous = kept.is_some(), "TLS server unusable");
            kept
        }
    }
}
