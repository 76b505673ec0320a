//! `corsPolicy` end to end (issue 19 item 5), with requests as a browser sends them:
//! preflights the gateway answers itself, actual requests whose responses get the policy's
//! headers, and origins the policy does not allow.

mod common;

use common::*;
use meshgate_e2e::prelude::*;

/// The API reference's policy on `/api`, a credentialed policy with `IGNORE` on `/strict`, a
/// direct response and an unknown service with a policy on `/static` and `/gone`; everything
/// else has no policy.
const HTTP: &str = r#"  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: app}}]
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      - regex: 'https://.*\.example\.org'
      allowMethods: [POST, GET]
      allowCredentials: false
      allowHeaders: [X-Foo-Bar]
      maxAge: "24h"
  - match: [{uri: {prefix: /strict}}]
    route: [{destination: {host: app}}]
    corsPolicy:
      allowOrigins: [{prefix: "https://app."}]
      allowMethods: ["*"]
      allowHeaders: ["*"]
      exposeHeaders: [X-Total-Count]
      allowCredentials: true
      unmatchedPreflights: IGNORE
  - match: [{uri: {exact: /static}}]
    directResponse: {status: 200, body: {string: "static"}}
    corsPolicy:
      allowOrigins: [{exact: "*"}]
  - match: [{uri: {prefix: /gone}}]
    route: [{destination: {host: missing}}]
    corsPolicy:
      allowOrigins: [{exact: "*"}]
  - route: [{destination: {host: app}}]
"#;

async fn setup() -> (Upstream, ConfigDir, GatewayProcess) {
    let (up, cfg) = app_behind_gateway().await;
    cfg.write("vs.yaml", &app_vs(HTTP)).unwrap();
    let gw = start(&cfg, &[80]).await;
    (up, cfg, gw)
}

/// A browser's preflight for a `method` request with `headers` from `origin`.
async fn preflight(gw: &GatewayProcess, path: &str, origin: &str, method: &str, headers: Option<&str>) -> Response {
    let mut req = request(Method::OPTIONS, gw.addr(80), path)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(h) = headers {
        req = req.header("access-control-request-headers", h);
    }
    req.send().await.unwrap()
}

fn cors_headers(r: &Response) -> Vec<String> {
    let mut out: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("access-control-"))
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn preflights_from_allowed_origins_are_answered_at_the_gateway() {
    let (up, _cfg, gw) = setup().await;
    let r = preflight(&gw, "/api/items", "https://example.com", "POST", Some("X-Foo-Bar")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-headers: X-Foo-Bar",
            "access-control-allow-methods: POST,GET",
            "access-control-allow-origin: https://example.com",
            "access-control-max-age: 86400",
        ]
    );
    assert_eq!((r.header("server"), r.header("content-length")), (Some("istio-envoy"), Some("0")));
    // The regex origin; `*` methods and headers echo what the browser asks for.
    let r = preflight(&gw, "/api/x", "https://shop.example.org", "GET", None).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example.org"));
    let r = preflight(&gw, "/strict/x", "https://app.example.net", "DELETE", Some("x-a,x-b")).await;
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-headers: x-a,x-b",
            "access-control-allow-methods: DELETE",
            "access-control-allow-origin: https://app.example.net",
        ]
    );
    assert_eq!(up.hits(), 0, "no preflight went upstream");
    let log = gw.wait_for_log(|l| l.contains("\"method\":\"OPTIONS\""), Duration::from_secs(5)).await.unwrap();
    assert!(log.contains("\"response_code\":200") && log.contains("\"upstream_host\":null"), "{log}");
}

#[tokio::test]
async fn actual_requests_from_allowed_origins_get_the_policys_headers() {
    let (up, _cfg, gw) = setup().await;
    let at = gw.addr(80);
    let r = post(at, "/api/items").header("origin", "https://example.com").body("{}").send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().unwrap().headers.get("origin").map(String::as_str), Some("https://example.com"));
    assert_eq!(cors_headers(&r), ["access-control-allow-origin: https://example.com"]);
    let r = get(at, "/strict/list").header("origin", "https://app.example.net").send().await.unwrap();
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-origin: https://app.example.net",
            "access-control-expose-headers: X-Total-Count",
        ]
    );
    // An origin the policy does not allow, no Origin at all, a route without a policy: the
    // upstream's response as it is.
    for (path, origin) in
        [("/api/items", Some("https://evil.example")), ("/api/items", None), ("/other", Some("https://example.com"))]
    {
        let mut req = get(at, path);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(cors_headers(&r).is_empty(), "{path} {origin:?}: {:?}", cors_headers(&r));
    }
    assert_eq!(up.hits(), 5);
    // The gateway's own answers carry them too: a direct response, and a 503.
    let r = get(at, "/static").header("origin", "http://anything.test").send().await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "static"));
    assert_eq!(cors_headers(&r), ["access-control-allow-origin: http://anything.test"]);
    let r = get(at, "/gone").header("origin", "http://anything.test").send().await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cors_headers(&r), ["access-control-allow-origin: http://anything.test"]);
}

#[tokio::test]
async fn preflights_from_other_origins_go_upstream_unless_ignored() {
    let (up, _cfg, gw) = setup().await;
    // Istio's default (`unmatchedPreflights` unset = FORWARD): the upstream answers.
    let r = preflight(&gw, "/api/items", "https://evil.example", "POST", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().unwrap().method, "OPTIONS");
    assert!(cors_headers(&r).is_empty(), "{:?}", cors_headers(&r));
    assert_eq!(up.hits(), 1);
    // IGNORE: the gateway answers, without allow-origin.
    let r = preflight(&gw, "/strict/x", "https://evil.example", "PUT", Some("x-a")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        cors_headers(&r),
        [
            "access-control-allow-credentials: true",
            "access-control-allow-headers: x-a",
            "access-control-allow-methods: PUT",
        ]
    );
    assert!(r.body.is_empty());
    assert_eq!(up.hits(), 1, "the ignored preflight did not go upstream");
    // An OPTIONS without Access-Control-Request-Method is an actual request.
    let r = request(Method::OPTIONS, gw.addr(80), "/api/items")
        .header("origin", "https://example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.echo().unwrap().method, "OPTIONS");
    assert_eq!(cors_headers(&r), ["access-control-allow-origin: https://example.com"]);
}
