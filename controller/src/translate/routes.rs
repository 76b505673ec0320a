//! VirtualService → routes bound to gateway servers.

use super::actions;
use super::clusters::resolve;
use super::credentials::Credentials;
use super::hosts::{covers, intersect, resolve_short_name};
use super::rules::Rules;
use super::servers::ServerKind;
use super::services::Registry;
use super::visibility::{self, Allowed};
use super::{BoundServer, Options};
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{
    Destination, HttpMatchRequest, HttpRoute, KeyedMatches, RouteDestination, StringMatch as WireMatch,
    VirtualServiceSpec,
};
use crate::snapshot::{
    Cluster, KeyMatch, L4Route, Mirror, Route, RouteAction, RouteMatch, Shared, StringMatch, VirtualHost,
    WeightedCluster,
};
use crate::store::Resource;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// What one VirtualService contributes, shared (whole, and its parts with the snapshot) so
/// that the next translation reuses it for the price of reference counts (`translate::Reuse`).
pub(super) struct Translated {
    /// (listener port, the virtual host of one of its domains with this VirtualService's
    /// routes). The snapshot takes the host as it is unless another VirtualService adds routes
    /// to the same domain, so unchanged hosts are the same allocation from version to version.
    pub bindings: Vec<(u16, Shared<VirtualHost>)>,
    /// (listener port, tcp or tls route)
    pub l4_routes: Vec<(u16, L4Route)>,
    pub clusters: Vec<Shared<Cluster>>,
    /// Routes came from delegate VirtualServices: the translation depends on more than this
    /// VirtualService and cannot be reused as it is.
    pub uses_delegates: bool,
}

/// What every VirtualService is translated against.
pub(super) struct Context<'a> {
    /// Selected servers by `namespace/name` of their Gateway.
    pub servers_by_gateway: HashMap<String, Vec<&'a BoundServer<'a>>>,
    pub known_gateways: &'a HashMap<String, bool>,
    pub registry: &'a Registry,
    pub rules: &'a Rules,
    pub options: &'a Options,
    /// Regex syntax checks by pattern: the same pattern in 10k VirtualServices is parsed once.
    pub regexes: RegexChecks,
    /// VirtualServices without hosts (delegates) by (namespace, name).
    pub delegates: HashMap<(&'a str, &'a str), &'a Resource<VirtualServiceSpec>>,
    /// The delegates some root's route names, as (namespace, name).
    pub delegated: std::collections::HashSet<(String, String)>,
    /// VirtualServices with hosts, by (namespace, name): named as a delegate, one of these is
    /// not one (istiod takes only VirtualServices without hosts as delegates).
    pub with_hosts: std::collections::HashSet<(&'a str, &'a str)>,
}

/// Outcome of checking each distinct regex (the error message when it is invalid).
#[derive(Default)]
pub(crate) struct RegexChecks(std::cell::RefCell<HashMap<String, Result<(), String>>>);

impl RegexChecks {
    pub(crate) fn check(&self, pattern: &str) -> Result<(), String> {
        if let Some(known) = self.0.borrow().get(pattern) {
            return known.clone();
        }
        // Syntax check only: compiling 10k regexes here would dominate translation time; the
        // gateway compiles each distinct pattern once.
        let result =
            regex_syntax::Parser::new().parse(&format!("^(?:{pattern})$")).map(|_| ()).map_err(|e| e.to_string());
        self.0.borrow_mut().insert(pattern.to_string(), result.clone());
        result
    }
}

/// A route before per-gateway filtering: each match block remembers the `gateways` it is
/// limited to (empty = all the VirtualService's gateways).
struct Candidate {
    route: Route,
    match_gateways: Vec<Vec<String>>,
}

