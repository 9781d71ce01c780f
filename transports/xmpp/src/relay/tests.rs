//! The relay core driven over a simulated XMPP path with a virtual clock: latency, loss,
//! duplication, a throttled uplink (like Prosody's `mod_limits`) and a silent peer.
#![allow(clippy::disallowed_methods)] // tests need one real Instant as the virtual epoch

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

fn jid(s: &str) -> FullJid {
    FullJid::new(s).unwrap()
}

#[derive(Debug)]
enum Wire {
    Data { id: String, frame: RelayFrame },
    Ack { id: String },
    Reject { id: String, reason: RejectReason },
}

impl Wire {
    fn size(&self) -> usize {
        match self {
            Wire::Data { frame, .. } => frame.data.len().div_ceil(3) * 4 + 300,
            _ => 150,
        }
    }
}

/// Two relays, A and B, joined through a simulated server.
struct Sim {
    now: Instant,
    a: Relay,
    b: Relay,
    ja: FullJid,
    jb: FullJid,
    /// (arrival time, tie-breaker) → (towards B?, message)
    wire: BTreeMap<(Instant, u64), (bool, Wire)>,
    next_tie: u64,
    latency: Duration,
    /// Bytes per second the server reads from A (None: unlimited).
    uplink_rate: Option<f64>,
    uplink_free: Instant,
    loss: f64,
    duplication: f64,
    /// B is gone silent: everything towards it vanishes.
    b_silent: bool,
    b_can_deliver: bool,
    rng: StdRng,
    received: Vec<Vec<u8>>,
    a_events: Vec<Event>,
    wire_bytes_a: usize,
}

impl Sim {
    fn new(cfg_a: Config, cfg_b: Config) -> Self {
        let ja = jid("alice@one.test/ringlet.0123456789abcdef.00000001");
        let jb = jid("bob@two.test/ringlet.0123456789abcdef.00000002");
        let mut a = Relay::new(cfg_a, 1);
        let mut b = Relay::new(cfg_b, 2);
        a.set_own_jid(&ja);
        b.set_own_jid(&jb);
        let now = Instant::now();
        Sim {
            now,
            a,
            b,
            ja,
            jb,
            wire: BTreeMap::new(),
            next_tie: 0,
            latency: Duration::from_millis(1),
            uplink_rate: None,
            uplink_free: now,
            loss: 0.0,
            duplication: 0.0,
            b_silent: false,
            b_can_deliver: true,
            rng: StdRng::seed_from_u64(7),
            received: Vec::new(),
            a_events: Vec::new(),
            wire_bytes_a: 0,
        }
    }

    fn put(&mut self, at: Instant, to_b: bool, msg: Wire) {
        self.next_tie += 1;
        self.wire.insert((at, self.next_tie), (to_b, msg));
    }

    fn send_from(&mut self, from_a: bool, msg: Wire) {
        if from_a && self.b_silent {
            return;
        }
        if self.rng.random_bool(self.loss) {
            return;
        }
        let mut depart = self.now;
        if from_a {
            self.wire_bytes_a += msg.size();
            if let Some(rate) = self.uplink_rate {
                depart = self.uplink_free.max(self.now) + Duration::from_secs_f64(msg.size() as f64 / rate);
                self.uplink_free = depart;
            }
        }
        let at = depart + self.latency;
        if self.rng.random_bool(self.duplication) {
            let copy = match &msg {
                Wire::Data { id, frame } => Wire::Data {
                    id: id.clone(),
                    frame: frame.clone(),
                },
                Wire::Ack { id } => Wire::Ack { id: id.clone() },
                Wire::Reject { id, reason } => Wire::Reject {
                    id: id.clone(),
                    reason: *reason,
                },
            };
            self.put(at + self.latency, from_a, copy);
        }
        self.put(at, from_a, msg);
    }

