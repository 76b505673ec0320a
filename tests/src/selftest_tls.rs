//! Round trips between the harness's TLS/HTTP2/gRPC/TCP clients and its own
//! upstreams: a TLS suite failure must mean the gateway, not the harness.

use std::time::Duration;

use http::{StatusCode, Version};
use rustls::version::{TLS12, TLS13};
use rustls::ProtocolVersion;

use crate::certs::{self_signed, TestCa};
use crate::client::{get, grpc_call, grpc_request, post, tcp_exchange, tls_probe, tls_tcp_exchange, TlsProbe};
use crate::tcp::{TcpUpstream, TlsTcpUpstream};
use crate::upstream::Upstream;

/// Server-side counters trail the client's view of a failed handshake.
async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn tls_upstream_round_trip_http1_and_h2() {
    let ca = TestCa::new("meshgate test CA");
    let up = Upstream::new("reviews").tls(ca.issue_server(&["reviews.example.com"])).start().await;
    assert!(up.is_tls());
    assert!(up.url("/x").starts_with("https://"));

    let r = get(up.addr(), "/r/1").host("reviews.example.com").ca_pem(ca.cert_pem()).send().await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.version, Version::HTTP_11);
    let e = r.echo().unwrap();
    assert_eq!(e.http_version, "HTTP/1.1");
    let tls = e.tls.expect("TLS echo");
    assert_eq!(tls.sni.as_deref(), Some("reviews.example.com"));
    assert_eq!(tls.alpn.as_deref(), Some("http/1.1"));
    assert!(!tls.client_cert);

    let r = post(up.addr(), "/r/2")
        .host("reviews.example.com")
        .ca_pem(ca.cert_pem())
        .http2()
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    let e = r.echo().unwrap();
    assert_eq!(e.http_version, "HTTP/2.0");
    assert_eq!(e.host, "reviews.example.com");
    assert_eq!(e.body, "payload");
    assert_eq!(e.tls.unwrap().alpn.as_deref(), Some("h2"));

    // A client trusting another CA refuses the certificate; the upstream
    // sees the failed handshake.
    let other = TestCa::new("other");
    let err = get(up.addr(), "/").host("reviews.example.com").ca_pem(other.cert_pem()).send().await;
    assert!(err.is_err());
    assert!(eventually(|| up.handshake_failures() >= 1).await);

    // An upstream limited to HTTP/1.1 makes `.http2()` fall back.
    let h1 = Upstream::new("h1").tls(ca.issue_server(&["h1.local"])).alpn(&["http/1.1"]).start().await;
    let r = get(h1.addr(), "/").host("h1.local").ca_pem(ca.cert_pem()).http2().send().await.unwrap();
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.echo().unwrap().host, "h1.local");
}

#[tokio::test]
async fn tls_upstream_requires_client_cert() {
    let ca = TestCa::new("ca");
    let up = Upstream::new("secure").tls(ca.issue_server(&["secure.local"])).client_ca(ca.cert_pem()).start().await;
    assert!(get(up.addr(), "/").host("secure.local").ca_pem(ca.cert_pem()).send().await.is_err());
    let client = ca.issue_client("gateway", &["spiffe://cluster.local/ns/istio-system/sa/gateway"]);
    let r = get(up.addr(), "/").host("secure.local").ca_pem(ca.cert_pem()).client_cert(&client).send().await.unwrap();
    assert!(r.echo().unwrap().tls.unwrap().client_cert);
    let r = get(up.addr(), "/")
        .host("secure.local")
        .ca_pem(ca.cert_pem())
        .client_cert(&client)
        .http2()
        .send()
        .await
        .unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    // Handshake level: the upstream's session tickets end the probe's
    // post-handshake wait early; without a certificate the TLS 1.3 alert
    // after the handshake is still reported.
    let pem = ca.cert_pem();
    let t = std::time::Instant::now();
    let info = tls_probe(up.addr(), Some("secure.local"), Some(pem.as_bytes()), Some(&client), &[&TLS13]).await;
    assert_eq!(info.unwrap().protocol_version, ProtocolVersion::TLSv1_3);
    assert!(t.elapsed() < Duration::from_millis(900), "{:?}", t.elapsed());
    let err = tls_probe(up.addr(), Some("secure.local"), Some(pem.as_bytes()), None, &[&TLS13]).await.unwrap_err();
    assert!(err.contains("CertificateRequired") || err.contains("alert"), "{err}");
    // A certificate from a CA the upstream does not trust is refused.
    let stranger = TestCa::new("stranger").issue_client("x", &["x"]);
    let res = get(up.addr(), "/").host("secure.local").ca_pem(ca.cert_pem()).client_cert(&stranger).send().await;
    assert!(res.is_err());
}

