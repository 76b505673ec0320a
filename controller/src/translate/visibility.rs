//! `exportTo` on VirtualServices, DestinationRules and ServiceEntries: which namespaces see a
//! resource. The gateway is a consumer in its own namespace (`--namespace`, the namespace its
//! pod would run in), whatever namespace its Gateway resources live in.
//!
//! Entries are `.` (the resource's own namespace), `*` (all), namespace names, and for a
//! ServiceEntry only `~` (none). No entries means all: Istio's mesh default, which meshgate
//! cannot change (there is no MeshConfig `defaultServiceExportTo` and friends).

use crate::diagnostics::{codes, Diagnostic};
use std::collections::HashSet;

/// Istio's mesh root namespace (MeshConfig `rootNamespace`, default `istio-system`).
/// DestinationRules there are the last place a rule for a host is looked up.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// What an `exportTo` list may hold besides `.`, `*` and namespace names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// VirtualService, DestinationRule.
    Namespaces,
    /// ServiceEntry: also `~` (visible to no namespace), as the only entry.
    NamespacesOrNone,
    /// DestinationRule with a `workloadSelector`: only its own namespace.
    OwnNamespace,
}

/// Checks `exportTo` as Istio's admission validation does. Errors point at
/// `spec.exportTo[i]` for one entry and at `spec.exportTo` for a bad combination; any error
/// rejects the resource, as the webhook would.
pub fn check(export_to: &[String], namespace: &str, allowed: Allowed, problems: &mut Vec<Diagnostic>) {
    let field = |i: usize| format!("spec.exportTo[{i}]");
    // `.` counts as the namespace's name, so `[".", "<own namespace>"]` is a duplicate.
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, entry) in export_to.iter().enumerate() {
        let key = if entry == "." { namespace } else { entry.as_str() };
        if seen.contains(key) {
            let message = if key != entry {
                format!("duplicate entries: \".\" and the own namespace {namespace:?}")
            } else {
                format!("duplicate entry {entry:?}")
            };
            problems.push(Diagnostic::error(codes::SCHEMA, field(i), message));
            continue;
        }
        let valid = match key {
            "*" | "." => true,
            "~" => {
                if allowed != Allowed::NamespacesOrNone {
                    problems.push(Diagnostic::error(
                        codes::SCHEMA,
                        field(i),
                        "\"~\" (export to no namespace) is only allowed on a ServiceEntry",
                    ));
                }
                allowed == Allowed::NamespacesOrNone
            }
            name if is_dns1123_label(name) => true,
            name => {
                problems.push(Diagnostic::error(
                    codes::SCHEMA,
                    field(i),
                    format!("{name:?} is not \".\", \"*\" or a namespace name (a DNS-1123 label)"),
                ));
                false
            }
        };
        if valid {
            seen.insert(key);
        }
    }
    if allowed == Allowed::OwnNamespace && !seen.is_empty() {
        // A rule for selected workloads applies in its namespace only.
        let message = if !seen.contains(namespace) {
            "a DestinationRule with a workloadSelector cannot be exported beyond its own namespace"
        } else if seen.len() > 1 {
            "a DestinationRule with a workloadSelector can have only its own namespace in exportTo"
        } else {
            ""
        };
        if !message.is_empty() {
            problems.push(Diagnostic::error(codes::SCHEMA, "spec.exportTo", message));
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            "spec.exportTo",
            "\"*\" (all namespaces) cannot be combined with other entries",
        ));
    }
    if seen.contains("~") && export_to.len() > 1 {
        problems.push(Diagnostic::error(
            codes::SCHEMA,
            "spec.exportTo",
            "\"~\" (no namespace) cannot be combined with other entries",
        ));
    }
}

/// Whether a VirtualService or ServiceEntry in `owner` with `export_to` is visible to a
/// consumer in `consumer`.
pub fn visible(export_to: &[String], owner: &str, consumer: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == consumer || (e == "." && owner == consumer))
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`, at most 63 characters: a Kubernetes namespace name.
fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && b.iter().all(|c| alnum(c) || *c == b'-') && alnum(&b[0]) && alnum(&b[b.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(list: &[&str], allowed: Allowed) -> Vec<String> {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        let mut problems = Vec::new();
        check(&list, "ns5", allowed, &mut problems);
        assert!(problems.iter().all(Diagnostic::is_error));
        problems.into_iter().map(|d| d.field).collect()
    }

    /// The cases of Istio's `Test_validateExportTo`.
    #[test]
    fn export_to_validation_follows_istio() {
        // A VirtualService or DestinationRule, a ServiceEntry, a DestinationRule with a selector.
        let (plain, entry, selector) = (Allowed::Namespaces, Allowed::NamespacesOrNone, Allowed::OwnNamespace);
        assert!(errors(&[], plain).is_empty());
        assert!(errors(&["*"], plain).is_empty());
        assert!(errors(&[".", "ns1"], plain).is_empty());
        assert!(errors(&["ns1", "ns2", "ns5"], plain).is_empty());
        assert!(errors(&["~"], entry).is_empty());
        assert_eq!(errors(&["~"], plain), ["spec.exportTo[0]"]);
        assert_eq!(errors(&["~", "ns1"], plain), ["spec.exportTo[0]"]);
        assert_eq!(errors(&[".", "*"], plain), ["spec.exportTo"]);
        assert_eq!(errors(&["*", "ns1"], plain), ["spec.exportTo"]);
        assert_eq!(errors(&[".", "ns5"], plain), ["spec.exportTo[1]"]);
        assert_eq!(errors(&["ns1", "ns2", "ns1"], plain), ["spec.exportTo[2]"]);
        assert_eq!(errors(&["~", "~", "ns1"], entry), ["spec.exportTo[1]", "spec.exportTo"]);
        assert_eq!(errors(&["ns1_"], plain), ["spec.exportTo[0]"]);
        assert_eq!(errors(&["~", "ns1"], entry), ["spec.exportTo"]);
        assert_eq!(errors(&["*"], selector), ["spec.exportTo"]);
        assert!(errors(&["."], selector).is_empty());
        assert_eq!(errors(&["somens"], selector), ["spec.exportTo"]);
        assert_eq!(errors(&[".", "somens"], selector), ["spec.exportTo"]);
    }

    #[test]
    fn visibility_by_consumer_namespace() {
        let v = |list: &[&str], owner: &str| {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            visible(&list, owner, "istio-system")
        };
        assert!(v(&[], "default"));
        assert!(v(&["*"], "default"));
        assert!(v(&["istio-system"], "default"));
        assert!(v(&["."], "istio-system"));
        assert!(!v(&["."], "default"));
        assert!(!v(&["other"], "default"));
        assert!(!v(&["~"], "istio-system"));
    }
}
