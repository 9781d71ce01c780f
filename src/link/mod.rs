//! Links (sans-IO): one per overlay member, carrying datagrams over the best path it has —
//! direct UDP when a punch succeeded, the XMPP relay otherwise — and switching between them
//! without the application noticing.
//!
//! Opening a direct path is the connect-to-me exchange over the relay: the peer with the lower
//! NodeId sends an [`Offer`] (credentials, NAT info, candidates) and starts its punch agent; the
//! other answers at once and starts its own, so both probe at the same time. If no offer comes
//! within `responder_patience` the higher NodeId offers itself; crossing offers are settled by
//! NodeId. Failed attempts are retried with exponential backoff (`first_retry` … `max_retry`),
//! so a relayed link keeps trying to upgrade; a lost direct path is re-punched at once.
//!
//! Which members get a direct path: all of them in a full mesh, or with `on_demand` only those
//! the ring links to ([`Links::want`]) and those application traffic flows with.
//!
//! Drive loop:
//! 1. [`Links::member_up`] / [`Links::member_down`] from rendezvous, [`Links::set_local`] when
//!    our candidates or NAT info change; feed [`Links::handle_relay`] (relay datagrams),
//!    [`Links::handle_stun`] (STUN packets not answered by the STUN client),
//!    [`Links::handle_frame`] (UDP frames) and [`Links::send`] (application datagrams);
//! 2. call [`Links::handle_timeout`] when [`Links::poll_timeout`] is due;
//! 3. drain [`Links::poll_transmit`] and [`Links::poll_event`].

mod bulk;
mod cookie;
pub mod fragment;
pub mod frame;
mod punching;
mod revoke;
mod secure;
#[cfg(test)]
mod tests;

pub use self::bulk::{Fragments, SEALED_OVERHEAD};
pub use self::revoke::{Revoked, CRL_PUSH_MAX};
pub use self::secure::{Security, HANDSHAKE_TRIES, INIT_BURST, INIT_REFILL, QUEUE_MAX};

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringlet_udp::SocketId;
use ringlet_xmpp::{FullJid, NodeIdBytes};
use stun_codec::MessageClass;

use self::frame::{Body, Frame, Offer, PathId};
use self::punching::Attempt;
use crate::identity::NodeId;
use crate::reach::candidate::{Candidate, Kind as CandidateKind};
use crate::reach::nat::NatInfo;
use crate::reach::punch::{self, Credentials, PunchAgent};
use crate::reach::stun_msg::{self, StunMessage};

/// The default [`Config::max_direct_payload`]: an app datagram of this size (channel byte
/// included) still fits a 1,500-byte underlay with its headers (28 IP/UDP + 49 framing).
pub const MAX_DIRECT_PAYLOAD: usize = 1400;

#[derive(Debug, Clone)]
pub struct Config {
    pub punch: punch::Config,
    pub first_retry: Duration,
    pub max_retry: Duration,
    /// Datagrams larger than this take the relay even when a direct path exists (no IP
    /// fragmentation through NATs).
    pub max_direct_payload: usize,
    /// How long the higher NodeId waits for the lower one's offer before offering itself.
    pub responder_patience: Duration,
    /// Offers of one peer closer together than this are refused.
    pub offer_interval: Duration,
    /// False when UDP is disabled: no attempts, offers are ignored, every path is the relay.
    pub direct: bool,
    /// False: every member is punched (a full mesh). True: only members someone needs — the
    /// ring ([`Links::want`]) or application traffic in either direction within `app_idle` —
    /// are punched and kept; offers from peers are answered either way.
    pub on_demand: bool,
    pub app_idle: Duration,
    /// The punch agent's keepalive on a path the ring wants: the ring pings its links itself
    /// (quiet links every 20 s growing to ~110 s, `overlay::Config::ping_after_max`), so the
    /// agent's check only stands in when those pings stop. Other paths keep
    /// `punch.keepalive`.
    pub ring_keepalive: Duration,
    /// Inits a second above which inits must carry a cookie (see `cookie`).
    pub cookie_after: u32,
}

impl Config {
    /// The keepalive a path's punch agent runs: long where the ring pings the path.
    fn keepalive_for(&self, ring_wants: bool) -> Duration {
        if ring_wants {
            self.ring_keepalive
        } else {
            self.punch.keepalive
        }
    }

