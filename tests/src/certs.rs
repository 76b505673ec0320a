//! Throw-away X.509 certificates and the Kubernetes Secrets that carry them.
//!
//! TLS suites need a CA the client can trust, leaf certificates for the
//! gateway's Gateway servers and for upstreams, and client certificates for
//! mutual TLS, all generated fresh per test so nothing secret or expiring is
//! checked in. Keys are ECDSA P-256 (rcgen's default), which every rustls
//! configuration accepts and which is fast enough to generate per test.
//!
//! Names passed as SANs are classified the way a reader would expect: an IP
//! literal becomes an IP SAN, anything with `://` (SPIFFE ids) a URI SAN, and
//! everything else, wildcards included, a DNS SAN.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Map, Value};

/// A PEM certificate (leaf only) and its PKCS#8 PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl CertKey {
    /// DER of the first certificate in [`cert_pem`](Self::cert_pem), to
    /// compare with what a TLS peer presented (see
    /// [`TlsInfo::peer_cert_der_first`](crate::client::TlsInfo)).
    pub fn cert_der(&self) -> Vec<u8> {
        crate::tls::parse_certs(self.cert_pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|c| c.to_vec())
            .expect("CertKey holds a PEM certificate")
    }

    /// Certificate followed by key in one PEM, the shape
    /// [`RequestBuilder::client_identity_pem`](crate::client::RequestBuilder::client_identity_pem)
    /// and many tools (`curl --cert`) take.
    pub fn identity_pem(&self) -> String {
        let mut s = self.cert_pem.clone();
        if !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&self.key_pem);
        s
    }

    /// Writes `tls.crt` and `tls.key` (the Secret key names, which is also
    /// what file-based Gateway `serverCertificate`/`privateKey` tests point
    /// at) into `dir`, creating it if needed; returns (cert path, key path).
    pub fn write_files(&self, dir: impl AsRef<Path>) -> io::Result<(PathBuf, PathBuf)> {
        self.write_files_named(dir, "tls.crt", "tls.key")
    }

    /// Like [`write_files`](Self::write_files) with explicit file names, for
    /// several identities in one folder (`client.crt`/`client.key`).
    pub fn write_files_named(
        &self,
        dir: impl AsRef<Path>,
        cert_name: &str,
        key_name: &str,
    ) -> io::Result<(PathBuf, PathBuf)> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let cert = dir.join(cert_name);
        let key = dir.join(key_name);
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// Private keys are written owner-only so tools that check permissions on key
/// files (and humans copying an example) are not taught bad habits.
fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())
}

/// A certificate authority that lives for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    // rcgen's Certificate has no Debug, and the key must not be printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("subject", &self.cert.params().distinguished_name).finish_non_exhaustive()
    }
}

