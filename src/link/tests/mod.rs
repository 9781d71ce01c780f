//! Two `Links` behind simulated NATs, with the XMPP relay as a 30 ms channel: connect-to-me,
//! path switching without loss, fallback and re-punching, and hostile input.
#![allow(clippy::disallowed_methods)] // one real Instant serves as the virtual epoch

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringlet_udp::{classify, PacketKind, SocketId, MAIN_SOCKET};
use ringlet_xmpp::{FullJid, NodeIdBytes};

use super::*;
use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::{Mapping, NatInfo, Ports, Udp};
use crate::reach::testnet::{Kind, Nat, Step, Wire};

mod fragments;
mod secure;

const UDP_LATENCY: Duration = Duration::from_millis(10);
const RELAY_LATENCY: Duration = Duration::from_millis(30);

struct Node {
    id: NodeIdBytes,
    jid: FullJid,
    links: Links,
    nat: Nat,
    main: SocketAddr,
    extra: BTreeMap<SocketId, SocketAddr>,
    next_extra: SocketId,
    got: Vec<Vec<u8>>,
    paths: Vec<Path>,
    /// Attempts reported failed.
    failed: u32,
    /// Peers reported revoked, and revocations learnt from peers.
    revoked: u32,
    crl_grew: u32,
}

enum Packet {
    Udp {
        to: usize,
        from: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    Relay {
        to: usize,
        data: Vec<u8>,
    },
}

struct World {
    now: Instant,
    nodes: Vec<Node>,
    /// Application datagrams sent (direct, relayed), and held for a handshake.
    sent: (usize, usize),
    held: usize,
    wire: Wire<Packet>,
    /// Every frame delivered (relay and UDP; STUN left out), as it travelled, and to whom.
    seen: Vec<Vec<u8>>,
    seen_to: Vec<usize>,
    /// A man in the middle of the relay: may rewrite each relayed datagram.
    relay_mitm: Option<fn(&mut Vec<u8>)>,
    /// How long the relay takes (`RELAY_LATENCY` unless a test slows it).
    relay_latency: Duration,
}

fn node(now: Instant, i: usize, kind: Kind, cfg: &Config) -> Node {
    node_with(now, i, kind, cfg, [i as u8 + 1; 20], None)
}

fn node_with(
    now: Instant,
    i: usize,
    kind: Kind,
    cfg: &Config,
    id: NodeIdBytes,
    security: Option<Security>,
) -> Node {
    let public = format!("198.51.100.{}", i + 1);
    let main: SocketAddr = if kind == Kind::Open {
        format!("{public}:5000")
    } else {
        format!("10.0.{}.2:5000", i + 1)
    }
    .parse()
    .unwrap();
    let mut nat = Nat::new(kind, public.parse().unwrap(), i as u64 + 7);
    let srflx = nat.outbound(main, "203.0.113.2:3478".parse().unwrap());
    let mut cands = vec![Candidate::new(CandidateKind::Host, main, 1)];
    if let Some(s) = srflx.filter(|s| *s != main) {
        cands.push(Candidate::new(CandidateKind::ServerReflexive, s, 1));
    }
    let hard = matches!(kind, Kind::Symmetric | Kind::SymmetricSequential);
    let info = NatInfo {
        mapping: Some(if hard {
            Mapping::EndpointDependent
        } else {
            Mapping::EndpointIndependent
        }),
        ports: Some(if hard { Ports::Random } else { Ports::Preserving }),
        filtering: None,
        udp: Some(if kind == Kind::UdpBlocked {
            Udp::Blocked
        } else {
            Udp::Ok
        }),
    };
    let mut links = Links::new(cfg.clone(), id, [9; 8], i as u64);
    if let Some(security) = security {
        links = links.with_security(security);
    }
    links.set_local(now, cands, info);
    let jid = FullJid::new(&format!("n{i}@example.test/ringlet")).unwrap();
    Node {
        id,
        jid,
        links,
        nat,
        main,
        extra: BTreeMap::new(),
        next_extra: 1,
        got: Vec::new(),
        paths: Vec::new(),
        failed: 0,
        revoked: 0,
        crl_grew: 0,
    }
}

fn world(a: Kind, b: Kind) -> World {
    world_with(a, b, &Config::default())
}

fn world_with(a: Kind, b: Kind, cfg: &Config) -> World {
    let now = Instant::now();
    world_of(now, vec![node(now, 0, a, cfg), node(now, 1, b, cfg)])
}

fn world_of(now: Instant, nodes: Vec<Node>) -> World {
    let mut w = World {
        now,
        nodes,
        sent: (0, 0),
        held: 0,
        wire: Wire::default(),
        seen: Vec::new(),
        seen_to: Vec::new(),
        relay_mitm: None,
        relay_latency: RELAY_LATENCY,
    };
    for i in 0..2 {
        let (peer, jid) = (w.nodes[1 - i].id, w.nodes[1 - i].jid.clone());
        w.nodes[i].links.member_up(now, peer, jid);
    }
    w
}

impl World {
    /// The frames node `i` received.
    fn seen_by(&self, i: usize) -> impl Iterator<Item = &Vec<u8>> {
        self.seen
            .iter()
            .zip(&self.seen_to)
            .filter(move |(_, to)| **to == i)
            .map(|(f, _)| f)
    }

