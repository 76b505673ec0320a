//! TLS at the gateway: HTTPS with Secrets and files, SNI selection, mutual TLS, versions,
//! httpsRedirect, certificate rotation, bad secrets, HTTP/2 by ALPN, 421.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use meshgate_e2e::rustls::SupportedProtocolVersion;

const HOST: &str = "bookinfo.example.com";

fn https_gateway(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

fn server(port: u16, name: &str, hosts: &str, tls: &str) -> String {
    format!("  - port: {{number: {port}, name: {name}, protocol: HTTPS}}\n    hosts: [{hosts}]\n    tls: {tls}\n")
}

const VS_ALL: &str = r#"apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: app, namespace: default}
spec:
  hosts: ["*"]
  gateways: ["istio-system/gw"]
  http:
  - route: [{destination: {host: app}}]
"#;

async fn app_config(cfg: &ConfigDir) -> Upstream {
    let up = Upstream::new("app").start().await;
    cfg.write("app.yaml", &backends("app", &[&up])).unwrap();
    cfg.write("vs.yaml", VS_ALL).unwrap();
    up
}

/// The app behind an HTTPS server for HOST (`SIMPLE`, certificate from a Secret), with its CA.
async fn simple_https() -> (TestCa, ConfigDir, Upstream) {
    let ca = TestCa::new("test ca");
    let cert = ca.issue_server(&[HOST]);
    let cfg = ConfigDir::new().unwrap();
    let up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("bookinfo-cred", "istio-system", &cert, None)).unwrap();
    cfg.write(
        "gw.yaml",
        &https_gateway(&server(443, "https", &format!("\"{HOST}\""), "{mode: SIMPLE, credentialName: bookinfo-cred}")),
    )
    .unwrap();
    (ca, cfg, up)
}

