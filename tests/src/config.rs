//! Config folders and small YAML builders for Kubernetes objects.
//!
//! Istio objects (Gateway, VirtualService, DestinationRule, ...) are what the
//! suites are about, so tests write those as literal YAML where the reader can
//! see them. The Kubernetes plumbing around them (Service, Pod,
//! EndpointSlice) is noise with a lot of required fields; the builders here
//! produce it, pointing at [`Upstream`]s bound to random local ports.
//!
//! Builders serialize through `serde_norway` rather than string templates so
//! names and label values are always quoted correctly.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::upstream::Upstream;

/// A temporary config folder (removed on drop) for `gateway --config DIR`.
#[derive(Debug)]
pub struct ConfigDir {
    dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Result<Self> {
        Ok(ConfigDir { dir: tempfile::Builder::new().prefix("meshgate-e2e-").tempdir()? })
    }

    /// A config dir already holding `files` as (name, yaml) pairs.
    pub fn with_files(files: &[(&str, &str)]) -> Result<Self> {
        let d = Self::new()?;
        for (name, yaml) in files {
            d.write(name, yaml)?;
        }
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Path of file `name` inside the folder (whether or not it exists).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Atomically (over)writes `name`: the content goes to a hidden temporary
    /// file (`.NAME.*.tmp`, which a `*.yaml` watcher ignores) in the same
    /// folder, is fsynced, then renamed over the target, so a file watcher
    /// never reads half a file. `name` may contain subfolders, created as
    /// needed.
    pub fn write(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        let target = self.file(name);
        let parent = target.parent().unwrap_or(self.dir.path()).to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let base = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut tmp = tempfile::Builder::new().prefix(&format!(".{base}.")).suffix(".tmp").tempfile_in(&parent)?;
        tmp.write_all(yaml.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&target).with_context(|| format!("renaming into {}", target.display()))?;
        Ok(target)
    }

    /// Deletes `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.file(name))
            .with_context(|| format!("removing {name} from {}", self.dir.path().display()))
    }
}

/// Anything that names a backend socket: a [`SocketAddr`] or an [`Upstream`]
/// (which also supplies its pod name, if it was given one).
pub trait BackendAddr {
    fn backend_addr(&self) -> SocketAddr;
    /// Pod name to use instead of a derived one.
    fn pod_name(&self) -> Option<String> {
        None
    }
}

impl BackendAddr for SocketAddr {
    fn backend_addr(&self) -> SocketAddr {
        *self
    }
}

impl BackendAddr for Upstream {
    fn backend_addr(&self) -> SocketAddr {
        self.addr()
    }
    fn pod_name(&self) -> Option<String> {
        self.pod().map(str::to_string)
    }
}

impl BackendAddr for crate::tcp::TcpUpstream {
    fn backend_addr(&self) -> SocketAddr {
        self.addr()
    }
}

impl BackendAddr for crate::tcp::TlsTcpUpstream {
    fn backend_addr(&self) -> SocketAddr {
        self.addr()
    }
}

impl<T: BackendAddr + ?Sized> BackendAddr for &T {
    fn backend_addr(&self) -> SocketAddr {
        (**self).backend_addr()
    }
    fn pod_name(&self) -> Option<String> {
        (**self).pod_name()
    }
}

fn to_yaml(v: &Value) -> String {
    serde_norway::to_string(v).expect("JSON value serializes to YAML")
}

fn labels_map(labels: &[(&str, &str)]) -> Map<String, Value> {
    labels.iter().map(|(k, v)| (k.to_string(), Value::String(v.to_string()))).collect()
}

/// Joins YAML documents into one multi-document string.
pub fn docs<S: AsRef<str>>(documents: &[S]) -> String {
    let mut out = String::new();
    for d in documents {
        let d = d.as_ref().trim_start_matches("---\n");
        out.push_str("---\n");
        out.push_str(d);
        if !d.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// A core/v1 `Namespace`.
pub fn namespace(name: &str) -> String {
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name},
    }))
}