#[tokio::test]
async fn h2c_round_trip_and_http1_fallback() {
    let up = Upstream::new("h2c").h2c().start().await;
    let r = get(up.addr(), "/a?b=c").host("h2c.example.com").header("x-k", "v").http2_prior_knowledge().send().await;
    let r = r.unwrap();
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.header("x-upstream"), Some("h2c-v1"));
    let e = r.echo().unwrap();
    assert_eq!(e.http_version, "HTTP/2.0");
    assert_eq!(e.host, "h2c.example.com");
    assert_eq!(e.path, "/a?b=c");
    assert_eq!(e.header("x-k"), Some("v"));
    assert!(e.tls.is_none());

    // Without the preface the same listener speaks HTTP/1.1.
    let e = get(up.addr(), "/").send().await.unwrap().echo().unwrap();
    assert_eq!(e.http_version, "HTTP/1.1");

    // The default upstream is HTTP/1.x only.
    let plain = Upstream::new("plain").start().await;
    let res = get(plain.addr(), "/").http2_prior_knowledge().timeout(Duration::from_secs(3)).send().await;
    assert!(res.is_err(), "{res:?}");
}

#[tokio::test]
async fn grpc_status_ok_and_failure() {
    let up = Upstream::new("greeter").version("v2").grpc().start().await;
    let reply = grpc_call(up.addr(), "/helloworld.Greeter/SayHello", "grpc.example.com", None).await.unwrap();
    assert_eq!(reply.http_status, StatusCode::OK);
    assert_eq!(reply.grpc_status.as_deref(), Some("0"));
    assert!(reply.ok());
    assert_eq!(reply.headers.get("content-type").unwrap(), "application/grpc");
    assert_eq!(reply.messages.len(), 1);
    let e = reply.echo().unwrap();
    assert_eq!((e.service.as_str(), e.version.as_str()), ("greeter", "v2"));
    assert_eq!(e.path, "/helloworld.Greeter/SayHello");
    assert_eq!(e.host, "grpc.example.com");
    assert_eq!(e.http_version, "HTTP/2.0");
    assert_eq!(e.header("te"), Some("trailers"));

    let reply = grpc_request(up.addr(), "/helloworld.Greeter/SayHello")
        .message(&b"ping"[..])
        .header("x-user", "jason")
        .send()
        .await
        .unwrap();
    let e = reply.echo().unwrap();
    assert_eq!(e.body, "ping");
    assert_eq!(e.header("x-user"), Some("jason"));

    let reply = grpc_call(up.addr(), "/helloworld.Greeter/Fail", "grpc.example.com", None).await.unwrap();
    assert_eq!(reply.http_status, StatusCode::OK);
    assert_eq!(reply.grpc_status.as_deref(), Some("13"));
    assert_eq!(reply.grpc_message.as_deref(), Some("boom"));
    assert!(reply.messages.is_empty());
    assert!(reply.trailers.contains_key("grpc-status"));

    // Non-gRPC requests still get the plain echo.
    assert_eq!(get(up.addr(), "/plain").send().await.unwrap().echo().unwrap().path, "/plain");
}

#[tokio::test]
async fn grpc_over_tls() {
    let ca = TestCa::new("ca");
    let up = Upstream::new("greeter").grpc().tls(ca.issue_server(&["*.example.com"])).start().await;
    let pem = ca.cert_pem();
    let reply =
        grpc_call(up.addr(), "/p.S/M", "grpc.example.com", Some((pem.as_bytes(), "grpc.example.com"))).await.unwrap();
    assert!(reply.ok(), "{reply:?}");
    let tls = reply.echo().unwrap().tls.unwrap();
    assert_eq!(tls.sni.as_deref(), Some("grpc.example.com"));
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
}

#[tokio::test]
async fn tcp_echo_half_close_and_counting() {
    let up = TcpUpstream::start("tcp-a").await;
    let out = tcp_exchange(up.addr(), b"hello", true).await.unwrap();
    assert_eq!(out, b"tcp-a\nhello");

    // Larger than socket buffers: write and read must overlap.
    let big = crate::upstream::pattern_bytes(4 << 20);
    let out = tcp_exchange(up.addr(), &big, true).await.unwrap();
    assert_eq!(&out[..6], b"tcp-a\n");
    assert_eq!(&out[6..], &big[..]);

    // Without half-close the server keeps the connection; quiet ends the read.
    let out = tcp_exchange(up.addr(), b"x", false).await.unwrap();
    assert_eq!(out, b"tcp-a\nx");

    assert_eq!(up.connections(), 3);
    assert_eq!(up.bytes_received(), 5 + (4 << 20) + 1);
    assert!(up.wait_for_connections(3, Duration::from_millis(10)).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(up.active_connections(), 0);

    let addr = up.addr();
    drop(up);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tcp_exchange(addr, b"x", true).await.is_err());
}