impl TestCa {
    /// A self-signed CA certificate with common name `common_name`. Two CAs
    /// never trust each other's leaves, which is how "wrong client
    /// certificate" tests are built.
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("self-sign CA");
        TestCa { cert, key }
    }

    /// The CA certificate (PEM): what clients trust, and `ca.crt` in Secrets.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A server (serverAuth) leaf for `names` (DNS, wildcard, IP or URI; see
    /// the module docs). The first name is also the common name.
    pub fn issue_server(&self, names: &[&str]) -> CertKey {
        self.issue(names.first().copied().unwrap_or("server"), names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server leaf valid only between two dates (year, month, day), e.g. one that expired.
    pub fn issue_server_valid(&self, names: &[&str], from: (i32, u8, u8), until: (i32, u8, u8)) -> CertKey {
        let mut params = leaf_params(names.first().copied().unwrap_or("server"), names);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        self.sign(params)
    }

    /// A client (clientAuth) leaf with `common_name` and `sans` (typically a
    /// SPIFFE URI such as `spiffe://cluster.local/ns/default/sa/sleep`).
    pub fn issue_client(&self, common_name: &str, sans: &[&str]) -> CertKey {
        self.issue(common_name, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A leaf usable both ways (serverAuth and clientAuth), like Istio
    /// workload certificates, for upstreams that also dial out.
    pub fn issue_workload(&self, common_name: &str, sans: &[&str]) -> CertKey {
        let mut params = leaf_params(common_name, sans);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn issue(&self, common_name: &str, sans: &[&str], eku: ExtendedKeyUsagePurpose) -> CertKey {
        let mut params = leaf_params(common_name, sans);
        params.extended_key_usages = vec![eku];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> CertKey {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A self-signed server certificate for `names`: what a test uses when the
/// point is that the client does *not* trust it.
pub fn self_signed(names: &[&str]) -> CertKey {
    let key = KeyPair::generate().expect("generate key");
    let mut params = leaf_params(names.first().copied().unwrap_or("self-signed"), names);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).expect("self-sign");
    CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "meshgate e2e");
    dn
}

fn leaf_params(common_name: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name);
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    params
}

fn san(name: &str) -> SanType {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return SanType::IpAddress(ip);
    }
    let ia5 = name.try_into().unwrap_or_else(|e| panic!("SAN {name:?} is not ASCII: {e}"));
    if name.contains("://") {
        SanType::URI(ia5)
    } else {
        SanType::DnsName(ia5)
    }
}

/// A core/v1 Secret of type `kubernetes.io/tls` named `name` in `ns`, with
/// base64 `data` keys `tls.crt`, `tls.key` and, when `ca` is given, `ca.crt`
/// (how Istio's `credentialName` carries the client CA for MUTUAL).
pub fn tls_secret_yaml(name: &str, ns: &str, cert: &CertKey, ca: Option<&str>) -> String {
    let mut entries = vec![("tls.crt", cert.cert_pem.as_str()), ("tls.key", cert.key_pem.as_str())];
    if let Some(ca) = ca {
        entries.push(("ca.crt", ca));
    }
    secret_yaml(name, ns, "kubernetes.io/tls", &entries)
}

/// A core/v1 Secret of type `Opaque` with arbitrary keys, e.g. Istio's
/// generic form (`cert`/`key`/`cacert`) or a separate `NAME-cacert` Secret.
pub fn generic_secret_yaml(name: &str, ns: &str, entries: &[(&str, &str)]) -> String {
    secret_yaml(name, ns, "Opaque", entries)
}

fn secret_yaml(name: &str, ns: &str, type_: &str, entries: &[(&str, &str)]) -> String {
    // `data` rather than `stringData`: it is what a cluster returns, so the
    // gateway's decoding path is what gets tested.
    let data: Map<String, Value> =
        entries.iter().map(|(k, v)| (k.to_string(), Value::String(BASE64.encode(v.as_bytes())))).collect();
    let v = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": type_,
        "data": data,
    });
    serde_norway::to_string(&v).expect("JSON value serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_parser::extensions::GeneralName;

    fn sans(pem: &str) -> Vec<String> {
        let der = CertKey { cert_pem: pem.into(), key_pem: String::new() }.cert_der();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert.subject_alternative_name().unwrap().expect("SAN extension");
        ext.value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(s) => format!("DNS:{s}"),
                GeneralName::URI(s) => format!("URI:{s}"),
                GeneralName::IPAddress(b) => format!("IP:{b:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn verify_server(ca: &TestCa, leaf: &CertKey, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), crate::tls::provider())
                .build()
                .unwrap();
        verifier
            .verify_server_cert(
                &CertificateDer::from(leaf.cert_der()),
                &[],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn server_cert_chains_to_ca_and_matches_wildcards() {
        let ca = TestCa::new("meshgate test CA");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let leaf = ca.issue_server(&["bookinfo.example.com", "*.example.com", "127.0.0.1"]);
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        verify_server(&ca, &leaf, "bookinfo.example.com").unwrap();
        verify_server(&ca, &leaf, "reviews.example.com").unwrap();
        verify_server(&ca, &leaf, "127.0.0.1").unwrap();
        assert!(verify_server(&ca, &leaf, "example.org").is_err());
        // A different CA does not vouch for it.
        assert!(verify_server(&TestCa::new("other"), &leaf, "bookinfo.example.com").is_err());
        assert_eq!(sans(&leaf.cert_pem), ["DNS:bookinfo.example.com", "DNS:*.example.com", "IP:[127, 0, 0, 1]"]);
    }

    #[test]
    fn client_cert_has_uri_san_and_verifies() {
        let ca = TestCa::new("ca");
        let c = ca.issue_client("sleep", &["spiffe://cluster.local/ns/default/sa/sleep", "sleep.default"]);
        assert_eq!(sans(&c.cert_pem), ["URI:spiffe://cluster.local/ns/default/sa/sleep", "DNS:sleep.default"]);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), crate::tls::provider())
            .build()
            .unwrap();
        v.verify_client_cert(&CertificateDer::from(c.cert_der()), &[], UnixTime::now()).unwrap();
        let stranger = TestCa::new("stranger").issue_client("x", &[]);
        assert!(v.verify_client_cert(&CertificateDer::from(stranger.cert_der()), &[], UnixTime::now()).is_err());
    }

    #[test]
    fn self_signed_is_its_own_issuer() {
        let s = self_signed(&["localhost"]);
        assert_eq!(sans(&s.cert_pem), ["DNS:localhost"]);
        assert!(s.identity_pem().contains("CERTIFICATE-----\n-----BEGIN PRIVATE KEY"));
    }

    #[test]
    fn secrets_decode() {
        let ca = TestCa::new("ca");
        let leaf = ca.issue_server(&["a.example.com"]);
        let y = tls_secret_yaml("bookinfo-credential", "istio-system", &leaf, Some(&ca.cert_pem()));
        let v: Value = serde_norway::from_str(&y).unwrap();
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["type"], "kubernetes.io/tls");
        assert_eq!(v["metadata"]["namespace"], "istio-system");
        let field = |k: &str| String::from_utf8(BASE64.decode(v["data"][k].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(field("tls.crt"), leaf.cert_pem);
        assert_eq!(field("tls.key"), leaf.key_pem);
        assert_eq!(field("ca.crt"), ca.cert_pem());

        let v: Value = serde_norway::from_str(&tls_secret_yaml("s", "d", &leaf, None)).unwrap();
        assert!(v["data"].get("ca.crt").is_none());

        let v: Value =
            serde_norway::from_str(&generic_secret_yaml("s-cacert", "d", &[("cacert", &ca.cert_pem())])).unwrap();
        assert_eq!(v["type"], "Opaque");
        assert_eq!(BASE64.decode(v["data"]["cacert"].as_str().unwrap()).unwrap(), ca.cert_pem().as_bytes());
    }

    #[test]
    fn writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = TestCa::new("ca").issue_server(&["x"]);
        let (c, k) = leaf.write_files(dir.path().join("sub")).unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), leaf.cert_pem);
        assert_eq!(std::fs::read_to_string(&k).unwrap(), leaf.key_pem);
        assert_eq!(c.file_name().unwrap(), "tls.crt");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