/// A core/v1 ClusterIP `Service` with one unnamed TCP port and selector
/// `app: NAME`.
pub fn service(name: &str, ns: &str, port: u16, target_port: u16) -> String {
    service_ports(name, ns, &[(None, port, target_port)])
}

/// Like [`service`] with a named port (`http`, `grpc-web`, ...).
pub fn service_named(name: &str, ns: &str, port_name: &str, port: u16, target_port: u16) -> String {
    service_ports(name, ns, &[(Some(port_name), port, target_port)])
}

/// A `Service` with several ports: (name, port, targetPort).
pub fn service_ports(name: &str, ns: &str, ports: &[(Option<&str>, u16, u16)]) -> String {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(pn, port, target)| {
            let mut p = json!({"port": port, "targetPort": target, "protocol": "TCP"});
            if let Some(pn) = pn {
                p["name"] = json!(pn);
            }
            p
        })
        .collect();
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"type": "ClusterIP", "selector": {"app": name}, "ports": ports},
    }))
}

/// A Running, Ready core/v1 `Pod` with `status.podIP` = `ip` and one
/// container exposing `port`. The `upstreams` binary reads these back.
pub fn pod(name: &str, ns: &str, ip: std::net::IpAddr, port: u16, labels: &[(&str, &str)]) -> String {
    let app = labels.iter().find(|(k, _)| *k == "app").map(|(_, v)| *v).unwrap_or(name);
    to_yaml(&json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels_map(labels)},
        "spec": {"containers": [{
            "name": app,
            "image": "meshgate/e2e-upstream",
            "ports": [{"containerPort": port, "protocol": "TCP"}],
        }]},
        "status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
}

/// A discovery.k8s.io/v1 `EndpointSlice` for `service` with one ready
/// endpoint at `ip:port` referring to Pod `pod_name`. An unnamed port is
/// written as `name: ""`, which is what a real cluster's EndpointSlice
/// controller produces for an unnamed Service port.
pub fn endpoint_slice(
    slice_name: &str,
    service: &str,
    ns: &str,
    port_name: Option<&str>,
    addr: SocketAddr,
    pod_name: &str,
) -> String {
    to_yaml(&json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name,
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": if addr.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": ns},
        }],
        "ports": [{"name": port_name.unwrap_or(""), "port": addr.port(), "protocol": "TCP"}],
    }))
}

/// Kubernetes-name-safe fragment of an address: `127-0-0-1-34567`.
fn addr_slug(addr: SocketAddr) -> String {
    format!("{}-{}", addr.ip(), addr.port()).replace(['.', ':'], "-").trim_matches('-').to_string()
}

