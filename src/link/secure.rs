//! The secure filter under every link. With [`Security`] set, every frame a link carries —
//! over direct UDP and over the XMPP relay alike, signalling included — travels sealed in a
//! session of the peer (frame kind 9), and frames that are not are refused. A session comes
//! from a Noise handshake (IK: the peer's key is known from rendezvous) that proves the peer
//! holds the key behind its NodeId and a certificate of our group for the JID it uses.
//!
//! Frames wait (at most [`QUEUE_MAX`] per peer) while the first handshake runs — or ride in
//! its IK init when the peer's certificate (from its presence) checked out beforehand; an
//! init is resent with backoff ([`HANDSHAKE_TRIES`] times). A session asks for a fresh
//! handshake after two minutes while busy, thirty while quiet (`secure::transport`; the side
//! that began it first); the old one still opens what is in flight until the new one carries
//! traffic. Crossing inits: the lower NodeId's wins.
//! Inits carry a timestamp (a replayed one is refused) and are read at most [`INIT_BURST`]
//! at once per peer, then one per [`INIT_REFILL`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngExt;
use ringlet_udp::SocketId;
use ringlet_xmpp::NodeIdBytes;

use super::frame::{self, Body, Frame};
use super::{Links, Transmit};
use crate::identity::NodeId;
use crate::secure::cert::{CertError, MemberCert};
use crate::secure::noise::{
    respond, Established, Initiating, Local, Peer, Purpose, Responded, Responding, HELLO_FRAGMENTS,
    MAX_EARLY, MAX_EARLY_BYTES,
};
use crate::secure::revocation::Crl;
use crate::secure::wire::{self, Packet};
use crate::secure::{member_check, Expect};

/// Frames held per peer while its first handshake runs.
pub const QUEUE_MAX: usize = 64;
/// Sealed packets held per peer that arrived for a handshake of ours still finishing: the
/// peer's side is up and its data came over a direct path faster than its handshake answer
/// came over the relay. They are opened once the answer lands.
pub const OVERTAKEN_MAX: usize = 16;
/// Inits sent before a handshake is given up (and its queue dropped).
pub const HANDSHAKE_TRIES: u32 = 5;
const FIRST_RESEND: Duration = Duration::from_secs(1);
/// Inits taken from one peer in a burst, and how fast the allowance comes back: answering
/// costs Diffie-Hellman work, so a member (or a relay replaying its packets) cannot make us
/// spin. Strangers never get this far: an init is only read from a member's relay JID or
/// from the address of a member's path.
pub const INIT_BURST: u32 = 4;
pub const INIT_REFILL: Duration = Duration::from_secs(1);

/// Who we are to the group, and the wall clock certificates are judged by.
pub struct Security {
    pub local: Local,
    /// The group's CA key.
    pub ca: [u8; 32],
    /// Unix seconds at `epoch`.
    pub epoch: Instant,
    pub epoch_unix: u64,
    /// Revocations: peers they name get no link.
    pub crl: Crl,
}

/// A peer's sessions.
#[derive(Default)]
pub(super) struct Session {
    current: Option<Established>,
    /// We began the current session (we also begin its replacement).
    began_current: bool,
    previous: Option<Established>,
    initiating: Option<Pending>,
    responding: Option<Box<Responding>>,
    queued: VecDeque<(Vec<u8>, bool)>,
    /// Data packets that overtook the handshake packet finishing their session (see
    /// [`OVERTAKEN_MAX`]): where each came from and its bytes.
    overtaken: Vec<(Via, Vec<u8>)>,
    /// The newest init timestamp taken from this peer: older or equal ones are replays.
    last_init: u64,
    /// Inits this peer may still send now (a token bucket of [`INIT_BURST`]), as of `refilled`.
    init_allowance: Option<(u32, Instant)>,
    /// A cookie the peer gave us (it is busy), and when: our inits carry it for a while.
    cookie: Option<([u8; wire::COOKIE_LEN], Instant)>,
}