    fn punch_for(&self, ring_wants: bool) -> punch::Config {
        punch::Config {
            keepalive: self.keepalive_for(ring_wants),
            ..self.punch.clone()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            punch: punch::Config::default(),
            first_retry: Duration::from_secs(5),
            max_retry: Duration::from_secs(600),
            max_direct_payload: MAX_DIRECT_PAYLOAD,
            responder_patience: Duration::from_secs(2),
            offer_interval: Duration::from_secs(1),
            direct: true,
            on_demand: false,
            app_idle: Duration::from_secs(300),
            ring_keepalive: Duration::from_secs(120),
            cookie_after: 32,
        }
    }
}

/// How a link reaches its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct {
        socket: SocketId,
        remote: SocketAddr,
        rtt: Duration,
    },
    Xmpp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    Udp {
        socket: SocketId,
        to: SocketAddr,
        data: Vec<u8>,
    },
    Relay {
        to: FullJid,
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Datagram {
        from: NodeIdBytes,
        data: Vec<u8>,
    },
    PathChanged {
        peer: NodeIdBytes,
        path: Path,
    },
    /// A peer sees us at this address.
    Reflexive(SocketAddr),
    OpenSockets {
        peer: NodeIdBytes,
        count: usize,
    },
    CloseSockets(Vec<SocketId>),
    /// The answer to [`Links::ping`].
    Pong {
        peer: NodeIdBytes,
        nonce: u64,
    },
    /// A ring message that came over a direct path, or over the relay (`relayed`): ring links
    /// of UDP-blocked members (leaves) ride the relay.
    Overlay {
        from: NodeIdBytes,
        data: Vec<u8>,
        relayed: bool,
    },
    /// An attempt to open a direct path to `peer` failed (it is retried later).
    AttemptFailed {
        peer: NodeIdBytes,
    },
    /// A revocation names `peer`: its sessions and direct path are closed, and it is refused
    /// from now on.
    Revoked {
        peer: NodeIdBytes,
        /// The revocation that just arrived (None: one we held named a peer coming online).
        by: Option<crate::secure::revocation::Revocation>,
    },
    /// A peer handed us a revocation we did not have (now in the CRL; keep it).
    CrlGrew(crate::secure::revocation::Revocation),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no link to that node")]
    UnknownPeer,
    #[error("no direct path to that node")]
    NoDirectPath,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub attempts: u64,
    pub direct_up: u64,
    pub paths_lost: u64,
    pub frames_in: u64,
    pub malformed_frames: u64,
    pub foreign_path: u64,
    pub unknown_source: u64,
    pub stun_refused: u64,
    /// Checks sent by attempts until they went direct (attempts that did: `direct_up`).
    pub checks_for_success: u64,
    pub offers_refused: u64,
    /// Direct paths the peer closed with a close frame.
    pub closed_by_peer: u64,
    /// Link sessions established (handshakes completed, rekeys included).
    pub handshakes: u64,
    /// Handshakes refused: no certificate of our group, another key, another JID, expired.
    pub handshakes_refused: u64,
    /// Secure packets dropped: forged, replayed, of an unknown or dead session.
    pub secure_dropped: u64,
    /// Frames that came unsealed to a secure node.
    pub plaintext_refused: u64,
    /// Frames dropped while waiting for a handshake (queue full or handshake given up).
    pub queue_dropped: u64,
    /// Handshake packets sent (inits, responses, finals).
    pub handshake_packets_out: u64,
    /// Frames that waited for a handshake and were sent when it completed.
    pub held_out: u64,
    /// Frames that waited for a handshake and rode in its IK init.
    pub early_out: u64,
    /// Sealed packets that arrived before the handshake packet finishing their session and
    /// were held until it did.
    pub overtaken_held: u64,
    /// Inits left unread: the peer sent more than its allowance (`INIT_BURST`, one a second).
    pub inits_limited: u64,
    /// Revocations refused: not our CA's, malformed.
    pub revocations_refused: u64,
    /// Links closed because a revocation named the peer.
    pub links_revoked: u64,
    /// Cookies sent instead of reading an init (under load), and inits resent with one.
    pub cookies_sent: u64,
    pub cookie_inits: u64,
    /// Frames not sent because the peer is revoked.
    pub revoked_refused: u64,
    /// Fragments refused (malformed, at odds with their record) and records they rebuilt
    /// that were not sealed ones of ours.
    pub fragments_refused: u64,
    /// Fragmented records given up with pieces missing.
    pub records_lost: u64,
}

impl Link {
    /// Whether a direct path to this peer is wanted (always, in a full mesh).
    fn wanted(&self, on_demand: bool, now: Instant) -> bool {
        !on_demand || self.ring_wants || self.app_until.is_some_and(|t| now < t)
    }

