//! Gateway servers: what each one speaks (by `port.protocol` and `tls.mode`) and its TLS
//! settings with credentials resolved.

use super::credentials::{Credentials, Need};
use crate::diagnostics::{codes, Diagnostic};
use crate::schema::istio::{Server, ServerTlsSettings};
use crate::snapshot::{Protocol, ServerTls, ServerTlsMode, TlsVersion};

/// How a server handles its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// HTTP, HTTP2, GRPC without TLS (h2c accepted too).
    PlainHttp,
    /// HTTPS (or HTTP2/GRPC with TLS): terminate, then HTTP routes.
    TerminatedHttp,
    /// TLS with SIMPLE/MUTUAL: terminate, then tcp routes.
    TerminatedTcp,
    /// TLS (or HTTPS) with PASSTHROUGH: route by SNI, tls routes.
    Passthrough,
    /// TCP and the other L4 protocols: tcp routes.
    Tcp,
}

impl ServerKind {
    /// Servers on one port must agree on this, the listener's protocol: plain HTTP,
    /// TLS-based (`Https`, told apart by SNI), or TCP.
    pub fn port_class(self) -> Protocol {
        match self {
            ServerKind::PlainHttp => Protocol::Http,
            ServerKind::TerminatedHttp | ServerKind::TerminatedTcp | ServerKind::Passthrough => Protocol::Https,
            ServerKind::Tcp => Protocol::Tcp,
        }
    }

    pub fn http_routes(self) -> bool {
        matches!(self, ServerKind::PlainHttp | ServerKind::TerminatedHttp)
    }
}

/// Classifies a server and resolves its TLS. `None` means the server is skipped (the reason
/// is in `problems`, as a warning so the Gateway's other servers still apply).
pub fn classify(
    server: &Server,
    field: &str,
    gateway: &str,
    creds: &mut Credentials,
    problems: &mut Vec<Diagnostic>,
) -> Option<(ServerKind, Option<ServerTls>)> {
    let protocol = server.port.protocol.to_ascii_uppercase();
    let tls = server.tls.as_ref();
    // A `tls` block without `mode` is PASSTHROUGH, the first value of Istio's enum.
    let mode = tls.map(|t| t.mode.as_deref().unwrap_or("PASSTHROUGH").to_ascii_uppercase());
    let mode = match (protocol.as_str(), mode) {
        // Only httpsRedirect on a plain HTTP server: no TLS mode at all.
        ("HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB", Some(m))
            if tls.is_some_and(|t| t.mode.is_none()) && m == "PASSTHROUGH" =>
        {
            None
        }
        (_, m) => m,
    };
    let skip = |problems: &mut Vec<Diagnostic>, f: &str, why: String| {
        problems.push(Diagnostic::warning(
            codes::UNSUPPORTED,
            format!("{field}.{f}"),
            format!("{why}; server ignored"),
        ));
        None
    };
    let kind = match (protocol.as_str(), mode.as_deref()) {
        ("HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB", None) => ServerKind::PlainHttp,
        ("HTTP", Some(m)) => {
            return skip(problems, "tls.mode", format!("tls.mode {m} on a plain HTTP server; use protocol HTTPS"));
        }
        ("HTTPS" | "HTTP2" | "GRPC" | "GRPC-WEB", Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) => {
            ServerKind::TerminatedHttp
        }
        ("HTTPS" | "TLS", Some("PASSTHROUGH")) => ServerKind::Passthrough,
        ("TLS", Some("SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL")) => ServerKind::TerminatedTcp,
        ("HTTPS" | "TLS", None) => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.tls"),
                format!("protocol {protocol} needs tls settings"),
            ));
            return None;
        }
        (_, Some(m @ ("AUTO_PASSTHROUGH" | "ISTIO_MUTUAL"))) => {
            return skip(
                problems,
                "tls.mode",
                format!("tls.mode {m} is not supported (it needs Istio's mesh identity)"),
            );
        }
        ("TCP" | "MONGO" | "MYSQL" | "REDIS" | "THRIFT", None) => ServerKind::Tcp,
        (p, None) => return skip(problems, "port.protocol", format!("protocol {p:?} is not supported")),
        (_, Some(m)) => {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.tls.mode"),
                format!("unknown or misplaced tls.mode {m:?} for protocol {protocol}"),
            ));
            return None;
        }
    };
    let server_tls = match (kind, tls) {
        (ServerKind::PlainHttp | ServerKind::Tcp, _) | (_, None) => None,
        (_, Some(t)) => Some(server_tls(server, t, kind, field, gateway, creds, problems)?),
    };
    Some((kind, server_tls))
}

