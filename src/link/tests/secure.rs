//! Links with security on: everything sealed in Noise sessions bound to NodeIds and group
//! certificates; strangers, borrowed identities and tampered packets get nowhere.

use super::*;
use crate::identity::NodeKey;
use crate::secure::cert::Ca;
use crate::secure::noise::Local;
use crate::secure::revocation::{Crl, Revocation, Target};

const UNIX: u64 = 1_800_000_000;

/// Who a test node claims to be: its certificate's CA seed and user.
pub(super) struct Grant {
    ca: u8,
    user: &'static str,
}

pub(super) const MEMBER_0: Grant = Grant {
    ca: 1,
    user: "n0@example.test",
};
pub(super) const MEMBER_1: Grant = Grant {
    ca: 1,
    user: "n1@example.test",
};

pub(super) fn secure_world(a: Kind, b: Kind, grants: [Grant; 2]) -> World {
    secure_world_with(a, b, grants, &Config::default())
}

fn secure_world_with(a: Kind, b: Kind, grants: [Grant; 2], cfg: &Config) -> World {
    secure_world_revoking(a, b, grants, cfg, &[])
}

/// Every node's CRL revokes the certificates with these serials (node `i`'s serial is `i`).
fn secure_world_revoking(a: Kind, b: Kind, grants: [Grant; 2], cfg: &Config, revoked: &[u64]) -> World {
    build_secure_world(a, b, grants, cfg, revoked, [None, None])
}

/// Node `i`'s hellos carry `hello_flags[i]` where given (else what this build and CPU say).
pub(super) fn build_secure_world(
    a: Kind,
    b: Kind,
    grants: [Grant; 2],
    cfg: &Config,
    revoked: &[u64],
    hello_flags: [Option<u8>; 2],
) -> World {
    let now = Instant::now();
    let group = Ca::from_seed("friends", [1; 32]).unwrap();
    let mut crl = Crl::default();
    for serial in revoked {
        assert!(crl.add(
            &group.public(),
            Revocation::sign(&group, Target::Serial(*serial), UNIX)
        ));
    }
    let mut certs = Vec::new();
    let nodes: Vec<Node> = grants
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let key = NodeKey::from_secret([i as u8 + 1; 32]);
            let ca = Ca::from_seed("friends", [g.ca; 32]).unwrap();
            let cert = ca.sign(
                key.public_bytes(),
                &g.user.parse().unwrap(),
                i as u64,
                0,
                UNIX + 86_400,
            );
            certs.push(cert.clone());
            let local = Local::new(key.secret_bytes(), &cert, 0);
            let security = Security {
                local: match hello_flags[i] {
                    Some(flags) => local.with_cipher_flags(flags),
                    None => local,
                },
                // Every node believes in CA 1: the group.
                ca: Ca::from_seed("friends", [1; 32]).unwrap().public(),
                epoch: now,
                epoch_unix: UNIX,
                crl: crl.clone(),
            };
            node_with(now, i, [a, b][i], cfg, key.node_id().0, Some(security))
        })
        .collect();
    let mut w = world_of(now, nodes);
    // What rendezvous hands out: each peer's key and certificate.
    for i in 0..2 {
        let key = NodeKey::from_secret([(1 - i) as u8 + 1; 32]).public_bytes();
        let cert = certs[1 - i].emit();
        let peer = w.nodes[1 - i].id;
        let now = w.now;
        w.nodes[i].links.set_member_identity(now, &peer, key, Some(&cert));
    }
    w
}

pub(super) fn kind_of(frame: &[u8]) -> u8 {
    frame.get(1).copied().unwrap_or(0)
}

