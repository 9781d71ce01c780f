//! End-to-end sessions across the ring (sans-IO). Two members that talk through forwarding
//! peers (a ring tunnel, greedy routing) run the same Noise handshake as links do, with the
//! purpose `EndToEnd` bound into its prologue, carried as the payload of routed ring messages;
//! data then travels sealed in that session. Forwarders see the ring's routing header and
//! opaque bytes. The handshake proves the peer holds the key behind the NodeId the ring message
//! claims as its source, and a certificate of our group that the CRL does not revoke.
//!
//! Packets are `secure::wire` packets (init, response, final, data). A datagram to a peer
//! without a session waits (at most [`QUEUE_MAX`]) while the handshake runs — IK when the
//! peer's key is known (rendezvous publishes it), XX otherwise; an init is resent after 1, 2,
//! 4 and 8 s, then the handshake is given up with its queue. Crossing inits: the lower NodeId's
//! wins. Sessions are replaced after two minutes by whoever sends first then.
//!
//! Drive: [`EndToEnd::send`] and [`EndToEnd::handle`] (a ring delivery), then drain
//! [`EndToEnd::poll_transmit`] (route each to its peer) and [`EndToEnd::poll_delivered`];
//! call [`EndToEnd::handle_timeout`] at [`EndToEnd::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ringlet_xmpp::NodeIdBytes;

use super::noise::{respond, Established, Initiating, Local, Purpose, Responded, Responding};
use super::revocation::Crl;
use super::wire::{self, Packet};
use super::{member_check, Expect};
use crate::identity::NodeId;

/// Datagrams held per peer while its handshake runs.
pub const QUEUE_MAX: usize = 64;
/// Peers with session state at most: an init from a source beyond them is dropped, so inits
/// claiming made-up sources cannot grow our half-open state without bound.
pub const PEERS_MAX: usize = 4096;
const TRIES: u32 = 5;
const FIRST_RESEND: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub handshakes: u64,
    /// Handshakes refused: another group, a key that is not the claimed NodeId's, revoked.
    pub refused: u64,
    /// Packets dropped: malformed, forged, replayed, of an unknown session or another source.
    pub dropped: u64,
    /// Datagrams dropped waiting for a handshake (queue full, or the handshake given up).
    pub queue_dropped: u64,
    pub sealed: u64,
    pub opened: u64,
}

#[derive(Default)]
struct Peer {
    current: Option<Established>,
    previous: Option<Established>,
    began_current: bool,
    initiating: Option<(Initiating, Instant, u32)>,
    responding: Option<Box<Responding>>,
    queued: VecDeque<Vec<u8>>,
    /// The peer's static key, from rendezvous (IK).
    key: Option<[u8; 32]>,
    /// The newest init timestamp taken from this peer (older or equal ones are replays).
    last_init: u64,
}

pub struct EndToEnd {
    local: Local,
    ca: [u8; 32],
    own: NodeIdBytes,
    epoch: Instant,
    epoch_unix: u64,
    peers: BTreeMap<NodeIdBytes, Peer>,
    index: BTreeMap<u32, NodeIdBytes>,
    rng: StdRng,
    last_timestamp: u64,
    transmits: VecDeque<(NodeIdBytes, Vec<u8>)>,
    delivered: VecDeque<(NodeIdBytes, Vec<u8>)>,
    counters: Counters,
}

