//! TLS material for Gateway servers and DestinationRules: Kubernetes Secrets named by
//! `credentialName` (in the gateway's namespace, as Istio requires) or PEM files named by path.
//!
//! Every problem names the Secret or file and the server that wanted it. A Secret with
//! unusable content is an error *on the Secret*, so the publisher keeps its last valid version
//! serving; the server is skipped only when no usable version exists.

use crate::diagnostics::{codes, Diagnostic, ObjectRef, Origin};
use crate::schema::Kind;
use crate::snapshot::Secret;
use crate::store::{lookup, Store};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Collects the secrets the snapshot needs, keyed `kubernetes://ns/name` or `file://path`.
pub struct Credentials<'a> {
    store: &'a Store,
    namespace: String,
    pub secrets: BTreeMap<String, Secret>,
    /// Errors on Secret resources (attributed to the Secret so last-good restore applies).
    pub secret_problems: Vec<Diagnostic>,
    reported: std::collections::BTreeSet<String>,
    /// How many lookups were made: a VirtualService whose translation made none depends only
    /// on itself and the rest of the store, which `translate::Reuse` relies on.
    pub uses: usize,
}

/// What a consumer needs: certificate+key, CA, or both.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    CertAndKey,
    Ca,
}

impl<'a> Credentials<'a> {
    pub fn new(store: &'a Store, gateway_namespace: &str) -> Self {
        Credentials {
            store,
            namespace: gateway_namespace.to_string(),
            secrets: BTreeMap::new(),
            secret_problems: Vec::new(),
            reported: Default::default(),
            uses: 0,
        }
    }

    /// Resolves `credentialName`. Returns the key into `secrets`, or a message for the consumer.
    pub fn from_secret(&mut self, name: &str, need: Need) -> Result<String, String> {
        self.uses += 1;
        let (ns, secret_name) = match name.split_once('/') {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (self.namespace.clone(), name.to_string()),
        };
        let key = format!("kubernetes://{ns}/{secret_name}");
        let Some(res) = lookup(&self.store.secrets, &ns, &secret_name) else {
            return Err(format!("Secret {ns}/{secret_name} not found (credentialName must name a Secret in the gateway namespace {ns:?})"));
        };
        let data = secret_data(&res.spec);
        let pick = |names: &[&str]| names.iter().find_map(|n| data.get(*n).cloned());
        let mut secret = Secret {
            cert_pem: pick(&["tls.crt", "cert"]),
            key_pem: pick(&["tls.key", "key"]),
            ca_pem: pick(&["ca.crt", "cacert"]),
        };
        if secret.ca_pem.is_none() {
            // Istio's split form: the CA lives in `<name>-cacert`.
            if let Some(ca) = lookup(&self.store.secrets, &ns, &format!("{secret_name}-cacert")) {
                let d = secret_data(&ca.spec);
                secret.ca_pem = d.get("ca.crt").or_else(|| d.get("cacert")).cloned();
            }
        }
        let reference = ObjectRef::new(Kind::Secret, &ns, &secret_name);
        let warnings = match validate(&secret, need) {
            Ok(warnings) => warnings,
            Err((field, why)) => {
                if self.reported.insert(key.clone()) {
                    self.secret_problems.push(
                        Diagnostic::error(codes::SCHEMA, format!("data.{field}"), why.clone())
                            .at(&res.origin, Some(reference)),
                    );
                }
                return Err(format!("Secret {ns}/{secret_name} is unusable: {why}"));
            }
        };
        if self.reported.insert(key.clone()) {
            for (field, why) in warnings {
                self.secret_problems.push(
                    Diagnostic::warning(codes::CERTIFICATE, format!("data.{field}"), why)
                        .at(&res.origin, Some(reference.clone())),
                );
            }
        }
        self.secrets.insert(key.clone(), secret);
        Ok(key)
    }

    /// Whether a resolved secret carries a CA (for client certificate verification).
    pub fn secret_has_ca(&self, key: &str) -> bool {
        self.secrets.get(key).is_some_and(|s| s.ca_pem.is_some())
    }