    fn path(&self, i: usize) -> Option<Path> {
        self.nodes[i].links.path(&self.nodes[1 - i].id)
    }

    fn direct(&self) -> bool {
        (0..2).all(|i| matches!(self.path(i), Some(Path::Direct { .. })))
    }

    fn send(&mut self, from: usize, data: &[u8]) {
        let to = self.nodes[1 - from].id;
        // As the daemon sends: a channel byte and a payload (sealed in one buffer once the
        // session is live).
        let (channel, payload) = data.split_first().expect("a datagram has a channel byte");
        match self.nodes[from]
            .links
            .send_app(self.now, &to, *channel, payload)
            .unwrap()
        {
            Some(Transmit::Relay { data, .. }) => {
                self.sent.1 += 1;
                self.put(
                    self.now + self.relay_latency,
                    Packet::Relay { to: 1 - from, data },
                )
            }
            Some(Transmit::Udp { socket, to, data }) => {
                self.sent.0 += 1;
                self.route(from, socket, to, data)
            }
            // Held for the handshake; `flush` sends it with the links' own output.
            None => self.held += 1,
        }
    }

    fn put(&mut self, at: Instant, p: Packet) {
        self.wire.send(at, p);
    }

    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                while let Some(t) = self.nodes[i].links.poll_transmit() {
                    moved = true;
                    match t {
                        Transmit::Relay { data, .. } => {
                            self.put(self.now + self.relay_latency, Packet::Relay { to: 1 - i, data })
                        }
                        Transmit::Udp { socket, to, data } => self.route(i, socket, to, data),
                    }
                }
                while let Some(ev) = self.nodes[i].links.poll_event() {
                    moved = true;
                    match ev {
                        Event::Datagram { data, .. } => self.nodes[i].got.push(data),
                        Event::PathChanged { path, .. } => self.nodes[i].paths.push(path),
                        Event::OpenSockets { peer, count } => {
                            let n = &mut self.nodes[i];
                            let ids: Vec<SocketId> = (0..count)
                                .map(|_| {
                                    let id = n.next_extra;
                                    n.next_extra += 1;
                                    n.extra.insert(id, SocketAddr::new(n.main.ip(), 6000 + id));
                                    id
                                })
                                .collect();
                            let now = self.now;
                            n.links.sockets_opened(now, &peer, ids);
                        }
                        Event::CloseSockets(ids) => {
                            for id in ids {
                                self.nodes[i].extra.remove(&id);
                            }
                        }
                        Event::Reflexive(_) => {}
                        Event::AttemptFailed { .. } => self.nodes[i].failed += 1,
                        Event::Revoked { .. } => self.nodes[i].revoked += 1,
                        Event::CrlGrew(_) => self.nodes[i].crl_grew += 1,
                        Event::Overlay { data, .. } => self.nodes[i].got.push(data),
                        Event::Pong { nonce, .. } => {
                            self.nodes[i].got.push(format!("pong {nonce}").into_bytes())
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn route(&mut self, from: usize, socket: SocketId, dst: SocketAddr, data: Vec<u8>) {
        let n = &mut self.nodes[from];
        let src = if socket == MAIN_SOCKET {
            Some(n.main)
        } else {
            n.extra.get(&socket).copied()
        };
        let Some(public) = src.and_then(|src| n.nat.outbound(src, dst)) else {
            return;
        };
        if dst.ip() == self.nodes[1 - from].nat.public_ip {
            self.put(
                self.now + UDP_LATENCY,
                Packet::Udp {
                    to: 1 - from,
                    from: public,
                    dst,
                    data,
                },
            );
        }
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        match p {
            Packet::Relay { to, mut data } => {
                if let Some(mitm) = self.relay_mitm {
                    mitm(&mut data);
                }
                self.seen.push(data.clone());
                self.seen_to.push(to);
                let from = self.nodes[1 - to].id;
                self.nodes[to].links.handle_relay(now, from, &data);
            }
            Packet::Udp { to, from, dst, data } => {
                let n = &mut self.nodes[to];
                let Some(private) = n.nat.inbound(from, dst) else {
                    return;
                };
                let socket = if private == n.main {
                    MAIN_SOCKET
                } else {
                    match n.extra.iter().find(|(_, a)| **a == private) {
                        Some((id, _)) => *id,
                        None => return,
                    }
                };
                match classify(&data) {
                    PacketKind::Stun => {
                        let msg = stun_msg::decode(&data).unwrap();
                        n.links.handle_stun(now, socket, from, &msg);
                    }
                    PacketKind::Frame => {
                        self.seen.push(data.clone());
                        self.seen_to.push(to);
                        n.links.handle_frame(now, socket, from, data)
                    }
                    PacketKind::Unknown => {}
                }
            }
        }
    }

    fn run_until(&mut self, end: Instant, mut done: impl FnMut(&World) -> bool) -> bool {
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let next_timer = self.nodes.iter().filter_map(|n| n.links.poll_timeout()).min();
            match self.wire.step(&mut self.now, end, next_timer) {
                Step::Deliver(p) => self.deliver(p),
                Step::Timer => {
                    let now = self.now;
                    for n in self.nodes.iter_mut() {
                        n.links.handle_timeout(now);
                    }
                }
                Step::End => return false,
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_| false);
    }
}

#[test]
fn members_go_direct_and_datagrams_switch_paths_without_loss() {
    let mut w = world(Kind::PortRestricted, Kind::PortRestricted);
    // Datagrams sent before the punch finishes take the relay.
    w.send(0, b"early");
    let start = w.now;
    assert!(w.run_until(start + Duration::from_secs(2), |w| w.direct()));
    let took = w.now - start;
    // offer (30 ms) + answer (30 ms) + checks and settle: well under 200 ms
    assert!(took < Duration::from_millis(200), "direct after {took:?}");
    for i in 0..10u8 {
        w.send(0, &[i; 100]);
    }
    w.send(0, &vec![7u8; 5000]); // too big for a direct datagram: relay
    w.run_for(Duration::from_secs(1));
    let got = &w.nodes[1].got;
    assert_eq!(got.len(), 12, "every datagram arrives once");
    assert_eq!(got[0], b"early");
    assert_eq!(w.sent, (10, 2), "(direct, relayed)");
}

/// The side whose check is answered first is direct before the other: what it sends at once
/// over UDP is taken by a peer still punching (its checks proved that address).
#[test]
fn the_first_side_direct_is_heard_by_a_peer_still_punching() {
    for kinds in [
        (Kind::PortRestricted, Kind::PortRestricted),
        (Kind::Full, Kind::Symmetric),
        (Kind::Restricted, Kind::PortRestricted),
    ] {
        let mut w = world(kinds.0, kinds.1);
        let start = w.now;
        let one_direct = |w: &World| (0..2).any(|i| matches!(w.path(i), Some(Path::Direct { .. })));
        assert!(w.run_until(start + Duration::from_secs(2), one_direct));
        let first = (0..2)
            .find(|i| matches!(w.path(*i), Some(Path::Direct { .. })))
            .unwrap();
        w.send(first, b"at once");
        w.run_for(Duration::from_secs(1));
        assert_eq!(w.nodes[1 - first].got, vec![b"at once".to_vec()], "{kinds:?}");
        assert_eq!(w.nodes[1 - first].links.counters().unknown_source, 0, "{kinds:?}");
    }
}

#[test]
fn udp_blocked_stays_on_the_relay_and_retries_with_backoff() {
    let mut w = world(Kind::UdpBlocked, Kind::Full);
    w.run_for(Duration::from_secs(120));
    assert_eq!(w.path(0), Some(Path::Xmpp));
    assert_eq!(w.path(1), Some(Path::Xmpp));
    let attempts = w.nodes[0].links.counters().attempts + w.nodes[1].links.counters().attempts;
    // 6 s attempts with backoff 5, 10, 20, 40 s…: a handful in two minutes, not dozens.
    assert!((2..=12).contains(&attempts), "{attempts} attempts");
    w.send(0, b"still works");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.nodes[1].got, vec![b"still works".to_vec()]);
}

#[test]
fn a_lost_path_falls_back_to_the_relay_and_is_punched_again() {
    let mut w = world(Kind::PortRestricted, Kind::Restricted);
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.direct()));
    // The network between them fails for a while.
    w.nodes[0].nat.kind = Kind::UdpBlocked;
    assert!(w.run_until(w.now + Duration::from_secs(30), |w| (0..2)
        .all(|i| w.path(i) == Some(Path::Xmpp))));
    w.send(1, b"via relay meanwhile");
    w.run_for(Duration::from_secs(1));
    assert_eq!(w.nodes[0].got, vec![b"via relay meanwhile".to_vec()]);
    w.nodes[0].nat.kind = Kind::PortRestricted;
    let back = w.run_until(w.now + Duration::from_secs(60), |w| w.direct());
    assert!(back, "re-punched: {:?}", w.nodes[0].paths);
}

#[test]
fn strangers_garbage_and_other_overlays_are_dropped_and_counted() {
    let mut w = world(Kind::Full, Kind::Full);
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.direct()));
    let now = w.now;
    let links = &mut w.nodes[1].links;
    let stranger: SocketAddr = "192.0.2.66:4444".parse().unwrap();
    links.handle_frame(now, MAIN_SOCKET, stranger, Frame::emit_data(&[9; 8], b"inject"));
    links.handle_frame(now, MAIN_SOCKET, stranger, vec![0xc0, 1, 2]);
    let remote = match links.path(&[1; 20]) {
        Some(Path::Direct { remote, .. }) => remote,
        other => panic!("{other:?}"),
    };
    links.handle_frame(
        now,
        MAIN_SOCKET,
        remote,
        Frame::emit_data(&[8; 8], b"other overlay"),
    );
    links.handle_relay(now, [1; 20], b"\xc0\x02garbage");
    let c = links.counters().clone();
    assert_eq!((c.unknown_source, c.malformed_frames, c.foreign_path), (1, 2, 1));
    w.flush();
    assert!(w.nodes[1].got.is_empty(), "nothing was delivered");
}