#[tokio::test]
async fn https_simple_from_a_secret_with_h1_and_h2() {
    let (ca, cfg, _up) = simple_https().await;
    let gw = start(&cfg, &[443]).await;

    let r = get(gw.addr(443), "/x").https().host(HOST).ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);
    let echo = r.echo().unwrap();
    assert_eq!(echo.header("x-forwarded-proto"), Some("https"));
    assert_eq!(echo.host, HOST);

    let r = get(gw.addr(443), "/x").https().http2().host(HOST).ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, Version::HTTP_2, "ALPN h2");

    // curl, a real OpenSSL client, agrees. (Async: the upstream runs on this test's runtime.)
    let dir = ConfigDir::new().unwrap();
    std::fs::write(dir.file("ca.crt"), ca.cert_pem()).unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "--http2", "--cacert"])
        .arg(dir.file("ca.crt"))
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", gw.addr(443).port()))
        .arg(format!("https://{HOST}:{}/", gw.addr(443).port()))
        .output()
        .await
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2", "curl: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn sni_selects_the_certificate_and_unknown_names_are_refused() {
    let ca = TestCa::new("test ca");
    let a = ca.issue_server(&["a.example.com"]);
    let b = ca.issue_server(&["*.b.example.com"]);
    let dir = ConfigDir::new().unwrap();
    let (b_cert, b_key) = b.write_files(dir.path()).unwrap();
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("a-cred", "istio-system", &a, None)).unwrap();
    let servers = server(443, "a", "\"a.example.com\"", "{mode: SIMPLE, credentialName: a-cred}")
        + &server(
            443,
            "b",
            "\"*.b.example.com\"",
            &format!("{{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}", b_cert.display(), b_key.display()),
        );
    cfg.write("gw.yaml", &https_gateway(&servers)).unwrap();
    let gw = start(&cfg, &[443]).await;
    let ca_pem = ca.cert_pem();

    let probe = |sni: &'static str| {
        let ca_pem = ca_pem.clone();
        let addr = gw.addr(443);
        async move { tls_probe(addr, Some(sni), Some(ca_pem.as_bytes()), None, &[&TLS12, &TLS13]).await }
    };
    assert_eq!(probe("a.example.com").await.unwrap().peer_cert_der_first, Some(a.cert_der()));
    assert_eq!(probe("x.b.example.com").await.unwrap().peer_cert_der_first, Some(b.cert_der()));
    assert!(probe("unknown.example.org").await.is_err(), "SNI of an unknown host is refused");
    let text = metrics(gw.metrics_addr()).await.unwrap();
    assert!(
        metric_value(&text, "meshgate_tls_handshake_failures_total", &[("reason", "unknown_sni")]).unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_trusted_client_certificate() {
    let ca = TestCa::new("test ca");
    let other_ca = TestCa::new("other ca");
    let cert = ca.issue_server(&[HOST, "opt.example.com", "san.example.com"]);
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("mtls", "istio-system", &cert, Some(&ca.cert_pem()))).unwrap();
    let servers = server(443, "mutual", &format!("\"{HOST}\""), "{mode: MUTUAL, credentialName: mtls}")
        + &server(443, "optional", "\"opt.example.com\"", "{mode: OPTIONAL_MUTUAL, credentialName: mtls}")
        + &server(
            443,
            "san",
            "\"san.example.com\"",
            "{mode: MUTUAL, credentialName: mtls, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/good\"]}",
        );
    cfg.write("gw.yaml", &https_gateway(&servers)).unwrap();
    let gw = start(&cfg, &[443]).await;
    let at = gw.addr(443);
    let good = ca.issue_client("good", &["spiffe://cluster.local/ns/default/sa/good"]);
    let bad_san = ca.issue_client("bad", &["spiffe://cluster.local/ns/default/sa/bad"]);
    let untrusted = other_ca.issue_client("stranger", &["spiffe://cluster.local/ns/default/sa/good"]);

    let call = |host: &'static str, cert: Option<&CertKey>| {
        let mut req = get(at, "/").https().host(host).ca_pem(ca.cert_pem());
        if let Some(c) = cert {
            req = req.client_cert(c);
        }
        req.send()
    };
    assert_eq!(call(HOST, Some(&good)).await.unwrap().status, 200);
    assert!(call(HOST, None).await.is_err(), "MUTUAL without a client certificate fails");
    assert!(call(HOST, Some(&untrusted)).await.is_err(), "a certificate from another CA fails");
    assert_eq!(call("opt.example.com", None).await.unwrap().status, 200, "OPTIONAL_MUTUAL asks but does not require");
    assert_eq!(call("opt.example.com", Some(&good)).await.unwrap().status, 200);
    assert_eq!(call("san.example.com", Some(&good)).await.unwrap().status, 200);
    assert!(call("san.example.com", Some(&bad_san)).await.is_err(), "SAN not in subjectAltNames");
}

#[tokio::test]
async fn protocol_versions_are_enforced() {
    let ca = TestCa::new("test ca");
    let cert = ca.issue_server(&["v12.example.com", "v13.example.com"]);
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("cred", "istio-system", &cert, None)).unwrap();
    let servers = server(443, "default", "\"v12.example.com\"", "{mode: SIMPLE, credentialName: cred}")
        + &server(
            443,
            "modern",
            "\"v13.example.com\"",
            "{mode: SIMPLE, credentialName: cred, minProtocolVersion: TLSV1_3}",
        );
    cfg.write("gw.yaml", &https_gateway(&servers)).unwrap();
    let gw = start(&cfg, &[443]).await;
    let at = gw.addr(443);
    let ca_pem = ca.cert_pem();
    let probe = |sni: &'static str, versions: &'static [&'static SupportedProtocolVersion]| {
        let ca_pem = ca_pem.clone();
        async move { tls_probe(at, Some(sni), Some(ca_pem.as_bytes()), None, versions).await }
    };
    static ONLY_12: [&SupportedProtocolVersion; 1] = [&TLS12];
    static ONLY_13: [&SupportedProtocolVersion; 1] = [&TLS13];
    assert!(probe("v12.example.com", &ONLY_12).await.is_ok(), "TLS 1.2 is the default minimum");
    assert!(probe("v13.example.com", &ONLY_12).await.is_err(), "minProtocolVersion TLSV1_3 refuses 1.2");
    assert!(probe("v13.example.com", &ONLY_13).await.is_ok());

    // TLS 1.1 from OpenSSL (which really offers 1.1 only: its session shows TLSv1.1): the
    // gateway ends the handshake without agreeing on anything.
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "v12.example.com", "-connect"])
        .arg(at.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "TLS 1.1 handshake must fail: {text}");
    assert!(text.contains("Protocol  : TLSv1.1") && text.contains("Cipher is (NONE)"), "{text}");
    let m = metrics(gw.metrics_addr()).await.unwrap();
    assert!(metric_sum(&m, "meshgate_tls_handshake_failures_total", &[]) >= 1.0, "the refused handshake is counted");
}

