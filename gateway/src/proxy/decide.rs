//! The routing decision: a pure function of the compiled runtime and the request's head, with
//! no Pingora session, so it is table-tested like the matcher. The `ProxyHttp` hooks only adapt
//! it (see `request_filter`).
//!
//! ```text
//!  unenforced policy? ─► 403 RBAC
//!  listener(port) ─► TLS server mismatch? 421 ─► virtual host(Host) or 404 NR ─► httpsRedirect? 301
//!  ─► first matching route or 404 NR ─► its CORS preflight answer, if it is one
//!  ─► its redirect or direct response, if it has one
//!  ─► cluster (weights) or 503 NC ─► TLS settings or 503 UF
//!  ─► endpoint (LB, hash key) or 503 UH ─► its rewrite (path, authority), if it has one
//! ```

use super::local_reply::LocalReply;
use super::redirect::{self, RequestUrl};
use crate::balance::{hash_key, Pick};
use crate::compiled::cluster::ClusterRuntime;
use crate::compiled::cors;
use crate::compiled::headers::CompiledEdits;
use crate::compiled::matcher::RequestView;
use crate::compiled::{Route, Runtime};
use crate::head;
use meshgate_model::snapshot::{HashKey, RouteAction};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;

/// What the decision reads of a request.
pub(super) struct Incoming<'a> {
    /// The Gateway server port (Service port) the request arrived on.
    pub(crate) port: u16,
    /// For TLS-terminated connections, the server whose certificate the client got.
    pub(crate) tls_server: Option<&'a str>,
    pub(crate) head: &'a RequestHeader,
    /// The authority as sent (Host, else the absolute-form target's), read once by
    /// `validate::check`.
    pub(crate) authority: Option<&'a str>,
    /// For `consistentHash.useSourceIp`.
    pub(crate) client_ip: Option<IpAddr>,
}

/// Where the request goes.
pub(super) struct Decision {
    pub(crate) route: Arc<Route>,
    pub(crate) cluster: Arc<ClusterRuntime>,
    /// The endpoint, holding its in-flight count until dropped.
    pub(crate) pick: Pick,
    /// The consistent-hash key, for a retry's pick.
    pub(crate) hash: Option<u64>,
    /// A consistent-hash cookie to set on the response: the request had none.
    pub(crate) set_cookie: Option<String>,
    /// The route's `rewrite` for this request.
    pub(crate) rewrite: Option<Box<Rewritten>>,
    /// The picked destination's own `headers` (the route's are on the route).
    pub(crate) destination_headers: Option<Arc<CompiledEdits>>,
}

/// What the upstream request's path and authority become (`rewrite`).
pub(crate) struct Rewritten {
    /// Path and query; `None` when only the authority changes.
    pub(crate) path: Option<String>,
    pub(crate) authority: Option<http::HeaderValue>,
}

/// What the gateway answers itself, with the route and cluster when they were known (for
/// metrics and the access log).
pub(super) struct Refusal {
    pub(crate) reply: LocalReply,
    pub(crate) route: Option<Arc<Route>>,
    pub(crate) cluster: Option<Arc<ClusterRuntime>>,
}

impl From<LocalReply> for Refusal {
    fn from(reply: LocalReply) -> Refusal {
        Refusal { reply, route: None, cluster: None }
    }
}

/// Decides where `request` goes: [`route`], then [`upstream`] (the request path runs the
/// route's `fault` between the two, as Envoy's fault filter runs before its router).
#[cfg(test)]
pub(super) fn decide(runtime: &Runtime, request: &Incoming<'_>) -> Result<Decision, Refusal> {
    upstream(route(runtime, request)?, request)
}

/// The route a request matched, with what the upstream step reads of the request again.
pub(super) struct Routed<'a> {
    pub(crate) route: Arc<Route>,
    view: RequestView<'a>,
    /// The `Origin` of a CORS request the route's `corsPolicy` allows: its response gets the
    /// policy's headers.
    pub(crate) cors_origin: Option<http::HeaderValue>,
}