/// For each backend, a `Pod` plus an `EndpointSlice` of `service`, as one
/// multi-document YAML string. Each backend gets its own slice because each
/// upstream listens on its own random port, and an EndpointSlice has one
/// port list for all its endpoints.
///
/// Pod labels are `app: SERVICE` plus `labels` (which may override `app`).
/// The pod name is the backend's own ([`Upstream`] built with `.pod(..)`),
/// else `SERVICE-VERSION-IP-PORT` (VERSION from the `version` label, or
/// `pod`).
///
/// ```ignore
/// cfg.write("reviews-ep.yaml", &endpoints_for("reviews", "default", Some("http"), &[
///     (&v1, &[("version", "v1")]),
///     (&v2, &[("version", "v2")]),
/// ]))?;
/// ```
pub fn endpoints_for<A: BackendAddr>(
    service: &str,
    ns: &str,
    port_name: Option<&str>,
    backends: &[(A, &[(&str, &str)])],
) -> String {
    let mut out = Vec::new();
    for (backend, labels) in backends {
        let addr = backend.backend_addr();
        let version = labels.iter().find(|(k, _)| *k == "version").map(|(_, v)| *v).unwrap_or("pod");
        let pod_name = backend.pod_name().unwrap_or_else(|| format!("{service}-{version}-{}", addr_slug(addr)));
        let mut all_labels: Vec<(&str, &str)> = vec![("app", service)];
        for l in labels.iter() {
            all_labels.retain(|(k, _)| *k != l.0);
            all_labels.push(*l);
        }
        out.push(pod(&pod_name, ns, addr.ip(), addr.port(), &all_labels));
        out.push(endpoint_slice(&format!("{service}-{}", addr_slug(addr)), service, ns, port_name, addr, &pod_name));
    }
    docs(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(s: &str) -> Vec<Value> {
        use serde::Deserialize;
        serde_norway::Deserializer::from_str(s)
            .map(|d| Value::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    }

    #[test]
    fn service_yaml() {
        let v = parse_all(&service("reviews", "default", 9080, 8080));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["kind"], "Service");
        assert_eq!(v[0]["spec"]["ports"][0]["port"], 9080);
        assert_eq!(v[0]["spec"]["ports"][0]["targetPort"], 8080);
        assert!(v[0]["spec"]["ports"][0].get("name").is_none());
        let v = parse_all(&service_named("reviews", "default", "http", 9080, 8080));
        assert_eq!(v[0]["spec"]["ports"][0]["name"], "http");
    }

    #[test]
    fn endpoints_yaml() {
        let a: SocketAddr = "127.0.0.1:34567".parse().unwrap();
        let b: SocketAddr = "127.0.0.12:8080".parse().unwrap();
        // Label slices of different lengths must type-check in one array.
        let y = endpoints_for(
            "reviews",
            "bookinfo",
            Some("http"),
            &[(a, &[("version", "v1")]), (b, &[("version", "v2"), ("app", "reviews-alt"), ("tier", "x")])],
        );
        let v = parse_all(&y);
        assert_eq!(v.len(), 4);
        let pod = &v[0];
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["metadata"]["name"], "reviews-v1-127-0-0-1-34567");
        assert_eq!(pod["metadata"]["labels"]["app"], "reviews");
        assert_eq!(pod["status"]["podIP"], "127.0.0.1");
        assert_eq!(pod["spec"]["containers"][0]["ports"][0]["containerPort"], 34567);
        let slice = &v[1];
        assert_eq!(slice["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "reviews");
        assert_eq!(slice["addressType"], "IPv4");
        assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
        assert_eq!(slice["endpoints"][0]["targetRef"]["name"], "reviews-v1-127-0-0-1-34567");
        assert_eq!(slice["ports"][0]["name"], "http");
        assert_eq!(slice["ports"][0]["port"], 34567);
        assert_eq!(v[2]["metadata"]["labels"]["app"], "reviews-alt");
        assert_eq!(v[2]["metadata"]["labels"]["tier"], "x");
        assert_ne!(v[1]["metadata"]["name"], v[3]["metadata"]["name"]);

        let unnamed = parse_all(&endpoints_for::<SocketAddr>("r", "d", None, &[(a, &[])]));
        assert_eq!(unnamed[1]["ports"][0]["name"], "");
    }

    #[test]
    fn atomic_write_and_remove() {
        let d = ConfigDir::new().unwrap();
        d.write("a.yaml", "x: 1\n").unwrap();
        d.write("a.yaml", "x: 2\n").unwrap();
        d.write("sub/b.yaml", "y: 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(d.file("a.yaml")).unwrap(), "x: 2\n");
        assert!(d.file("sub/b.yaml").is_file());
        // No temporary files left behind.
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        d.remove("a.yaml").unwrap();
        assert!(!d.file("a.yaml").exists());
        assert!(d.remove("a.yaml").is_err());
    }

    #[test]
    fn docs_joins() {
        let s = docs(&["a: 1", "---\nb: 2\n"]);
        assert_eq!(s, "---\na: 1\n---\nb: 2\n");
        assert_eq!(parse_all(&s).len(), 2);
    }
}
