//! What the benchmarks (`gateway/benches`) measure, and nothing else: compiling a snapshot,
//! and the routing lookup of one request.

use crate::compiled::matcher::RequestView;
pub use crate::compiled::Runtime;

/// Whether a GET of `path` for `host` on `port` finds a route and a cluster, as the request
/// path does: the host table, the first matching route, its weighted cluster pick.
pub fn route(runtime: &Runtime, port: u16, host: &str, path: &str, headers: &http::HeaderMap) -> bool {
    let Some(listener) = runtime.listeners.get(&port) else { return false };
    let Some(vhost) = listener.hosts.find(host) else { return false };
    let view = RequestView { path, method: "GET", scheme: "http", authority: host, headers, port };
    vhost.routes.iter().find(|r| r.matches(&view)).and_then(|r| r.pick_cluster()).is_some()
}