#[tokio::test]
async fn tls_tcp_echo_reports_sni() {
    let ca = TestCa::new("ca");
    let up = TlsTcpUpstream::start("tls-a", ca.issue_server(&["*.example.com"])).await;
    let pem = ca.cert_pem();
    let out = tls_tcp_exchange(up.addr(), "db.example.com", Some(pem.as_bytes()), b"abc").await.unwrap();
    assert_eq!(out, b"tls-a sni=db.example.com\nabc");
    // Unverified client, another name.
    let out = tls_tcp_exchange(up.addr(), "x.example.com", None, b"").await.unwrap();
    assert_eq!(out, b"tls-a sni=x.example.com\n");
    assert_eq!(up.snis(), ["db.example.com", "x.example.com"]);
    // The certificate does not cover other.org.
    assert!(tls_tcp_exchange(up.addr(), "other.org", Some(pem.as_bytes()), b"").await.is_err());
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn tls_probe_versions_alpn_and_sni() {
    let ca = TestCa::new("ca");
    let pem = ca.cert_pem();
    let leaf = ca.issue_server(&["a.example.com"]);
    let only12 = TlsTcpUpstream::builder("v12", leaf.clone()).versions(&[&TLS12]).start().await.unwrap();
    let only13 = TlsTcpUpstream::builder("v13", leaf.clone()).versions(&[&TLS13]).alpn(&["h2"]).start().await.unwrap();

    let info = tls_probe(only12.addr(), Some("a.example.com"), Some(pem.as_bytes()), None, &[]).await.unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::TLSv1_2);
    assert_eq!(info.peer_cert_der_first.as_deref(), Some(&leaf.cert_der()[..]));
    assert!(info.cipher_suite.starts_with("TLS_ECDHE_"), "{}", info.cipher_suite);
    let err = tls_probe(only12.addr(), Some("a.example.com"), None, None, &[&TLS13]).await.unwrap_err();
    assert!(!err.is_empty());

    let info = tls_probe(only13.addr(), Some("a.example.com"), Some(pem.as_bytes()), None, &[]).await.unwrap();
    assert_eq!(info.protocol_version, ProtocolVersion::TLSv1_3);
    assert_eq!(info.alpn, None);
    assert!(tls_probe(only13.addr(), Some("a.example.com"), None, None, &[&TLS12]).await.is_err());

    let alpn = ["http/1.1", "h2"];
    let info = TlsProbe { sni: Some("a.example.com"), alpn: &alpn, ..Default::default() }.run(only13.addr()).await;
    assert_eq!(info.unwrap().alpn.as_deref(), Some("h2"));

    // No SNI: the chain is still checked against the CA, the name is not.
    assert!(tls_probe(only13.addr(), None, Some(pem.as_bytes()), None, &[]).await.is_ok());
    assert_eq!(only13.snis().last().map(String::as_str), Some(""));
    let other = TestCa::new("other").cert_pem();
    let err = tls_probe(only13.addr(), None, Some(other.as_bytes()), None, &[]).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // A name the certificate does not cover.
    let err = tls_probe(only13.addr(), Some("b.example.org"), Some(pem.as_bytes()), None, &[]).await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    // A self-signed server is only accepted without a CA.
    let ss = TlsTcpUpstream::start("ss", self_signed(&["localhost"])).await;
    assert!(tls_probe(ss.addr(), Some("localhost"), None, None, &[]).await.is_ok());
    assert!(tls_probe(ss.addr(), Some("localhost"), Some(pem.as_bytes()), None, &[]).await.is_err());
}

#[tokio::test]
async fn tls_probe_client_certificates() {
    let ca = TestCa::new("ca");
    let pem = ca.cert_pem();
    let good = ca.issue_client("sleep", &["spiffe://cluster.local/ns/default/sa/sleep"]);
    let bad = TestCa::new("intruder").issue_client("sleep", &["spiffe://cluster.local/ns/default/sa/sleep"]);
    let up = TlsTcpUpstream::builder("mtls", ca.issue_server(&["m.example.com"]))
        .client_ca(ca.cert_pem())
        .start()
        .await
        .unwrap();
    // TLS 1.2 refuses during the handshake, TLS 1.3 right after it; the
    // probe must report both as errors.
    for versions in [&[&TLS12][..], &[&TLS13][..]] {
        let probe = |client| tls_probe(up.addr(), Some("m.example.com"), Some(pem.as_bytes()), client, versions);
        let info = probe(Some(&good)).await.unwrap();
        assert_eq!(
            info.protocol_version,
            if versions[0] == &TLS12 { ProtocolVersion::TLSv1_2 } else { ProtocolVersion::TLSv1_3 }
        );
        let err = probe(None).await.unwrap_err();
        assert!(!err.is_empty());
        let err = probe(Some(&bad)).await.unwrap_err();
        assert!(!err.is_empty());
    }
    assert!(eventually(|| up.handshake_failures() >= 4).await);
}
