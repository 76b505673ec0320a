//! Certificates as users bring them: Istio's "Secure Gateways" task run step by step with its
//! own openssl commands (X.509 v1 leaves, serial 0), every key and chain form users meet, several
//! certificates per server (`credentialNames`), and certificates outside their validity dates.
//! curl and openssl s_client are the clients, as in the task.

mod common;

use common::*;
use meshgate_e2e::prelude::*;
use std::path::Path;
use std::process::Command;

/// Runs one shell command line of a task, exactly as written, in `dir`.
fn sh(dir: &Path, line: &str) {
    let out = Command::new("sh").arg("-c").arg(line).current_dir(dir).output().expect("sh runs");
    assert!(out.status.success(), "`{line}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The X.509 version of the first certificate in a PEM file (1 or 3).
fn x509_version(pem: &str) -> u32 {
    let der = meshgate_e2e::tls::parse_certs(pem.as_bytes()).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.version().0 + 1
}

/// `kubectl create -n istio-system secret tls NAME --key=KEY --cert=CERT`.
fn kubectl_secret_tls(name: &str, dir: &Path, key: &str, cert: &str) -> String {
    tls_secret_yaml(name, "istio-system", &CertKey { cert_pem: read(dir, cert), key_pem: read(dir, key) }, None)
}

/// The task's commands, verbatim (Istio 1.2x, "Secure Gateways", "Generate client and server
/// certificates and keys" and "Configure a mutual TLS ingress gateway").
const TASK_SERVER_CERTS: &[&str] = &[
    "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout example.com.key -out example.com.crt",
    "openssl req -out httpbin.example.com.csr -newkey rsa:2048 -nodes -keyout httpbin.example.com.key -subj \"/CN=httpbin.example.com/O=httpbin organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 0 -in httpbin.example.com.csr -out httpbin.example.com.crt",
];
const TASK_CLIENT_CERTS: &[&str] = &[
    "openssl req -out client.example.com.csr -newkey rsa:2048 -nodes -keyout client.example.com.key -subj \"/CN=client.example.com/O=client organization\"",
    "openssl x509 -req -sha256 -days 365 -CA example.com.crt -CAkey example.com.key -set_serial 1 -in client.example.com.csr -out client.example.com.crt",
];

/// The task's Gateway and VirtualService for `mode` (SIMPLE or MUTUAL), applied to the default
/// namespace as the task does.
fn task_gateway(mode: &str) -> String {
    istio_docs(&format!("tasks/traffic-management/ingress/secure-ingress/mygateway-{}.yaml", mode.to_lowercase()))
}

/// httpbin in `default` on port 8000, answering `/status/418` with a 418.
async fn httpbin(cfg: &ConfigDir) -> Upstream {
    let up = Upstream::new("httpbin").start().await;
    let svc = service_named("httpbin", "default", "http", 8000, up.addr().port());
    cfg.write("httpbin.yaml", &docs(&[svc, endpoints_for("httpbin", "default", Some("http"), &[(&up, &[])])])).unwrap();
    up
}

/// `curl -s -o /dev/null -w %{http_code} --resolve NAME:PORT:127.0.0.1 ARGS https://NAME:PORT/PATH`:
/// the status code, or curl's exit code and message when the handshake failed.
async fn curl(name: &str, port: u16, path: &str, dir: &Path, args: &[&str]) -> Result<u16, String> {
    // Async: the upstreams run on this test's runtime.
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
        .arg("-HHost:".to_string() + name)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(args)
        .arg(format!("https://{name}:{port}{path}"))
        .current_dir(dir)
        .output()
        .await
        .expect("curl runs");
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).parse().expect("curl prints the status")),
        code => Err(format!("curl exit {code:?}: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

#[tokio::test]
async fn istio_secure_gateways_task_serves_its_v1_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    for line in TASK_SERVER_CERTS.iter().chain(TASK_CLIENT_CERTS) {
        sh(dir, line);
    }
    // What makes the task's certificates special: OpenSSL 3 issues X.509 v1 here.
    assert_eq!(x509_version(&read(dir, "httpbin.example.com.crt")), 1);
    assert_eq!(x509_version(&read(dir, "client.example.com.crt")), 1);

    // SIMPLE: `kubectl create -n istio-system secret tls httpbin-credential ...`.
    let cfg = ConfigDir::new().unwrap();
    let _httpbin = httpbin(&cfg).await;
    cfg.write(
        "secret.yaml",
        &kubectl_secret_tls("httpbin-credential", dir, "httpbin.example.com.key", "httpbin.example.com.crt"),
    )
    .unwrap();
    cfg.write("gateway.yaml", &task_gateway("SIMPLE")).unwrap();
    let (code, out, err) = run_analyze([cfg.path()]);
    assert_eq!(code, 0, "analyze: {out}{err}");
    let gw = start(&cfg, &[443]).await;
    let port = gw.addr(443).port();
    assert_eq!(curl("httpbin.example.com", port, "/status/418", dir, &["--cacert", "example.com.crt"]).await, Ok(418));

    // MUTUAL: the Secret gains the CA (`--from-file=ca.crt=example.com.crt`), the Gateway
    // `mode: MUTUAL`; curl presents the task's v1 client certificate.
    cfg.write(
        "secret.yaml",
        &generic_secret_yaml(
            "httpbin-credential",
            "istio-system",
            &[
                ("tls.key", &read(dir, "httpbin.example.com.key")),
                ("tls.crt", &read(dir, "httpbin.example.com.crt")),
                ("ca.crt", &read(dir, "example.com.crt")),
            ],
        ),
    )
    .unwrap();
    cfg.write("gateway.yaml", &task_gateway("MUTUAL")).unwrap();
    let with_cert =
        ["--cacert", "example.com.crt", "--cert", "client.example.com.crt", "--key", "client.example.com.key"];
    // Without a client certificate, as the task shows first: refused, once the MUTUAL server
    // serves (a request with a certificate would also pass the SIMPLE one before the reload).
    let _ = assert_eventually!(
        Duration::from_secs(10),
        curl("httpbin.example.com", port, "/status/418", dir, &["--cacert", "example.com.crt"]).await,
        |r| r.is_err(),
        "no client certificate must be refused: {}",
        gw.stderr()
    );
    let accepted = curl("httpbin.example.com", port, "/status/418", dir, &with_cert).await;
    assert_eq!(accepted, Ok(418), "the task's v1 client certificate is accepted: {}", gw.stderr());

    // A v1 client certificate from another CA is refused too.
    sh(dir, "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=other Inc./CN=other.com' -keyout other.com.key -out other.com.crt");
    sh(dir, "openssl req -out intruder.csr -newkey rsa:2048 -nodes -keyout intruder.key -subj \"/CN=client.example.com/O=client organization\"");
    sh(dir, "openssl x509 -req -sha256 -days 365 -CA other.com.crt -CAkey other.com.key -set_serial 1 -in intruder.csr -out intruder.crt");
    assert_eq!(x509_version(&read(dir, "intruder.crt")), 1);
    let intruder = ["--cacert", "example.com.crt", "--cert", "intruder.crt", "--key", "intruder.key"];
    let refused = curl("httpbin.example.com", port, "/status/418", dir, &intruder).await;
    assert!(refused.is_err(), "a v1 client certificate of another CA must be refused: {refused:?}");
    // And over TLS 1.2, where the handshake signature takes the other path.
    let tls12 = [&with_cert[..], &["--tlsv1.2", "--tls-max", "1.2"]].concat();
    assert_eq!(curl("httpbin.example.com", port, "/status/418", dir, &tls12).await, Ok(418));
    let intruder12 = [&intruder[..], &["--tlsv1.2", "--tls-max", "1.2"]].concat();
    assert!(curl("httpbin.example.com", port, "/status/418", dir, &intruder12).await.is_err());
}

/// One form of certificate and key users bring: the openssl lines that make `NAME.key` and
/// `NAME.crt` (signed by the test root `root.crt`/`root.key`).
struct Form {
    name: &'static str,
    key: &'static str,
    /// Extra certificates appended to `tls.crt` (intermediates), by file name.
    chain: &'static [&'static str],
}

const FORMS: &[Form] = &[
    Form {
        name: "rsa2048-pkcs8",
        key: "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048-pkcs8.key",
        chain: &[],
    },
    Form { name: "rsa4096-pkcs1", key: "openssl genrsa -traditional -out rsa4096-pkcs1.key 4096", chain: &[] },
    Form { name: "p256-sec1", key: "openssl ecparam -name prime256v1 -genkey -noout -out p256-sec1.key", chain: &[] },
    Form {
        name: "p384-pkcs8",
        key: "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384-pkcs8.key",
        chain: &[],
    },
    Form { name: "ed25519", key: "openssl genpkey -algorithm ed25519 -out ed25519.key", chain: &[] },
    Form {
        name: "intermediate",
        key: "openssl ecparam -name prime256v1 -genkey -noout -out intermediate.key",
        chain: &["inter.crt"],
    },
];

#[tokio::test]
async fn every_key_and_chain_form_is_served() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    sh(dir, "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/O=example Inc./CN=example.com' -keyout root.key -out root.crt");
    // An intermediate CA (v3, CA:TRUE) between the root and the `intermediate` form's leaf.
    sh(dir, "openssl req -new -newkey rsa:2048 -nodes -keyout inter.key -subj '/O=example Inc./CN=intermediate' -out inter.csr");
    sh(dir, "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ca.ext");
    sh(dir, "openssl x509 -req -sha256 -days 365 -CA root.crt -CAkey root.key -set_serial 2 -in inter.csr -extfile ca.ext -out inter.crt");

    let cfg = ConfigDir::new().unwrap();
    let _up = Upstream::new("app").start().await;
    cfg.write("app.yaml", &backends("app", &[&_up])).unwrap();
    let mut servers = String::new();
    let mut secrets = Vec::new();
    for form in FORMS {
        let name = form.name;
        sh(dir, form.key);
        let signer =
            if form.chain.is_empty() { "-CA root.crt -CAkey root.key" } else { "-CA inter.crt -CAkey inter.key" };
        sh(dir, &format!("openssl req -new -key {name}.key -subj '/CN={name}.example.com' -out {name}.csr"));
        sh(dir, &format!("printf 'subjectAltName=DNS:{name}.example.com\\n' > {name}.ext"));
        sh(
            dir,
            &format!(
                "openssl x509 -req -days 30 {signer} -set_serial 7 -in {name}.csr -extfile {name}.ext -out {name}.crt"
            ),
        );
        let mut chain = read(dir, &format!("{name}.crt"));
        for extra in form.chain {
            chain.push_str(&read(dir, extra));
        }
        let key_pem = read(dir, &format!("{name}.key"));
        secrets.push(tls_secret_yaml(name, "istio-system", &CertKey { cert_pem: chain, key_pem }, None));
        servers.push_str(&format!(
            "  - port: {{number: 443, name: https-{name}, protocol: HTTPS}}\n    hosts: [\"{name}.example.com\"]\n    tls: {{mode: SIMPLE, credentialName: {name}}}\n"
        ));
    }
    // The key forms as written: PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY", PKCS#8.
    assert!(read(dir, "rsa4096-pkcs1.key").contains("BEGIN RSA PRIVATE KEY"));
    assert!(read(dir, "p256-sec1.key").contains("BEGIN EC PRIVATE KEY"));
    assert!(read(dir, "p384-pkcs8.key").contains("BEGIN PRIVATE KEY"));
    cfg.write("secrets.yaml", &docs(&secrets)).unwrap();
    cfg.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
        ),
    )
    .unwrap();
    cfg.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n  hosts: [\"*.example.com\"]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: app}}]\n",
    )
    .unwrap();
    let gw = start(&cfg, &[443]).await;
    let port = gw.addr(443).port();
    for form in FORMS {
        let host = format!("{}.example.com", form.name);
        assert_eq!(curl(&host, port, "/", dir, &["--cacert", "root.crt"]).await, Ok(200), "form {}", form.name);
    }
    assert!(!gw.stderr().contains("TLS server unusable"), "{}", gw.stderr());
}

