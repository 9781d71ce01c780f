//! Two punch agents behind simulated NATs of every type, on a virtual clock with 10 ms one-way
//! latency: which pairs connect, how fast, with how many checks, and how the path survives
//! rebinding and silence.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use ringlet_udp::{SocketId, MAIN_SOCKET};
use stun_codec::MessageClass;

use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::{Mapping, NatInfo, Ports, Udp};
use crate::reach::punch::{plan_birthday, Config, Credentials, Event, PunchAgent, LATE_CHECK_GRACE};
use crate::reach::stun_msg;
use crate::reach::testnet::{Kind, Nat, Step, Wire};

const LATENCY: Duration = Duration::from_millis(10);

struct Side {
    agent: PunchAgent,
    nat: Nat,
    main: SocketAddr,
    extra: BTreeMap<SocketId, SocketAddr>,
    next_extra: SocketId,
    events: Vec<Event>,
}

impl Side {
    fn new(now: Instant, kind: Kind, public: &str, private: &str, seed: u64) -> Self {
        let public_ip: IpAddr = public.parse().unwrap();
        let main: SocketAddr = if kind == Kind::Open {
            format!("{public}:5000")
        } else {
            format!("{private}:5000")
        }
        .parse()
        .unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let agent = PunchAgent::new(now, Config::default(), Credentials::random(&mut rng), seed);
        Self {
            agent,
            nat: Nat::new(kind, public_ip, seed),
            main,
            extra: BTreeMap::new(),
            next_extra: 1,
            events: Vec::new(),
        }
    }

    fn local(&self, socket: SocketId) -> Option<SocketAddr> {
        if socket == MAIN_SOCKET {
            Some(self.main)
        } else {
            self.extra.get(&socket).copied()
        }
    }

    fn socket_of(&self, private: SocketAddr) -> Option<SocketId> {
        if private == self.main {
            return Some(MAIN_SOCKET);
        }
        self.extra.iter().find(|(_, a)| **a == private).map(|(id, _)| *id)
    }

    /// What STUN would report: host and server-reflexive candidates, and NAT info.
    fn gather(&mut self) -> (Vec<Candidate>, Option<SocketAddr>, NatInfo) {
        let kind = self.nat.kind;
        let srflx = self.nat.outbound(self.main, "203.0.113.2:3478".parse().unwrap());
        let mut cands = vec![Candidate::new(CandidateKind::Host, self.main, 1)];
        if let Some(s) = srflx.filter(|s| *s != self.main) {
            cands.push(Candidate::new(CandidateKind::ServerReflexive, s, 1));
        }
        let hard = matches!(kind, Kind::Symmetric | Kind::SymmetricSequential);
        let nat = NatInfo {
            mapping: Some(if hard {
                Mapping::EndpointDependent
            } else {
                Mapping::EndpointIndependent
            }),
            ports: Some(match kind {
                Kind::Symmetric => Ports::Random,
                Kind::SymmetricSequential => Ports::Sequential { step: 1 },
                _ => Ports::Preserving,
            }),
            filtering: None,
            udp: Some(if kind == Kind::UdpBlocked {
                Udp::Blocked
            } else {
                Udp::Ok
            }),
        };
        (cands, srflx, nat)
    }
}

/// (receiving side, sender's public address, destination, bytes)
type InFlight = (usize, SocketAddr, SocketAddr, Vec<u8>);

struct World {
    now: Instant,
    sides: [Side; 2],
    wire: Wire<InFlight>,
}

