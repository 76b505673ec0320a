//! Destinations → clusters: service port, subset endpoints and load-balancer policy from the
//! DestinationRule (subset port level > subset > port level > top level > LEAST_REQUEST).
//! Which rule applies to a host (merging, namespaces, `exportTo`) is [`super::rules`]' business.

use super::credentials::{Credentials, Need};
use super::rules::Rules;
use super::services::{Registry, ServiceInfo};
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{ClientTlsSettings, DestinationRuleSpec, LoadBalancerSettings, TrafficPolicy};
use crate::snapshot::{Cluster, Endpoint, HashAlgorithm, HashKey, LoadBalancer, ServiceRef, UpstreamTls};

/// `field` names the policy; it is only formatted for a policy that is there.
pub(super) fn check_policy(
    policy: Option<&TrafficPolicy>,
    field: impl FnOnce() -> String,
    problems: &mut Vec<Diagnostic>,
) {
    let Some(policy) = policy else { return };
    let field = field();
    if let Some(lb) = &policy.load_balancer {
        let _ = load_balancer(lb, &format!("{field}.loadBalancer"), problems);
    }
    for (i, p) in policy.port_level_settings.iter().enumerate() {
        if let Some(lb) = &p.load_balancer {
            let _ = load_balancer(lb, &format!("{field}.portLevelSettings[{i}].loadBalancer"), problems);
        }
        for (name, set) in
            [("connectionPool", p.connection_pool.is_some()), ("outlierDetection", p.outlier_detection.is_some())]
        {
            if set {
                problems.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.portLevelSettings[{i}].{name}"),
                    "not supported yet, ignored",
                ));
            }
        }
    }
    for (name, set) in [
        ("connectionPool", policy.connection_pool.is_some()),
        ("outlierDetection", policy.outlier_detection.is_some()),
        ("tunnel", policy.tunnel.is_some()),
        ("proxyProtocol", policy.proxy_protocol.is_some()),
    ] {
        if set {
            problems.push(Diagnostic::warning(
                codes::UNSUPPORTED,
                format!("{field}.{name}"),
                "not supported yet, ignored",
            ));
        }
    }
}

/// Translates Istio's loadBalancer settings. `None` means "not set here" (inherit).
pub fn load_balancer(lb: &LoadBalancerSettings, field: &str, problems: &mut Vec<Diagnostic>) -> Option<LoadBalancer> {
    if let Some(ch) = &lb.consistent_hash {
        let field = format!("{field}.consistentHash");
        let key = if let Some(h) = &ch.http_header_name {
            HashKey::Header(h.to_ascii_lowercase())
        } else if let Some(c) = &ch.http_cookie {
            let ttl_seconds = match c.ttl.as_deref().map(parse_duration_ms) {
                None => None,
                Some(Some(ms)) => Some(ms / 1000),
                Some(None) => {
                    problems.push(Diagnostic::error(
                        codes::SCHEMA,
                        format!("{field}.httpCookie.ttl"),
                        format!("invalid duration {:?}", c.ttl.as_deref().unwrap_or("")),
                    ));
                    return None;
                }
            };
            HashKey::Cookie { name: c.name.clone(), path: c.path.clone(), ttl_seconds }
        } else if ch.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(q) = &ch.http_query_parameter_name {
            HashKey::QueryParameter(q.clone())
        } else {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                field,
                "one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required",
            ));
            return None;
        };
        let algorithm = if let Some(m) = &ch.maglev {
            HashAlgorithm::Maglev { table_size: m.table_size.unwrap_or(65537) }
        } else {
            let minimum_ring_size =
                ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).or(ch.minimum_ring_size).unwrap_or(1024);
            HashAlgorithm::RingHash { minimum_ring_size }
        };
        return Some(LoadBalancer::ConsistentHash { key: Box::new(key), algorithm });
    }
    match lb.simple.as_deref() {
        None | Some("UNSPECIFIED") => None,
        Some("ROUND_ROBIN") => Some(LoadBalancer::RoundRobin),
        Some("RANDOM") => Some(LoadBalancer::Random),
        // Istio maps LEAST_CONN to Envoy's LEAST_REQUEST; PASSTHROUGH needs an original
        // destination cluster, which a gateway does not have, so we balance by least request.
        Some("LEAST_REQUEST") | Some("LEAST_CONN") | Some("PASSTHROUGH") => Some(LoadBalancer::LeastRequest),
        Some(other) => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.simple"),
                format!("unknown load balancer {other:?}; expected ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, RANDOM or PASSTHROUGH"),
            ));
            None
        }
    }
}

pub use meshgate_model::duration::parse_duration_ms;