#[tokio::test]
async fn https_redirect_sends_301() {
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write(
        "gw.yaml",
        r#"apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bookinfo.example.com"]
    tls: {httpsRedirect: true}
"#,
    )
    .unwrap();
    let gw = start(&cfg, &[80]).await;
    let r = get(gw.addr(80), "/productpage?u=1").host("bookinfo.example.com").send().await.unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.header("location"), Some("https://bookinfo.example.com/productpage?u=1"));
    // As Envoy's require_tls: the Host header as sent, port included.
    let r = get(gw.addr(80), "/productpage").host("bookinfo.example.com:8080").send().await.unwrap();
    assert_eq!(r.header("location"), Some("https://bookinfo.example.com:8080/productpage"));
}

#[tokio::test]
async fn certificates_rotate_without_restart_and_broken_secrets_keep_the_old_one() {
    let ca1 = TestCa::new("ca one");
    let ca2 = TestCa::new("ca two");
    let cert1 = ca1.issue_server(&[HOST]);
    let cert2 = ca2.issue_server(&[HOST]);
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("cred", "istio-system", &cert1, None)).unwrap();
    cfg.write(
        "gw.yaml",
        &https_gateway(&server(443, "https", &format!("\"{HOST}\""), "{mode: SIMPLE, credentialName: cred}")),
    )
    .unwrap();
    let gw = start(&cfg, &[443]).await;
    let at = gw.addr(443);
    let served = || async {
        tls_probe(at, Some(HOST), None, None, &[&TLS12, &TLS13]).await.ok().and_then(|i| i.peer_cert_der_first)
    };
    assert_eq!(served().await, Some(cert1.cert_der()));

    // A keep-alive connection opened before the rotation keeps working after it.
    let mut kept = open_tls(at, &ca1.cert_pem()).await;
    assert!(http1_get(&mut kept).await.starts_with("HTTP/1.1 200"));

    cfg.write("secret.yaml", &tls_secret_yaml("cred", "istio-system", &cert2, None)).unwrap();
    // Names the served certificate, so a failure says which one the gateway still serves.
    let which = |der: Option<Vec<u8>>| match der {
        Some(der) if der == cert1.cert_der() => "cert1",
        Some(der) if der == cert2.cert_der() => "cert2",
        Some(_) => "another certificate",
        None => "no certificate",
    };
    assert_eventually!(Duration::from_secs(10), which(served().await), |c| *c == "cert2", "rotated");
    assert!(http1_get(&mut kept).await.starts_with("HTTP/1.1 200"), "the old connection still serves");

    // Garbage in the Secret: rejected with a diagnostic, the last good certificate serves.
    cfg.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: cred, namespace: istio-system}\nstringData: {tls.crt: junk, tls.key: junk}\n",
    )
    .unwrap();
    assert_eventually!(
        Duration::from_secs(10),
        metric_value(&metrics(gw.metrics_addr()).await.unwrap(), "meshgate_config_rejected_resources", &[]),
        |rejected| *rejected == Some(1.0)
    );
    assert_eq!(served().await, Some(cert2.cert_der()), "the last valid certificate keeps serving");
    assert!(gw.stderr().contains("Secret istio-system/cred"), "the diagnostic names the Secret");
}

#[tokio::test]
async fn a_missing_secret_skips_only_its_server() {
    let ca = TestCa::new("test ca");
    let cert = ca.issue_server(&["good.example.com"]);
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("secret.yaml", &tls_secret_yaml("good", "istio-system", &cert, None)).unwrap();
    let servers = server(443, "good", "\"good.example.com\"", "{mode: SIMPLE, credentialName: good}")
        + &server(443, "missing", "\"missing.example.com\"", "{mode: SIMPLE, credentialName: nope}");
    cfg.write("gw.yaml", &https_gateway(&servers)).unwrap();
    let gw = start(&cfg, &[443]).await;
    let r = get(gw.addr(443), "/").https().host("good.example.com").ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);
    assert!(gw.stderr().contains("spec.servers[1].tls.credentialName") && gw.stderr().contains("istio-system/nope"));
}