impl Session {
    /// Takes one init from the allowance; false when the peer sent too many too fast.
    fn allow_init(&mut self, now: Instant) -> bool {
        let (mut left, mut at) = self.init_allowance.unwrap_or((INIT_BURST, now));
        while left < INIT_BURST && now >= at + INIT_REFILL {
            left += 1;
            at += INIT_REFILL;
        }
        if left == INIT_BURST {
            at = now;
        }
        let allowed = left > 0;
        self.init_allowance = Some((left.saturating_sub(u32::from(allowed)), at));
        allowed
    }
}

/// A handshake we began: when its init went, how often, and how many queued frames rode in it.
struct Pending {
    init: Initiating,
    sent: Instant,
    tries: u32,
    early: usize,
    /// The init carried a cookie (a second cookie for it is not taken).
    cookie_sent: bool,
}

impl Session {
    /// When a resend, a rekey or an expiry is due.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let resend = self
            .initiating
            .as_ref()
            .map(|p| p.sent + FIRST_RESEND * 2u32.pow(p.tries));
        let expiry = self.current.as_ref().map(|e| e.transport.reject_at());
        resend.into_iter().chain(expiry).min()
    }

    pub(super) fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// The certificate the peer showed in the current session's handshake.
    pub(super) fn peer_cert(&self) -> Option<&MemberCert> {
        self.current.as_ref().map(|e| &e.peer.cert)
    }

    fn live(&mut self, now: Instant) -> Option<&mut Established> {
        self.current.as_mut().filter(|e| !e.transport.expired(now))
    }
}

/// Where a secure packet came from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Via {
    Relay(NodeIdBytes),
    Udp(SocketId, SocketAddr),
}

impl Links {
    /// Seals every frame from now on; refuses frames that are not sealed.
    pub fn with_security(mut self, security: Security) -> Self {
        self.set_security(security);
        self
    }

    /// [`Links::with_security`] on a built value (before any member is up).
    pub fn set_security(&mut self, security: Security) {
        self.security = Some(security);
    }

    pub fn is_secure(&self) -> bool {
        self.security.is_some()
    }

    /// The peer's static key as rendezvous announced it (its NodeId is the key's hash): the
    /// handshake can then be IK, one round trip. Ignored when it does not match. With the
    /// peer's certificate, checked here against our group, its key and its JID, what waits
    /// for the handshake rides in the init: the key is known to be a member's.
    pub fn set_member_identity(
        &mut self,
        now: Instant,
        peer: &NodeIdBytes,
        key: [u8; 32],
        cert: Option<&[u8]>,
    ) {
        if NodeId::of_public_key(&key).0 != *peer {
            return;
        }
        let unix = self.unix_now(now);
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        link.key = Some(key);
        let jid = link.jid.to_bare();
        let verified = match (cert.map(MemberCert::parse), self.security.as_ref()) {
            (Some(Ok(cert)), Some(sec)) => {
                cert.verify_peer(&sec.ca, unix, &key, Some(&jid)).is_ok() && !sec.crl.revokes(&cert)
            }
            _ => false,
        };
        link.verified_key = verified.then_some(key);
        self.recheck_revoked(*peer);
    }

    /// Frames `body` for `peer` over its current path, or the relay with `relay`; sealed when
    /// links are secure. None when the peer is unknown or the frame waits for a handshake.
    pub(super) fn out(
        &mut self,
        now: Instant,
        peer: NodeIdBytes,
        body: Body,
        relay: bool,
    ) -> Option<Transmit> {
        let frame = Frame {
            path: self.path_id,
            body,
        }
        .emit();
        self.out_bytes(now, peer, frame, relay)
    }