#[test]
fn without_udp_links_never_attempt_and_ignore_offers() {
    let now = Instant::now();
    let cfg = Config {
        direct: false,
        ..Config::default()
    };
    let mut a = Links::new(cfg, [1; 20], [9; 8], 1);
    let jid = FullJid::new("b@example.test/r").unwrap();
    a.member_up(now, [2; 20], jid);
    a.handle_timeout(now + Duration::from_secs(60));
    assert!(a.poll_transmit().is_none(), "no offer without UDP");
    assert_eq!(a.counters().attempts, 0);
    assert_eq!(a.path(&[2; 20]), Some(Path::Xmpp));
}

#[test]
fn pings_are_answered_over_the_current_path() {
    let mut w = world(Kind::Full, Kind::PortRestricted);
    let to = w.nodes[1].id;
    // Before the punch: over the relay.
    let t = w.nodes[0].links.ping(w.now, &to, 1).unwrap();
    assert!(matches!(t, Some(Transmit::Relay { .. })));
    if let Some(Transmit::Relay { data, .. }) = t {
        let at = w.now + RELAY_LATENCY;
        w.put(at, Packet::Relay { to: 1, data });
    }
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.direct()));
    let t = w.nodes[0].links.ping(w.now, &to, 2).unwrap();
    assert!(matches!(t, Some(Transmit::Udp { .. })));
    if let Some(Transmit::Udp { socket, to, data }) = t {
        w.route(0, socket, to, data);
    }
    w.run_for(Duration::from_millis(500));
    assert_eq!(w.nodes[0].got, vec![b"pong 1".to_vec(), b"pong 2".to_vec()]);
}