/// The first half of the decision: the route, or the gateway's own answer (403, 421, 404,
/// 301, a redirect or direct response).
pub(super) fn route<'a>(runtime: &Runtime, request: &Incoming<'a>) -> Result<Routed<'a>, Refusal> {
    if runtime.deny.is_some() {
        return Err(LocalReply::rbac_denied().into());
    }
    let listener = runtime.listeners.get(&request.port).ok_or_else(LocalReply::no_route)?;
    let req = request.head;
    let host = head::lowercase(head::strip_port(request.authority.unwrap_or("")));
    if let Some(server) = request.tls_server {
        let mine = listener.tls.iter().find(|t| t.def.server == server);
        let served_here = mine.is_some_and(|t| t.hosts.find(&host).is_some());
        if !served_here && listener.tls.iter().any(|t| t.hosts.find(&host).is_some()) {
            return Err(LocalReply::misdirected().into());
        }
    }
    let vhost = listener.hosts.find(&host).ok_or_else(LocalReply::no_route)?;
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    // As sent: port and case kept (Envoy's `:authority`); `host` is empty when it is absent.
    let authority = request.authority.unwrap_or("");
    if vhost.https_redirect {
        return Err(LocalReply::https_redirect(authority, path).into());
    }
    let view = RequestView {
        path,
        method: req.method.as_str(),
        scheme: if request.tls_server.is_some() { "https" } else { "http" },
        authority,
        headers: &req.headers,
        port: request.port,
    };
    let route = vhost.routes.iter().find(|r| r.matches(&view)).ok_or_else(LocalReply::no_route)?.clone();
    // Envoy's CORS filter runs before the fault filter and the router.
    let mut cors_origin = None;
    if let Some(cors) = route.cors() {
        match cors.judge(&req.method, &req.headers) {
            cors::Verdict::Pass => {}
            cors::Verdict::Allowed(origin) => cors_origin = Some(origin.clone()),
            cors::Verdict::Preflight(headers) => {
                return Err(Refusal { reply: LocalReply::cors_preflight(headers), route: Some(route), cluster: None });
            }
        }
    }
    let mut reply = match route.action() {
        RouteAction::Route { .. } => return Ok(Routed { route, view, cors_origin }),
        RouteAction::Redirect(redirect) => {
            let matched = match redirect.prefix_rewrite {
                Some(_) => route.matched_uri_part(&view),
                None => crate::compiled::rewrite::UriPart::Root,
            };
            let url =
                RequestUrl { scheme: view.scheme, authority, path_and_query: path, server_port: request.port, matched };
            LocalReply::redirect(redirect.code, redirect::location(redirect, &url))
        }
        RouteAction::DirectResponse(direct) => LocalReply::direct(direct.status, route.direct_body()),
    };
    if let (Some(cors), Some(origin)) = (route.cors(), cors_origin) {
        reply.headers.extend(cors.response_headers(origin));
    }
    Err(Refusal { reply, route: Some(route), cluster: None })
}

/// The second half: the destination cluster and its endpoint, or 503 (NC, UF, UH).
pub(super) fn upstream(routed: Routed<'_>, request: &Incoming<'_>) -> Result<Decision, Refusal> {
    let Routed { route, view, .. } = routed;
    // No cluster (all weights 0) or one Envoy would not have (unknown host or subset): NC.
    let picked = route.pick_cluster().filter(|(c, _)| !c.definition.not_found).map(|(c, h)| (c.clone(), h.cloned()));
    let Some((cluster, destination_headers)) = picked else {
        return Err(Refusal { reply: LocalReply::no_cluster(), route: Some(route), cluster: None });
    };
    let refuse = |reply, route, cluster| Err(Refusal { reply, route: Some(route), cluster: Some(cluster) });
    if cluster.tls().is_err() {
        return refuse(LocalReply::upstream_tls_unusable(), route, cluster);
    }
    let (hash, set_cookie) = request_hash(&cluster, request);
    let rewrite = route.rewrite(&view).map(|(path, authority)| Box::new(Rewritten { path, authority }));
    match cluster.balancer.pick(hash, None) {
        Some(pick) => Ok(Decision { route, cluster, pick, hash, set_cookie, rewrite, destination_headers }),
        None => refuse(LocalReply::no_healthy_upstream(), route, cluster),
    }
}

