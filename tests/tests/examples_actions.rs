//! The route-action examples: `examples/traffic-shifting` (weighted routes,
//! shifted by editing a watched file while traffic flows), `examples/redirects`
//! (`redirect`) and `examples/cors` (`corsPolicy`), applied on top of
//! `examples/bookinfo`, and `examples/mirroring` (`mirror`), an app of its own.
//!
//! Like `examples.rs`, each test starts what its README runs: the echo
//! upstreams at the pods' `status.podIP` and the real gateway on the
//! example's files, Gateway port 80 on a free loopback port. bookinfo's pod
//! addresses (127.0.0.31–36) are bound by `traffic_shifting_by_live_edits`
//! and `cors` one after the other (each holds [`BOOKINFO_PODS`] while its
//! upstreams run); mirroring's (127.0.0.81–82) by `mirroring` alone; the
//! other tests of this file run in parallel with them. `examples.rs` binds
//! bookinfo's addresses too; `cargo test` runs the two binaries one after
//! the other.
//!
//! Build the gateway first: `cargo build -p gateway`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod common;

use common::examples::{assert_analyze_silent as assert_analyze_clean, example, start_gateway, start_upstreams};
use meshgate_e2e::manifest::load_objects;
use meshgate_e2e::prelude::*;
use serde_json::{json, Value};

/// Held by each test of this file that binds bookinfo's pod addresses, for as long as its
/// upstreams run: one socket cannot be two pods.
static BOOKINFO_PODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// traffic-shifting

/// The four files of `examples/traffic-shifting`, in the order the README
/// applies them, with the split each one asks for (subset -> weight).
const SHIFTS: [(&str, &[(&str, u32)]); 4] = [
    ("virtual-service-all-v1.yaml", &[("v1", 100)]),
    ("virtual-service-reviews-80-20.yaml", &[("v1", 80), ("v2", 20)]),
    ("virtual-service-reviews-50-v3.yaml", &[("v1", 50), ("v3", 50)]),
    ("virtual-service-reviews-v3.yaml", &[("v3", 100)]),
];

/// The Istio sample each file of `examples/traffic-shifting` was made from
/// (kept unchanged under `tests/compat/istio`).
fn istio_sample(file: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/compat/istio/samples/bookinfo/networking")).join(file)
}

/// The VirtualService `reviews` of a file.
fn reviews_vs(path: &Path) -> Value {
    let objects = load_objects(&[path.to_path_buf()]).expect("YAML loads");
    objects
        .into_iter()
        .find(|o| o["kind"] == "VirtualService" && o["metadata"]["name"] == "reviews")
        .unwrap_or_else(|| panic!("{} has no VirtualService reviews", path.display()))
}

/// Each file is its Istio sample's `reviews` VirtualService with only what
/// moving it to the ingress gateway needs changed: `hosts: ["*"]`,
/// `gateways: [bookinfo-gateway]` and the `/reviews` match. Its routes and
/// weights are the sample's.
#[test]
fn traffic_shifting_files_are_the_istio_samples_moved_to_the_gateway() {
    for (file, split) in SHIFTS {
        let ours = reviews_vs(&example("traffic-shifting").join(file));
        let sample = reviews_vs(&istio_sample(file));
        assert_eq!(ours["apiVersion"], sample["apiVersion"], "{file}");
        assert_eq!(ours["metadata"], sample["metadata"], "{file}");
        assert_eq!(sample["spec"]["hosts"], json!(["reviews"]), "{file}: the sample applies inside the mesh");
        assert_eq!(ours["spec"]["hosts"], json!(["*"]), "{file}");
        assert_eq!(ours["spec"]["gateways"], json!(["bookinfo-gateway"]), "{file}");
        let (ours, sample) = (&ours["spec"]["http"], &sample["spec"]["http"]);
        assert_eq!((ours.as_array().map(Vec::len), sample.as_array().map(Vec::len)), (Some(1), Some(1)), "{file}");
        assert_eq!(ours[0]["match"], json!([{"uri": {"prefix": "/reviews"}}]), "{file}");
        assert_eq!(sample[0].get("match"), None, "{file}");
        assert_eq!(ours[0]["route"], sample[0]["route"], "{file}: the sample's destinations and weights");
        let subsets: Vec<&str> = split.iter().map(|(s, _)| *s).collect();
        let routed: Vec<&str> =
            ours[0]["route"].as_array().unwrap().iter().map(|d| d["destination"]["subset"].as_str().unwrap()).collect();
        assert_eq!(routed, subsets, "{file}");
    }
}

