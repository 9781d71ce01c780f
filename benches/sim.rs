//! The ring at scale: the simulator runs the real ring cores at each size and prints, next to
//! a Symphony baseline measured in the same run (ideal ring, same greedy routing), the time to
//! consistency, hops, DHT lookup latency (50 ms median one-way link latency), idle traffic,
//! broadcast cost, wall time and peak memory.
//!
//! `cargo bench --bench sim` (sizes from RINGLET_BENCH_NODES, default "1000,10000"; add
//! 100000 for the full table; RINGLET_BENCH_QUORUM sets the DHT read quorum, default 1).

#[allow(dead_code)] // not every benchmark uses every helper
mod common;

use ringlet::sim::baseline::symphony_hops;
use ringlet::sim::{run, Options};

fn main() {
    let args = common::Args::parse();
    let sizes: Vec<usize> = std::env::var("RINGLET_BENCH_NODES")
        .unwrap_or_else(|_| {
            if args.quick {
                "1000".into()
            } else {
                "1000,10000".into()
            }
        })
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let quorum: u8 = std::env::var("RINGLET_BENCH_QUORUM")
        .ok()
        .and_then(|q| q.parse().ok())
        .unwrap_or(1);
    println!(
        "build: {}, DHT read quorum {quorum}, 10 % of nodes behind symmetric NATs",
        common::build()
    );
    println!(
        "{:>7} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9} {:>8} {:>9}",
        "nodes",
        "consist.s",
        "hops mean",
        "baseline",
        "ratio",
        "hops p99",
        "base p99",
        "dht ok",
        "dht p50",
        "dht p99",
        "idle B/s",
        "msg/min",
        "bcast",
        "wall s"
    );
    for n in sizes {
        let (base_mean, base_p99) = symphony_hops(n, 1, 5000);
        let mut opts = Options::new(n, 1, "broadcast");
        opts.dht_quorum = quorum;
        let r = run(&opts);
        println!(
            "{:>7} {:>9} {:>10.2} {:>9.2} {:>9.2} {:>10} {:>8} {:>8.4} {:>9.0} {:>9.0} {:>10.1} {:>9.1} {:>8} {:>9.1}",
            n,
            r.consistent_after_s.map_or("never".into(), |s| format!("{s:.0}")),
            r.hops_mean,
            base_mean,
            r.hops_mean / base_mean,
            r.hops_p99,
            base_p99,
            r.dht_get_success,
            r.dht_lookup_ms_p50,
            r.dht_lookup_ms_p99,
            r.idle_bytes_per_node_s,
            r.idle_messages_per_node_min,
            r.broadcast_messages.map_or("-".into(), |m| format!("{m}/{}", r.broadcast_reached.unwrap_or(0))),
            r.wall_s,
        );
        println!(
            "{:>7} peak RSS so far {:.0} MiB, links per node {:.1}, tunnels opened {}",
            "", r.peak_rss_mib, r.links_per_node, r.tunnels
        );
    }
}
