//! Request-path and swap-path costs at scale (issue 4): host + route lookup in a runtime
//! compiled from 10k VirtualServices, and translate + compile time per snapshot size.
//! `cargo bench -p gateway --bench routing`

use controller::source::files::load_text;
use controller::store::Store;
use controller::{synth, translate, Options};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::bench::{route, Runtime};
use std::hint::black_box;
use std::sync::Arc;

fn store(n: usize) -> Store {
    let mut store = Store::default();
    load_text(&mut store, &synth::config(n), None);
    store
}

fn lookup(c: &mut Criterion) {
    let (snapshot, _) = translate(&store(10_000), &Options::default());
    let runtime = Runtime::compile(Arc::new(snapshot), None);
    let mut headers = http::HeaderMap::new();
    headers.insert("user-agent", "bench".parse().unwrap());
    let mut group = c.benchmark_group("lookup_10k");
    for (name, path) in [("third_route", "/index.html"), ("regex_route", "/items/42")] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let host = black_box("svc-7321.example.com");
                assert!(black_box(route(&runtime, 80, host, black_box(path), &headers)));
            })
        });
    }
    group.finish();
}

fn swap(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate_and_compile");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        let s = store(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &s, |b, s| {
            b.iter(|| {
                let (snapshot, _) = translate(s, &Options::default());
                black_box(Runtime::compile(Arc::new(snapshot), None));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, swap);
criterion_main!(benches);
