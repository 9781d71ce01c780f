//! One relay receiver: the fragments one peer resource sends us on one stream.
//!
//! It acknowledges every fragment it has resolved (stored, delivered, or refused), delivers a
//! datagram exactly once when its last fragment arrives, and keeps its memory bounded:
//! the sequence window, the reassembly bytes and the age of partial datagrams all have limits.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::wire::relay::RelayFrame;

/// Fragments further than this beyond the lowest unresolved one are refused.
pub const RECEIVE_WINDOW: u64 = 4096;

/// What became of one incoming fragment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Seen before: acknowledge again, deliver nothing.
    Duplicate,
    /// Stored; the datagram is not complete yet.
    Stored,
    /// The datagram is complete.
    Complete(Vec<u8>),
    /// Refused for good (acknowledged as an error); the fragment counts as resolved.
    Refused(Refusal),
    /// Not now: the sender should retry later (nothing was stored).
    Busy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    OutsideWindow,
    InconsistentFragments,
    DatagramTooLarge,
}

#[derive(Debug)]
struct Partial {
    fragments: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
    started: Instant,
}

#[derive(Debug)]
pub(super) struct Receiver {
    /// Every seq below this is resolved.
    cumulative: u64,
    /// Resolved seqs at or above `cumulative`.
    resolved: BTreeSet<u64>,
    /// Incomplete datagrams by the seq of their first fragment.
    partial: BTreeMap<u64, Partial>,
    partial_bytes: usize,
    pub last_active: Instant,
}

/// Limits a receiver enforces.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub max_datagram: usize,
    pub reassembly_bytes: usize,
    pub partial_max_age: Duration,
}

impl Receiver {
    pub fn new(now: Instant) -> Self {
        Self {
            cumulative: 0,
            resolved: BTreeSet::new(),
            partial: BTreeMap::new(),
            partial_bytes: 0,
            last_active: now,
        }
    }

    /// Handles one fragment. `can_deliver` is false when the application cannot take another
    /// datagram now; a fragment that would complete one is then answered with `Busy`.
    pub fn on_frame(
        &mut self,
        now: Instant,
        frame: RelayFrame,
        limits: Limits,
        can_deliver: bool,
    ) -> Outcome {
        self.last_active = now;
        let seq = frame.seq;
        if seq < self.cumulative || self.resolved.contains(&seq) {
            return Outcome::Duplicate;
        }
        if seq >= self.cumulative + RECEIVE_WINDOW {
            return Outcome::Refused(Refusal::OutsideWindow);
        }
        let count = usize::from(frame.frag.count);
        let index = usize::from(frame.frag.index);
        if count == 1 {
            if frame.data.len() > limits.max_datagram {
                self.resolve(seq);
                return Outcome::Refused(Refusal::DatagramTooLarge);
            }
            if !can_deliver {
                return Outcome::Busy;
            }
            self.resolve(seq);
            return Outcome::Complete(frame.data);
        }
        // The wire parser guarantees index < count and index <= seq.
        let first = seq - index as u64;
        let existing = self
            .partial
            .get(&first)
            .map(|p| (p.fragments.len(), p.bytes, p.received));
        let (slots, bytes, received) = existing.unwrap_or((count, 0, 0));
        if slots != count {
            self.resolve(seq);
            return Outcome::Refused(Refusal::InconsistentFragments);
        }
        if bytes + frame.data.len() > limits.max_datagram {
            self.drop_partial(first);
            self.resolve(seq);
            return Outcome::Refused(Refusal::DatagramTooLarge);
        }
        let completes = received + 1 == count;
        if completes && !can_deliver {
            return Outcome::Busy;
        }
        if !completes && self.partial_bytes + frame.data.len() > limits.reassembly_bytes {
            return Outcome::Busy;
        }
        self.resolve(seq);
        let partial = self.partial.entry(first).or_insert_with(|| Partial {
            fragments: vec![None; count],
            received: 0,
            bytes: 0,
            started: now,
        });
        partial.bytes += frame.data.len();
        self.partial_bytes += frame.data.len();
        partial.received += 1;
        partial.fragments[index] = Some(frame.data);
        if partial.received < count {
            return Outcome::Stored;
        }
        let done = self.partial.remove(&first).map(|p| {
            self.partial_bytes -= p.bytes;
            p.fragments.into_iter().flatten().flatten().collect::<Vec<u8>>()
        });
        Outcome::Complete(done.unwrap_or_default())
    }

    /// Frees partial datagrams older than the limit; returns how many were dropped.
    pub fn expire(&mut self, now: Instant, limits: Limits) -> usize {
        let old: Vec<u64> = self
            .partial
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= limits.partial_max_age)
            .map(|(&k, _)| k)
            .collect();
        for first in &old {
            self.drop_partial(*first);
        }
        old.len()
    }

    pub fn oldest_partial(&self) -> Option<Instant> {
        self.partial.values().map(|p| p.started).min()
    }

    fn drop_partial(&mut self, first: u64) {
        if let Some(p) = self.partial.remove(&first) {
            self.partial_bytes -= p.bytes;
        }
    }

    fn resolve(&mut self, seq: u64) {
        self.resolved.insert(seq);
        while self.resolved.remove(&self.cumulative) {
            self.cumulative += 1;
        }
    }
}
