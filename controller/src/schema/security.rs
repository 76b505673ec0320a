//! `security.istio.io` kinds: AuthorizationPolicy and RequestAuthentication.
//!
//! meshgate does not enforce them yet. What it reads is what decides whether a policy applies
//! to this gateway (`selector`, `targetRef(s)`, and `action`, since AUDIT never changes access);
//! the rest (`rules`, `jwtRules`, `provider`...) is kept as written so nothing is reported as
//! an unknown field. A policy that applies makes the gateway deny rather than silently allow
//! (see `translate::policies`).

use super::Labels;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The spec shape both kinds share as far as selection goes.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    #[serde(default)]
    pub selector: Option<PolicySelector>,
    /// Istio 1.22+: attaches the policy to a Gateway API `Gateway` or a Service instead of
    /// selecting workloads by label.
    #[serde(default)]
    pub target_ref: Option<serde_json::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_json::Value>,
    /// AuthorizationPolicy only: ALLOW (default), DENY, AUDIT, CUSTOM.
    #[serde(default)]
    pub action: Option<String>,
    /// Everything meshgate does not read yet, as written.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

/// `selector.matchLabels`: the workloads (pods) a policy applies to.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelector {
    #[serde(default)]
    pub match_labels: Labels,
}
