//! The snapshot compiled for the request path: host tables, matchers, weighted destinations
//! and clusters with load-balancer state. Built once per snapshot, published with one
//! `ArcSwap::store`; requests only `load()`.

pub(crate) mod cluster;
mod compile;
pub(crate) mod cors;
mod current;
pub(crate) mod headers;
pub(crate) mod matcher;
pub(crate) mod retry_policy;
pub(crate) mod rewrite;

pub(crate) use current::Current;

use crate::telemetry::access_log::{Prepared, RouteName};
use cluster::ClusterRuntime;
use matcher::{CompiledMatch, RegexCache, RequestView};
use meshgate_model::by_name::{ByName, Named};
use meshgate_model::host::HostMap;
use meshgate_model::snapshot::{ServerTls, ServerTlsMode, Shared, Snapshot, WeightedCluster};
// foldhash, not SipHash: these maps are rebuilt on every compile (20k clusters, 10k hosts at
// scale) and the host table is looked up on every request; their keys come from the config.
use foldhash::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Weighted destinations: (cluster, cumulative weight) for a binary search over one random
/// number.
#[derive(Default)]
pub(crate) struct Destinations {
    clusters: Vec<(Arc<ClusterRuntime>, u32)>,
    total_weight: u32,
    /// Each destination's own `headers`, parallel to `clusters`; `None` when no destination
    /// has any (nearly every route).
    headers: Option<Box<[Option<Arc<headers::CompiledEdits>>]>>,
}

impl Destinations {
    fn compile(destinations: &[WeightedCluster], clusters: &Clusters) -> Destinations {
        let mut cumulative = 0u32;
        // Exact size: kept for as long as the route serves (pushed into an empty vector, one or
        // two destinations took room for four, 1 MB at 10k services).
        let mut out = Vec::with_capacity(destinations.len());
        let mut edits = Vec::new();
        for d in destinations.iter().filter(|d| d.weight > 0) {
            let Some(c) = clusters.get(&d.cluster) else { continue };
            cumulative = cumulative.saturating_add(d.weight);
            out.push((c.clone(), cumulative));
            edits.push(d.headers.as_deref().and_then(|h| match headers::CompiledEdits::compile(h) {
                Ok(compiled) => Some(Arc::new(compiled)),
                Err(e) => {
                    tracing::error!(cluster = &*d.cluster, error = %e, "destination headers ignored: they do not compile");
                    None
                }
            }));
        }
        out = meshgate_model::memory::exact(out);
        let headers = edits.iter().any(Option::is_some).then(|| edits.into_boxed_slice());
        Destinations { clusters: out, total_weight: cumulative, headers }
    }

    /// True when compiling `destinations` against `clusters` would give these destinations:
    /// the same compiled clusters (by pointer) in the same order. Weights come with the
    /// definition, which the caller has compared already.
    fn same_as(&self, destinations: &[WeightedCluster], clusters: &Clusters) -> bool {
        let mut now = destinations.iter().filter(|d| d.weight > 0).filter_map(|d| clusters.get(&d.cluster));
        let mut compiled = self.clusters.iter().map(|(c, _)| c);
        loop {
            match (now.next(), compiled.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => continue,
                _ => return false,
            }
        }
    }

    /// Weighted choice among the destinations.
    pub(crate) fn pick(&self) -> Option<&Arc<ClusterRuntime>> {
        self.pick_index().map(|i| &self.clusters[i].0)
    }

    /// [`pick`](Self::pick), with the destination's own `headers`.
    pub(crate) fn pick_with_headers(&self) -> Option<(&Arc<ClusterRuntime>, Option<&Arc<headers::CompiledEdits>>)> {
        let i = self.pick_index()?;
        Some((&self.clusters[i].0, self.headers.as_ref().and_then(|h| h[i].as_ref())))
    }

    fn pick_index(&self) -> Option<usize> {
        match self.clusters.len() {
            0 => None,
            1 => Some(0),
            _ => {
                let r = fastrand::u32(0..self.total_weight.max(1));
                let i = self.clusters.partition_point(|(_, cum)| *cum <= r);
                (i < self.clusters.len()).then_some(i)
            }
        }
    }
}