#[test]
fn members_handshake_punch_and_carry_everything_sealed() {
    // As in the daemon: links on demand, the peer's key and certificate known (from its
    // presence) before anything is sent.
    let cfg = Config {
        on_demand: true,
        ..Config::default()
    };
    let mut w = secure_world_with(
        Kind::PortRestricted,
        Kind::PortRestricted,
        [MEMBER_0, MEMBER_1],
        &cfg,
    );
    w.send(0, b"early");
    assert_eq!(w.held, 1, "the first datagram waits for the handshake");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    for i in 0..5u8 {
        w.send(0, &[i; 100]);
        w.send(1, &[i; 100]);
    }
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.nodes[1].got[0], b"early");
    // Node 0's offer rode in its IK init: the peer's certificate came with its addresses.
    assert!(
        w.nodes[0].links.counters().early_out >= 1,
        "nothing rode in the init"
    );
    assert_eq!(w.nodes[1].got.len(), 6, "every datagram arrived once");
    assert_eq!(w.nodes[0].got.len(), 5);
    assert!(w.sent.0 >= 10, "datagrams went direct");
    for i in 0..2 {
        let c = w.nodes[i].links.counters();
        assert_eq!(c.handshakes, 1, "node {i}: one IK handshake");
        assert_eq!(
            (c.handshakes_refused, c.secure_dropped, c.plaintext_refused),
            (0, 0, 0)
        );
    }
    // Nothing on the wire but sealed frames (STUN checks are not frames).
    assert!(!w.seen.is_empty());
    for f in &w.seen {
        assert_eq!(kind_of(f), 9, "a frame of kind {} travelled in clear", kind_of(f));
    }
    let plain = b"\x00\x01\x02\x03".repeat(25);
    assert!(
        !w.seen.iter().any(|f| f.windows(plain.len()).any(|x| x == plain)),
        "application bytes visible on the wire"
    );
}

#[test]
fn busy_sessions_rekey_every_two_minutes_without_losing_a_datagram() {
    let mut w = secure_world(Kind::Full, Kind::PortRestricted, [MEMBER_0, MEMBER_1]);
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    // 8 datagrams a second both ways: busy (crate::secure::transport::BUSY_AFTER_MESSAGES)
    // half a minute into each session.
    let per_second = 4;
    let sends = 400 * per_second;
    for n in 0..sends {
        w.send(0, &(n as u32).to_be_bytes());
        w.send(1, &(n as u32).to_be_bytes());
        if n % per_second == per_second - 1 {
            w.run_for(Duration::from_secs(1));
        }
    }
    w.run_for(Duration::from_secs(1));
    for i in 0..2 {
        assert_eq!(
            w.nodes[i].got.len(),
            sends,
            "node {i} lost datagrams across rekeys"
        );
        let c = w.nodes[i].links.counters();
        assert!(
            c.handshakes >= 3,
            "node {i}: {} handshakes in 400 s",
            c.handshakes
        );
        assert_eq!(c.secure_dropped, 0);
    }
}

#[test]
fn quiet_sessions_rekey_every_thirty_minutes_without_losing_a_datagram() {
    let mut w = secure_world(Kind::Full, Kind::PortRestricted, [MEMBER_0, MEMBER_1]);
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    let handshakes = |w: &World| [0, 1].map(|i| w.nodes[i].links.counters().handshakes);
    let first = handshakes(&w);
    // A datagram each way every 20 s: upkeep-like traffic, far from busy.
    let mut sent = 0;
    for n in 0..100u32 {
        w.send(0, &n.to_be_bytes());
        w.send(1, &n.to_be_bytes());
        sent += 1;
        w.run_for(Duration::from_secs(20));
        if n == 87 {
            assert_eq!(
                handshakes(&w),
                first,
                "a handshake within 29.5 min of quiet traffic"
            );
        }
    }
    let after = handshakes(&w);
    for i in 0..2 {
        assert!(after[i] > first[i], "node {i}: no handshake in 2000 s");
        assert_eq!(
            w.nodes[i].got.len(),
            sent,
            "node {i} lost datagrams across the rekey"
        );
        assert_eq!(w.nodes[i].links.counters().secure_dropped, 0);
    }
}

#[test]
fn a_node_without_a_certificate_of_our_group_gets_no_link_and_no_data() {
    // Node 1 is on the roster but its certificate comes from another CA.
    let stranger = Grant {
        ca: 9,
        user: "n1@example.test",
    };
    let mut w = secure_world(Kind::PortRestricted, Kind::PortRestricted, [MEMBER_0, stranger]);
    w.send(1, b"let me in");
    w.send(0, b"hello?");
    w.run_for(Duration::from_secs(40));
    assert!(
        w.nodes[0].got.is_empty() && w.nodes[1].got.is_empty(),
        "data crossed"
    );
    assert!(!w.direct(), "a direct path opened");
    let refused: u64 = (0..2)
        .map(|i| w.nodes[i].links.counters().handshakes_refused)
        .sum();
    assert!(refused >= 2, "refusals not counted: {refused}");
    assert_eq!(w.nodes[0].links.counters().handshakes, 0);
}

