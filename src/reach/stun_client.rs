//! The STUN client (sans-IO): server-reflexive addresses and NAT behaviour discovery.
//!
//! Drive loop:
//! 1. [`StunClient::set_servers`] with the servers from XEP-0215 or the config (resolved by the
//!    runtime), then feed responses with [`StunClient::handle_response`] and call
//!    [`StunClient::handle_timeout`] when [`StunClient::poll_timeout`] is due;
//! 2. drain [`StunClient::poll_transmit`] (requests to send from the main socket);
//! 3. read [`StunClient::nat`] and [`StunClient::reflexive`] after [`Event::Changed`].
//!
//! Requests are retransmitted as in RFC 5389 (RTO doubling from `initial_rto` up to `max_rto`,
//! at most `max_tries`). Discovery, in the spirit of RFC 5780: every server is asked for our mapping
//! from the main socket; equal mappings from two destinations mean endpoint-independent
//! mapping, different ones endpoint-dependent (the port step tells sequential from random
//! allocation). A server that names an OTHER-ADDRESS supports RFC 5780 and is also asked from
//! there. Filtering is tested with CHANGE-REQUEST from a separate probe socket that talks to
//! the first server only: on the main socket, the queries to other addresses would already have
//! opened the NAT's filter for them. No answer from any server at all means UDP is blocked. The whole discovery is
//! repeated every `requery_interval` and on [`StunClient::requery`], e.g. when a peer reports a
//! reflexive address that differs from ours (the mapping may have changed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use stun_codec::MessageClass;

use super::nat::{Filtering, Mapping, NatInfo, Ports, Udp};
use super::stun_msg::{self, StunMessage};

#[derive(Debug, Clone)]
pub struct Config {
    pub initial_rto: Duration,
    /// The RTO stops doubling here, so a UDP-blocked host knows it within 3.75 s (250 ms,
    /// 500 ms, then 1 s per try) rather than RFC 5389's ~8 s, and joins the ring as a leaf.
    pub max_rto: Duration,
    pub max_tries: u32,
    pub requery_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(250),
            max_rto: Duration::from_secs(1),
            max_tries: 5,
            // NAT behaviour seldom changes, and a peer that sees another mapping of ours asks
            // for a round at once; every 5 min, the rounds (with their unanswered filtering
            // tests) were a tenth of an idle node's traffic.
            requery_interval: Duration::from_secs(900),
        }
    }
}

/// Which local socket a request leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    /// The node's one socket: its mapping is the one peers use.
    Main,
    /// A socket used only for the filtering test, so that no other query pollutes its mapping.
    Probe,
}

/// Why a request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// Plain mapping query to a destination.
    Map(SocketAddr),
    /// CHANGE-REQUEST to the server: answer from the other IP and port.
    ChangeIpPort(SocketAddr),
    /// CHANGE-REQUEST to the server: answer from the other port.
    ChangePort(SocketAddr),
}

#[derive(Debug)]
struct Txn {
    probe: Probe,
    tries: u32,
    next: Instant,
    rto: Duration,
}

/// A request the runtime must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: Socket,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The reflexive addresses or the NAT classification changed.
    Changed,
}

/// Outcome of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Mapped(SocketAddr),
    Failed,
}

#[derive(Debug)]
pub struct StunClient {
    cfg: Config,
    local_port: u16,
    servers: Vec<SocketAddr>,
    txns: BTreeMap<[u8; 12], Txn>,
    results: BTreeMap<(u8, SocketAddr), Outcome>,
    /// Servers in the order the round first asked them: the order in which the NAT allocated
    /// their mappings, which port prediction depends on.
    asked: Vec<SocketAddr>,
    /// OTHER-ADDRESS of the first server that named one (it supports RFC 5780).
    other: Option<(SocketAddr, SocketAddr)>,
    nat: NatInfo,
    reflexive: Vec<SocketAddr>,
    next_round: Option<Instant>,
    rng: StdRng,
    transmits: Vec<Transmit>,
    events: Vec<Event>,
    pub malformed: u64,
}