    /// Resolves PEM file paths (certificate+key and/or CA). Returns the key into `secrets`.
    pub fn from_files(
        &mut self,
        cert: Option<&str>,
        key: Option<&str>,
        ca: Option<&str>,
        need: Need,
    ) -> Result<String, String> {
        self.uses += 1;
        let read = |p: Option<&str>| -> Result<Option<String>, String> {
            let Some(p) = p.filter(|p| !p.is_empty()) else { return Ok(None) };
            match self.store.files.get(&PathBuf::from(p)) {
                Some(Ok(text)) => Ok(Some(text.clone())),
                Some(Err(e)) => Err(format!("cannot read {p}: {e}")),
                None => Err(format!("cannot read {p}: not loaded")),
            }
        };
        let secret = Secret { cert_pem: read(cert)?, key_pem: read(key)?, ca_pem: read(ca)? };
        let warnings = validate(&secret, need).map_err(|(field, why)| format!("{field}: {why}"))?;
        let name = [cert, key, ca].iter().flatten().copied().collect::<Vec<_>>().join(",");
        let key = format!("file://{name}");
        if self.reported.insert(key.clone()) {
            for (field, why) in warnings {
                let file = if field == "ca.crt" { ca } else { cert };
                let origin =
                    Origin { file: file.map(|f| std::sync::Arc::from(std::path::Path::new(f))), document: None };
                self.secret_problems.push(Diagnostic::warning(codes::CERTIFICATE, "", why).at(&origin, None));
            }
        }
        self.secrets.insert(key.clone(), secret);
        Ok(key)
    }
}

/// `data` (base64-decoded by k8s-openapi) and `stringData`, as UTF-8 text.
fn secret_data(secret: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(text) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), text);
        }
    }
    for (k, v) in secret.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// A problem that leaves the material usable: the field it is about, and why.
type Warning = (&'static str, String);

/// Checks that the PEM parts a consumer needs are present and parse as X.509 (any version:
/// Envoy serves v1 certificates, and Istio's own tasks make them). Certificates outside their
/// validity dates are still usable, as in Envoy, and come back as warnings.
fn validate(secret: &Secret, need: Need) -> Result<Vec<Warning>, (&'static str, String)> {
    let mut warnings = Vec::new();
    match need {
        Need::CertAndKey => {
            let cert = secret.cert_pem.as_deref().ok_or(("tls.crt", "no certificate (tls.crt or cert)".to_string()))?;
            let served = "served anyway, as Envoy does; clients will refuse it";
            warnings.extend(x509_chain("tls.crt", cert, Dates::Leaf, served)?);
            let key = secret.key_pem.as_deref().ok_or(("tls.key", "no private key (tls.key or key)".to_string()))?;
            PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| ("tls.key", format!("invalid PEM private key: {e}")))?;
        }
        Need::Ca => {}
    }
    if let Some(ca) = &secret.ca_pem {
        warnings.extend(x509_chain("ca.crt", ca, Dates::All, "still trusted, as Envoy does")?);
    } else if need == Need::Ca {
        return Err(("ca.crt", "no CA certificate (ca.crt, cacert, or a <name>-cacert Secret)".into()));
    }
    Ok(warnings)
}

/// Whose validity dates a chain's check reports: the leaf's (a served chain: the client judges
/// the rest) or every certificate's (trust anchors).
#[derive(Clone, Copy, PartialEq)]
enum Dates {
    Leaf,
    All,
}

/// Checks that every PEM certificate of `pem` is X.509 (parsed once each), and returns a
/// warning for each certificate `dates` names that is not valid now.
fn x509_chain(
    field: &'static str,
    pem: &str,
    dates: Dates,
    consequence: &str,
) -> Result<Vec<Warning>, (&'static str, String)> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (field, format!("invalid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err((field, "no PEM certificate found".into()));
    }
    let now = x509_parser::time::ASN1Time::now();
    let mut warnings = Vec::new();
    for (i, der) in certs.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| (field, format!("certificate {} of {} is not X.509: {e}", i + 1, certs.len())))?;
        if i > 0 && dates == Dates::Leaf {
            continue;
        }
        let (v, subject) = (cert.validity(), cert.subject());
        if v.not_after < now {
            warnings.push((field, format!("certificate {subject} expired at {}; {consequence}", v.not_after)));
        } else if v.not_before > now {
            warnings
                .push((field, format!("certificate {subject} is not valid before {}; {consequence}", v.not_before)));
        }
    }
    Ok(warnings)
}