#[test]
fn a_member_certificate_for_another_user_is_refused() {
    // A valid certificate of the group, but for a user other than the JID the node speaks as.
    let impostor = Grant {
        ca: 1,
        user: "eve@example.test",
    };
    // On demand: both keys and certificates are known before the first datagram, so an init
    // would carry it early — but only to a peer whose certificate checked out.
    let cfg = Config {
        on_demand: true,
        ..Config::default()
    };
    let mut w = secure_world_with(Kind::Full, Kind::Full, [MEMBER_0, impostor], &cfg);
    w.send(1, b"trust me");
    w.send(0, b"who are you");
    w.run_for(Duration::from_secs(20));
    assert!(
        w.nodes[0].got.is_empty() && w.nodes[1].got.is_empty(),
        "data crossed"
    );
    assert!(w.nodes[0].links.counters().handshakes_refused >= 1);
    assert_eq!(w.nodes[0].links.counters().early_out, 0);
}

#[test]
fn replayed_tampered_truncated_and_plaintext_frames_are_dropped_without_effect() {
    let mut w = secure_world(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1]);
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    w.seen.clear();
    w.send(0, b"once");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.nodes[1].got, vec![b"once".to_vec()]);
    let sealed = w.seen.iter().find(|f| kind_of(f) == 9).unwrap().clone();
    let Some(Path::Direct { socket, remote, .. }) = w.nodes[1].links.path(&w.nodes[0].id) else {
        panic!("direct path");
    };
    let now = w.now;
    let links = &mut w.nodes[1].links;
    links.handle_frame(now, socket, remote, sealed.clone()); // replay
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    links.handle_frame(now, socket, remote, flipped);
    links.handle_frame(now, socket, remote, sealed[..sealed.len() - 5].to_vec());
    let plain = Frame::emit_data(&[9; 8], b"forged");
    links.handle_frame(now, socket, remote, plain.clone());
    let from = w.nodes[0].id;
    w.nodes[1].links.handle_relay(now, from, &plain);
    w.flush();
    assert_eq!(
        w.nodes[1].got,
        vec![b"once".to_vec()],
        "a dropped packet had an effect"
    );
    let c = w.nodes[1].links.counters();
    assert_eq!(c.secure_dropped, 3);
    assert_eq!(c.plaintext_refused, 2);
    // The session still works.
    w.send(0, b"twice");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.nodes[1].got.len(), 2);
}

#[test]
fn a_relay_that_tampers_with_handshakes_gets_no_session_and_learns_no_address() {
    // A man in the middle of the XMPP relay rewrites bytes of every datagram it passes
    // (where candidates would be, in clear): handshakes fail, no offer is ever read.
    let mut w = secure_world(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1]);
    w.relay_mitm = Some(|d: &mut Vec<u8>| {
        if d.len() > 40 {
            d[40] ^= 0xff;
        }
    });
    w.send(0, b"hi");
    w.run_for(Duration::from_secs(40));
    assert!(w.nodes[1].got.is_empty());
    assert!(!w.direct());
    for i in 0..2 {
        let c = w.nodes[i].links.counters();
        assert_eq!(c.handshakes, 0);
        assert_eq!(
            c.direct_up, 0,
            "node {i} went direct to an address it never verified"
        );
    }
    let dropped: u64 = (0..2).map(|i| w.nodes[i].links.counters().secure_dropped).sum();
    let refused: u64 = (0..2)
        .map(|i| w.nodes[i].links.counters().handshakes_refused)
        .sum();
    assert!(dropped + refused > 0, "tampering was not noticed");
}