impl StunClient {
    pub fn new(cfg: Config, local_port: u16, seed: u64) -> Self {
        Self {
            cfg,
            local_port,
            servers: Vec::new(),
            txns: BTreeMap::new(),
            results: BTreeMap::new(),
            asked: Vec::new(),
            other: None,
            nat: NatInfo::default(),
            reflexive: Vec::new(),
            next_round: None,
            rng: StdRng::seed_from_u64(seed),
            transmits: Vec::new(),
            events: Vec::new(),
            malformed: 0,
        }
    }

    /// What we know about our NAT.
    pub fn nat(&self) -> NatInfo {
        self.nat
    }

    /// Our server-reflexive addresses (distinct, in the order the NAT allocated them).
    pub fn reflexive(&self) -> &[SocketAddr] {
        &self.reflexive
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Sets the servers and starts a discovery round if they changed.
    pub fn set_servers(&mut self, now: Instant, servers: Vec<SocketAddr>) {
        let mut servers = servers;
        servers.dedup();
        if servers != self.servers {
            self.servers = servers;
            self.requery(now);
        }
    }

    /// Starts a new discovery round now.
    pub fn requery(&mut self, now: Instant) {
        self.txns.clear();
        self.results.clear();
        self.asked.clear();
        self.other = None;
        for server in self.servers.clone() {
            self.start(now, Probe::Map(server));
        }
        if let Some(first) = self.servers.first().copied() {
            self.start(now, Probe::ChangeIpPort(first));
        }
        self.next_round = Some(now + self.cfg.requery_interval);
    }

    /// True if `tid` belongs to one of our requests.
    pub fn owns(&self, tid: &[u8; 12]) -> bool {
        self.txns.contains_key(tid)
    }

    /// A STUN response that arrived on `socket` from `from`.
    pub fn handle_response(&mut self, now: Instant, socket: Socket, from: SocketAddr, msg: &StunMessage) {
        let tid = *msg.transaction_id().as_bytes();
        let Some(txn) = self.txns.get(&tid) else {
            return;
        };
        let probe = txn.probe;
        let source_ok = match probe {
            Probe::Map(to) => from == to,
            Probe::ChangeIpPort(to) => from.ip() != to.ip() && from.port() != to.port(),
            Probe::ChangePort(to) => from.ip() == to.ip() && from.port() != to.port(),
        };
        if !source_ok || socket != socket_of(probe) {
            return;
        }
        let mapped = match msg.class() {
            MessageClass::SuccessResponse => stun_msg::mapped_address(msg),
            _ => None,
        };
        let Some(mapped) = mapped else {
            self.malformed += 1;
            return;
        };
        self.txns.remove(&tid);
        if let (Probe::Map(server), None) = (probe, self.other) {
            if let Some(other) = stun_msg::other_address(msg).filter(|o| o.ip() != server.ip()) {
                self.other = Some((server, other));
                if !self.servers.contains(&other) {
                    self.start(now, Probe::Map(other));
                }
            }
        }
        self.record(now, probe, Outcome::Mapped(mapped));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<[u8; 12]> = self
            .txns
            .iter()
            .filter(|(_, t)| t.next <= now)
            .map(|(k, _)| *k)
            .collect();
        for tid in due {
            let Some(mut txn) = self.txns.remove(&tid) else {
                continue;
            };
            // A filtering test ends by timing out, so it gets fewer tries than a mapping query.
            let max_tries = match txn.probe {
                Probe::Map(_) => self.cfg.max_tries,
                Probe::ChangeIpPort(_) | Probe::ChangePort(_) => self.cfg.max_tries.min(3),
            };
            if txn.tries >= max_tries {
                self.record(now, txn.probe, Outcome::Failed);
                continue;
            }
            txn.tries += 1;
            txn.rto = (txn.rto * 2).min(self.cfg.max_rto);
            txn.next = now + txn.rto;
            self.transmits.push(request(tid, txn.probe));
            self.txns.insert(tid, txn);
        }
        if self.next_round.is_some_and(|t| t <= now) {
            self.requery(now);
        }
    }

    fn start(&mut self, now: Instant, probe: Probe) {
        if let Probe::Map(server) = probe {
            self.asked.push(server);
        }
        let tid: [u8; 12] = self.rng.random();
        let rto = self.cfg.initial_rto;
        self.transmits.push(request(tid, probe));
        self.txns.insert(
            tid,
            Txn {
                probe,
                tries: 1,
                next: now + rto,
                rto,
            },
        );
    }

    fn record(&mut self, now: Instant, probe: Probe, outcome: Outcome) {
        let key = match probe {
            Probe::Map(to) => (0, to),
            Probe::ChangeIpPort(to) => (1, to),
            Probe::ChangePort(to) => (2, to),
        };
        self.results.insert(key, outcome);
        if let (Probe::ChangeIpPort(server), Outcome::Failed) = (probe, outcome) {
            self.start(now, Probe::ChangePort(server));
        }
        self.classify();
    }

    /// Derives the NAT classification from the results so far.
    fn classify(&mut self) {
        let mut mapped: Vec<(SocketAddr, SocketAddr)> = self
            .results
            .iter()
            .filter_map(|((kind, to), o)| match (kind, o) {
                (0, Outcome::Mapped(m)) => Some((*to, *m)),
                _ => None,
            })
            .collect();
        mapped.sort_by_key(|(to, _)| self.asked.iter().position(|a| a == to));
        let maps_done = self.results.keys().filter(|(k, _)| *k == 0).count();
        let mut nat = self.nat;
        let mut reflexive: Vec<SocketAddr> = Vec::new();
        for (_, m) in &mapped {
            if !reflexive.contains(m) {
                reflexive.push(*m);
            }
        }
        if !mapped.is_empty() {
            nat.udp = Some(Udp::Ok);
        } else if maps_done >= self.servers.len() && !self.servers.is_empty() && self.txns.is_empty() {
            nat.udp = Some(Udp::Blocked);
        }
        if mapped.len() >= 2 {
            let same = reflexive.len() == 1;
            nat.mapping = Some(if same {
                Mapping::EndpointIndependent
            } else {
                Mapping::EndpointDependent
            });
            nat.ports = Some(if same {
                if reflexive[0].port() == self.local_port {
                    Ports::Preserving
                } else {
                    Ports::Random
                }
            } else {
                let step = i32::from(reflexive[1].port()) - i32::from(reflexive[0].port());
                if (1..=16).contains(&step.abs()) {
                    Ports::Sequential { step }
                } else {
                    Ports::Random
                }
            });
        } else if mapped.len() == 1 && reflexive[0].port() == self.local_port {
            nat.ports = Some(Ports::Preserving);
        }
        // Missing answers only prove filtering if the server supports RFC 5780.
        let change = |kind: u8| {
            self.results
                .iter()
                .find(|((k, _), _)| *k == kind)
                .map(|(_, o)| *o)
        };
        let rfc5780 = self.other.is_some();
        nat.filtering = match (change(1), change(2)) {
            (Some(Outcome::Mapped(_)), _) => Some(Filtering::EndpointIndependent),
            (Some(_), Some(Outcome::Mapped(_))) => Some(Filtering::AddressDependent),
            (Some(_), Some(Outcome::Failed)) if rfc5780 => Some(Filtering::AddressAndPortDependent),
            _ => nat.filtering,
        };
        if nat != self.nat || reflexive != self.reflexive {
            self.nat = nat;
            self.reflexive = reflexive;
            self.events.push(Event::Changed);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        (!self.transmits.is_empty()).then(|| self.transmits.remove(0))
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txns.values().map(|t| t.next).chain(self.next_round).min()
    }
}

fn socket_of(probe: Probe) -> Socket {
    match probe {
        Probe::Map(_) => Socket::Main,
        Probe::ChangeIpPort(_) | Probe::ChangePort(_) => Socket::Probe,
    }
}

fn request(tid: [u8; 12], probe: Probe) -> Transmit {
    let (to, change) = match probe {
        Probe::Map(to) => (to, None),
        Probe::ChangeIpPort(to) => (to, Some((true, true))),
        Probe::ChangePort(to) => (to, Some((false, true))),
    };
    Transmit {
        socket: socket_of(probe),
        to,
        data: stun_msg::binding_request(tid, change),
    }
}
