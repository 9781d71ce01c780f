//! One relay sender: the datagrams this node sends to one peer resource.
//!
//! Datagrams are split into fragments on enqueue; a fragment gets its `seq` only when first
//! sent, so a datagram dropped before sending leaves no hole in the receiver's sequence space.
//! Every transmission of a fragment is its own IQ (`id` = `r<stream>.<seq>.<try>`), so each
//! result yields an exact RTT sample even for retransmissions.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::window::{RttEstimator, Window};
use crate::wire::relay::{Frag, RelayFrame};

/// A fragment waiting for its first transmission.
#[derive(Debug)]
struct Queued {
    datagram: u64,
    frag: Frag,
    data: Vec<u8>,
}

/// A fragment sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    datagram: u64,
    frag: Frag,
    data: Vec<u8>,
    wire: usize,
    last_sent: Instant,
    tries: u32,
    /// Earliest time of the next retransmission.
    deadline: Instant,
    /// Resend at the next opportunity (the stream was reset).
    resend: bool,
}

/// What a fragment transmission looks like to the relay.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub id: String,
    pub frame: RelayFrame,
    pub retransmission: bool,
}

/// Why a sender gives up on its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// Nothing was acknowledged for this long while data was outstanding.
    Silent(Duration),
    /// One fragment was sent this many times without an acknowledgement.
    Retries(u32),
}

#[derive(Debug)]
pub(super) struct Sender {
    pub stream: u32,
    next_seq: u64,
    next_datagram: u64,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    inflight: BTreeMap<u64, InFlight>,
    inflight_wire: usize,
    pub rtt: RttEstimator,
    pub window: Window,
    /// Last acknowledgement, or the moment data became outstanding after an idle period.
    last_progress: Instant,
    /// Last time anything was queued, sent or acknowledged.
    pub last_active: Instant,
    next_send: Instant,
    backoff: u32,
    /// Payload bytes per fragment and stanza overhead towards this peer.
    frag_payload: usize,
    overhead: usize,
}

/// Wire size of a fragment: base64 text plus envelope.
fn wire_len(payload: usize, overhead: usize) -> usize {
    payload.div_ceil(3) * 4 + overhead
}

