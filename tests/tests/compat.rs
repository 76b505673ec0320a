//! The Istio compatibility suite: Istio's published samples and task YAML, unchanged (copied
//! from istio/istio into `tests/compat/istio/`, see its README), through `gateway analyze` and
//! through a running gateway, asserting the outcome Istio's documentation describes for each.
//!
//! The samples' Deployments are what a cluster would run; here the test starts an upstream per
//! Deployment version and writes the Pods and EndpointSlices the cluster would have made for
//! them (`endpoints_for`). Everything Istio-shaped comes from the samples as published. The
//! Secure Gateways task runs in `certificates.rs`, the authorization tasks in `security.rs`.
//!
//! This suite grows with every issue: add a case with its sample files and the documented
//! outcome.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use std::path::{Path, PathBuf};

/// A file of the copied Istio tree, e.g. `samples/httpbin/httpbin.yaml`.
fn istio(path: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/compat/istio")).join(path)
}

/// A config folder holding the given Istio files as published (each under its own name).
fn folder_with(samples: &[&str]) -> ConfigDir {
    let cfg = ConfigDir::new().unwrap();
    for s in samples {
        let text = std::fs::read_to_string(istio(s)).unwrap_or_else(|e| panic!("{s}: {e}"));
        cfg.write(&s.replace('/', "_"), &text).unwrap();
    }
    cfg
}

/// `gateway analyze` on the folder: exit code and report.
fn analyze(cfg: &ConfigDir) -> (i32, String) {
    let (code, out, err) = run_analyze([cfg.path()]);
    (code, format!("{out}{err}"))
}

/// Upstreams for one service's versions, with the endpoints a cluster would publish for them
/// (Pods labelled `app`/`version`, EndpointSlices for the sample's Service port name).
async fn running(cfg: &ConfigDir, service: &str, port_name: &str, versions: &[&str]) -> Vec<Upstream> {
    let mut ups = Vec::new();
    for v in versions {
        ups.push(Upstream::new(service).version(*v).start().await);
    }
    let refs: Vec<(&Upstream, Vec<(&str, &str)>)> = ups.iter().map(|u| (u, vec![("version", u.version())])).collect();
    let backends: Vec<(&Upstream, &[(&str, &str)])> = refs.iter().map(|(u, l)| (*u, l.as_slice())).collect();
    cfg.write(&format!("zz-{service}-endpoints.yaml"), &endpoints_for(service, "default", Some(port_name), &backends))
        .unwrap();
    ups
}

const BOOKINFO: &str = "samples/bookinfo/platform/kube/bookinfo.yaml";
const BOOKINFO_GATEWAY: &str = "samples/bookinfo/networking/bookinfo-gateway.yaml";
const DESTINATION_RULE_ALL: &str = "samples/bookinfo/networking/destination-rule-all.yaml";

/// Every bookinfo networking sample the traffic-management tasks apply, each on top of the
/// app, its gateway and `destination-rule-all.yaml` as the tasks do.
const BOOKINFO_TASK_SAMPLES: &[&str] = &[
    "samples/bookinfo/networking/virtual-service-all-v1.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-80-20.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-90-10.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-v3.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-v2-v3.yaml",
    "samples/bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml",
    "samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml",
    "samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml",
    "samples/bookinfo/networking/virtual-service-details-v2.yaml",
    "samples/bookinfo/networking/virtual-service-ratings-db.yaml",
    "samples/bookinfo/networking/virtual-service-ratings-mysql.yaml",
    "samples/bookinfo/networking/virtual-service-ratings-mysql-vm.yaml",
    "samples/bookinfo/networking/fault-injection-details-v1.yaml",
    "samples/bookinfo/networking/destination-rule-reviews.yaml",
    "samples/bookinfo/networking/egress-rule-google-apis.yaml",
];

#[test]
fn every_bookinfo_task_sample_passes_analyze() {
    for sample in BOOKINFO_TASK_SAMPLES {
        let cfg = folder_with(&[BOOKINFO, BOOKINFO_GATEWAY, DESTINATION_RULE_ALL, sample]);
        let (code, report) = analyze(&cfg);
        assert_eq!(code, 0, "{sample}:\n{report}");
        assert!(!report.contains("Error"), "{sample}:\n{report}");
    }
}

