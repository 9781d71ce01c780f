//! Simulation tier: the real ring cores, 1,000 nodes, on the simulator's virtual clock.
//! Bounds (virtual time): joins are spread over 30 s and the ring must be consistent within
//! 120 s of the first join; after 20 % of nodes crash at once, consistent again within 120 s
//! (link failure detection alone takes 20–26 s); two rings formed apart merge within 180 s of
//! rendezvous showing them each other.

use ringlet::sim::{run, Options};

const NODES: usize = 1000;
/// REFERENCE.md: Symphony mean hops at n = 1,000 (bidirectional greedy, Brunet-like config).
const SYMPHONY_HOPS_1000: f64 = 4.9;

fn options(scenario: &str, seed: u64) -> Options {
    let mut o = Options::new(NODES, seed, scenario);
    o.samples = 1000;
    o
}

/// With lookahead (the default) routes take fewer hops than the baseline's plain greedy.
#[test]
fn a_steady_ring_is_consistent_routes_below_the_symphony_baseline_and_broadcasts_with_n_minus_1() {
    let r = run(&options("broadcast", 11));
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let consistent = r.consistent_after_s.expect("ring never became consistent");
    assert!(consistent <= 120.0, "consistent after {consistent} s");
    assert!(
        r.hops_mean <= SYMPHONY_HOPS_1000,
        "mean hops {} vs baseline {SYMPHONY_HOPS_1000}",
        r.hops_mean
    );
    assert!(r.route_success >= 0.999, "routing success {}", r.route_success);
    assert!(r.leaves > 0, "the default world has UDP-blocked leaves");
    let to_leaves = r.leaf_route_success.expect("no message was addressed to a leaf");
    assert!(to_leaves >= 0.999, "messages to leaves arrived: {to_leaves}");
    assert_eq!(
        r.broadcast_reached,
        Some(NODES),
        "whole-ring broadcast must reach every node"
    );
    assert_eq!(
        r.broadcast_messages,
        Some(NODES as u64 - 1),
        "a stable ring broadcasts with N-1 messages"
    );
    assert!(
        r.tunnels > 0,
        "symmetric-NAT neighbours must have linked through tunnels"
    );
    assert!(r.dht_get_success >= 0.999, "DHT gets {}", r.dht_get_success);
}

/// Plain greedy (no lookahead), the baseline's own configuration: within 15 % of it.
#[test]
fn plain_greedy_routes_within_15_percent_of_the_symphony_baseline() {
    let mut o = options("steady", 11);
    o.lookahead = false;
    let r = run(&o);
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let ratio = r.hops_mean / SYMPHONY_HOPS_1000;
    assert!(
        (0.85..=1.15).contains(&ratio),
        "mean greedy hops {} vs baseline {SYMPHONY_HOPS_1000}",
        r.hops_mean
    );
    assert!(r.route_success >= 0.999, "routing success {}", r.route_success);
}

#[test]
fn twenty_percent_crashing_at_once_heals_and_keeps_the_dht() {
    let r = run(&options("crash20", 12));
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let healed = r.reconsistent_after_s.expect("ring never healed after the crash");
    assert!(healed <= 120.0, "consistent again after {healed} s");
    assert!(
        r.dht_get_success >= 0.999,
        "DHT gets after the crash {}",
        r.dht_get_success
    );
}

#[test]
fn two_rings_formed_apart_merge() {
    let r = run(&options("partition-merge", 13));
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    let merged = r.reconsistent_after_s.expect("the two rings never merged");
    assert!(merged <= 180.0, "merged after {merged} s");
    assert!(
        r.route_success >= 0.999,
        "routing across the merged ring {}",
        r.route_success
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let mut o = Options::new(200, 5, "steady");
    o.samples = 200;
    let (a, b) = (run(&o), run(&o));
    assert_eq!(a.consistent_after_s, b.consistent_after_s);
    assert_eq!(a.hops_mean, b.hops_mean);
    assert_eq!(a.dht_lookup_ms_p50, b.dht_lookup_ms_p50);
    assert_eq!(a.idle_bytes_per_node_s, b.idle_bytes_per_node_s);
}

/// Revocation in a 20-node ring, on several seeds: every member (but the one offline) learns
/// it and every link to the revoked node is closed within 5 s of the publish (virtual time);
/// the member that was offline knows it and has no link to the revoked node after it comes
/// back. The broadcast also reaches the nodes behind the revoked one.
#[test]
fn a_revocation_reaches_every_member_of_a_20_node_ring_within_5_s_and_the_offline_one_later() {
    for seed in 1..=5 {
        let mut o = Options::new(20, seed, "revocation");
        o.samples = 100;
        let r = run(&o);
        let rev = r.revocation.expect("the revocation scenario reports");
        eprintln!("seed {seed}: {}", serde_json::to_string(&rev).unwrap());
        assert_eq!(
            rev.members, 18,
            "seed {seed}: 20 nodes less the offline and revoked ones"
        );
        assert_eq!(rev.learnt, rev.members, "seed {seed}: not every member learnt it");
        assert!(
            rev.learnt_ms_max <= 5000.0,
            "seed {seed}: {} ms",
            rev.learnt_ms_max
        );
        assert!(
            rev.links_cut >= 2,
            "seed {seed}: the revoked node had no links to cut"
        );
        assert!(rev.cut_ms_max <= 5000.0, "seed {seed}: {} ms", rev.cut_ms_max);
        assert!(
            rev.offline_member_refuses,
            "seed {seed}: the member that was offline"
        );
    }
}
