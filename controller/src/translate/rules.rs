//! DestinationRules as the gateway sees them: merged per host and looked up by namespace as
//! istiod does for a proxy in the gateway's namespace.
//!
//! ```text
//!  rules (valid, oldest first)
//!    ├─► local scope:  rules in the gateway's namespace visible to it; when that namespace
//!    │                 is the root namespace, only its rules private to it
//!    └─► exported[ns]: each namespace's rules exported beyond it (not `.`-only)
//!  lookup for a host: local ─► exported[service namespace] ─► exported[root namespace]
//!                     each scope: exact host, else most specific wildcard; first hit wins
//! ```
//!
//! Within a scope, rules for one host are merged when their `exportTo` lists are equal (or a
//! later one's list contains a non-empty earlier one's): the later rule adds subsets of new
//! names and its top-level `trafficPolicy` only when the merged rule has none yet. Rules that
//! cannot merge stay apart, and the gateway uses the last of those exported to it. Every part
//! Istio drops this way is reported (MG0007) on the rule that loses it. A rule with a
//! `workloadSelector` applies, as in Istio, only to workloads of its own namespace whose labels
//! match: it is left out unless it is in the gateway's namespace and selects the gateway's
//! labels; one that selects the gateway merges as one without a selector.

use super::clusters::check_policy;
use super::visibility::{self, Allowed, ROOT_NAMESPACE};
use crate::diagnostics::{codes, Diagnostic, ObjectRef};
use crate::schema::istio::{DestinationRuleSpec, Subset};
use crate::schema::{CompactString, Kind};
use crate::store::{Resource, Store};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Whether a rule can apply to this gateway: one without `workloadSelector` can; one with it
/// only in the gateway's own namespace and when every `matchLabels` entry is among the
/// gateway's labels (Istio applies such a rule to the matching workloads of its namespace).
fn applies_to_gateway(dr: &Resource<DestinationRuleSpec>, consumer: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = &dr.spec.workload_selector else { return true };
    if dr.namespace() != consumer {
        return false;
    }
    let wanted = selector.get("matchLabels").and_then(|m| m.as_object());
    wanted.is_none_or(|m| m.iter().all(|(k, v)| v.as_str().is_some_and(|v| labels.get(k).is_some_and(|l| l == v))))
}

/// One rule as the gateway applies it: a DestinationRule, or several merged.
#[derive(Debug)]
pub struct Rule {
    /// The first rule's spec with the subsets later rules added (and their top-level policy
    /// when the first had none). The rule's own shared spec when nothing was merged.
    pub spec: Arc<DestinationRuleSpec>,
    /// `namespace/name` of the rules merged, oldest first.
    names: Box<[CompactString]>,
    /// Index in `names` of the rule whose top-level `trafficPolicy` is kept.
    policy_from: usize,
    /// Index in `names` of the rule each of `spec.subsets` came from.
    subset_from: Box<[usize]>,
}

impl Rule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.spec.subsets.iter().find(|s| s.name == name)
    }

    /// `namespace/name` of the rule a setting came from: the one that defined `subset` when the
    /// setting is the subset's, else the one whose top-level policy is kept.
    pub fn source(&self, subset: Option<&str>) -> &str {
        let from = subset
            .and_then(|name| self.spec.subsets.iter().position(|s| s.name == name))
            .map_or(self.policy_from, |i| self.subset_from[i]);
        &self.names[from]
    }
}

/// The rules this gateway uses, by the namespace they are looked up in.
pub struct Rules {
    local: Scope,
    exported: foldhash::HashMap<CompactString, Scope>,
}

/// One namespace's rules for the gateway, by resolved host.
#[derive(Default)]
struct Scope {
    /// `None`: the namespace has rules for the host, but none exported to the gateway. The
    /// lookup then goes on to the next namespace (it does not try a less specific host here).
    by_host: foldhash::HashMap<String, Option<Arc<Rule>>>,
    /// The `*` and `*.suffix` hosts of `by_host`, longest first.
    wildcards: Vec<String>,
}