/// Istio's "Bookinfo Application" page: the gateway serves `/productpage` (and the product
/// API, static files, login and logout) from productpage; nothing else of bookinfo is exposed.
/// The tasks' VirtualServices for reviews, ratings and details bind to the mesh, not the
/// gateway, so applying them changes nothing at the gateway.
#[tokio::test]
async fn bookinfo_through_its_gateway() {
    let cfg = folder_with(&[BOOKINFO, BOOKINFO_GATEWAY, DESTINATION_RULE_ALL]);
    let _productpage = running(&cfg, "productpage", "http", &["v1"]).await;
    let _reviews = running(&cfg, "reviews", "http", &["v1", "v2", "v3"]).await;
    let (code, report) = analyze(&cfg);
    assert_eq!(code, 0, "{report}");
    // The sample's Gateway listens on port 8080 (Istio's unprivileged gateway port).
    let gw = start(&cfg, &[8080]).await;
    for path in ["/productpage", "/api/v1/products", "/static/bootstrap.css", "/login", "/logout"] {
        let r = get(gw.addr(8080), path).send().await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.echo().unwrap().service, "productpage", "{path}");
    }
    let r = get(gw.addr(8080), "/reviews/0").send().await.unwrap();
    assert_eq!(r.status, 404, "reviews is not exposed by bookinfo-gateway.yaml");

    // The request-routing task's first step, applied while serving.
    let all_v1 = std::fs::read_to_string(istio("samples/bookinfo/networking/virtual-service-all-v1.yaml")).unwrap();
    cfg.write("virtual-service-all-v1.yaml", &all_v1).unwrap();
    let text = wait_metric(&gw, "meshgate_config_version", &[], 2.0).await;
    assert_eq!(metric_value(&text, "meshgate_config_version", &[]), Some(2.0), "the sample was loaded");
    let r = get(gw.addr(8080), "/productpage").send().await.unwrap();
    assert_eq!((r.status.as_u16(), r.echo().unwrap().service.as_str()), (200, "productpage"));
    assert_eq!(get(gw.addr(8080), "/reviews/0").send().await.unwrap().status, 404);
}

/// The httpbin sample's own gateway (`httpbin-gateway.yaml`): every host, every path to
/// httpbin:8000 (targetPort 8080).
#[tokio::test]
async fn httpbin_sample_gateway() {
    let cfg = folder_with(&["samples/httpbin/httpbin.yaml", "samples/httpbin/httpbin-gateway.yaml"]);
    let _httpbin = running(&cfg, "httpbin", "http", &["v1"]).await;
    let (code, report) = analyze(&cfg);
    assert_eq!(code, 0, "{report}");
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/status/418").host("anything.example.com").send().await.unwrap();
    assert_eq!(r.status, 418);
    let r = get(gw.addr(80), "/headers").send().await.unwrap();
    assert_eq!(r.status, 200);
}

/// Istio's "Ingress Gateways" task (traffic-management/ingress/ingress-control), its Gateway
/// and VirtualService as the task applies them: `/status` and `/delay` of httpbin.example.com
/// are exposed, "accessing any other URL that has not been explicitly exposed should return an
/// HTTP 404 error".
#[tokio::test]
async fn ingress_gateways_task() {
    let cfg = folder_with(&["samples/httpbin/httpbin.yaml"]);
    cfg.write("task.yaml", &istio_docs("tasks/traffic-management/ingress/ingress-control/httpbin-gateway.yaml"))
        .unwrap();
    let _httpbin = running(&cfg, "httpbin", "http", &["v1"]).await;
    let (code, report) = analyze(&cfg);
    assert_eq!(code, 0, "{report}");
    let gw = start(&cfg, &[80]).await;
    // curl -s -I -HHost:httpbin.example.com "http://$INGRESS_HOST:$INGRESS_PORT/status/200"
    let r = get(gw.addr(80), "/status/200").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 200);
    let r = get(gw.addr(80), "/headers").host("httpbin.example.com").send().await.unwrap();
    assert_eq!(r.status, 404);
    // Another host is not served by this Gateway.
    let r = get(gw.addr(80), "/status/200").host("other.example.com").send().await.unwrap();
    assert_eq!(r.status, 404);
}