/// The policy for one cluster: most specific setting wins.
fn effective_lb(dr: Option<&DestinationRuleSpec>, subset: Option<&str>, port: u16) -> LoadBalancer {
    let mut sink = Vec::new(); // already reported by Rules::build
    let from =
        |p: Option<&TrafficPolicy>, sink: &mut Vec<Diagnostic>| -> (Option<LoadBalancer>, Option<LoadBalancer>) {
            let Some(p) = p else { return (None, None) };
            let port_level = p
                .port_level_settings
                .iter()
                .find(|s| s.port.as_ref().map(|x| x.number) == Some(u32::from(port)))
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| load_balancer(lb, "", sink));
            let top = p.load_balancer.as_ref().and_then(|lb| load_balancer(lb, "", sink));
            (port_level, top)
        };
    let Some(dr) = dr else { return LoadBalancer::LeastRequest };
    let subset_policy =
        subset.and_then(|s| dr.subsets.iter().find(|x| x.name == s)).and_then(|s| s.traffic_policy.as_deref());
    let (sub_port, sub_top) = from(subset_policy, &mut sink);
    let (port_level, top) = from(dr.traffic_policy.as_deref(), &mut sink);
    sub_port.or(sub_top).or(port_level).or(top).unwrap_or(LoadBalancer::LeastRequest)
}

/// Cluster name as Istio's Envoy names outbound clusters.
pub fn cluster_name(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound|{port}|{}|{host}", subset.unwrap_or(""))
}

/// Builds the cluster for a destination; problems are relative to the destination's field.
pub struct Resolved {
    pub cluster: Cluster,
}

#[allow(clippy::too_many_arguments)]
pub fn resolve(
    registry: &Registry,
    rules: &Rules,
    creds: &mut Credentials,
    host: &str,
    port: Option<u16>,
    subset: Option<&str>,
    field: &str,
    problems: &mut Vec<Diagnostic>,
) -> Option<Resolved> {
    let service = registry.get(host);
    let rule = rules.for_host(host, service.map(|s| s.service.namespace.as_str()));
    let port = match (port, service) {
        (Some(p), Some(svc)) => {
            if !svc.ports.is_empty() && !svc.ports.iter().any(|sp| sp.number == p) {
                problems.push(Diagnostic::warning(
                    codes::NOT_FOUND,
                    format!("{field}.port.number"),
                    format!("service {host:?} has no port {p} (ports: {})", port_list(svc)),
                ));
            }
            p
        }
        (Some(p), None) => p,
        (None, Some(svc)) if svc.ports.len() == 1 => svc.ports[0].number,
        (None, Some(svc)) => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.port.number"),
                format!(
                    "service {host:?} has {} ports ({}); the destination must name one",
                    svc.ports.len(),
                    port_list(svc)
                ),
            ));
            return None;
        }
        (None, None) => 80,
    };
    if service.is_none() {
        let message = match registry.hidden(host) {
            Some(entry) => format!(
                "unknown host {host:?}: ServiceEntry {entry} defines it but is not exported (exportTo) to this gateway's namespace; requests get 503 (NC)"
            ),
            None => format!("unknown host {host:?}: no Service or ServiceEntry defines it; requests get 503 (NC)"),
        };
        problems.push(Diagnostic::warning(codes::NOT_FOUND, format!("{field}.host"), message));
    }
    let subset_labels = match subset {
        None => None,
        Some(name) => match rule.and_then(|r| r.subset(name)) {
            Some(s) => Some(&s.labels),
            None => {
                let message = match rule {
                    Some(r) => format!(
                        "subset {name:?} is not defined by DestinationRule {} (the rule this gateway uses for host {host:?}); requests get 503",
                        r.source(None)
                    ),
                    None => format!(
                        "subset {name:?} is not defined: no DestinationRule for host {host:?} applies to this gateway; requests get 503"
                    ),
                };
                problems.push(Diagnostic::warning(codes::NOT_FOUND, format!("{field}.subset"), message));
                None
            }
        },
    };
    let subset_known = subset.is_none() || subset_labels.is_some();
    let mut endpoints = match service {
        Some(svc) if subset_known => endpoints_of(svc, port, subset_labels),
        _ => Vec::new(),
    };
    let tls = match rule.and_then(|r| effective_tls(&r.spec, subset, port).map(|t| (r, t))) {
        None => None,
        Some((r, (settings, in_subset))) => match upstream_tls(settings, creds) {
            Ok(tls) => tls.map(Box::new),
            Err(why) => {
                // Fail closed: never fall back to plain text for a destination meant to use TLS.
                problems.push(Diagnostic::warning(
                    codes::UNSUPPORTED,
                    format!("{field}.host"),
                    format!(
                        "DestinationRule {} trafficPolicy.tls: {why}; requests to this destination get 503",
                        r.source(subset.filter(|_| in_subset))
                    ),
                ));
                endpoints.clear();
                None
            }
        },
    };
    let upstream_protocol =
        service.and_then(|s| s.ports.iter().find(|p| p.number == port)).map(|p| p.protocol).unwrap_or_default();
    let service_ref = match service {
        Some(s) => s.service.clone(),
        None => std::sync::Arc::new(ServiceRef {
            host: host.into(),
            name: host.split('.').next().unwrap_or(host).into(),
            namespace: "unknown".into(),
        }),
    };
    Some(Resolved {
        cluster: Cluster {
            name: cluster_name(host, port, subset).into(),
            service: service_ref,
            port,
            subset: subset.map(Into::into),
            load_balancer: effective_lb(rule.map(|r| &*r.spec), subset, port),
            endpoints,
            upstream_protocol,
            tls,
            not_found: service.is_none() || !subset_known,
        },
    })
}

