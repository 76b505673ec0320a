//! Reading Kubernetes/Istio YAML to decide which fake pods to run.
//!
//! Used by the `upstreams` binary so that a folder of example manifests
//! (Pods with `status.podIP` such as `127.0.0.11`, STATIC ServiceEntries) can
//! be served locally exactly where the manifests say the workloads are,
//! letting the gateway be run by hand against the same folder.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// One upstream to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub service: String,
    pub version: String,
    pub pod: Option<String>,
    pub addr: SocketAddr,
}

/// Every `*.yaml` / `*.yml` file under `paths` (files are taken as given,
/// folders are walked recursively), sorted, skipping hidden entries such as
/// the temporary files of atomic writes.
pub fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found)?;
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}

/// All objects in a multi-document YAML string, with `kind: List` expanded
/// into its `items` and empty documents dropped.
pub fn parse_objects(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let v = Value::deserialize(doc)?;
        push_object(v, &mut out);
    }
    Ok(out)
}

fn push_object(v: Value, out: &mut Vec<Value>) {
    if v.is_null() {
        return;
    }
    let is_list = v.get("kind").and_then(Value::as_str) == Some("List")
        || v.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List") && v.get("items").is_some());
    if is_list {
        if let Some(Value::Array(items)) = v.get("items") {
            for item in items.clone() {
                push_object(item, out);
            }
        }
        return;
    }
    out.push(v);
}

/// All objects in all YAML files under `paths`.
pub fn load_objects(paths: &[PathBuf]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for f in yaml_files(paths)? {
        let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        out.extend(parse_objects(&text).with_context(|| format!("parsing {}", f.display()))?);
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn port_of(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Upstreams implied by `objects`:
///
/// * each core/v1 `Pod` with an IP `status.podIP`: one per
///   `spec.containers[].ports[].containerPort`; service = label `app` (else
///   the pod name), version = label `version` (else `v1`), pod = pod name;
/// * each `networking.istio.io` `ServiceEntry` with `resolution: STATIC`: per
///   endpoint whose `address` is an IP, one per value of the endpoint's
///   `ports` map, or else per `spec.ports[]` `targetPort` (else `number`);
///   service = first host, version = endpoint label `version` (else `v1`).
///
/// Duplicate addresses are kept once (first wins): one socket cannot be two
/// servers.
pub fn upstream_specs(objects: &[Value]) -> Vec<UpstreamSpec> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut push = |spec: UpstreamSpec, out: &mut Vec<UpstreamSpec>| {
        if seen.insert(spec.addr) {
            out.push(spec);
        }
    };
    for obj in objects {
        let api = str_at(obj, &["apiVersion"]).unwrap_or("");
        let kind = str_at(obj, &["kind"]).unwrap_or("");
        if api == "v1" && kind == "Pod" {
            let Some(ip) = str_at(obj, &["status", "podIP"]).and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let name = str_at(obj, &["metadata", "name"]).unwrap_or("pod");
            let service = str_at(obj, &["metadata", "labels", "app"]).unwrap_or(name);
            let version = str_at(obj, &["metadata", "labels", "version"]).unwrap_or("v1");
            let containers = obj["spec"]["containers"].as_array().cloned().unwrap_or_default();
            for c in &containers {
                for p in c["ports"].as_array().into_iter().flatten() {
                    if let Some(port) = port_of(&p["containerPort"]) {
                        push(
                            UpstreamSpec {
                                service: service.to_string(),
                                version: version.to_string(),
                                pod: Some(name.to_string()),
                                addr: SocketAddr::new(ip, port),
                            },
                            &mut out,
                        );
                    }
                }
            }
        } else if api.starts_with("networking.istio.io/") && kind == "ServiceEntry" {
            let spec = &obj["spec"];
            if spec["resolution"].as_str() != Some("STATIC") {
                continue;
            }
            let service = spec["hosts"]
                .get(0)
                .and_then(Value::as_str)
                .or_else(|| str_at(obj, &["metadata", "name"]))
                .unwrap_or("serviceentry");
            let default_ports: Vec<u16> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| port_of(&p["targetPort"]).or_else(|| port_of(&p["number"])))
                .collect();
            for ep in spec["endpoints"].as_array().into_iter().flatten() {
                let Some(ip) = ep["address"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                    continue;
                };
                let version = ep["labels"]["version"].as_str().unwrap_or("v1");
                let ep_ports: Vec<u16> =
                    ep["ports"].as_object().map(|m| m.values().filter_map(port_of).collect()).unwrap_or_default();
                let ports = if ep_ports.is_empty() { &default_ports } else { &ep_ports };
                for port in ports {
                    push(
                        UpstreamSpec {
                            service: service.to_string(),
                            version: version.to_string(),
                            pod: None,
                            addr: SocketAddr::new(ip, *port),
                        },
                        &mut out,
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: demoapp-v1-abc
  labels: {app: demoapp, version: v1}
spec:
  containers:
  - name: demoapp
    ports:
    - containerPort: 8080
    - containerPort: 8081
status:
  podIP: 127.0.0.11
---
apiVersion: v1
kind: Pod
metadata: {name: pending}
spec:
  containers: [{name: x, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: lonely}
  spec:
    containers: [{name: x, ports: [{containerPort: 9000}]}]
  status: {podIP: 127.0.0.12}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext.example.com]
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8088}
  endpoints:
  - address: 127.0.0.21
    labels: {version: v2}
  - address: 127.0.0.22
    ports: {http: 9090}
  - address: not-an-ip.example.com
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: dns}
spec:
  hosts: [dns.example.com]
  resolution: DNS
  endpoints: [{address: 127.0.0.30}]
  ports: [{number: 80, name: http}]
---
"#;

    #[test]
    fn specs_from_manifests() {
        let objs = parse_objects(YAML).unwrap();
        assert_eq!(objs.len(), 5);
        let specs = upstream_specs(&objs);
        let got: Vec<(String, String, Option<String>, String)> =
            specs.iter().map(|s| (s.service.clone(), s.version.clone(), s.pod.clone(), s.addr.to_string())).collect();
        let p = |s: &str| Some(s.to_string());
        assert_eq!(
            got,
            vec![
                ("demoapp".into(), "v1".into(), p("demoapp-v1-abc"), "127.0.0.11:8080".into()),
                ("demoapp".into(), "v1".into(), p("demoapp-v1-abc"), "127.0.0.11:8081".into()),
                ("lonely".into(), "v1".into(), p("lonely"), "127.0.0.12:9000".into()),
                ("ext.example.com".into(), "v2".into(), None, "127.0.0.21:8088".into()),
                ("ext.example.com".into(), "v1".into(), None, "127.0.0.22:9090".into()),
            ]
        );
    }

    #[test]
    fn files_walk_skips_hidden_and_other_extensions() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("b.yaml"), "").unwrap();
        std::fs::write(d.path().join("sub/a.yml"), "").unwrap();
        std::fs::write(d.path().join(".a.yaml.x.tmp"), "").unwrap();
        std::fs::write(d.path().join(".hidden.yaml"), "").unwrap();
        std::fs::write(d.path().join("notes.txt"), "").unwrap();
        let files = yaml_files(&[d.path().to_path_buf()]).unwrap();
        let names: Vec<_> =
            files.iter().map(|f| f.strip_prefix(d.path()).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["b.yaml", "sub/a.yml"]);
        assert!(yaml_files(&[d.path().join("missing")]).is_err());
    }
}
