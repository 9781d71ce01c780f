//! The ring in the NAT lab: eight real `ringlet up` processes, two of them behind symmetric
//! NATs with keys chosen so that they are ring neighbours (they need each other but cannot
//! punch). They must form one consistent ring, link the symmetric pair by a `tunnel` through
//! a common neighbour, and heal when two peers are killed. The DHT works across it through
//! the `ringlet dht` CLI: put on one peer, get on others, remove, and a value survives the kill.
#![allow(clippy::disallowed_methods)] // integration tests wait on real time

mod support;

use std::time::{Duration, Instant};

use ringlet::identity::NodeKey;
use ringlet::node::status::Status;
use ringlet_lab::natlab::LabOptions;
use ringlet_lab::NatType;
use support::scene::{dht_cli, dht_values_become, Scene};
use support::wait;

/// Peers in ring order (their keys are sorted by NodeId before they are handed out).
const PEERS: [(&str, NatType); 8] = [
    ("p0", NatType::Full),
    ("p1", NatType::Restricted),
    ("p2", NatType::Open),
    ("p3", NatType::Symmetric),
    ("p4", NatType::Symmetric),
    ("p5", NatType::Full),
    ("p6", NatType::Restricted),
    ("p7", NatType::Open),
];
const SYM_A: usize = 3;
const SYM_B: usize = 4;

/// Each alive node's left and right neighbours are the true ones among `alive`.
fn ring_is_consistent(ids: &[String], alive: &[usize], statuses: &[Option<Status>]) -> Result<(), String> {
    let n = alive.len();
    for (k, &i) in alive.iter().enumerate() {
        let s = statuses[i].as_ref().ok_or(format!("p{i} has no status"))?;
        let want_left = &ids[alive[(k + n - 1) % n]];
        let want_right = &ids[alive[(k + 1) % n]];
        if s.ring.left.as_ref() != Some(want_left) || s.ring.right.as_ref() != Some(want_right) {
            return Err(format!(
                "p{i}: left {:?} right {:?}, want {want_left} / {want_right}",
                s.ring.left, s.ring.right
            ));
        }
    }
    Ok(())
}

/// Every direct path a node holds is one of its ring links: the ring chose whom to punch (no
/// application traffic flows here to open others).
fn paths_follow_the_ring(alive: &[usize], statuses: &[Option<Status>]) -> Result<(), String> {
    for &i in alive {
        let s = statuses[i].as_ref().ok_or(format!("p{i} has no status"))?;
        let paths = s.peers.iter().filter(|p| p.path != "xmpp").count();
        if paths > s.ring.links {
            return Err(format!(
                "p{i}: {paths} direct or tunnel paths but {} ring links",
                s.ring.links
            ));
        }
    }
    Ok(())
}

/// Pairs with a direct path (counted once, as the lower index sees it).
fn direct_pairs(scene: &Scene, statuses: &[Option<Status>]) -> usize {
    let mut pairs = 0;
    for (i, s) in statuses.iter().enumerate() {
        let Some(s) = s else { continue };
        pairs += s
            .peers
            .iter()
            .filter(|p| p.path == "direct" && scene.ids[i] < p.node_id)
            .count();
    }
    pairs
}

