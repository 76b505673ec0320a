//! Snapshot deltas: what changed between two versions of one identity's snapshot.
//!
//! A gateway that holds a recent version (the controller keeps two) gets only the listeners'
//! changed virtual hosts, the clusters and secrets that differ, and the names of those that
//! went away; everything else refers to what it already has. At 10k services a whole snapshot
//! is ~22 MB of JSON: encoding, sending and decoding it took most of a split
//! deployment's half-second propagation, and every decode gave the gateway new copies of
//! every route and cluster, so its compile could not reuse them by pointer and its memory
//! held two full snapshots while it switched. The gateway builds the new version from its own
//! (shared) parts, so unchanged routes and clusters stay the same allocations.

use crate::snapshot::{
    Cluster, ClusterName, L4Route, Listener, Protocol, Secret, ServerInfo, ServerTls, Snapshot, UnenforcedPolicy,
};
use crate::snapshot::{Shared, VirtualHost};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The difference from version `base` to `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDelta {
    pub base: u64,
    pub version: u64,
    /// Every listener of the new version, in order.
    pub listeners: Vec<ListenerDelta>,
    /// Clusters that are new or differ from the base's of the same name.
    pub clusters: BTreeMap<ClusterName, Shared<Cluster>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_clusters: Vec<ClusterName>,
    /// Secrets that are new or differ (private keys travel beside them, as for whole snapshots).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Secret>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_secrets: Vec<String>,
    /// The new version's whole list (a handful at most).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced_policies: Vec<UnenforcedPolicy>,
}

/// One listener of the new version. The optional parts are absent when they equal those of
/// the base's listener on the same port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerDelta {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<ServerInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Vec<ServerTls>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l4_routes: Option<Vec<L4Route>>,
    pub virtual_hosts: Vec<HostEntry>,
}

/// Virtual hosts of the new version: `[from, count]` of the base listener's hosts, unchanged
/// (one entry for a run of them: a one-service edit at 10k is three entries, not 10k), or a
/// new or changed host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEntry {
    Same([u32; 2]),
    Changed(Shared<VirtualHost>),
}

impl HostEntry {
    /// How many virtual hosts the entry stands for.
    pub fn hosts(&self) -> usize {
        match self {
            HostEntry::Same([_, count]) => *count as usize,
            HostEntry::Changed(_) => 1,
        }
    }
}

/// Why a delta does not apply to the snapshot a gateway holds; it asks for the whole
/// snapshot then.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    #[error("the delta is from version {base}, this gateway holds version {held}")]
    OtherBase { base: u64, held: u64 },
    #[error("the delta keeps parts of a listener on port {port} that version {held} does not have")]
    NoListener { port: u16, held: u64 },
    #[error("the delta keeps virtual host #{index} of port {port}, which version {held} does not have")]
    NoHost { port: u16, index: u32, held: u64 },
}

impl SnapshotDelta {
    /// What turns `base` into `next`. Parts shared by pointer (translation reuses unchanged
    /// VirtualServices' routes and clusters) compare without looking inside.
    pub fn between(base: &Snapshot, next: &Snapshot) -> SnapshotDelta {
        let listeners = next
            .listeners
            .iter()
            .map(|listener| match base.listeners.iter().find(|b| b.port == listener.port) {
                Some(old) => listener_delta(old, listener),
                None => ListenerDelta {
                    name: listener.name.clone(),
                    port: listener.port,
                    protocol: listener.protocol,
                    servers: Some(listener.servers.clone()),
                    tls: Some(listener.tls.clone()),
                    l4_routes: Some(listener.l4_routes.clone()),
                    virtual_hosts: listener.virtual_hosts.iter().cloned().map(HostEntry::Changed).collect(),
                },
            })
            .collect();
        let clusters = next
            .clusters
            .iter()
            .filter(|(name, cluster)| !base.clusters.get(*name).is_some_and(|old| old == *cluster))
            .map(|(name, cluster)| (name.clone(), cluster.clone()))
            .collect();
        let removed_clusters =
            base.clusters.keys().filter(|name| !next.clusters.contains_key(*name)).cloned().collect();
        let secrets = next
            .secrets
            .iter()
            .filter(|(name, secret)| base.secrets.get(*name) != Some(*secret))
            .map(|(name, secret)| (name.clone(), secret.clone()))
            .collect();
        let removed_secrets = base.secrets.keys().filter(|name| !next.secrets.contains_key(*name)).cloned().collect();
        SnapshotDelta {
            base: base.version,
            version: next.version,
            listeners,
            clusters,
            removed_clusters,
            secrets,
            removed_secrets,
            unenforced_policies: next.unenforced_policies.clone(),
        }
    }

    /// The new version, sharing with `base` every part the delta keeps.
    pub fn apply(self, base: &Snapshot) -> Result<Snapshot, DeltaError> {
        let held = base.version;
        if self.base != held {
            return Err(DeltaError::OtherBase { base: self.base, held });
        }
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for delta in self.listeners {
            let port = delta.port;
            let old = base.listeners.iter().find(|b| b.port == port);
            let servers = kept(delta.servers, old, |l| &l.servers).ok_or(DeltaError::NoListener { port, held })?;
            let tls = kept(delta.tls, old, |l| &l.tls).ok_or(DeltaError::NoListener { port, held })?;
            let l4_routes =
                kept(delta.l4_routes, old, |l| &l.l4_routes).ok_or(DeltaError::NoListener { port, held })?;
            // Bounded by what is held, not by counts the delta claims.
            let mut virtual_hosts =
                Vec::with_capacity(delta.virtual_hosts.len() + old.map_or(0, |old| old.virtual_hosts.len()));
            for entry in delta.virtual_hosts {
                match entry {
                    HostEntry::Changed(host) => virtual_hosts.push(host),
                    HostEntry::Same([from, count]) => {
                        let end = from.saturating_add(count);
                        let kept = old.and_then(|old| old.virtual_hosts.get(from as usize..end as usize));
                        let kept = kept.ok_or(DeltaError::NoHost { port, index: end.saturating_sub(1), held })?;
                        virtual_hosts.extend_from_slice(kept);
                    }
                }
            }
            listeners.push(Listener {
                name: delta.name,
                port,
                protocol: delta.protocol,
                servers,
                virtual_hosts,
                tls,
                l4_routes,
            });
        }
        let mut clusters = base.clusters.clone();
        for name in &self.removed_clusters {
            clusters.remove(name);
        }
        clusters.extend(self.clusters);
        let mut secrets = base.secrets.clone();
        for name in &self.removed_secrets {
            secrets.remove(name);
        }
        secrets.extend(self.secrets);
        Ok(Snapshot {
            version: self.version,
            listeners,
            clusters,
            secrets,
            unenforced_policies: self.unenforced_policies,
        })
    }
}

fn listener_delta(old: &Listener, new: &Listener) -> ListenerDelta {
    let by_name: HashMap<&str, usize> =
        old.virtual_hosts.iter().enumerate().map(|(i, host)| (host.name.as_str(), i)).collect();
    let mut virtual_hosts: Vec<HostEntry> = Vec::new();
    for host in &new.virtual_hosts {
        match by_name.get(host.name.as_str()) {
            Some(&i) if old.virtual_hosts[i] == *host => {
                let i = i as u32;
                match virtual_hosts.last_mut() {
                    Some(HostEntry::Same([from, count])) if *from + *count == i => *count += 1,
                    _ => virtual_hosts.push(HostEntry::Same([i, 1])),
                }
            }
            _ => virtual_hosts.push(HostEntry::Changed(host.clone())),
        }
    }
    ListenerDelta {
        name: new.name.clone(),
        port: new.port,
        protocol: new.protocol,
        servers: (old.servers != new.servers).then(|| new.servers.clone()),
        tls: (old.tls != new.tls).then(|| new.tls.clone()),
        l4_routes: (old.l4_routes != new.l4_routes).then(|| new.l4_routes.clone()),
        virtual_hosts,
    }
}

/// A listener part the delta sent, or the base listener's when it did not.
fn kept<T: Clone>(part: Option<Vec<T>>, old: Option<&Listener>, from: fn(&Listener) -> &Vec<T>) -> Option<Vec<T>> {
    part.or_else(|| old.map(|old| from(old).clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribution::wire::DeltaMessage;
    use std::sync::Arc;

    #[test]
    fn equal_workloads_of_decoded_clusters_are_shared() {
        use crate::snapshot::{Endpoint, LoadBalancer, ServiceRef, UpstreamProtocol, Workload};
        let workload = |pod: &str| {
            Arc::new(Workload {
                labels: [("app".into(), "reviews".into())].into_iter().collect(),
                name: pod.into(),
                namespace: "default".into(),
            })
        };
        let cluster = |name: &str, pods: &[&str]| Cluster {
            name: name.into(),
            service: Arc::new(ServiceRef { host: "r".into(), name: "r".into(), namespace: "default".into() }),
            port: 9080,
            subset: None,
            load_balancer: LoadBalancer::LeastRequest,
            endpoints: pods
                .iter()
                .map(|pod| Endpoint { address: [10, 0, 0, 1].into(), port: 9080, weight: 1, workload: workload(pod) })
                .collect(),
            upstream_protocol: UpstreamProtocol::Http1,
            tls: None,
            not_found: false,
        };
        let mut snapshot = Snapshot::default();
        for (name, pods) in [("a", &["reviews-v1", "reviews-v2"][..]), ("b", &["reviews-v2"][..])] {
            snapshot.clusters.insert(name.into(), Shared::new(cluster(name, pods)));
        }
        let before = snapshot.clone();
        snapshot.share_decoded_parts();
        assert_eq!(snapshot, before);
        let (a, b) = (&snapshot.clusters["a"], &snapshot.clusters["b"]);
        assert!(Arc::ptr_eq(&a.endpoints[1].workload, &b.endpoints[0].workload), "reviews-v2 once");
        assert!(!Arc::ptr_eq(&a.endpoints[0].workload, &b.endpoints[0].workload), "other workloads stay apart");
    }

    #[test]
    fn changed_secrets_travel_with_their_keys_and_removed_ones_go() {
        let secret = |cert: &str| Secret {
            cert_pem: Some(cert.to_string()),
            key_pem: Some(format!("key of {cert}")),
            ca_pem: None,
        };
        let mut base = Snapshot { version: 4, ..Default::default() };
        base.secrets.insert("file://a".into(), secret("a"));
        base.secrets.insert("file://b".into(), secret("b"));
        base.secrets.insert("file://same".into(), secret("same"));
        let mut next = Snapshot { version: 5, ..Default::default() };
        next.secrets.insert("file://a".into(), secret("a, renewed"));
        next.secrets.insert("file://c".into(), secret("c"));
        next.secrets.insert("file://same".into(), secret("same"));
        let delta = SnapshotDelta::between(&base, &next);
        assert_eq!(delta.secrets.keys().collect::<Vec<_>>(), ["file://a", "file://c"]);
        assert_eq!(delta.removed_secrets, ["file://b"]);
        let wire = DeltaMessage::encode("c", &delta).unwrap();
        assert!(String::from_utf8_lossy(&wire).contains("key of c"), "keys travel beside the redacted secrets");
        let rebuilt = DeltaMessage::decode(&wire).unwrap().delta.apply(&base).unwrap();
        assert_eq!(rebuilt, next);
    }
}
