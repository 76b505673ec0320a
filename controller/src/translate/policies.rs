//! `security.istio.io` policies that apply to this gateway and that meshgate cannot enforce
//! yet (AuthorizationPolicy, RequestAuthentication).
//!
//! Ignoring them would fail open: an IP allow-list or a "JWT required" policy moved from
//! istio-ingressgateway would silently stop protecting anything. So each one that selects this
//! gateway is an error diagnostic and is listed in the snapshot; the gateway then denies every
//! request (403 `RBAC: access denied`) unless its operator chose `--unenforced-policy allow`.
//!
//! Which policies apply follows Istio's workload selection: a policy in the gateway's own
//! namespace or in the root namespace, with a `selector` whose labels are all among the
//! instance's labels, or with no selector (the whole namespace; the whole mesh in the root
//! namespace). A policy attached with `targetRef(s)` applies to a Gateway API Gateway or a
//! Service, neither of which is this gateway. An AUDIT policy never changes access, so it is
//! only a warning.

use crate::diagnostics::{codes, Diagnostic};
use crate::schema::security::PolicySpec;
use crate::schema::Kind;
use crate::snapshot::UnenforcedPolicy;
use crate::store::{in_order, Objects, Resource, Store};
use crate::translate::Options;

/// Istio's default root namespace (meshConfig.rootNamespace).
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The policies that select this gateway, in creation order, with a diagnostic for each.
pub fn unenforced(store: &Store, options: &Options, problems: &mut Vec<Diagnostic>) -> Vec<UnenforcedPolicy> {
    let mut out = Vec::new();
    for (kind, objects) in [
        (Kind::AuthorizationPolicy, &store.authorization_policies),
        (Kind::RequestAuthentication, &store.request_authentications),
    ] {
        collect(kind, objects, options, problems, &mut out);
    }
    out
}

fn collect(
    kind: Kind,
    objects: &Objects<PolicySpec>,
    options: &Options,
    problems: &mut Vec<Diagnostic>,
    out: &mut Vec<UnenforcedPolicy>,
) {
    for policy in in_order(objects.values()) {
        let Some(how) = selects(policy, options) else { continue };
        let audit = kind == Kind::AuthorizationPolicy
            && policy.spec.action.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("AUDIT"));
        let reference = Some(policy.reference(kind));
        if audit {
            problems.push(
                Diagnostic::warning(
                    codes::UNSUPPORTED,
                    "spec.action",
                    format!("{how}; AUDIT policies are not logged by meshgate yet (access is unchanged)"),
                )
                .at(&policy.origin, reference),
            );
            continue;
        }
        problems.push(
            Diagnostic::error(
                codes::UNENFORCED,
                if policy.spec.selector.is_some() { "spec.selector" } else { "spec" },
                format!(
                    "{how}, and meshgate does not enforce {kind} yet: every request on this gateway is denied \
                     (403 RBAC: access denied) until the policy is removed, or the gateway runs with \
                     --unenforced-policy allow"
                ),
            )
            .at(&policy.origin, reference),
        );
        out.push(UnenforcedPolicy {
            kind: kind.as_str().to_string(),
            namespace: policy.namespace().to_string(),
            name: policy.name().to_string(),
        });
    }
}

/// How the policy selects this gateway (for the message), or `None` when it does not.
fn selects(policy: &Resource<PolicySpec>, options: &Options) -> Option<String> {
    let ns = policy.namespace();
    let root = ns == ROOT_NAMESPACE;
    if ns != options.namespace && !root {
        return None;
    }
    if policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty() {
        return None;
    }
    let labels = policy.spec.selector.as_ref().map(|s| &s.match_labels).filter(|l| !l.is_empty());
    match labels {
        Some(labels) => labels
            .iter()
            .all(|(k, v)| options.labels.get(k.as_str()).is_some_and(|mine| mine == v.as_str()))
            .then(|| {
                let list: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("it selects this gateway (selector {})", list.join(","))
            }),
        None if root && ns != options.namespace => {
            Some(format!("it has no selector in the root namespace {ROOT_NAMESPACE}, so it applies mesh-wide"))
        }
        None => Some(format!("it has no selector in the gateway's namespace {ns}, so it applies to the gateway")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::files::load_text;

    fn policies(yaml: &str, options: &Options) -> (Vec<UnenforcedPolicy>, Vec<Diagnostic>) {
        let mut store = Store::default();
        load_text(&mut store, yaml, None);
        assert!(store.diagnostics.items.is_empty(), "{:?}", store.diagnostics.items);
        let mut problems = Vec::new();
        (unenforced(&store, options, &mut problems), problems)
    }

    fn names(list: &[UnenforcedPolicy]) -> Vec<String> {
        list.iter().map(|p| format!("{}/{}/{}", p.kind, p.namespace, p.name)).collect()
    }

    /// Istio's "Ingress Gateway" authorization task (IP-based allow list), verbatim.
    const INGRESS_POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: ALLOW
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4"]
"#;

    #[test]
    fn a_policy_selecting_the_gateway_is_unenforced_and_an_error() {
        let (list, problems) = policies(INGRESS_POLICY, &Options::default());
        assert_eq!(names(&list), ["AuthorizationPolicy/istio-system/ingress-policy"]);
        assert_eq!(problems.len(), 1);
        let d = &problems[0];
        assert!(d.is_error() && d.code == codes::UNENFORCED && d.field == "spec.selector", "{d:?}");
        assert!(d.message.contains("selector app=istio-ingressgateway"), "{}", d.message);
    }

    #[test]
    fn policies_for_other_workloads_or_namespaces_change_nothing() {
        let other_workload = INGRESS_POLICY.replace("app: istio-ingressgateway", "app: httpbin");
        let other_namespace = INGRESS_POLICY.replace("namespace: istio-system", "namespace: foo");
        let target_ref = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-api, namespace: istio-system}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{}]
"#;
        for yaml in [other_workload.as_str(), other_namespace.as_str(), target_ref] {
            let (list, problems) = policies(yaml, &Options::default());
            assert!(list.is_empty() && problems.is_empty(), "{yaml}: {list:?} {problems:?}");
        }
    }

    #[test]
    fn selectorless_policies_apply_mesh_wide_from_the_root_and_to_their_namespace() {
        let jwt = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt-example, namespace: istio-system}
spec:
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
"#;
        let (list, _) = policies(jwt, &Options::default());
        assert_eq!(names(&list), ["RequestAuthentication/istio-system/jwt-example"]);
        // A gateway in its own namespace: the root's policy still applies, and so does one
        // without selector in the gateway's namespace; one elsewhere does not.
        let options = Options { namespace: "gw-ns".into(), ..Options::default() };
        let own = jwt.replace("namespace: istio-system", "namespace: gw-ns");
        let elsewhere = jwt.replace("namespace: istio-system", "namespace: foo");
        assert_eq!(policies(jwt, &options).0.len(), 1);
        assert_eq!(names(&policies(&own, &options).0), ["RequestAuthentication/gw-ns/jwt-example"]);
        assert!(policies(&elsewhere, &options).0.is_empty());
    }

    #[test]
    fn audit_policies_only_warn() {
        let audit = INGRESS_POLICY.replace("action: ALLOW", "action: AUDIT");
        let (list, problems) = policies(&audit, &Options::default());
        assert!(list.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].is_error() && problems[0].code == codes::UNSUPPORTED, "{:?}", problems[0]);
    }
}
