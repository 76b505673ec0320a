//! Pure translation: `&Store` → `(Snapshot, Diagnostics)`.
//!
//! ```text
//!  Gateways (selected by labels) ──► servers by port ──► listeners
//!  VirtualServices (bound by `gateways` + host intersection) ──► virtual hosts ──► routes
//!  destinations + Services/ServiceEntries + DestinationRules ──► clusters ──► endpoints
//! ```
//! A resource with an error is left out whole; warnings leave it in.

mod actions;
pub mod clusters;
mod cors;
pub mod credentials;
mod delegates;
pub mod faults;
pub mod hosts;
mod mirrors;
pub mod policies;
pub mod retries;
mod routes;
pub mod rules;
pub mod servers;
pub mod services;
pub mod visibility;

use crate::by_name::hash;
use crate::diagnostics::{codes, Diagnostic, Diagnostics};
use crate::schema::istio::{GatewaySpec, Server};
use crate::schema::Kind;
use crate::snapshot::{Listener, Protocol, ServerInfo, Shared, Snapshot, VirtualHost};
use crate::store::{Resource, Store};
use meshgate_model::host::HostPattern;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Who this gateway instance is: Gateways select it by labels; `./host` means its namespace.
#[derive(Debug, Clone)]
pub struct Options {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
}

pub use meshgate_model::labels::parse as parse_labels;

impl Default for Options {
    /// istio-ingressgateway's identity, as the binaries' `--labels` and `--namespace` default.
    fn default() -> Self {
        use meshgate_model::labels::{parse, DEFAULT_GATEWAY_LABELS, DEFAULT_GATEWAY_NAMESPACE};
        Options {
            labels: parse(DEFAULT_GATEWAY_LABELS).unwrap_or_default(),
            namespace: DEFAULT_GATEWAY_NAMESPACE.to_string(),
        }
    }
}

/// One server of a selected Gateway, as seen while binding VirtualServices.
struct BoundServer<'a> {
    gateway: &'a Resource<GatewaySpec>,
    gateway_key: String,
    server: &'a Server,
    port: u16,
    kind: servers::ServerKind,
    tls: Option<crate::snapshot::ServerTls>,
    hosts: ServerHosts<'a>,
}

/// A server's `hosts` (patterns as `meshgate_model::host` reads them), split and lowercased
/// once per translation instead of once per VirtualService that binds to the server (a
/// Gateway may list thousands of hosts, each bound by its own VirtualService), and indexed by
/// exact name.
struct ServerHosts<'a> {
    /// (namespace filter, lowercase host) in the server's order.
    entries: Vec<(Option<&'a str>, String)>,
    /// Positions in `entries` of each exact host.
    exact: HashMap<String, Vec<usize>>,
    /// Positions of `*` and `*.suffix` hosts.
    wildcards: Vec<usize>,
}

impl<'a> ServerHosts<'a> {
    fn new(server: &'a Server, gateway_namespace: &'a str) -> ServerHosts<'a> {
        let mut out = ServerHosts { entries: Vec::new(), exact: HashMap::new(), wildcards: Vec::new() };
        for (i, entry) in server.hosts.iter().enumerate() {
            let (ns_filter, host) = hosts::split_server_host(entry, gateway_namespace);
            let host = host.to_ascii_lowercase();
            match HostPattern::parse(&host) {
                HostPattern::Exact(_) => out.exact.entry(host.clone()).or_default().push(i),
                HostPattern::Suffix(_) | HostPattern::Any => out.wildcards.push(i),
            }
            out.entries.push((ns_filter, host));
        }
        out
    }

    /// (entry, host) position pairs, in entry-then-host order, of every pair that may
    /// intersect: all pairs when a host is a wildcard, else only equal names and wildcard
    /// entries (an exact host meets an exact entry only when they are equal).
    fn candidates(&self, hosts: &[String]) -> Vec<(usize, usize)> {
        if hosts.iter().any(|h| !matches!(HostPattern::parse(h), HostPattern::Exact(_))) {
            return (0..self.entries.len()).flat_map(|e| (0..hosts.len()).map(move |h| (e, h))).collect();
        }
        let mut out = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            let exact = self.exact.get(host).map_or(&[][..], Vec::as_slice);
            out.extend(exact.iter().chain(&self.wildcards).map(|&e| (e, h)));
        }
        out.sort_unstable();
        out
    }
}