    /// A frame over the link's current path.
    fn transmit(&self, data: Vec<u8>) -> Transmit {
        match self.path {
            Path::Direct { socket, remote, .. } => Transmit::Udp {
                socket,
                to: remote,
                data,
            },
            Path::Xmpp => self.relay(data),
        }
    }

    fn relay(&self, data: Vec<u8>) -> Transmit {
        Transmit::Relay {
            to: self.jid.clone(),
            data,
        }
    }
}

struct Link {
    jid: FullJid,
    attempt: Option<Box<Attempt>>,
    path: Path,
    retry_at: Option<Instant>,
    failures: u32,
    since: Instant,
    /// When we last answered an offer of this peer (offers are rate-limited: each one makes
    /// us probe addresses the peer chose).
    last_offer: Option<Instant>,
    /// The ring wants a direct path to this peer.
    ring_wants: bool,
    /// Application traffic keeps the direct path wanted until then (with `on_demand`).
    app_until: Option<Instant>,
    /// The peer's static key, from rendezvous (lets the handshake be IK).
    key: Option<[u8; 32]>,
    /// A key whose certificate (sent with the peer's addresses) we checked.
    verified_key: Option<[u8; 32]>,
    session: secure::Session,
    /// A revocation names the peer: nothing goes to it or comes from it.
    revoked: bool,
    /// What the peer last told us about its NAT (in its offer, answer or trickle).
    peer_nat: NatInfo,
}

pub struct Links {
    cfg: Config,
    own: NodeIdBytes,
    path_id: PathId,
    links: BTreeMap<NodeIdBytes, Link>,
    local: Vec<Candidate>,
    nat: NatInfo,
    rng: StdRng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
    security: Option<Security>,
    /// Our session indices (current, previous and handshaking) and whose they are.
    session_index: BTreeMap<u32, NodeIdBytes>,
    /// The last timestamp one of our inits carried.
    last_timestamp: u64,
    /// Frames opened out of turn, waiting to be handled: those that rode in an IK init (no
    /// address: handled as relayed) and those that overtook their session's handshake.
    early_in: Vec<(NodeIdBytes, Frame, Option<secure::Via>)>,
    cookies: cookie::Cookies,
    /// The number our next fragmented record carries.
    next_record: u32,
    reassembly: fragment::Reassembly,
}