pub(crate) struct Route {
    /// The snapshot's route: its names are not copied (they were ~4 MB of a 10k-service runtime).
    definition: Shared<meshgate_model::snapshot::Route>,
    /// A boxed slice, and the timeout read from the definition: 40k routes at 10k services,
    /// each in a 96-byte block instead of 128.
    matches: Box<[CompiledMatch]>,
    destinations: Destinations,
    /// `rewrite`, when the route has one.
    rewrite: Option<Box<rewrite::CompiledRewrite>>,
    /// `headers`, when the route has them.
    headers: Option<Arc<headers::CompiledEdits>>,
    /// `retries`, when the route has a policy of its own (the default and `attempts: 0` are
    /// shared statics).
    retry: Option<Box<retry_policy::CompiledRetry>>,
    /// `mirror` / `mirrors`, empty for nearly every route.
    mirrors: Box<[MirrorRuntime]>,
    /// `corsPolicy`, when the route has one.
    cors: Option<Box<cors::CompiledCors>>,
    /// A `directResponse`'s body, built once: each answer shares it.
    direct_body: Option<bytes::Bytes>,
    /// `route_name` of access log lines, encoded on first use (see `cluster::Telemetry`).
    log_name: OnceLock<Prepared<RouteName>>,
}

/// One of a route's mirrors, its cluster compiled.
pub(crate) struct MirrorRuntime {
    pub(crate) cluster: Arc<ClusterRuntime>,
    /// Share of requests copied, per million.
    pub(crate) per_million: u32,
}

impl Route {
    /// The upstream response timeout.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.definition.timeout_ms.map(|ms| Duration::from_millis(u64::from(ms)))
    }

    /// What the route does: proxy to its destinations, or answer itself.
    pub(crate) fn action(&self) -> &meshgate_model::snapshot::RouteAction {
        &self.definition.action
    }

    /// `route_name` of access log lines.
    pub(crate) fn log_name(&self) -> &Prepared<RouteName> {
        self.log_name.get_or_init(|| Prepared::string(&self.definition.name))
    }

    pub(crate) fn matches(&self, req: &RequestView) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }

    /// The route's `rewrite` for a request it matched: the new path and query (`None` when
    /// the path stays) and authority. Evaluates the match blocks again to learn which one
    /// matched (only routes with a rewrite pay for it).
    pub(crate) fn rewrite(&self, req: &RequestView) -> Option<(Option<String>, Option<http::HeaderValue>)> {
        let rewrite = self.rewrite.as_deref()?;
        Some((rewrite.path(req.path, self.matched_uri_part(req)), rewrite.authority.clone()))
    }

    /// What the first match block that matches `req` matched of its path.
    pub(crate) fn matched_uri_part(&self, req: &RequestView) -> rewrite::UriPart {
        self.matches.iter().find(|m| m.matches(req)).map_or(rewrite::UriPart::Root, |m| m.uri_part())
    }

    /// A destination by weight, with its own `headers`.
    pub(crate) fn pick_cluster(&self) -> Option<(&Arc<ClusterRuntime>, Option<&Arc<headers::CompiledEdits>>)> {
        self.destinations.pick_with_headers()
    }

    /// The route's own `headers`.
    pub(crate) fn headers(&self) -> Option<&Arc<headers::CompiledEdits>> {
        self.headers.as_ref()
    }

    /// The route's retry policy: its own, Istio's default, or none (`attempts: 0`).
    pub(crate) fn retry_policy(&self) -> &retry_policy::CompiledRetry {
        retry_policy::CompiledRetry::of(&self.definition.retries, self.retry.as_deref())
    }

    /// The route's `fault`, when it has one.
    pub(crate) fn fault(&self) -> Option<&meshgate_model::snapshot::Fault> {
        self.definition.fault.as_deref()
    }

    /// The route's mirrors (usually none).
    pub(crate) fn mirrors(&self) -> &[MirrorRuntime] {
        &self.mirrors
    }

    /// The route's `corsPolicy`, when it has one.
    pub(crate) fn cors(&self) -> Option<&cors::CompiledCors> {
        self.cors.as_deref()
    }

    /// The body of the route's `directResponse` (empty without one).
    pub(crate) fn direct_body(&self) -> bytes::Bytes {
        self.direct_body.clone().unwrap_or_default()
    }
}

