//! Where the memory of a large config goes (issue 4: RSS <= 100 MB at 10k services): live heap
//! bytes after each step of `gateway --config DIR` on N synthetic services (one file per
//! service), counted by a wrapping allocator.
//! `cargo bench -p gateway --bench memory -- 10000`
//!
//! Rows: the file cache with the store it produced; the publisher (its last good store and the
//! served snapshot, translation garbage freed); the compiled runtime. Each row is the increase
//! over the previous one, so the rows add up to what the gateway holds.
//!
//! A second line is the gateway of a split deployment (`controller` serving, `gateway
//! --controller URL`, as the Helm chart runs them): it holds only the snapshot decoded from the
//! wire and its compiled runtime.

use controller::distribution::delta::SnapshotDelta;
use controller::distribution::wire::{DeltaMessage, SnapshotMessage};
use controller::publish::Publisher;
use controller::source::cache::FileCache;
use controller::{synth, Options};
use gateway::bench::Runtime;
use std::alloc::System;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts the sizes.
// Counting does not depend on the allocator, and with malloc underneath, heap profilers
// (`valgrind --tool=dhat target/release/deps/memory-* 2000`) see where each byte was allocated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mb(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10000] } else { sizes };
    println!(
        "{:>8} {:>14} {:>14} {:>14} {:>14}",
        "services", "cache+store MB", "publisher MB", "runtime MB", "total MB"
    );
    for n in sizes {
        let dir = tempfile::tempdir().expect("temporary folder");
        for (name, content) in synth::files(n, 1) {
            std::fs::write(dir.path().join(name), content).expect("writing the config");
        }
        let paths = [dir.path().to_path_buf()];
        let base = LIVE.load(Relaxed);
        let mut cache = FileCache::default();
        let store = cache.load(&paths);
        let after_load = LIVE.load(Relaxed);
        let (mut publisher, rx) = Publisher::new(Options::default());
        publisher.apply(store);
        let after_publish = LIVE.load(Relaxed);
        let runtime = Runtime::compile(rx.borrow().clone(), None);
        let after_compile = LIVE.load(Relaxed);
        println!(
            "{:>8} {:>14.1} {:>14.1} {:>14.1} {:>14.1}",
            n,
            mb(after_load - base),
            mb(after_publish - after_load),
            mb(after_compile - after_publish),
            mb(after_compile - base)
        );
        let wire = SnapshotMessage::encode("bench", &rx.borrow()).expect("encoding the snapshot");
        // What a replica receives for a one-file edit instead: a delta from the version it holds.
        let held = rx.borrow().clone();
        let edited = dir.path().join(synth::file_name(3));
        let text = std::fs::read_to_string(&edited).expect("reading service 3's file");
        std::fs::write(&edited, text.replace("weight: 90", "weight: 80").replace("weight: 10", "weight: 20"))
            .expect("editing service 3's file");
        publisher.apply(cache.load(&paths));
        let delta = SnapshotDelta::between(&held, &rx.borrow());
        let delta_bytes = DeltaMessage::encode("bench", &delta).expect("encoding the delta").len();
        println!("{:>8} a one-file edit's delta: {:.1} KB of JSON", "", delta_bytes as f64 / 1024.0);
        drop((runtime, publisher, rx, held, delta));
        let wire_mb = mb(wire.len() as isize);
        let before_decode = LIVE.load(Relaxed) - wire.capacity() as isize;
        let mut message = SnapshotMessage::decode(&wire).expect("decoding the snapshot");
        message.snapshot.share_decoded_parts();
        drop(wire);
        let after_decode = LIVE.load(Relaxed);
        let runtime = Runtime::compile(Arc::new(message.snapshot), None);
        let after_compile = LIVE.load(Relaxed);
        println!(
            "{:>8} split gateway: snapshot from the wire ({:.1} MB of JSON) {:.1} MB, runtime {:.1} MB, total {:.1} MB",
            "",
            wire_mb,
            mb(after_decode - before_decode),
            mb(after_compile - after_decode),
            mb(after_compile - before_decode)
        );
        drop(runtime);
        // The store by kind: a fresh load without the cache, then each kind's share as it is
        // dropped (the cache itself is what is left).
        let before = LIVE.load(Relaxed);
        drop(cache);
        let cache_only = before - LIVE.load(Relaxed);
        let mut store = FileCache::default().load(&paths);
        let mut kinds = Vec::new();
        macro_rules! share {
            ($($field:ident),*) => {$(
                let before = LIVE.load(Relaxed);
                drop(std::mem::take(&mut store.$field));
                kinds.push((stringify!($field), before - LIVE.load(Relaxed)));
            )*};
        }
        share!(pods, services, destination_rules, virtual_services, gateways, diagnostics);
        let shares: Vec<String> = kinds.iter().map(|(k, b)| format!("{k} {:.1}", mb(*b))).collect();
        println!("{:>8} store by kind (MB): {}; file cache {:.1}", "", shares.join(", "), mb(cache_only));
    }
}
