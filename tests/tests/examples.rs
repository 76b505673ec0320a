//! The runnable examples under `examples/`, served as shipped.
//!
//! Each test starts the echo upstreams its example's Pods describe (at their
//! `status.podIP`, e.g. 127.0.0.31:9080, exactly where `examples/run.sh`
//! puts them), starts the real gateway on the example's folder with Gateway
//! port 80 on a free loopback port, and checks what the example's README
//! promises. Every example uses its own 127.0.0.x range, so the tests run in
//! parallel; one example is never started twice at the same time (bookinfo
//! and its scenarios share one set of upstreams inside one test).
//!
//! Build the gateway first: `cargo build -p gateway`.

use std::collections::BTreeMap;

mod common;

use common::examples::{assert_analyze_clean, example, start_gateway, start_upstreams};
use meshgate_e2e::prelude::*;

/// The upstream answering at `addr`.
fn at<'a>(ups: &'a [Upstream], addr: &str) -> &'a Upstream {
    let addr: SocketAddr = addr.parse().expect("socket address");
    ups.iter().find(|u| u.addr() == addr).unwrap_or_else(|| panic!("no upstream at {addr}"))
}

/// GET through the gateway; the response must be 200 from an upstream.
async fn echo(gw: &GatewayProcess, host: &str, path: &str, headers: &[(&str, &str)]) -> Echo {
    let mut req = get(gw.addr(80), path).host(host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("GET {host}{path}: {e:#}"));
    assert_eq!(r.status, StatusCode::OK, "GET {host}{path}: {}", r.text());
    r.echo().unwrap_or_else(|e| panic!("GET {host}{path}: {e:#}"))
}

async fn status(gw: &GatewayProcess, host: &str, path: &str) -> StatusCode {
    get(gw.addr(80), path).host(host).send().await.unwrap_or_else(|e| panic!("GET {host}{path}: {e:#}")).status
}

/// How many of `n` requests each value of `key(echo)` answered, on one
/// keep-alive client connection (the gateway balances per request).
async fn tally(
    gw: &GatewayProcess,
    host: &str,
    path: &str,
    n: usize,
    key: fn(&Echo) -> String,
) -> BTreeMap<String, usize> {
    let client = HttpClient::pooled();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = client.get(gw.addr(80), path).host(host).send().await.unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert_eq!(r.status, StatusCode::OK, "GET {host}{path}: {}", r.text());
        *counts.entry(key(&r.echo().unwrap())).or_insert(0) += 1;
    }
    counts
}

/// Seed 001: demoapp.magedu.com -> Service demoappv10 -> its three pods.
#[tokio::test]
async fn demoapp() {
    let dir = example("demoapp");
    assert_analyze_clean(&[&dir]);
    let _ups = start_upstreams(&dir).await;
    let gw = start_gateway(&[&dir]).await;

    let e = echo(&gw, "demoapp.magedu.com", "/", &[]).await;
    assert_eq!((e.service.as_str(), e.version.as_str()), ("demoapp", "v1.0"));
    assert_eq!(e.host, "demoapp.magedu.com");
    // The seed curls the NodePort: the Host header then carries a port, which
    // Istio ignores when matching hosts.
    let e = echo(&gw, "demoapp.magedu.com:32070", "/hostname", &[]).await;
    assert_eq!(e.service, "demoapp");
    assert_eq!(e.path, "/hostname");

    let pods = tally(&gw, "demoapp.magedu.com", "/", 30, |e| e.pod.clone().unwrap_or_default()).await;
    let expected = ["demoappv10-54757f48d6-77g4l", "demoappv10-54757f48d6-fcv4b", "demoappv10-54757f48d6-n2hzh"];
    assert_eq!(pods.keys().map(String::as_str).collect::<Vec<_>>(), expected, "answers per pod: {pods:?}");

    assert_eq!(status(&gw, "www.magedu.com", "/").await, StatusCode::NOT_FOUND);
    assert_eq!(status(&gw, "kiali.magedu.com", "/").await, StatusCode::NOT_FOUND);
}

