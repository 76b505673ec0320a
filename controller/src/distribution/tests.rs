//! The distribution protocol end to end inside the controller: deltas between versions one
//! publisher made, and the replica's client polling the real server. (The contract crate's own
//! tests cannot build snapshots with the controller.)

mod delta {
    use crate::distribution::delta::{DeltaError, HostEntry, SnapshotDelta};
    use crate::distribution::wire::DeltaMessage;
    use crate::publish::Publisher;
    use crate::snapshot::{Shared, Snapshot};
    use crate::source::files::load_text;
    use crate::store::Store;
    use crate::{synth, Options};
    use std::sync::Arc;

    fn store(files: &[(String, String)]) -> Store {
        let mut store = Store::default();
        for (name, text) in files {
            load_text(&mut store, text, Some(std::path::Path::new(name)));
        }
        store
    }

    /// Two consecutive versions from one publisher, so unchanged parts are shared as in the
    /// controller: 20 services, then one VirtualService edited, one service removed and one
    /// added (the Gateway serves all 21 hosts throughout).
    fn versions() -> (Arc<Snapshot>, Arc<Snapshot>) {
        let all = synth::files(21, 1);
        let (mut publisher, rx) = Publisher::new(Options::default());
        let without = |n: usize| all.iter().filter(|(name, _)| *name != synth::file_name(n)).cloned().collect();
        let mut files: Vec<(String, String)> = without(20);
        publisher.apply(store(&files));
        let first = rx.borrow().clone();
        files = without(7);
        let edited = files.iter_mut().find(|(name, _)| *name == synth::file_name(3)).expect("service 3's file");
        edited.1 = edited.1.replace("weight: 90", "weight: 70").replace("weight: 10", "weight: 30");
        publisher.apply(store(&files));
        let second = rx.borrow().clone();
        assert_ne!(first.version, second.version);
        (first, second)
    }

    #[test]
    fn a_delta_rebuilds_the_next_version_sharing_what_did_not_change() {
        let (first, second) = versions();
        let delta = SnapshotDelta::between(&first, &second);
        assert_eq!((delta.base, delta.version), (first.version, second.version));
        let wire = DeltaMessage::encode("controller-1", &delta).unwrap();
        let decoded = DeltaMessage::decode(&wire).unwrap();
        assert_eq!(decoded.delta, delta, "the wire form carries the whole delta");
        let rebuilt = decoded.delta.apply(&first).unwrap();
        assert_eq!(rebuilt, *second);

        // Only what changed travels: the edited, removed and added services' hosts and clusters.
        let hosts: Vec<&HostEntry> = delta.listeners.iter().flat_map(|l| &l.virtual_hosts).collect();
        let changed: Vec<&str> = hosts
            .iter()
            .filter_map(|h| match h {
                HostEntry::Changed(host) => Some(host.name.as_str()),
                HostEntry::Same(_) => None,
            })
            .collect();
        assert_eq!(changed, ["svc-3.example.com:80", "svc-20.example.com:80"], "{delta:#?}");
        assert_eq!(hosts.iter().map(|h| h.hosts()).sum::<usize>(), 20);
        // Runs of unchanged hosts are one entry each: 0-2, the edited 3, 4-6 (7 removed),
        // 8-19, the added 20 (where the sorted names put each).
        assert!(hosts.len() <= 6, "{hosts:?}");
        assert!(delta.listeners.iter().all(|l| l.servers.is_none() && l.tls.is_none()), "listeners kept");
        let names: Vec<&str> = delta.clusters.keys().map(|k| &**k).collect();
        assert!(names.iter().all(|n| n.ends_with("svc-20.default.svc.cluster.local")), "{names:?}");
        assert!(!names.is_empty());
        assert!(delta.removed_clusters.iter().all(|n| n.ends_with("svc-7.default.svc.cluster.local")));
        assert!(!delta.removed_clusters.is_empty());

        // What the delta kept is the held snapshot's own allocations.
        let (name, cluster) = first.clusters.iter().next().unwrap();
        assert!(Shared::is(cluster, &rebuilt.clusters[name]));
        let kept = &first.listeners[0].virtual_hosts[0];
        let again = rebuilt.listeners[0].virtual_hosts.iter().find(|h| h.name == kept.name).unwrap();
        assert!(kept.routes.iter().zip(&again.routes).all(|(a, b)| Shared::is(a, b)));
    }

