//! NAT traversal in the NAT lab: real `ringlet up` processes behind real NAT rules in network
//! namespaces, Prosody and coturn on the public host. Paths are read from
//! `ringlet status --json`, reachability is checked with `ringlet ping`.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;
use support::scene::{dht_cli, dht_values_become, expected_path, Scene};
use support::wait;

/// Every unordered pair of the six NAT types (21 pairs): two peers always reach each other, and
/// the path is direct exactly where the issue says it must be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_matrix_every_pair_connects_and_goes_direct_where_possible() {
    let names: Vec<(String, NatType)> = NatType::ALL
        .iter()
        .flat_map(|t| (0..2).map(move |k| (format!("{t}-{k}"), *t)))
        .collect();
    let peers: Vec<(&str, NatType)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let scene = Scene::start("matrix", &peers, LabOptions::default()).await;
    let index = |t: NatType, k: usize| names.iter().position(|(n, _)| *n == format!("{t}-{k}")).unwrap();
    let mut pairs = Vec::new();
    for (i, a) in NatType::ALL.iter().enumerate() {
        for b in &NatType::ALL[i..] {
            let (x, y) = (index(*a, 0), if a == b { index(*b, 1) } else { index(*b, 0) });
            pairs.push((*a, *b, x, y));
        }
    }
    // Direct pairs must get there; give every punch attempt (6 s) time to fail elsewhere.
    let start = Instant::now();
    for &(a, b, x, y) in &pairs {
        if expected_path(a, b) == Some("direct") {
            let ok = scene.wait_path(x, y, "direct", Duration::from_secs(20)).await;
            assert!(ok, "{a} ↔ {b} is not direct:\n{}", scene.nodes[x].log());
        }
    }
    let converged = start.elapsed();
    // The other pairs have had a punch attempt (6 s) by now, or have one running: watch them
    // until 8 s have passed, so that one which wrongly goes direct is caught.
    while start.elapsed() < Duration::from_secs(8) {
        for &(a, b, x, y) in &pairs {
            if expected_path(a, b) == Some("xmpp") {
                let path = scene.path(x, y).await;
                assert_ne!(path.as_deref(), Some("direct"), "{a} ↔ {b} went direct");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = vec![format!("direct pairs converged after {converged:?}")];
    for &(a, b, x, y) in &pairs {
        let from_cli = |i: usize, j: usize| {
            scene
                .cli_paths(i)
                .into_iter()
                .find(|(id, _)| *id == scene.ids[j])
                .map(|(_, p)| p)
                .unwrap_or_default()
        };
        let (pxy, pyx) = (from_cli(x, y), from_cli(y, x));
        let reply = scene.ping(x, y);
        let back = scene.ping(y, x);
        report.push(format!(
            "{a:>15} ↔ {b:<15} {pxy:>6}/{pyx:<6} ping {}",
            if reply.is_ok() && back.is_ok() {
                "ok"
            } else {
                "FAILED"
            }
        ));
        assert!(
            reply.is_ok() && back.is_ok(),
            "{a} ↔ {b} cannot reach each other: {reply:?} {back:?}\n{}\n----\n{}",
            scene.nodes[x].log(),
            scene.nodes[y].log()
        );
        if let Some(want) = expected_path(a, b) {
            // A pair that cannot punch may be ring neighbours: the ring tunnels those through
            // a common neighbour (still not direct).
            let fits = |p: &str| p == want || (want == "xmpp" && p == "tunnel");
            assert!(
                fits(&pxy) && fits(&pyx),
                "{a} ↔ {b}: {pxy}/{pyx}, want {want}\n{}",
                report.join("\n")
            );
        }
    }
    for (i, (name, _)) in names.iter().enumerate() {
        let s = scene.status(i).await.unwrap();
        report.push(format!(
            "{name:>17}: nat {} reflexive {:?}",
            s.nat.unwrap_or_default(),
            s.reflexive
        ));
    }
    eprintln!("{}", report.join("\n"));

    // The UDP-blocked peers are ring leaves: their ring links ride the relay, and the DHT
    // works from them like from anyone.
    let leaf = index(NatType::UdpBlocked, 0);
    let linked = wait(Duration::from_secs(30), || async {
        scene
            .status(leaf)
            .await
            .filter(|s| s.ring.leaf_links > 0)
            .map(|s| s.ring.leaf_links)
    })
    .await;
    let Some(links) = linked else {
        panic!(
            "the UDP-blocked peer has no ring link\n{}",
            scene.nodes[leaf].log()
        );
    };
    let (ok, _, err) = dht_cli(
        &scene.nodes[index(NatType::Open, 0)],
        &["put", "from/open", "hello leaf"],
    );
    assert!(ok, "dht put failed: {err}");
    if let Err(seen) = dht_values_become(&scene.nodes[leaf], "from/open", &["hello leaf"]).await {
        panic!(
            "the leaf does not see the value: {seen:?}\n{}",
            scene.nodes[leaf].log()
        );
    }
    eprintln!("UDP-blocked leaf: {links} ring links over the relay; DHT get through them works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_port_restricted_peers_reach_all_to_all_direct() {
    let names = ["p0", "p1", "p2", "p3", "p4"];
    let peers: Vec<(&str, NatType)> = names.iter().map(|n| (*n, NatType::PortRestricted)).collect();
    let scene = Scene::start("five", &peers, LabOptions::default()).await;
    let start = Instant::now();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            let ok = scene.wait_path(i, j, "direct", Duration::from_secs(15)).await;
            assert!(
                ok,
                "{} ↔ {} not direct:\n{}",
                names[i],
                names[j],
                scene.nodes[i].log()
            );
        }
    }
    eprintln!(
        "all-to-all direct {:?} after the nodes were online",
        start.elapsed()
    );
}

/// `conntrack -F` on a router drops every mapping mid-session; the link recovers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_nat_mapping_recovers_by_itself() {
    let peers = [("a", NatType::PortRestricted), ("b", NatType::PortRestricted)];
    let scene = Scene::start("flush", &peers, LabOptions::default()).await;
    assert!(scene.wait_path(0, 1, "direct", Duration::from_secs(10)).await);
    for router in ["a", "b"] {
        let flows = scene.lab.flush_conntrack(router).unwrap();
        assert!(flows >= 1, "{router}'s router tracked no UDP flow to flush");
    }
    let flushed = Instant::now();
    // Traffic keeps flowing (over whatever path) and the path is direct again.
    let recovered = wait(Duration::from_secs(60), || async {
        let direct = scene.wait_path(0, 1, "direct", Duration::from_millis(10)).await;
        (direct && scene.ping(0, 1).is_ok_and(|r| r.contains("via direct"))).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "no recovery:\n{}", scene.nodes[0].log());
    eprintln!("direct again {:?} after the flush", flushed.elapsed());
}

/// Garbage aimed at a node's UDP port is dropped and counted; the node keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stun_and_frames_are_dropped_and_counted() {
    let peers = [("open", NatType::Open), ("full", NatType::Full)];
    let scene = Scene::start("junk", &peers, LabOptions::default()).await;
    assert!(scene.wait_path(0, 1, "direct", Duration::from_secs(10)).await);
    let target: SocketAddr = scene.status(0).await.unwrap().reflexive[0].parse().unwrap();
    let junk: Vec<Vec<u8>> = vec![
        // STUN header with the magic cookie but a length beyond the packet
        [&[0x00, 0x01, 0x01, 0x00, 0x21, 0x12, 0xa4, 0x42][..], &[7u8; 12]].concat(),
        // STUN binding request for nobody (no USERNAME)
        [&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..], &[8u8; 12]].concat(),
        vec![0xc0, 0x01, 1, 2],                   // a frame shorter than its header
        vec![0xc0, 0x3f, 0, 0, 0, 0, 0, 0, 0, 0], // unknown frame kind
        vec![0x80; 50],                           // neither STUN nor frame
    ];
    let sender = scene
        .lab
        .public()
        .spawn(move || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                for j in &junk {
                    sock.send_to(j, target).unwrap();
                }
            }
        })
        .unwrap();
    sender.join().unwrap();
    let counted = wait(Duration::from_secs(5), || async {
        let c = scene.status(0).await?.counters;
        let seen =
            c["udp_stun_malformed"] >= 20 && c["link_malformed_frames"] >= 40 && c["udp_unknown_in"] >= 20;
        seen.then_some(c)
    })
    .await;
    assert!(
        counted.is_some(),
        "junk not counted: {:?}",
        scene.status(0).await.map(|s| s.counters)
    );
    assert!(
        scene.ping(0, 1).is_ok_and(|r| r.contains("via direct")),
        "the node must keep working"
    );
}