#[test]
fn a_replayed_init_does_not_replace_the_session() {
    // Links on demand: nothing starts before the first datagram, when both keys are known,
    // so the handshake is IK (whose init alone sets up the responder's session).
    let cfg = Config {
        on_demand: true,
        ..Config::default()
    };
    let mut w = secure_world_with(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1], &cfg);
    w.send(0, b"hello");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    // An init node 1 took from node 0 (its own inits are sealed to node 0's key).
    let init = w
        .seen_by(1)
        .find(|f| kind_of(f) == 9 && f.get(10) == Some(&1))
        .expect("node 0 sent an init")
        .clone();
    assert_eq!(init[11], crate::secure::wire::PATTERN_IK);
    let from = w.nodes[0].id;
    let now = w.now;
    w.nodes[1].links.handle_relay(now, from, &init);
    w.flush();
    assert_eq!(
        w.nodes[1].links.counters().secure_dropped,
        1,
        "the replay was not refused"
    );
    assert_eq!(w.nodes[1].links.counters().handshakes, 1);
    w.send(1, b"still here");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.nodes[0].got, vec![b"still here".to_vec()], "the session broke");
}

#[test]
fn a_flood_of_inits_is_read_at_the_allowed_rate_only() {
    // The per-peer allowance alone (no cookies: see the busy-node test for those).
    let cfg = Config {
        cookie_after: u32::MAX,
        ..Config::default()
    };
    let mut w = secure_world_with(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1], &cfg);
    w.send(0, b"hello");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    let init = w
        .seen_by(1)
        .find(|f| kind_of(f) == 9 && f.get(10) == Some(&1))
        .expect("node 0 sent an init")
        .clone();
    let from = w.nodes[0].id;
    let before = w.nodes[1].links.counters().clone();
    // 100 copies at once, then one a second for 5 s.
    let now = w.now;
    for _ in 0..100 {
        w.nodes[1].links.handle_relay(now, from, &init);
    }
    let c = w.nodes[1].links.counters().clone();
    let read = (c.handshakes + c.handshakes_refused + c.secure_dropped)
        - (before.handshakes + before.handshakes_refused + before.secure_dropped);
    assert!(read <= u64::from(INIT_BURST), "{read} inits read in a burst");
    assert!(c.inits_limited - before.inits_limited >= 100 - u64::from(INIT_BURST));
    for s in 1..=5 {
        let at = now + INIT_REFILL * s;
        w.nodes[1].links.handle_relay(at, from, &init);
    }
    let limited = w.nodes[1].links.counters().inits_limited - c.inits_limited;
    assert!(limited <= 1, "{limited} of 5 paced inits refused");
    // And the session still carries data.
    w.send(1, b"still here");
    w.run_for(Duration::from_millis(200));
    assert!(w.nodes[0].got.contains(&b"still here".to_vec()));
}

#[test]
fn a_revoked_member_gets_no_session() {
    // Node 1's certificate (serial 1) is on node 0's revocation list.
    let cfg = Config {
        on_demand: true,
        ..Config::default()
    };
    let mut w = secure_world_revoking(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1], &cfg, &[1]);
    w.send(0, b"to a revoked node");
    w.send(1, b"from a revoked node");
    w.run_for(Duration::from_secs(20));
    assert!(
        w.nodes[0].got.is_empty() && w.nodes[1].got.is_empty(),
        "data crossed"
    );
    assert_eq!(w.nodes[0].links.counters().handshakes, 0);
    assert!(w.nodes[0].links.counters().handshakes_refused >= 1);
    assert_eq!(
        w.nodes[0].links.counters().early_out,
        0,
        "early frames to a revoked key"
    );
}

fn group_revokes(target: Target) -> Revocation {
    Revocation::sign(&Ca::from_seed("friends", [1; 32]).unwrap(), target, UNIX)
}