    pub(super) fn out_bytes(
        &mut self,
        now: Instant,
        peer: NodeIdBytes,
        frame: Vec<u8>,
        relay: bool,
    ) -> Option<Transmit> {
        if self.security.is_none() {
            let link = self.links.get(&peer)?;
            return Some(if relay {
                link.relay(frame)
            } else {
                link.transmit(frame)
            });
        }
        let path = self.path_id;
        let link = self.links.get_mut(&peer)?;
        if link.revoked {
            self.counters.revoked_refused += 1;
            return None;
        }
        let began = link.session.began_current;
        let Some(est) = link.session.live(now) else {
            if link.session.queued.len() >= QUEUE_MAX {
                link.session.queued.pop_front();
                self.counters.queue_dropped += 1;
            }
            link.session.queued.push_back((frame, relay));
            if link.session.initiating.is_none() {
                self.start_handshake(now, peer, 0);
            }
            return None;
        };
        let header = wire::data_header(est.remote_index, est.transport.next_counter());
        let mut buf = frame;
        est.transport.seal(now, &header, &mut buf).ok()?;
        let rekey = est.transport.rekey_due(now, began);
        let mut packet = header.to_vec();
        packet.extend_from_slice(&buf);
        let outer = Frame {
            path,
            body: Body::Secure(packet),
        }
        .emit();
        self.sealed_out(now, peer, outer, relay, rekey)
    }

    /// Hands a sealed datagram to `peer`'s path (or the relay) and starts the handshake its
    /// session asked for.
    fn sealed_out(
        &mut self,
        now: Instant,
        peer: NodeIdBytes,
        datagram: Vec<u8>,
        relay: bool,
        rekey: bool,
    ) -> Option<Transmit> {
        let link = self.links.get(&peer)?;
        let t = if relay {
            link.relay(datagram)
        } else {
            link.transmit(datagram)
        };
        self.rekey_if_due(now, peer, rekey);
        Some(t)
    }

    /// Seals an app datagram (`channel`, then `payload`) for `peer` into one buffer: outer
    /// frame header, secure header, the sealed inner data frame, tag — what [`Links::out_bytes`]
    /// makes of an emitted data frame, without its intermediate copies (the VPN's hot path).
    /// `None` when there is no live session to seal with; the caller then takes the general
    /// path, which queues the datagram and starts a handshake.
    pub(super) fn seal_data(
        &mut self,
        now: Instant,
        peer: NodeIdBytes,
        channel: u8,
        payload: &[u8],
        relay: bool,
    ) -> Option<Transmit> {
        let (datagram, rekey) = self.seal_record(now, peer, channel, &[payload])?;
        self.sealed_out(now, peer, datagram, relay, rekey)
    }

    /// [`Links::seal_data`] of the app datagram `channel` + `parts` (joined), without sending
    /// it: the sealed datagram, and whether the session asked for a fresh handshake (which
    /// the caller starts with [`Links::rekey_if_due`] once it sent the datagram).
    pub(super) fn seal_record(
        &mut self,
        now: Instant,
        peer: NodeIdBytes,
        channel: u8,
        parts: &[&[u8]],
    ) -> Option<(Vec<u8>, bool)> {
        self.security.as_ref()?;
        let path = self.path_id;
        let link = self.links.get_mut(&peer).filter(|l| !l.revoked)?;
        let began = link.session.began_current;
        let est = link.session.live(now)?;
        let header = wire::data_header(est.remote_index, est.transport.next_counter());
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(super::SEALED_OVERHEAD + len);
        out.extend_from_slice(&frame::header(&path, frame::KIND_SECURE));
        out.extend_from_slice(&header);
        let sealed = out.len();
        out.extend_from_slice(&frame::header(&path, frame::KIND_DATA));
        out.push(channel);
        for part in parts {
            out.extend_from_slice(part);
        }
        let (_, tag) = est
            .transport
            .seal_in_place(now, &header, &mut out[sealed..])
            .ok()?;
        out.extend_from_slice(&tag);
        Some((out, est.transport.rekey_due(now, began)))
    }

    /// Starts the fresh handshake a session asked for, unless one runs.
    pub(super) fn rekey_if_due(&mut self, now: Instant, peer: NodeIdBytes, rekey: bool) {
        if rekey
            && self
                .links
                .get(&peer)
                .is_some_and(|l| l.session.initiating.is_none())
        {
            self.start_handshake(now, peer, 0);
        }
    }

