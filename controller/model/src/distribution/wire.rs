//! Messages exchanged between controller and gateways.

use super::delta::SnapshotDelta;
use crate::snapshot::{Secret, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One long-poll from a gateway replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The replica's name (its pod name in Kubernetes), unique among gateways.
    pub gateway: String,
    /// Namespace the replica runs in (where its `credentialName` Secrets live).
    pub namespace: String,
    /// The replica's labels; Gateways apply when their selector is a subset.
    pub labels: BTreeMap<String, String>,
    /// Version the replica holds; 0 when it has nothing yet.
    pub have: u64,
    /// Which controller process `have` came from: versions count per process, so after a
    /// controller restart (or a switch to another replica) the same number means nothing.
    #[serde(default)]
    pub instance: String,
    /// Version the replica has compiled and serves (acknowledgement for `proxy-status`).
    pub acked: u64,
    /// How long the controller may hold the request when nothing changed.
    pub wait_seconds: u64,
    /// The replica applies [`DeltaMessage`]s: when it holds one of the versions just before
    /// the current one, it gets only what changed.
    #[serde(default)]
    pub deltas: bool,
}

impl PollRequest {
    /// Gateways with equal identity receive the same snapshot.
    pub fn identity(&self) -> String {
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}/{}", self.namespace, labels.join(","))
    }
}

/// A snapshot on the wire. The snapshot's own serializer redacts private keys (so config
/// dumps never leak them); the keys travel beside it, named like `Snapshot::secrets`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMessage {
    /// The sending controller process (see [`PollRequest::instance`]).
    #[serde(default)]
    pub instance: String,
    pub snapshot: Snapshot,
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

impl SnapshotMessage {
    pub fn encode(instance: &str, snapshot: &Snapshot) -> serde_json::Result<Vec<u8>> {
        let keys = private_keys(&snapshot.secrets);
        #[derive(Serialize)]
        struct Borrowed<'a> {
            instance: &'a str,
            snapshot: &'a Snapshot,
            keys: BTreeMap<String, String>,
        }
        serde_json::to_vec(&Borrowed { instance, snapshot, keys })
    }

    /// Decodes and puts the private keys back into the snapshot's secrets.
    pub fn decode(bytes: &[u8]) -> serde_json::Result<SnapshotMessage> {
        let mut message: SnapshotMessage = serde_json::from_slice(bytes)?;
        restore_keys(&mut message.snapshot.secrets, std::mem::take(&mut message.keys));
        Ok(message)
    }
}

/// Response header of a [`DeltaMessage`]: the version it applies to.
pub const DELTA_HEADER: &str = "x-meshgate-delta";

/// What changed since the version a replica holds (sent with `x-meshgate-delta: BASE`, only
/// to replicas that asked for deltas). Private keys of the changed secrets travel beside it,
/// as in [`SnapshotMessage`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaMessage {
    pub instance: String,
    pub delta: SnapshotDelta,
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

impl DeltaMessage {
    pub fn encode(instance: &str, delta: &SnapshotDelta) -> serde_json::Result<Vec<u8>> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            instance: &'a str,
            delta: &'a SnapshotDelta,
            keys: BTreeMap<String, String>,
        }
        serde_json::to_vec(&Borrowed { instance, delta, keys: private_keys(&delta.secrets) })
    }

    /// Decodes and puts the private keys back into the changed secrets.
    pub fn decode(bytes: &[u8]) -> serde_json::Result<DeltaMessage> {
        let mut message: DeltaMessage = serde_json::from_slice(bytes)?;
        restore_keys(&mut message.delta.secrets, std::mem::take(&mut message.keys));
        Ok(message)
    }
}

fn private_keys(secrets: &BTreeMap<String, Secret>) -> BTreeMap<String, String> {
    secrets.iter().filter_map(|(name, s)| s.key_pem.as_ref().map(|k| (name.clone(), k.clone()))).collect()
}

/// Puts the keys that travelled beside the secrets back into them.
fn restore_keys(secrets: &mut BTreeMap<String, Secret>, keys: BTreeMap<String, String>) {
    for (name, secret) in secrets.iter_mut() {
        secret.key_pem = keys.get(name).cloned();
    }
}

/// Sync state of one gateway replica, as `proxy-status` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Version the replica last acknowledged.
    pub acked: u64,
    /// Version the controller serves for the replica's identity.
    pub current: u64,
    /// Seconds since the replica's last poll began or ended.
    pub last_seen_seconds: u64,
    /// A poll is open right now.
    pub connected: bool,
    pub address: String,
}

impl GatewayStatus {
    /// `SYNCED`, `STALE` (behind the controller) or `NOT CONNECTED`, in istioctl's words.
    pub fn state(&self) -> &'static str {
        if !self.connected && self.last_seen_seconds > 60 {
            "NOT CONNECTED"
        } else if self.acked == self.current {
            "SYNCED"
        } else {
            "STALE"
        }
    }
}

/// One analysis message of the live config, rendered for people and scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub level: String,
    pub code: String,
    /// `Kind namespace/name`, empty for file-level problems.
    pub resource: String,
    pub field: String,
    pub message: String,
}

impl From<&crate::diagnostics::Diagnostic> for Finding {
    fn from(d: &crate::diagnostics::Diagnostic) -> Self {
        Finding {
            level: serde_json::to_value(d.level).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            code: d.code.to_string(),
            resource: d.resource.as_ref().map(|r| format!("{} {}/{}", r.kind, r.namespace, r.name)).unwrap_or_default(),
            field: d.field.clone(),
            message: d.message.clone(),
        }
    }
}

/// Everything `GET /v1/status` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub gateways: Vec<GatewayStatus>,
    /// Current version per identity.
    pub versions: BTreeMap<String, u64>,
    /// Messages from the last translation of each identity (analysis of the live config).
    pub diagnostics: Vec<Finding>,
    /// State of the resource source (e.g. Kubernetes watches), free-form per source.
    #[serde(default)]
    pub source: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Secret;

    #[test]
    fn keys_travel_beside_the_redacted_snapshot() {
        let mut snapshot = Snapshot { version: 7, ..Default::default() };
        snapshot.secrets.insert(
            "kubernetes://istio-system/cert".into(),
            Secret { cert_pem: Some("CERT".into()), key_pem: Some("KEY".into()), ca_pem: None },
        );
        let bytes = SnapshotMessage::encode("c1", &snapshot).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("[redacted]"), "the snapshot part is the redacted dump: {text}");
        let message = SnapshotMessage::decode(&bytes).unwrap();
        assert_eq!(message.instance, "c1");
        let back = message.snapshot;
        assert_eq!(back.version, 7);
        assert_eq!(back.secrets["kubernetes://istio-system/cert"].key_pem.as_deref(), Some("KEY"));
        assert!(back.same_content(&snapshot));
    }

    #[test]
    fn identity_orders_labels() {
        let mut a = PollRequest { namespace: "istio-system".into(), ..Default::default() };
        a.labels.insert("istio".into(), "ingressgateway".into());
        a.labels.insert("app".into(), "x".into());
        assert_eq!(a.identity(), "istio-system/app=x,istio=ingressgateway");
    }
}