fn server_tls(
    server: &Server,
    t: &ServerTlsSettings,
    kind: ServerKind,
    field: &str,
    gateway: &str,
    creds: &mut Credentials,
    problems: &mut Vec<Diagnostic>,
) -> Option<ServerTls> {
    // No `mode` is PASSTHROUGH here too (`classify` made the server a passthrough one).
    let mode = match t.mode.as_deref().unwrap_or("PASSTHROUGH").to_ascii_uppercase().as_str() {
        "MUTUAL" => ServerTlsMode::Mutual,
        "OPTIONAL_MUTUAL" => ServerTlsMode::OptionalMutual,
        "PASSTHROUGH" => ServerTlsMode::Passthrough,
        _ => ServerTlsMode::Simple,
    };
    let hosts: Vec<String> = server
        .hosts
        .iter()
        .map(|h| h.rsplit_once('/').map_or(h.as_str(), |(_, host)| host).to_ascii_lowercase())
        .collect();
    let server_name = format!("gateway {gateway} {field}");
    let mut out = ServerTls {
        hosts,
        mode,
        http: kind == ServerKind::TerminatedHttp,
        credentials: Vec::new(),
        client_ca: None,
        min_version: None,
        max_version: None,
        cipher_suites: Vec::new(),
        subject_alt_names: t.subject_alt_names.clone(),
        server: server_name,
    };
    if mode == ServerTlsMode::Passthrough {
        return Some(out);
    }
    let needs_ca = matches!(mode, ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual);
    let unusable = |problems: &mut Vec<Diagnostic>, f: &str, why: String| {
        problems.push(Diagnostic::warning(
            codes::NOT_FOUND,
            format!("{field}.tls.{f}"),
            format!("{why}; this server is skipped until it is fixed"),
        ));
        None
    };
    // `credentialName`, or every name of `credentialNames` (e.g. an RSA and an ECDSA
    // certificate, served by the client's signature schemes). The client CA of a MUTUAL
    // server comes from the first of them that carries one, as Istio reads it.
    let names: Vec<(String, &str)> = match t.credential_name.as_deref() {
        Some(name) => vec![("credentialName".to_string(), name)],
        None => {
            t.credential_names.iter().enumerate().map(|(i, n)| (format!("credentialNames[{i}]"), n.as_str())).collect()
        }
    };
    if !names.is_empty() {
        for (f, name) in &names {
            match creds.from_secret(name, Need::CertAndKey) {
                Ok(key) => {
                    if needs_ca && out.client_ca.is_none() && creds.secret_has_ca(&key) {
                        out.client_ca = Some(key.clone());
                    }
                    out.credentials.push(key);
                }
                Err(why) => return unusable(problems, f, why),
            }
        }
        if needs_ca && out.client_ca.is_none() {
            let name = names[0].1;
            return unusable(
                problems,
                &names[0].0,
                format!(
                    "mode {mode:?} needs a client CA: add ca.crt to Secret {name:?} or create Secret \"{name}-cacert\""
                ),
            );
        }
    } else if t.server_certificate.is_some() || t.private_key.is_some() {
        match creds.from_files(t.server_certificate.as_deref(), t.private_key.as_deref(), None, Need::CertAndKey) {
            Ok(key) => out.credentials.push(key),
            Err(why) => return unusable(problems, "serverCertificate", why),
        }
        if needs_ca {
            match t.ca_certificates.as_deref() {
                Some(ca) => match creds.from_files(None, None, Some(ca), Need::Ca) {
                    Ok(key) => out.client_ca = Some(key),
                    Err(why) => return unusable(problems, "caCertificates", why),
                },
                None => return unusable(problems, "caCertificates", format!("mode {mode:?} needs caCertificates")),
            }
        }
    } else {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            format!("{field}.tls"),
            "credentialName or serverCertificate/privateKey is required for SIMPLE and MUTUAL",
        ));
        return None;
    }
    for (f, value, slot) in [
        ("minProtocolVersion", &t.min_protocol_version, &mut out.min_version),
        ("maxProtocolVersion", &t.max_protocol_version, &mut out.max_version),
    ] {
        match value.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("TLS_AUTO") => {}
            Some("TLSV1_2") => *slot = Some(TlsVersion::V1_2),
            Some("TLSV1_3") => *slot = Some(TlsVersion::V1_3),
            Some(v @ ("TLSV1_0" | "TLSV1_1")) => problems.push(Diagnostic::warning(
                codes::UNSUPPORTED,
                format!("{field}.tls.{f}"),
                format!("{v} is not offered (the TLS library supports 1.2 and 1.3 only); using TLSV1_2"),
            )),
            Some(v) => problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("{field}.tls.{f}"),
                format!("unknown TLS version {v:?}"),
            )),
        }
    }
    for (i, suite) in t.cipher_suites.iter().enumerate() {
        match rustls_suite_name(suite) {
            Some(name) => out.cipher_suites.push(name.to_string()),
            None => problems.push(Diagnostic::warning(
                codes::UNSUPPORTED,
                format!("{field}.tls.cipherSuites[{i}]"),
                format!("cipher suite {suite:?} is not supported by rustls; ignored"),
            )),
        }
    }
    for (name, set) in [
        ("caCrl", t.ca_crl.is_some()),
        ("verifyCertificateSpki", !t.verify_certificate_spki.is_empty()),
        ("verifyCertificateHash", !t.verify_certificate_hash.is_empty()),
        ("tlsCertificates", !t.tls_certificates.is_empty()),
    ] {
        if set {
            problems.push(Diagnostic::warning(
                codes::UNSUPPORTED,
                format!("{field}.tls.{name}"),
                "not supported yet, ignored",
            ));
        }
    }
    Some(out)
}

/// Envoy/OpenSSL cipher names (as Istio documents them) → rustls suite names.
pub fn rustls_suite_name(name: &str) -> Option<&'static str> {
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" | "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        }
        "ECDHE-ECDSA-AES256-GCM-SHA384" | "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
        }
        "ECDHE-ECDSA-CHACHA20-POLY1305" | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        }
        "ECDHE-RSA-AES128-GCM-SHA256" | "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => {
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        }
        "ECDHE-RSA-AES256-GCM-SHA384" | "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => {
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        }
        "ECDHE-RSA-CHACHA20-POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
        }
        "TLS_AES_128_GCM_SHA256" => "TLS13_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384" => "TLS13_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256" => "TLS13_CHACHA20_POLY1305_SHA256",
        _ => return None,
    })
}
