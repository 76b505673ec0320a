//! `scale N...`: parse + translate time for synthetic configs of N services, to show how
//! translation grows (it must stay linear). `cargo run --release -p controller --bin scale -- 1000 10000 30000`

use controller::source::files::load_text;
use controller::store::Store;
use controller::{synth, translate, Options};
use std::time::Instant;

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 10000] } else { sizes };
    println!("{:>8} {:>10} {:>10} {:>12} {:>10}", "services", "yaml MB", "parse ms", "translate ms", "vhosts");
    for n in sizes {
        let text = synth::config(n);
        let t0 = Instant::now();
        let mut store = Store::default();
        load_text(&mut store, &text, None);
        let parse = t0.elapsed();
        let t1 = Instant::now();
        let (snap, diags) = translate(&store, &Options::default());
        let translate_time = t1.elapsed();
        assert_eq!(diags.errors(), 0);
        let vhosts: usize = snap.listeners.iter().map(|l| l.virtual_hosts.len()).sum();
        println!(
            "{:>8} {:>10.1} {:>10.0} {:>12.0} {:>10}",
            n,
            text.len() as f64 / 1e6,
            parse.as_secs_f64() * 1e3,
            translate_time.as_secs_f64() * 1e3,
            vhosts
        );
    }
}