impl EndToEnd {
    /// `local` as the link layer's (same key and certificate); `epoch_unix` is the wall clock
    /// at `epoch`, which certificates are judged by.
    pub fn new(
        local: Local,
        ca: [u8; 32],
        own: NodeIdBytes,
        epoch: Instant,
        epoch_unix: u64,
        seed: u64,
    ) -> Self {
        EndToEnd {
            local,
            ca,
            own,
            epoch,
            epoch_unix,
            peers: BTreeMap::new(),
            index: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            last_timestamp: 0,
            transmits: VecDeque::new(),
            delivered: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The peer's static key as rendezvous announced it (ignored if it is not the NodeId's).
    pub fn set_key(&mut self, peer: NodeIdBytes, key: [u8; 32]) {
        if NodeId::of_public_key(&key).0 == peer {
            self.peers.entry(peer).or_default().key = Some(key);
        }
    }

    /// Forgets a peer (gone offline, or revoked): its sessions and what waits for it.
    pub fn forget(&mut self, peer: &NodeIdBytes) {
        if let Some(p) = self.peers.remove(peer) {
            self.counters.queue_dropped += p.queued.len() as u64;
            self.index.retain(|_, owner| owner != peer);
        }
    }

    /// The CRL version our hellos carry.
    pub fn set_crl_version(&mut self, version: u64) {
        self.local.set_crl_version(version);
    }

    /// Seals `data` for `to`, or holds it for the handshake (which starts if none runs).
    /// The caller sends only to members (rendezvous knows them), which bounds the peers.
    pub fn send(&mut self, now: Instant, to: NodeIdBytes, data: &[u8]) {
        let peer = self.peers.entry(to).or_default();
        if let Some(est) = peer.current.as_mut().filter(|e| !e.transport.expired(now)) {
            let header = wire::data_header(est.remote_index, est.transport.next_counter());
            let mut buf = data.to_vec();
            if est.transport.seal(now, &header, &mut buf).is_ok() {
                let mut packet = header.to_vec();
                packet.extend_from_slice(&buf);
                self.transmits.push_back((to, packet));
                self.counters.sealed += 1;
            }
            let rekey = est.transport.rekey_due(now, peer.began_current);
            if rekey && peer.initiating.is_none() {
                self.start(now, to, 0);
            }
            return;
        }
        if peer.queued.len() >= QUEUE_MAX {
            peer.queued.pop_front();
            self.counters.queue_dropped += 1;
        }
        peer.queued.push_back(data.to_vec());
        if peer.initiating.is_none() {
            self.start(now, to, 0);
        }
    }

    fn start(&mut self, now: Instant, to: NodeIdBytes, tries: u32) {
        let index = self.fresh_index(to);
        let seed: [u8; 32] = self.rng.random();
        let unix_ms = self.epoch_unix * 1000 + now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_timestamp = unix_ms.max(self.last_timestamp + 1);
        let key = self.peers.get(&to).and_then(|p| p.key);
        match Initiating::start(
            &self.local,
            Purpose::EndToEnd,
            key.as_ref(),
            index,
            seed,
            self.last_timestamp,
            &[],
        ) {
            Ok((init, packet)) => {
                let peer = self.peers.entry(to).or_default();
                if let Some((old, _, _)) = peer.initiating.replace((init, now, tries)) {
                    self.index.remove(&old.index());
                }
                self.transmits.push_back((to, packet));
            }
            Err(_) => {
                self.index.remove(&index);
            }
        }
    }

    fn fresh_index(&mut self, peer: NodeIdBytes) -> u32 {
        super::fresh_index(&mut self.index, &mut self.rng, peer)
    }

    /// A routed payload from `from` (the source the ring message claims).
    pub fn handle(&mut self, now: Instant, from: NodeIdBytes, bytes: &[u8], crl: Option<&Crl>) {
        let Ok(packet) = Packet::parse(bytes) else {
            self.counters.dropped += 1;
            return;
        };
        match packet {
            Packet::Init {
                pattern,
                sender,
                noise,
                ..
            } => self.on_init(now, from, pattern, sender, noise, crl),
            Packet::Response {
                sender,
                receiver,
                noise,
            } => self.on_response(now, from, sender, receiver, noise, crl),
            Packet::Final { receiver, noise } => self.on_final(now, from, receiver, noise, crl),
            Packet::Data {
                receiver,
                counter,
                header,
                sealed,
            } => self.on_data(now, from, receiver, counter, header, sealed),
            Packet::Cookie { .. } => self.counters.dropped += 1,
        }
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.epoch_unix + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn on_init(
        &mut self,
        now: Instant,
        from: NodeIdBytes,
        pattern: u8,
        sender: u32,
        noise: &[u8],
        crl: Option<&Crl>,
    ) {
        if self.peers.len() >= PEERS_MAX && !self.peers.contains_key(&from) {
            self.counters.dropped += 1;
            return;
        }
        let crossing = self.peers.get(&from).is_some_and(|p| p.initiating.is_some());
        if crossing && self.own < from {
            // Ours wins; the peer answers it.
            return;
        }
        let index = self.fresh_index(from);
        let seed: [u8; 32] = self.rng.random();
        let check = self.peer_check(now, from, crl);
        match respond(
            now,
            &self.local,
            Purpose::EndToEnd,
            pattern,
            sender,
            noise,
            index,
            seed,
            check,
        ) {
            Ok(Responded::Done(est, response)) => {
                if !self.fresh_init(from, est.peer.timestamp) {
                    self.index.remove(&index);
                    return;
                }
                self.drop_initiating(&from);
                self.transmits.push_back((from, response));
                self.install(now, from, *est, false);
            }
            Ok(Responded::Awaiting(responding, response)) => {
                self.drop_initiating(&from);
                let peer = self.peers.entry(from).or_default();
                if let Some(old) = peer.responding.replace(responding) {
                    self.index.remove(&old.index());
                }
                self.transmits.push_back((from, response));
            }
            Err(_) => {
                self.index.remove(&index);
                self.counters.refused += 1;
            }
        }
    }

    /// How a handshake judges the peer: a certificate of our group, valid now, not revoked,
    /// for the key it proves, which must be the one behind the source the ring message claims.
    fn peer_check<'a>(
        &'a self,
        now: Instant,
        from: NodeIdBytes,
        crl: Option<&'a Crl>,
    ) -> impl FnOnce(&super::noise::Peer) -> Result<(), super::cert::CertError> + 'a {
        let expect = Expect {
            node: Some(NodeId(from)),
            jid: None,
            crl,
        };
        member_check(&self.ca, self.unix_now(now), expect)
    }