/// The public key size `openssl s_client` reports for the certificate it was served, with
/// the client offering only `sigalgs`.
async fn served_key_bits(port: u16, sigalgs: Option<&str>) -> String {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "multi.example.com"]);
    if let Some(s) = sigalgs {
        cmd.args(["-sigalgs", s]);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().await.expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Server public key is "))
        .unwrap_or_else(|| panic!("no server key in s_client output: {text}{}", String::from_utf8_lossy(&out.stderr)))
        .to_string()
}

#[tokio::test]
async fn credential_names_serve_rsa_and_ecdsa_by_what_the_client_accepts() {
    let ca = TestCa::new("multi ca");
    let ecdsa = ca.issue_server(&["multi.example.com"]);
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    sh(dir, "openssl req -x509 -sha256 -nodes -days 365 -newkey rsa:2048 -subj '/CN=multi.example.com' -keyout rsa.key -out rsa.crt");
    let cfg = ConfigDir::new().unwrap();
    let _up = Upstream::new("app").start().await;
    cfg.write("app.yaml", &backends("app", &[&_up])).unwrap();
    cfg.write(
        "secrets.yaml",
        &docs(&[
            kubectl_secret_tls("rsa-cred", dir, "rsa.key", "rsa.crt"),
            tls_secret_yaml("ecdsa-cred", "istio-system", &ecdsa, None),
        ]),
    )
    .unwrap();
    cfg.write(
        "gw.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [multi.example.com]\n    tls:\n      mode: SIMPLE\n      credentialNames: [rsa-cred, ecdsa-cred]\n",
    )
    .unwrap();
    cfg.write("vs.yaml", VS_MULTI).unwrap();
    let gw = start(&cfg, &[443]).await;
    let port = gw.addr(443).port();
    // A client that can verify both gets ECDSA (Envoy's preference), an RSA-only client RSA.
    assert_eq!(served_key_bits(port, None).await, "256 bit");
    assert_eq!(served_key_bits(port, Some("ecdsa_secp256r1_sha256")).await, "256 bit");
    assert_eq!(served_key_bits(port, Some("rsa_pss_rsae_sha256:rsa_pkcs1_sha256")).await, "2048 bit");
    // The ECDSA chain verifies end to end.
    std::fs::write(dir.join("ca.crt"), ca.cert_pem()).unwrap();
    assert_eq!(curl("multi.example.com", port, "/", dir, &["--cacert", "ca.crt"]).await, Ok(200));
}