#[test]
fn a_revocation_closes_a_live_link_at_once_and_refuses_the_peer_after() {
    let mut w = secure_world(Kind::PortRestricted, Kind::PortRestricted, [MEMBER_0, MEMBER_1]);
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    w.send(1, b"before");
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.nodes[0].got, [b"before".to_vec()]);

    let foreign = Revocation::sign(
        &Ca::from_seed("friends", [9; 32]).unwrap(),
        Target::Serial(1),
        UNIX,
    );
    assert_eq!(w.nodes[0].links.revoke(foreign), Revoked::Refused);
    assert_eq!(w.nodes[0].links.counters().revocations_refused, 1);
    assert!(w.direct(), "a foreign revocation changed something");

    assert_eq!(
        w.nodes[0].links.revoke(group_revokes(Target::Serial(1))),
        Revoked::Added
    );
    assert_eq!(
        w.nodes[0].links.revoke(group_revokes(Target::Serial(1))),
        Revoked::Known
    );
    let peer = w.nodes[1].id;
    assert!(w.nodes[0].links.is_revoked(&peer));
    assert_eq!(w.path(0), Some(Path::Xmpp), "the direct path stayed open");
    w.run_for(Duration::from_millis(10));
    assert_eq!(w.nodes[0].revoked, 1);

    // Whatever the revoked peer still sends (its session is gone on our side) is dropped, and
    // nothing goes to it.
    let now = w.now;
    assert_eq!(w.nodes[0].links.send(now, &peer, b"to revoked"), Ok(None));
    assert_eq!(w.nodes[0].links.send_app(now, &peer, 0, b"to revoked"), Ok(None));
    assert!(w.nodes[0].links.counters().revoked_refused >= 1);
    for _ in 0..3 {
        w.send(1, b"after");
    }
    w.run_for(Duration::from_secs(20));
    assert_eq!(
        w.nodes[0].got,
        [b"before".to_vec()],
        "data from a revoked peer arrived"
    );
    assert_eq!(
        w.path(0),
        Some(Path::Xmpp),
        "a direct path to a revoked peer came back"
    );
    assert!(
        !w.nodes[0].links.want(now, &peer, true),
        "the ring may still link to it"
    );
}

#[test]
fn a_peer_with_a_newer_crl_hands_it_over_in_the_handshake() {
    let mut w = secure_world(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1]);
    // Node 0 learnt of revocations node 1 missed (of users neither of them is).
    for user in ["gone@example.test", "left@example.test"] {
        let rev = group_revokes(Target::User(user.into()));
        assert_eq!(w.nodes[0].links.revoke(rev), Revoked::Added);
    }
    assert_eq!(w.nodes[1].links.crl().map(Crl::version), Some(0));
    w.send(1, b"hello");
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.nodes[0].got, [b"hello".to_vec()]);
    assert_eq!(w.nodes[1].links.crl().map(Crl::version), Some(2));
    assert_eq!(w.nodes[1].crl_grew, 2);
    assert_eq!(w.nodes[0].crl_grew, 0);
}

#[test]
fn a_revocation_a_peer_sends_in_its_session_is_taken_and_a_malformed_one_counted() {
    // Node 1 hands node 0 a revocation of node 1's own key (as a stale copy of a CRL would):
    // node 0 checks it, keeps it and cuts node 1 off.
    let mut w = secure_world(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1]);
    w.send(1, b"x");
    w.run_for(Duration::from_secs(2));
    let (peer0, peer1) = (w.nodes[0].id, w.nodes[1].id);
    let key1 = NodeKey::from_secret([2; 32]).public_bytes();
    let sealed = |w: &mut World, body: Body| {
        let now = w.now;
        match w.nodes[1].links.out(now, peer0, body, true) {
            Some(Transmit::Relay { data, .. }) => data,
            other => panic!("no sealed relay frame: {other:?}"),
        }
    };
    let bad = sealed(&mut w, Body::Revocation(vec![b'R', b'R', 0, 3]));
    let now = w.now;
    w.nodes[0].links.handle_relay(now, peer1, &bad);
    assert_eq!(w.nodes[0].links.counters().revocations_refused, 1);
    assert!(!w.nodes[0].links.is_revoked(&peer1));

    let good = sealed(
        &mut w,
        Body::Revocation(group_revokes(Target::NodeKey(key1)).emit()),
    );
    w.nodes[0].links.handle_relay(now, peer1, &good);
    assert!(w.nodes[0].links.is_revoked(&peer1));
    w.run_for(Duration::from_millis(10));
    assert_eq!((w.nodes[0].crl_grew, w.nodes[0].revoked), (1, 1));
}

