//! The IQ relay: reliable datagrams between two overlay members over XMPP (sans-IO).
//!
//! Each datagram travels as one or more `<iq type="set"><d …/></iq>` fragments
//! ([`crate::wire::relay`]); the IQ result is the acknowledgement. The relay adds what XMPP
//! lacks for this use: retransmission with an RTO from measured RTT, a delay-based window that
//! adapts to server shaping, fragmentation within a stanza budget, reassembly, duplicate
//! suppression, and a clear [`Event::PeerFailed`] when a peer stops acknowledging.
//!
//! Drive loop:
//! 1. feed inputs: [`Relay::send`] (application datagrams), [`Relay::handle_frame`] (an IQ
//!    set from a member, already authorised by the caller), [`Relay::handle_ack`] /
//!    [`Relay::handle_error`] (IQ results), [`Relay::handle_reset`] (the XMPP session was
//!    re-established with loss), [`Relay::peer_gone`], and [`Relay::handle_timeout`];
//! 2. drain [`Relay::poll_transmit`] until `None` and send each as a stanza;
//! 3. drain [`Relay::poll_event`];
//! 4. sleep until [`Relay::poll_timeout`].

mod receiver;
mod sender;
#[cfg(test)]
mod tests;
pub mod window;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use self::receiver::{Limits, Outcome, Receiver, Refusal};
use self::sender::{Sender, Stall};
use crate::wire::relay::{RelayFrame, MAX_FRAGMENTS};
use crate::FullJid;

/// Relay settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest stanza the relay sends, in bytes (the server's limit is 256 KiB).
    pub stanza_budget: usize,
    /// Largest datagram accepted for sending or reassembly.
    pub max_datagram: usize,
    /// Most payload bytes queued towards one peer before `send` refuses more.
    pub queue_bytes: usize,
    /// Most fragments in flight towards one peer.
    pub max_window: usize,
    /// A peer that acknowledges nothing for this long while data is outstanding has failed.
    pub peer_timeout: Duration,
    /// Transmissions of one fragment before the peer is declared failed.
    pub max_tries: u32,
    /// Most bytes of incomplete datagrams held for one sender stream.
    pub reassembly_bytes: usize,
    /// A sender idle this long starts a new stream for its next datagram.
    pub sender_idle_reset: Duration,
    /// Receiver state idle this long is forgotten (must exceed `sender_idle_reset`).
    pub receiver_idle_expiry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stanza_budget: 16 * 1024,
            max_datagram: 256 * 1024,
            queue_bytes: 4 * 1024 * 1024,
            max_window: 256,
            peer_timeout: Duration::from_secs(30),
            max_tries: 8,
            reassembly_bytes: 8 * 1024 * 1024,
            sender_idle_reset: Duration::from_secs(60),
            receiver_idle_expiry: Duration::from_secs(600),
        }
    }
}

/// Streams kept per peer resource on the receiving side.
const MAX_STREAMS_PER_PEER: usize = 8;

/// Why `send` refused a datagram.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("datagram of {len} bytes exceeds the relay limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("relay queue towards this peer is full ({queued} bytes); retry later")]
    QueueFull { queued: usize },
}

/// Why a fragment is answered with an error instead of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Malformed or inconsistent fragment (`<bad-request/>`, modify).
    BadRequest,
    /// The datagram exceeds the receiver's limit (`<not-acceptable/>`, modify).
    TooLarge,
    /// Try again later (`<resource-constraint/>`, wait).
    Busy,
}

/// Something the driver must send.
#[derive(Debug)]
pub enum Transmit {
    /// An IQ set carrying one fragment.
    Data {
        to: FullJid,
        id: String,
        frame: RelayFrame,
    },
    /// The empty IQ result acknowledging a fragment.
    Ack { to: FullJid, id: String },
    /// An IQ error refusing a fragment.
    Reject {
        to: FullJid,
        id: String,
        reason: RejectReason,
    },
}

/// Why a peer's datagrams were given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No acknowledgement for this long.
    NotAcknowledging(Duration),
    /// One fragment sent this many times in vain.
    TooManyRetries(u32),
    /// The server or the peer answered with this stanza error condition.
    Refused(String),
    /// The peer went offline.
    Gone,
}

/// What the relay reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole datagram arrived (exactly once).
    Datagram { from: FullJid, data: Vec<u8> },
    /// Sending to `peer` failed; `dropped` datagrams were not delivered.
    PeerFailed {
        peer: FullJid,
        reason: FailReason,
        dropped: usize,
    },
    /// The peer refused one datagram (`condition` names why); the rest continue.
    DatagramRefused { peer: FullJid, condition: String },
}

/// Relay counters for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub fragments_in: u64,
    pub fragments_out: u64,
    pub duplicates_in: u64,
    pub retransmits: u64,
    pub refused_in: u64,
    pub busy_in: u64,
    pub peer_failures: u64,
}

/// Per-peer sender statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStats {
    pub srtt: Option<Duration>,
    pub window: usize,
    pub queued_bytes: usize,
}