/// The consistent-hash input for clusters that use one, and the cookie to set when the hash
/// is by cookie and the request had none (so the client sticks from its next request on).
fn request_hash(cluster: &ClusterRuntime, request: &Incoming<'_>) -> (Option<u64>, Option<String>) {
    let Some(key) = cluster.hash_key.as_deref() else { return (None, None) };
    let req = request.head;
    let hash = match key {
        HashKey::Header(name) => req.headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
        HashKey::QueryParameter(name) => head::query_param(req, name).map(|v| hash_key(v.as_bytes())),
        HashKey::SourceIp => request.client_ip.map(|ip| match ip {
            IpAddr::V4(ip) => hash_key(&ip.octets()),
            IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
        HashKey::Cookie { name, path, ttl_seconds } => {
            if let Some(value) = head::cookie(req, name) {
                return (Some(hash_key(value.as_bytes())), None);
            }
            let value = format!("{:016x}", fastrand::u64(..));
            let mut cookie = format!("{name}=\"{value}\"");
            if let Some(ttl) = ttl_seconds.filter(|t| *t > 0) {
                cookie.push_str(&format!("; Max-Age={ttl}"));
            }
            if let Some(path) = path {
                cookie.push_str(&format!("; Path={path}"));
            }
            cookie.push_str("; HttpOnly");
            return (Some(hash_key(value.as_bytes())), Some(cookie));
        }
    };
    (hash, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response_flag::ResponseFlag;
    use controller::source::files::load_text;
    use controller::store::Store;
    use controller::{translate, Options};

    const CONFIG: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*.example.com"]
  - port: {number: 8080, name: redirect, protocol: HTTP}
    hosts: ["secure.example.com"]
    tls: {httpsRedirect: true}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  ports: [{port: 9080, name: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-1, namespace: default, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints: [{addresses: ["10.0.0.1"], conditions: {ready: true}}]
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec:
  ports: [{port: 9080, name: http}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, ttl: 0s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: ["*.example.com", "secure.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /nobody}}]
    route: [{destination: {host: empty}}]
  - match: [{uri: {prefix: /unknown}}]
    route: [{destination: {host: nowhere.example.org}}]
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, scheme: https, redirectCode: 302}
  - match: [{uri: {exact: /gone}}]
    directResponse: {status: 410, body: {string: "gone for good"}}
"#;

    fn runtime() -> Runtime {
        let mut store = Store::default();
        load_text(&mut store, CONFIG, None);
        let (snapshot, diags) = translate(&store, &Options::default());
        assert_eq!(diags.errors(), 0, "{:?}", diags.items);
        Runtime::compile(Arc::new(snapshot), None)
    }

    fn head(path: &str, host: &str, cookie: Option<&str>) -> RequestHeader {
        let mut h = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        h.insert_header("host", host).unwrap();
        if let Some(c) = cookie {
            h.insert_header("cookie", c).unwrap();
        }
        h
    }

    fn decide_on(runtime: &Runtime, port: u16, path: &str, host: &str) -> Result<Decision, Refusal> {
        let h = head(path, host, None);
        decide(runtime, &Incoming { port, tls_server: None, head: &h, authority: head::authority(&h), client_ip: None })
    }

    fn refused(r: Result<Decision, Refusal>) -> (u16, ResponseFlag) {
        match r {
            Ok(d) => panic!("routed to {}", d.cluster.definition.name),
            Err(r) => (r.reply.code, r.reply.flags),
        }
    }

    #[test]
    fn each_outcome_of_the_decision() {
        let rt = runtime();
        let ok = decide_on(&rt, 80, "/reviews/1", "a.example.com").ok().expect("routed");
        assert_eq!(&*ok.cluster.definition.name, "outbound|9080||reviews.default.svc.cluster.local");
        assert!(ok.set_cookie.as_deref().is_some_and(|c| c.starts_with("user=\"")), "a hash cookie is handed out");
        assert_eq!(refused(decide_on(&rt, 80, "/reviews", "example.org")), (404, ResponseFlag::NoRoute));
        assert_eq!(refused(decide_on(&rt, 80, "/other", "a.example.com")), (404, ResponseFlag::NoRoute));
        assert_eq!(refused(decide_on(&rt, 81, "/reviews", "a.example.com")), (404, ResponseFlag::NoRoute));
        assert_eq!(refused(decide_on(&rt, 80, "/nobody", "a.example.com")), (503, ResponseFlag::NoHealthyUpstream));
        assert_eq!(refused(decide_on(&rt, 80, "/unknown", "a.example.com")), (503, ResponseFlag::NoClusterFound));
        // httpsRedirect keeps the Host as sent, port included.
        let r = decide_on(&rt, 8080, "/x?y=1", "Secure.example.com:8080").err().expect("redirected");
        assert_eq!((r.reply.code, r.reply.location.as_deref()), (301, Some("https://Secure.example.com:8080/x?y=1")));
    }

    #[test]
    fn redirect_and_direct_response_routes_answer_themselves() {
        let rt = runtime();
        let r = decide_on(&rt, 80, "/old/x?q=1", "a.example.com:8080").err().expect("redirected");
        assert_eq!((r.reply.code, r.reply.flags), (302, ResponseFlag::None));
        assert_eq!(r.reply.location.as_deref(), Some("https://a.example.com:8080/new?q=1"));
        assert!(r.route.is_some() && r.cluster.is_none(), "the route is known for telemetry, no cluster");
        let r = decide_on(&rt, 80, "/gone", "a.example.com").err().expect("answered");
        assert_eq!((r.reply.code, &r.reply.body[..], r.reply.verbatim), (410, &b"gone for good"[..], true));
        // Matching still decides: the next path is not the direct response's.
        assert_eq!(refused(decide_on(&rt, 80, "/gone/x", "a.example.com")), (404, ResponseFlag::NoRoute));
    }

    #[test]
    fn a_hash_cookie_sent_back_keeps_the_endpoint_and_sets_nothing() {
        let rt = runtime();
        let h = head("/reviews", "a.example.com", Some("user=\"00000000000000ab\""));
        let d = decide(
            &rt,
            &Incoming { port: 80, tls_server: None, head: &h, authority: head::authority(&h), client_ip: None },
        )
        .ok()
        .unwrap();
        assert!(d.set_cookie.is_none());
    }

    #[test]
    fn an_unenforced_policy_denies_before_routing() {
        let mut rt = runtime();
        rt.deny = Some("rbac_access_denied_unenforced_policy[ns[istio-system]-policy[p]]".into());
        assert_eq!(refused(decide_on(&rt, 80, "/reviews", "a.example.com")), (403, ResponseFlag::UnenforcedPolicy));
        assert_eq!(refused(decide_on(&rt, 81, "/", "nowhere")), (403, ResponseFlag::UnenforcedPolicy));
    }
}