#[test]
fn a_busy_node_answers_inits_with_a_cookie_first_and_keeps_nothing() {
    // Every init counts as load: each must come back with a cookie before it is read.
    let cfg = Config {
        on_demand: true,
        cookie_after: 0,
        ..Config::default()
    };
    let mut w = secure_world_with(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1], &cfg);
    w.send(0, b"hello");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| !w.nodes[1].got.is_empty()));
    assert_eq!(w.nodes[1].got[0], b"hello");
    let (c0, c1) = (
        w.nodes[0].links.counters().clone(),
        w.nodes[1].links.counters().clone(),
    );
    assert!(c1.cookies_sent >= 1 && c0.cookie_inits >= 1, "{c0:?} / {c1:?}");

    // A flood of cookieless inits (a replayed one) costs the busy node no key work and no
    // state: each gets a cookie, nothing more.
    let init = w
        .seen_by(1)
        .find(|f| kind_of(f) == 9 && f.get(10) == Some(&1) && f.get(11).is_some_and(|p| p & 0x80 == 0))
        .expect("node 0 sent a cookieless init")
        .clone();
    let from = w.nodes[0].id;
    let now = w.now + Duration::from_secs(10);
    for _ in 0..100 {
        w.nodes[1].links.handle_relay(now, from, &init);
    }
    let c = w.nodes[1].links.counters().clone();
    assert_eq!(c.cookies_sent - c1.cookies_sent, 100);
    assert_eq!(
        (
            c.handshakes,
            c.handshakes_refused,
            c.secure_dropped,
            c.inits_limited
        ),
        (
            c1.handshakes,
            c1.handshakes_refused,
            c1.secure_dropped,
            c1.inits_limited
        ),
        "an init without a cookie was read"
    );
    // A forged cookie is no better.
    let forged = crate::secure::wire::with_cookie(&init[10..], &[0; 16]);
    let mut frame = init[..10].to_vec();
    frame.extend_from_slice(&forged);
    w.nodes[1].links.handle_relay(now, from, &frame);
    assert_eq!(w.nodes[1].links.counters().cookies_sent - c.cookies_sent, 1);
    // The session still carries data both ways.
    w.send(1, b"still here");
    w.run_for(Duration::from_millis(200));
    assert!(w.nodes[0].got.contains(&b"still here".to_vec()));
}

#[test]
fn a_cookie_for_an_init_that_is_not_pending_is_dropped() {
    let mut w = secure_world(Kind::Full, Kind::Full, [MEMBER_0, MEMBER_1]);
    w.send(0, b"hello");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| w.direct()));
    let path = w.nodes[1].links.path_id;
    let cookie = Frame {
        path,
        body: Body::Secure(crate::secure::wire::cookie(12345, &[1; 16])),
    }
    .emit();
    let (from, now) = (w.nodes[1].id, w.now);
    let before = w.nodes[0].links.counters().clone();
    w.nodes[0].links.handle_relay(now, from, &cookie);
    let c = w.nodes[0].links.counters();
    assert_eq!(c.secure_dropped, before.secure_dropped + 1);
    assert_eq!(c.cookie_inits, before.cookie_inits);
}

/// The responder's side of a handshake is up as soon as it answers, and its punch may go
/// direct before its answer, on the slower relay, reaches the initiator: data it sends then
/// overtakes the answer. The initiator holds it and opens it when the answer lands.
#[test]
fn data_that_overtakes_the_handshake_answer_is_held_not_lost() {
    let cfg = Config {
        on_demand: true,
        ..Config::default()
    };
    let mut w = secure_world_with(Kind::Open, Kind::PortRestricted, [MEMBER_0, MEMBER_1], &cfg);
    // A busy XMPP server: the relay takes longer than a punch (two UDP round trips).
    w.relay_latency = Duration::from_millis(80);
    w.send(0, b"first");
    assert!(w.run_until(w.now + Duration::from_secs(3), |w| matches!(
        w.path(1),
        Some(Path::Direct { .. })
    )));
    assert_eq!(
        w.nodes[0].links.counters().handshakes,
        0,
        "the race needs node 1 direct before node 0's session is up"
    );
    w.send(1, b"overtakes");
    assert_eq!(w.sent.0, 1, "the reply went direct");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.nodes[0].got, vec![b"overtakes".to_vec()]);
    let c = w.nodes[0].links.counters();
    assert_eq!((c.overtaken_held, c.secure_dropped), (1, 0));
    assert_eq!(w.nodes[1].got, vec![b"first".to_vec()]);
}