pub(super) fn translate_virtual_service(
    vs: &Resource<VirtualServiceSpec>,
    ctx: &Context,
    creds: &mut Credentials,
    problems: &mut Vec<Diagnostic>,
) -> Translated {
    let known_gateways = ctx.known_gateways;
    let spec = &vs.spec;
    let ns = vs.namespace();
    let mut out =
        Translated { bindings: Vec::new(), l4_routes: Vec::new(), clusters: Vec::new(), uses_delegates: false };

    if spec.hosts.is_empty() {
        // A delegate: its routes serve under the roots that name it.
        super::delegates::check_delegate(vs, ctx, problems);
        return out;
    }
    let gateway_keys: Vec<String> =
        spec.gateways.iter().filter(|g| g.as_str() != "mesh").map(|g| gateway_key(g, ns)).collect();
    for (i, g) in spec.gateways.iter().enumerate() {
        if g == "mesh" {
            continue;
        }
        let key = gateway_key(g, ns);
        if !known_gateways.contains_key(&key) {
            problems.push(Diagnostic::warning(
                codes::NOT_FOUND,
                format!("spec.gateways[{i}]"),
                format!("gateway {key:?} does not exist (write ns/name for a Gateway in another namespace)"),
            ));
        }
    }

    let before = problems.len();
    visibility::check(&spec.export_to, ns, Allowed::Namespaces, problems);
    if problems[before..].iter().any(Diagnostic::is_error) {
        return out;
    }
    if !visibility::visible(&spec.export_to, ns, &ctx.options.namespace) {
        // Istio leaves it out of the gateway's configuration whole; say so when it names a
        // Gateway this instance serves, where the user expects it to bind.
        if gateway_keys.iter().any(|k| ctx.servers_by_gateway.contains_key(k)) {
            problems.push(Diagnostic::warning(
                codes::NOT_EXPORTED,
                "spec.exportTo",
                format!(
                    "not exported to namespace {:?} of this gateway; the VirtualService does not bind here",
                    ctx.options.namespace
                ),
            ));
        }
        return out;
    }

    // Routes and their clusters, validated once.
    let mut candidates = Vec::new();
    let mut seen_clusters = BTreeSet::new();
    // One copy of `namespace/name` for all the VirtualService's routes.
    let vs_name: Arc<str> = format!("{ns}/{}", vs.meta.name).into();
    let mut routes = Vec::with_capacity(spec.http.len());
    for (i, http) in spec.http.iter().enumerate() {
        let field = format!("spec.http[{i}]");
        match &http.rest().delegate {
            None => routes.push((std::borrow::Cow::Borrowed(http), field, ns)),
            Some(delegate) => {
                out.uses_delegates = true;
                routes.extend(super::delegates::expand(vs, http, delegate, &field, ctx, problems));
            }
        }
    }
    for (http, field, route_ns) in &routes {
        let translated = http_route(vs, &vs_name, http, field, route_ns, ctx, creds, problems);
        let Some((mut route, match_gateways, clusters)) = translated else {
            continue;
        };
        for c in clusters {
            if seen_clusters.insert(c.name.clone()) {
                out.clusters.push(Shared::new(c));
            }
        }
        // Routes name their clusters with the kept cluster's name: each resolution made its
        // own copy, and routes often repeat a destination (a canary's v1 in two rules).
        for d in route.action.destinations_mut() {
            if let Some(kept) = seen_clusters.get(&d.cluster) {
                d.cluster = kept.clone();
            }
        }
        for m in route.mirrors.iter_mut() {
            if let Some(kept) = seen_clusters.get(&m.cluster) {
                m.cluster = kept.clone();
            }
        }
        candidates.push(Candidate { route, match_gateways });
    }

    // Bindings: every selected server of a referenced gateway whose hosts meet ours.
    let hosts: Vec<String> = spec.hosts.iter().map(|h| resolve_short_name(h, ns)).collect();
    let mut bound_any: HashMap<&str, bool> = HashMap::new();
    let mut seen = BTreeSet::new();
    let bound_servers = gateway_keys.iter().flat_map(|k| ctx.servers_by_gateway.get(k).into_iter().flatten());
    for s in bound_servers.filter(|s| s.kind.http_routes()) {
        let bound = bound_any.entry(s.gateway_key.as_str()).or_insert(false);
        for (e, h) in s.hosts.candidates(&hosts) {
            let (ns_filter, server_host) = &s.hosts.entries[e];
            if ns_filter.is_some_and(|f| f != ns) {
                continue;
            }
            let Some(domain) = intersect(&hosts[h], server_host) else { continue };
            *bound = true;
            // Istio sets `require_tls` on every virtual host a server with httpsRedirect makes,
            // a VirtualService's more specific host (`a.example.com` under `*.example.com`)
            // included.
            let redirect = s.kind == ServerKind::PlainHttp && s.server.tls.as_ref().is_some_and(|t| t.https_redirect);
            if !seen.insert((s.port, domain.clone(), s.gateway_key.clone())) {
                if redirect {
                    let same = |(p, vh): &&mut (u16, Shared<VirtualHost>)| {
                        *p == s.port && vh.domains.iter().any(|d| d.as_str() == domain)
                    };
                    for (_, vh) in out.bindings.iter_mut().filter(same) {
                        Shared::make_mut(vh).https_redirect = true;
                    }
                }
                continue;
            }
            let mut routes: Vec<Shared<Route>> =
                candidates.iter().filter_map(|c| for_gateway(c, &s.gateway_key)).map(Shared::new).collect();
            routes = crate::memory::exact(routes);
            out.bindings.push((s.port, Shared::new(VirtualHost::new(&domain, s.port, routes, redirect))));
        }
    }
    l4_routes(vs, ctx, &gateway_keys, &hosts, creds, &mut out, &mut bound_any, problems);
    for (key, bound) in bound_any {
        if !bound {
            problems.push(Diagnostic::warning(
                codes::HOST_NOT_IN_GATEWAY,
                "spec.hosts",
                format!(
                    "none of the hosts {:?} is served by gateway {key:?}; the VirtualService has no effect there",
                    spec.hosts
                ),
            ));
        }
    }
    out
}

