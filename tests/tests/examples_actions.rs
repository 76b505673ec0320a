//! The route-action examples applied on top of `examples/bookinfo`:
//! `examples/traffic-shifting` (weighted routes, shifted by editing a watched
//! file while traffic flows) and `examples/redirects` (`redirect`).
//!
//! Like `examples.rs`, each test starts what its README runs: the echo
//! upstreams at the pods' `status.podIP` and the real gateway on the
//! example's files, Gateway port 80 on a free loopback port. Only
//! `traffic_shifting_by_live_edits` binds bookinfo's pod addresses
//! (127.0.0.31–36); everything needing them stays in that one test, so the
//! tests of this file run in parallel. `examples.rs` binds the same
//! addresses; `cargo test` runs the two binaries one after the other.
//!
//! Build the gateway first: `cargo build -p gateway`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use meshgate_e2e::manifest::{load_objects, upstream_specs};
use meshgate_e2e::prelude::*;
use serde_json::{json, Value};

/// `examples/NAME` of this workspace.
fn example(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join(name)
}

/// `gateway analyze` finds nothing at all in the files (no error, no
/// warning), as the READMEs show.
fn assert_analyze_clean(paths: &[&Path]) {
    let (code, stdout, stderr) = run_analyze(paths);
    assert_eq!(code, 0, "gateway analyze {paths:?} failed:\n{stdout}{stderr}");
    assert!(stdout.contains("No validation issues found"), "gateway analyze {paths:?}:\n{stdout}{stderr}");
}

/// One echo upstream per Pod container port in `dir`, bound where the Pod
/// says it runs.
async fn start_upstreams(dir: &Path) -> Vec<Upstream> {
    let objects = load_objects(&[dir.to_path_buf()]).expect("example manifests load");
    let specs = upstream_specs(&objects);
    assert!(!specs.is_empty(), "{} declares no pods", dir.display());
    let mut running = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut b = Upstream::new(spec.service.clone()).version(spec.version.clone()).bind(spec.addr);
        if let Some(pod) = &spec.pod {
            b = b.pod(pod.clone());
        }
        let up = b.try_start().await.unwrap_or_else(|e| {
            panic!(
                "cannot bind {} for pod {:?} of {}: {e} (is `examples/run.sh` or `upstreams` running this example?)",
                spec.addr,
                spec.pod,
                dir.display()
            )
        });
        running.push(up);
    }
    running
}

/// The gateway serving `configs`, Gateway port 80 on a free loopback port.
async fn start_gateway(configs: &[&Path]) -> GatewayProcess {
    let mut b = GatewayProcess::builder().port(80);
    for c in configs {
        b = b.config(c);
    }
    b.start().await.expect("gateway starts and becomes ready")
}

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
