//! Rendezvous and relay between alice@one.test and bob@two.test on two federated Prosody
//! servers (dialback, no TLS) inside a network namespace of their own.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::time::{Duration, Instant};

use ringlet_lab::{Netns, Prosody, ProsodySpec};
use support::*;

struct Federation {
    // Field order matters: servers stop before the namespace is deleted.
    one: Prosody,
    two: Prosody,
    ns: Netns,
}

fn federation(tag: &str) -> Federation {
    let ns = Netns::create(tag).expect("federation tests need network namespaces (run as root)");
    let hosts = vec![
        ("127.0.0.1".parse().unwrap(), "one.test".to_string()),
        ("127.0.0.2".parse().unwrap(), "two.test".to_string()),
    ];
    let start = |domain: &str, ip: &str, user: &str| {
        let mut spec = ProsodySpec::new(domain).unwrap();
        spec.interface = ip.parse().unwrap();
        spec.c2s_port = 5222;
        spec.s2s_port = Some(5269);
        spec.hosts = hosts.clone();
        spec.shared_roster = vec!["alice@one.test".into(), "bob@two.test".into()];
        spec.netns = Some(ns.name().to_owned());
        let mut p = Prosody::new(spec).unwrap();
        p.register(user, PASSWORD).unwrap();
        p.launch().unwrap();
        p
    };
    let one = start("one.test", "127.0.0.1", "alice");
    let two = start("two.test", "127.0.0.2", "bob");
    Federation { one, two, ns }
}

const FRIENDS: [&str; 2] = ["alice@one.test", "bob@two.test"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_across_federated_servers() {
    let fed = federation("fedrdv");
    let dir = tempdir("ringlet-fed-rdv-");
    let layout = [
        ("alice-a", "alice@one.test", fed.one.c2s_addr(), "alpha"),
        ("bob-a", "bob@two.test", fed.two.c2s_addr(), "alpha"),
        ("alice-b", "alice@one.test", fed.one.c2s_addr(), "beta"),
        ("bob-b", "bob@two.test", fed.two.c2s_addr(), "beta"),
    ];
    let mut nodes: Vec<NodeProcess> = layout
        .iter()
        .map(|(name, jid, addr, overlay)| {
            NodeProcess::spawn(
                name,
                &NodeSpec::new(jid, addr, overlay, &FRIENDS),
                &dir.path().join(name),
                Some(&fed.ns),
            )
        })
        .collect();
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(n.online(Duration::from_secs(10)).await.node_id);
    }
    let last_login = Instant::now();
    // alpha: 0 <-> 1, beta: 2 <-> 3
    let partner = [1, 0, 3, 2];
    let want = |i: usize| vec![ids[partner[i]].clone()];
    expect_peers_by(&nodes, want, last_login + Duration::from_secs(2), || {
        fed.one.log()
    })
    .await;
    assert_eq!(nodes[1].stop(), Some(0));
    let gone = ids[1].clone();
    let left = wait(Duration::from_secs(2), || async {
        nodes[0]
            .status()
            .await
            .filter(|s| !peer_ids(s).contains(&gone))
            .map(|_| ())
    })
    .await;
    assert!(left.is_some(), "alice-a still lists bob-a");
    assert_eq!(peer_ids(&nodes[2].status().await.unwrap()), vec![ids[3].clone()]);
}

#[test]
fn relay_across_federated_servers() {
    let fed = federation("fedrelay");
    let (one, two) = (fed.one.c2s_addr(), fed.two.c2s_addr());
    // The nodes must open their sockets inside the namespace: run them on a thread there.
    let worker = fed
        .ns
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let dir = tempdir("ringlet-fed-relay-");
                let mut spec_a = NodeSpec::new("alice@one.test", &one, "alpha", &FRIENDS);
                let mut spec_b = NodeSpec::new("bob@two.test", &two, "alpha", &FRIENDS);
                spec_a.extra = "[udp]\nenabled = false\n".into();
                spec_b.extra = spec_a.extra.clone();
                let (mut a, mut b) = embedded_pair(&spec_a, &spec_b, dir.path()).await;
                let data = datagrams(1000, 200 * 1024, 43);
                let report = exchange(&mut a, &mut b, data, Duration::from_secs(300)).await;
                eprintln!("federated relay: {report}");
                assert!(report.send_failures.is_empty(), "{:?}", report.send_failures);
                a.shutdown().await.unwrap();
                b.shutdown().await.unwrap();
            })
        })
        .unwrap();
    worker.join().expect("federated relay failed");
}