/// A tcp or tls (passthrough) route.
pub(crate) struct L4Route {
    pub(crate) name: String,
    pub(crate) passthrough: bool,
    sni: HostPatterns,
    port: Option<u16>,
    /// The TLS-terminating server a tcp route belongs to (`ServerTls::server`).
    server: Option<String>,
    pub(crate) destinations: Destinations,
}

impl L4Route {
    /// `server`: the terminating TLS server the connection was handed to, `None` on a TCP port
    /// and for passthrough.
    pub(crate) fn matches(&self, passthrough: bool, sni: Option<&str>, server: Option<&str>, port: u16) -> bool {
        self.passthrough == passthrough
            && self.server.as_deref() == server
            && self.port.is_none_or(|p| p == port)
            && (!passthrough || self.sni.is_empty() || sni.is_some_and(|s| self.sni.find(s).is_some()))
    }
}

/// Exact names, `*.suffix` wildcards and `*`, for SNI and 421 checks.
pub(crate) type HostPatterns = HostMap<()>;

/// A TLS server of a listener, ready for handshakes.
pub(crate) struct TlsServer {
    pub(crate) def: ServerTls,
    pub(crate) hosts: HostPatterns,
    /// `None` for passthrough servers.
    pub(crate) acceptor: Option<Arc<pingora_core::listeners::tls::Acceptor>>,
    /// The certificates this server serves (none for passthrough).
    pub(crate) served: Vec<crate::tls::serving::Served>,
}

pub(crate) struct VirtualHost {
    /// The snapshot's host, to tell it unchanged on the next compile (by pointer, as the
    /// translation shares unchanged hosts between versions).
    definition: Shared<meshgate_model::snapshot::VirtualHost>,
    pub(crate) routes: Box<[Arc<Route>]>,
    /// `tls.httpsRedirect`: answer every request with a 301 to https.
    pub(crate) https_redirect: bool,
}

/// By `domain:port`.
impl Named for VirtualHost {
    fn name(&self) -> &str {
        &self.definition.name
    }
}

/// Host → virtual host: exact names, then the longest `*.suffix`, then `*` (Envoy's order).
pub(crate) type HostTable = HostMap<Arc<VirtualHost>>;

pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) hosts: HostTable,
    /// Compiled virtual hosts by name, so the next compile can reuse each one whose
    /// definition and clusters did not change.
    virtual_hosts: ByName<Arc<VirtualHost>>,
    /// TLS servers (HTTPS listeners), chosen by SNI.
    pub(crate) tls: Vec<Arc<TlsServer>>,
    pub(crate) l4_routes: Vec<L4Route>,
}

impl Listener {
    /// The TLS server for a ClientHello's SNI: exact name, then the longest wildcard, then a
    /// server for `*` (which also takes clients that send no SNI).
    pub(crate) fn select_tls(&self, sni: Option<&str>) -> Option<&Arc<TlsServer>> {
        let sni = sni.unwrap_or("");
        self.tls
            .iter()
            .filter_map(|s| s.hosts.find_ranked(sni).map(|(rank, _)| (rank, s)))
            .fold(None, |best: Option<(usize, &Arc<TlsServer>)>, (rank, s)| match best {
                Some((b, _)) if b >= rank => best,
                _ => Some((rank, s)),
            })
            .map(|(_, s)| s)
    }

    /// The first tcp or tls route for a connection; see [`L4Route::matches`].
    pub(crate) fn l4_route(&self, passthrough: bool, sni: Option<&str>, server: Option<&str>) -> Option<&L4Route> {
        self.l4_routes.iter().find(|r| r.matches(passthrough, sni, server, self.port))
    }
}

pub struct Runtime {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) listeners: HashMap<u16, Listener>,
    pub(crate) clusters: Clusters,
    /// Set while a security policy meshgate cannot enforce selects this gateway (and
    /// `--unenforced-policy deny`): every request is answered 403 and every TCP connection
    /// closed. Holds the access log's `response_code_details`.
    pub(crate) deny: Option<Box<str>>,
}