/// Seed 001: kiali and grafana exposed by host name, two Gateways on port 80.
#[tokio::test]
async fn kiali_grafana() {
    let dir = example("kiali-grafana");
    assert_analyze_clean(&[&dir]);
    let ups = start_upstreams(&dir).await;
    let gw = start_gateway(&[&dir]).await;

    let e = echo(&gw, "kiali.magedu.com", "/kiali/", &[]).await;
    assert_eq!(e.service, "kiali");
    assert_eq!(e.pod.as_deref(), Some("kiali-577d898bfd-pp2pg"));
    assert_eq!(e.path, "/kiali/");
    // The VirtualService names port 20001: the metrics port 9090 gets nothing.
    assert_eq!(at(&ups, "127.0.0.21:20001").hits(), 1);
    assert_eq!(at(&ups, "127.0.0.21:9090").hits(), 0);

    let e = echo(&gw, "grafana.magedu.com", "/d/istio-mesh", &[]).await;
    assert_eq!(e.service, "grafana");
    assert_eq!(e.pod.as_deref(), Some("grafana-6794b7cd4d-hwrqv"));
    assert_eq!(e.host, "grafana.magedu.com");
    assert_eq!(at(&ups, "127.0.0.22:3000").hits(), 1);

    assert_eq!(echo(&gw, "kiali.magedu.com:8080", "/", &[]).await.service, "kiali");
    assert_eq!(status(&gw, "prometheus.magedu.com", "/").await, StatusCode::NOT_FOUND);
}

/// Seed 003: bookinfo through the ingress gateway, then the two scenarios
/// applied one at a time on top of it, as the Istio tasks do. One test, so
/// the bookinfo upstreams are bound once.
#[tokio::test]
async fn bookinfo_and_scenarios() {
    let base = example("bookinfo");
    let jason = example("bookinfo-scenarios").join("jason-v2.yaml");
    let shift = example("bookinfo-scenarios").join("shift-50-v3.yaml");
    assert_analyze_clean(&[&base]);
    assert_analyze_clean(&[&base, &jason]);
    assert_analyze_clean(&[&base, &shift]);
    let _ups = start_upstreams(&base).await;

    // Base: the product page paths, any host.
    {
        let gw = start_gateway(&[&base]).await;
        for (host, path) in [
            ("bookinfo.example.com", "/productpage"),
            ("192.0.2.1", "/static/x"),
            ("bookinfo.example.com", "/api/v1/products"),
            ("bookinfo.example.com", "/api/v1/products/0/reviews"),
            ("bookinfo.example.com", "/login"),
            ("bookinfo.example.com", "/logout"),
        ] {
            let e = echo(&gw, host, path, &[]).await;
            assert_eq!(e.service, "productpage", "{path}");
            assert_eq!(e.pod.as_deref(), Some("productpage-v1-596598f447-grr5g"), "{path}");
            assert_eq!(e.path, path);
        }
        for path in ["/other", "/", "/productpage/x", "/reviews/0"] {
            assert_eq!(status(&gw, "bookinfo.example.com", path).await, StatusCode::NOT_FOUND, "{path}");
        }
    }

    // jason-v2: end-user jason -> reviews v2, everyone else -> v1.
    {
        let gw = start_gateway(&[&base, &jason]).await;
        let e = echo(&gw, "bookinfo.example.com", "/reviews/0", &[("end-user", "jason")]).await;
        assert_eq!((e.service.as_str(), e.version.as_str()), ("reviews", "v2"));
        assert_eq!(e.pod.as_deref(), Some("reviews-v2-d7d75fff8-cvwjj"));
        for headers in [&[][..], &[("end-user", "json")][..], &[("end-user", "Jason")][..]] {
            let e = echo(&gw, "bookinfo.example.com", "/reviews/0", headers).await;
            assert_eq!((e.service.as_str(), e.version.as_str()), ("reviews", "v1"), "{headers:?}");
        }
        // The base routes still come first.
        let e = echo(&gw, "bookinfo.example.com", "/productpage", &[("end-user", "jason")]).await;
        assert_eq!(e.service, "productpage");
        assert_eq!(status(&gw, "bookinfo.example.com", "/other").await, StatusCode::NOT_FOUND);
    }

    // fault-injection: jason's /ratings calls wait 7 s, or are aborted with 500 at the gateway.
    let faults = example("fault-injection");
    {
        let delay = faults.join("ratings-test-delay.yaml");
        assert_analyze_clean(&[&base, &delay]);
        let gw = start_gateway(&[&base, &delay]).await;
        let t = std::time::Instant::now();
        let e = echo(&gw, "bookinfo.example.com", "/ratings/0", &[("end-user", "jason")]).await;
        let took = t.elapsed();
        assert_eq!((e.service.as_str(), e.version.as_str()), ("ratings", "v1"));
        assert!(took >= Duration::from_secs(7) && took < Duration::from_secs(12), "{took:?}");
        let t = std::time::Instant::now();
        assert_eq!(echo(&gw, "bookinfo.example.com", "/ratings/0", &[]).await.service, "ratings");
        assert!(t.elapsed() < Duration::from_secs(5), "only jason is delayed: {:?}", t.elapsed());
    }
    {
        let abort = faults.join("ratings-test-abort.yaml");
        assert_analyze_clean(&[&base, &abort]);
        let gw = start_gateway(&[&base, &abort]).await;
        let r = get(gw.addr(80), "/ratings/0").header("end-user", "jason").send().await.unwrap();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (500, "fault filter abort"));
        assert_eq!(echo(&gw, "bookinfo.example.com", "/ratings/0", &[]).await.version, "v1");
    }

    // request-timeouts: reviews v2 within 0.5 s, or 504 after 0.5 s.
    {
        let timeout = example("request-timeouts").join("reviews-timeout.yaml");
        assert_analyze_clean(&[&base, &timeout]);
        let gw = start_gateway(&[&base, &timeout]).await;
        let t = std::time::Instant::now();
        let r = get(gw.addr(80), "/reviews/delay/2000").send().await.unwrap();
        let took = t.elapsed();
        assert_eq!((r.status.as_u16(), r.text().as_str()), (504, "upstream request timeout"));
        assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1900), "{took:?}");
        let e = echo(&gw, "bookinfo.example.com", "/reviews/0", &[]).await;
        assert_eq!((e.service.as_str(), e.version.as_str()), ("reviews", "v2"));
    }

    // shift-50-v3: /reviews split evenly between v1 and v3.
    {
        let gw = start_gateway(&[&base, &shift]).await;
        let n = 400;
        let versions =
            tally(&gw, "bookinfo.example.com", "/reviews/0", n, |e| format!("{}/{}", e.service, e.version)).await;
        assert_eq!(
            versions.keys().map(String::as_str).collect::<Vec<_>>(),
            ["reviews/v1", "reviews/v3"],
            "{versions:?}"
        );
        for (version, count) in &versions {
            let share = *count as f64 / n as f64;
            assert!((0.35..=0.65).contains(&share), "{version} answered {count} of {n}: {versions:?}");
        }
        assert_eq!(echo(&gw, "bookinfo.example.com", "/productpage", &[]).await.service, "productpage");
    }
}

