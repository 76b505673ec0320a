//! Status (`/healthz/ready`), Prometheus (`/stats/prometheus`) and admin (`/config_dump`,
//! `/clusters`, `/ready`) endpoints, on their own ports as istio-ingressgateway has them.

use crate::metrics::Metrics;
use crate::runtime::Current;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Status,
    Metrics,
    Admin,
}

pub struct AdminApp {
    pub role: Role,
    pub current: Arc<Current>,
    pub metrics: Arc<Metrics>,
    /// Set once the first snapshot is compiled and its listeners are open.
    pub serving: Arc<AtomicBool>,
    pub draining: Arc<AtomicBool>,
}

impl AdminApp {
    fn ready(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    fn route(&self, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
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
            (Role::Admin, "/clusters") => {
                let runtime = self.current.load();
                let mut names: Vec<_> = runtime.clusters.keys().collect();
                names.sort();
                let mut out = String::new();
                for name in names {
                    let c = &runtime.clusters[name];
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
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = self.route(&path);
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