/// The symmetric pair's path as both ends report it: ("tunnel", via) on each side.
fn tunnel_between(
    scene: &Scene,
    statuses: &[Option<Status>],
    a: usize,
    b: usize,
) -> Option<(String, String)> {
    let side = |x: usize, y: usize| {
        let peer = statuses[x]
            .as_ref()?
            .peers
            .iter()
            .find(|p| p.node_id == scene.ids[y])?;
        (peer.path == "tunnel").then(|| peer.via.clone()).flatten()
    };
    Some((side(a, b)?, side(b, a)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_peers_form_one_ring_tunnel_the_symmetric_neighbours_and_heal() {
    let mut keys: Vec<NodeKey> = (0..PEERS.len()).map(|_| NodeKey::generate().unwrap()).collect();
    keys.sort_by_key(|k| k.node_id().0);
    let scene = Scene::start_with_keys("ring8", &PEERS, LabOptions::default(), &keys).await;
    let ids = scene.ids.clone();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "keys were handed out in ring order");
    let everyone: Vec<usize> = (0..PEERS.len()).collect();
    let start = Instant::now();

    // One consistent ring, with the symmetric neighbours tunnelled through a third peer.
    let formed = wait(Duration::from_secs(90), || async {
        let st = scene.statuses().await;
        let consistent = ring_is_consistent(&ids, &everyone, &st).is_ok();
        let follow = paths_follow_the_ring(&everyone, &st).is_ok();
        let tunnel = tunnel_between(&scene, &st, SYM_A, SYM_B);
        (consistent && follow && tunnel.is_some()).then_some(tunnel)
    })
    .await;
    let st = scene.statuses().await;
    let Some(Some((via_a, via_b))) = formed else {
        panic!(
            "no consistent ring with a tunnel: {:?} / {:?} / tunnel {:?}\n{}\n----\n{}",
            ring_is_consistent(&ids, &everyone, &st),
            paths_follow_the_ring(&everyone, &st),
            tunnel_between(&scene, &st, SYM_A, SYM_B),
            scene.nodes[SYM_A].log(),
            scene.nodes[SYM_B].log()
        );
    };
    for via in [&via_a, &via_b] {
        assert!(
            ids.contains(via) && *via != ids[SYM_A] && *via != ids[SYM_B],
            "the tunnel must go through a third peer, not {via}"
        );
    }
    eprintln!(
        "ring formed {:?} after the nodes were online; p{SYM_A} ↔ p{SYM_B} tunnelled via {via_a} / {via_b}; \
         {} of 28 pairs direct",
        start.elapsed(),
        direct_pairs(&scene, &st)
    );

    // The DHT across the ring, through the CLI: a put on p1 is found from p6 and from a
    // symmetric-NAT peer; unknown keys have no values; oversized values are refused; a remove
    // is seen everywhere.
    let dht_started = Instant::now();
    let (ok, _, err) = dht_cli(&scene.nodes[1], &["put", "lobby/quake", "p1 hosts on 10.1.0.1"]);
    assert!(ok, "dht put failed: {err}");
    for i in [6, SYM_B] {
        if let Err(seen) = dht_values_become(&scene.nodes[i], "lobby/quake", &["p1 hosts on 10.1.0.1"]).await
        {
            panic!("p{i} does not see p1's value: {seen:?}\n{}", scene.nodes[i].log());
        }
    }
    eprintln!(
        "DHT put on p1 seen from p6 and p{SYM_B} after {:?}",
        dht_started.elapsed()
    );
    assert_eq!(
        dht_values_become(&scene.nodes[5], "nobody/put/this", &[]).await,
        Ok(())
    );
    let (ok, _, err) = dht_cli(&scene.nodes[1], &["put", "big", &"x".repeat(1025)]);
    assert!(
        !ok && err.contains("1 KiB"),
        "an oversized value must be refused: {err}"
    );
    let (ok, _, err) = dht_cli(
        &scene.nodes[1],
        &["remove", "lobby/quake", "p1 hosts on 10.1.0.1"],
    );
    assert!(ok, "dht remove failed: {err}");
    assert_eq!(
        dht_values_become(&scene.nodes[6], "lobby/quake", &[]).await,
        Ok(())
    );
    // A value that must outlive the two peers killed next (its holders may be among them).
    let (ok, _, err) = dht_cli(&scene.nodes[SYM_A], &["put", "survivor", "still here"]);
    assert!(ok, "dht put failed: {err}");
    assert_eq!(
        dht_values_become(&scene.nodes[2], "survivor", &["still here"]).await,
        Ok(())
    );

    // Kill two peers, the tunnel's relay among them: the ring heals around them and the
    // symmetric pair finds another relay.
    let relay = ids.iter().position(|id| *id == via_a).unwrap();
    let other = if relay == 7 { 0 } else { 7 };
    let dead = [relay, other];
    let mut scene = scene;
    for i in dead {
        scene.nodes[i].kill();
    }
    let killed = Instant::now();
    let alive: Vec<usize> = everyone.iter().copied().filter(|i| !dead.contains(i)).collect();
    let healed = wait(Duration::from_secs(90), || async {
        let mut st = scene.statuses().await;
        for i in dead {
            st[i] = None;
        }
        let ok = ring_is_consistent(&ids, &alive, &st).is_ok()
            && tunnel_between(&scene, &st, SYM_A, SYM_B).is_some();
        ok.then_some(())
    })
    .await;
    eprintln!("healed {:?} after two peers were killed", killed.elapsed());
    if healed.is_none() {
        let st = scene.statuses().await;
        panic!(
            "the ring did not heal: {:?} / tunnel {:?}\n{}",
            ring_is_consistent(&ids, &alive, &st),
            tunnel_between(&scene, &st, SYM_A, SYM_B),
            scene.nodes[SYM_A].log()
        );
    }
    let reader = alive.iter().copied().find(|i| *i != SYM_A).unwrap();
    if let Err(seen) = dht_values_become(&scene.nodes[reader], "survivor", &["still here"]).await {
        panic!("the value put before the kill is gone from p{reader}: {seen:?}");
    }
    eprintln!("the value put before the kill is still found from p{reader}");
}

/// A roster member whose certificate is of another group: the three members link, route and
/// share the DHT; the stranger gets no ring link, no ping answer and no DHT value, and its
/// attempts are refused and counted on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_member_of_another_group_gets_no_link_route_or_dht() {
    let peers = [
        ("m0", NatType::Full),
        ("m1", NatType::Restricted),
        ("m2", NatType::Open),
        ("xx", NatType::Full),
    ];
    let scene = Scene::start_with_strangers("stranger", &peers, LabOptions::default(), &[], &[3]).await;
    // The members in ring order (their NodeIds are random here).
    let mut members = vec![0, 1, 2];
    members.sort_by_key(|&i| scene.ids[i].clone());
    let members_ring = wait(Duration::from_secs(30), || async {
        let s = scene.statuses().await;
        ring_is_consistent(&scene.ids, &members, &s).ok()
    })
    .await;
    let s = scene.statuses().await;
    assert!(
        members_ring.is_some(),
        "the members formed no ring: {:?}",
        ring_is_consistent(&scene.ids, &members, &s)
    );
    let (ok, _, stderr) = dht_cli(&scene.nodes[0], &["put", "door", "the code is 1234"]);
    assert!(ok, "put failed: {stderr}");
    dht_values_become(&scene.nodes[1], "door", &["the code is 1234"])
        .await
        .expect("a member cannot read what another member put");
    assert!(scene.ping(0, 1).is_ok(), "members cannot ping each other");

    let (ok, stdout, _) = dht_cli(&scene.nodes[3], &["get", "door"]);
    assert!(
        !ok || stdout.trim().is_empty(),
        "the stranger read the DHT: {stdout}"
    );
    assert!(scene.ping(3, 0).is_err(), "the stranger's ping was answered");
    assert!(scene.ping(0, 3).is_err(), "a member's ping reached the stranger");
    let s = scene.statuses().await;
    let stranger = s[3].as_ref().expect("stranger status");
    assert_eq!(
        stranger.ring.links + stranger.ring.leaf_links,
        0,
        "the stranger has ring links"
    );
    assert_eq!(stranger.counters["link_handshakes"], 0);
    assert!(
        stranger.peers.iter().all(|p| p.path == "xmpp"),
        "the stranger has a direct path"
    );
    let refused: u64 = s
        .iter()
        .flatten()
        .map(|st| st.counters["link_handshakes_refused"])
        .sum();
    assert!(refused >= 3, "refusals not counted ({refused})");
    for (i, st) in s.iter().enumerate().take(3) {
        let st = st.as_ref().expect("member status");
        let to_stranger = st
            .peers
            .iter()
            .find(|p| p.node_id == scene.ids[3])
            .expect("rendezvous lists the stranger");
        assert_eq!(to_stranger.path, "xmpp", "m{i} opened a path to the stranger");
    }
}

/// A man in the middle of one peer's XMPP connection swaps a member's NodeId and static key,
/// in presence and in the address exchange, for its own — what a hostile server could do to
/// stand between two members. Neither side completes a handshake with anyone but who they
/// are: the fooled peer refuses the real member's handshake (its key does not hash to the id
/// it was told), the real member cannot read inits sealed to the impostor's key, and the
/// rest of the group is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_who_swaps_keys_completes_no_handshake() {
    use ringlet_lab::natlab::PUBLIC_IP;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, OnceLock};
    use support::mitm;
    use support::NodeSpec;

    let peers = [("a", NatType::Full), ("b", NatType::Full), ("c", NatType::Full)];
    let keys: Vec<NodeKey> = (0..3).map(|_| NodeKey::generate().unwrap()).collect();
    let impostor = NodeKey::generate().unwrap();
    let swaps = vec![
        (
            keys[1].node_id().to_string().into_bytes(),
            impostor.node_id().to_string().into_bytes(),
        ),
        (
            hex::encode(keys[1].public_bytes()).into_bytes(),
            hex::encode(impostor.public_bytes()).into_bytes(),
        ),
    ];
    let swapped: OnceLock<Arc<std::sync::atomic::AtomicU64>> = OnceLock::new();
    let tweak = |lab: &ringlet_lab::NatLab, i: usize, spec: &mut NodeSpec| {
        if i == 0 {
            let proxy = std::net::SocketAddr::from((PUBLIC_IP, 5223));
            let upstream = std::net::SocketAddr::from((PUBLIC_IP, 5222));
            let count = mitm::start(lab, proxy, upstream, swaps.clone(), Duration::from_secs(90));
            let _ = swapped.set(count);
            spec.server = proxy.to_string();
        }
    };
    let scene = Scene::start_custom("mitm", &peers, LabOptions::default(), &keys, &tweak).await;
    let fake = impostor.node_id().to_string();
    // a believes b is the impostor.
    let fooled = wait(Duration::from_secs(15), || async {
        let s = scene.status(0).await?;
        s.peers
            .iter()
            .find(|p| p.jid.starts_with("b@"))
            .filter(|p| p.node_id == fake)
            .map(|_| ())
    })
    .await;
    assert!(
        fooled.is_some(),
        "the swap did not take: {:?}",
        scene.status(0).await.map(|s| s.peers)
    );
    assert!(swapped.get().unwrap().load(Ordering::Relaxed) > 0);
    // a and c, untouched, link and talk.
    let ac = wait(Duration::from_secs(20), || async { scene.ping(0, 2).ok() }).await;
    assert!(ac.is_some(), "a and c cannot talk");
    // a and b try each other (handshakes retry with backoff) until a refusal is counted.
    let refused_by = wait(Duration::from_secs(20), || async {
        let (sa, sb) = (scene.status(0).await?, scene.status(1).await?);
        let refused = sa.counters["link_handshakes_refused"] + sb.counters["link_handshakes_refused"];
        (refused >= 1).then_some(())
    })
    .await;
    let (sa, sb) = (scene.status(0).await.unwrap(), scene.status(1).await.unwrap());
    let to_fake = sa
        .peers
        .iter()
        .find(|p| p.node_id == fake)
        .expect("a lists the impostor id");
    assert_eq!(to_fake.path, "xmpp", "a opened a path to the impostor id");
    assert!(scene.ping(1, 0).is_err(), "b's ping reached a through the swap");
    assert!(
        refused_by.is_some(),
        "no handshake was refused: a {:?} b {:?}",
        sa.counters,
        sb.counters
    );
}