/// Translates the store into a snapshot (version 0; the publisher numbers it) and the
/// diagnostics of load + translation.
pub fn translate(store: &Store, options: &Options) -> (Snapshot, Diagnostics) {
    let (snapshot, diagnostics, _) = translate_reusing(store, options, None);
    (snapshot, diagnostics)
}

/// Per-VirtualService results of one translation, for the next translation to reuse.
///
/// Translating VirtualServices is most of a translation at 10k services, and a config edit
/// usually touches one. A VirtualService's result depends on itself, the rest of the store
/// (Gateways, Services, DestinationRules...) and the options; it also depends on the order of
/// credential lookups when it makes any. So a result is reused when the VirtualService is the
/// same object (shared metadata and spec), everything else in the store is the same objects
/// ([`Store::same_except_virtual_services`]), and its translation made no credential lookup
/// (those are translated again every time, in order, so lookups replay as in a full run).
/// A unit test checks the reusing translation equals a fresh one after all kinds of edits.
#[derive(Default)]
pub struct Reuse {
    /// By the address of the VirtualService's shared metadata: a result is only reused for
    /// the very same metadata object, and the entry keeps that object alive, so the address
    /// cannot name another one meanwhile. Cheaper than a `namespace/name` key per entry.
    /// Sorted by that address: a hash table of these 120-byte entries was 2 MB at 10k, half empty.
    entries: Vec<(usize, Reusable)>,
    /// How many of these results the translation that made them took from its predecessor.
    reused: usize,
    /// The service registry and the problems building it reported. Building it is a fifth of
    /// a reload at 10k services, and most edits leave its inputs alone
    /// ([`Store::same_registry_inputs`]).
    registry: Option<(Arc<services::Registry>, Vec<Diagnostic>)>,
    registry_reused: bool,
    /// The DestinationRule index and its problems, reused while the store's DestinationRules
    /// are the same map (checking 10k rules' policies is a twentieth of a reload).
    rules: Option<(Arc<rules::Rules>, Vec<Diagnostic>)>,
    rules_reused: bool,
}

struct Reusable {
    meta: Arc<crate::schema::ObjectMeta>,
    spec: Arc<crate::schema::istio::VirtualServiceSpec>,
    translated: Arc<routes::Translated>,
    /// Its diagnostics, before they are placed at the resource (origins are the current ones).
    problems: Vec<Diagnostic>,
}

impl Reuse {
    fn entry(&self, key: usize) -> Option<&Reusable> {
        self.entries.binary_search_by_key(&key, |(k, _)| *k).ok().map(|i| &self.entries[i].1)
    }

    /// How many VirtualService results this translation reused (for logs and tests).
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// Whether this translation took the DestinationRule index from its predecessor.
    pub fn rules_reused(&self) -> bool {
        self.rules_reused
    }

    /// Whether this translation took the service registry from its predecessor.
    pub fn registry_reused(&self) -> bool {
        self.registry_reused
    }
}