/// The reviews split the gateway serves now, from `/config_dump`: subset ->
/// weight of the route of VirtualService `default/reviews`.
async fn served_split(gw: &GatewayProcess) -> Vec<(String, u32)> {
    let Ok(r) = admin_get(gw.admin_addr(), "/config_dump").await else { return Vec::new() };
    let Ok(dump) = r.json::<Value>() else { return Vec::new() };
    let mut out = Vec::new();
    for listener in dump["listeners"].as_array().into_iter().flatten() {
        for vhost in listener["virtual_hosts"].as_array().into_iter().flatten() {
            for route in vhost["routes"].as_array().into_iter().flatten() {
                if route["virtual_service"] != "default/reviews" {
                    continue;
                }
                for d in route["action"]["route"]["destinations"].as_array().into_iter().flatten() {
                    // outbound|9080|v1|reviews.default.svc.cluster.local
                    let subset = d["cluster"].as_str().unwrap_or("").split('|').nth(2).unwrap_or("").to_string();
                    out.push((subset, d["weight"].as_u64().unwrap_or(0) as u32));
                }
            }
        }
    }
    out
}

/// Whether `served` (from [`served_split`]) is `want` in proportion: a single
/// destination is dumped with weight 1.
fn same_split(served: &[(String, u32)], want: &[(&str, u32)]) -> bool {
    let total: u32 = served.iter().map(|(_, w)| w).sum();
    let want_total: u32 = want.iter().map(|(_, w)| w).sum();
    served.len() == want.len()
        && served.iter().zip(want).all(|((s, w), (ws, ww))| {
            s == ws && u64::from(*w) * u64::from(want_total) == u64::from(*ww) * u64::from(total)
        })
}

