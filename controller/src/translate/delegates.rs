//! `delegate`: a root VirtualService's route handing its matches to the routes of another
//! VirtualService (one without hosts), merged as istiod merges them (`MergeHTTPRoutes` in
//! pilot/pkg/model/virtualservice.go): each delegate route's match blocks must each fall
//! within one of the root route's (a conflict drops that delegate route), the blocks are
//! combined condition by condition, and the delegate route inherits what it does not set of
//! the root route's timeout, retries, fault, mirrors, CORS, headers, rewrite and direct
//! response. One level only.

use super::routes::Context;
use super::visibility;
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{
    Delegate, HttpMatchRequest, HttpRoute, HttpRouteRest, KeyedMatches, MoreConditions, StringMatch, VirtualServiceSpec,
};
use crate::store::Resource;
use std::borrow::Cow;

/// A route to translate: the route, where it is written (for diagnostics), and the namespace
/// its short names resolve in.
pub(super) type Expanded<'a> = (Cow<'a, HttpRoute>, String, &'a str);

/// The routes a root's `http[i]` with `delegate` stands for: the delegate's, merged under it.
/// Their field paths name the delegate (`spec.http[0].delegate(ns/name).http[1]`). A missing
/// or unexported delegate leaves the route out, as istiod does (with a warning here).
pub(super) fn expand<'a>(
    root: &'a Resource<VirtualServiceSpec>,
    http: &'a HttpRoute,
    delegate: &Delegate,
    field: &str,
    ctx: &Context<'a>,
    problems: &mut Vec<Diagnostic>,
) -> Vec<Expanded<'a>> {
    let rest = http.rest();
    // Istio's validateHTTPRouteConflict for a root route.
    let name = http.name.as_deref().unwrap_or_default();
    for (set, what) in [(!http.route.is_empty(), "route"), (rest.redirect.is_some(), "redirect")] {
        if set {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.{what}"),
                format!("root HTTP route {name} must not specify {what}"),
            ));
            return Vec::new();
        }
    }
    if delegate.name.is_empty() {
        problems.push(Diagnostic::error(codes::SCHEMA, format!("{field}.delegate.name"), "name is required"));
        return Vec::new();
    }
    let ns = delegate.namespace.as_deref().unwrap_or(root.namespace());
    let Some(target) = ctx.delegates.get(&(ns, &*delegate.name)) else {
        let message = match ctx.with_hosts.contains(&(ns, &*delegate.name)) {
            true => format!(
                "VirtualService {ns}/{} has hosts, so it is not a delegate (a delegate has none); this route is left out",
                delegate.name
            ),
            false => format!("delegate VirtualService {ns}/{} not found; this route is left out", delegate.name),
        };
        problems.push(Diagnostic::warning(codes::NOT_FOUND, format!("{field}.delegate"), message));
        return Vec::new();
    };
    if !visibility::visible(&target.spec.export_to, ns, root.namespace()) {
        problems.push(Diagnostic::warning(
            codes::NOT_EXPORTED,
            format!("{field}.delegate"),
            format!(
                "delegate VirtualService {ns}/{} is not exported to namespace {:?}; this route is left out",
                delegate.name,
                root.namespace()
            ),
        ));
        return Vec::new();
    }
    let base = format!("{field}.delegate({ns}/{})", delegate.name);
    let nested: Vec<usize> =
        target.spec.http.iter().enumerate().filter(|(_, h)| h.rest().delegate.is_some()).map(|(j, _)| j).collect();
    let usable: Vec<HttpRoute> = target.spec.http.iter().filter(|h| h.rest().delegate.is_none()).cloned().collect();
    // The root's match gateways are the root's short names: written out before the merge, as
    // istiod resolves each VirtualService's short names in its own namespace first.
    let root_route = with_gateways_resolved(http, root.namespace());
    let (merged, conflicts) = merge_routes(&root_route, &usable);
    // Indexes into the delegate's own list, for the field paths.
    let original: Vec<usize> = (0..target.spec.http.len()).filter(|j| !nested.contains(j)).collect();
    for j in conflicts {
        problems.push(Diagnostic::warning(
            codes::CONFLICT,
            format!("{base}.http[{}].match", original[j]),
            "its match does not fall within the root route's match; this delegate route is left out",
        ));
    }
    merged
        .into_iter()
        .map(|(j, mut route)| {
            let j = original[j];
            if route.name.is_none() {
                route.name = Some(format!("{ns}/{}.http[{j}]", delegate.name).into());
            }
            (Cow::Owned(route), format!("{base}.http[{j}]"), target.namespace())
        })
        .collect()
}