/// The TLS settings for one cluster, most specific first (as for load balancing), and
/// whether they are the subset's.
fn effective_tls<'a>(
    dr: &'a DestinationRuleSpec,
    subset: Option<&str>,
    port: u16,
) -> Option<(&'a ClientTlsSettings, bool)> {
    let from = |p: Option<&'a TrafficPolicy>| -> Option<&'a ClientTlsSettings> {
        let p = p?;
        p.port_level_settings
            .iter()
            .find(|s| s.port.as_ref().map(|x| x.number) == Some(u32::from(port)))
            .and_then(|s| s.tls.as_ref())
            .or(p.tls.as_ref())
    };
    let subset_policy =
        subset.and_then(|s| dr.subsets.iter().find(|x| x.name == s)).and_then(|s| s.traffic_policy.as_deref());
    from(subset_policy).map(|t| (t, true)).or_else(|| from(dr.traffic_policy.as_deref()).map(|t| (t, false)))
}

/// DestinationRule TLS → snapshot form. `Ok(None)` is DISABLE.
fn upstream_tls(t: &ClientTlsSettings, creds: &mut Credentials) -> Result<Option<UpstreamTls>, String> {
    let mode = t.mode.as_deref().unwrap_or("DISABLE").to_ascii_uppercase();
    let mut out = UpstreamTls {
        sni: t.sni.clone().unwrap_or_default(),
        ca: None,
        client_certificate: None,
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    };
    match mode.as_str() {
        "DISABLE" => return Ok(None),
        "ISTIO_MUTUAL" => {
            return Err("mode ISTIO_MUTUAL is not supported yet (it needs Istio's mesh certificates)".into())
        }
        "SIMPLE" | "MUTUAL" => {}
        other => return Err(format!("unknown mode {other:?}")),
    }
    if let Some(name) = &t.credential_name {
        let need = if mode == "MUTUAL" { Need::CertAndKey } else { Need::Ca };
        let key = creds.from_secret(name, need)?;
        if creds.secret_has_ca(&key) {
            out.ca = Some(key.clone());
        }
        if mode == "MUTUAL" {
            out.client_certificate = Some(key);
        }
    } else {
        if mode == "MUTUAL" {
            let key =
                creds.from_files(t.client_certificate.as_deref(), t.private_key.as_deref(), None, Need::CertAndKey)?;
            out.client_certificate = Some(key);
        }
        if let Some(ca) = &t.ca_certificates {
            out.ca = Some(creds.from_files(None, None, Some(ca), Need::Ca)?);
        }
    }
    Ok(Some(out))
}

fn port_list(svc: &ServiceInfo) -> String {
    svc.ports.iter().map(|p| p.number.to_string()).collect::<Vec<_>>().join(", ")
}

fn endpoints_of(svc: &ServiceInfo, port: u16, subset: Option<&crate::schema::Labels>) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| subset.is_none_or(|labels| labels.iter().all(|(k, v)| e.workload.labels.get(k) == Some(v))))
        .filter_map(|e| {
            let target = if svc.ports.is_empty() { Some(port) } else { e.ports.get(&port).copied() }?;
            Some(Endpoint { address: e.address, port: target, weight: e.weight, workload: e.workload.clone() })
        })
        .collect();
    out.sort_by_key(|e| (e.address, e.port));
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    // Collected through a filter, the vector has room for at least four; snapshots keep
    // 20k of these at 10k services.
    out = crate::memory::exact(out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_policies() {
        let mut p = Vec::new();
        let lb = |s: &str, p: &mut Vec<Diagnostic>| {
            load_balancer(&LoadBalancerSettings { simple: Some(s.into()), ..Default::default() }, "f", p)
        };
        assert_eq!(lb("ROUND_ROBIN", &mut p), Some(LoadBalancer::RoundRobin));
        assert_eq!(lb("LEAST_CONN", &mut p), Some(LoadBalancer::LeastRequest));
        assert_eq!(lb("PASSTHROUGH", &mut p), Some(LoadBalancer::LeastRequest));
        assert_eq!(lb("RANDOM", &mut p), Some(LoadBalancer::Random));
        assert!(p.is_empty());
        assert_eq!(lb("FASTEST", &mut p), None);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "f.simple");
    }
}
