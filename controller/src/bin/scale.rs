//! `scale N...`: the control-plane costs of one reload for synthetic configs of N services,
//! to show where propagation time goes and that it grows linearly.
//! `cargo run --release -p controller --bin scale -- 1000 10000 30000`
//! `scale --write DIR N` writes the config of N services to DIR instead, one file per service
//! (`tests/load/propagation.py` serves it).
//!
//! Columns (milliseconds, best of three):
//! - parse: YAML + typed decoding of the whole config (a full load);
//! - reload: a folder reload through `source::cache` after one file changed (one file per
//!   service): reading and hashing every file, parsing one, rebuilding the store;
//! - translate: `&Store -> Snapshot`;
//! - publish: `Publisher::apply` of a changed store (restoring last good versions,
//!   translating, comparing with the served snapshot, sending), translate included.

use controller::publish::Publisher;
use controller::source::cache::FileCache;
use controller::source::files::load_text;
use controller::store::Store;
use controller::{synth, translate, Options};
use std::time::{Duration, Instant};

/// The gateway's allocator, so the numbers are the gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed());
        last = Some(out);
    }
    (best, last.expect("at least one run"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, dir, n] = args.as_slice() {
        if flag == "--write" {
            let n: usize = n.parse().expect("N: a number of services");
            std::fs::create_dir_all(dir).expect("creating the folder");
            for (name, content) in synth::files(n, 1) {
                std::fs::write(std::path::Path::new(dir).join(name), content).expect("writing the config");
            }
            return;
        }
    }
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10000] } else { sizes };
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "services", "yaml MB", "parse", "reload", "translate", "publish", "vhosts"
    );
    for n in sizes {
        let text = synth::config(n);
        let (parse, store) = best(3, || {
            let mut store = Store::default();
            load_text(&mut store, &text, None);
            store
        });

        let dir = std::env::temp_dir().join(format!("meshgate-scale-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        for (name, content) in synth::files(n, 1) {
            std::fs::write(dir.join(name), content).expect("writing the config");
        }
        let paths = [dir.clone()];
        let mut cache = FileCache::default();
        cache.load(&paths);
        // Each reload sees a different edit of one VirtualService file.
        let victim = dir.join(synth::file_name(n / 2));
        let original = std::fs::read_to_string(&victim).expect("reading the config");
        let mut edit = 0;
        let (reload, _) = best(3, || {
            edit += 1;
            std::fs::write(&victim, original.replace("/api/v1", &format!("/api/v{}", edit + 1))).expect("writing");
            let store = cache.load(&paths);
            assert_eq!(cache.parsed(), 1);
            store
        });

        let (translate_time, (snap, diags)) = best(3, || translate(&store, &Options::default()));
        assert_eq!(diags.errors(), 0);
        let vhosts: usize = snap.listeners.iter().map(|l| l.virtual_hosts.len()).sum();

        let (mut publisher, _rx) = Publisher::new(Options::default());
        publisher.apply(cache.load(&paths));
        let publish = {
            let mut best = Duration::MAX;
            for _ in 0..3 {
                edit += 1;
                std::fs::write(&victim, original.replace("/api/v1", &format!("/api/v{}", edit + 1))).expect("writing");
                let store = cache.load(&paths);
                let t = Instant::now();
                assert!(publisher.apply(store).changed);
                best = best.min(t.elapsed());
            }
            best
        };

        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "{:>8} {:>8.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8}",
            n,
            text.len() as f64 / 1e6,
            ms(parse),
            ms(reload),
            ms(translate_time),
            ms(publish),
            vhosts
        );
    }
}
