//! NAT traversal benchmarks in the NAT lab (needs root): real `ringlet up` processes behind real
//! NAT rules, Prosody and coturn on the public host, optional WAN delay.
//!
//! - time from process start to all-to-all direct, 2 and 5 peers behind port-restricted NATs,
//!   0 and 20 ms one-way WAN delay (with the time to XMPP login and to rendezvous of the same
//!   runs as the breakdown);
//! - symmetric ↔ port-restricted: share of 20 fresh attempts that go direct, and how fast;
//! - STUN checks sent per successful punch, per pair of NAT types;
//! - `ring`: 12 peers with the VPN at 20 ms delay — a consistent ring with direct neighbour
//!   links, the first VPN ping, idle traffic per node (`RINGLET_BENCH_IDLE_S`, default 120 s;
//!   `RINGLET_BENCH_KEEP_LOGS=DIR` keeps the daemons' logs), what the idle traffic is made of
//!   and daemon memory ([`ring`]).
//!
//! Run: `cargo bench --bench natlab` (`-- --quick` for fewer runs; or name sections:
//! `time birthday probes`). Environment: `RINGLET_BENCH_CASE=peers,delay_ms` runs one case of
//! `time`, `RINGLET_BENCH_RUNS=n` sets the birthday runs, `RINGLET_BENCH_LOGS=1` prints every
//! node's log to stderr.
#![allow(clippy::disallowed_methods)] // benchmarks measure real time