/// The relay of one XMPP session.
#[derive(Debug)]
pub struct Relay {
    cfg: Config,
    own_jid_len: usize,
    senders: BTreeMap<FullJid, Sender>,
    receivers: BTreeMap<(FullJid, u32), Receiver>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: Counters,
    rng: StdRng,
}

impl Relay {
    pub fn new(cfg: Config, seed: u64) -> Self {
        Self {
            cfg,
            own_jid_len: 0,
            senders: BTreeMap::new(),
            receivers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Our own full JID, which the server adds to every stanza we send (its length counts
    /// against the stanza budget).
    pub fn set_own_jid(&mut self, jid: &FullJid) {
        self.own_jid_len = jid.as_str().len();
    }

    /// Payload bytes per fragment towards `to`: the budget minus envelope and both JIDs, as
    /// base64 (3 bytes per 4 characters).
    fn frag_payload(&self, to: &FullJid) -> usize {
        let overhead = self.overhead(to);
        (self.cfg.stanza_budget.saturating_sub(overhead) / 4 * 3).max(48)
    }

    fn overhead(&self, to: &FullJid) -> usize {
        RelayFrame::ENVELOPE_OVERHEAD + to.as_str().len() + self.own_jid_len
    }

    /// Queues a datagram for `to`.
    pub fn send(&mut self, now: Instant, to: &FullJid, data: &[u8]) -> Result<(), SendError> {
        let frag_payload = self.frag_payload(to);
        let too_large = data.len() > self.cfg.max_datagram
            || Sender::fragments_for(frag_payload, data.len()) > usize::from(MAX_FRAGMENTS);
        if too_large {
            return Err(SendError::TooLarge {
                len: data.len(),
                limit: self.cfg.max_datagram,
            });
        }
        self.retire_idle_sender(now, to);
        let overhead = self.overhead(to);
        let stream: u32 = self.rng.random();
        let sender = self
            .senders
            .entry(to.clone())
            .or_insert_with(|| Sender::new(now, stream, frag_payload, overhead));
        let queued = sender.queued_bytes();
        if queued > 0 && queued + data.len() > self.cfg.queue_bytes {
            return Err(SendError::QueueFull { queued });
        }
        sender.enqueue(now, data);
        self.counters.datagrams_out += 1;
        self.counters.bytes_out += data.len() as u64;
        self.fill(now);
        Ok(())
    }

    /// A sender idle for long starts a fresh stream, so a receiver that forgot the old one
    /// never sees it continue mid-sequence.
    fn retire_idle_sender(&mut self, now: Instant, to: &FullJid) {
        let idle = self
            .senders
            .get(to)
            .is_some_and(|s| s.is_idle() && now.duration_since(s.last_active) >= self.cfg.sender_idle_reset);
        if idle {
            self.senders.remove(to);
        }
    }

    /// A fragment from `from`, who the caller has checked is an online member of the overlay.
    /// `can_deliver` is false when the application cannot take another datagram right now.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        from: &FullJid,
        id: &str,
        frame: RelayFrame,
        can_deliver: bool,
    ) {
        self.counters.fragments_in += 1;
        let key = (from.clone(), frame.stream);
        if !self.receivers.contains_key(&key) {
            self.evict_streams_of(from);
        }
        let limits = self.limits();
        let receiver = self.receivers.entry(key).or_insert_with(|| Receiver::new(now));
        let outcome = receiver.on_frame(now, frame, limits, can_deliver);
        let to = from.clone();
        let id = id.to_owned();
        match outcome {
            Outcome::Duplicate => {
                self.counters.duplicates_in += 1;
                self.transmits.push_back(Transmit::Ack { to, id });
            }
            Outcome::Stored => self.transmits.push_back(Transmit::Ack { to, id }),
            Outcome::Complete(data) => {
                self.counters.datagrams_in += 1;
                self.counters.bytes_in += data.len() as u64;
                self.transmits.push_back(Transmit::Ack { to, id });
                self.events.push_back(Event::Datagram {
                    from: from.clone(),
                    data,
                });
            }
            Outcome::Refused(refusal) => {
                self.counters.refused_in += 1;
                let reason = match refusal {
                    Refusal::DatagramTooLarge => RejectReason::TooLarge,
                    Refusal::OutsideWindow | Refusal::InconsistentFragments => RejectReason::BadRequest,
                };
                self.transmits.push_back(Transmit::Reject { to, id, reason });
            }
            Outcome::Busy => {
                self.counters.busy_in += 1;
                self.transmits.push_back(Transmit::Reject {
                    to,
                    id,
                    reason: RejectReason::Busy,
                });
            }
        }
    }

    /// Answers a fragment that failed to parse.
    pub fn reject_malformed(&mut self, from: &FullJid, id: &str) {
        self.counters.refused_in += 1;
        self.transmits.push_back(Transmit::Reject {
            to: from.clone(),
            id: id.to_owned(),
            reason: RejectReason::BadRequest,
        });
    }

    fn limits(&self) -> Limits {
        Limits {
            max_datagram: self.cfg.max_datagram,
            reassembly_bytes: self.cfg.reassembly_bytes,
            partial_max_age: self.cfg.peer_timeout * 2,
        }
    }

    fn evict_streams_of(&mut self, peer: &FullJid) {
        let mut streams: Vec<(Instant, u32)> = self
            .receivers
            .iter()
            .filter(|((jid, _), _)| jid == peer)
            .map(|((_, stream), r)| (r.last_active, *stream))
            .collect();
        if streams.len() < MAX_STREAMS_PER_PEER {
            return;
        }
        streams.sort();
        let excess = streams.len() + 1 - MAX_STREAMS_PER_PEER;
        for (_, stream) in streams.into_iter().take(excess) {
            self.receivers.remove(&(peer.clone(), stream));
        }
    }

    /// True if `id` names a relay IQ (results for it belong to this core).
    pub fn owns_id(id: &str) -> bool {
        sender::parse_iq_id(id).is_some()
    }

    /// An IQ result from `from` for one of our fragments.
    pub fn handle_ack(&mut self, now: Instant, from: &FullJid, id: &str) {
        let Some((stream, seq, tries)) = sender::parse_iq_id(id) else {
            return;
        };
        if let Some(s) = self.senders.get_mut(from).filter(|s| s.stream == stream) {
            if s.on_ack(now, seq, tries) {
                self.counters.fragments_out += 1;
            }
        }
        self.fill(now);
    }

    /// An IQ error from `from` (or from a server on its behalf) for one of our fragments.
    /// `condition` is the defined condition's element name, e.g. `service-unavailable`.
    pub fn handle_error(&mut self, now: Instant, from: &FullJid, id: &str, condition: &str) {
        let Some((stream, seq, _)) = sender::parse_iq_id(id) else {
            return;
        };
        let Some(s) = self.senders.get_mut(from).filter(|s| s.stream == stream) else {
            return;
        };
        match condition {
            "resource-constraint" => {
                s.defer(now, seq);
            }
            "bad-request" | "not-acceptable" | "policy-violation" => {
                if s.drop_datagram_of(seq) {
                    self.events.push_back(Event::DatagramRefused {
                        peer: from.clone(),
                        condition: condition.to_owned(),
                    });
                }
            }
            other => self.fail_peer(from, FailReason::Refused(other.to_owned())),
        }
        self.fill(now);
    }

    /// The XMPP stream was re-established with loss: whatever was in flight is resent.
    pub fn handle_reset(&mut self, now: Instant) {
        for s in self.senders.values_mut() {
            s.resend_all(now);
        }
        self.fill(now);
    }

    /// `peer` went offline: its queued datagrams fail and its state is dropped.
    pub fn peer_gone(&mut self, peer: &FullJid) {
        self.fail_peer(peer, FailReason::Gone);
        self.receivers.retain(|(jid, _), _| jid != peer);
    }

    fn fail_peer(&mut self, peer: &FullJid, reason: FailReason) {
        let Some(s) = self.senders.remove(peer) else {
            return;
        };
        let dropped = s.pending_datagrams();
        if dropped > 0 || !matches!(reason, FailReason::Gone) {
            self.counters.peer_failures += 1;
            self.events.push_back(Event::PeerFailed {
                peer: peer.clone(),
                reason,
                dropped,
            });
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let stalled: Vec<(FullJid, Stall)> = self
            .senders
            .iter()
            .filter_map(|(jid, s)| {
                s.stall(now, self.cfg.peer_timeout, self.cfg.max_tries)
                    .map(|st| (jid.clone(), st))
            })
            .collect();
        for (jid, stall) in stalled {
            let reason = match stall {
                Stall::Silent(d) => FailReason::NotAcknowledging(d),
                Stall::Retries(n) => FailReason::TooManyRetries(n),
            };
            self.fail_peer(&jid, reason);
        }
        let limits = self.limits();
        let expiry = self.cfg.receiver_idle_expiry;
        self.receivers.retain(|_, r| {
            r.expire(now, limits);
            now.duration_since(r.last_active) < expiry
        });
        self.fill(now);
    }

    /// Moves every fragment the windows allow into the transmit queue.
    fn fill(&mut self, now: Instant) {
        let max_window = self.cfg.max_window;
        for (to, s) in self.senders.iter_mut() {
            while let Some(out) = s.poll_send(now, max_window) {
                self.counters.retransmits += u64::from(out.retransmission);
                self.transmits.push_back(Transmit::Data {
                    to: to.clone(),
                    id: out.id,
                    frame: out.frame,
                });
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let senders = self
            .senders
            .values()
            .filter_map(|s| s.poll_timeout(self.cfg.peer_timeout, self.cfg.max_window));
        let partial_age = self.cfg.peer_timeout * 2;
        let receivers = self.receivers.values().map(|r| {
            let idle = r.last_active + self.cfg.receiver_idle_expiry;
            r.oldest_partial().map_or(idle, |t| idle.min(t + partial_age))
        });
        senders.chain(receivers).min()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn peer_stats(&self, peer: &FullJid) -> Option<PeerStats> {
        self.senders.get(peer).map(|s| PeerStats {
            srtt: s.rtt.srtt(),
            window: s.window.cwnd(),
            queued_bytes: s.queued_bytes(),
        })
    }
}
