//! Revocation in the NAT lab: eight real `ringlet up` processes in one ring. With one member
//! offline, the CA's `ringlet group revoke --node-key … --config <a member's config>` has that
//! member's running node publish the revocation; every other member must cut the revoked
//! node off within 5 s, and the member that was offline must refuse it once it is back.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use ringlet::identity::NodeKey;
use ringlet::node::status::Status;
use ringlet::secure::files;
use ringlet_lab::natlab::{LabOptions, PUBLIC_IP};
use ringlet_lab::NatType;
use support::scene::{Scene, DOMAIN};
use support::{ringlet_bin, test_ca, wait, NodeProcess, NodeSpec};

const PEERS: [(&str, NatType); 8] = [
    ("r0", NatType::Full),
    ("r1", NatType::Restricted),
    ("r2", NatType::Open),
    ("r3", NatType::PortRestricted),
    ("r4", NatType::Full),
    ("r5", NatType::Restricted),
    ("r6", NatType::Open),
    ("r7", NatType::PortRestricted),
];
const PUBLISHER: usize = 0;
const OFFLINE: usize = 5;
const REVOKED: usize = 7;

/// How node `i` sees node `j`: its path string, if it lists it.
fn path_to(st: &Status, id: &str) -> Option<String> {
    st.peers.iter().find(|p| p.node_id == id).map(|p| p.path.clone())
}

/// Every node in `who` has two ring neighbours and routing links: the ring is up.
fn ring_up(who: &[usize], st: &[Option<Status>]) -> bool {
    who.iter().all(|&i| {
        st[i]
            .as_ref()
            .is_some_and(|s| s.ring.left.is_some() && s.ring.right.is_some() && s.ring.links >= 2)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_cuts_a_revoked_node_off_within_5_s_and_one_that_was_offline_refuses_it_later() {
    let mut scene = Scene::start("revoke8", &PEERS, LabOptions::default()).await;
    let everyone: Vec<usize> = (0..PEERS.len()).collect();
    let formed = wait(Duration::from_secs(60), || async {
        ring_up(&everyone, &scene.statuses().await).then_some(())
    })
    .await;
    assert!(formed.is_some(), "no ring: {:?}", scene.statuses().await);
    let revoked_id = scene.ids[REVOKED].clone();

    // One member goes offline before the revocation.
    scene.nodes[OFFLINE].stop();

    let ca_file = scene.dir.path().join("tests.ca.key");
    files::write_ca(&ca_file, &test_ca()).unwrap();
    let (key, created) = NodeKey::load_or_create(&scene.dir.path().join("r7").join("node.key")).unwrap();
    assert!(!created);
    let published = Instant::now();
    let out = Command::new(ringlet_bin())
        .args(["group", "revoke", "--ca"])
        .arg(&ca_file)
        .args(["--node-key", &hex::encode(key.public_bytes()), "--config"])
        .arg(&scene.nodes[PUBLISHER].config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "group revoke failed: {stderr}");
    assert!(stderr.contains("published by the running node"), "{stderr}");

    // Every member online cuts it off within 5 s.
    let members: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|i| ![OFFLINE, REVOKED].contains(i))
        .collect();
    let cut = wait(Duration::from_secs(5), || async {
        let st = scene.statuses().await;
        members
            .iter()
            .all(|&i| {
                st[i].as_ref().is_some_and(|s| {
                    path_to(s, &revoked_id).as_deref() == Some("revoked") && s.counters["crl_version"] == 1
                })
            })
            .then_some(())
    })
    .await;
    let took = published.elapsed();
    let st = scene.statuses().await;
    if cut.is_none() {
        let seen: Vec<(usize, Option<String>, u64)> = members
            .iter()
            .map(|&i| {
                let s = st[i].as_ref();
                (
                    i,
                    s.and_then(|s| path_to(s, &revoked_id)),
                    s.map_or(0, |s| s.counters["crl_version"]),
                )
            })
            .collect();
        panic!(
            "not every member cut r7 off within 5 s: {seen:?}\n{}",
            scene.nodes[PUBLISHER].log()
        );
    }
    eprintln!("every online member cut the revoked node off {took:?} after `group revoke` started");
    for &i in &members {
        let s = st[i].as_ref().unwrap();
        assert!(s.counters["link_revoked"] <= 1);
        let crl =
            std::fs::read_to_string(scene.dir.path().join(PEERS[i].0).join("group.crl")).unwrap_or_default();
        assert_eq!(crl.lines().count(), 1, "r{i} did not keep the revocation");
    }

    // The member that was offline comes back with its old CRL and refuses the revoked node.
    let friends: Vec<String> = PEERS.iter().map(|(n, _)| format!("{n}@{DOMAIN}")).collect();
    let friends: Vec<&str> = friends.iter().map(String::as_str).collect();
    let name = PEERS[OFFLINE].0;
    let spec = NodeSpec::new(
        &format!("{name}@{DOMAIN}"),
        &format!("{PUBLIC_IP}:5222"),
        "lab",
        &friends,
    );
    let ns = &scene.lab.peer(name).ns;
    scene.nodes[OFFLINE] = NodeProcess::spawn(name, &spec, &scene.dir.path().join(name), Some(ns));
    let back = Instant::now();
    scene.nodes[OFFLINE].online(Duration::from_secs(15)).await;
    let refused = wait(Duration::from_secs(30), || async {
        let s = scene.nodes[OFFLINE].status().await?;
        let ring_ok = s.ring.links >= 1;
        (ring_ok && path_to(&s, &revoked_id).as_deref() == Some("revoked") && s.counters["crl_version"] == 1)
            .then_some(s)
    })
    .await;
    let Some(s) = refused else {
        panic!(
            "the member that was offline does not refuse r7: {:?}\n{}",
            scene.nodes[OFFLINE].status().await,
            scene.nodes[OFFLINE].log()
        );
    };
    eprintln!(
        "the member that was offline refused r7 {:?} after it started again",
        back.elapsed()
    );
    let log = scene.nodes[OFFLINE].log();
    eprintln!(
        "{}",
        log.lines()
            .filter(|l| l.contains("revo"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        s.counters["link_handshakes"] >= 1,
        "it learnt nothing from its peers"
    );
    assert!(
        scene.ping(OFFLINE, REVOKED).is_err(),
        "it still reaches the revoked node"
    );
}
