//! Routing end to end: hosts, matches, destinations, local replies and forwarded headers.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

const REVIEWS_VS: &str = r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - name: exact
    match:
    - uri: {exact: /exact}
    route:
    - destination: {host: reviews, subset: v2}
  - name: regex
    match:
    - uri: {regex: "/items/[0-9]+"}
    route:
    - destination: {host: reviews, subset: v2}
  - name: query-and-method
    match:
    - queryParams:
        canary: {exact: "yes"}
      method: {exact: POST}
    route:
    - destination: {host: reviews, subset: v2}
  - name: without
    match:
    - uri: {prefix: /guarded}
      withoutHeaders:
        x-debug: {}
    route:
    - destination: {host: reviews, subset: v1}
  - name: nocase
    match:
    - uri: {prefix: /static}
      ignoreUriCase: true
    route:
    - destination: {host: reviews, subset: v2}
  - name: default
    match:
    - uri: {prefix: /reviews}
    - uri: {prefix: /items}
    route:
    - destination: {host: reviews, subset: v1}
"#;

async fn reviews_setup() -> (Upstream, Upstream, ConfigDir) {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let v2 = Upstream::new("reviews").version("v2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*.example.com"])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1, &v2])).unwrap();
    cfg.write("dr.yaml", &destination_rule("reviews", &["v1", "v2"], "")).unwrap();
    cfg.write("vs.yaml", REVIEWS_VS).unwrap();
    (v1, v2, cfg)
}

#[tokio::test]
async fn match_blocks_pick_the_first_matching_route() {
    let (_v1, _v2, cfg) = reviews_setup().await;
    let gw = start(&cfg, &[80]).await;
    let host = "bookinfo.example.com";
    let at = gw.addr(80);

    let r = get(at, "/reviews/1").host(host).header("end-user", "jason").send().await.unwrap();
    assert_eq!(r.echo().unwrap().version, "v2", "header match wins because it comes first");
    assert_eq!(version_of(&gw, 80, "/reviews/1", host).await, "v1");
    assert_eq!(version_of(&gw, 80, "/exact", host).await, "v2");
    assert_eq!(version_of(&gw, 80, "/exact?x=1", host).await, "v2", "exact ignores the query string");
    assert_eq!(version_of(&gw, 80, "/exact/more", host).await, "status 404");
    assert_eq!(version_of(&gw, 80, "/items/42", host).await, "v2");
    assert_eq!(version_of(&gw, 80, "/items/4x2", host).await, "v1", "regex is a full match; prefix /items catches it");
    assert_eq!(version_of(&gw, 80, "/STATIC/app.css", host).await, "v2", "ignoreUriCase");

    let post = request(Method::POST, at, "/anything?canary=yes").host(host).send().await.unwrap();
    assert_eq!(post.echo().unwrap().version, "v2");
    let get_canary = get(at, "/anything?canary=yes").host(host).send().await.unwrap();
    assert_eq!(get_canary.status, StatusCode::NOT_FOUND, "method and query are AND-ed");

    assert_eq!(version_of(&gw, 80, "/guarded", host).await, "v1");
    let debug = get(at, "/guarded").host(host).header("x-debug", "1").send().await.unwrap();
    assert_eq!(debug.status, StatusCode::NOT_FOUND, "withoutHeaders excludes the request");
}

#[tokio::test]
async fn hosts_match_without_port_and_unknown_hosts_get_404() {
    let (_v1, _v2, cfg) = reviews_setup().await;
    let gw = start(&cfg, &[80]).await;
    assert_eq!(version_of(&gw, 80, "/reviews", "bookinfo.example.com:32070").await, "v1");
    assert_eq!(version_of(&gw, 80, "/reviews", "BookInfo.Example.com").await, "v1");
    let r = get(gw.addr(80), "/reviews").host("other.example.org").send().await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("server"), Some("istio-envoy"));
}