pub(super) fn gateway_key(reference: &str, namespace: &str) -> String {
    match reference.split_once('/') {
        Some((ns, name)) => format!("{ns}/{name}"),
        None => format!("{namespace}/{reference}"),
    }
}

/// The route as it applies to one gateway: match blocks limited to other gateways drop out;
/// a route whose every block dropped out does not apply.
fn for_gateway(c: &Candidate, gateway: &str) -> Option<Route> {
    if c.route.matches.is_empty() {
        return Some(c.route.clone());
    }
    let matches: Vec<RouteMatch> = c
        .route
        .matches
        .iter()
        .zip(&c.match_gateways)
        .filter(|(_, gws)| gws.is_empty() || gws.iter().any(|g| g == gateway))
        .map(|(m, _)| m.clone())
        .collect();
    if matches.is_empty() {
        return None;
    }
    // A filtered collect reserves four; snapshots keep one of these per route.
    Some(Route { matches: crate::memory::boxed(matches), ..c.route.clone() })
}

type HttpTranslation = (Route, Vec<Vec<String>>, Vec<Cluster>);

/// One http route: `ns` is the namespace its short names resolve in (a delegate's own for
/// routes merged from a delegate).
#[allow(clippy::too_many_arguments)]
fn http_route(
    vs: &Resource<VirtualServiceSpec>,
    vs_name: &Arc<str>,
    http: &HttpRoute,
    field: &str,
    ns: &str,
    ctx: &Context,
    creds: &mut Credentials,
    problems: &mut Vec<Diagnostic>,
) -> Option<HttpTranslation> {
    let (registry, rules, options) = (ctx.registry, ctx.rules, ctx.options);
    let rest = http.rest();
    let headers = match &rest.headers {
        None => None,
        Some(h) => actions::headers(h, &format!("{field}.headers"), problems)?,
    };
    // One of route, redirect, directResponse and delegate, as Istio's validation requires.
    let actions: Vec<&str> = [
        ("route", !http.route.is_empty()),
        ("redirect", rest.redirect.is_some()),
        ("directResponse", rest.direct_response.is_some()),
        ("delegate", rest.delegate.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if rest.rewrite.is_some() && (rest.redirect.is_some() || rest.direct_response.is_some()) {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            format!("{field}.rewrite"),
            "a rewrite applies to requests the route forwards; this route answers them itself",
        ));
        return None;
    }
    let rewrite = match &rest.rewrite {
        None => None,
        Some(r) => Some(Box::new(actions::rewrite(r, &format!("{field}.rewrite"), &ctx.regexes, problems)?)),
    };
    let local_action = match actions.as_slice() {
        [] => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.route"),
                "at least one destination is required (or a redirect, directResponse or delegate)",
            ));
            return None;
        }
        // Expanded into the delegate's routes before (delegates::expand); not reached.
        ["delegate"] => return None,
        ["route"] => None,
        ["redirect"] => {
            let prefix_matches_only =
                http.matches.iter().filter_map(|m| m.uri.as_deref()).all(|u| u.exact.is_none() && u.regex.is_none());
            Some(actions::redirect(
                rest.redirect.as_ref()?,
                prefix_matches_only,
                &format!("{field}.redirect"),
                problems,
            )?)
        }
        ["directResponse"] => Some(actions::direct_response(
            rest.direct_response.as_ref()?,
            &format!("{field}.directResponse"),
            problems,
        )?),
        several => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                field.to_string(),
                format!(
                    "a route has only one of route, redirect, directResponse and delegate; this one has {}",
                    several.join(", ")
                ),
            ));
            return None;
        }
    };

    let mut matches = Vec::new();
    let mut match_gateways = Vec::new();
    for (j, m) in http.matches.iter().enumerate() {
        let mfield = format!("{field}.match[{j}]");
        // The gateway is the source workload: sourceLabels / sourceNamespace compare with it.
        if !m.more().source_labels.iter().all(|(k, v)| options.labels.get(k) == Some(v)) {
            continue;
        }
        if m.more().source_namespace.as_deref().is_some_and(|s| s != options.namespace) {
            continue;
        }
        let gws: Vec<String> = m.more().gateways.iter().map(|g| gateway_key(g, ns)).collect();
        if !m.more().gateways.is_empty() && gws.iter().all(|g| g.ends_with("/mesh")) {
            continue;
        }
        match route_match(m, &mfield, &ctx.regexes, problems) {
            Some(rm) => {
                matches.push(rm);
                match_gateways.push(gws);
            }
            None => return None,
        }
    }
    if !http.matches.is_empty() && matches.is_empty() {
        return None; // every match block is for other sources
    }

    let timeout_ms = match &http.timeout {
        None => None,
        Some(t) => match super::duration_ms(t, 0) {
            Ok(0) => None,
            Ok(ms) => Some(ms),
            Err(message) => {
                problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}.timeout"), message));
                return None;
            }
        },
    };

    let retries = super::retries::retries(rest.retries.as_ref(), timeout_ms, &format!("{field}.retries"), problems)?;
    let fault = match &rest.fault {
        None => None,
        Some(f) => super::faults::fault(f, &format!("{field}.fault"), problems)?,
    };
    let cors = match &rest.cors_policy {
        None => None,
        Some(c) => Some(super::cors::cors(c, &format!("{field}.corsPolicy"), &ctx.regexes, problems)?),
    };
    let mirror_targets = super::mirrors::targets(rest, field, problems)?;

    let name = http.name.as_deref().map(crate::schema::CompactString::from).unwrap_or_else(|| {
        compact_str::format_compact!("{}/{}.http[{}]", vs.namespace(), vs.meta.name, field_index(field))
    });
    if let Some(action) = local_action {
        if !mirror_targets.is_empty() {
            problems.push(Diagnostic::warning(
                codes::SCHEMA,
                mirror_targets[0].field.clone(),
                "a mirror copies requests the route forwards; this route answers them itself, so nothing is mirrored",
            ));
        }
        let route = Route {
            name,
            virtual_service: vs_name.clone(),
            matches: crate::memory::boxed(matches),
            action,
            timeout_ms,
            rewrite: None,
            headers,
            retries,
            fault,
            mirrors: Box::default(),
            cors,
        };
        return Some((route, match_gateways, Vec::new()));
    }

    let mut destinations = Vec::new();
    let mut clusters = Vec::new();
    let weights: Vec<Option<i32>> = http.route.iter().map(|d| d.weight).collect();
    let resolve_destination = |d: &Destination,
                               dfield: &str,
                               creds: &mut Credentials,
                               problems: &mut Vec<Diagnostic>| {
        if d.host.is_empty() {
            problems.push(Diagnostic::error(codes::SCHEMA, format!("{dfield}.host"), "host is required"));
            return None;
        }
        let host = resolve_short_name(&d.host, ns);
        let port = match d.port.as_ref().map(|p| u16::try_from(p.number)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => {
                problems.push(Diagnostic::error(codes::SCHEMA, format!("{dfield}.port.number"), "not a valid port"));
                return None;
            }
        };
        resolve(registry, rules, creds, &host, port, d.subset.as_deref(), dfield, problems)
    };
    for (k, dest) in http.route.iter().enumerate() {
        let dfield = format!("{field}.route[{k}].destination");
        let weight = match dest.weight {
            Some(w) if w < 0 => {
                problems.push(Diagnostic::error(
                    codes::SCHEMA,
                    format!("{field}.route[{k}].weight"),
                    format!("weight {w} must not be negative"),
                ));
                return None;
            }
            // A single destination takes all traffic whatever its weight says, as in Istio.
            Some(_) if http.route.len() == 1 => 1,
            Some(w) => w.unsigned_abs(),
            // Several without weights share the traffic evenly.
            None if weights.iter().all(Option::is_none) => 1,
            None => 0,
        };
        let resolved = resolve_destination(&dest.destination, &dfield, creds, problems)?;
        let headers = match &dest.headers {
            None => None,
            Some(h) => actions::headers(h, &format!("{field}.route[{k}].headers"), problems)?,
        };
        destinations.push(WeightedCluster { cluster: resolved.cluster.name.clone(), weight, headers });
        clusters.push(resolved.cluster);
    }
    if http.route.len() > 1 && weights.iter().any(Option::is_some) {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            problems.push(Diagnostic::warning(
                codes::WEIGHTS,
                format!("{field}.route"),
                format!("weights sum to {sum}, not 100; traffic is split in proportion to them"),
            ));
        }
        if sum == 0 {
            problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}.route"), "all weights are 0"));
            return None;
        }
    }

    let mut mirrors = Vec::with_capacity(mirror_targets.len());
    for t in &mirror_targets {
        let resolved = resolve_destination(t.destination, &t.field, creds, problems)?;
        mirrors.push(Mirror { cluster: resolved.cluster.name.clone(), per_million: t.per_million });
        clusters.push(resolved.cluster);
    }

    let route = Route {
        name,
        virtual_service: vs_name.clone(),
        matches: crate::memory::boxed(matches),
        action: RouteAction::Route { destinations: crate::memory::boxed(destinations) },
        timeout_ms,
        rewrite,
        headers,
        retries,
        fault,
        mirrors: crate::memory::boxed(mirrors),
        cors,
    };
    Some((route, match_gateways, clusters))
}