impl Links {
    pub fn new(cfg: Config, own: NodeIdBytes, path_id: PathId, seed: u64) -> Self {
        Self {
            cfg,
            own,
            path_id,
            links: BTreeMap::new(),
            local: Vec::new(),
            nat: NatInfo::default(),
            rng: StdRng::seed_from_u64(seed),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            security: None,
            session_index: BTreeMap::new(),
            last_timestamp: 0,
            early_in: Vec::new(),
            cookies: cookie::Cookies::default(),
            next_record: 0,
            reassembly: fragment::Reassembly::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn path(&self, peer: &NodeIdBytes) -> Option<Path> {
        self.links.get(peer).map(|l| l.path)
    }

    /// The peer's NAT as it last described it (unknown until it sent an offer or answer).
    pub fn peer_nat(&self, peer: &NodeIdBytes) -> Option<NatInfo> {
        self.links.get(peer).map(|l| l.peer_nat)
    }

    /// When the link's current path came up.
    pub fn path_since(&self, peer: &NodeIdBytes) -> Option<Instant> {
        self.links.get(peer).map(|l| l.since)
    }

    pub fn member_up(&mut self, now: Instant, peer: NodeIdBytes, jid: FullJid) {
        if let Some(link) = self.links.get_mut(&peer) {
            if link.jid == jid {
                return;
            }
            // The peer came back under a new resource: start over.
            self.member_down(&peer);
        }
        let link = Link {
            jid,
            attempt: None,
            path: Path::Xmpp,
            retry_at: None,
            failures: 0,
            since: now,
            last_offer: None,
            ring_wants: false,
            app_until: None,
            key: None,
            verified_key: None,
            session: secure::Session::default(),
            revoked: false,
            peer_nat: NatInfo::default(),
        };
        self.links.insert(peer, link);
        self.recheck_revoked(peer);
        if !self.cfg.on_demand {
            self.open(now, peer);
        }
    }

    /// Starts opening a direct path to `peer` unless one is open or being opened: the lower
    /// NodeId offers at once, the higher waits `responder_patience` for its offer.
    fn open(&mut self, now: Instant, peer: NodeIdBytes) {
        if !self.cfg.direct {
            return;
        }
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        if link.revoked || link.path != Path::Xmpp || link.attempt.is_some() || link.retry_at.is_some() {
            return;
        }
        if self.own < peer {
            self.start_attempt(now, peer);
        } else {
            link.retry_at = Some(now + self.cfg.responder_patience);
        }
    }

    /// The ring wants (or no longer wants) a direct path to `peer`. Returns false when `peer`
    /// is not a member. Unwanted paths close at once unless application traffic keeps them.
    pub fn want(&mut self, now: Instant, peer: &NodeIdBytes, wanted: bool) -> bool {
        let Some(link) = self.links.get_mut(peer).filter(|l| !l.revoked || !wanted) else {
            return false;
        };
        link.ring_wants = wanted;
        let keepalive = self.cfg.keepalive_for(wanted);
        if let Some(a) = link.attempt.as_mut() {
            a.agent.set_keepalive(keepalive);
        }
        if wanted {
            self.open(now, *peer);
        } else {
            self.release_if_unwanted(now, *peer);
        }
        true
    }

    /// Application traffic to or from `peer`: keeps (or starts) its direct path.
    fn app_traffic(&mut self, now: Instant, peer: &NodeIdBytes) {
        if !self.cfg.on_demand {
            return;
        }
        if let Some(link) = self.links.get_mut(peer) {
            link.app_until = Some(now + self.cfg.app_idle);
            self.open(now, *peer);
        }
    }

    fn release_if_unwanted(&mut self, now: Instant, peer: NodeIdBytes) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        if link.wanted(self.cfg.on_demand, now) {
            return;
        }
        if let Path::Direct { .. } = link.path {
            if let Some(t) = self.out(now, peer, Body::Close, false) {
                self.transmits.push_back(t);
            }
        }
        self.retire_attempt(&peer);
        if let Some(link) = self.links.get_mut(&peer) {
            link.retry_at = None;
            link.app_until = None;
        }
    }

    pub fn member_down(&mut self, peer: &NodeIdBytes) {
        self.retire_attempt(peer);
        if let Some(link) = self.links.remove(peer) {
            self.forget_sessions(link.session);
        }
    }

    /// Ends the running attempt of `peer`, closing its extra sockets. A direct path it held is
    /// gone with it: the link falls back to the relay until a new attempt succeeds.
    fn retire_attempt(&mut self, peer: &NodeIdBytes) {
        let Some(mut old) = self.links.get_mut(peer).and_then(|l| l.attempt.take()) else {
            return;
        };
        old.agent.close();
        self.drain_agent(*peer, &mut old.agent);
        if let Some(link) = self.links.get_mut(peer) {
            if link.path != Path::Xmpp {
                link.path = Path::Xmpp;
                self.events.push_back(Event::PathChanged {
                    peer: *peer,
                    path: Path::Xmpp,
                });
            }
        }
    }

    /// Our candidates or NAT info changed: trickle them to running attempts, retry failed
    /// links soon (the new information may make a direct path possible), and tell every other
    /// peer a NAT verdict.
    pub fn set_local(&mut self, now: Instant, candidates: Vec<Candidate>, nat: NatInfo) {
        let nat_changed = nat != self.nat;
        let added: Vec<Candidate> = candidates
            .iter()
            .filter(|c| !self.local.contains(c))
            .copied()
            .collect();
        self.local = candidates;
        self.nat = nat;
        let on_demand = self.cfg.on_demand;
        let mut trickles = Vec::new();
        for (peer, link) in self.links.iter_mut() {
            let wanted = link.wanted(on_demand, now);
            match &mut link.attempt {
                // Only a punch in progress needs them.
                Some(a) if (!added.is_empty() || nat_changed) && a.agent.selected().is_none() => {
                    a.plan_birthday(now, &nat);
                    let body = Body::Candidates {
                        attempt: a.id,
                        nat,
                        candidates: added.clone(),
                    };
                    trickles.push((*peer, body));
                }
                None if link.path == Path::Xmpp
                    && (nat_changed || !added.is_empty())
                    && link.failures > 0
                    && wanted =>
                {
                    link.retry_at = Some(now + Duration::from_millis(200));
                }
                // Peers show our NAT in their status: tell the others once it is known
                // (attempt 0 matches no attempt; only the NAT info is taken).
                _ if nat_changed && nat.label() != "?" => trickles.push((
                    *peer,
                    Body::Candidates {
                        attempt: 0,
                        nat,
                        candidates: Vec::new(),
                    },
                )),
                _ => {}
            }
        }
        for (peer, body) in trickles {
            self.signal(now, peer, body);
        }
    }

    fn start_attempt(&mut self, now: Instant, peer: NodeIdBytes) {
        let id: u32 = self.rng.random();
        let seed: u64 = self.rng.random();
        let creds = Credentials::random(&mut self.rng);
        if !self.links.contains_key(&peer) {
            return;
        }
        self.retire_attempt(&peer);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.retry_at = None;
        let agent = PunchAgent::new(now, self.cfg.punch_for(link.ring_wants), creds.clone(), seed);
        let offer = Offer {
            attempt: id,
            creds,
            nat: self.nat,
            candidates: self.local.clone(),
        };
        link.attempt = Some(Attempt::new(id, agent, true));
        self.signal(now, peer, Body::Offer(offer));
        self.counters.attempts += 1;
        tracing::debug!(peer = %NodeId(peer), attempt = id, "punch: offer sent");
    }

    /// A datagram that came over the XMPP relay from member `peer`.
    pub fn handle_relay(&mut self, now: Instant, peer: NodeIdBytes, bytes: &[u8]) {
        let Some(frame) = self.parse(bytes) else {
            return;
        };
        if !self.links.contains_key(&peer) {
            return;
        }
        let frame = match (frame.body, self.is_secure()) {
            (Body::Secure(packet), true) => self
                .open_secure(now, secure::Via::Relay(peer), packet, 0)
                .map(|(_, inner)| inner),
            (Body::Secure(_), false) | (_, true) => {
                self.counters.plaintext_refused += 1;
                return;
            }
            (body, false) => Some(Frame {
                path: frame.path,
                body,
            }),
        };
        self.handle_early(now);
        if let Some(frame) = frame {
            self.on_relay_frame(now, peer, frame);
        }
        self.drain(now);
    }

    /// Frames opened out of turn: those that rode in an IK init (signalling, mostly) are
    /// handled as relay frames of their sender, whose handshake just authenticated them; those
    /// that overtook a handshake, as they came.
    fn handle_early(&mut self, now: Instant) {
        for (peer, frame, via) in std::mem::take(&mut self.early_in) {
            match via {
                Some(secure::Via::Udp(socket, from)) => self.on_direct_frame(now, socket, from, peer, frame),
                Some(secure::Via::Relay(_)) | None => self.on_relay_frame(now, peer, frame),
            }
        }
    }

    /// A frame of member `peer` that came over the relay (opened, when links are secure).
    fn on_relay_frame(&mut self, now: Instant, peer: NodeIdBytes, frame: Frame) {
        match frame.body {
            Body::Data(data) => {
                self.app_traffic(now, &peer);
                self.events.push_back(Event::Datagram { from: peer, data })
            }
            Body::Overlay(data) => self.events.push_back(Event::Overlay {
                from: peer,
                data,
                relayed: true,
            }),
            // A direct path is closed over itself.
            Body::Close => self.counters.malformed_frames += 1,
            Body::Offer(offer) => self.on_offer(now, peer, offer),
            Body::Answer(answer) => self.on_answer(now, peer, answer),
            Body::Candidates {
                attempt,
                nat,
                candidates,
            } => {
                let own_nat = self.nat;
                if let Some(link) = self.links.get_mut(&peer) {
                    link.peer_nat = nat;
                }
                if let Some(a) = self
                    .links
                    .get_mut(&peer)
                    .and_then(|l| l.attempt.as_mut())
                    .filter(|a| a.id == attempt)
                {
                    tracing::debug!(peer = %NodeId(peer), ?nat, ?candidates, "punch: candidates trickled");
                    a.agent.add_candidates(now, &candidates);
                    a.learn(now, &own_nat, nat, &candidates);
                }
            }
            Body::Ping(nonce) => self.pong(now, peer, nonce),
            Body::Pong(nonce) => self.events.push_back(Event::Pong { peer, nonce }),
            Body::Revocation(rev) if self.is_secure() => self.on_revocation_frame(peer, &rev),
            Body::Secure(_) | Body::Revocation(_) => self.counters.malformed_frames += 1,
        }
    }

    fn parse(&mut self, bytes: &[u8]) -> Option<Frame> {
        match Frame::parse(bytes) {
            Ok(f) if f.path == self.path_id => {
                self.counters.frames_in += 1;
                Some(f)
            }
            Ok(_) => {
                self.counters.foreign_path += 1;
                None
            }
            Err(_) => {
                self.counters.malformed_frames += 1;
                None
            }
        }
    }

    fn on_offer(&mut self, now: Instant, peer: NodeIdBytes, offer: Offer) {
        if !self.cfg.direct {
            return;
        }
        let own = self.own;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let ours_pending = link
            .attempt
            .as_ref()
            .is_some_and(|a| a.initiator && a.agent.selected().is_none());
        if ours_pending && own < peer {
            return; // crossing offers: the lower NodeId's attempt wins
        }
        if link.last_offer.is_some_and(|t| now < t + self.cfg.offer_interval) {
            self.counters.offers_refused += 1;
            return;
        }
        link.last_offer = Some(now);
        self.retire_attempt(&peer);
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        tracing::debug!(peer = %NodeId(peer), attempt = offer.attempt, candidates = ?offer.candidates, "punch: offer received, answering");
        link.retry_at = None;
        let seed: u64 = self.rng.random();
        let creds = Credentials::random(&mut self.rng);
        let mut agent = PunchAgent::new(now, self.cfg.punch_for(link.ring_wants), creds.clone(), seed);
        agent.set_remote(now, offer.creds.clone(), &offer.candidates);
        let mut attempt = Attempt::new(offer.attempt, agent, false);
        attempt.learn(now, &self.nat, offer.nat, &offer.candidates);
        link.peer_nat = offer.nat;
        let answer = Offer {
            attempt: offer.attempt,
            creds,
            nat: self.nat,
            candidates: self.local.clone(),
        };
        link.attempt = Some(attempt);
        self.signal(now, peer, Body::Answer(answer));
        self.counters.attempts += 1;
    }

    fn on_answer(&mut self, now: Instant, peer: NodeIdBytes, answer: Offer) {
        let nat = self.nat;
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.peer_nat = answer.nat;
        let Some(a) = link.attempt.as_mut() else {
            return;
        };
        if a.id != answer.attempt || !a.initiator || a.agent.remote_ufrag().is_some() {
            return;
        }
        tracing::debug!(peer = %NodeId(peer), candidates = ?answer.candidates, "punch: answer received");
        a.agent.set_remote(now, answer.creds.clone(), &answer.candidates);
        a.learn(now, &nat, answer.nat, &answer.candidates);
    }

    /// A STUN packet the STUN client did not claim. Returns false if nobody here claims it.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        msg: &StunMessage,
    ) -> bool {
        let claimed = match msg.class() {
            MessageClass::Request => {
                let to = stun_msg::check_username(msg).map(|(to, _)| to.to_owned());
                let agent = self
                    .links
                    .values_mut()
                    .filter_map(|l| l.attempt.as_mut())
                    .find(|a| Some(a.agent.local().ufrag.as_str()) == to.as_deref());
                match agent {
                    Some(a) => {
                        a.agent.handle_request(now, socket, from, msg);
                        true
                    }
                    None => {
                        self.counters.stun_refused += 1;
                        true
                    }
                }
            }
            _ => {
                let tid = *msg.transaction_id().as_bytes();
                let agent = self
                    .links
                    .values_mut()
                    .filter_map(|l| l.attempt.as_mut())
                    .find(|a| a.agent.owns(&tid));
                match agent {
                    Some(a) => {
                        a.agent.handle_response(now, socket, from, msg);
                        true
                    }
                    None => false,
                }
            }
        };
        self.drain(now);
        claimed
    }