    /// Whether `peer`'s live session is with a side that takes fragmented records.
    pub(super) fn takes_fragments(&mut self, now: Instant, peer: &NodeIdBytes) -> bool {
        self.security.is_some()
            && self
                .links
                .get_mut(peer)
                .filter(|l| !l.revoked)
                .and_then(|l| l.session.live(now))
                .is_some_and(|est| est.peer.ciphers & HELLO_FRAGMENTS != 0)
    }

    fn start_handshake(&mut self, now: Instant, peer: NodeIdBytes, tries: u32) {
        let index = self.fresh_index(peer);
        let seed: [u8; 32] = self.rng.random();
        let timestamp = self.next_timestamp(now);
        let (Some(sec), Some(link)) = (self.security.as_ref(), self.links.get_mut(&peer)) else {
            return;
        };
        // What waits rides in the init (IK), but only to a key whose certificate we checked
        // before: an init is encrypted to whatever key the XMPP server handed us.
        let mut early = Vec::new();
        if link.key.is_some() && link.verified_key == link.key {
            let mut bytes = 0;
            for (frame, _) in link.session.queued.iter().take(MAX_EARLY) {
                if bytes + frame.len() > MAX_EARLY_BYTES {
                    break;
                }
                bytes += frame.len();
                early.push(frame.clone());
            }
        }
        match Initiating::start(
            &sec.local,
            Purpose::Link,
            link.key.as_ref(),
            index,
            seed,
            timestamp,
            &early,
        ) {
            Ok((init, packet)) => {
                let early = if init.carries_early() { early.len() } else { 0 };
                tracing::debug!(
                    peer = %NodeId(peer),
                    ik = init.carries_early(),
                    early,
                    verified = link.verified_key.is_some(),
                    "link handshake started"
                );
                let cookie = link
                    .session
                    .cookie
                    .filter(|(_, at)| now < *at + super::cookie::COOKIE_FOR)
                    .map(|(c, _)| c);
                let packet = match &cookie {
                    Some(c) => wire::with_cookie(&packet, c),
                    None => packet,
                };
                let pending = Pending {
                    init,
                    sent: now,
                    tries,
                    early,
                    cookie_sent: cookie.is_some(),
                };
                if let Some(old) = link.session.initiating.replace(pending) {
                    self.session_index.remove(&old.init.index());
                }
                self.send_handshake(peer, packet);
            }
            Err(_) => {
                self.session_index.remove(&index);
            }
        }
    }

    /// Strictly increasing milliseconds for our inits (wall clock, never repeating).
    fn next_timestamp(&mut self, now: Instant) -> u64 {
        let ms = self.security.as_ref().map_or(0, |s| {
            s.epoch_unix * 1000 + now.saturating_duration_since(s.epoch).as_millis() as u64
        });
        self.last_timestamp = ms.max(self.last_timestamp + 1);
        self.last_timestamp
    }

    fn fresh_index(&mut self, peer: NodeIdBytes) -> u32 {
        crate::secure::fresh_index(&mut self.session_index, &mut self.rng, peer)
    }

    /// Handshake packets go over the link's current path.
    fn send_handshake(&mut self, peer: NodeIdBytes, packet: Vec<u8>) {
        if let Some(link) = self.links.get(&peer) {
            let frame = Frame {
                path: self.path_id,
                body: Body::Secure(packet),
            };
            self.transmits.push_back(link.transmit(frame.emit()));
            self.counters.handshake_packets_out += 1;
        }
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.security.as_ref().map_or(0, |s| {
            s.epoch_unix + now.saturating_duration_since(s.epoch).as_secs()
        })
    }

