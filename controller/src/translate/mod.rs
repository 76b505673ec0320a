//! Pure translation: `&Store` → `(Snapshot, Diagnostics)`.
//!
//! ```text
//!  Gateways (selected by labels) ──► servers by port ──► listeners
//!  VirtualServices (bound by `gateways` + host intersection) ──► virtual hosts ──► routes
//!  destinations + Services/ServiceEntries + DestinationRules ──► clusters ──► endpoints
//! ```
//! A resource with an error is left out whole; warnings leave it in.

pub mod clusters;
pub mod hosts;
mod routes;
pub mod services;

use crate::api::istio::{GatewaySpec, Server};
use crate::api::Kind;
use crate::diagnostics::{codes, Diagnostic, Diagnostics};
use crate::snapshot::{Listener, Protocol, ServerInfo, Snapshot, VirtualHost};
use crate::store::{Resource, Store};
use std::collections::{BTreeMap, HashMap};

/// Who this gateway instance is: Gateways select it by labels; `./host` means its namespace.
#[derive(Debug, Clone)]
pub struct Options {
    pub labels: BTreeMap<String, String>,
    pub namespace: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            labels: [("istio", "ingressgateway"), ("app", "istio-ingressgateway")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            namespace: "istio-system".to_string(),
        }
    }
}

/// One server of a selected Gateway, as seen while binding VirtualServices.
struct BoundServer<'a> {
    gateway: &'a Resource<GatewaySpec>,
    gateway_key: String,
    server: &'a Server,
    port: u16,
}

/// Translates the store into a snapshot (version 0; the publisher numbers it) and the
/// diagnostics of load + translation.
pub fn translate(store: &Store, options: &Options) -> (Snapshot, Diagnostics) {
    let mut diagnostics = store.diagnostics.clone();
    let mut problems: Vec<Diagnostic> = Vec::new();

    let registry = services::Registry::build(store, &mut problems);
    let rules = clusters::Rules::build(store, &mut problems);

    // Gateways: selected ones, servers grouped by port; the first server on a port fixes its
    // protocol and conflicting later ones are ignored (as Istio does).
    let mut servers: Vec<BoundServer> = Vec::new();
    let mut port_protocol: BTreeMap<u16, (String, String)> = BTreeMap::new();
    let mut gateways: Vec<&Resource<GatewaySpec>> = store.gateways.values().collect();
    gateways.sort_by_key(|g| g.order_key());
    let mut known_gateways = HashMap::new();
    for gw in gateways {
        let key = format!("{}/{}", gw.namespace, gw.meta.name);
        known_gateways.insert(key.clone(), selected(gw, options));
        if !selected(gw, options) {
            continue;
        }
        let mut local = Vec::new();
        let mut accepted = Vec::new();
        let mut accepted_here: Vec<(u16, String)> = Vec::new();
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let field = format!("spec.servers[{i}]");
            let Ok(port) = u16::try_from(server.port.number) else {
                local.push(Diagnostic::error(
                    codes::SCHEMA,
                    format!("{field}.port.number"),
                    format!("{} is not a valid port", server.port.number),
                ));
                continue;
            };
            if server.hosts.is_empty() {
                local.push(Diagnostic::error(codes::SCHEMA, format!("{field}.hosts"), "at least one host is required"));
                continue;
            }
            let protocol = server.port.protocol.to_ascii_uppercase();
            // The first server on a port fixes its protocol; conflicting later ones are
            // ignored, as Istio does. Checked before support so the conflict is reported.
            let claimed = port_protocol.get(&port).cloned().or_else(|| {
                accepted_here.iter().find(|(p, _)| *p == port).map(|(_, proto)| (proto.clone(), key.clone()))
            });
            if let Some((other_proto, other_gw)) = claimed {
                if other_proto != protocol {
                    local.push(Diagnostic::warning(
                        codes::CONFLICT,
                        format!("{field}.port"),
                        format!("port {port} is already served as {other_proto} by gateway {other_gw}; this {protocol} server is ignored"),
                    ));
                    continue;
                }
            }
            accepted_here.push((port, protocol.clone()));
            if protocol != "HTTP" {
                local.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.port.protocol"),
                    format!("protocol {:?} is not supported yet; server ignored", server.port.protocol),
                ));
                continue;
            }
            if server.tls.is_some() {
                local.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.tls"),
                    "TLS settings on a plain HTTP server are not supported yet, ignored",
                ));
            }
            if server.bind.is_some() {
                local.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.bind"),
                    "bind is not supported; the gateway listens on its port map",
                ));
            }
            accepted.push((port, protocol, server));
        }
        let rejected = local.iter().any(Diagnostic::is_error);
        problems.extend(local.into_iter().map(|d| d.at(&gw.origin, Some(gw.reference(Kind::Gateway)))));
        if rejected {
            known_gateways.insert(key, false);
            continue;
        }
        for (port, protocol) in accepted_here {
            port_protocol.entry(port).or_insert((protocol, key.clone()));
        }
        for (port, _, server) in accepted {
            servers.push(BoundServer { gateway: gw, gateway_key: key.clone(), server, port });
        }
    }

    // Listeners and virtual hosts.
    let mut listeners: BTreeMap<u16, Listener> = BTreeMap::new();
    for s in &servers {
        let listener = listeners.entry(s.port).or_insert_with(|| Listener {
            name: format!("http.{}", s.port),
            port: s.port,
            protocol: Protocol::Http,
            servers: Vec::new(),
            virtual_hosts: Vec::new(),
        });
        listener.servers.push(ServerInfo {
            gateway: s.gateway_key.clone(),
            port_name: s.server.port.name.clone(),
            hosts: s.server.hosts.clone(),
        });
    }
    let mut vhosts: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
    let mut clusters = BTreeMap::new();

    let mut virtual_services: Vec<_> = store.virtual_services.values().collect();
    virtual_services.sort_by_key(|v| v.order_key());
    for vs in virtual_services {
        let mut local = Vec::new();
        let translated =
            routes::translate_virtual_service(vs, &servers, &known_gateways, &registry, &rules, options, &mut local);
        let rejected = local.iter().any(Diagnostic::is_error);
        problems.extend(local.into_iter().map(|d| d.at(&vs.origin, Some(vs.reference(Kind::VirtualService)))));
        if rejected {
            continue;
        }
        for (port, domain, routes) in translated.bindings {
            let list = vhosts.entry(port).or_default();
            match list.iter_mut().find(|v| v.domains[0] == domain) {
                // Several VirtualServices for one host merge in creation order, as in Istio.
                Some(v) => v.routes.extend(routes),
                None => list.push(VirtualHost { name: format!("{domain}:{port}"), domains: vec![domain], routes }),
            }
        }
        clusters.extend(translated.clusters.into_iter().map(|c| (c.name.clone(), c)));
    }
    for (port, list) in vhosts {
        if let Some(l) = listeners.get_mut(&port) {
            l.virtual_hosts = list;
        }
    }

    diagnostics.extend(problems);
    let snapshot = Snapshot { version: 0, listeners: listeners.into_values().collect(), clusters };
    (snapshot, diagnostics)
}

/// A Gateway applies when its selector is a subset of this instance's labels.
fn selected(gw: &Resource<GatewaySpec>, options: &Options) -> bool {
    gw.spec.selector.iter().all(|(k, v)| options.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