#[tokio::test]
async fn forwarded_headers_and_request_ids() {
    let (_v1, _v2, cfg) = reviews_setup().await;
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/reviews")
        .host("bookinfo.example.com")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    let echo = r.echo().unwrap();
    assert_eq!(echo.host, "bookinfo.example.com", "the original Host goes upstream");
    assert_eq!(echo.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto"), Some("http"));
    let id = echo.header("x-request-id").expect("generated request id");
    assert_eq!(id.len(), 36);
    assert!(r.header("x-envoy-upstream-service-time").is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(r.header("server"), Some("istio-envoy"));

    let r = get(gw.addr(80), "/reviews")
        .host("bookinfo.example.com")
        .header("x-request-id", "keep-me")
        .send()
        .await
        .unwrap();
    assert_eq!(r.echo().unwrap().header("x-request-id"), Some("keep-me"));
}

#[tokio::test]
async fn http_1_0_requests_are_served() {
    let (_v1, _v2, cfg) = reviews_setup().await;
    let gw = start(&cfg, &[80]).await;
    let raw = raw_http(gw.addr(80), "GET /reviews HTTP/1.0\r\nHost: bookinfo.example.com\r\n\r\n").await.unwrap();
    assert!(raw.starts_with("HTTP/1.") && raw.contains(" 200 "), "{raw}");
    assert!(raw.contains("\"version\":\"v1\""), "{raw}");
}

#[tokio::test]
async fn no_endpoint_is_503_connect_failure_is_503_timeout_is_504() {
    let slow = Upstream::new("slow").start().await;
    // A port that refuses connections: bind, learn the port, close.
    let closed = free_addr();
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("slow.yaml", &backends("slow", &[&slow])).unwrap();
    cfg.write("empty.yaml", &service_named("empty", "default", "http", 9080, 9080)).unwrap();
    cfg.write(
        "closed.yaml",
        &docs(&[
            service_named("closed", "default", "http", 9080, 9080),
            endpoints_for("closed", "default", Some("http"), &[(closed, &[("version", "v1")])]),
        ]),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: all, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{uri: {prefix: /empty}}]
    route: [{destination: {host: empty}}]
  - match: [{uri: {prefix: /closed}}]
    route: [{destination: {host: closed}}]
  - match: [{uri: {prefix: /slower}}]
    timeout: 1s
    route: [{destination: {host: slow}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.3s
    route: [{destination: {host: slow}}]
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);

    let r = get(at, "/empty").send().await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "no healthy upstream");

    let r = get(at, "/closed").send().await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().starts_with("upstream connect error"), "{}", r.text());

    let r = get(at, "/slow/delay/3000").send().await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text(), "upstream request timeout");
    // The connection closes after these replies, and the replies say so.
    for path in ["/closed", "/slow/delay/3000"] {
        let raw = raw_http(at, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await.unwrap();
        assert!(raw.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{path}: {raw}");
    }
    let r = get(at, "/slow/delay/10").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "under the timeout");
    // Timeouts of a second or more run on tokio's timer rather than Pingora's (src/main.rs).
    let r = get(at, "/slower/delay/3000").send().await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    let r = get(at, "/slower/delay/10").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);

    let log = gw.wait_for_log(|l| l.contains("\"response_flags\":\"UT\""), Duration::from_secs(5)).await;
    assert!(log.is_some(), "timeout logged with UT");
    assert!(gw.access_log_lines().iter().any(|l| l.contains("\"response_flags\":\"UH\"")));
    // Istio's default policy retried the refused connect twice: Envoy's `UF,URX`.
    assert!(gw.access_log_lines().iter().any(|l| l.contains("\"response_flags\":\"UF,URX\"")));
    // Each failure is in the access log; the gateway's own log gets no line per request.
    assert!(!gw.stderr().contains("Fail to proxy"), "{}", gw.stderr());
}

#[tokio::test]
async fn weighted_split_follows_weights() {
    let v1 = Upstream::new("reviews").version("v1").start().await;
    let v3 = Upstream::new("reviews").version("v3").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    cfg.write("svc.yaml", &backends("reviews", &[&v1, &v3])).unwrap();
    cfg.write("dr.yaml", &destination_rule("reviews", &["v1", "v3"], "")).unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v3}
      weight: 20
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    let total = 2000;
    let mut v3_count = 0;
    for _ in 0..total {
        let r = client.get(gw.addr(80), "/").send().await.unwrap();
        if r.echo().unwrap().version == "v3" {
            v3_count += 1;
        }
    }
    // Binomial(2000, 0.2): mean 400, sd ~17.9; ±5 sd keeps this from ever flaking.
    assert!((310..=490).contains(&v3_count), "v3 got {v3_count} of {total}");
}