    fn drain(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.send_from(true, to_wire(t));
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                self.send_from(false, to_wire(t));
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                if let Event::Datagram { data, .. } = e {
                    self.received.push(data);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs until `done` holds or the virtual deadline passes; returns the virtual time used.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> Duration {
        let start = self.now;
        self.drain();
        while !done(self) && self.now - start < limit {
            let next_wire = self.wire.keys().next().map(|k| k.0);
            let next = [next_wire, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(start + limit);
            self.now = next.max(self.now);
            if next_wire == Some(next) {
                let key = *self.wire.keys().next().unwrap();
                let (to_b, msg) = self.wire.remove(&key).unwrap();
                self.deliver(to_b, msg);
            } else {
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
            }
            self.drain();
        }
        self.now - start
    }

    fn deliver(&mut self, to_b: bool, msg: Wire) {
        let now = self.now;
        let (relay, from) = if to_b {
            (&mut self.b, &self.ja)
        } else {
            (&mut self.a, &self.jb)
        };
        match msg {
            Wire::Data { id, frame } => {
                relay.handle_frame(now, from, &id, frame, !to_b || self.b_can_deliver)
            }
            Wire::Ack { id } => relay.handle_ack(now, from, &id),
            Wire::Reject { id, reason } => {
                let cond = match reason {
                    RejectReason::BadRequest => "bad-request",
                    RejectReason::TooLarge => "not-acceptable",
                    RejectReason::Busy => "resource-constraint",
                };
                relay.handle_error(now, from, &id, cond)
            }
        }
    }
}

fn to_wire(t: Transmit) -> Wire {
    match t {
        Transmit::Data { id, frame, .. } => Wire::Data { id, frame },
        Transmit::Ack { id, .. } => Wire::Ack { id },
        Transmit::Reject { id, reason, .. } => Wire::Reject { id, reason },
    }
}

/// Sizes spread log-uniformly from 1 B to 200 KiB, with both extremes included.
fn sizes(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let max = 200.0 * 1024.0f64;
    let mut v: Vec<usize> = (0..n).map(|_| max.powf(rng.random::<f64>()) as usize).collect();
    v[0] = 1;
    v[n - 1] = 200 * 1024;
    v
}

fn datagram(i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
        .collect()
}

fn assert_exactly_once(sent: &[Vec<u8>], received: &[Vec<u8>]) {
    let mut a: Vec<&Vec<u8>> = sent.iter().collect();
    let mut b: Vec<&Vec<u8>> = received.iter().collect();
    a.sort();
    b.sort();
    assert_eq!(a.len(), b.len(), "datagram count differs");
    assert!(a == b, "datagram contents differ");
}

fn send_all(sim: &mut Sim, data: &[Vec<u8>]) {
    let to = sim.jb.clone();
    for d in data {
        // The queue may be full: let the simulation run until there is room.
        loop {
            let now = sim.now;
            match sim.a.send(now, &to, d) {
                Ok(()) => break,
                Err(SendError::QueueFull { .. }) => {
                    let before = sim.a.peer_stats(&to).map(|s| s.queued_bytes);
                    sim.run_until(Duration::from_secs(60), |s| {
                        s.a.peer_stats(&s.jb).map(|st| st.queued_bytes) != before
                    });
                }
                Err(e) => panic!("send failed: {e}"),
            }
        }
        sim.drain();
    }
}

#[test]
fn delivers_every_datagram_once_despite_loss_and_duplication() {
    let mut sim = Sim::new(Config::default(), Config::default());
    sim.loss = 0.02;
    sim.duplication = 0.02;
    let data: Vec<Vec<u8>> = sizes(300, 1)
        .into_iter()
        .enumerate()
        .map(|(i, n)| datagram(i, n))
        .collect();
    send_all(&mut sim, &data);
    sim.run_until(Duration::from_secs(600), |s| s.received.len() >= data.len());
    sim.run_until(Duration::from_secs(5), |_| false); // late duplicates must not show up
    assert_exactly_once(&data, &sim.received);
    assert!(sim.a_events.is_empty(), "unexpected events: {:?}", sim.a_events);
    assert!(
        sim.a.counters().retransmits > 0,
        "loss must have caused retransmissions"
    );
    assert!(
        sim.b.counters().duplicates_in > 0,
        "duplication must have been suppressed"
    );
}

#[test]
fn reset_resends_in_flight_without_waiting_for_the_rto() {
    let mut sim = Sim::new(Config::default(), Config::default());
    sim.latency = Duration::from_millis(20);
    let data: Vec<Vec<u8>> = (0..20).map(|i| datagram(i, 30_000)).collect();
    send_all(&mut sim, &data);
    sim.wire.clear(); // the stream dropped: everything on the wire is lost
    sim.a.handle_reset(sim.now);
    let took = sim.run_until(Duration::from_secs(60), |s| s.received.len() == data.len());
    assert_exactly_once(&data, &sim.received);
    assert!(took < window::MIN_RTO, "recovery took {took:?}");
}

#[test]
fn silent_peer_fails_with_a_clear_event_within_the_timeout() {
    let cfg = Config {
        peer_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let mut sim = Sim::new(cfg, Config::default());
    sim.b_silent = true;
    let data: Vec<Vec<u8>> = (0..5).map(|i| datagram(i, 1000)).collect();
    send_all(&mut sim, &data);
    let took = sim.run_until(Duration::from_secs(120), |s| !s.a_events.is_empty());
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(12),
        "took {took:?}"
    );
    match &sim.a_events[0] {
        Event::PeerFailed {
            reason: FailReason::NotAcknowledging(_),
            dropped: 5,
            ..
        } => {}
        other => panic!("unexpected event {other:?}"),
    }
    // the failed sender is gone; a new datagram starts afresh
    let to = sim.jb.clone();
    assert!(sim.a.send(sim.now, &to, b"again").is_ok());
}

#[test]
fn throttled_uplink_is_used_at_its_rate_without_stalling() {
    let mut sim = Sim::new(Config::default(), Config::default());
    let rate = 10.0 * 1024.0;
    sim.uplink_rate = Some(rate);
    let data: Vec<Vec<u8>> = (0..40).map(|i| datagram(i, 1000 + (i * 997) % 15_000)).collect();
    send_all(&mut sim, &data);
    let took = sim.run_until(Duration::from_secs(600), |s| s.received.len() == data.len());
    assert_exactly_once(&data, &sim.received);
    let wire_rate = sim.wire_bytes_a as f64 / took.as_secs_f64();
    assert!(wire_rate >= 0.9 * rate, "used {wire_rate:.0} B/s of {rate} B/s");
    assert!(sim.a_events.is_empty(), "unexpected events: {:?}", sim.a_events);
    let stats = sim.a.peer_stats(&sim.jb).unwrap();
    assert!(
        stats.srtt.unwrap() < Duration::from_secs(5),
        "queue grew: srtt {:?}",
        stats.srtt
    );
}

#[test]
fn busy_receiver_pushes_back_and_loses_nothing() {
    let mut sim = Sim::new(Config::default(), Config::default());
    sim.b_can_deliver = false;
    let data: Vec<Vec<u8>> = (0..10).map(|i| datagram(i, 5000)).collect();
    send_all(&mut sim, &data);
    sim.run_until(Duration::from_secs(3), |_| false);
    assert!(sim.received.is_empty());
    assert!(sim.b.counters().busy_in > 0);
    sim.b_can_deliver = true;
    sim.run_until(Duration::from_secs(120), |s| s.received.len() == data.len());
    assert_exactly_once(&data, &sim.received);
}

#[test]
fn receiver_refuses_oversized_datagrams_and_the_rest_continue() {
    let small = Config {
        max_datagram: 50_000,
        ..Config::default()
    };
    let mut sim = Sim::new(Config::default(), small);
    let big = datagram(1, 120_000);
    let ok = datagram(2, 10_000);
    send_all(&mut sim, &[big, ok.clone()]);
    sim.run_until(Duration::from_secs(60), |s| {
        !s.received.is_empty() && !s.a_events.is_empty()
    });
    assert_eq!(sim.received, vec![ok]);
    assert!(
        matches!(&sim.a_events[0], Event::DatagramRefused { condition, .. } if condition == "not-acceptable")
    );
}

#[test]
fn receiver_refuses_a_single_fragment_over_its_limit() {
    let small = Config {
        max_datagram: 4_000,
        ..Config::default()
    };
    let mut sim = Sim::new(Config::default(), small);
    let ok = datagram(2, 3_000);
    send_all(&mut sim, &[datagram(1, 6_000), ok.clone()]);
    sim.run_until(Duration::from_secs(60), |s| {
        !s.received.is_empty() && !s.a_events.is_empty()
    });
    assert_eq!(sim.received, vec![ok]);
    assert!(
        matches!(&sim.a_events[0], Event::DatagramRefused { condition, .. } if condition == "not-acceptable")
    );
}

#[test]
fn send_refuses_too_large_and_bounds_its_queue() {
    let cfg = Config {
        queue_bytes: 100_000,
        ..Config::default()
    };
    let mut relay = Relay::new(cfg, 3);
    let to = jid("bob@two.test/r");
    let now = Instant::now();
    assert!(matches!(
        relay.send(now, &to, &vec![0; 300 * 1024]),
        Err(SendError::TooLarge { .. })
    ));
    let mut refused = false;
    for _ in 0..100 {
        if let Err(SendError::QueueFull { .. }) = relay.send(now, &to, &[0; 20_000]) {
            refused = true;
            break;
        }
    }
    assert!(refused, "queue must be bounded");
}

#[test]
fn unknown_or_foreign_acks_change_nothing() {
    let mut sim = Sim::new(Config::default(), Config::default());
    send_all(&mut sim, &[datagram(0, 10)]);
    let now = sim.now;
    let stranger = jid("mallory@evil.test/x");
    sim.a.handle_ack(now, &stranger, "r00000000.0.1");
    sim.a.handle_ack(now, &sim.jb.clone(), "garbage");
    sim.a
        .handle_error(now, &stranger, "r00000000.0.1", "service-unavailable");
    assert!(sim.a.poll_event().is_none());
    sim.run_until(Duration::from_secs(5), |s| s.received.len() == 1);
    assert_eq!(sim.received.len(), 1);
}