    /// Takes an init's timestamp; false (and counted) for a replay: not newer than the last.
    fn fresh_init(&mut self, from: NodeIdBytes, timestamp: u64) -> bool {
        let peer = self.peers.entry(from).or_default();
        if timestamp <= peer.last_init {
            self.counters.dropped += 1;
            return false;
        }
        peer.last_init = timestamp;
        true
    }

    fn drop_initiating(&mut self, peer: &NodeIdBytes) {
        if let Some((old, _, _)) = self.peers.get_mut(peer).and_then(|p| p.initiating.take()) {
            self.index.remove(&old.index());
        }
    }

    #[allow(clippy::too_many_arguments)] // the parts of one parsed packet, plus its source
    fn on_response(
        &mut self,
        now: Instant,
        from: NodeIdBytes,
        sender: u32,
        receiver: u32,
        noise: &[u8],
        crl: Option<&Crl>,
    ) {
        if self.index.get(&receiver) != Some(&from) {
            self.counters.dropped += 1;
            return;
        }
        let Some((init, _, _)) = self
            .peers
            .get_mut(&from)
            .and_then(|p| p.initiating.take_if(|(i, _, _)| i.index() == receiver))
        else {
            self.counters.dropped += 1;
            return;
        };
        let check = self.peer_check(now, from, crl);
        match init.on_response(now, &self.local, sender, noise, check) {
            Ok((est, final_packet)) => {
                if let Some(p) = final_packet {
                    self.transmits.push_back((from, p));
                }
                self.install(now, from, est, true);
            }
            Err(_) => {
                self.index.remove(&receiver);
                self.counters.refused += 1;
            }
        }
    }