    /// Handles the secure packet in `datagram[at..]`; returns the frame it sealed and whose
    /// session it was in. A data packet is opened inside `datagram`, not copied out first.
    pub(super) fn open_secure(
        &mut self,
        now: Instant,
        via: Via,
        datagram: Vec<u8>,
        at: usize,
    ) -> Option<(NodeIdBytes, Frame)> {
        self.security.as_ref()?;
        let Ok(packet) = Packet::parse(&datagram[at..]) else {
            self.counters.secure_dropped += 1;
            return None;
        };
        match packet {
            Packet::Init {
                pattern,
                sender,
                cookie,
                noise,
            } => {
                let peer = match via {
                    Via::Relay(peer) => Some(peer),
                    Via::Udp(socket, from) => self.peer_at(socket, from),
                };
                let busy = self.cookies.busy(now, self.cfg.cookie_after);
                match peer {
                    Some(peer)
                        if busy && !cookie.is_some_and(|c| self.cookies.check(now, &peer, via, &c)) =>
                    {
                        self.send_cookie(now, peer, via, sender)
                    }
                    Some(peer) => self.on_init(now, peer, pattern, sender, noise),
                    None => self.counters.secure_dropped += 1,
                }
                None
            }
            Packet::Cookie { receiver, cookie } => {
                self.on_cookie(now, receiver, cookie);
                None
            }
            Packet::Response {
                sender,
                receiver,
                noise,
            } => {
                self.on_response(now, sender, receiver, noise);
                None
            }
            Packet::Final { receiver, noise } => {
                self.on_final(now, receiver, noise);
                None
            }
            Packet::Data {
                receiver,
                counter,
                header,
                ..
            } => {
                let header: [u8; wire::DATA_HEADER_LEN] = header.try_into().ok()?;
                self.open_data(now, via, receiver, counter, &header, datagram, at + header.len())
            }
        }
    }