/// Seed 000: the nginx test app, every host and path to test-svc.
#[tokio::test]
async fn nginx() {
    let dir = example("nginx");
    assert_analyze_clean(&[&dir]);
    let _ups = start_upstreams(&dir).await;
    let gw = start_gateway(&[&dir]).await;

    for (host, path) in [
        ("a6f037.eu-west-3.elb.amazonaws.com", "/"),
        ("nginx.example.com", "/index.html"),
        ("192.0.2.7:80", "/50x.html"),
    ] {
        let e = echo(&gw, host, path, &[]).await;
        assert_eq!((e.service.as_str(), e.version.as_str()), ("test", "v1"), "{host}{path}");
        assert_eq!(e.host, host);
        assert_eq!(e.path, path);
    }
    let pods = tally(&gw, "nginx.example.com", "/", 30, |e| e.pod.clone().unwrap_or_default()).await;
    let expected = ["test-deployment-6864c5bf84-mk98r", "test-deployment-6864c5bf84-q7xkd"];
    assert_eq!(pods.keys().map(String::as_str).collect::<Vec<_>>(), expected, "answers per pod: {pods:?}");
}

/// The cluster example's manifests (applied with kubectl there) carry no errors; kiali and
/// grafana Services come from Istio's addons, so only their hosts are unknown here.
#[test]
fn kubernetes_manifests_analyze_clean() {
    let dir = example("kubernetes/manifests");
    let (code, stdout, stderr) = run_analyze([&dir]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let warnings: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Warning")).collect();
    assert!(
        warnings.iter().all(|w| w.contains("kiali.istio-system") || w.contains("grafana.istio-system")),
        "{stdout}"
    );
}
