//! `proxy-config listeners|routes|clusters|endpoints|secrets`: a gateway's compiled view as
//! tables shaped like `istioctl proxy-config`, built from its admin endpoint's documents.

use super::table::Table;
use super::{CertificateInfo, EndpointStatus};
use crate::snapshot::{
    Cluster, HashAlgorithm, Listener, LoadBalancer, Protocol, Route, ServerTlsMode, Snapshot, StringMatch,
    WeightedCluster,
};

/// Narrowing like istioctl's `--port`, `--name`, `--fqdn`, `--subset`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub port: Option<u16>,
    pub name: Option<String>,
    pub fqdn: Option<String>,
    pub subset: Option<String>,
}

impl Filter {
    fn listener(&self, l: &Listener) -> bool {
        self.port.is_none_or(|p| p == l.port) && self.name.as_ref().is_none_or(|n| &l.name == n)
    }

    fn cluster(&self, c: &Cluster) -> bool {
        self.port.is_none_or(|p| p == c.port)
            && self.fqdn.as_ref().is_none_or(|f| c.service.host.contains(f.as_str()))
            && self.subset.as_ref().is_none_or(|s| c.subset.as_deref() == Some(s.as_str()))
    }

    fn cluster_name(&self, name: &str) -> bool {
        self.fqdn.as_ref().is_none_or(|f| name.contains(f.as_str()))
    }
}

pub fn listeners(snapshot: &Snapshot, filter: &Filter) -> Table {
    let mut t = Table::new(&["PORT", "PROTOCOL", "MATCH", "DESTINATION"]);
    for l in snapshot.listeners.iter().filter(|l| filter.listener(l)) {
        let protocol = protocol(l.protocol).to_string();
        match l.protocol {
            Protocol::Http => t.row(vec![l.port.to_string(), protocol, "ALL".into(), format!("Route: {}", l.name)]),
            Protocol::Https => {
                for tls in &l.tls {
                    let sni = format!("SNI: {}", tls.hosts.join(","));
                    let destination = match tls.mode {
                        ServerTlsMode::Passthrough => {
                            let routes =
                                l.l4_routes.iter().filter(|r| r.passthrough).map(|r| clusters(&r.destinations));
                            format!("Passthrough: {}", routes.collect::<Vec<_>>().join("; "))
                        }
                        _ if tls.http => format!("Route: {} ({})", l.name, tls_mode(tls.mode)),
                        _ => format!("TCP ({})", tls_mode(tls.mode)),
                    };
                    t.row(vec![l.port.to_string(), protocol.clone(), sni, destination]);
                }
            }
            Protocol::Tcp => {
                for r in &l.l4_routes {
                    t.row(vec![l.port.to_string(), protocol.clone(), "ALL".into(), clusters(&r.destinations)]);
                }
            }
        }
    }
    t
}

pub fn routes(snapshot: &Snapshot, filter: &Filter) -> Table {
    let mut t = Table::new(&["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE", "DESTINATION"]);
    for l in snapshot.listeners.iter().filter(|l| filter.listener(l)) {
        for vh in &l.virtual_hosts {
            let domains = domains(&vh.domains);
            // A virtual host that answers every request the same way: one row.
            let whole_host = |answer: &str| {
                vec![l.name.clone(), vh.name.to_string(), domains.clone(), "/*".into(), "-".into(), answer.into()]
            };
            if vh.https_redirect {
                t.row(whole_host("301 https"));
                continue;
            }
            if vh.routes.is_empty() {
                t.row(whole_host("404"));
            }
            for r in &vh.routes {
                t.row(vec![
                    l.name.clone(),
                    vh.name.to_string(),
                    domains.clone(),
                    route_match(r),
                    r.virtual_service.to_string(),
                    action(&r.action),
                ]);
            }
        }
    }
    t
}