#[test]
fn ring_messages_ride_direct_paths_only() {
    let mut w = world(Kind::Symmetric, Kind::Symmetric);
    let peer = w.nodes[1].id;
    assert!(
        w.nodes[0].links.send_overlay(w.now, &peer, vec![1]) == Err(SendError::NoDirectPath),
        "no direct path yet"
    );
    // Both symmetric: the attempt fails and says so; the relay never carries ring messages.
    let failed = w.run_until(w.now + Duration::from_secs(30), |w| w.nodes[0].failed > 0);
    assert!(failed, "no attempt failure reported");
    assert_eq!(
        w.nodes[0].links.send_overlay(w.now, &peer, vec![1]),
        Err(SendError::NoDirectPath)
    );

    let mut w = world(Kind::Full, Kind::PortRestricted);
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.direct()));
    let peer = w.nodes[1].id;
    let now = w.now;
    let Ok(Some(Transmit::Udp { socket, to, data })) =
        w.nodes[0].links.send_overlay(now, &peer, b"ring".to_vec())
    else {
        panic!("a direct path carries ring messages");
    };
    w.route(0, socket, to, data);
    w.run_for(Duration::from_millis(100));
    assert_eq!(w.nodes[1].got, vec![b"ring".to_vec()]);
}

fn on_demand() -> Config {
    Config {
        on_demand: true,
        app_idle: Duration::from_secs(30),
        ..Config::default()
    }
}