    /// A ringlet frame that arrived over UDP.
    pub fn handle_frame(&mut self, now: Instant, socket: SocketId, from: SocketAddr, bytes: Vec<u8>) {
        if bulk::is_fragment(&bytes, &self.path_id) {
            self.on_fragment(now, socket, from, &bytes);
            return;
        }
        let via = secure::Via::Udp(socket, from);
        let ours_sealed = self.is_secure() && Frame::secure_body(&bytes, &self.path_id).is_some();
        let (frame, sealed_by) = match ours_sealed {
            // The hot path: a sealed frame for us, opened where it lies (no parsed copy).
            true => {
                self.counters.frames_in += 1;
                match self.open_udp(now, via, bytes, frame::HEADER_LEN) {
                    Some(opened) => opened,
                    None => return,
                }
            }
            false => {
                let Some(frame) = self.parse(&bytes) else {
                    return;
                };
                match (frame.body, self.is_secure()) {
                    (Body::Secure(packet), true) => match self.open_udp(now, via, packet, 0) {
                        Some(opened) => opened,
                        None => return,
                    },
                    (Body::Secure(_), false) | (_, true) => {
                        self.counters.plaintext_refused += 1;
                        return;
                    }
                    (body, false) => (
                        Frame {
                            path: frame.path,
                            body,
                        },
                        None,
                    ),
                }
            }
        };
        // A session proves who sealed the frame, wherever it came from (a path one side has
        // just closed, a NAT that rebound the port); unsealed frames need a known address.
        let id = match (sealed_by, self.peer_at(socket, from)) {
            (Some(peer), _) | (None, Some(peer)) => peer,
            (None, None) => {
                self.counters.unknown_source += 1;
                return;
            }
        };
        self.on_direct_frame(now, socket, from, id, frame);
        self.drain(now);
    }