/// [`translate`], reusing what `previous` (the store of an earlier translation and that
/// translation's [`Reuse`]) allows; returns the [`Reuse`] of this translation.
pub fn translate_reusing(
    store: &Store,
    options: &Options,
    previous: Option<(&Store, &Reuse)>,
) -> (Snapshot, Diagnostics, Reuse) {
    let reusable = previous.filter(|(prev, _)| store.same_except_virtual_services(prev)).map(|(_, r)| r);
    let mut next = Reuse::default();
    let mut diagnostics = store.diagnostics.clone();
    let mut problems: Vec<Diagnostic> = Vec::new();

    let kept = previous.filter(|(prev, _)| store.same_registry_inputs(prev)).and_then(|(_, r)| r.registry.clone());
    next.registry_reused = kept.is_some();
    let (registry, found) = kept_or_built(kept, |found| services::Registry::build(store, &options.namespace, found));
    problems.extend(found.iter().cloned());
    next.registry = Some((registry.clone(), found));
    let kept = previous
        .filter(|(prev, _)| Arc::ptr_eq(&store.destination_rules, &prev.destination_rules))
        .and_then(|(_, r)| r.rules.clone());
    next.rules_reused = kept.is_some();
    let (rules, found) =
        kept_or_built(kept, |found| rules::Rules::build(store, &options.namespace, &options.labels, found));
    problems.extend(found.iter().cloned());
    next.rules = Some((rules.clone(), found));

    let mut creds = credentials::Credentials::new(store, &options.namespace);

    // Gateways: selected ones, servers grouped by port. Servers on one port must agree on
    // plain HTTP / TLS / TCP; the first fixes it and conflicting later ones are ignored (as
    // Istio does). A server whose TLS material is unusable is skipped with a warning so the
    // Gateway's other servers keep serving.
    let mut servers: Vec<BoundServer> = Vec::new();
    let mut port_class: BTreeMap<u16, (Protocol, String)> = BTreeMap::new();
    let gateways = crate::store::in_order(store.gateways.values());
    let mut known_gateways = HashMap::new();
    for gw in gateways {
        let key = format!("{}/{}", gw.namespace(), gw.meta.name);
        known_gateways.insert(key.clone(), selected(gw, options));
        if !selected(gw, options) {
            continue;
        }
        let mut local = Vec::new();
        let mut accepted = Vec::new();
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            // Port 0 would make the gateway listen on a port the kernel picks, which no
            // Service can target.
            let Some(port) = u16::try_from(server.port.number).ok().filter(|p| *p != 0) else {
                local.push(Diagnostic::error(
                    codes::SCHEMA,
                    format!("{field}.port.number"),
                    format!("{} is not a valid port (1-65535)", server.port.number),
                ));
                continue;
            };
            if server.hosts.is_empty() {
                local.push(Diagnostic::error(codes::SCHEMA, format!("{field}.hosts"), "at least one host is required"));
                continue;
            }
            let Some((kind, tls)) = servers::classify(server, &field, &key, &mut creds, &mut local) else { continue };
            let class = kind.port_class();
            let claimed = port_class.get(&port).cloned().or_else(|| {
                accepted.iter().find(|a: &&BoundServer| a.port == port).map(|a| (a.kind.port_class(), key.clone()))
            });
            if let Some((other, other_gw)) = claimed {
                // Istio merges servers on a port when they are HTTP or TLS (told apart by SNI);
                // a second plain TCP server has nothing to be told apart by and is skipped.
                if other == class && class == Protocol::Tcp {
                    local.push(Diagnostic::warning(
                        codes::CONFLICT,
                        format!("{field}.port"),
                        format!("port {port} already has a TCP server (gateway {other_gw}); this server is ignored, as Istio keeps the first"),
                    ));
                    continue;
                }
                if other != class {
                    local.push(Diagnostic::warning(
                        codes::CONFLICT,
                        format!("{field}.port"),
                        format!(
                            "port {port} is already served as {} by gateway {other_gw}; this {} server ({}) is ignored",
                            class_name(other),
                            server.port.protocol,
                            class_name(class)
                        ),
                    ));
                    continue;
                }
            }
            if server.bind.is_some() {
                local.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.bind"),
                    "bind is not supported; the gateway listens on its port map",
                ));
            }
            let hosts = ServerHosts::new(server, gw.namespace());
            accepted.push(BoundServer { gateway: gw, gateway_key: key.clone(), server, port, kind, tls, hosts });
        }
        let rejected = local.iter().any(Diagnostic::is_error);
        problems.extend(local.into_iter().map(|d| d.at(&gw.origin, Some(gw.reference(Kind::Gateway)))));
        if rejected {
            known_gateways.insert(key, false);
            continue;
        }
        for s in accepted {
            port_class.entry(s.port).or_insert((s.kind.port_class(), key.clone()));
            servers.push(s);
        }
    }

    // Listeners: one per port, with the TLS servers in Gateway order.
    let mut listeners: BTreeMap<u16, Listener> = BTreeMap::new();
    for s in &servers {
        let protocol = s.kind.port_class();
        let prefix = match protocol {
            Protocol::Tcp => "tcp",
            Protocol::Https => "https",
            Protocol::Http => "http",
        };
        let listener = listeners.entry(s.port).or_insert_with(|| Listener {
            name: format!("{prefix}.{}", s.port),
            port: s.port,
            protocol,
            servers: Vec::new(),
            virtual_hosts: Vec::new(),
            tls: Vec::new(),
            l4_routes: Vec::new(),
        });
        listener.servers.push(ServerInfo {
            gateway: s.gateway_key.clone(),
            port_name: s.server.port.name.clone(),
            hosts: s.server.hosts.clone(),
        });
        if let Some(tls) = &s.tls {
            listener.tls.push(tls.clone());
        }
    }
    let mut vhosts: BTreeMap<u16, HostList> = BTreeMap::new();
    let mut clusters = BTreeMap::new();

    let virtual_services = gateway_order(store, &options.namespace);
    let mut servers_by_gateway: HashMap<String, Vec<&BoundServer>> = HashMap::new();
    for s in &servers {
        servers_by_gateway.entry(s.gateway_key.clone()).or_default().push(s);
    }
    // Delegates (VirtualServices without hosts) and the ones roots name.
    let mut delegates = HashMap::new();
    let mut delegated = std::collections::HashSet::new();
    let mut with_hosts = std::collections::HashSet::new();
    for vs in store.virtual_services.values() {
        if vs.spec.hosts.is_empty() {
            delegates.insert((vs.namespace(), vs.meta.name.as_str()), vs);
        } else {
            with_hosts.insert((vs.namespace(), vs.meta.name.as_str()));
        }
        for http in vs.spec.http.iter() {
            if let Some(d) = &http.rest().delegate {
                let ns = d.namespace.as_deref().unwrap_or(vs.namespace());
                delegated.insert((ns.to_string(), d.name.to_string()));
            }
        }
    }
    let ctx = routes::Context {
        servers_by_gateway,
        known_gateways: &known_gateways,
        registry: &registry,
        rules: &rules,
        options,
        regexes: Default::default(),
        delegates,
        delegated,
        with_hosts,
    };
    for vs in virtual_services {
        let key = Arc::as_ptr(&vs.meta) as usize;
        let cached = reusable
            .and_then(|r| r.entry(key))
            .filter(|c| Arc::ptr_eq(&c.meta, &vs.meta) && Arc::ptr_eq(&c.spec, &vs.spec));
        // A result can be reused next time when it came from the cache or made no lookups.
        let (translated, local, keep) = match cached {
            Some(c) => {
                next.reused += 1;
                (c.translated.clone(), c.problems.clone(), true)
            }
            None => {
                let mut local = Vec::new();
                let uses = creds.uses;
                let translated = routes::translate_virtual_service(vs, &ctx, &mut creds, &mut local);
                // A root's routes depend on its delegates, a delegate's warning on the roots.
                let pure = creds.uses == uses && !translated.uses_delegates && !vs.spec.hosts.is_empty();
                (Arc::new(translated), local, pure)
            }
        };
        if keep {
            let entry = Reusable {
                meta: vs.meta.clone(),
                spec: vs.spec.clone(),
                translated: translated.clone(),
                problems: local.clone(),
            };
            next.entries.push((key, entry));
        }
        let rejected = local.iter().any(Diagnostic::is_error);
        problems.extend(local.into_iter().map(|d| d.at(&vs.origin, Some(vs.reference(Kind::VirtualService)))));
        if rejected {
            continue;
        }
        for (port, host) in &translated.bindings {
            let list = vhosts.entry(*port).or_default();
            match list.find(&host.name) {
                // Several VirtualServices for one host merge in creation order, as in Istio
                // (into a copy: the first one's host stays as its translation made it).
                Some(i) => {
                    let merged = Shared::make_mut(&mut list.hosts[i]);
                    merged.routes.extend(host.routes.iter().cloned());
                    // One server with httpsRedirect on the port makes the shared host redirect.
                    merged.https_redirect |= host.https_redirect;
                }
                None => list.push(host.clone()),
            }
        }
        for (port, route) in &translated.l4_routes {
            if let Some(l) = listeners.get_mut(port) {
                l.l4_routes.push(route.clone());
            }
        }
        clusters.extend(translated.clusters.iter().map(|c| (c.name.clone(), c.clone())));
    }
    // httpsRedirect: every host of such a server answers 301, bound or not (hosts that bound
    // VirtualServices add under it were marked while binding).
    for s in servers.iter().filter(|s| s.kind == servers::ServerKind::PlainHttp) {
        if !s.server.tls.as_ref().is_some_and(|t| t.https_redirect) {
            continue;
        }
        let list = vhosts.entry(s.port).or_default();
        for entry in &s.server.hosts {
            let domain = hosts::split_server_host(entry, s.gateway.namespace()).1.to_ascii_lowercase();
            let host = VirtualHost::new(&domain, s.port, Vec::new(), true);
            match list.find(&host.name) {
                Some(i) => Shared::make_mut(&mut list.hosts[i]).https_redirect = true,
                None => list.push(Shared::new(host)),
            }
        }
    }
    next.entries.sort_unstable_by_key(|(key, _)| *key);
    next.entries = crate::memory::exact(std::mem::take(&mut next.entries));
    for (port, list) in vhosts {
        if let Some(l) = listeners.get_mut(&port) {
            // Kept for as long as the snapshot serves: no room to grow.
            l.virtual_hosts = crate::memory::exact(list.hosts);
        }
    }

    // Listener and cluster TLS material, and problems found in Secrets.
    problems.append(&mut creds.secret_problems);
    let secrets = std::mem::take(&mut creds.secrets);
    diagnostics.extend(problems);
    let unenforced_policies = policies::unenforced(store, options, &mut diagnostics.items);
    let snapshot =
        Snapshot { version: 0, listeners: listeners.into_values().collect(), clusters, secrets, unenforced_policies };
    (snapshot, diagnostics, next)
}