impl Scope {
    /// `None`: no rule names the host here; `Some(None)`: rules do, none for this gateway.
    fn lookup(&self, host: &str) -> Option<Option<&Arc<Rule>>> {
        if let Some(rule) = self.by_host.get(host) {
            return Some(rule.as_ref());
        }
        let pattern = self.wildcards.iter().find(|pattern| super::hosts::covers(pattern, host))?;
        self.by_host.get(pattern).map(Option::as_ref)
    }
}

impl Rules {
    /// Checks every DestinationRule (invalid ones are reported and left out), then merges and
    /// indexes the valid ones for a gateway in `consumer` (the `--namespace`).
    pub fn build(
        store: &Store,
        consumer: &str,
        labels: &BTreeMap<String, String>,
        problems: &mut Vec<Diagnostic>,
    ) -> Rules {
        let mut valid: Vec<&Resource<DestinationRuleSpec>> = Vec::new();
        for dr in store.destination_rules.values() {
            let mut local = Vec::new();
            check(dr, &mut local);
            let rejected = local.iter().any(Diagnostic::is_error);
            problems.extend(local.into_iter().map(|d| d.at(&dr.origin, Some(dr.reference(Kind::DestinationRule)))));
            if !rejected && applies_to_gateway(dr, consumer, labels) {
                valid.push(dr);
            }
        }

        // Oldest first: the first rule's policy wins a merge, as in Istio.
        let mut local: Bucket = BTreeMap::new();
        // Ordered maps: the merge warnings come out in the same order every time.
        let mut exported: BTreeMap<&str, Bucket> = BTreeMap::new();
        for dr in crate::store::in_order(valid) {
            let ns = dr.namespace();
            let host = super::hosts::resolve_short_name(&dr.spec.host, ns);
            let mut export_to: Vec<&str> = dr.spec.export_to.iter().map(String::as_str).collect();
            export_to.sort_unstable();
            // Written values, not resolved ones: `.` and the own namespace's name are different
            // lists for merging, as in Istio.
            let own_only = export_to.len() == 1 && (export_to[0] == "." || export_to[0] == ns);
            if consumer != ROOT_NAMESPACE {
                let seen_by_own = export_to.is_empty() || export_to.iter().any(|e| *e == "*" || *e == "." || *e == ns);
                if ns == consumer && seen_by_own {
                    merge(&mut local, &host, dr, &export_to);
                }
            } else if ns == ROOT_NAMESPACE && own_only {
                // A gateway in the root namespace looks at the root namespace's private rules
                // first, and at its other rules only after the service's namespace: catch-all
                // rules there must not shadow the services' own rules.
                merge(&mut local, &host, dr, &export_to);
            }
            if !own_only {
                merge(exported.entry(ns).or_default(), &host, dr, &export_to);
            }
        }

        let mut reported = Reported::default();
        let local = finish(local, None, &mut reported);
        let exported = exported
            .into_iter()
            .map(|(ns, bucket)| (CompactString::from(ns), finish(bucket, Some(consumer), &mut reported)))
            .collect();
        problems.extend(reported.list);
        Rules { local, exported }
    }

    /// The rule for a destination host: the gateway's namespace first, then the namespace of
    /// the service that defines the host (`None` for an unknown host), then the root namespace.
    pub fn for_host(&self, host: &str, service_namespace: Option<&str>) -> Option<&Rule> {
        let scopes = [
            Some(&self.local),
            service_namespace.and_then(|ns| self.exported.get(ns)),
            self.exported.get(ROOT_NAMESPACE),
        ];
        scopes.into_iter().flatten().find_map(|scope| scope.lookup(host).flatten()).map(|r| &**r)
    }
}

/// A rule's own checks: policies, `exportTo`, subset names.
fn check(dr: &Resource<DestinationRuleSpec>, problems: &mut Vec<Diagnostic>) {
    check_policy(dr.spec.traffic_policy.as_deref(), || "spec.trafficPolicy".to_string(), problems);
    for (i, s) in dr.spec.subsets.iter().enumerate() {
        let field = || format!("spec.subsets[{i}].trafficPolicy");
        check_policy(s.traffic_policy.as_deref(), field, problems);
        if dr.spec.subsets[..i].iter().any(|earlier| earlier.name == s.name) {
            problems.push(Diagnostic::error(
                codes::SCHEMA,
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset name {:?}", s.name),
            ));
        }
    }
    let allowed = if dr.spec.workload_selector.is_some() { Allowed::OwnNamespace } else { Allowed::Namespaces };
    visibility::check(&dr.spec.export_to, dr.namespace(), allowed, problems);
}

