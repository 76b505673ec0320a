//! Status (`/healthz/ready`), Prometheus (`/stats/prometheus`) and admin (`/config_dump`,
//! `/clusters`, `/ready`) endpoints, on their own ports as istio-ingressgateway has them.

use crate::compiled::Current;
use crate::telemetry::metrics::Metrics;
use async_trait::async_trait;
use http::{Response, StatusCode};
use meshgate_model::admin::{CertificateInfo, EndpointStatus};
use meshgate_model::snapshot::Snapshot;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Status,
    Metrics,
    Admin,
}

pub(crate) struct AdminApp {
    pub(crate) role: Role,
    pub(crate) current: Arc<Current>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set once the first snapshot is compiled and its listeners are open.
    pub(crate) serving: Arc<AtomicBool>,
    pub(crate) draining: Arc<AtomicBool>,
}

impl AdminApp {
    fn endpoints(&self) -> Vec<EndpointStatus> {
        let runtime = self.current.load();
        let mut out = Vec::new();
        for c in crate::compiled::sorted(&runtime.clusters) {
            for (i, e) in c.endpoints.iter().enumerate() {
                out.push(EndpointStatus {
                    cluster: c.definition.name.to_string(),
                    address: e.addr.to_string(),
                    health: "HEALTHY".into(),
                    in_flight: c.balancer.in_flight(i),
                });
            }
        }
        out
    }

    fn ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    fn route(&self, path: &str, query: &str) -> (StatusCode, &'static str, Vec<u8>) {
        let text = "text/plain; charset=utf-8";
        let json = "application/json";
        match (self.role, path) {
            (Role::Status, "/healthz/ready") | (Role::Admin, "/ready") => {
                if self.ready() {
                    (StatusCode::OK, text, b"LIVE\n".to_vec())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, text, b"NOT READY\n".to_vec())
                }
            }
            (Role::Metrics, "/stats/prometheus") | (Role::Admin, "/stats/prometheus") => {
                (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render())
            }
            (Role::Admin, "/config_dump") => {
                let runtime = self.current.load();
                let body = serde_json::to_vec_pretty(&*runtime.snapshot).unwrap_or_default();
                (StatusCode::OK, json, body)
            }
            (Role::Admin, "/clusters") if query.split('&').any(|q| q == "format=json") => {
                (StatusCode::OK, json, serde_json::to_vec_pretty(&self.endpoints()).unwrap_or_default())
            }
            (Role::Admin, "/certs") => {
                let runtime = self.current.load();
                (StatusCode::OK, json, serde_json::to_vec_pretty(&certificates(&runtime.snapshot)).unwrap_or_default())
            }
            (Role::Admin, "/clusters") => {
                let runtime = self.current.load();
                let mut out = String::new();
                for c in crate::compiled::sorted(&runtime.clusters) {
                    let name = &c.definition.name;
                    for (i, e) in c.endpoints.iter().enumerate() {
                        out.push_str(&format!("{name}::{}::rq_active::{}\n", e.addr, c.balancer.in_flight(i)));
                    }
                }
                (StatusCode::OK, text, out.into_bytes())
            }
            _ => (StatusCode::NOT_FOUND, text, b"not found\n".to_vec()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = &session.req_header().uri;
        let (path, query) = (uri.path().to_string(), uri.query().unwrap_or("").to_string());
        let (status, content_type, body) = self.route(&path, &query);
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// Certificates of the snapshot's secrets with their validity, for `proxy-config secrets`.
fn certificates(snapshot: &Snapshot) -> Vec<CertificateInfo> {
    let mut out = Vec::new();
    for (name, secret) in &snapshot.secrets {
        let pems = [(&secret.cert_pem, "Cert Chain"), (&secret.ca_pem, "CA")];
        for (pem, kind) in pems.iter().filter_map(|(p, k)| p.as_ref().map(|p| (p, *k))) {
            // The leaf (first certificate) is what expires first and what users ask about.
            let Some(der) = crate::tls::certs(pem, name).ok().and_then(|c| c.into_iter().next()) else { continue };
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { continue };
            let validity = cert.validity();
            out.push(CertificateInfo {
                name: name.clone(),
                kind: kind.to_string(),
                serial: cert.raw_serial_as_string().replace(':', ""),
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
                valid: validity.is_valid(),
                subject_alt_names: crate::tls::san::subject_alt_names(&der),
            });
        }
    }
    out
}