/// Istio's "TCP Traffic Shifting" task: all of tcp-echo to v1, then 20 % to v2.
#[tokio::test]
async fn tcp_traffic_shifting_task() {
    let cfg = folder_with(&["samples/tcp-echo/tcp-echo-services.yaml", "samples/tcp-echo/tcp-echo-all-v1.yaml"]);
    // The sample's v1 answers with the prefix "one", v2 with "two".
    let one = TcpUpstream::start("one").await;
    let two = TcpUpstream::start("two").await;
    cfg.write(
        "zz-tcp-echo-endpoints.yaml",
        &endpoints_for(
            "tcp-echo",
            "default",
            Some("tcp"),
            &[(&one, &[("version", "v1")]), (&two, &[("version", "v2")])],
        ),
    )
    .unwrap();
    let (code, report) = analyze(&cfg);
    assert_eq!(code, 0, "{report}");
    let gw = start(&cfg, &[31400]).await;
    // for i in {1..20}; do sh -c "(date; sleep 1) | nc $INGRESS_HOST $TCP_INGRESS_PORT"; done
    for _ in 0..20 {
        let reply = tcp_exchange(gw.addr(31400), b"hello\n", true).await.unwrap();
        assert!(reply.starts_with(b"one\n"), "{}", String::from_utf8_lossy(&reply));
    }

    let shift = std::fs::read_to_string(istio("samples/tcp-echo/tcp-echo-20-v2.yaml")).unwrap();
    cfg.write("samples_tcp-echo_tcp-echo-all-v1.yaml", &{
        // The task applies tcp-echo-20-v2.yaml over the VirtualService of tcp-echo-all-v1.yaml;
        // in one folder the later file's VirtualService would be a duplicate, so it replaces
        // the first file's documents as `kubectl apply` replaces the object.
        let all = std::fs::read_to_string(istio("samples/tcp-echo/tcp-echo-all-v1.yaml")).unwrap();
        let kept: Vec<&str> = all.split("\n---\n").filter(|d| !d.contains("kind: VirtualService")).collect();
        format!("{}\n---\n{shift}", kept.join("\n---\n"))
    })
    .unwrap();
    let _ = assert_eventually!(
        Duration::from_secs(10),
        tcp_exchange(gw.addr(31400), b"x", true).await.map(|r| String::from_utf8_lossy(&r).into_owned()),
        |r| r.as_ref().is_ok_and(|r| r.starts_with("two\n")),
        "v2 answers after the shift: {}",
        gw.stderr()
    );
    let mut twos = 0;
    for _ in 0..200 {
        let reply = tcp_exchange(gw.addr(31400), b"x", true).await.unwrap();
        twos += usize::from(reply.starts_with(b"two\n"));
    }
    // 20 % of 200 is 40; the binomial spread (sd ~5.7) stays well inside this.
    assert!((15..=70).contains(&twos), "{twos} of 200 went to v2");
}

/// The helloworld sample behind its gateway (`/hello` to helloworld:5000), both versions
/// answering, as the sample's README shows.
#[tokio::test]
async fn helloworld_sample_gateway() {
    let cfg = folder_with(&["samples/helloworld/helloworld.yaml", "samples/helloworld/helloworld-gateway.yaml"]);
    let _hello = running(&cfg, "helloworld", "http", &["v1", "v2"]).await;
    let (code, report) = analyze(&cfg);
    assert_eq!(code, 0, "{report}");
    let gw = start(&cfg, &[80]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let r = get(gw.addr(80), "/hello").send().await.unwrap();
        assert_eq!(r.status, 200);
        seen.insert(r.echo().unwrap().version);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);
    let r = get(gw.addr(80), "/").send().await.unwrap();
    assert_eq!(r.status, 404, "only /hello is exposed");
}