/// `http` with its match blocks' `gateways` written as `namespace/name`.
fn with_gateways_resolved(http: &HttpRoute, namespace: &str) -> HttpRoute {
    let mut out = http.clone();
    for m in &mut out.matches {
        if let Some(more) = m.more.as_deref_mut() {
            for g in &mut more.gateways {
                *g = super::routes::gateway_key(g, namespace);
            }
        }
    }
    out
}

/// Istio's checks of a delegate VirtualService (one without hosts), and a warning when no
/// root names it.
pub(super) fn check_delegate(vs: &Resource<VirtualServiceSpec>, ctx: &Context, problems: &mut Vec<Diagnostic>) {
    let spec = &vs.spec;
    if !spec.gateways.is_empty() {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            "spec.gateways",
            "delegate virtual service must have no gateways specified",
        ));
    }
    if !spec.tls.is_empty() {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            "spec.tls",
            "delegate virtual service must have no tls route specified",
        ));
    }
    if !spec.tcp.is_empty() {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            "spec.tcp",
            "delegate virtual service must have no tcp route specified",
        ));
    }
    for (j, http) in spec.http.iter().enumerate() {
        if http.rest().delegate.is_some() {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("spec.http[{j}].delegate"),
                "delegate HTTP route cannot contain delegate",
            ));
        }
    }
    let key = (vs.namespace().to_string(), vs.meta.name.to_string());
    if !ctx.delegated.contains(&key) {
        problems.push(Diagnostic::warning(
            codes::SCHEMA,
            "spec.hosts",
            "no hosts: this is a delegate VirtualService, and no route delegates to it, so it has no effect",
        ));
    }
}

/// `delegate`'s routes merged under `root`; those whose matches conflict with the root's are
/// left out (Istio logs a warning and drops them), returned by index.
pub(super) fn merge_routes(root: &HttpRoute, delegate: &[HttpRoute]) -> (Vec<(usize, HttpRoute)>, Vec<usize>) {
    let mut merged = Vec::with_capacity(delegate.len());
    let mut conflicts = Vec::new();
    for (j, d) in delegate.iter().enumerate() {
        match merge_route(root, d) {
            Some(route) => merged.push((j, route)),
            None => conflicts.push(j),
        }
    }
    (merged, conflicts)
}

fn merge_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let matches = merge_matches(&root.matches, &delegate.matches)?;
    let name = match (&root.name, &delegate.name) {
        (root_name, None) => root_name.clone(),
        (Some(r), Some(d)) => Some(format!("{r}-{d}").into()),
        (None, Some(d)) => Some(d.clone()),
    };
    let (r, d) = (root.rest(), delegate.rest());
    let rest = HttpRouteRest {
        redirect: d.redirect.clone(),
        direct_response: d.direct_response.clone().or_else(|| r.direct_response.clone()),
        delegate: None,
        rewrite: d.rewrite.clone().or_else(|| r.rewrite.clone()),
        retries: d.retries.clone().or_else(|| r.retries.clone()),
        fault: d.fault.clone().or_else(|| r.fault.clone()),
        mirror: d.mirror.clone().or_else(|| r.mirror.clone()),
        mirrors: d.mirrors.clone().or_else(|| r.mirrors.clone()),
        mirror_percentage: d.mirror_percentage.or(r.mirror_percentage),
        mirror_percent: d.mirror_percent.or(r.mirror_percent),
        cors_policy: d.cors_policy.clone().or_else(|| r.cors_policy.clone()),
        headers: d.headers.clone().or_else(|| r.headers.clone()),
    };
    Some(HttpRoute {
        name,
        matches,
        route: delegate.route.clone(),
        timeout: delegate.timeout.clone().or_else(|| root.timeout.clone()),
        rest: (rest != HttpRouteRest::default()).then(|| Box::new(rest)),
    })
}