/// Sets both agents up as the link layer would after a connect-to-me exchange.
fn world(a: Kind, b: Kind, seed: u64) -> World {
    let now = Instant::now();
    let sides = [
        Side::new(now, a, "198.51.100.1", "10.0.1.2", seed),
        Side::new(now, b, "198.51.100.2", "10.0.2.2", seed + 1),
    ];
    let mut w = World {
        now,
        sides,
        wire: Wire::default(),
    };
    let (ca, sa, na) = w.sides[0].gather();
    let (cb, sb, nb) = w.sides[1].gather();
    let (creds_a, creds_b) = (w.sides[0].agent.local().clone(), w.sides[1].agent.local().clone());
    // B hears the offer after one relay hop, A the answer after two.
    w.run_for(LATENCY);
    w.sides[1].agent.set_remote(w.now, creds_a, &ca);
    if let Some(plan) = plan_birthday(&nb, &na, sa, na.ports) {
        w.sides[1].agent.set_birthday(w.now, plan);
    }
    w.run_for(LATENCY);
    w.sides[0].agent.set_remote(w.now, creds_b, &cb);
    if let Some(plan) = plan_birthday(&na, &nb, sb, nb.ports) {
        w.sides[0].agent.set_birthday(w.now, plan);
    }
    w
}

impl World {
    fn connected(&self) -> [bool; 2] {
        [
            self.sides[0].agent.selected().is_some(),
            self.sides[1].agent.selected().is_some(),
        ]
    }

    fn flush(&mut self) {
        for i in 0..2 {
            loop {
                let mut moved = false;
                while let Some(ev) = self.sides[i].agent.poll_event() {
                    moved = true;
                    match &ev {
                        Event::OpenSockets(n) => {
                            let side = &mut self.sides[i];
                            let mut ids = Vec::new();
                            for _ in 0..*n {
                                let id = side.next_extra;
                                side.next_extra += 1;
                                side.extra.insert(id, SocketAddr::new(side.main.ip(), 6000 + id));
                                ids.push(id);
                            }
                            let now = self.now;
                            side.agent.sockets_opened(now, ids);
                        }
                        Event::CloseSockets(ids) => {
                            for id in ids {
                                self.sides[i].extra.remove(id);
                            }
                        }
                        _ => {}
                    }
                    self.sides[i].events.push(ev);
                }
                while let Some(t) = self.sides[i].agent.poll_transmit() {
                    moved = true;
                    self.route(i, t.socket, t.to, t.data);
                }
                if !moved {
                    break;
                }
            }
        }
    }

    fn route(&mut self, from_side: usize, socket: SocketId, to: SocketAddr, data: Vec<u8>) {
        let Some(src) = self.sides[from_side].local(socket) else {
            return;
        };
        let Some(public_src) = self.sides[from_side].nat.outbound(src, to) else {
            return;
        };
        let other = 1 - from_side;
        if to.ip() != self.sides[other].nat.public_ip {
            return; // a host candidate of a private network: goes nowhere
        }
        self.wire.send(self.now + LATENCY, (other, public_src, to, data));
    }

    fn deliver(&mut self, side: usize, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let Some(private) = self.sides[side].nat.inbound(from, to) else {
            return;
        };
        let Some(socket) = self.sides[side].socket_of(private) else {
            return;
        };
        let msg = stun_msg::decode(&data).unwrap();
        let now = self.now;
        let agent = &mut self.sides[side].agent;
        match msg.class() {
            MessageClass::Request => agent.handle_request(now, socket, from, &msg),
            _ => agent.handle_response(now, socket, from, &msg),
        }
    }

    /// True if a datagram that `side` sends on its selected pair arrives at an open socket
    /// of the other side.
    fn selected_reaches_peer(&mut self, side: usize) -> bool {
        let Some(selected) = self.sides[side].agent.selected() else {
            return false;
        };
        let Some(src) = self.sides[side].local(selected.socket) else {
            return false;
        };
        let Some(public_src) = self.sides[side].nat.outbound(src, selected.remote) else {
            return false;
        };
        let other = &mut self.sides[1 - side];
        other
            .nat
            .inbound(public_src, selected.remote)
            .is_some_and(|private| other.socket_of(private).is_some())
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_| false);
    }

    /// Runs until `done` or `end`; returns whether `done` held.
    fn run_until(&mut self, end: Instant, mut done: impl FnMut(&World) -> bool) -> bool {
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let next_timer = self.sides.iter().filter_map(|s| s.agent.poll_timeout()).min();
            match self.wire.step(&mut self.now, end, next_timer) {
                Step::Deliver((side, from, to, data)) => self.deliver(side, from, to, data),
                Step::Timer => {
                    let now = self.now;
                    for s in self.sides.iter_mut() {
                        s.agent.handle_timeout(now);
                    }
                }
                Step::End => return false,
            }
        }
    }
}