fn attempts(w: &World) -> u64 {
    (0..2).map(|i| w.nodes[i].links.counters().attempts).sum()
}

#[test]
fn on_demand_links_punch_only_what_the_ring_wants_and_let_it_go() {
    let mut w = world_with(Kind::PortRestricted, Kind::PortRestricted, &on_demand());
    w.run_for(Duration::from_secs(20));
    assert_eq!(attempts(&w), 0, "members alone are not punched");
    assert_eq!((w.path(0), w.path(1)), (Some(Path::Xmpp), Some(Path::Xmpp)));

    // Only the higher NodeId wants it: it offers after waiting for the lower one's offer.
    let peer = w.nodes[0].id;
    let now = w.now;
    assert!(w.nodes[1].links.want(now, &peer, true));
    assert!(w.run_until(now + Duration::from_secs(4), |w| w.direct()));

    let now = w.now;
    assert!(w.nodes[1].links.want(now, &peer, false));
    assert_eq!(w.path(1), Some(Path::Xmpp), "released at once");
    // The close frame tells the other end at once (one UDP latency), and it does not
    // re-punch: nobody wants the path.
    w.run_for(Duration::from_millis(50));
    assert_eq!(w.path(0), Some(Path::Xmpp), "closed by the peer");
    assert_eq!(w.nodes[0].links.counters().closed_by_peer, 1);
    w.run_for(Duration::from_secs(120));
    assert_eq!(w.path(0), Some(Path::Xmpp));
    assert_eq!(attempts(&w), 2, "one offer, one answer");
    assert!(
        !w.nodes[1].links.want(w.now, &[77; 20], true),
        "strangers are not members"
    );
}

#[test]
fn on_demand_app_traffic_opens_a_path_that_idles_out() {
    let mut w = world_with(Kind::Full, Kind::PortRestricted, &on_demand());
    w.send(0, b"first");
    let start = w.now;
    assert!(w.run_until(start + Duration::from_secs(3), |w| w.direct()));
    for i in 0..5u8 {
        w.send(0, &[i; 10]);
        w.run_for(Duration::from_secs(10));
    }
    assert!(w.direct(), "traffic keeps it");
    assert_eq!(w.nodes[1].got.len(), 6);
    // 30 s without traffic: both ends let it go, and nobody punches again.
    w.run_for(Duration::from_secs(40));
    assert_eq!((w.path(0), w.path(1)), (Some(Path::Xmpp), Some(Path::Xmpp)));
    let before = attempts(&w);
    w.run_for(Duration::from_secs(120));
    assert_eq!(attempts(&w), before);
}