/// Every delegate block combined with each root block it does not conflict with; `None`
/// when a delegate block fits no root block.
fn merge_matches(root: &[HttpMatchRequest], delegate: &[HttpMatchRequest]) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for d in delegate {
        let before = out.len();
        out.extend(root.iter().filter(|r| !conflict(r, d)).map(|r| merge_match(r, d)));
        if out.len() == before {
            return None;
        }
    }
    Some(out)
}

fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> HttpMatchRequest {
    let (r, d) = (root.more(), delegate.more());
    let name = match (&r.name, &d.name) {
        (root_name, None) => root_name.clone(),
        (Some(r), Some(d)) => Some(format!("{r}-{d}").into()),
        (None, Some(d)) => Some(d.clone()),
    };
    let mut source_labels = r.source_labels.clone();
    source_labels.extend(d.source_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    let more = MoreConditions {
        name,
        scheme: d.scheme.clone().or_else(|| r.scheme.clone()),
        method: d.method.clone().or_else(|| r.method.clone()),
        authority: d.authority.clone().or_else(|| r.authority.clone()),
        without_headers: KeyedMatches::merged(&r.without_headers, &d.without_headers),
        query_params: KeyedMatches::merged(&r.query_params, &d.query_params),
        port: d.port.or(r.port),
        source_labels,
        gateways: if d.gateways.is_empty() { r.gateways.clone() } else { d.gateways.clone() },
        source_namespace: d.source_namespace.clone().or_else(|| r.source_namespace.clone()),
        stat_prefix: d.stat_prefix.clone().or_else(|| r.stat_prefix.clone()),
    };
    HttpMatchRequest {
        uri: delegate.uri.clone().or_else(|| root.uri.clone()),
        headers: KeyedMatches::merged(&root.headers, &delegate.headers),
        ignore_uri_case: delegate.ignore_uri_case,
        more: (more != MoreConditions::default()).then(|| Box::new(more)),
    }
}

/// Istio's `hasConflict`: the delegate block asks for something outside the root block.
fn conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let (r, l) = (root.more(), leaf.more());
    let strings =
        [(&root.uri, &leaf.uri), (&r.scheme, &l.scheme), (&r.method, &l.method), (&r.authority, &l.authority)];
    if strings.iter().any(|(a, b)| string_conflict(a.as_deref(), b.as_deref())) {
        return true;
    }
    let keyed =
        [(&root.headers, &leaf.headers), (&r.without_headers, &l.without_headers), (&r.query_params, &l.query_params)];
    if keyed.iter().any(|(a, b)| b.iter().any(|(k, v)| string_conflict(a.get(k), Some(v)))) {
        return true;
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if matches!((r.port, l.port), (Some(a), Some(b)) if a > 0 && b > 0 && a != b) {
        return true;
    }
    if r.source_namespace.is_some() && l.source_namespace != r.source_namespace {
        return true;
    }
    if l.source_labels.iter().any(|(k, v)| r.source_labels.get(k).is_some_and(|rv| rv != v)) {
        return true;
    }
    !r.gateways.is_empty() && !l.gateways.is_empty() && !l.gateways.iter().all(|g| r.gateways.contains(g))
}

/// A match value that is set and not empty (Istio's getters treat "" as unset).
fn set(value: &Option<crate::schema::CompactString>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Istio's `stringMatchConflict`: no conflict when either is unset; regexes combine with
/// nothing; an exact root takes only the same exact; a prefix root takes prefixes and exacts
/// under it.
fn string_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    let (r_exact, r_prefix, r_regex) = (set(&root.exact), set(&root.prefix), set(&root.regex));
    let (l_exact, l_prefix, l_regex) = (set(&leaf.exact), set(&leaf.prefix), set(&leaf.regex));
    let leaf_any = l_exact.is_some() || l_prefix.is_some() || l_regex.is_some();
    let root_any = r_exact.is_some() || r_prefix.is_some() || r_regex.is_some();
    if (r_regex.is_some() && leaf_any) || (l_regex.is_some() && root_any) {
        return true;
    }
    if let Some(exact) = r_exact {
        return l_prefix.is_some() || l_exact != Some(exact);
    }
    if let Some(prefix) = r_prefix {
        if let Some(p) = l_prefix {
            return !p.starts_with(prefix);
        }
        if let Some(e) = l_exact {
            return !e.starts_with(prefix);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(yaml: &str) -> Vec<HttpRoute> {
        serde_norway::from_str(yaml).expect("routes yaml")
    }

    /// Istio's delegate task: the root sends /productpage and /reviews to delegates.
    #[test]
    fn matches_combine_and_conflicts_drop_the_delegate_route() {
        let root = &routes("[{name: reviews, match: [{uri: {prefix: /reviews}}], timeout: 3s}]")[0];
        let delegate = routes(
            "[{name: v2, match: [{uri: {prefix: /reviews/v2}, headers: {end-user: {exact: jason}}}], route: [{destination: {host: reviews, subset: v2}}]},
              {match: [{uri: {prefix: /ratings}}], route: [{destination: {host: ratings}}]},
              {route: [{destination: {host: reviews, subset: v1}}], timeout: 1s}]",
        );
        let (merged, conflicts) = merge_routes(root, &delegate);
        assert_eq!(conflicts, [1], "/ratings is not under /reviews");
        let (j, first) = &merged[0];
        assert_eq!((*j, first.name.as_deref()), (0, Some("reviews-v2")));
        assert_eq!(first.matches[0].uri.as_ref().unwrap().prefix.as_deref(), Some("/reviews/v2"));
        assert_eq!(first.matches[0].headers.get("end-user").unwrap().exact.as_deref(), Some("jason"));
        assert_eq!(first.timeout.as_deref(), Some("3s"), "inherited from the root");
        // No match of its own: the root's; its own timeout stays.
        let (_, last) = &merged[1];
        assert_eq!(last.matches[0].uri.as_ref().unwrap().prefix.as_deref(), Some("/reviews"));
        assert_eq!((last.name.as_deref(), last.timeout.as_deref()), (Some("reviews"), Some("1s")));
    }

    #[test]
    fn the_roots_match_gateways_keep_the_roots_namespace() {
        let root = &routes("[{match: [{uri: {prefix: /a}, gateways: [gw, other/gw2]}]}]")[0];
        let resolved = with_gateways_resolved(root, "team-a");
        assert_eq!(resolved.matches[0].more().gateways, ["team-a/gw", "other/gw2"]);
    }

    #[test]
    fn string_conflicts_as_istio_judges_them() {
        let m = |yaml: &str| -> StringMatch { serde_norway::from_str(yaml).unwrap() };
        for (root, leaf, conflict) in [
            ("{prefix: /a}", "{prefix: /a/b}", false),
            ("{prefix: /a/b}", "{prefix: /a}", true),
            ("{prefix: /a}", "{exact: /a/x}", false),
            ("{exact: /a}", "{exact: /a}", false),
            ("{exact: /a}", "{exact: /b}", true),
            ("{exact: /a}", "{prefix: /a}", true),
            ("{regex: /a.*}", "{prefix: /a}", true),
            ("{prefix: /a}", "{regex: /a.*}", true),
        ] {
            assert_eq!(string_conflict(Some(&m(root)), Some(&m(leaf))), conflict, "{root} {leaf}");
        }
        assert!(!string_conflict(None, Some(&m("{exact: /a}"))));
    }

    #[test]
    fn root_settings_fill_what_the_delegate_leaves_unset() {
        let root = &routes(
            "[{match: [{uri: {prefix: /}, method: {exact: GET}}], retries: {attempts: 5}, corsPolicy: {allowOrigins: [{exact: x}]}, headers: {request: {set: {a: b}}}}]",
        )[0];
        let delegate = routes(
            "[{match: [{headers: {x: {exact: y}}}], route: [{destination: {host: a}}], retries: {attempts: 1}}]",
        );
        let (merged, _) = merge_routes(root, &delegate);
        let route = &merged[0].1;
        assert_eq!(route.rest().retries.as_ref().unwrap().attempts, 1);
        assert!(route.rest().cors_policy.is_some() && route.rest().headers.is_some());
        let m = &route.matches[0];
        assert_eq!(m.more().method.as_ref().unwrap().exact.as_deref(), Some("GET"));
        assert_eq!(m.uri.as_ref().unwrap().prefix.as_deref(), Some("/"));
    }
}