    /// How a handshake judges `peer`: a certificate of our group, valid now, not revoked, for
    /// the key it proves, the NodeId we know it by and the JID it speaks as.
    fn peer_check(
        &self,
        now: Instant,
        peer: NodeIdBytes,
    ) -> Option<impl FnOnce(&Peer) -> Result<(), CertError> + '_> {
        let sec = self.security.as_ref()?;
        let jid = self.links.get(&peer)?.jid.to_bare();
        let unix = self.unix_now(now);
        Some(move |p: &Peer| {
            let expect = Expect {
                node: Some(NodeId(peer)),
                jid: Some(&jid),
                crl: Some(&sec.crl),
            };
            member_check(&sec.ca, unix, expect)(p)
        })
    }

    /// Under load: answers an init with a cookie, on the path it came by, and keeps nothing.
    fn send_cookie(&mut self, now: Instant, peer: NodeIdBytes, via: Via, sender: u32) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        let cookie = self.cookies.make(now, &mut self.rng, &peer, via);
        let data = Frame {
            path: self.path_id,
            body: Body::Secure(wire::cookie(sender, &cookie)),
        }
        .emit();
        let t = match via {
            Via::Relay(_) => link.relay(data),
            Via::Udp(socket, to) => Transmit::Udp { socket, to, data },
        };
        self.transmits.push_back(t);
        self.counters.cookies_sent += 1;
    }

    /// A busy peer sent a cookie for our init: the init goes again, carrying it (once per init:
    /// the index it names must be our pending one's, which only the peer saw).
    fn on_cookie(&mut self, now: Instant, receiver: u32, cookie: [u8; wire::COOKIE_LEN]) {
        let Some(&peer) = self.session_index.get(&receiver) else {
            self.counters.secure_dropped += 1;
            return;
        };
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let Some(pending) = link
            .session
            .initiating
            .as_ref()
            .filter(|p| p.init.index() == receiver && !p.cookie_sent)
        else {
            self.counters.secure_dropped += 1;
            return;
        };
        let tries = pending.tries;
        link.session.cookie = Some((cookie, now));
        self.counters.cookie_inits += 1;
        self.start_handshake(now, peer, tries);
    }

    fn on_init(&mut self, now: Instant, peer: NodeIdBytes, pattern: u8, sender: u32, noise: &[u8]) {
        if self.security.is_none() || !self.links.contains_key(&peer) {
            return;
        }
        if self.is_revoked(&peer) {
            self.counters.handshakes_refused += 1;
            return;
        }
        let allowed = self
            .links
            .get_mut(&peer)
            .is_some_and(|l| l.session.allow_init(now));
        if !allowed {
            self.counters.inits_limited += 1;
            return;
        }
        let crossing = self
            .links
            .get(&peer)
            .is_some_and(|l| l.session.initiating.is_some());
        let ours_wins = crossing && self.own < peer;
        let index = self.fresh_index(peer);
        let seed: [u8; 32] = self.rng.random();
        let (Some(sec), Some(check)) = (self.security.as_ref(), self.peer_check(now, peer)) else {
            return;
        };
        let answered = respond(
            now,
            &sec.local,
            Purpose::Link,
            pattern,
            sender,
            noise,
            index,
            seed,
            check,
        );
        match answered {
            // Crossing inits: ours wins and the peer answers it. Its init is still read, so
            // that its timestamp is taken: replayed later, it is stale.
            Ok(Responded::Done(est, _)) if ours_wins => {
                self.fresh_init(peer, est.peer.timestamp);
                self.session_index.remove(&est.local_index);
            }
            Ok(Responded::Awaiting(r, _)) if ours_wins => {
                self.session_index.remove(&r.index());
            }
            Ok(Responded::Done(est, _)) if !self.fresh_init(peer, est.peer.timestamp) => {
                self.session_index.remove(&est.local_index);
                self.counters.secure_dropped += 1;
            }
            Ok(Responded::Done(mut est, response)) => {
                self.drop_initiating(peer);
                self.send_handshake(peer, response);
                let early = std::mem::take(&mut est.peer.early);
                self.install(now, peer, *est, false);
                self.take_early(peer, early);
            }
            Ok(Responded::Awaiting(responding, response)) => {
                self.drop_initiating(peer);
                if let Some(link) = self.links.get_mut(&peer) {
                    if let Some(old) = link.session.responding.replace(responding) {
                        self.session_index.remove(&old.index());
                    }
                }
                self.send_handshake(peer, response);
            }
            Err(e) => {
                self.session_index.remove(&index);
                self.counters.handshakes_refused += 1;
                tracing::debug!(peer = %NodeId(peer), error = %e, "link handshake refused");
            }
        }
    }

    fn drop_initiating(&mut self, peer: NodeIdBytes) {
        if let Some(p) = self
            .links
            .get_mut(&peer)
            .and_then(|l| l.session.initiating.take())
        {
            self.session_index.remove(&p.init.index());
        }
    }

    /// Takes an init's timestamp if it is newer than every one taken from `peer` before.
    fn fresh_init(&mut self, peer: NodeIdBytes, timestamp: u64) -> bool {
        match self.links.get_mut(&peer) {
            Some(link) if timestamp > link.session.last_init => {
                link.session.last_init = timestamp;
                true
            }
            _ => false,
        }
    }

    /// Early frames from an IK init, for the caller to handle as frames of `peer`.
    fn take_early(&mut self, peer: NodeIdBytes, early: Vec<Vec<u8>>) {
        for bytes in early {
            match Frame::parse(&bytes) {
                Ok(f) if f.path == self.path_id && !matches!(f.body, Body::Secure(_)) => {
                    self.early_in.push((peer, f, None))
                }
                _ => self.counters.malformed_frames += 1,
            }
        }
    }

    fn on_response(&mut self, now: Instant, sender: u32, receiver: u32, noise: &[u8]) {
        let Some(&peer) = self.session_index.get(&receiver) else {
            self.counters.secure_dropped += 1;
            return;
        };
        let Some(Pending {
            init, tries, early, ..
        }) = self
            .links
            .get_mut(&peer)
            .and_then(|l| l.session.initiating.take_if(|p| p.init.index() == receiver))
        else {
            self.counters.secure_dropped += 1;
            return;
        };
        let (Some(sec), Some(check)) = (self.security.as_ref(), self.peer_check(now, peer)) else {
            return;
        };
        match init.on_response(now, &sec.local, sender, noise, check) {
            Ok((est, finale)) => {
                if let Some(packet) = finale {
                    self.send_handshake(peer, packet);
                }
                // The frames that rode in the init arrived with it.
                if let Some(link) = self.links.get_mut(&peer) {
                    let n = early.min(link.session.queued.len());
                    link.session.queued.drain(..n);
                    self.counters.early_out += n as u64;
                }
                self.install(now, peer, est, true);
            }
            Err(e) => {
                self.session_index.remove(&receiver);
                self.counters.handshakes_refused += 1;
                tracing::debug!(peer = %NodeId(peer), error = %e, "link handshake refused");
                // Whatever waits still needs a session: try again (a forged response must not
                // end the handshake for good).
                let waiting = self
                    .links
                    .get(&peer)
                    .is_some_and(|l| !l.session.queued.is_empty());
                if waiting && tries + 1 < HANDSHAKE_TRIES {
                    self.start_handshake(now, peer, tries + 1);
                }
            }
        }
    }

    fn on_final(&mut self, now: Instant, receiver: u32, noise: &[u8]) {
        let Some(&peer) = self.session_index.get(&receiver) else {
            self.counters.secure_dropped += 1;
            return;
        };
        let Some(responding) = self
            .links
            .get_mut(&peer)
            .and_then(|l| l.session.responding.take_if(|r| r.index() == receiver))
        else {
            self.counters.secure_dropped += 1;
            return;
        };
        let Some(check) = self.peer_check(now, peer) else {
            return;
        };
        match responding.on_final(now, noise, check) {
            Ok(est) if !self.fresh_init(peer, est.peer.timestamp) => {
                self.session_index.remove(&est.local_index);
                self.counters.secure_dropped += 1;
            }
            Ok(est) => self.install(now, peer, est, false),
            Err(e) => {
                self.session_index.remove(&receiver);
                self.counters.handshakes_refused += 1;
                tracing::debug!(peer = %NodeId(peer), error = %e, "link handshake refused");
            }
        }
    }

    /// A handshake finished: the new session carries traffic from now on; what waited goes.
    fn install(&mut self, now: Instant, peer: NodeIdBytes, est: Established, began: bool) {
        let Some(link) = self.links.get_mut(&peer) else {
            self.session_index.remove(&est.local_index);
            return;
        };
        if let Some(old) = link.session.previous.take() {
            self.session_index.remove(&old.local_index);
        }
        let peer_crl = est.peer.crl_version;
        let cipher = est.transport.cipher().name();
        link.session.previous = link.session.current.replace(est);
        link.session.began_current = began;
        self.counters.handshakes += 1;
        tracing::debug!(peer = %NodeId(peer), cipher, "link session up");
        let queued = std::mem::take(&mut link.session.queued);
        for (frame, relay) in queued {
            if let Some(t) = self.out_bytes(now, peer, frame, relay) {
                self.transmits.push_back(t);
                self.counters.held_out += 1;
            }
        }
        self.push_crl(now, peer, peer_crl);
        self.open_overtaken(now, peer);
    }

    /// Opens the data packet sealed in `buf[sealed..]` (its plaintext ends up in `buf`).
    #[allow(clippy::too_many_arguments)] // the parts of one parsed packet, where it came from
    fn open_data(
        &mut self,
        now: Instant,
        via: Via,
        receiver: u32,
        counter: u64,
        header: &[u8],
        mut buf: Vec<u8>,
        sealed: usize,
    ) -> Option<(NodeIdBytes, Frame)> {
        let peer = self.session_index.get(&receiver).copied();
        if let Some(peer) = peer.filter(|p| self.finishing(p, receiver)) {
            self.hold_overtaken(peer, via, header, &buf[sealed..]);
            return None;
        }
        let opened = peer.and_then(|peer| {
            let link = self.links.get_mut(&peer)?;
            let s = &mut link.session;
            let est = [s.current.as_mut(), s.previous.as_mut()]
                .into_iter()
                .flatten()
                .find(|e| e.local_index == receiver)?;
            est.transport
                .open_at(now, header, counter, &mut buf, sealed)
                .ok()?;
            Some((peer, buf))
        });
        let Some((peer, plain)) = opened else {
            self.counters.secure_dropped += 1;
            return None;
        };
        // A relay datagram from one member cannot speak for another.
        if matches!(via, Via::Relay(from) if from != peer) {
            self.counters.secure_dropped += 1;
            return None;
        }
        match Frame::parse_owned(plain) {
            Ok(f) if f.path == self.path_id && !matches!(f.body, Body::Secure(_)) => Some((peer, f)),
            _ => {
                self.counters.malformed_frames += 1;
                None
            }
        }
    }

    /// Whether `receiver` is our index in a handshake with `peer` that the peer may already
    /// have finished: our init waiting for its response, or our response waiting for its final.
    fn finishing(&self, peer: &NodeIdBytes, receiver: u32) -> bool {
        self.links.get(peer).is_some_and(|l| {
            l.session
                .initiating
                .as_ref()
                .is_some_and(|p| p.init.index() == receiver)
                || l.session
                    .responding
                    .as_ref()
                    .is_some_and(|r| r.index() == receiver)
        })
    }

    /// Keeps a data packet that overtook its session's last handshake packet (bounded; the
    /// oldest goes first), to be opened when that packet lands.
    fn hold_overtaken(&mut self, peer: NodeIdBytes, via: Via, header: &[u8], sealed: &[u8]) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let held = &mut link.session.overtaken;
        if held.len() >= OVERTAKEN_MAX {
            held.remove(0);
            self.counters.secure_dropped += 1;
        }
        let mut packet = header.to_vec();
        packet.extend_from_slice(sealed);
        held.push((via, packet));
        self.counters.overtaken_held += 1;
    }

    /// A session with `peer` is up: opens the packets that overtook its handshake, for the
    /// caller to handle as arrived.
    fn open_overtaken(&mut self, now: Instant, peer: NodeIdBytes) {
        let held = match self.links.get_mut(&peer) {
            Some(link) => std::mem::take(&mut link.session.overtaken),
            None => return,
        };
        for (via, packet) in held {
            if let Some((from, frame)) = self.open_secure(now, via, packet, 0) {
                self.early_in.push((from, frame, Some(via)));
            }
        }
    }

    /// Resends inits, gives up on silent handshakes, forgets dead sessions.
    pub(super) fn secure_timeouts(&mut self, now: Instant) {
        if self.security.is_none() {
            return;
        }
        let peers: Vec<NodeIdBytes> = self.links.keys().copied().collect();
        for peer in peers {
            let Some(link) = self.links.get_mut(&peer) else {
                continue;
            };
            if link
                .session
                .current
                .as_ref()
                .is_some_and(|e| e.transport.expired(now))
            {
                for old in [link.session.current.take(), link.session.previous.take()]
                    .into_iter()
                    .flatten()
                {
                    self.session_index.remove(&old.local_index);
                }
            }
            let Some(link) = self.links.get_mut(&peer) else {
                continue;
            };
            let due = link
                .session
                .initiating
                .as_ref()
                .filter(|p| now >= p.sent + FIRST_RESEND * 2u32.pow(p.tries))
                .map(|p| p.tries);
            match due {
                Some(tries) if tries + 1 >= HANDSHAKE_TRIES => {
                    self.drop_initiating(peer);
                    if let Some(link) = self.links.get_mut(&peer) {
                        self.counters.queue_dropped += link.session.queued.len() as u64;
                        link.session.queued.clear();
                    }
                }
                Some(tries) => self.start_handshake(now, peer, tries + 1),
                None => {}
            }
        }
    }

    /// Erases a departed peer's sessions.
    pub(super) fn forget_sessions(&mut self, session: Session) {
        let indices = [session.current.as_ref(), session.previous.as_ref()]
            .into_iter()
            .flatten()
            .map(|e| e.local_index)
            .chain(session.initiating.as_ref().map(|p| p.init.index()))
            .chain(session.responding.as_ref().map(|r| r.index()));
        for i in indices {
            self.session_index.remove(&i);
        }
    }
}