/// `n` requests for `/reviews/0` on one keep-alive connection: how many each
/// reviews version answered. Every one must be a 200 from reviews.
async fn tally_reviews(gw: &GatewayProcess, n: usize) -> BTreeMap<String, usize> {
    let client = HttpClient::pooled();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = client.get(gw.addr(80), "/reviews/0").send().await.unwrap_or_else(|e| panic!("GET /reviews/0: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "GET /reviews/0: {}", r.text());
        let e = r.echo().unwrap();
        assert_eq!(e.service, "reviews");
        *counts.entry(e.version).or_insert(0) += 1;
    }
    counts
}

/// Each version answered its share of `n` within 6 standard deviations of
/// a binomial(n, weight/total), and no other version answered.
fn assert_split(counts: &BTreeMap<String, usize>, n: usize, want: &[(&str, u32)], file: &str) {
    let versions: Vec<&str> = counts.keys().map(String::as_str).collect();
    let mut wanted: Vec<&str> = want.iter().map(|(v, _)| *v).collect();
    wanted.sort_unstable();
    assert_eq!(versions, wanted, "{file}: versions that answered: {counts:?}");
    let total: u32 = want.iter().map(|(_, w)| w).sum();
    for (version, weight) in want {
        let p = f64::from(*weight) / f64::from(total);
        let expected = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        let got = counts[*version] as f64;
        assert!(
            (got - expected).abs() <= 6.0 * sd,
            "{file}: {version} answered {got} of {n}, expected {expected} ± {:.1} (6 sd): {counts:?}",
            6.0 * sd
        );
    }
}

/// The README's walk through Istio's traffic-shifting task: the gateway
/// serves bookinfo plus a copy of `virtual-service-all-v1.yaml`; the copy is
/// then overwritten with the 80/20, 50/50 v1/v3 and all-v3 files while a
/// client keeps sending requests. Each version of the file is served as soon
/// as `/config_dump` shows it, splits the traffic as its weights say, and no
/// request fails across the edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shifting_by_live_edits() {
    let base = example("bookinfo");
    let shifting = example("traffic-shifting");
    for (file, _) in SHIFTS {
        assert_analyze_clean(&[&base, &shifting.join(file)]);
    }
    let _pods = BOOKINFO_PODS.lock().await;
    let _ups = start_upstreams(&base).await;
    // The README's copy: one watched file, rewritten in place.
    let copy = ConfigDir::new().unwrap();
    let watched = copy.file("reviews.yaml");
    std::fs::copy(shifting.join(SHIFTS[0].0), &watched).unwrap();
    let gw = start_gateway(&[&base, &watched]).await;
    assert!(same_split(&served_split(&gw).await, SHIFTS[0].1), "{:?}", served_split(&gw).await);

    // A second client sends requests the whole time, on its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (stop, at) = (stop.clone(), gw.addr(80));
        tokio::spawn(async move {
            let client = HttpClient::pooled();
            let (mut sent, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                sent += 1;
                match client.get(at, "/reviews/0").send().await {
                    Ok(r) if r.status == StatusCode::OK && r.echo().is_ok_and(|e| e.service == "reviews") => {}
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (sent, failed)
        })
    };

    let n = 1000;
    for (i, (file, split)) in SHIFTS.iter().enumerate() {
        if i > 0 {
            let source = shifting.join(file);
            if i == 2 {
                // As `mv` or an editor saving by rename writes it.
                copy.write("reviews.yaml", &std::fs::read_to_string(&source).unwrap()).unwrap();
            } else {
                // As the README's `cp` writes it: truncated, then written.
                std::fs::copy(&source, &watched).unwrap();
            }
            assert_eventually!(
                Duration::from_secs(10),
                served_split(&gw).await,
                |served| same_split(served, split),
                "{file} is served after the edit"
            );
        }
        let counts = tally_reviews(&gw, n).await;
        assert_split(&counts, n, split, file);
    }

    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = background.await.unwrap();
    assert!(failed.is_empty(), "{} of {sent} requests failed during the edits: {failed:?}", failed.len());
    assert!(sent >= 100, "the background client sent only {sent} requests");

    // The product page paths of ../bookinfo are untouched by the edits.
    let r = get(gw.addr(80), "/productpage").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().unwrap().service, "productpage");
    assert_eq!(get(gw.addr(80), "/ratings/0").send().await.unwrap().status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------
// redirects

/// Every redirect of `examples/redirects` (README "Try it"): status,
/// `location` exactly, no body. The gateway answers
/// them itself, so no upstream runs here.
#[tokio::test]
async fn redirects() {
    let base = example("bookinfo");
    let redirects = example("redirects");
    assert_analyze_clean(&[&base, &redirects]);
    let gw = start_gateway(&[&base, &redirects]).await;

    let ratings = "ratings.prod.svc.cluster.local";
    let cases: [(Method, &str, &str, u16, &str); 10] = [
        // ratings-route.yaml, Istio's API reference example: uri and authority, 301 by default;
        // the query stays.
        (
            Method::GET,
            ratings,
            "/v1/getProductRatings?productId=0",
            301,
            "http://newratings.default.svc.cluster.local/v1/bookRatings?productId=0",
        ),
        (
            Method::GET,
            ratings,
            "/v1/getProductRatings",
            301,
            "http://newratings.default.svc.cluster.local/v1/bookRatings",
        ),
        // bookinfo-redirects.yaml: scheme https, 308, derivePort FROM_PROTOCOL_DEFAULT, uri.
        (
            Method::POST,
            "bookinfo.example.com",
            "/signin?next=/productpage",
            308,
            "https://bookinfo.example.com/login?next=/productpage",
        ),
        (Method::GET, "bookinfo.example.com", "/signin", 308, "https://bookinfo.example.com/login"),
        // scheme https and port 9443; the path and query stay.
        (
            Method::GET,
            "bookinfo.example.com",
            "/admin/stats?format=json",
            301,
            "https://bookinfo.example.com:9443/admin/stats?format=json",
        ),
        (Method::GET, "localhost:8080", "/admin/", 301, "https://localhost:9443/admin/"),
        // A Host with a port other than the scheme's default (curl localhost:8080), as Istio's
        // Envoy answers: FROM_PROTOCOL_DEFAULT is no port setting, so the request's port stays;
        // an `authority` is taken as written, without the request's port.
        (Method::GET, "localhost:8080", "/signin", 308, "https://localhost:8080/login"),
        (
            Method::GET,
            "ratings.prod.svc.cluster.local:8080",
            "/v1/getProductRatings?productId=0",
            301,
            "http://newratings.default.svc.cluster.local/v1/bookRatings?productId=0",
        ),
        // foo-redirect.yaml: prefixRewrite replaces the matched /foo/ prefix.
        (Method::GET, "example.com", "/foo/bar?x=1", 301, "http://foo.example.com/bar?x=1"),
        (Method::GET, "bookinfo.example.com:80", "/signin", 308, "https://bookinfo.example.com/login"),
    ];
    for (method, host, path, status, location) in cases {
        let mut req = request(method.clone(), gw.addr(80), path).host(host);
        if method == Method::POST {
            req = req.header("content-type", "application/x-www-form-urlencoded").body("username=jason");
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{method} {host}{path}: {e:#}"));
        assert_eq!(r.status.as_u16(), status, "{method} {host}{path}: {:?}", r.headers);
        assert_eq!(r.header("location"), Some(location), "{method} {host}{path}");
        assert_eq!(r.header("content-length"), Some("0"), "{method} {host}{path}");
        assert!(r.body.is_empty(), "{method} {host}{path}: {}", r.text());
    }

    // Only what the rules match redirects: the ratings rule is for its host only, and an
    // exact or prefix match does not reach past itself.
    for (host, path) in [
        (ratings, "/productpage"),
        (ratings, "/v1/getProductRatings/0"),
        ("bookinfo.example.com", "/v1/getProductRatings"),
        ("bookinfo.example.com", "/signin/x"),
        ("bookinfo.example.com", "/admin"),
    ] {
        let r = get(gw.addr(80), path).host(host).send().await.unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{host}{path}: {:?}", r.headers);
        assert_eq!(r.header("location"), None, "{host}{path}");
    }

    // The access log names the route that answered and no upstream.
    let line = gw
        .wait_for_log(|l| l.contains(r#""path":"/admin/""#), Duration::from_secs(5))
        .await
        .expect("an access log line for /admin/");
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&entry["response_code"], &entry["response_flags"], &entry["route_name"], &entry["upstream_host"]),
        (&json!(301), &json!("-"), &json!("admin"), &Value::Null),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// mirroring

/// The mirror cluster of `examples/mirroring`: subset v2 of httpbin, port 8000.
const HTTPBIN_V2: &str = "outbound|8000|v2|httpbin.default.svc.cluster.local";

/// `meshgate_mirror_requests_total` of the copies to httpbin v2 that ended with `outcome`.
async fn mirrored(gw: &GatewayProcess, outcome: &str) -> u64 {
    let Ok(text) = metrics(gw.metrics_addr()).await else { return 0 };
    let labels = [("cluster_name", HTTPBIN_V2), ("outcome", outcome)];
    metric_value(&text, "meshgate_mirror_requests_total", &labels).unwrap_or(0.0) as u64
}

/// What a request and its copy must have in common, keyed by the request id.
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    method: String,
    path: String,
    body: String,
    host: String,
}

/// Istio's "Mirroring" task at the ingress gateway (README "Try it"): every request is
/// answered by httpbin v1, and v2 gets exactly one copy of each: the same method, path, body
/// and request id, with `-shadow` on its host. With v2 gone, every request still succeeds
/// from v1 and the copies count as failed.
#[tokio::test]
async fn mirroring() {
    let dir = example("mirroring");
    assert_analyze_clean(&[&dir]);
    let mut ups = start_upstreams(&dir).await;
    assert_eq!(ups.len(), 2, "two httpbin pods");
    let v2 = ups.remove(ups.iter().position(|u| u.version() == "v2").expect("a v2 pod"));
    let v1 = ups.pop().unwrap();
    assert_eq!((v1.version(), v1.addr()), ("v1", "127.0.0.81:8080".parse().unwrap()));
    assert_eq!(v2.addr(), "127.0.0.82:8080".parse().unwrap());
    let gw = start_gateway(&[&dir]).await;

    // Host sent -> Host of the copy: `-shadow` goes before the port, as Envoy puts it.
    let hosts = [("httpbin.example.com", "httpbin.example.com-shadow"), ("localhost:8080", "localhost-shadow:8080")];
    let client = HttpClient::pooled();
    let mut sent = BTreeMap::new();
    let n = 50;
    for i in 0..n {
        let (host, shadow) = hosts[i % hosts.len()];
        let (method, path, body) = if i % 2 == 0 {
            (Method::GET, "/headers".to_string(), String::new())
        } else {
            (Method::POST, format!("/anything/{i}"), format!("n={i}"))
        };
        let mut req = client.request(method.clone(), gw.addr(80), &path).host(host);
        if method == Method::POST {
            req = req.header("content-type", "application/x-www-form-urlencoded").body(body.clone());
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{method} {host}{path}: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "{method} {host}{path}: {}", r.text());
        let e = r.echo().unwrap();
        assert_eq!((e.service.as_str(), e.version.as_str()), ("httpbin", "v1"), "{method} {host}{path}");
        assert_eq!(e.pod.as_deref(), Some("httpbin-v1-7d8c9b5f4d-6xq2p"));
        assert_eq!((e.host.as_str(), e.body.as_str()), (host, body.as_str()));
        let id = e.header("x-request-id").expect("a request id").to_string();
        sent.insert(id, Sent { method: method.to_string(), path, body, host: shadow.to_string() });
    }
    assert_eq!(v1.hits(), n as u64);

    // Fire and forget: the copies arrive after the client had its answers, each counted `sent`
    // once v2's answer has been read (and discarded).
    assert!(v2.wait_for_hits(n as u64, Duration::from_secs(10)).await, "v2 got {} of {n} copies", v2.hits());
    assert_eventually!(Duration::from_secs(10), mirrored(&gw, "sent").await, |c| *c == n as u64, "copies sent");
    assert_eq!(v2.hits(), n as u64, "one copy per request");
    let copies: BTreeMap<String, Sent> = v2
        .requests()
        .into_iter()
        .map(|c| {
            let id = c.header("x-request-id").expect("the copy keeps the request id").to_string();
            (id, Sent { method: c.method, path: c.path, body: c.body, host: c.host })
        })
        .collect();
    assert_eq!(copies, sent, "each copy is its request with the host suffixed -shadow");

    // One access log line per request, for the original only.
    let lines = assert_eventually!(
        Duration::from_secs(5),
        gw.access_log_json(),
        |l: &Vec<Value>| l.len() >= n,
        "an access log line per request"
    );
    assert_eq!(lines.len(), n, "{lines:?}");
    for l in &lines {
        assert_eq!(
            (&l["response_code"], &l["upstream_host"], &l["upstream_cluster"]),
            (&json!(200), &json!("127.0.0.81:8080"), &json!("outbound|8000|v1|httpbin.default.svc.cluster.local")),
            "{l}"
        );
    }

    // v2 goes away: the requests do not notice; their copies fail.
    let v2_addr = v2.addr();
    drop(v2);
    assert_eventually!(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(v2_addr).await.is_err(),
        |refused| *refused,
        "v2 stops listening"
    );
    let m = 20;
    for i in 0..m {
        let r = client.get(gw.addr(80), "/headers").send().await.unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "request {i} with v2 gone: {}", r.text());
        assert_eq!(r.echo().unwrap().version, "v1");
    }
    assert_eq!(v1.hits(), (n + m) as u64);
    assert_eventually!(Duration::from_secs(10), mirrored(&gw, "failed").await, |c| *c == m as u64, "copies failed");
    assert_eq!(mirrored(&gw, "sent").await, n as u64);
}

// ---------------------------------------------------------------------------
// cors

/// The page's origin that `examples/cors` allows, and one it does not.
const ALLOWED: &str = "https://example.com";
const OTHER: &str = "https://evil.example";

/// The `access-control-*` headers of a response, sorted by name.
fn cors_headers(r: &Response) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("access-control-"))
        .map(|(name, value)| (name.as_str().to_string(), value.to_str().unwrap_or("?").to_string()))
        .collect();
    out.sort();
    out
}

/// `(name, value)` pairs as [`cors_headers`] gives them.
fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    out.sort();
    out
}

/// A request as a browser sends it to the gateway.
async fn browser(gw: &GatewayProcess, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut req = request(method.clone(), gw.addr(80), path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.body(body.to_string());
    }
    req.send().await.unwrap_or_else(|e| panic!("{method} {path} {headers:?}: {e:#}"))
}

/// A preflight from `origin` for a POST with `X-Foo-Bar`, as a browser sends it before the
/// page's `fetch(url, {method: "POST", headers: {"X-Foo-Bar": "1"}, body: "…"})`: a string
/// body is `text/plain`, a safelisted type, so `x-foo-bar` is the only header it asks for
/// (browsers send the names in lower case).
async fn preflight(gw: &GatewayProcess, path: &str, origin: &str) -> Response {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "x-foo-bar"),
    ];
    browser(gw, Method::OPTIONS, path, &headers, "").await
}