fn field_index(field: &str) -> &str {
    field.rsplit('[').next().unwrap_or("").trim_end_matches(']')
}

fn route_match(
    m: &HttpMatchRequest,
    field: &str,
    regexes: &RegexChecks,
    problems: &mut Vec<Diagnostic>,
) -> Option<RouteMatch> {
    let mut ok = true;
    let mut one = |w: &Option<Box<WireMatch>>, name: &str, header: bool, problems: &mut Vec<Diagnostic>| {
        let w = w.as_ref()?;
        match string_match(w, &format!("{field}.{name}"), header, regexes, problems) {
            Ok(v) => v,
            Err(()) => {
                ok = false;
                None
            }
        }
    };
    let uri = one(&m.uri, "uri", false, problems);
    let more = m.more();
    let scheme = one(&more.scheme, "scheme", true, problems);
    let method = one(&more.method, "method", true, problems);
    let authority = one(&more.authority, "authority", true, problems);
    let mut keyed = |map: &KeyedMatches, name: &str, lower: bool, problems: &mut Vec<Diagnostic>| {
        let mut out = Vec::new();
        for (k, w) in map {
            match string_match(w, &format!("{field}.{name}.{k}"), true, regexes, problems) {
                Ok(value) => out.push(KeyMatch { name: if lower { k.to_ascii_lowercase() } else { k.clone() }, value }),
                Err(()) => ok = false,
            }
        }
        // A boxed slice of its length: kept by the snapshot for each match.
        crate::memory::exact(out).into_boxed_slice()
    };
    let headers = keyed(&m.headers, "headers", true, problems);
    let without_headers = keyed(&more.without_headers, "withoutHeaders", true, problems);
    let query_params = keyed(&more.query_params, "queryParams", false, problems);
    let port = match more.port.map(u16::try_from) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(_)) => {
            problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}.port"), "not a valid port"));
            return None;
        }
    };
    if !ok {
        return None;
    }
    Some(RouteMatch {
        uri: uri.map(Box::new),
        scheme: scheme.map(Box::new),
        method: method.map(Box::new),
        authority: authority.map(Box::new),
        headers,
        without_headers,
        query_params,
        port,
        ignore_uri_case: m.ignore_uri_case,
    })
}