impl Sender {
    pub fn new(now: Instant, stream: u32, frag_payload: usize, overhead: usize) -> Self {
        let min = wire_len(frag_payload, overhead);
        Self {
            stream,
            next_seq: 0,
            next_datagram: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: BTreeMap::new(),
            inflight_wire: 0,
            rtt: RttEstimator::default(),
            window: Window::new(2 * min, min, 256 * min),
            last_progress: now,
            last_active: now,
            next_send: now,
            backoff: 0,
            frag_payload,
            overhead,
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty()
    }

    /// Splits a datagram into fragments and queues them.
    pub fn enqueue(&mut self, now: Instant, data: &[u8]) {
        if self.is_idle() {
            self.last_progress = now;
        }
        self.last_active = now;
        let datagram = self.next_datagram;
        self.next_datagram += 1;
        // Fits in u16: the relay refuses datagrams needing more than MAX_FRAGMENTS.
        let count = Self::fragments_for(self.frag_payload, data.len()) as u16;
        for index in 0..count {
            let start = usize::from(index) * self.frag_payload;
            let end = (start + self.frag_payload).min(data.len());
            let chunk = data[start..end].to_vec();
            self.queued_bytes += chunk.len();
            self.queue.push_back(Queued {
                datagram,
                frag: Frag { index, count },
                data: chunk,
            });
        }
    }

    /// Number of fragments a datagram of `len` bytes needs.
    pub fn fragments_for(frag_payload: usize, len: usize) -> usize {
        len.div_ceil(frag_payload).max(1)
    }

    /// Next fragment to put on the wire, if the window, the receiver's window and pacing allow.
    pub fn poll_send(&mut self, now: Instant, max_window: usize) -> Option<Outgoing> {
        if let Some(out) = self.poll_retransmit(now) {
            return Some(out);
        }
        if self.window_blocks(max_window) || now < self.next_send {
            return None;
        }
        let q = self.queue.pop_front()?;
        self.queued_bytes -= q.data.len();
        let wire = wire_len(q.data.len(), self.overhead);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight_wire += wire;
        self.pace(now, wire);
        let deadline = now + self.rto();
        let frame = RelayFrame {
            stream: self.stream,
            seq,
            frag: q.frag,
            data: q.data.clone(),
        };
        self.inflight.insert(
            seq,
            InFlight {
                datagram: q.datagram,
                frag: q.frag,
                data: q.data,
                wire,
                last_sent: now,
                tries: 1,
                deadline,
                resend: false,
            },
        );
        self.last_active = now;
        Some(Outgoing {
            id: self.iq_id(seq, 1),
            frame,
            retransmission: false,
        })
    }

    /// True when the next queued fragment must wait for acknowledgements (or nothing is queued).
    fn window_blocks(&self, max_window: usize) -> bool {
        let Some(next) = self.queue.front() else {
            return true;
        };
        let wire = wire_len(next.data.len(), self.overhead);
        let lowest = self.inflight.keys().next().copied().unwrap_or(self.next_seq);
        let over_cwnd = !self.inflight.is_empty()
            && (self.inflight_wire + wire > self.window.cwnd() || self.inflight.len() >= max_window);
        over_cwnd || self.next_seq - lowest >= max_window as u64
    }

    /// Retransmits at most one fragment: one whose resend was requested, else the lowest one
    /// whose timer expired. A timeout doubles the RTO, collapses the window and postpones the
    /// other timers, so a stalled server gets one probe per RTO, not a window of duplicates.
    fn poll_retransmit(&mut self, now: Instant) -> Option<Outgoing> {
        let (seq, timed_out) = match self.inflight.iter().find(|(_, f)| f.resend) {
            Some((&seq, _)) => (seq, false),
            None => (*self.inflight.iter().find(|(_, f)| f.deadline <= now)?.0, true),
        };
        if timed_out {
            self.backoff = (self.backoff + 1).min(6);
            self.window.on_timeout(now);
        }
        let rto = self.rto();
        if timed_out {
            for f in self.inflight.values_mut() {
                f.deadline = f.deadline.max(now + rto);
            }
        }
        let stream = self.stream;
        let f = self.inflight.get_mut(&seq)?;
        f.tries += 1;
        f.resend = false;
        f.last_sent = now;
        f.deadline = now + rto;
        let tries = f.tries;
        let frame = RelayFrame {
            stream,
            seq,
            frag: f.frag,
            data: f.data.clone(),
        };
        let id = self.iq_id(seq, tries);
        Some(Outgoing {
            id,
            frame,
            retransmission: true,
        })
    }

    /// Resends every fragment in flight: after a stream reset they were most likely lost.
    pub fn resend_all(&mut self, now: Instant) {
        for f in self.inflight.values_mut() {
            f.resend = true;
        }
        self.last_progress = now;
    }

    /// An acknowledgement for `seq`, transmission number `tries`. Returns true if it was new.
    pub fn on_ack(&mut self, now: Instant, seq: u64, tries: u32) -> bool {
        let Some(f) = self.inflight.remove(&seq) else {
            return false;
        };
        self.inflight_wire -= f.wire;
        let sample = (tries == f.tries).then(|| now.duration_since(f.last_sent));
        if let Some(s) = sample {
            self.rtt.on_sample(s);
        }
        let srtt = self.rtt.srtt().unwrap_or_default();
        self.window.on_ack(now, sample, f.wire, srtt);
        self.backoff = 0;
        self.last_progress = now;
        self.last_active = now;
        true
    }

    /// Drops everything of the datagram that `seq` belongs to (the receiver refused it).
    /// Returns false if `seq` is unknown.
    pub fn drop_datagram_of(&mut self, seq: u64) -> bool {
        let Some(f) = self.inflight.remove(&seq) else {
            return false;
        };
        self.inflight_wire -= f.wire;
        let datagram = f.datagram;
        let before = self.queue.len();
        self.queue.retain(|q| q.datagram != datagram);
        if self.queue.len() != before {
            self.queued_bytes = self.queue.iter().map(|q| q.data.len()).sum();
        }
        true
    }

    /// The receiver asked us to wait: retry `seq` after a timeout, with a smaller window.
    pub fn defer(&mut self, now: Instant, seq: u64) -> bool {
        self.window.on_timeout(now);
        let rto = self.rto();
        match self.inflight.get_mut(&seq) {
            Some(f) => {
                f.deadline = now + rto;
                true
            }
            None => false,
        }
    }

    /// Whether this sender has given up: silent too long, or a fragment retried too often.
    pub fn stall(&self, now: Instant, peer_timeout: Duration, max_tries: u32) -> Option<Stall> {
        if self.inflight.is_empty() {
            return None;
        }
        let silent = now.duration_since(self.last_progress);
        if silent >= peer_timeout {
            return Some(Stall::Silent(silent));
        }
        let tries = self.inflight.values().map(|f| f.tries).max().unwrap_or(0);
        (tries > max_tries).then_some(Stall::Retries(tries))
    }

    /// Distinct datagrams still queued or in flight (they are lost if the sender is dropped).
    pub fn pending_datagrams(&self) -> usize {
        let mut ids: Vec<u64> = self.queue.iter().map(|q| q.datagram).collect();
        ids.extend(self.inflight.values().map(|f| f.datagram));
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Earliest instant at which `poll_send` or `stall` may change its answer.
    pub fn poll_timeout(&self, peer_timeout: Duration, max_window: usize) -> Option<Instant> {
        let retransmit = self.inflight.values().map(|f| f.deadline).min();
        let stall = (!self.inflight.is_empty()).then(|| self.last_progress + peer_timeout);
        let pacing = (!self.window_blocks(max_window)).then_some(self.next_send);
        [retransmit, stall, pacing].into_iter().flatten().min()
    }

    fn rto(&self) -> Duration {
        (self.rtt.rto() * (1 << self.backoff)).min(super::window::MAX_RTO)
    }

    /// Spaces transmissions at twice the rate the window allows per round trip, so bursts are
    /// smoothed while acknowledgements still clock the flow.
    fn pace(&mut self, now: Instant, wire: usize) {
        if let Some(srtt) = self.rtt.srtt() {
            let rate = 2.0 * self.window.cwnd() as f64 / srtt.as_secs_f64().max(1e-6);
            self.next_send = now + Duration::from_secs_f64(wire as f64 / rate);
        }
    }

    fn iq_id(&self, seq: u64, tries: u32) -> String {
        format!("r{:08x}.{seq}.{tries}", self.stream)
    }
}

/// Parses a relay IQ id back into (stream, seq, tries).
pub(super) fn parse_iq_id(id: &str) -> Option<(u32, u64, u32)> {
    let rest = id.strip_prefix('r')?;
    let mut parts = rest.splitn(3, '.');
    let stream = parts.next().filter(|s| s.len() == 8)?;
    let stream = u32::from_str_radix(stream, 16).ok()?;
    let seq = parts.next()?.parse().ok()?;
    let tries = parts.next()?.parse().ok()?;
    Some((stream, seq, tries))
}
