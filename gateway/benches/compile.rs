//! Swap-path cost at scale (issue 4): `Runtime::compile` of a snapshot translated from N
//! synthetic services, from scratch and with the previous runtime (the reload case, where
//! unchanged clusters are reused). Prints milliseconds, best of three.
//! `cargo bench -p gateway --bench compile -- 1000 10000 30000`

use controller::source::files::load_text;
use controller::store::Store;
use controller::{synth, translate, Options};
use gateway::bench::Runtime;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn best<T>(mut f: impl FnMut() -> T) -> Duration {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10000] } else { sizes };
    println!("{:>8} {:>12} {:>12}", "services", "compile ms", "recompile ms");
    for n in sizes {
        let mut store = Store::default();
        load_text(&mut store, &synth::config(n), None);
        let (snapshot, _) = translate(&store, &Options::default());
        let snapshot = Arc::new(snapshot);
        let fresh = best(|| Runtime::compile(snapshot.clone(), None));
        let previous = Runtime::compile(snapshot.clone(), None);
        // A new snapshot with the same content, as after an edit elsewhere in the config.
        let recompile = best(|| Runtime::compile(Arc::new((*snapshot).clone()), Some(&previous)));
        println!("{:>8} {:>12.0} {:>12.0}", n, fresh.as_secs_f64() * 1e3, recompile.as_secs_f64() * 1e3);
    }
}