    #[test]
    fn a_decoded_snapshot_shares_names_services_and_workloads_again() {
        let (_, second) = versions();
        let wire = crate::distribution::wire::SnapshotMessage::encode("c", &second).unwrap();
        let mut decoded = crate::distribution::wire::SnapshotMessage::decode(&wire).unwrap().snapshot;
        let (name, cluster) = decoded.clusters.iter().next().unwrap();
        assert!(!Arc::ptr_eq(name, &cluster.name), "decoding gives each its own copy");
        decoded.share_decoded_parts();
        assert_eq!(decoded, *second, "sharing changes no content");
        assert!(decoded.clusters.iter().all(|(name, c)| Arc::ptr_eq(name, &c.name)));
        // The synthetic services have a cluster per subset: v1 and v2 of one service.
        let first = decoded.clusters.values().next().unwrap();
        let sibling = decoded.clusters.values().skip(1).find(|c| c.service == first.service).unwrap();
        assert!(Arc::ptr_eq(&first.service, &sibling.service));
        let route = &decoded.listeners[0].virtual_hosts[0].routes[0];
        let destinations = route.action.destinations();
        let (key, _) = decoded.clusters.get_key_value(&destinations[0].cluster).unwrap();
        assert!(Arc::ptr_eq(key, &destinations[0].cluster));
        let routes = &decoded.listeners[0].virtual_hosts[0].routes;
        assert!(routes.len() > 1, "the synthetic VirtualServices have several routes");
        assert!(routes.iter().all(|r| Arc::ptr_eq(&r.virtual_service, &routes[0].virtual_service)));
        // Lists decoded from JSON grew by doubling; the replica keeps them trimmed.
        let exact = |len: usize, capacity: usize| len == capacity;
        for host in &decoded.listeners[0].virtual_hosts {
            // (A route's matches and destinations are boxed slices: exact by their type.)
            assert!(exact(host.routes.len(), host.routes.capacity()), "{}", host.name);
        }
        for cluster in decoded.clusters.values() {
            assert!(exact(cluster.endpoints.len(), cluster.endpoints.capacity()), "{}", cluster.name);
        }
    }

    #[test]
    fn a_delta_from_another_version_does_not_apply() {
        let (first, second) = versions();
        let delta = SnapshotDelta::between(&first, &second);
        assert_eq!(
            delta.clone().apply(&second),
            Err(DeltaError::OtherBase { base: first.version, held: second.version })
        );
        // A held snapshot of the right number but without the listener the delta keeps.
        let empty = Snapshot { version: first.version, ..Default::default() };
        assert!(matches!(delta.clone().apply(&empty), Err(DeltaError::NoListener { port: 80, .. })));
        // Or with fewer virtual hosts than the delta keeps.
        let mut beyond = delta;
        beyond.listeners[0].virtual_hosts = vec![HostEntry::Same([15, 10])];
        assert_eq!(beyond.apply(&first), Err(DeltaError::NoHost { port: 80, index: 24, held: first.version }));
    }
}

mod client {
    use crate::distribution::client::{poll_once, ClientOptions, PollError};
    use crate::distribution::delta::DeltaError;
    use crate::distribution::server::{serve, Distributor};
    use crate::snapshot::{Shared, Snapshot};
    use crate::source::files::load_text;
    use crate::store::Store;
    use crate::{synth, Options};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::sync::watch;

    fn store(services: usize) -> Store {
        let mut store = Store::default();
        load_text(&mut store, &synth::config(services), Some(std::path::Path::new("config.yaml")));
        store
    }

    /// A controller on loopback (the real server) and the client's polls against it: whole
    /// snapshot first, then deltas from the held version, and an error, not a wrong snapshot,
    /// when the held snapshot is not what the delta builds on.
    #[tokio::test]
    async fn polls_get_a_whole_snapshot_then_deltas_from_the_held_one() {
        let distributor = Distributor::new("token".into(), Options::default());
        let setter = distributor.clone();
        tokio::task::spawn_blocking(move || setter.set_store(store(3))).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, distributor.clone(), shutdown));
        let options = ClientOptions {
            url: format!("http://{addr}"),
            token: "token".into(),
            gateway: "gw-1".into(),
            namespace: "istio-system".into(),
            labels: Options::default().labels,
            wait: Duration::from_secs(5),
            after_decode: None,
        };

        let nothing = Arc::new(Snapshot::default());
        let first = poll_once(&options, &nothing, "", 0).await.unwrap().expect("a snapshot");
        assert!(!first.delta, "nothing held: the whole snapshot");
        let held = Arc::new(first.snapshot);
        assert_eq!(held.listeners[0].virtual_hosts.len(), 3);

        let setter = distributor.clone();
        tokio::task::spawn_blocking(move || setter.set_store(store(4))).await.unwrap();
        let second = poll_once(&options, &held, &first.instance, held.version).await.unwrap().expect("a snapshot");
        assert!(second.delta, "the held version is the one before: a delta");
        assert_eq!(second.snapshot.version, held.version + 1);
        assert_eq!(second.snapshot.listeners[0].virtual_hosts.len(), 4);
        let (name, cluster) = held.clusters.iter().next().unwrap();
        assert!(Shared::is(cluster, &second.snapshot.clusters[name]), "kept clusters are the held ones");

        // Same version number, other content (as after a restart of the gateway's state):
        // the delta does not apply and the poll says so.
        let impostor = Arc::new(Snapshot { version: held.version, ..Default::default() });
        let error = poll_once(&options, &impostor, &first.instance, 0).await.unwrap_err();
        assert!(matches!(error, PollError::Delta(DeltaError::NoListener { .. })), "{error}");
        // Without the controller's instance (what `run` sends after such an error), whole.
        let again = poll_once(&options, &impostor, "", 0).await.unwrap().expect("a snapshot");
        assert!(!again.delta);
        assert_eq!(again.snapshot, second.snapshot);
    }
}