/// A listener's virtual hosts in the order their VirtualServices were created, found by name
/// (`domain:port`) through an index of positions: no key copies for 10k hosts each reload.
#[derive(Default)]
struct HostList {
    hosts: Vec<Shared<VirtualHost>>,
    index: hashbrown::HashTable<usize>,
}

impl HostList {
    fn find(&self, name: &str) -> Option<usize> {
        self.index.find(hash(name), |&i| self.hosts[i].name == name).copied()
    }

    /// Adds a host whose name is not in the list yet.
    fn push(&mut self, host: Shared<VirtualHost>) {
        let hosts = &self.hosts;
        self.index.insert_unique(hash(&host.name), hosts.len(), |&i| hash(&hosts[i].name));
        self.hosts.push(host);
    }
}

/// A part of the translation kept from the previous one with the problems building it
/// reported, or built now.
/// An Istio duration field (`2s`, `0.5s`, `250ms`) in milliseconds, at least `min_ms`; a
/// duration past 49 days counts as 49 days (`u32` milliseconds). The error is the message
/// for the field's diagnostic.
pub(super) fn duration_ms(text: &str, min_ms: u64) -> Result<u32, String> {
    match meshgate_model::duration::parse_duration_ms(text) {
        Some(ms) if ms >= min_ms => Ok(u32::try_from(ms).unwrap_or(u32::MAX)),
        Some(_) => Err(format!("duration must be at least {min_ms}ms")),
        None => Err(format!("invalid duration {text:?}; write e.g. \"2s\" or \"500ms\"")),
    }
}