    fn on_final(&mut self, now: Instant, from: NodeIdBytes, receiver: u32, noise: &[u8], crl: Option<&Crl>) {
        let Some(responding) = self
            .peers
            .get_mut(&from)
            .and_then(|p| p.responding.take_if(|r| r.index() == receiver))
        else {
            self.counters.dropped += 1;
            return;
        };
        let check = self.peer_check(now, from, crl);
        match responding.on_final(now, noise, check) {
            Ok(est) => {
                if !self.fresh_init(from, est.peer.timestamp) {
                    self.index.remove(&receiver);
                    return;
                }
                self.install(now, from, est, false);
            }
            Err(_) => {
                self.index.remove(&receiver);
                self.counters.refused += 1;
            }
        }
    }

    fn install(&mut self, now: Instant, from: NodeIdBytes, est: Established, began: bool) {
        let peer = self.peers.entry(from).or_default();
        if let Some(old) = peer.previous.take() {
            self.index.remove(&old.local_index);
        }
        peer.previous = peer.current.replace(est);
        peer.began_current = began;
        self.counters.handshakes += 1;
        let queued = std::mem::take(&mut peer.queued);
        for data in queued {
            self.send(now, from, &data);
        }
    }

    fn on_data(
        &mut self,
        now: Instant,
        from: NodeIdBytes,
        receiver: u32,
        counter: u64,
        header: &[u8],
        sealed: &[u8],
    ) {
        // The session proves the sender; a packet of one peer's session claiming another
        // source is refused all the same.
        if self.index.get(&receiver) != Some(&from) {
            self.counters.dropped += 1;
            return;
        }
        let opened = self.peers.get_mut(&from).and_then(|p| {
            let est = [p.current.as_mut(), p.previous.as_mut()]
                .into_iter()
                .flatten()
                .find(|e| e.local_index == receiver)?;
            let mut buf = sealed.to_vec();
            est.transport.open(now, header, counter, &mut buf).ok()?;
            Some(buf)
        });
        match opened {
            Some(data) => {
                self.counters.opened += 1;
                self.delivered.push_back((from, data));
            }
            None => self.counters.dropped += 1,
        }
    }