#[tokio::test]
async fn coalesced_h2_requests_for_another_servers_host_get_421() {
    let ca = TestCa::new("test ca");
    let a = ca.issue_server(&["a.example.com", "b.example.com"]);
    let b = ca.issue_server(&["b.example.com"]);
    let cfg = ConfigDir::new().unwrap();
    let _up = app_config(&cfg).await;
    cfg.write("a.yaml", &tls_secret_yaml("a", "istio-system", &a, None)).unwrap();
    cfg.write("b.yaml", &tls_secret_yaml("b", "istio-system", &b, None)).unwrap();
    let servers = server(443, "a", "\"a.example.com\"", "{mode: SIMPLE, credentialName: a}")
        + &server(443, "b", "\"b.example.com\"", "{mode: SIMPLE, credentialName: b}");
    cfg.write("gw.yaml", &https_gateway(&servers)).unwrap();
    let gw = start(&cfg, &[443]).await;
    // Certificate a also names b.example.com, so a browser would reuse the connection.
    let r = get(gw.addr(443), "/")
        .https()
        .http2()
        .sni("a.example.com")
        .host("b.example.com")
        .ca_pem(ca.cert_pem())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST);
    let r = get(gw.addr(443), "/").https().http2().host("b.example.com").ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);
}

type TlsConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn open_tls(addr: SocketAddr, ca_pem: &str) -> TlsConn {
    use meshgate_e2e::tls::{client_config, server_name, Verify};
    let config = client_config(Verify::Ca(ca_pem.as_bytes()), None, &[&TLS12, &TLS13], &["http/1.1"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(server_name(HOST).unwrap(), tcp)
        .await
        .unwrap()
}

/// One keep-alive HTTP/1.1 request on an open connection; returns the head and body.
async fn http1_get(conn: &mut TlsConn) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await.expect("response").unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// Reads until the gateway closes the connection (EOF or reset); panics if it is still open
/// after `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    tokio::time::timeout(within, async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .expect("the gateway closes a stalled TLS handshake");
}

/// A client that starts a TLS handshake and stalls, before or after its ClientHello, holds
/// its connection only for the request-header timeout; the stall is counted, and other
/// clients are served meanwhile.
#[tokio::test]
async fn stalled_tls_handshakes_are_closed_at_the_header_timeout() {
    use meshgate_e2e::tls::{client_config, server_name, Verify};
    use tokio::io::AsyncWriteExt;
    let (ca, cfg, _up) = simple_https().await;
    let gw = GatewayProcess::builder()
        .config(cfg.path())
        .ports(&[443])
        .args(["--request-header-timeout", "1s"])
        .start()
        .await
        .unwrap();
    let at = gw.addr(443);

    // Half a ClientHello: a record header announcing 512 bytes, then nothing.
    let mut partial = tokio::net::TcpStream::connect(at).await.unwrap();
    partial.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    // A whole ClientHello from a real TLS client, which then never answers the server's
    // flight (no Finished).
    let config = client_config(Verify::Ca(ca.cert_pem().as_bytes()), None, &[&TLS13], &["http/1.1"]).unwrap();
    let mut client =
        meshgate_e2e::rustls::ClientConnection::new(std::sync::Arc::new(config), server_name(HOST).unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut stalled = tokio::net::TcpStream::connect(at).await.unwrap();
    stalled.write_all(&hello).await.unwrap();

    // Meanwhile a normal client is served.
    let r = get(at, "/x").https().host(HOST).ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, 200);

    closed_within(&mut partial, Duration::from_secs(10)).await;
    closed_within(&mut stalled, Duration::from_secs(10)).await;
    let text = metrics(gw.metrics_addr()).await.unwrap();
    let timeouts = metric_value(&text, "meshgate_tls_handshake_failures_total", &[("reason", "handshake_timeout")]);
    assert_eq!(timeouts, Some(1.0), "the stall after the ClientHello is a handshake timeout:\n{text}");
}