const VS_MULTI: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: app}\nspec:\n  hosts: [multi.example.com]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: app}}]\n";

#[tokio::test]
async fn an_expired_certificate_is_served_with_a_warning_and_its_expiry_in_metrics() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let expired = TestCa::new("old ca").issue_server_valid(&["old.example.com"], (2020, 1, 1), (2021, 1, 1));
    let cfg = ConfigDir::new().unwrap();
    let _up = Upstream::new("app").start().await;
    cfg.write("app.yaml", &backends("app", &[&_up])).unwrap();
    cfg.write("secret.yaml", &tls_secret_yaml("old-cred", "istio-system", &expired, None)).unwrap();
    cfg.write(
        "gw.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [old.example.com]\n    tls: {mode: SIMPLE, credentialName: old-cred}\n",
    )
    .unwrap();
    cfg.write("vs.yaml", &VS_MULTI.replace("multi.example.com", "old.example.com")).unwrap();

    // analyze warns (and still exits 0: a warning, as Envoy serves it).
    let (code, out, err) = run_analyze([cfg.path()]);
    assert_eq!(code, 0, "analyze: {out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("MG0009") && all.contains("expired") && all.contains("old-cred"), "{all}");

    let gw = start(&cfg, &[443]).await;
    let port = gw.addr(443).port();
    // Served: curl without verification gets through, with verification refuses the date.
    assert_eq!(curl("old.example.com", port, "/", dir, &["-k"]).await, Ok(200));
    let refused = curl("old.example.com", port, "/", dir, &[]).await.unwrap_err();
    assert!(refused.contains("expired") || refused.contains("certificate"), "{refused}");
    // 2021-01-01T00:00:00Z.
    let text = metrics(gw.metrics_addr()).await.unwrap();
    let expiry =
        metric_value(&text, "meshgate_certificate_expiry_seconds", &[("secret", "kubernetes://istio-system/old-cred")]);
    assert_eq!(expiry, Some(1_609_459_200.0), "{text}");
}
