//! Named scenarios (`steady`, `churn`, `crash20`, `partition-merge`, `broadcast`,
//! `revocation`) and the numbers they report.

use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;

use super::world::{Class, World};
use crate::overlay::{Config, RingAddr};

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    pub seed: u64,
    pub scenario: String,
    /// Fraction of nodes behind symmetric NATs.
    pub symmetric: f64,
    /// Fraction of nodes with UDP blocked (leaves on XMPP relay links).
    pub leaves: f64,
    pub loss: f64,
    /// App messages and DHT gets measured.
    pub samples: usize,
    /// Longest virtual time allowed for the ring to become consistent.
    pub settle_limit: Duration,
    /// DHT read quorum (see `dht::Config::quorum`).
    pub dht_quorum: u8,
    /// DHT replica points per key (see `dht::Config::points`).
    pub dht_points: u8,
    /// Joins are spread uniformly over this window (default: 30 s, or 200 joins/s for big
    /// rings: a 100,000-node flash crowd in 30 s is a bootstrap storm no group will see).
    pub join_window: Duration,
    /// Fixed shortcut count (None: the ring's own estimate-based count).
    pub shortcuts: Option<usize>,
    /// Routing with lookahead (see `overlay::ring::Config::lookahead`).
    pub lookahead: bool,
}

impl Options {
    /// The window `nodes` joins at `per_s` per second take, at least 30 s.
    pub fn join_window(nodes: usize, per_s: u32) -> Duration {
        Duration::from_secs((nodes as u64 / u64::from(per_s.max(1))).max(30))
    }

