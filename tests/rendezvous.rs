//! Rendezvous against a real Prosody: who is "online in my overlay".
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::time::{Duration, Instant};

use support::*;

/// 3 nodes in overlay "alpha" and 2 in "beta", across two accounts and several resources of
/// each: every node lists exactly the members of its own overlay within 2 s of the last login,
/// and a stopped node disappears from the others' lists within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_lists_exactly_its_overlay_members() {
    let server = prosody("one.test", &["alice", "bob"], true, |_| {});
    let addr = server.c2s_addr();
    let friends = ["alice@one.test", "bob@one.test"];
    let layout = [
        ("alice-a1", "alice@one.test", "alpha"),
        ("alice-a2", "alice@one.test", "alpha"),
        ("bob-a1", "bob@one.test", "alpha"),
        ("alice-b1", "alice@one.test", "beta"),
        ("bob-b1", "bob@one.test", "beta"),
    ];
    let dir = tempdir("ringlet-rdv-");
    let mut nodes: Vec<NodeProcess> = layout
        .iter()
        .map(|(name, jid, overlay)| {
            let spec = NodeSpec::new(jid, &addr, overlay, &friends);
            NodeProcess::spawn(name, &spec, &dir.path().join(name), None)
        })
        .collect();
    let mut ids = Vec::new();
    for n in &nodes {
        ids.push(n.online(Duration::from_secs(10)).await.node_id);
    }
    let last_login = Instant::now();
    let expected = |i: usize| -> Vec<String> {
        let mut v: Vec<String> = (0..layout.len())
            .filter(|&j| j != i && layout[j].2 == layout[i].2)
            .map(|j| ids[j].clone())
            .collect();
        v.sort();
        v
    };
    expect_peers_by(&nodes, expected, last_login + Duration::from_secs(2), String::new).await;
    // alpha membership is stable: no node from beta ever showed up (checked once more now)
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(peer_ids(&n.status().await.unwrap()), expected(i), "{}", n.name);
    }

    // Stop alice-a2: it leaves with exit code 0 and vanishes from alice-a1 and bob-a1.
    let gone = ids[1].clone();
    assert_eq!(
        nodes[1].stop(),
        Some(0),
        "clean stop exits 0:\n{}",
        nodes[1].log()
    );
    let stopped = Instant::now();
    for n in [&nodes[0], &nodes[2]] {
        let left = wait(Duration::from_secs(2), || async {
            n.status()
                .await
                .filter(|s| !peer_ids(s).contains(&gone))
                .map(|_| ())
        })
        .await;
        assert!(
            left.is_some(),
            "{} still lists the stopped node after {:?}",
            n.name,
            stopped.elapsed()
        );
    }
    // beta is untouched
    assert_eq!(peer_ids(&nodes[3].status().await.unwrap()), vec![ids[4].clone()]);
    for n in nodes.iter_mut() {
        n.stop();
    }
}

/// Without a shared roster, friends subscribe to each other and accept each other's requests;
/// someone who is not a friend gets no subscription, no membership and no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_subscribe_and_strangers_are_ignored() {
    let server = prosody("one.test", &["alice", "bob", "carol"], false, |_| {});
    let addr = server.c2s_addr();
    let dir = tempdir("ringlet-friends-");
    let alice = NodeProcess::spawn(
        "alice",
        &NodeSpec::new("alice@one.test", &addr, "alpha", &["bob@one.test"]),
        &dir.path().join("alice"),
        None,
    );
    let bob = NodeProcess::spawn(
        "bob",
        &NodeSpec::new("bob@one.test", &addr, "alpha", &["alice@one.test"]),
        &dir.path().join("bob"),
        None,
    );
    // carol considers alice a friend, but alice does not know carol
    let carol = NodeProcess::spawn(
        "carol",
        &NodeSpec::new("carol@one.test", &addr, "alpha", &["alice@one.test"]),
        &dir.path().join("carol"),
        None,
    );
    let a = alice.online(Duration::from_secs(10)).await.node_id;
    let b = bob.online(Duration::from_secs(10)).await.node_id;
    carol.online(Duration::from_secs(10)).await;
    let mutual = wait(Duration::from_secs(5), || async {
        let (sa, sb) = (alice.status().await?, bob.status().await?);
        (peer_ids(&sa) == vec![b.clone()] && peer_ids(&sb) == vec![a.clone()]).then_some(())
    })
    .await;
    assert!(
        mutual.is_some(),
        "alice and bob did not find each other:\n{}\n{}",
        alice.log(),
        bob.log()
    );
    // Once alice has seen (and ignored) carol's subscription request, carol must see nobody.
    let ignored = wait(Duration::from_secs(5), || async {
        let sa = alice.status().await?;
        (sa.counters["strangers_ignored"] >= 1).then_some(())
    })
    .await;
    assert!(
        ignored.is_some(),
        "alice never saw carol's request:
{}",
        alice.log()
    );
    let sc = carol.status().await.unwrap();
    assert!(
        sc.peers.is_empty(),
        "carol must not see alice: {:?}",
        peer_ids(&sc)
    );
    let sa = alice.status().await.unwrap();
    assert_eq!(peer_ids(&sa), vec![b.clone()]);
    assert!(
        sa.counters["strangers_ignored"] >= 1,
        "carol's subscription request is counted"
    );
}

/// XEP-0215: the STUN service Prosody advertises shows up in status; without one, the
/// configured fallback does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_services_come_from_xep0215_or_the_config() {
    let with = prosody("one.test", &["alice"], false, |s| {
        s.stun = vec![("203.0.113.9".into(), 3479)]
    });
    let without = prosody("two.test", &["bob"], false, |s| s.stun.clear());
    let dir = tempdir("ringlet-extdisco-");
    let mut spec_a = NodeSpec::new("alice@one.test", &with.c2s_addr(), "alpha", &[]);
    spec_a.extra = "[stun]\nservers = [\"198.51.100.1:3478\"]\n".into();
    let mut spec_b = NodeSpec::new("bob@two.test", &without.c2s_addr(), "alpha", &[]);
    spec_b.extra = spec_a.extra.clone();
    let a = NodeProcess::spawn("alice", &spec_a, &dir.path().join("a"), None);
    let b = NodeProcess::spawn("bob", &spec_b, &dir.path().join("b"), None);
    a.online(Duration::from_secs(10)).await;
    b.online(Duration::from_secs(10)).await;
    // Until the XEP-0215 answer arrives, status shows the configured fallback: wait for the
    // server's list (it comes one round trip after login; a loaded machine can take a while).
    let sa = wait(Duration::from_secs(10), || async {
        a.status()
            .await
            .filter(|s| s.services.iter().any(|svc| svc.source == "xep-0215"))
    })
    .await
    .unwrap_or_else(|| panic!("no XEP-0215 services:\n{}", a.log()));
    assert_eq!(sa.services.len(), 1);
    assert_eq!(
        (
            sa.services[0].host.as_str(),
            sa.services[0].port,
            sa.services[0].source.as_str()
        ),
        ("203.0.113.9", Some(3479), "xep-0215")
    );
    let sb = b.status().await.unwrap();
    assert_eq!(sb.services.len(), 1);
    assert_eq!(
        (sb.services[0].host.as_str(), sb.services[0].source.as_str()),
        ("198.51.100.1", "config")
    );
}