pub fn clusters_table(snapshot: &Snapshot, filter: &Filter) -> Table {
    let mut t = Table::new(&["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "LB", "PROTOCOL", "TLS", "ENDPOINTS"]);
    for c in snapshot.clusters.values().filter(|c| filter.cluster(c)) {
        t.row(vec![
            c.service.host.to_string(),
            c.port.to_string(),
            c.subset.as_deref().unwrap_or("-").to_string(),
            "outbound".into(),
            load_balancer(&c.load_balancer),
            format!("{:?}", c.upstream_protocol).to_uppercase(),
            match &c.tls {
                Some(tls) if tls.client_certificate.is_some() => "MUTUAL".into(),
                Some(_) => "SIMPLE".into(),
                None => "-".into(),
            },
            c.endpoints.len().to_string(),
        ]);
    }
    t
}

pub fn endpoints(endpoints: &[EndpointStatus], filter: &Filter) -> Table {
    let mut t = Table::new(&["ENDPOINT", "STATUS", "IN FLIGHT", "CLUSTER"]);
    for e in endpoints.iter().filter(|e| filter.cluster_name(&e.cluster)) {
        if filter.port.is_some_and(|p| !e.address.ends_with(&format!(":{p}"))) {
            continue;
        }
        t.row(vec![e.address.clone(), e.health.clone(), e.in_flight.to_string(), e.cluster.clone()]);
    }
    t
}

pub fn secrets(certs: &[CertificateInfo], filter: &Filter) -> Table {
    let mut t =
        Table::new(&["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER", "NOT BEFORE"]);
    for c in certs.iter().filter(|c| filter.name.as_ref().is_none_or(|n| c.name.contains(n.as_str()))) {
        t.row(vec![
            c.name.clone(),
            c.kind.clone(),
            "ACTIVE".into(),
            c.valid.to_string(),
            c.serial.clone(),
            c.not_after.clone(),
            c.not_before.clone(),
        ]);
    }
    t
}

/// The parts of a snapshot `-o json` prints for a view (keys are already redacted by the dump).
pub fn json_view(snapshot: &Snapshot, view: &str, filter: &Filter) -> serde_json::Value {
    match view {
        "clusters" => {
            serde_json::to_value(snapshot.clusters.values().filter(|c| filter.cluster(c)).collect::<Vec<_>>())
                .unwrap_or_default()
        }
        _ => serde_json::to_value(snapshot.listeners.iter().filter(|l| filter.listener(l)).collect::<Vec<_>>())
            .unwrap_or_default(),
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Https => "HTTPS",
        Protocol::Tcp => "TCP",
    }
}

fn tls_mode(m: ServerTlsMode) -> &'static str {
    match m {
        ServerTlsMode::Simple => "SIMPLE",
        ServerTlsMode::Mutual => "MUTUAL",
        ServerTlsMode::OptionalMutual => "OPTIONAL_MUTUAL",
        ServerTlsMode::Passthrough => "PASSTHROUGH",
    }
}

fn domains(d: &[crate::schema::CompactString]) -> String {
    match d {
        [] => "-".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} + {} more...", rest.len()),
    }
}

/// The destination column: clusters, or what the gateway answers itself.
fn action(action: &meshgate_model::snapshot::RouteAction) -> String {
    use meshgate_model::snapshot::RouteAction;
    match action {
        RouteAction::Route { destinations } => clusters(destinations),
        RouteAction::Redirect(r) => format!("{} redirect", r.code),
        RouteAction::DirectResponse(d) => format!("{} direct response", d.status),
    }
}

fn clusters(destinations: &[WeightedCluster]) -> String {
    if destinations.len() == 1 {
        return destinations[0].cluster.to_string();
    }
    destinations.iter().map(|d| format!("{} ({}%)", d.cluster, d.weight)).collect::<Vec<_>>().join(", ")
}

/// istioctl's MATCH column: `/*` for a prefix, the path for an exact match, and the other
/// conditions abbreviated.
fn route_match(r: &Route) -> String {
    if r.matches.is_empty() {
        return "/*".into();
    }
    let parts: Vec<String> = r
        .matches
        .iter()
        .map(|m| {
            let mut s = match m.uri.as_deref() {
                None => "/*".to_string(),
                Some(StringMatch::Prefix(p)) => format!("{}*", p),
                Some(StringMatch::Exact(p)) => p.to_string(),
                Some(StringMatch::Regex(p)) => format!("~{p}"),
            };
            if let Some(StringMatch::Exact(method)) = m.method.as_deref() {
                s = format!("{method} {s}");
            }
            let extra = m.headers.len() + m.query_params.len() + m.without_headers.len();
            if extra > 0 {
                s.push_str(&format!(" +{extra} cond"));
            }
            s
        })
        .collect();
    parts.join(", ")
}

fn load_balancer(lb: &LoadBalancer) -> String {
    match lb {
        LoadBalancer::RoundRobin => "ROUND_ROBIN".into(),
        LoadBalancer::LeastRequest => "LEAST_REQUEST".into(),
        LoadBalancer::Random => "RANDOM".into(),
        LoadBalancer::ConsistentHash { algorithm: HashAlgorithm::Maglev { .. }, .. } => "MAGLEV".into(),
        LoadBalancer::ConsistentHash { algorithm: HashAlgorithm::RingHash { .. }, .. } => "RING_HASH".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::load_text;
    use crate::{translate, Options, Store};

    fn snapshot() -> Snapshot {
        let yaml = r#"
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bookinfo.example.com"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {exact: /productpage}}, {uri: {prefix: /static}}]
    route: [{destination: {host: productpage, port: {number: 9080}}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;
        let mut store = Store::default();
        load_text(&mut store, yaml, None);
        translate(&store, &Options::default()).0
    }

    #[test]
    fn routes_read_like_istioctl() {
        let text = routes(&snapshot(), &Filter::default()).render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("VIRTUAL SERVICE"), "{text}");
        assert!(text.contains("/productpage, /static*"), "{text}");
        assert!(text.contains("(90%)") && text.contains("(10%)"), "{text}");
        assert!(text.contains("bookinfo.example.com"), "{text}");
    }

    #[test]
    fn filters_narrow_tables() {
        let s = snapshot();
        let all = clusters_table(&s, &Filter::default()).render();
        assert!(all.contains("LEAST_REQUEST"), "{all}");
        let v2 = clusters_table(&s, &Filter { subset: Some("v2".into()), ..Default::default() }).render();
        assert_eq!(v2.lines().count(), 2, "{v2}");
        assert!(listeners(&s, &Filter { port: Some(443), ..Default::default() }).is_empty());
        assert!(!listeners(&s, &Filter { port: Some(80), ..Default::default() }).is_empty());
    }
}