    pub fn new(nodes: usize, seed: u64, scenario: &str) -> Options {
        Options {
            nodes,
            seed,
            scenario: scenario.to_owned(),
            symmetric: 0.1,
            leaves: 0.02,
            loss: 0.0,
            samples: 2000,
            settle_limit: Duration::from_secs(900),
            dht_quorum: crate::overlay::dht::Config::default().quorum,
            dht_points: crate::overlay::dht::Config::default().points,
            join_window: Options::join_window(nodes, 200),
            shortcuts: None,
            lookahead: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub nodes: usize,
    pub seed: u64,
    pub scenario: String,
    /// Virtual seconds from the first join until every node's neighbours are the true ones
    /// (null: never within the limit).
    pub consistent_after_s: Option<f64>,
    /// After the scenario's disruption (crash, merge, churn), again.
    pub reconsistent_after_s: Option<f64>,
    pub hops_mean: f64,
    pub hops_p99: u8,
    pub route_success: f64,
    /// UDP-blocked nodes (leaves), and the share of app messages to them that arrived.
    pub leaves: usize,
    pub leaf_route_success: Option<f64>,
    pub dht_get_success: f64,
    pub dht_lookup_ms_p50: f64,
    pub dht_lookup_ms_p99: f64,
    pub idle_bytes_per_node_s: f64,
    pub idle_messages_per_node_min: f64,
    pub links_per_node: f64,
    /// Shortcuts nodes keep, and want (ceil(0.5·log2 N̂)), on average.
    pub shortcuts_per_node: f64,
    pub shortcuts_wanted: f64,
    pub tunnels: u64,
    pub broadcast_reached: Option<usize>,
    pub broadcast_messages: Option<u64>,
    pub revocation: Option<RevocationReport>,
    pub wall_s: f64,
    pub peak_rss_mib: f64,
}

/// What the `revocation` scenario measured: one member (offline meanwhile) misses the
/// broadcast; times are virtual ms after the publishing node took the revocation.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RevocationReport {
    /// Alive nodes other than the revoked one, and how many learnt it within 10 s.
    pub members: usize,
    pub learnt: usize,
    pub learnt_ms_p50: f64,
    pub learnt_ms_max: f64,
    /// Nodes that had a link to the revoked node, and when the last of them closed it.
    pub links_cut: usize,
    pub cut_ms_max: f64,
    /// Broadcast messages (the whole-ring one and the hand-ons past the revoked node) and
    /// their bytes on the wire, plus the catch-up hand-overs after link-ups.
    pub broadcast_messages: u64,
    pub broadcast_bytes: u64,
    pub handovers: u64,
    /// The member that was offline, 60 s after it came back: knows the revocation, and has no
    /// link to the revoked node.
    pub offline_member_refuses: bool,
    pub offline_member_learnt_ms: Option<f64>,
}

/// Waits (in 1 s virtual steps) until the ring is consistent; returns the seconds it took.
fn settle(world: &mut World, limit: Duration) -> Option<f64> {
    let start = world.elapsed();
    while world.elapsed() < start + limit {
        let next = world.elapsed() + Duration::from_secs(1);
        world.run_until(next);
        if std::env::var("SIM_DEBUG").is_ok() && world.elapsed().as_secs().is_multiple_of(10) {
            eprintln!(
                "t={:?} inconsistent={} wakes={} messages={}",
                world.elapsed(),
                world.inconsistent(),
                world.wakes,
                world.messages
            );
            eprintln!(
                "  rss={:.0} MiB queue={} kinds={:?}",
                peak_rss_mib(),
                world.queue_len(),
                world.kinds
            );
            let mut ctms = [0u64; 4];
            for n in world.nodes.iter() {
                for (c, k) in ctms.iter_mut().zip(n.ring.stats().ctm_by_cause) {
                    *c += k;
                }
            }
            eprintln!("  CTMs sent (seek, known address, shortcut, leaf): {ctms:?}");
            if world.inconsistent() <= 16 {
                for l in world.explain(24) {
                    eprintln!("  {l}");
                }
            }
        }
        if world.consistent() {
            return Some((world.elapsed() - start).as_secs_f64());
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Sends `n` app messages between random pairs; returns (mean hops, p99 hops, success,
/// success of those addressed to leaves).
fn measure_routing(world: &mut World, n: usize) -> (f64, u8, f64, Option<f64>) {
    world.record.delivered_hops.clear();
    world.record.delivered_to_leaves = 0;
    let mut to_leaves = 0u64;
    for _ in 0..n {
        let (a, b) = (world.random_alive(), world.random_alive());
        to_leaves += u64::from(world.leaf(b));
        let dst = world.addr(b);
        world
            .with_node(a, |ring, now| ring.send(now, dst, b"probe".to_vec()))
            .ok();
    }
    world.run_until(world.elapsed() + Duration::from_secs(10));
    let mut hops = world.record.delivered_hops.clone();
    hops.sort();
    let mean = hops.iter().map(|h| f64::from(*h)).sum::<f64>() / hops.len().max(1) as f64;
    let p99 = hops
        .get(((hops.len().max(1) - 1) as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0);
    let leaves = (to_leaves > 0).then(|| world.record.delivered_to_leaves as f64 / to_leaves as f64);
    (mean, p99, hops.len() as f64 / n as f64, leaves)
}

fn key_of(i: usize) -> RingAddr {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
    b[8..16].copy_from_slice(&(i as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F).to_be_bytes());
    RingAddr::from_bytes(b)
}

/// Puts `n` keys from random nodes (value = the key's index).
fn put_keys(world: &mut World, n: usize) {
    for i in 0..n {
        let a = world.random_alive();
        world
            .with_node(a, |ring, now| {
                ring.dht_put(now, key_of(i), (i as u64).to_be_bytes().to_vec(), 3600)
            })
            .ok();
    }
    world.run_until(world.elapsed() + Duration::from_secs(10));
}

/// Gets `n` of the `keys` put from random nodes; returns (success, p50 ms, p99 ms).
fn get_keys(world: &mut World, keys: usize, n: usize) -> (f64, f64, f64) {
    world.record.found.clear();
    let mut asked = Vec::new();
    for j in 0..n {
        let i = (j * 7919) % keys.max(1);
        let a = world.random_alive();
        if let Ok(id) = world.with_node(a, |ring, now| ring.dht_get(now, key_of(i))) {
            asked.push((a, id, i));
        }
        // Spread the gets over a few seconds, as real lookups would be.
        let step = world.elapsed() + Duration::from_millis(5);
        world.run_until(step);
    }
    world.run_until(world.elapsed() + Duration::from_secs(15));
    let mut ok = 0;
    let mut ms = Vec::new();
    for (node, id, i) in &asked {
        let found = world
            .record
            .found
            .iter()
            .find(|(n, f, _)| n == node && f.id == *id);
        if let Some((_, f, took)) = found {
            let want = (*i as u64).to_be_bytes().to_vec();
            if f.values.iter().any(|(v, _)| *v == want) {
                ok += 1;
                ms.push(took.as_secs_f64() * 1000.0);
            }
        }
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    (
        ok as f64 / asked.len().max(1) as f64,
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
    )
}

/// Bytes and messages per alive node over `window` with no app traffic.
fn measure_idle(world: &mut World, window: Duration) -> (f64, f64) {
    let (b0, m0) = (world.bytes, world.messages);
    world.run_until(world.elapsed() + window);
    let alive = world.nodes.iter().filter(|n| n.alive).count().max(1) as f64;
    let secs = window.as_secs_f64();
    (
        (world.bytes - b0) as f64 / alive / secs,
        (world.messages - m0) as f64 / alive / (secs / 60.0),
    )
}

fn pick_class(world: &mut World, opts: &Options) -> Class {
    let x: f64 = world.rng().random();
    if x < opts.leaves {
        Class::Blocked
    } else if x < opts.leaves + opts.symmetric {
        Class::Symmetric
    } else {
        Class::Open
    }
}

fn build(opts: &Options, groups: u8) -> World {
    let mut cfg = Config::default();
    cfg.dht.quorum = opts.dht_quorum;
    cfg.dht.points = opts.dht_points;
    cfg.shortcuts = opts.shortcuts;
    cfg.lookahead = opts.lookahead;
    let mut world = World::new(opts.seed, cfg, Instant::now());
    world.loss = opts.loss;
    world.merged = groups == 1;
    for i in 0..opts.nodes {
        let class = pick_class(&mut world, opts);
        let window = opts.join_window.as_millis() as u64;
        let join = Duration::from_millis(world.rng().random_range(0..window));
        world.add_node(class, (i % groups as usize) as u8, join);
    }
    world
}

pub fn run(opts: &Options) -> Report {
    let started = Instant::now();
    let debug = std::env::var("SIM_DEBUG").is_ok();
    let phase = |name: &str| {
        if debug {
            eprintln!(
                "phase {name} done at {:.1} s wall",
                started.elapsed().as_secs_f64()
            );
        }
    };
    let groups = if opts.scenario == "partition-merge" { 2 } else { 1 };
    let mut world = build(opts, groups);
    let mut report = Report {
        nodes: opts.nodes,
        seed: opts.seed,
        scenario: opts.scenario.clone(),
        ..Report::default()
    };
    if groups == 2 {
        // Two rings form apart (each group sees only itself); then rendezvous shows everyone.
        world.run_until(Duration::from_secs(120));
        world.merged = true;
        report.consistent_after_s = None;
        report.reconsistent_after_s = settle(&mut world, opts.settle_limit);
    } else {
        report.consistent_after_s = settle(&mut world, opts.settle_limit);
    }
    phase("settle");
    // Let shortcuts fill in before measuring.
    world.run_until(world.elapsed() + Duration::from_secs(60));
    phase("fill");
    let keys = (opts.samples / 4).max(10);
    put_keys(&mut world, keys);
    phase("put");
    match opts.scenario.as_str() {
        "crash20" => {
            let n = world.nodes.len();
            let mut crashed = 0;
            while crashed < n / 5 {
                let ix = world.random_alive();
                world.crash(ix);
                crashed += 1;
            }
            report.reconsistent_after_s = settle(&mut world, opts.settle_limit);
            // Lookups right after the ring is whole again: leases and hand-over did the rest.
            world.run_until(world.elapsed() + Duration::from_secs(10));
        }
        "churn" => {
            // For five minutes, every second a node leaves (crash) and a new one joins.
            for _ in 0..300 {
                let ix = world.random_alive();
                world.crash(ix);
                let class = pick_class(&mut world, opts);
                world.add_node(class, 0, Duration::ZERO);
                world.run_until(world.elapsed() + Duration::from_secs(1));
            }
            report.reconsistent_after_s = settle(&mut world, opts.settle_limit);
        }
        "broadcast" => {
            let origin = world.random_alive();
            let (b0, f0) = (world.record.broadcasts, forwarded(&world));
            world
                .with_node(origin, |ring, now| {
                    let me = ring.me();
                    ring.broadcast(now, me, me, b"hello everyone".to_vec())
                })
                .ok();
            world.run_until(world.elapsed() + Duration::from_secs(10));
            report.broadcast_reached = Some((world.record.broadcasts - b0) as usize);
            report.broadcast_messages = Some(forwarded(&world) - f0);
        }
        "revocation" => report.revocation = Some(revocation(&mut world)),
        _ => {}
    }
    phase("scenario");
    let (mean, p99, success, leaves) = measure_routing(&mut world, opts.samples);
    report.hops_mean = mean;
    report.hops_p99 = p99;
    report.route_success = success;
    report.leaf_route_success = leaves;
    report.leaves = (0..world.nodes.len() as u32)
        .filter(|&i| world.alive(i) && world.leaf(i))
        .count();
    let (ok, p50, p99) = get_keys(&mut world, keys, opts.samples);
    report.dht_get_success = ok;
    report.dht_lookup_ms_p50 = p50;
    report.dht_lookup_ms_p99 = p99;
    phase("route+get");
    let (bytes, msgs) = measure_idle(&mut world, Duration::from_secs(300));
    phase("idle");
    report.idle_bytes_per_node_s = bytes;
    report.idle_messages_per_node_min = msgs;
    let alive = world.nodes.iter().filter(|n| n.alive).count().max(1);
    report.links_per_node = 2.0 * world.links() as f64 / alive as f64;
    let live = || world.nodes.iter().filter(|n| n.alive);
    let kept: usize = live()
        .map(|n| n.ring.table().iter().filter(|(_, l)| l.our_shortcut).count())
        .sum();
    let wanted: usize = live().map(|n| n.ring.shortcuts_wanted()).sum();
    report.shortcuts_per_node = kept as f64 / alive as f64;
    if std::env::var("SIM_DEBUG").is_ok() {
        let near: usize = live()
            .map(|n| {
                let t = n.ring.table();
                let near = t.near(2);
                t.iter()
                    .filter(|(a, l)| l.our_shortcut && near.contains(a))
                    .count()
            })
            .sum();
        eprintln!(
            "shortcuts that are near neighbours: {:.3} per node",
            near as f64 / alive as f64
        );
    }
    report.shortcuts_wanted = wanted as f64 / alive as f64;
    report.tunnels = world.record.tunnels_up;
    report.wall_s = started.elapsed().as_secs_f64();
    report.peak_rss_mib = peak_rss_mib();
    report
}

/// Revokes a random routing node from another one while a third is offline; brings the
/// third back after the broadcast.
fn revocation(world: &mut World) -> RevocationReport {
    use crate::node::revocation::{broadcast_payload, dht_name};
    use crate::overlay::wire::Message;
    use crate::secure::revocation::{Revocation, Target};

    let routing = |w: &mut World| loop {
        let ix = w.random_alive();
        if !w.leaf(ix) {
            return ix;
        }
    };
    let offline = world.random_alive();
    world.crash(offline);
    let target = routing(world);
    let origin = loop {
        let ix = routing(world);
        if ix != target {
            break ix;
        }
    };
    // Let the ring notice the crash before the revocation goes out: a quiet link is pinged
    // after at most `ping_after_max` and dropped after its tries.
    let cfg = crate::overlay::Config::default();
    let notice = cfg.ping_after_max + cfg.ping_timeout * u32::from(cfg.ping_tries);
    world.run_until(world.elapsed() + notice + Duration::from_secs(10));
    let ca = crate::secure::cert::Ca::from_seed("sim", [7; 32])
        .unwrap_or_else(|_| unreachable!("a valid group name"));
    let rev = Revocation::sign(&ca, Target::User(format!("n{target}@sim.test")), 1);
    world.revocation = Some(super::revoke::Spread::new(ca.public(), rev.clone(), target));
    let f0 = forwarded(world);
    let t0 = world.elapsed();
    world.learn(origin);
    let payload = broadcast_payload(&rev);
    let key = crate::node::dht::key_addr(&dht_name(&rev.target));
    world
        .with_node(origin, |ring, now| {
            let me = ring.me();
            ring.broadcast(now, me, me, payload.clone())?;
            ring.dht_put(now, key, rev.emit(), 3600)
        })
        .ok();
    world.run_until(t0 + Duration::from_secs(10));
    let one_message = Message::Broadcast {
        origin: key,
        seq: 0,
        start: key,
        end: key,
        payload,
    }
    .emit()
    .len() as u64
        + super::world::LINK_OVERHEAD;
    let broadcast_messages = forwarded(world) - f0;
    let spread = world
        .revocation
        .as_ref()
        .unwrap_or_else(|| unreachable!("set above"));
    let members: Vec<u32> = (0..world.nodes.len() as u32)
        .filter(|&i| world.alive(i) && i != target)
        .collect();
    let mut ms: Vec<f64> = members
        .iter()
        .filter_map(|i| spread.learnt.get(i))
        .map(|t| (*t - t0).as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let cut_ms_max = spread
        .cut
        .values()
        .map(|t| (*t - t0).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let mut report = RevocationReport {
        members: members.len(),
        learnt: ms.len(),
        learnt_ms_p50: percentile(&ms, 0.5),
        learnt_ms_max: ms.last().copied().unwrap_or(f64::NAN),
        links_cut: spread.cut.len(),
        cut_ms_max,
        broadcast_messages,
        broadcast_bytes: broadcast_messages * one_message,
        ..RevocationReport::default()
    };
    let back = world.elapsed();
    world.revive(offline);
    world.run_until(back + Duration::from_secs(60));
    let spread = world
        .revocation
        .as_ref()
        .unwrap_or_else(|| unreachable!("set above"));
    report.offline_member_learnt_ms = spread
        .learnt
        .get(&offline)
        .map(|t| (*t - back).as_secs_f64() * 1000.0);
    report.offline_member_refuses = spread.knows(offline) && !world.linked(offline, target);
    report.handovers = spread.handovers;
    report
}

fn forwarded(world: &World) -> u64 {
    world
        .nodes
        .iter()
        .map(|n| n.ring.stats().broadcasts_forwarded)
        .sum()
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