/// Rules for one namespace (or the local scope) by resolved host, each host's list in
/// Istio's order.
type Bucket<'a> = BTreeMap<String, Vec<Merging<'a>>>;

/// A rule being merged (Istio's "consolidated" rule).
struct Merging<'a> {
    /// As written, sorted.
    export_to: Vec<&'a str>,
    /// Oldest first; the first gives the spec.
    members: Vec<&'a Resource<DestinationRuleSpec>>,
    /// A copy of the first's spec once another rule merged into it.
    spec: Option<DestinationRuleSpec>,
    policy_from: usize,
    subset_from: Vec<usize>,
    /// What the merges dropped: (member, its warning).
    dropped: Vec<(usize, Diagnostic)>,
}

fn merge<'a>(bucket: &mut Bucket<'a>, host: &str, dr: &'a Resource<DestinationRuleSpec>, export_to: &[&'a str]) {
    let list = bucket.entry(host.to_string()).or_default();
    // Istio's rule, kept with its quirk: the last rule of the list decides whether `dr` also
    // stands alone, so a rule may be merged into one and listed on its own too.
    let mut alone = true;
    for m in list.iter_mut() {
        let same = m.export_to == export_to;
        let wider = !m.export_to.is_empty() && m.export_to.iter().all(|e| export_to.contains(e));
        alone = !(same || wider);
        if !alone {
            m.absorb(dr, host);
        }
    }
    if alone {
        list.push(Merging {
            export_to: export_to.to_vec(),
            members: vec![dr],
            spec: None,
            policy_from: 0,
            subset_from: vec![0; dr.spec.subsets.len()],
            dropped: Vec::new(),
        });
    }
}

impl<'a> Merging<'a> {
    /// Adds a later rule's new subsets, and its top-level policy when there is none yet.
    fn absorb(&mut self, dr: &'a Resource<DestinationRuleSpec>, host: &str) {
        let first = self.members[0];
        let spec = self.spec.get_or_insert_with(|| (*first.spec).clone());
        let member = self.members.len();
        self.members.push(dr);
        for (i, subset) in dr.spec.subsets.iter().enumerate() {
            match spec.subsets.iter().position(|s| s.name == subset.name) {
                Some(j) => {
                    let owner = self.members[self.subset_from[j]];
                    self.dropped.push((
                        member,
                        Diagnostic::warning(
                            codes::MERGE,
                            format!("spec.subsets[{i}]"),
                            format!(
                                "subset {:?} of host {host:?} is already defined by DestinationRule {}/{}; this definition is ignored (Istio merges the rules for a host and keeps the oldest subset of a name)",
                                subset.name,
                                owner.namespace(),
                                owner.meta.name
                            ),
                        ),
                    ));
                }
                None => {
                    spec.subsets.push(subset.clone());
                    self.subset_from.push(member);
                }
            }
        }
        match (&spec.traffic_policy, &dr.spec.traffic_policy) {
            (None, Some(policy)) => {
                spec.traffic_policy = Some(policy.clone());
                self.policy_from = member;
            }
            (Some(_), Some(_)) => {
                let owner = self.members[self.policy_from];
                self.dropped.push((
                    member,
                    Diagnostic::warning(
                        codes::MERGE,
                        "spec.trafficPolicy",
                        format!(
                            "ignored: DestinationRule {}/{}, older, sets the top-level trafficPolicy for host {host:?} (Istio merges the rules for a host and keeps the first top-level policy)",
                            owner.namespace(),
                            owner.meta.name
                        ),
                    ),
                ));
            }
            _ => {}
        }
    }

    fn name(&self, member: usize) -> CompactString {
        let r = self.members[member];
        compact_str::format_compact!("{}/{}", r.namespace(), r.meta.name)
    }

    fn into_rule(self) -> Rule {
        let names = (0..self.members.len()).map(|i| self.name(i)).collect();
        let spec = match self.spec {
            Some(spec) => Arc::new(spec),
            None => self.members[0].spec.clone(),
        };
        Rule { spec, names, policy_from: self.policy_from, subset_from: self.subset_from.into_boxed_slice() }
    }
}