    /// Opens a secure packet that came over UDP: the frame it sealed and who sealed it, or
    /// `None` (a handshake message, or refused) after acting on it.
    fn open_udp(
        &mut self,
        now: Instant,
        via: secure::Via,
        datagram: Vec<u8>,
        at: usize,
    ) -> Option<(Frame, Option<NodeIdBytes>)> {
        let opened = self.open_secure(now, via, datagram, at);
        self.handle_early(now);
        match opened {
            Some((peer, inner)) => Some((inner, Some(peer))),
            None => {
                self.drain(now);
                None
            }
        }
    }

    /// A frame of member `id` that came over UDP from `from` (opened, when links are secure).
    fn on_direct_frame(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        id: NodeIdBytes,
        frame: Frame,
    ) {
        if let Some(a) = self.links.get_mut(&id).and_then(|l| l.attempt.as_mut()) {
            a.agent.heard(now, socket, from);
        }
        match frame.body {
            Body::Data(data) => {
                self.app_traffic(now, &id);
                self.events.push_back(Event::Datagram { from: id, data })
            }
            Body::Ping(nonce) => self.pong(now, id, nonce),
            Body::Pong(nonce) => self.events.push_back(Event::Pong { peer: id, nonce }),
            Body::Overlay(data) => self.events.push_back(Event::Overlay {
                from: id,
                data,
                relayed: false,
            }),
            Body::Close => self.on_close(now, id),
            Body::Revocation(rev) => self.on_revocation_frame(id, &rev),
            // Signalling travels over the relay only.
            Body::Offer(_) | Body::Answer(_) | Body::Candidates { .. } | Body::Secure(_) => {}
        }
    }