/// Istio's `Percent` as Envoy's fraction per million; the error completes "… percentage".
pub(super) fn per_million(p: crate::schema::istio::Percent) -> Result<u32, String> {
    match (0.0..=100.0).contains(&p.value) {
        true => Ok((p.value * 10_000.0).round() as u32),
        false => Err(format!("{} is not in range 0..100", p.value)),
    }
}

fn kept_or_built<T>(
    kept: Option<(Arc<T>, Vec<Diagnostic>)>,
    build: impl FnOnce(&mut Vec<Diagnostic>) -> T,
) -> (Arc<T>, Vec<Diagnostic>) {
    kept.unwrap_or_else(|| {
        let mut found = Vec::new();
        (Arc::new(build(&mut found)), found)
    })
}

/// VirtualServices in the order a gateway in `consumer` takes them, which is the order their
/// routes are appended in for a shared host: those of its own namespace exported to it by
/// name (or `.`), then those of other namespaces exported to it by name, then those exported
/// to all; each group oldest first, as Istio lists them for a gateway. Ones not exported to
/// `consumer` come last; they do not bind (the translation says so).
fn gateway_order<'a>(store: &'a Store, consumer: &str) -> Vec<&'a Resource<crate::schema::istio::VirtualServiceSpec>> {
    let mut list = crate::store::in_order(store.virtual_services.values());
    let group = |vs: &Resource<crate::schema::istio::VirtualServiceSpec>| {
        let export_to = &vs.spec.export_to;
        let named = |e: &String| e == consumer || (e == "." && vs.namespace() == consumer);
        if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
            2
        } else if !export_to.iter().any(named) {
            3
        } else if vs.namespace() == consumer {
            0
        } else {
            1
        }
    };
    // Stable: creation order within each group.
    list.sort_by_key(|vs| group(vs));
    list
}

/// A port class as the messages name it.
fn class_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "TLS",
        Protocol::Tcp => "TCP",
    }
}

/// A Gateway applies when its selector is a subset of this instance's labels.
fn selected(gw: &Resource<GatewaySpec>, options: &Options) -> bool {
    gw.spec.selector.iter().all(|(k, v)| options.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