/// The compiled clusters, looked up by the name their definition holds.
pub(crate) type Clusters = ByName<Arc<ClusterRuntime>>;

impl Named for ClusterRuntime {
    fn name(&self) -> &str {
        &self.definition.name
    }
}

/// By name, for listings.
pub(crate) fn sorted(clusters: &Clusters) -> Vec<&Arc<ClusterRuntime>> {
    let mut all: Vec<_> = clusters.iter().collect();
    all.sort_by(|a, b| a.definition.name.cmp(&b.definition.name));
    all
}

impl Runtime {
    pub(crate) fn empty() -> Runtime {
        Runtime {
            snapshot: Arc::new(Snapshot::default()),
            listeners: HashMap::default(),
            clusters: Clusters::default(),
            deny: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use controller::source::files::load_text;
    use controller::store::Store;
    use controller::{translate, Options};

    fn snapshot(reviews_endpoint: &str) -> Arc<Snapshot> {
        let yaml = format!(
            r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: ["reviews.example.com"]
  gateways: ["istio-system/gw"]
  http: [{{route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: ["ratings.example.com"]
  gateways: ["istio-system/gw"]
  http: [{{match: [{{uri: {{regex: "/r/[0-9]+"}}}}], route: [{{destination: {{host: ratings.default.svc.cluster.local}}}}]}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: backends, namespace: default}}
spec:
  hosts: ["reviews.default.svc.cluster.local"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {reviews_endpoint}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: ["ratings.default.svc.cluster.local"]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 10.0.0.9}}]
"#
        );
        let mut store = Store::default();
        load_text(&mut store, &yaml, None);
        let (snapshot, diagnostics) = translate(&store, &Options::default());
        assert_eq!(diagnostics.errors(), 0, "{diagnostics:?}");
        Arc::new(snapshot)
    }

    fn vhost(runtime: &Runtime, host: &str) -> Arc<VirtualHost> {
        runtime.listeners[&80].hosts.exact(host).unwrap().clone()
    }

    fn same_routes(a: &Runtime, b: &Runtime, host: &str) -> bool {
        let (a, b) = (vhost(a, host), vhost(b, host));
        a.routes.len() == b.routes.len() && a.routes.iter().zip(b.routes.iter()).all(|(a, b)| Arc::ptr_eq(a, b))
    }

    #[test]
    fn unchanged_virtual_hosts_are_reused_and_changed_clusters_recompile_theirs() {
        let snap = snapshot("10.0.0.7");
        let first = Runtime::compile(snap.clone(), None);
        // The next version shares the hosts (as the translation shares unchanged ones): the
        // compiled hosts are the same.
        let next = Arc::new(Snapshot { version: 2, ..(*snap).clone() });
        let same = Runtime::compile(next, Some(&first));
        assert!(Arc::ptr_eq(&vhost(&first, "reviews.example.com"), &vhost(&same, "reviews.example.com")));
        assert!(Arc::ptr_eq(&vhost(&first, "ratings.example.com"), &vhost(&same, "ratings.example.com")));

        // Equal hosts translated anew: the compiled routes serve on, under the new definition
        // (the old one is not kept alive by the runtime).
        let equal = snapshot("10.0.0.7");
        let again = Runtime::compile(equal.clone(), Some(&same));
        assert!(same_routes(&same, &again, "reviews.example.com"));
        assert!(same_routes(&same, &again, "ratings.example.com"));
        let defined = equal.listeners[0].virtual_hosts.iter().find(|h| h.name == "ratings.example.com:80");
        assert!(Shared::is(&vhost(&again, "ratings.example.com").definition, defined.expect("the host")));

        // reviews' endpoints change: its cluster is new, so routes pointing at it are rebuilt
        // (they must not keep sending to the old endpoint list); ratings is untouched.
        let moved = Runtime::compile(snapshot("10.0.0.8"), Some(&again));
        assert!(!same_routes(&again, &moved, "reviews.example.com"));
        assert!(same_routes(&again, &moved, "ratings.example.com"));
        let route = &vhost(&moved, "reviews.example.com").routes[0];
        let (cluster, _) = route.pick_cluster().expect("a destination");
        assert_eq!(cluster.endpoints[0].addr.to_string(), "10.0.0.8:80");
    }
}