    /// The member whose direct path (or running punch) is this socket and address. The
    /// peer's frames may come over another pair than the one we send on, or arrive before our
    /// side of the punch has finished: any pair its checks proved will do.
    fn peer_at(&self, socket: SocketId, from: SocketAddr) -> Option<NodeIdBytes> {
        self.links
            .iter()
            .find(|(_, l)| {
                matches!(l.path, Path::Direct { socket: s, remote, .. } if s == socket && remote == from)
                    || l.attempt.as_ref().is_some_and(|a| a.agent.accepts(socket, from))
            })
            .map(|(id, _)| *id)
    }

    /// The peer closed the direct path: close ours (re-opened soon if we still want it).
    fn on_close(&mut self, now: Instant, peer: NodeIdBytes) {
        self.counters.closed_by_peer += 1;
        self.retire_attempt(&peer);
        let patience = self.cfg.responder_patience;
        if let Some(link) = self.links.get_mut(&peer) {
            link.retry_at = link.wanted(self.cfg.on_demand, now).then_some(now + patience);
        }
    }

    /// Queues a signalling frame (offer, answer, candidates): these travel over the relay only.
    fn signal(&mut self, now: Instant, peer: NodeIdBytes, body: Body) {
        if let Some(t) = self.out(now, peer, body, true) {
            self.transmits.push_back(t);
        }
    }

    /// Frames an overlay ping to `peer` over its current path (None: it waits for the link's
    /// handshake and goes when that completes).
    pub fn ping(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        nonce: u64,
    ) -> Result<Option<Transmit>, SendError> {
        if !self.links.contains_key(peer) {
            return Err(SendError::UnknownPeer);
        }
        Ok(self.out(now, *peer, Body::Ping(nonce), false))
    }

    fn pong(&mut self, now: Instant, peer: NodeIdBytes, nonce: u64) {
        if let Some(t) = self.out(now, peer, Body::Pong(nonce), false) {
            self.transmits.push_back(t);
        }
    }