/// The answer the gateway gives a preflight itself: 200, no body; ratings never sees it.
#[track_caller]
fn assert_answered(r: &Response, cors: &[(&str, &str)], what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {:?}", r.headers);
    assert_eq!(r.header("content-length"), Some("0"), "{what}");
    assert!(r.body.is_empty(), "{what}: {}", r.text());
    assert_eq!(r.header("x-upstream"), None, "{what}: answered by an upstream");
    assert_eq!(cors_headers(r), pairs(cors), "{what}");
}

/// Forwarded to `service`: its echo, the method as sent, and the CORS headers on the response.
#[track_caller]
fn assert_forwarded(r: &Response, service: &str, method: &Method, cors: &[(&str, &str)], what: &str) -> Echo {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
    let e = r.echo().unwrap_or_else(|err| panic!("{what}: {err:#}"));
    assert_eq!((e.service.as_str(), e.method.as_str()), (service, method.as_str()), "{what}");
    assert_eq!(cors_headers(r), pairs(cors), "{what}");
    e
}

/// The CorsPolicy of Istio's API reference on bookinfo's ratings (README "Try it"), each
/// request as a browser sends it: preflights from the allowed origin answered by the gateway
/// with the policy's headers and never forwarded; actual requests from it forwarded, their
/// responses given `access-control-allow-origin`; other origins' requests and preflights
/// forwarded untouched (`unmatchedPreflights` FORWARD, the default), or, with
/// `ratings-cors-ignore.yaml`, their preflights answered without `allow-origin`.
#[tokio::test]
async fn cors() {
    let base = example("bookinfo");
    let forward = example("cors").join("ratings-cors.yaml");
    let ignore = example("cors").join("ratings-cors-ignore.yaml");
    assert_analyze_clean(&[&base, &forward]);
    assert_analyze_clean(&[&base, &ignore]);
    let _pods = BOOKINFO_PODS.lock().await;
    let ups = start_upstreams(&base).await;
    let hits = || ups.iter().map(Upstream::hits).sum::<u64>();
    let ratings = ups.iter().find(|u| u.service() == "ratings").expect("a ratings pod");
    let policy = [
        ("access-control-allow-origin", ALLOWED),
        ("access-control-allow-methods", "POST,GET"),
        ("access-control-allow-headers", "X-Foo-Bar"),
        ("access-control-max-age", "86400"),
    ];
    let allow_origin = [("access-control-allow-origin", ALLOWED)];

    {
        let gw = start_gateway(&[&base, &forward]).await;

        // The preflight: answered by the gateway, nothing upstream.
        let r = preflight(&gw, "/ratings/0", ALLOWED).await;
        assert_answered(&r, &policy, "preflight from the allowed origin");
        assert_eq!(hits(), 0, "the preflight reached an upstream");

        // The actual request it allows: forwarded as sent; its response gets allow-origin only
        // (no credentials, no expose headers in this policy).
        let headers = [("origin", ALLOWED), ("x-foo-bar", "1"), ("content-type", "text/plain;charset=UTF-8")];
        let r = browser(&gw, Method::POST, "/ratings/0", &headers, r#"{"rating":5}"#).await;
        let e = assert_forwarded(&r, "ratings", &Method::POST, &allow_origin, "POST from the allowed origin");
        assert_eq!((e.version.as_str(), e.path.as_str(), e.body.as_str()), ("v1", "/ratings/0", r#"{"rating":5}"#));
        assert_eq!((e.header("origin"), e.header("x-foo-bar")), (Some(ALLOWED), Some("1")));
        let r = browser(&gw, Method::GET, "/ratings/0", &[("origin", ALLOWED)], "").await;
        assert_forwarded(&r, "ratings", &Method::GET, &allow_origin, "GET from the allowed origin");
        // An OPTIONS without Access-Control-Request-Method is an actual request, not a preflight.
        let r = browser(&gw, Method::OPTIONS, "/ratings/0", &[("origin", ALLOWED)], "").await;
        assert_forwarded(&r, "ratings", &Method::OPTIONS, &allow_origin, "OPTIONS without a requested method");
        assert_eq!(ratings.hits(), 3);

        // Not CORS (no Origin) and other origins: forwarded, no CORS headers on the response.
        let r = browser(&gw, Method::GET, "/ratings/0", &[], "").await;
        assert_forwarded(&r, "ratings", &Method::GET, &[], "GET without Origin");
        for origin in [OTHER, "http://example.com", "https://example.com:8443", "https://EXAMPLE.com"] {
            let r = browser(&gw, Method::GET, "/ratings/0", &[("origin", origin)], "").await;
            assert_forwarded(&r, "ratings", &Method::GET, &[], &format!("GET from {origin}"));
            // Its preflight goes to ratings as it is: unmatchedPreflights FORWARD.
            let r = preflight(&gw, "/ratings/0", origin).await;
            let e = assert_forwarded(&r, "ratings", &Method::OPTIONS, &[], &format!("preflight from {origin}"));
            assert_eq!(
                (
                    e.header("origin"),
                    e.header("access-control-request-method"),
                    e.header("access-control-request-headers")
                ),
                (Some(origin), Some("POST"), Some("x-foo-bar")),
                "the preflight from {origin} as sent"
            );
        }
        assert_eq!(ratings.hits(), 4 + 8);

        // Only the route with the policy has it: a preflight for the product page is its own.
        let r = preflight(&gw, "/productpage", ALLOWED).await;
        assert_forwarded(&r, "productpage", &Method::OPTIONS, &[], "preflight for /productpage");
        assert_eq!(hits(), 4 + 8 + 1);

        // The answered preflight's access log line: the route, no upstream.
        let line = gw
            .wait_for_log(|l| l.contains(r#""method":"OPTIONS""#), Duration::from_secs(5))
            .await
            .expect("an access log line for the preflight");
        let entry: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (&entry["response_code"], &entry["response_flags"], &entry["route_name"], &entry["upstream_host"]),
            (&json!(200), &json!("-"), &json!("default/ratings-route.http[0]"), &Value::Null),
            "{line}"
        );
    }

    // unmatchedPreflights: IGNORE: other origins' preflights are answered too, without
    // allow-origin, so the browser refuses the actual request; nothing else changes.
    let gw = start_gateway(&[&base, &ignore]).await;
    let before = hits();
    let r = preflight(&gw, "/ratings/0", OTHER).await;
    assert_answered(&r, &policy[1..], "preflight from another origin, IGNORE");
    let r = preflight(&gw, "/ratings/0", ALLOWED).await;
    assert_answered(&r, &policy, "preflight from the allowed origin, IGNORE");
    assert_eq!(hits(), before, "an answered preflight reached an upstream");
    let r = browser(&gw, Method::GET, "/ratings/0", &[("origin", OTHER)], "").await;
    assert_forwarded(&r, "ratings", &Method::GET, &[], "GET from another origin, IGNORE");
    let r = browser(&gw, Method::GET, "/ratings/0", &[("origin", ALLOWED)], "").await;
    assert_forwarded(&r, "ratings", &Method::GET, &allow_origin, "GET from the allowed origin, IGNORE");
    assert_eq!(hits(), before + 2);

    // The gateway's own replies to an allowed origin carry allow-origin too, so the page can
    // read them: ratings gone, its 503.
    let ratings_addr = ratings.addr();
    drop(ups);
    assert_eventually!(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(ratings_addr).await.is_err(),
        |refused| *refused,
        "ratings stops listening"
    );
    let r = browser(&gw, Method::GET, "/ratings/0", &[("origin", ALLOWED)], "").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(cors_headers(&r), pairs(&allow_origin));
}