    /// Resends inits, gives up silent handshakes, forgets expired sessions.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<NodeIdBytes> = self.peers.keys().copied().collect();
        for id in ids {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            for slot in [&mut p.current, &mut p.previous] {
                if slot.as_ref().is_some_and(|e| e.transport.expired(now)) {
                    if let Some(old) = slot.take() {
                        self.index.remove(&old.local_index);
                    }
                }
            }
            let due = p
                .initiating
                .as_ref()
                .filter(|(_, sent, tries)| now >= *sent + FIRST_RESEND * 2u32.pow(*tries))
                .map(|(_, _, tries)| *tries);
            match due {
                Some(tries) if tries + 1 >= TRIES => {
                    self.drop_initiating(&id);
                    if let Some(p) = self.peers.get_mut(&id) {
                        self.counters.queue_dropped += p.queued.len() as u64;
                        p.queued.clear();
                    }
                }
                Some(tries) => self.start(now, id, tries + 1),
                None => {}
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let resend = p
                    .initiating
                    .as_ref()
                    .map(|(_, sent, tries)| *sent + FIRST_RESEND * 2u32.pow(*tries));
                let expiry = p.current.as_ref().map(|e| e.transport.reject_at());
                resend.into_iter().chain(expiry)
            })
            .min()
    }

    /// A packet to route to the peer.
    pub fn poll_transmit(&mut self) -> Option<(NodeIdBytes, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// A datagram a peer sealed for us.
    pub fn poll_delivered(&mut self) -> Option<(NodeIdBytes, Vec<u8>)> {
        self.delivered.pop_front()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;
    use crate::identity::NodeKey;
    use crate::secure::cert::Ca;
    use crate::secure::revocation::{Revocation, Target};

    const UNIX: u64 = 1_800_000_000;

    fn node(now: Instant, secret: u8, ca_seed: u8, user: &str) -> (EndToEnd, NodeIdBytes, [u8; 32]) {
        let key = NodeKey::from_secret([secret; 32]);
        let ca = Ca::from_seed("friends", [ca_seed; 32]).unwrap();
        let cert = ca.sign(
            key.public_bytes(),
            &user.parse().unwrap(),
            u64::from(secret),
            0,
            UNIX + 86_400,
        );
        let local = Local::new(key.secret_bytes(), &cert, 0);
        let group = Ca::from_seed("friends", [1; 32]).unwrap().public();
        let id = key.node_id().0;
        (
            EndToEnd::new(local, group, id, now, UNIX, u64::from(secret)),
            id,
            key.public_bytes(),
        )
    }

    /// Moves packets between `a` and `b` through a forwarder that records what it saw;
    /// `tamper` may change each packet on the way.
    fn shuttle(
        now: Instant,
        nodes: &mut [(EndToEnd, NodeIdBytes, [u8; 32]); 2],
        seen: &mut Vec<Vec<u8>>,
        tamper: &mut dyn FnMut(&mut Vec<u8>),
        crl: Option<&Crl>,
    ) {
        for _ in 0..10 {
            let mut moved = false;
            for i in 0..2 {
                while let Some((to, mut bytes)) = nodes[i].0.poll_transmit() {
                    moved = true;
                    assert_eq!(to, nodes[1 - i].1);
                    seen.push(bytes.clone());
                    tamper(&mut bytes);
                    let from = nodes[i].1;
                    nodes[1 - i].0.handle(now, from, &bytes, crl);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn delivered(e: &mut EndToEnd) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| e.poll_delivered())
            .map(|(_, d)| d)
            .collect()
    }

    #[test]
    fn members_talk_through_a_forwarder_that_sees_only_ciphertext() {
        let now = Instant::now();
        for ik in [true, false] {
            let mut n = [node(now, 1, 1, "a@x.test"), node(now, 2, 1, "b@x.test")];
            if ik {
                let (id, key) = (n[1].1, n[1].2);
                n[0].0.set_key(id, key);
            }
            let b = n[1].1;
            n[0].0.send(now, b, b"the secret plan");
            let mut seen = Vec::new();
            shuttle(now, &mut n, &mut seen, &mut |_| {}, None);
            assert_eq!(delivered(&mut n[1].0), [b"the secret plan".to_vec()], "ik {ik}");
            let a = n[0].1;
            n[1].0.send(now, a, b"reply");
            shuttle(now, &mut n, &mut seen, &mut |_| {}, None);
            assert_eq!(delivered(&mut n[0].0), [b"reply".to_vec()]);
            assert_eq!(
                seen.len(),
                if ik { 4 } else { 5 },
                "ik {ik}: handshake and data packets"
            );
            for packet in &seen {
                assert!(
                    !packet.windows(6).any(|w| w == b"secret" || w == b"a@x.te"),
                    "the forwarder read plaintext"
                );
            }
        }
    }

    #[test]
    fn strangers_impostors_revoked_peers_and_tampering_get_nothing() {
        let now = Instant::now();
        // Another group's node.
        let mut n = [node(now, 1, 1, "a@x.test"), node(now, 3, 9, "s@x.test")];
        let s = n[1].1;
        n[0].0.send(now, s, b"hi");
        shuttle(now, &mut n, &mut Vec::new(), &mut |_| {}, None);
        n[1].0.send(now, n[0].1, b"let me in");
        shuttle(now, &mut n, &mut Vec::new(), &mut |_| {}, None);
        assert!(delivered(&mut n[0].0).is_empty() && delivered(&mut n[1].0).is_empty());
        assert!(n[0].0.counters().refused >= 1);

        // A member whose messages claim another member's NodeId as their source.
        // (IK: the init carries b's key, which does not hash to c's NodeId.)
        let (mut a, a_id, a_key) = node(now, 1, 1, "a@x.test");
        let (mut b, _, _) = node(now, 2, 1, "b@x.test");
        let (_, c_id, _) = node(now, 4, 1, "c@x.test");
        b.set_key(a_id, a_key);
        b.send(now, a_id, b"I am c");
        while let Some((_, bytes)) = b.poll_transmit() {
            a.handle(now, c_id, &bytes, None);
        }
        assert_eq!(a.counters().handshakes, 0);
        assert_eq!(a.counters().refused, 1);

        // A revoked member.
        let ca = Ca::from_seed("friends", [1; 32]).unwrap();
        let mut crl = Crl::default();
        assert!(crl.add(
            &ca.public(),
            Revocation::sign(&ca, Target::User("b@x.test".into()), UNIX)
        ));
        let mut n = [node(now, 1, 1, "a@x.test"), node(now, 2, 1, "b@x.test")];
        n[1].0.send(now, n[0].1, b"revoked");
        shuttle(now, &mut n, &mut Vec::new(), &mut |_| {}, Some(&crl));
        assert!(delivered(&mut n[0].0).is_empty());
        assert!(n[0].0.counters().refused >= 1);

        // Bit flips on the way: nothing gets through, and the session survives the
        // untouched packets that follow.
        let mut n = [node(now, 1, 1, "a@x.test"), node(now, 2, 1, "b@x.test")];
        let b = n[1].1;
        n[0].0.send(now, b, b"first");
        shuttle(now, &mut n, &mut Vec::new(), &mut |_| {}, None);
        assert_eq!(delivered(&mut n[1].0), [b"first".to_vec()]);
        for bit in [0usize, 9, 40, 100, 150] {
            n[0].0.send(now, b, b"flipped");
            shuttle(
                now,
                &mut n,
                &mut Vec::new(),
                &mut |p| {
                    let i = (bit / 8).min(p.len() - 1);
                    p[i] ^= 1 << (bit % 8);
                },
                None,
            );
        }
        assert!(delivered(&mut n[1].0).is_empty(), "a tampered packet opened");
        // A replayed packet is dropped too.
        n[0].0.send(now, b, b"once");
        let mut seen = Vec::new();
        shuttle(now, &mut n, &mut seen, &mut |_| {}, None);
        let a = n[0].1;
        n[1].0.handle(now, a, seen.last().unwrap(), None);
        assert_eq!(delivered(&mut n[1].0), [b"once".to_vec()]);
    }

    #[test]
    fn a_silent_peer_costs_five_inits_then_its_queue_is_dropped() {
        let base = Instant::now();
        let (mut a, _, _) = node(base, 1, 1, "a@x.test");
        let (_, b, _) = node(base, 2, 1, "b@x.test");
        a.send(base, b, b"anyone?");
        let mut inits = 0;
        let mut now = base;
        while let Some(at) = a.poll_timeout() {
            while a.poll_transmit().is_some() {
                inits += 1;
            }
            now = at;
            a.handle_timeout(now);
            if now > base + Duration::from_secs(60) {
                break;
            }
        }
        while a.poll_transmit().is_some() {
            inits += 1;
        }
        assert_eq!(inits, 5);
        assert_eq!(a.counters().queue_dropped, 1);
        // Resent at 1, 3, 7 and 15 s; given up at 31 s.
        assert_eq!(now, base + Duration::from_secs(31));
    }

    #[test]
    fn inits_from_made_up_sources_stop_at_the_peer_bound() {
        let now = Instant::now();
        // XX inits (anonymous until the final message): each costs a half-open slot.
        let (mut a, a_id, _) = node(now, 1, 1, "a@x.test");
        let (mut b, _, _) = node(now, 2, 1, "b@x.test");
        b.send(now, a_id, b"x");
        let (_, init) = b.poll_transmit().unwrap();
        for i in 0..PEERS_MAX as u32 + 10 {
            let mut fake = [0u8; 20];
            fake[..4].copy_from_slice(&i.to_be_bytes());
            a.handle(now, fake, &init, None);
        }
        assert_eq!(a.peers.len(), PEERS_MAX);
        assert_eq!(a.counters().dropped, 10);
    }
}