/// Exactly one of exact/prefix/regex; none means "present" (headers) or "any".
///
/// `header`: the match becomes an Envoy header or query parameter match (everything but `uri`),
/// where Istio reads `regex: "*"` as "present" (`canBeConvertedToPresentMatch`: `*` is not an
/// RE2 regex; istio/istio#20629).
pub(super) fn string_match(
    w: &WireMatch,
    field: &str,
    header: bool,
    regexes: &RegexChecks,
    problems: &mut Vec<Diagnostic>,
) -> Result<Option<StringMatch>, ()> {
    let set = [w.exact.is_some(), w.prefix.is_some(), w.regex.is_some()].iter().filter(|b| **b).count();
    if set > 1 {
        problems.push(Diagnostic::error(codes::SCHEMA, field, "set only one of exact, prefix, regex"));
        return Err(());
    }
    if header && w.regex.as_deref() == Some("*") {
        return Ok(None);
    }
    if let Some(r) = &w.regex {
        if let Err(e) = regexes.check(r) {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.regex"),
                format!("invalid RE2 regex: {e}"),
            ));
            return Err(());
        }
        return Ok(Some(StringMatch::Regex(r.clone())));
    }
    Ok(w.exact.clone().map(StringMatch::Exact).or_else(|| w.prefix.clone().map(StringMatch::Prefix)))
}