mod common;
#[path = "natlab/ring.rs"]
mod ring;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;
use support::scene::{expected_path, Scene};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One run: seconds from process start to (all online, all see each other, all pairs direct).
async fn time_to_direct(peers: usize, delay_ms: u64) -> (f64, f64, f64) {
    let names: Vec<String> = (0..peers).map(|i| format!("p{i}")).collect();
    let spec: Vec<(&str, NatType)> = names
        .iter()
        .map(|n| (n.as_str(), NatType::PortRestricted))
        .collect();
    let options = LabOptions {
        wan_delay: (delay_ms > 0).then(|| Duration::from_millis(delay_ms)),
    };
    let scene = Scene::start_timed("time", &spec, options).await;
    let start = scene.started;
    let mut online = 0.0;
    let mut seen = None;
    let mut direct = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while direct.is_none() && Instant::now() < deadline {
        let mut all_online = true;
        let mut all_seen = true;
        let mut all_direct = true;
        for i in 0..peers {
            match scene.status(i).await {
                Some(s) => {
                    all_online &= s.state == "online";
                    all_seen &= s.peers.len() == peers - 1;
                    all_direct &= s.peers.len() == peers - 1 && s.peers.iter().all(|p| p.path == "direct");
                }
                None => {
                    all_online = false;
                    all_seen = false;
                    all_direct = false;
                }
            }
        }
        let t = start.elapsed().as_secs_f64();
        if all_online && online == 0.0 {
            online = t;
        }
        if all_seen && seen.is_none() {
            seen = Some(t);
        }
        if all_direct {
            direct = Some(t);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    dump_logs(&scene);
    (online, seen.unwrap_or(f64::NAN), direct.unwrap_or(f64::NAN))
}

/// With `RINGLET_BENCH_LOGS` set, prints every node's log to stderr (to see where time goes).
fn dump_logs(scene: &Scene) {
    if std::env::var_os("RINGLET_BENCH_LOGS").is_some() {
        for n in &scene.nodes {
            eprintln!("----- {}\n{}", n.name, n.log());
        }
    }
}

async fn bench_time(runs: usize) {
    println!("\ntime from process start to all-to-all direct, peers behind port-restricted NATs ({runs} runs each)");
    println!(
        "{:>5} {:>8} {:>13} {:>17} {:>17} {:>13} {:>19} {:>8}",
        "peers",
        "delay",
        "online (med)",
        "rendezvous (med)",
        "all direct (med)",
        "direct (max)",
        "direct − online (med)",
        "target"
    );
    let cases = [(2, 0, ""), (2, 20, "≤ 0.5 s"), (5, 0, ""), (5, 20, "≤ 1.0 s")];
    let only: Option<(usize, u64)> = std::env::var("RINGLET_BENCH_CASE").ok().and_then(|c| {
        let (p, d) = c.split_once(',')?;
        Some((p.parse().ok()?, d.parse().ok()?))
    });
    for (peers, delay, target) in cases
        .into_iter()
        .filter(|(p, d, _)| only.is_none_or(|o| o == (*p, *d)))
    {
        let mut o = Vec::new();
        let mut s = Vec::new();
        let mut d = Vec::new();
        for _ in 0..runs {
            let (online, seen, direct) = time_to_direct(peers, delay).await;
            o.push(online);
            s.push(seen);
            d.push(direct);
        }
        let max = d.iter().cloned().fold(0.0, f64::max);
        let after_online = median(d.iter().zip(&o).map(|(d, o)| d - o).collect());
        println!(
            "{peers:>5} {:>8} {:>11.3} s {:>15.3} s {:>15.3} s {:>11.3} s {:>19.3} s {target:>8}",
            format!("{delay} ms"),
            median(o),
            median(s),
            median(d),
            max,
            after_online
        );
    }
}

/// One fresh lab with peers behind `a` and `b`: seconds from process start until both see the
/// other as `direct` (within 8 s: one punch attempt), and the checks both sent until then.
async fn punch_once(a: NatType, b: NatType) -> Option<(f64, u64)> {
    let peers = [("a", a), ("b", b)];
    let scene = Scene::start_timed("punch", &peers, LabOptions::default()).await;
    let direct = scene.wait_path(0, 1, "direct", Duration::from_secs(8)).await;
    let took = scene.started.elapsed().as_secs_f64();
    dump_logs(&scene);
    let mut checks = 0;
    for n in 0..2 {
        let status = scene.status(n).await?;
        checks += status
            .counters
            .get("link_checks_for_success")
            .copied()
            .unwrap_or(0);
    }
    direct.then_some((took, checks))
}

fn median_or_dash(v: Vec<f64>, unit: &str, precision: usize) -> String {
    if v.is_empty() {
        "-".to_owned()
    } else {
        format!("{:.precision$}{unit}", median(v))
    }
}

async fn bench_birthday(runs: usize) {
    let mut wins = Vec::new();
    for _ in 0..runs {
        if let Some(win) = punch_once(NatType::Symmetric, NatType::PortRestricted).await {
            wins.push(win);
        }
    }
    println!("\nsymmetric ↔ port-restricted: birthday probing ({runs} fresh labs, one attempt each)");
    println!(
        "{:>8} {:>7} {:>24} {:>22}",
        "direct", "share", "time to direct (median)", "checks (median)"
    );
    println!(
        "{:>8} {:>6.0}% {:>24} {:>22}",
        format!("{}/{runs}", wins.len()),
        100.0 * wins.len() as f64 / runs as f64,
        median_or_dash(wins.iter().map(|w| w.0).collect(), " s", 2),
        median_or_dash(wins.iter().map(|w| w.1 as f64).collect(), "", 0),
    );
    println!("  (none of tinc, n2n or Tailscale-style systems in REFERENCE.md go direct for this pair)");
}

async fn bench_probes(runs: usize) {
    println!(
        "\nSTUN checks per successful punch, both sides, until the first answer ({runs} fresh labs per pair)"
    );
    println!(
        "{:>15} {:<15} {:>10} {:>16} {:>18}",
        "", "", "direct", "checks (median)", "to direct (median)"
    );
    for (i, a) in NatType::ALL.iter().enumerate() {
        for b in &NatType::ALL[i..] {
            let expected_xmpp = expected_path(*a, *b) == Some("xmpp");
            let mut wins = Vec::new();
            for _ in 0..if expected_xmpp { 1 } else { runs } {
                if let Some(win) = punch_once(*a, *b).await {
                    wins.push(win);
                }
            }
            let tried = if expected_xmpp { 1 } else { runs };
            println!(
                "{:>15} {:<15} {:>10} {:>16} {:>18}",
                a.name(),
                b.name(),
                format!("{}/{tried}", wins.len()),
                median_or_dash(wins.iter().map(|w| w.1 as f64).collect(), "", 0),
                median_or_dash(wins.iter().map(|w| w.0).collect(), " s", 3),
            );
        }
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = ringlet_lab::require_root("the NAT lab benchmarks") {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let args = common::Args::parse();
    let (quick, run) = (args.quick, |name: &str| args.wants(name));
    println!("ringlet NAT lab benchmarks ({} build)", common::build());
    if run("time") {
        bench_time(if quick { 2 } else { 5 }).await;
    }
    if run("birthday") {
        let runs = std::env::var("RINGLET_BENCH_RUNS")
            .ok()
            .and_then(|r| r.parse().ok());
        bench_birthday(runs.unwrap_or(if quick { 5 } else { 20 })).await;
    }
    if run("probes") {
        bench_probes(if quick { 1 } else { 3 }).await;
    }
    if run("ring") {
        let idle = std::env::var("RINGLET_BENCH_IDLE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 30 } else { 120 });
        ring::bench_ring(Duration::from_secs(idle)).await;
    }
}