#[tokio::test]
async fn gateway_selection_namespaces_and_wildcards() {
    let a = Upstream::new("a").start().await;
    let b = Upstream::new("b").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("a.yaml", &backends("a", &[&a])).unwrap();
    cfg.write("b.yaml", &backends("b", &[&b])).unwrap();
    cfg.write(
        "gateways.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: public, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["default/*.magedu.com", "./admin.magedu.com"]
---
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 8081, name: http, protocol: HTTP}
    hosts: ["*"]
"#,
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: exact, namespace: default}
spec:
  hosts: ["kiali.magedu.com"]
  gateways: ["istio-system/public", "istio-system/egress"]
  http:
  - route: [{destination: {host: a}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: wildcard, namespace: default}
spec:
  hosts: ["*.magedu.com"]
  gateways: ["istio-system/public"]
  http:
  - route: [{destination: {host: b.default.svc.cluster.local}}]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: wrong-namespace, namespace: other}
spec:
  hosts: ["grafana.magedu.com"]
  gateways: ["istio-system/public"]
  http:
  - route: [{destination: {host: a.default.svc.cluster.local}}]
"#,
    )
    .unwrap();
    let gw = GatewayProcess::builder().config(cfg.path()).ports(&[80, 8081]).start().await.unwrap();
    let service = |r: Response| r.echo().map(|e| e.service).unwrap_or_else(|_| format!("status {}", r.status.as_u16()));
    let at = gw.addr(80);
    assert_eq!(service(get(at, "/").host("kiali.magedu.com").send().await.unwrap()), "a", "exact beats wildcard");
    assert_eq!(
        service(get(at, "/").host("grafana.magedu.com").send().await.unwrap()),
        "b",
        "ns 'other' is not allowed by default/*"
    );
    assert_eq!(service(get(at, "/").host("x.y.magedu.com").send().await.unwrap()), "b");
    assert_eq!(service(get(at, "/").host("magedu.com").send().await.unwrap()), "status 404");
    // The egress Gateway selects other labels: its port is not served.
    assert!(get(gw.addr(8081), "/").host("kiali.magedu.com").send().await.is_err(), "port 8081 must not listen");
}

#[tokio::test]
async fn service_entry_and_workload_entry_endpoints() {
    let ext1 = Upstream::new("external").version("v1").start().await;
    let ext2 = Upstream::new("external").version("v2").start().await;
    let cfg = ConfigDir::new().unwrap();
    cfg.write("gw.yaml", &gateway("gw", 80, &["*"])).unwrap();
    let se = format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: external, namespace: default}}
spec:
  hosts: ["api.external.test"]
  ports: [{{number: 443, name: http, protocol: HTTP, targetPort: {p1}}}]
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    labels: {{version: v1}}
  workloadSelector:
    labels: {{app: external-vm}}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {{name: vm-1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {p2}}}
  labels: {{app: external-vm, version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: external, namespace: default}}
spec:
  host: api.external.test
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: external, namespace: default}}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: api.external.test, subset: v2}}}}]
  - route: [{{destination: {{host: api.external.test, port: {{number: 443}}, subset: v1}}}}]
"#,
        p1 = ext1.addr().port(),
        p2 = ext2.addr().port()
    );
    cfg.write("se.yaml", &se).unwrap();
    let gw = start(&cfg, &[80]).await;
    assert_eq!(version_of(&gw, 80, "/", "x").await, "v1");
    assert_eq!(version_of(&gw, 80, "/v2", "x").await, "v2");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (v1, _v2, cfg) = reviews_setup().await;
    let gw = start(&cfg, &[80]).await;
    let client = HttpClient::pooled();
    for _ in 0..30 {
        let r = client.get(gw.addr(80), "/reviews").host("bookinfo.example.com").send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(v1.hits(), 30);
    assert!(v1.connections() <= 2, "30 sequential requests used {} upstream connections", v1.connections());
}

/// `redirect` and `directResponse` from the VirtualService reference: the gateway answers
/// itself, the upstream sees nothing, and the next route still serves what these do not match.
#[tokio::test]
async fn redirect_and_direct_response_routes_answer_at_the_gateway() {
    let (v1, _v2, cfg) = reviews_setup().await;
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-route, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match:
    - uri:
        exact: /v1/getProductRatings
    redirect:
      uri: /v1/bookRatings
      authority: newratings.default.svc.cluster.local
  - match:
    - uri:
        prefix: /v1/secure
    redirect:
      scheme: https
      derivePort: FROM_PROTOCOL_DEFAULT
      redirectCode: 308
  - match:
    - uri:
        exact: /v1/unknown
    directResponse:
      status: 503
      body:
        string: "unknown error"
  - route:
    - destination: {host: reviews, subset: v1}
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);

    let r = get(at, "/v1/getProductRatings?user=jason").host("bookinfo.example.com").send().await.unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("http://newratings.default.svc.cluster.local/v1/bookRatings?user=jason"));
    // FROM_PROTOCOL_DEFAULT is no port setting in Istio's Envoy: http's :80 goes with the
    // change to https, another port stays.
    let r = get(at, "/v1/secure/x").host("bookinfo.example.com:80").send().await.unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.header("location"), Some("https://bookinfo.example.com/v1/secure/x"));
    let r = get(at, "/v1/secure/x").host("bookinfo.example.com:8080").send().await.unwrap();
    assert_eq!(r.header("location"), Some("https://bookinfo.example.com:8080/v1/secure/x"));
    let r = get(at, "/v1/unknown").host("bookinfo.example.com").send().await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "unknown error");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(v1.requests().is_empty(), "nothing went upstream");

    let r = get(at, "/v1/reviews").host("bookinfo.example.com").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(v1.requests().len(), 1);
    let log = gw
        .wait_for_log(|l| l.contains("\"response_code\":503") && l.contains("ratings-route"), Duration::from_secs(5))
        .await;
    assert!(log.is_some_and(|l| l.contains("\"response_flags\":\"-\"")), "a direct response is logged without flags");
}

/// `rewrite` from the VirtualService reference: the matched prefix (or the whole path of an
/// exact match) becomes `uri`, `uriRegexRewrite` substitutes RE2 groups, `authority` replaces
/// the Host; the query stays and the original path goes up in `x-envoy-original-path`.
#[tokio::test]
async fn rewrites_change_what_the_upstream_is_asked() {
    let (v1, _v2, cfg) = reviews_setup().await;
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-route, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - match:
    - uri:
        prefix: /ratings
    rewrite:
      uri: /v1/bookRatings
    route:
    - destination: {host: reviews, subset: v1}
  - match:
    - uri:
        exact: /old
    rewrite:
      uri: /new
      authority: internal.example.com
    route:
    - destination: {host: reviews, subset: v1}
  - match:
    - uri:
        prefix: /service
    rewrite:
      uriRegexRewrite:
        match: ^/service/([^/]+)(/.*)$
        rewrite: \2/instance/\1
    route:
    - destination: {host: reviews, subset: v1}
  - route:
    - destination: {host: reviews, subset: v1}
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let at = gw.addr(80);
    let ask = |path: &'static str| async move {
        let r = get(at, path).host("bookinfo.example.com").send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
        r.echo().unwrap()
    };

    let e = ask("/ratings/0?user=jason").await;
    assert_eq!(e.path, "/v1/bookRatings/0?user=jason");
    assert_eq!(e.header("x-envoy-original-path"), Some("/ratings/0?user=jason"));
    assert_eq!(e.host, "bookinfo.example.com");
    let e = ask("/old?x=1").await;
    assert_eq!((e.path.as_str(), e.host.as_str()), ("/new?x=1", "internal.example.com"));
    let e = ask("/service/foo/v1/api").await;
    assert_eq!(e.path, "/v1/api/instance/foo");
    let e = ask("/untouched").await;
    assert_eq!(e.path, "/untouched");
    assert_eq!(e.header("x-envoy-original-path"), None);
    assert_eq!(v1.requests().len(), 4);
}

/// `headers` at route and destination level, from the VirtualService reference: the request
/// going up and the response coming down are edited (remove, then set, then add), the
/// destination's edits first and the route's last.
#[tokio::test]
async fn header_edits_at_route_and_destination_level() {
    let (v1, _v2, cfg) = reviews_setup().await;
    cfg.write(
        "vs.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route, namespace: default}
spec:
  hosts: ["bookinfo.example.com"]
  gateways: ["istio-system/gw"]
  http:
  - headers:
      request:
        set:
          test: "true"
        add:
          x-team: reviews
        remove:
        - cookie
      response:
        set:
          cache-control: no-store
        add:
          x-route: reviews-route
    route:
    - destination:
        host: reviews
        subset: v1
      headers:
        request:
          set:
            test: "from-destination"
            x-destination: v1
        response:
          remove:
          - x-upstream
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/reviews/1")
        .host("bookinfo.example.com")
        .header("cookie", "session=secret")
        .header("x-team", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo().unwrap();
    assert_eq!(e.header("test"), Some("true"), "the route's set applies after the destination's");
    assert_eq!(e.header("x-destination"), Some("v1"));
    assert_eq!(e.header("x-team"), Some("client, reviews"), "add appends");
    assert_eq!(e.header("cookie"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-route"), Some("reviews-route"));
    assert_eq!(r.header("x-upstream"), None, "removed by the destination");
    assert_eq!(r.header("server"), Some("istio-envoy"));
    assert_eq!(v1.requests().len(), 1);
}