/// `tls` routes bind to passthrough servers whose hosts meet the VirtualService's; `tcp` routes
/// bind to TCP servers and TLS-terminated TCP servers of the referenced gateways whose hosts
/// meet the VirtualService's.
#[allow(clippy::too_many_arguments)]
fn l4_routes<'a>(
    vs: &Resource<VirtualServiceSpec>,
    ctx: &'a Context,
    gateway_keys: &[String],
    hosts: &[String],
    creds: &mut Credentials,
    out: &mut Translated,
    bound_any: &mut HashMap<&'a str, bool>,
    problems: &mut Vec<Diagnostic>,
) {
    let ns = vs.namespace();
    let name = format!("{ns}/{}", vs.meta.name);
    let mut seen_clusters: BTreeSet<crate::snapshot::ClusterName> =
        out.clusters.iter().map(|c| c.name.clone()).collect();
    let mut destinations_of = |routes: &[RouteDestination], field: &str, problems: &mut Vec<Diagnostic>| {
        let mut dests = Vec::new();
        let all_unweighted = routes.iter().all(|d| d.weight.is_none());
        for (k, d) in routes.iter().enumerate() {
            let dfield = format!("{field}.route[{k}].destination");
            let host = resolve_short_name(&d.destination.host, ns);
            let port = d.destination.port.as_ref().and_then(|p| u16::try_from(p.number).ok());
            let resolved = resolve(
                ctx.registry,
                ctx.rules,
                creds,
                &host,
                port,
                d.destination.subset.as_deref(),
                &dfield,
                problems,
            )?;
            let weight = match d.weight {
                Some(w) => u32::try_from(w).unwrap_or(0),
                None if all_unweighted => 1,
                None => 0,
            };
            dests.push(WeightedCluster { cluster: resolved.cluster.name.clone(), weight, headers: None });
            if seen_clusters.insert(resolved.cluster.name.clone()) {
                out.clusters.push(Shared::new(resolved.cluster));
            }
        }
        Some(dests)
    };
    let servers: Vec<&BoundServer> =
        gateway_keys.iter().flat_map(|k| ctx.servers_by_gateway.get(k).into_iter().flatten()).copied().collect();

    for (i, tls) in vs.spec.tls.iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let Some(destinations) = destinations_of(&tls.route, &field, problems) else { continue };
        let matches: Vec<_> = if tls.matches.is_empty() { vec![Default::default()] } else { tls.matches.clone() };
        for m in matches {
            let sni: Vec<String> = m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
            for s in servers.iter().filter(|s| s.kind == ServerKind::Passthrough) {
                if m.port.is_some_and(|p| p != u32::from(s.port)) {
                    continue;
                }
                if !m.gateways.is_empty() && !m.gateways.iter().any(|g| gateway_key(g, ns) == s.gateway_key) {
                    continue;
                }
                if !meets(s, hosts, ns) {
                    bound_any.entry(s.gateway_key.as_str()).or_insert(false);
                    continue;
                }
                bound_any.insert(s.gateway_key.as_str(), true);
                out.l4_routes.push((
                    s.port,
                    L4Route {
                        name: format!("{name}.tls[{i}]"),
                        virtual_service: name.clone(),
                        passthrough: true,
                        sni_hosts: if sni.is_empty() { hosts.to_vec() } else { sni.clone() },
                        port: m.port.and_then(|p| u16::try_from(p).ok()),
                        destinations: destinations.clone(),
                        server: None,
                    },
                ));
            }
        }
    }
    // Istio (`buildGatewayNetworkFiltersFromTCPRoutes`): per server, the VirtualService's hosts
    // must meet the server's (a TCP server's `*` meets every host), then its first tcp block
    // whose match holds serves that server. A terminating TLS server's routes are its own.
    for (i, tcp) in vs.spec.tcp.iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        let Some(destinations) = destinations_of(&tcp.route, &field, problems) else { continue };
        let matches: Vec<_> = if tcp.matches.is_empty() { vec![Default::default()] } else { tcp.matches.clone() };
        for m in matches {
            for s in servers.iter().filter(|s| matches!(s.kind, ServerKind::Tcp | ServerKind::TerminatedTcp)) {
                if m.port.is_some_and(|p| p != u32::from(s.port)) {
                    continue;
                }
                if !m.gateways.is_empty() && !m.gateways.iter().any(|g| gateway_key(g, ns) == s.gateway_key) {
                    continue;
                }
                if !meets(s, hosts, ns) {
                    bound_any.entry(s.gateway_key.as_str()).or_insert(false);
                    continue;
                }
                bound_any.insert(s.gateway_key.as_str(), true);
                out.l4_routes.push((
                    s.port,
                    L4Route {
                        name: format!("{name}.tcp[{i}]"),
                        virtual_service: name.clone(),
                        passthrough: false,
                        sni_hosts: Vec::new(),
                        port: m.port.and_then(|p| u16::try_from(p).ok()),
                        destinations: destinations.clone(),
                        server: s
                            .tls
                            .as_ref()
                            .filter(|_| s.kind == ServerKind::TerminatedTcp)
                            .map(|t| t.server.clone()),
                    },
                ));
            }
        }
    }
}

/// Whether one of the VirtualService's `hosts` meets one of the server's, the server's
/// namespace filters (`ns/host`) applied as for HTTP routes (Istio's `pickMatchingGatewayHosts`).
fn meets(s: &BoundServer, hosts: &[String], ns: &str) -> bool {
    s.hosts
        .entries
        .iter()
        .filter(|(filter, _)| filter.is_none_or(|f| f == ns))
        .any(|(_, server_host)| hosts.iter().any(|h| covers(h, server_host) || covers(server_host, h)))
}