/// The outcome the issue asks for: direct whenever one side maps independently, neither is
/// UDP-blocked, and the pair is not random-symmetric ↔ port-restricted (birthday may or may
/// not win that one).
fn expected(a: Kind, b: Kind) -> Option<bool> {
    let hard = |k: Kind| matches!(k, Kind::Symmetric | Kind::SymmetricSequential);
    if a == Kind::UdpBlocked || b == Kind::UdpBlocked || (hard(a) && hard(b)) {
        return Some(false);
    }
    let random_vs_port_restricted = matches!(
        (a, b),
        (Kind::Symmetric, Kind::PortRestricted) | (Kind::PortRestricted, Kind::Symmetric)
    );
    if random_vs_port_restricted {
        return None;
    }
    Some(true)
}

#[test]
fn every_pairing_connects_exactly_when_it_should() {
    let mut report = Vec::new();
    for (i, a) in Kind::ALL.iter().enumerate() {
        for b in &Kind::ALL[i..] {
            let mut w = world(*a, *b, 100 + i as u64);
            let start = w.now;
            let end = start + Duration::from_secs(8);
            let both = w.run_until(end, |w| w.connected() == [true, true]);
            let took = w.now - start;
            let checks = w.sides[0].agent.checks_sent + w.sides[1].agent.checks_sent;
            report.push(format!(
                "{a:?} ↔ {b:?}: connected {both} after {took:?}, {checks} checks"
            ));
            match expected(*a, *b) {
                Some(true) => {
                    assert!(both, "{a:?} ↔ {b:?} must connect:\n{}", report.join("\n"));
                    let hard = [*a, *b]
                        .iter()
                        .any(|k| matches!(k, Kind::Symmetric | Kind::SymmetricSequential));
                    let bound = if hard {
                        Duration::from_secs(3)
                    } else {
                        Duration::from_millis(200)
                    };
                    assert!(took <= bound, "{a:?} ↔ {b:?} took {took:?}");
                }
                Some(false) => {
                    assert!(!both, "{a:?} ↔ {b:?} cannot connect directly");
                    let failed = w.sides.iter().all(|s| s.agent.is_done());
                    assert!(failed, "{a:?} ↔ {b:?}: the attempt must end");
                }
                None => {}
            }
            // Both sides agree on the path once it settled and unused sockets closed: each
            // sends to an address that reaches a socket the other still has open.
            if both {
                w.run_for(Duration::from_secs(3));
                for side in 0..2 {
                    assert!(
                        w.selected_reaches_peer(side),
                        "{a:?} ↔ {b:?}: side {side}'s path is dead"
                    );
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn birthday_probing_often_beats_random_symmetric_vs_port_restricted_and_stays_bounded() {
    let runs = 20;
    let mut wins = 0;
    for seed in 0..runs {
        let mut w = world(Kind::Symmetric, Kind::PortRestricted, 1000 + seed);
        let end = w.now + Duration::from_secs(8);
        if w.run_until(end, |w| w.connected() == [true, true]) {
            wins += 1;
        }
        w.run_until(w.now + Duration::from_secs(8), |_| false);
        // Every extra socket is closed again and no side sent more than its bound.
        assert!(
            w.sides[0].extra.len() <= 1,
            "extra sockets left open: {}",
            w.sides[0].extra.len()
        );
        let hard_checks = w.sides[0].agent.checks_sent;
        let easy_checks = w.sides[1].agent.checks_sent;
        assert!(
            hard_checks <= 256 * 2 + 100,
            "hard side sent {hard_checks} checks"
        );
        assert!(easy_checks <= 256 + 100, "easy side sent {easy_checks} checks");
    }
    eprintln!("birthday: {wins} of {runs} random-symmetric ↔ port-restricted attempts went direct");
    // 256 × 256 over 64,512 ports: about 63 % per attempt.
    assert!(wins * 100 >= runs * 35, "only {wins} of {runs}");
}

#[test]
fn spoofed_or_unauthenticated_checks_are_refused() {
    let mut w = world(Kind::PortRestricted, Kind::PortRestricted, 7);
    w.run_until(w.now + Duration::from_secs(2), |w| w.connected() == [true, true]);
    let before = w.sides[0].agent.selected();
    let target = w.sides[0].agent.local().clone();
    let real_peer = w.sides[1].agent.local().ufrag.clone();
    for sender in ["mallory", real_peer.as_str()] {
        // A stranger's name, then the peer's own name without its password.
        let forged = stun_msg::check_request([9; 12], &target.ufrag, sender, "wrong password");
        let msg = stun_msg::decode(&forged).unwrap();
        let now = w.now;
        w.sides[0]
            .agent
            .handle_request(now, MAIN_SOCKET, "192.0.2.66:9".parse().unwrap(), &msg);
    }
    assert!(!w.sides[0]
        .agent
        .accepts(MAIN_SOCKET, "192.0.2.66:9".parse().unwrap()));
    w.flush();
    assert_eq!(w.sides[0].agent.selected(), before, "the path must not move");
    assert!(w.sides[0].agent.refused >= 2);
    assert!(
        w.sides[0].agent.poll_transmit().is_none(),
        "no answer to a forged check"
    );
}

#[test]
fn keepalives_hold_the_path_and_silence_loses_it() {
    let mut w = world(Kind::PortRestricted, Kind::Full, 11);
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.connected() == [true, true]));
    // A minute of idle: keepalives keep it up.
    w.run_for(Duration::from_secs(60));
    assert_eq!(w.connected(), [true, true]);
    assert!(!w.sides[0].events.contains(&Event::Lost));
    // Flushed mappings come back by themselves: both keepalives re-create them.
    w.sides[0].nat.flush();
    w.sides[1].nat.flush();
    w.run_for(Duration::from_secs(40));
    assert_eq!(
        w.connected(),
        [true, true],
        "port-preserving NATs re-create the same mappings"
    );
    // An outage: nothing gets through any more. Within keepalive + 3 tries the path is lost.
    w.sides[0].nat.kind = Kind::UdpBlocked;
    let start = w.now;
    let lost = w.run_until(w.now + Duration::from_secs(40), |w| {
        w.sides.iter().all(|s| s.events.contains(&Event::Lost))
    });
    assert!(lost, "a dead path must be detected on both sides");
    let cfg = Config::default();
    let bound = cfg.keepalive + cfg.keepalive_rto * (cfg.keepalive_tries + 1);
    assert!(w.now - start <= bound, "detected after {:?}", w.now - start);
}

/// A's router reboots and gives A a new public port; B (full cone, so A's packets from the new
/// port reach it) verifies the new address and moves the path there.
#[test]
fn a_rebinding_peer_is_followed_to_its_new_address() {
    let mut w = world(Kind::PortRestricted, Kind::Full, 13);
    assert!(w.run_until(w.now + Duration::from_secs(2), |w| w.connected() == [true, true]));
    let old = w.sides[1].agent.selected().unwrap().remote;
    w.sides[0].nat.flush();
    let squatter: SocketAddr = "10.0.1.9:5000".parse().unwrap();
    w.sides[0]
        .nat
        .outbound(squatter, "203.0.113.77:1".parse().unwrap());
    let moved = w.run_until(w.now + Duration::from_secs(40), |w| {
        w.sides[1].agent.selected().is_some_and(|s| s.remote != old)
    });
    assert!(moved, "B must follow A's new address: {:?}", w.sides[1].events);
    assert_eq!(w.connected(), [true, true]);
}

/// The first authenticated answer makes the path usable at once; a pair that answers within
/// the settle period with a lower RTT then takes over, and checks stop.
#[test]
fn the_first_answer_connects_at_once_and_a_faster_pair_takes_over() {
    let t0 = Instant::now();
    let Scripted { mut agent, peer } = Scripted::new(t0, 3);
    let slow: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    let fast: SocketAddr = "198.51.100.2:4000".parse().unwrap();
    let silent: SocketAddr = "198.51.100.3:4000".parse().unwrap();
    let candidates = [
        Candidate::new(CandidateKind::ServerReflexive, slow, 2),
        Candidate::new(CandidateKind::ServerReflexive, fast, 1),
        Candidate::new(CandidateKind::ServerReflexive, silent, 0),
    ];
    agent.set_remote(t0, peer.creds.clone(), &candidates);
    let mut checks = BTreeMap::new();
    let mut now = t0;
    while checks.len() < 3 && now < t0 + Duration::from_millis(50) {
        agent.handle_timeout(now);
        while let Some(t) = agent.poll_transmit() {
            let msg = stun_msg::decode(&t.data).unwrap();
            checks.entry(t.to).or_insert((now, msg.transaction_id()));
        }
        now += Duration::from_millis(1);
    }
    let (slow_sent, slow_tid) = checks[&slow];
    let (fast_sent, fast_tid) = checks[&fast];
    assert!(slow_sent < fast_sent, "the higher-priority pair is checked first");

    // The slow pair answers first (RTT 20 ms): connected at once, without waiting to settle.
    let at = slow_sent + Duration::from_millis(20);
    agent.handle_response(at, MAIN_SOCKET, slow, &peer.answer(slow_tid));
    let events = path_events(&mut agent);
    assert!(
        matches!(events.as_slice(), [Event::Connected(s)] if s.remote == slow),
        "{events:?}"
    );

    // The fast pair answers 3 ms later with a lower RTT; at the end of the settle period the
    // path moves there and no more checks go out.
    let fast_rtt = at + Duration::from_millis(3) - fast_sent;
    assert!(fast_rtt < Duration::from_millis(20));
    agent.handle_response(
        at + Duration::from_millis(3),
        MAIN_SOCKET,
        fast,
        &peer.answer(fast_tid),
    );
    let settled = at + Config::default().settle;
    agent.handle_timeout(settled);
    let events = path_events(&mut agent);
    assert!(
        matches!(events.as_slice(), [Event::Moved(s)] if s.remote == fast && s.rtt == fast_rtt),
        "{events:?}"
    );
    assert_eq!(agent.selected().map(|s| s.remote), Some(fast));
    while agent.poll_transmit().is_some() {}
    agent.handle_timeout(settled + Duration::from_secs(1));
    assert!(
        agent.poll_transmit().is_none(),
        "checks stop once a pair is kept, also to the pair that never answered"
    );
}

/// Two peers may prefer different pairs, and the peer's NAT may rebind: a pair that starts to
/// answer after the path was chosen takes over only if the selected pair stops answering.
#[test]
fn another_working_pair_takes_over_only_when_the_selected_one_stops_answering() {
    let t0 = Instant::now();
    let Scripted { mut agent, peer } = Scripted::new(t0, 9);
    let selected: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    agent.set_remote(
        t0,
        peer.creds.clone(),
        &[Candidate::new(CandidateKind::ServerReflexive, selected, 1)],
    );
    let (_, tid) = requests(&mut agent).pop().unwrap();
    agent.handle_response(t0, MAIN_SOCKET, selected, &peer.answer(tid));
    let t1 = t0 + Config::default().settle;
    agent.handle_timeout(t1);
    assert_eq!(agent.selected().map(|s| s.remote), Some(selected));
    path_events(&mut agent);

    // The peer checks from another address; our check back is answered. We probe the
    // selected pair, it answers: the path stays, and frames from either address are the peer's.
    let other: SocketAddr = "198.51.100.1:4001".parse().unwrap();
    agent.handle_request(t1, MAIN_SOCKET, other, &peer.check([1; 12]));
    let (to, tid) = requests(&mut agent).pop().unwrap();
    assert_eq!(to, other, "a check back to the new address");
    agent.handle_response(t1, MAIN_SOCKET, other, &peer.answer(tid));
    let (to, keepalive) = requests(&mut agent).pop().expect("a probe of the selected pair");
    assert_eq!(to, selected);
    agent.handle_response(t1, MAIN_SOCKET, selected, &peer.answer(keepalive));
    agent.handle_timeout(t1 + Duration::from_secs(5));
    assert_eq!(agent.selected().map(|s| s.remote), Some(selected));
    assert!(path_events(&mut agent)
        .iter()
        .all(|e| matches!(e, Event::Moved(s) if s.remote == selected)));
    assert!(agent.accepts(MAIN_SOCKET, other) && agent.accepts(MAIN_SOCKET, selected));

    // The peer's NAT rebinds to a third address and the selected pair falls silent: the path
    // moves once the probe goes unanswered.
    let t2 = t1 + Duration::from_secs(6);
    let rebound: SocketAddr = "198.51.100.1:4002".parse().unwrap();
    agent.handle_request(t2, MAIN_SOCKET, rebound, &peer.check([2; 12]));
    let (_, tid) = requests(&mut agent).pop().unwrap();
    agent.handle_response(t2, MAIN_SOCKET, rebound, &peer.answer(tid));
    assert!(
        requests(&mut agent).iter().any(|(to, _)| *to == selected),
        "the selected pair is probed"
    );
    agent.handle_timeout(t2 + Config::default().keepalive_rto);
    assert_eq!(agent.selected().map(|s| s.remote), Some(rebound));
    assert!(matches!(path_events(&mut agent).as_slice(), [Event::Moved(s)] if s.remote == rebound));
}

/// Each side keeps the lowest-RTT pair it measured; the peer may keep another, or one through a
/// socket it closed since. The peer's frames over another proved pair make us probe ours: if
/// it answers we stay (at most one such probe per keepalive period), if not we move there.
#[test]
fn frames_from_the_peer_over_another_pair_move_a_dead_path_there() {
    let (t2, Scripted { mut agent, peer }, [kept, other]) = connected_on_the_first_of_two(11);

    // Frames over the other pair while ours still answers: one probe, and we stay.
    agent.heard(t2, MAIN_SOCKET, other);
    let (to, tid) = requests(&mut agent).pop().expect("a probe of the selected pair");
    assert_eq!(to, kept);
    agent.handle_response(t2, MAIN_SOCKET, kept, &peer.answer(tid));
    agent.heard(t2 + Duration::from_secs(2), MAIN_SOCKET, other);
    assert!(requests(&mut agent).is_empty(), "one probe per keepalive period");
    agent.handle_timeout(t2 + Duration::from_secs(3));
    assert_eq!(agent.selected().map(|s| s.remote), Some(kept));

    // A keepalive period later ours is dead: the next frame's probe goes unanswered, we move.
    let t3 = t2 + Config::default().keepalive;
    agent.heard(t3, MAIN_SOCKET, other);
    assert!(requests(&mut agent).iter().any(|(to, _)| *to == kept));
    agent.handle_timeout(t3 + Config::default().keepalive_rto);
    assert_eq!(agent.selected().map(|s| s.remote), Some(other));
    assert!(path_events(&mut agent)
        .iter()
        .any(|e| matches!(e, Event::Moved(s) if s.remote == other)));
}

/// An agent given two candidates, each check answered at once as if after 5 ms (the first)
/// or 15 ms (the second), then settled: it keeps the first. Returns when it had settled.
fn connected_on_the_first_of_two(seed: u64) -> (Instant, Scripted, [SocketAddr; 2]) {
    let t0 = Instant::now();
    let Scripted { mut agent, peer } = Scripted::new(t0, seed);
    let pairs: [(SocketAddr, u64); 2] = [
        ("198.51.100.1:4000".parse().unwrap(), 5),
        ("198.51.100.1:4001".parse().unwrap(), 15),
    ];
    let cands = pairs.map(|(a, _)| Candidate::new(CandidateKind::ServerReflexive, a, 1));
    agent.set_remote(t0, peer.creds.clone(), &cands);
    for ms in 0..20 {
        let now = t0 + Duration::from_millis(ms);
        agent.handle_timeout(now);
        for (to, tid) in requests(&mut agent) {
            let rtt = pairs.iter().find(|(a, _)| *a == to).map_or(0, |(_, r)| *r);
            agent.handle_response(
                now + Duration::from_millis(rtt),
                MAIN_SOCKET,
                to,
                &peer.answer(tid),
            );
        }
    }
    let settled = t0 + Duration::from_secs(1);
    agent.handle_timeout(settled);
    assert_eq!(agent.selected().map(|s| s.remote), Some(pairs[0].0));
    path_events(&mut agent);
    (settled, Scripted { agent, peer }, pairs.map(|(a, _)| a))
}

/// A peer that closed its other sockets nominates the pair it keeps: we move there at once.
#[test]
fn a_nominated_pair_is_taken_at_once() {
    let (t1, Scripted { mut agent, peer }, [kept, nominated]) = connected_on_the_first_of_two(12);

    // A plain check from the other pair does not move us; a nomination does.
    agent.handle_request(t1, MAIN_SOCKET, nominated, &peer.check([4; 12]));
    assert_eq!(agent.selected().map(|s| s.remote), Some(kept));
    agent.handle_request(t1, MAIN_SOCKET, nominated, &peer.nomination([5; 12]));
    assert_eq!(agent.selected().map(|s| s.remote), Some(nominated));
    assert!(path_events(&mut agent)
        .iter()
        .any(|e| matches!(e, Event::Moved(s) if s.remote == nominated)));
}

/// An agent alone, and what its peer would send it: checks keyed with the agent's password,
/// answers with the peer's (`creds`).
struct Scripted {
    agent: PunchAgent,
    peer: ScriptedPeer,
}

struct ScriptedPeer {
    creds: Credentials,
    /// The agent's credentials, which the peer's checks name.
    agent: Credentials,
}

impl Scripted {
    fn new(t0: Instant, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let creds = Credentials::random(&mut rng);
        let agent = PunchAgent::new(t0, Config::default(), Credentials::random(&mut rng), seed);
        let peer = ScriptedPeer {
            creds,
            agent: agent.local().clone(),
        };
        Self { agent, peer }
    }
}

impl ScriptedPeer {
    /// The peer's answer to our check `tid`.
    fn answer(&self, tid: stun_codec::TransactionId) -> stun_msg::StunMessage {
        let us: SocketAddr = "192.0.2.10:5000".parse().unwrap();
        stun_msg::decode(&stun_msg::check_response(tid, us, &self.creds.pwd)).unwrap()
    }

    /// A check from the peer.
    fn check(&self, tid: [u8; 12]) -> stun_msg::StunMessage {
        let to = &self.agent;
        let bytes = stun_msg::check_request(tid, &to.ufrag, &self.creds.ufrag, &to.pwd);
        stun_msg::decode(&bytes).unwrap()
    }

    /// A check from the peer that nominates its pair.
    fn nomination(&self, tid: [u8; 12]) -> stun_msg::StunMessage {
        let to = &self.agent;
        let bytes = stun_msg::nomination_request(tid, &to.ufrag, &self.creds.ufrag, &to.pwd);
        stun_msg::decode(&bytes).unwrap()
    }
}

/// The binding requests an agent sent since the last call: destination and transaction id.
fn requests(agent: &mut PunchAgent) -> Vec<(SocketAddr, stun_codec::TransactionId)> {
    std::iter::from_fn(|| agent.poll_transmit())
        .filter_map(|t| {
            let msg = stun_msg::decode(&t.data).ok()?;
            (msg.class() == MessageClass::Request).then(|| (t.to, msg.transaction_id()))
        })
        .collect()
}

/// The agent's events other than passive reflection.
fn path_events(agent: &mut PunchAgent) -> Vec<Event> {
    std::iter::from_fn(|| agent.poll_event())
        .filter(|e| !matches!(e, Event::Reflexive(_)))
        .collect()
}

/// The peer's check can overtake its answer (direct UDP is faster than the relay): it is
/// answered at once, and the check back goes out as soon as the answer brings credentials.
#[test]
fn a_check_that_overtakes_the_answer_is_checked_back_when_the_answer_lands() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(5);
    let (ours, theirs) = (Credentials::random(&mut rng), Credentials::random(&mut rng));
    let mut agent = PunchAgent::new(t0, Config::default(), ours.clone(), 5);
    let peer: SocketAddr = "198.51.100.7:4000".parse().unwrap();
    let check = stun_msg::check_request([1; 12], &ours.ufrag, &theirs.ufrag, &ours.pwd);
    agent.handle_request(t0, MAIN_SOCKET, peer, &stun_msg::decode(&check).unwrap());
    let sent: Vec<_> = std::iter::from_fn(|| agent.poll_transmit()).collect();
    assert_eq!(sent.len(), 1, "only the response, no check without credentials");
    assert_eq!(
        stun_msg::decode(&sent[0].data).unwrap().class(),
        MessageClass::SuccessResponse
    );

    let answer_lands = t0 + Duration::from_millis(2);
    agent.set_remote(answer_lands, theirs, &[]);
    let sent: Vec<_> = std::iter::from_fn(|| agent.poll_transmit()).collect();
    assert!(
        sent.iter()
            .any(|t| t.to == peer && stun_msg::decode(&t.data).unwrap().class() == MessageClass::Request),
        "the check back must leave with the answer, not a retry later: {sent:?}"
    );
}

/// A peer whose attempt started later may find its way in just before ours times out (birthday
/// probing hits late): our attempt stays up long enough for the check back to be answered, so
/// both ends connect, and then gives up if it never is.
#[test]
fn a_check_just_before_the_timeout_is_checked_back_and_connects_both_ends() {
    let cfg = Config::default();
    let t0 = Instant::now();
    let Scripted { mut agent, peer } = Scripted::new(t0, 11);
    let silent: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    agent.set_remote(
        t0,
        peer.creds.clone(),
        &[Candidate::new(CandidateKind::ServerReflexive, silent, 1)],
    );
    let late = t0 + cfg.attempt_timeout - Duration::from_millis(10);
    agent.handle_timeout(late);
    requests(&mut agent);
    assert!(path_events(&mut agent).is_empty());

    let found: SocketAddr = "198.51.100.1:26740".parse().unwrap();
    agent.handle_request(late, MAIN_SOCKET, found, &peer.check([3; 12]));
    let (to, tid) = requests(&mut agent).pop().expect("a check back");
    assert_eq!(to, found);
    agent.handle_timeout(t0 + cfg.attempt_timeout);
    assert!(
        !path_events(&mut agent).contains(&Event::Failed),
        "gave up with a check back in flight"
    );
    let answered = t0 + cfg.attempt_timeout + Duration::from_millis(40);
    agent.handle_response(answered, MAIN_SOCKET, found, &peer.answer(tid));
    agent.handle_timeout(answered + cfg.settle);
    assert_eq!(agent.selected().map(|s| s.remote), Some(found));

    // The same, but the check back is never answered: the attempt still ends, a grace later.
    let Scripted { mut agent, peer } = Scripted::new(t0, 12);
    agent.set_remote(t0, peer.creds.clone(), &[]);
    agent.handle_request(late, MAIN_SOCKET, found, &peer.check([4; 12]));
    let mut t = late;
    while let Some(next) = agent.poll_timeout() {
        assert!(
            next < late + LATE_CHECK_GRACE + Duration::from_millis(1),
            "runs on past the grace"
        );
        t = next.max(t);
        agent.handle_timeout(t);
        requests(&mut agent);
    }
    assert!(path_events(&mut agent).contains(&Event::Failed));
    assert_eq!(t, late + LATE_CHECK_GRACE);
}