    /// Frames a datagram for `peer`'s best path. The caller sends the returned transmit at once,
    /// so that a full relay queue reaches the application as back-pressure; None: it waits for
    /// the link's handshake. With `on_demand`, the traffic also starts (or keeps) a direct
    /// path to `peer`.
    pub fn send(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        data: &[u8],
    ) -> Result<Option<Transmit>, SendError> {
        self.app_traffic(now, peer);
        if !self.links.contains_key(peer) {
            return Err(SendError::UnknownPeer);
        }
        let bytes = Frame::emit_data(&self.path_id, data);
        let relay = data.len() > self.cfg.max_direct_payload;
        Ok(self.out_bytes(now, *peer, bytes, relay))
    }

    /// [`Links::send`] of an app datagram made of a `channel` byte and `payload`: sealed in
    /// one buffer when the session is live (the VPN's hot path).
    pub fn send_app(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        channel: u8,
        payload: &[u8],
    ) -> Result<Option<Transmit>, SendError> {
        if !self.links.contains_key(peer) {
            return Err(SendError::UnknownPeer);
        }
        let relay = 1 + payload.len() > self.cfg.max_direct_payload;
        if let Some(t) = self.seal_data(now, *peer, channel, payload, relay) {
            self.app_traffic(now, peer);
            return Ok(Some(t));
        }
        let mut data = Vec::with_capacity(1 + payload.len());
        data.push(channel);
        data.extend_from_slice(payload);
        self.send(now, peer, &data)
    }

    /// Whether direct paths are possible at all (false: UDP is disabled).
    pub fn direct_enabled(&self) -> bool {
        self.cfg.direct
    }

    /// Frames a ring message for the XMPP relay: the ring links of leaves (UDP-blocked
    /// members) have no other path.
    pub fn send_overlay_relayed(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        data: Vec<u8>,
    ) -> Result<Option<Transmit>, SendError> {
        if !self.links.contains_key(peer) {
            return Err(SendError::UnknownPeer);
        }
        Ok(self.out(now, *peer, Body::Overlay(data), true))
    }

    /// Frames a ring message for `peer`'s direct path; an error when it has none (ring links
    /// are direct paths: the ring itself tunnels through neighbours where punching failed).
    pub fn send_overlay(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        data: Vec<u8>,
    ) -> Result<Option<Transmit>, SendError> {
        match self.links.get(peer).map(|l| l.path) {
            Some(Path::Direct { .. }) => Ok(self.out(now, *peer, Body::Overlay(data), false)),
            Some(Path::Xmpp) => Err(SendError::NoDirectPath),
            None => Err(SendError::UnknownPeer),
        }
    }

    /// The extra sockets an attempt asked for are open.
    pub fn sockets_opened(&mut self, now: Instant, peer: &NodeIdBytes, ids: Vec<SocketId>) {
        match self.links.get_mut(peer).and_then(|l| l.attempt.as_mut()) {
            Some(a) => a.agent.sockets_opened(now, ids),
            None => self.events.push_back(Event::CloseSockets(ids)),
        }
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers_due(now, |l| l.retry_at) {
            match self.links.get_mut(&peer) {
                Some(l) if !l.wanted(self.cfg.on_demand, now) => l.retry_at = None,
                _ => self.start_attempt(now, peer),
            }
        }
        for peer in self.peers_due(now, |l| l.app_until) {
            self.release_if_unwanted(now, peer);
            if let Some(l) = self.links.get_mut(&peer) {
                l.app_until = None;
            }
        }
        for link in self.links.values_mut() {
            if let Some(a) = link.attempt.as_mut() {
                a.agent.handle_timeout(now);
            }
        }
        self.secure_timeouts(now);
        self.drain(now);
    }

    /// Peers whose `deadline` (retry, application idle) has come.
    fn peers_due(&self, now: Instant, deadline: impl Fn(&Link) -> Option<Instant>) -> Vec<NodeIdBytes> {
        self.links
            .iter()
            .filter(|(_, l)| deadline(l).is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links
            .values()
            .flat_map(|l| {
                [
                    l.retry_at,
                    l.attempt.as_ref().and_then(|a| a.agent.poll_timeout()),
                    l.app_until,
                    l.session.deadline(),
                ]
            })
            .flatten()
            .min()
    }
}

/// The first server-reflexive candidate of a list.
fn srflx_of(candidates: &[Candidate]) -> Option<SocketAddr> {
    candidates
        .iter()
        .find(|c| c.kind == CandidateKind::ServerReflexive)
        .map(|c| c.addr)
}
