//! Synthetic configurations for benchmarks and scale tests: `n` services, each with a
//! VirtualService (its own host), a DestinationRule with two subsets, a Service and two Pods;
//! one Gateway per hundred hosts. Shapes follow the bookinfo seed so costs are realistic.

use std::fmt::Write;

/// YAML for `n` services (multi-document, as a user's folder would hold).
pub fn config(n: usize) -> String {
    let mut out = String::with_capacity(n * 1400);
    for g in 0..n.div_ceil(100) {
        gateway(&mut out, g, n);
    }
    for i in 0..n {
        service(&mut out, i);
    }
    out
}

/// The same configuration as [`config`] split into files the way a config folder holds it:
/// `gateways.yaml` with every Gateway, then `svc-NNNNN.yaml` files of `per_file` services each
/// (named by their first service, zero-padded so the sorted load order is the service order).
pub fn files(n: usize, per_file: usize) -> Vec<(String, String)> {
    let per_file = per_file.max(1);
    let mut gateways = String::new();
    for g in 0..n.div_ceil(100) {
        gateway(&mut gateways, g, n);
    }
    let mut out = vec![("gateways.yaml".to_string(), gateways)];
    for first in (0..n).step_by(per_file) {
        let mut text = String::with_capacity(per_file * 1400);
        for i in first..(first + per_file).min(n) {
            service(&mut text, i);
        }
        out.push((file_name(first), text));
    }
    out
}

/// The file of [`files`] that holds service `first` when it starts a file.
pub fn file_name(first: usize) -> String {
    format!("svc-{first:06}.yaml")
}

/// Gateway `g`, serving hosts `svc-{100g..100g+99}.example.com` (fewer in the last one).
fn gateway(out: &mut String, g: usize, n: usize) {
    let hosts: Vec<String> = (g * 100..((g + 1) * 100).min(n)).map(|i| format!("\"svc-{i}.example.com\"")).collect();
    let _ = write!(
        out,
        "---\napiVersion: networking.istio.io/v1beta1\nkind: Gateway\nmetadata: {{name: gw-{g}, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 80, name: http, protocol: HTTP}}\n    hosts: [{}]\n",
        hosts.join(", ")
    );
}

/// Service `i`: Service, two Pods, DestinationRule and VirtualService.
fn service(out: &mut String, i: usize) {
    let g = i / 100;
    let a = 10 + (i / 250) % 200;
    let b = i % 250;
    let _ = write!(
        out,
        r#"---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: default}}
spec:
  selector: {{app: svc-{i}}}
  ports: [{{name: http, port: 9080, targetPort: 9080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: svc-{i}-v1, namespace: default, labels: {{app: svc-{i}, version: v1}}}}
status: {{podIP: 10.{a}.{b}.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: svc-{i}-v2, namespace: default, labels: {{app: svc-{i}, version: v2}}}}
status: {{podIP: 10.{a}.{b}.2}}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: svc-{i}, namespace: default}}
spec:
  host: svc-{i}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: svc-{i}, namespace: default}}
spec:
  hosts: ["svc-{i}.example.com"]
  gateways: ["istio-system/gw-{g}"]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]
  - match: [{{uri: {{prefix: /api/v1}}}}, {{uri: {{regex: "/items/[0-9]+"}}}}]
    route:
    - {{destination: {{host: svc-{i}, subset: v1}}, weight: 90}}
    - {{destination: {{host: svc-{i}, subset: v2}}, weight: 10}}
  - route: [{{destination: {{host: svc-{i}, subset: v1}}}}]
"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::load_text;
    use crate::store::Store;

    #[test]
    fn synthetic_config_translates_cleanly() {
        let mut store = Store::default();
        load_text(&mut store, &config(250), None);
        let (snap, diags) = crate::translate(&store, &crate::Options::default());
        assert_eq!(diags.errors() + diags.warnings(), 0, "{:?}", diags.items.first());
        assert_eq!(snap.listeners[0].virtual_hosts.len(), 250);
        assert_eq!(snap.clusters.len(), 500);
    }

    #[test]
    fn split_files_hold_the_same_config() {
        let joined: String = files(250, 7).into_iter().map(|(_, text)| text).collect();
        assert_eq!(joined, config(250));
        let names: Vec<String> = files(250, 7).into_iter().map(|(name, _)| name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "a folder load reads them in this order");
    }
}