/// Warnings about merges, each once: a rule in the gateway's own namespace is merged in two
/// scopes the same way.
#[derive(Default)]
struct Reported {
    /// (rule, field, message) of each warning given.
    seen: HashSet<(ObjectRef, String, String)>,
    list: Vec<Diagnostic>,
}

impl Reported {
    fn add(&mut self, dr: &Resource<DestinationRuleSpec>, d: Diagnostic) {
        let rule = dr.reference(Kind::DestinationRule);
        if self.seen.insert((rule.clone(), d.field.clone(), d.message.clone())) {
            self.list.push(d.at(&dr.origin, Some(rule)));
        }
    }
}

/// The scope of one bucket: per host, the last merged rule exported to `consumer` (`None`:
/// no filter, for the local scope), as the gateway's lookup picks it.
fn finish(bucket: Bucket, consumer: Option<&str>, reported: &mut Reported) -> Scope {
    let mut scope = Scope::default();
    for (host, list) in bucket {
        let mut seen: Vec<Merging> = list
            .into_iter()
            .filter(|m| {
                consumer.is_none_or(|c| m.export_to.is_empty() || m.export_to.iter().any(|e| *e == "*" || *e == c))
            })
            .collect();
        let picked = seen.pop();
        if let Some(p) = &picked {
            for (member, d) in &p.dropped {
                reported.add(p.members[*member], d.clone());
            }
            // Rules exported to the gateway that stayed apart from the picked one lose whole.
            let winner = p.members[0];
            for m in &seen {
                for dr in m.members.iter().filter(|dr| !p.members.iter().any(|w| std::ptr::eq(*w, **dr))) {
                    let d = Diagnostic::warning(
                        codes::MERGE,
                        "spec.exportTo",
                        format!(
                            "not applied to host {host:?}: DestinationRule {}/{} for the same host, with a different exportTo, is applied instead (Istio merges the rules for a host only when their exportTo lists agree, and uses the last one apart)",
                            winner.namespace(),
                            winner.meta.name
                        ),
                    );
                    reported.add(dr, d);
                }
            }
        }
        if host.starts_with('*') {
            scope.wildcards.push(host.clone());
        }
        scope.by_host.insert(host, picked.map(|p| Arc::new(p.into_rule())));
    }
    scope.wildcards.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Store {
        let mut store = Store::default();
        crate::source::files::load_text(&mut store, yaml, Some(std::path::Path::new("rules.yaml")));
        assert_eq!(store.diagnostics.errors(), 0, "{:?}", store.diagnostics.items);
        store
    }

    fn rule(ns: &str, name: &str, host: &str, export_to: &str, subsets: &[&str]) -> String {
        let subsets: Vec<String> = subsets.iter().map(|s| format!("{{name: {s}}}")).collect();
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {host}\n  exportTo: {export_to}\n  subsets: [{}]\n",
            subsets.join(", ")
        )
    }

    fn subsets(rules: &Rules, host: &str, service_namespace: &str) -> Vec<String> {
        let found = rules.for_host(host, Some(service_namespace));
        found.map(|r| r.spec.subsets.iter().map(|s| s.name.to_string()).collect()).unwrap_or_default()
    }

    /// The namespace hierarchy of Istio's `TestSetDestinationRuleWithExportTo` (its rules and
    /// expected subsets), for gateways in each namespace: own namespace, then the service's,
    /// then the root.
    #[test]
    fn lookup_follows_istio_namespace_precedence() {
        let org = "httpbin.org";
        let yaml = [
            rule("test1", "rule1", org, "[., ns1]", &["subset1", "subset2"]),
            rule("test2", "rule2", org, "[test2, ns1, test1, newns]", &["subset3", "subset4"]),
            // Istio's test has `[test1, test2, "*"]`, which its validation rejects.
            rule("test3", "rule3", org, "['*']", &["subset5", "subset6"]),
            rule("test4", "rule4-local", org, "[test4]", &["subset15", "subset16"]),
            rule("istio-system", "rule4", org, "[]", &["subset7", "subset8"]),
            rule("istio-system", "rule1", org, "[.]", &["subset9", "subset10"]),
            rule("istio-system", "rule2", "'*.org'", "[.]", &["subset11", "subset12"]),
            rule("istio-system", "rule3", "'*.app.org'", "[.]", &["subset13", "subset14"]),
            rule("test5", "rule5", "api.test.com", "[istio-system]", &["subset5-0", "subset5-1"]),
            rule("test6", "rule6", "api.test.com", "[istio-system]", &["subset6-0", "subset6-1"]),
        ]
        .concat();
        let store = store(&yaml);
        let cases: &[(&str, &str, &str, &[&str])] = &[
            ("test1", "test1", org, &["subset1", "subset2"]),
            ("test1", "test2", org, &["subset1", "subset2"]),
            ("test2", "test1", org, &["subset3", "subset4"]),
            ("newns", "test2", org, &["subset3", "subset4"]),
            ("test3", "test1", org, &["subset5", "subset6"]),
            ("test5", "test4", org, &["subset7", "subset8"]),
            ("ns1", "test1", org, &["subset1", "subset2"]),
            ("ns1", "random", org, &["subset7", "subset8"]),
            ("random", "random", org, &["subset7", "subset8"]),
            ("test3", "random", org, &["subset5", "subset6"]),
            ("istio-system", "random", org, &["subset9", "subset10"]),
            ("istio-system", "istio-system", org, &["subset9", "subset10"]),
            ("istio-system", "istio-system", "foo.app.org", &["subset13", "subset14"]),
            ("istio-system", "test5", "api.test.com", &["subset5-0", "subset5-1"]),
            ("istio-system", "test6", "api.test.com", &["subset6-0", "subset6-1"]),
            ("istio-system", "test7", "api.test.com", &[]),
        ];
        for (proxy, service, host, want) in cases {
            let mut problems = Vec::new();
            let rules = Rules::build(&store, proxy, &BTreeMap::new(), &mut problems);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(subsets(&rules, host, service), *want, "gateway in {proxy}, service in {service}, {host}");
        }
    }

    /// Istio's `TestSetDestinationRuleMerging`: two rules without exportTo merge their
    /// subsets; a third exported elsewhere stays apart.
    #[test]
    fn rules_with_equal_export_to_merge() {
        let yaml = [
            rule("test", "rule1", "httpbin.org", "[]", &["subset1", "subset2"]),
            rule("test", "rule2", "httpbin.org", "[]", &["subset3", "subset4"]),
            rule("test", "rule3", "httpbin.org", "[other]", &["subset5", "subset6"]),
        ]
        .concat();
        let store = store(&yaml);
        let mut problems = Vec::new();
        let rules = Rules::build(&store, "test", &BTreeMap::new(), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let merged = rules.for_host("httpbin.org", Some("test")).unwrap();
        assert_eq!(subsets(&rules, "httpbin.org", "test"), ["subset1", "subset2", "subset3", "subset4"]);
        assert_eq!(merged.source(Some("subset3")), "test/rule2");
        assert_eq!(merged.source(None), "test/rule1");
    }

    /// Istio keeps a rule apart from one with another exportTo, and a later rule that merges
    /// into the first can be listed on its own as well; the gateway uses the last of the list.
    #[test]
    fn rules_with_other_export_to_stay_apart_and_the_last_applies() {
        let yaml = [
            rule("default", "a", "reviews", "[istio-system]", &["v1"]),
            rule("default", "b", "reviews", "['*']", &["v2"]),
            rule("default", "c", "reviews", "[istio-system]", &["v3"]),
        ]
        .concat();
        let store = store(&yaml);
        let mut problems = Vec::new();
        let rules = Rules::build(&store, "istio-system", &BTreeMap::new(), &mut problems);
        // [a+c, b, c]: c alone is the last.
        assert_eq!(subsets(&rules, "reviews.default.svc.cluster.local", "default"), ["v3"]);
        let mut lost: Vec<_> = problems.iter().map(|d| (d.code, d.resource.as_ref().unwrap().name.as_str())).collect();
        lost.sort();
        assert_eq!(lost, [(codes::MERGE, "a"), (codes::MERGE, "b")]);
    }
}
