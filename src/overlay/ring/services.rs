//! What the ring offers above routing: app messages, the DHT (put, get, replication to the
//! root's neighbours, re-puts at half the lease) and bounded broadcast.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Event, Ring};
use crate::overlay::addr::RingAddr;
use crate::overlay::broadcast::split;
use crate::overlay::dht::point;
use crate::overlay::wire::{Message, Mode, Record, Routed, RoutedBody, MAX_PAYLOAD, MAX_VALUE};

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    #[error("value of {0} bytes is over the 1 KiB limit")]
    ValueTooBig(usize),
    #[error("payload of {0} bytes is too big")]
    PayloadTooBig(usize),
    #[error("too many puts or lookups in flight")]
    Busy,
}

/// A broadcast sub-range handed to a link, with what it takes to hand it again.
pub(super) struct HandedRange {
    at: Instant,
    peer: RingAddr,
    origin: RingAddr,
    seq: u32,
    start: RingAddr,
    end: RingAddr,
    payload: Vec<u8>,
}

/// Broadcast sub-ranges handed to links lately, newest last.
#[derive(Default)]
pub(super) struct Handed(VecDeque<HandedRange>);

/// How many hand-outs, and for how long, a lost link or `cut_off` can look back on.
const HANDED_MAX: usize = 32;
const HANDED_FOR: Duration = Duration::from_secs(30);

impl Handed {
    fn record(&mut self, range: HandedRange) {
        let now = range.at;
        while self.0.len() >= HANDED_MAX || self.0.front().is_some_and(|e| now >= e.at + HANDED_FOR) {
            self.0.pop_front();
        }
        self.0.push_back(range);
    }

    /// Forgets and returns the sub-ranges handed to `peer`.
    fn take(&mut self, peer: RingAddr) -> Vec<HandedRange> {
        let (to_peer, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|e| e.peer == peer);
        self.0 = rest.into();
        to_peer
    }
}

impl Ring {
    /// Sends `payload` to the node at `dst` (exact routing).
    pub fn send(&mut self, now: Instant, dst: RingAddr, payload: Vec<u8>) -> Result<(), Error> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooBig(payload.len()));
        }
        self.originate(now, dst, Mode::Exact, RoutedBody::App(payload));
        Ok(())
    }

    /// Broadcasts to every node in [start, end) (`start == end`: the whole ring).
    pub fn broadcast(
        &mut self,
        now: Instant,
        start: RingAddr,
        end: RingAddr,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::PayloadTooBig(payload.len()));
        }
        self.broadcast_seq = self.broadcast_seq.wrapping_add(1);
        let seq = self.broadcast_seq;
        if start == end {
            let me = self.me();
            self.cover(now, me, seq, me, me, payload);
        } else {
            self.originate(
                now,
                start,
                Mode::Right,
                RoutedBody::Broadcast { seq, end, payload },
            );
        }
        Ok(())
    }

    /// `peer` is cut off (its certificate revoked): its link goes, and if we handed it part of
    /// the ring in a broadcast of `payload` (the news of its revocation), we cover that part
    /// ourselves, so a revoked node cannot swallow the news on its way to the nodes behind it.
    pub fn cut_off(&mut self, now: Instant, peer: RingAddr, payload: Vec<u8>) -> Result<(), Error> {
        // Taken first: losing the link must not hand them to the revoked node's place again.
        let handed = self.handed.take(peer);
        self.handle_link_down(now, peer);
        let mut one = [0u8; 20];
        one[19] = 1;
        let ranges = handed.into_iter().filter(|h| h.payload == payload);
        for HandedRange { start, end, .. } in ranges {
            // The range began at the peer itself (it was in it): start just past it.
            let start = if start == peer {
                peer.wrapping_add(RingAddr::from_bytes(one))
            } else {
                start
            };
            if start != end {
                self.broadcast(now, start, end, payload.clone())?;
            }
        }
        Ok(())
    }

    /// The link to `peer` is gone: what we handed it lately may have died with it, so each such
    /// sub-range is routed to its start, where the node at or after it covers it (nodes that
    /// had it already ignore it).
    pub(super) fn hand_again(&mut self, now: Instant, peer: RingAddr) {
        for h in self.handed.take(peer) {
            let body = RoutedBody::Broadcast {
                seq: h.seq,
                end: h.end,
                payload: h.payload,
            };
            let msg = Routed {
                src: h.origin,
                ..self.own(h.start, Mode::Right, body)
            };
            self.route(now, None, msg);
        }
    }

    /// Covers [start, end): deliver here if inside, hand each link in range its sub-range.
    pub(super) fn cover(
        &mut self,
        now: Instant,
        origin: RingAddr,
        seq: u32,
        start: RingAddr,
        end: RingAddr,
        payload: Vec<u8>,
    ) {
        if !self.seen.first_time(now, origin, seq) {
            return;
        }
        let me = self.me();
        let links: Vec<RingAddr> = self.table.routing().map(|(a, _)| *a).collect();
        let mut hand = split(me, start, end, links);
        if self.table.has_routing_links() {
            hand.extend(self.leaves_to_cover(me, start, end));
        } else if let Some(home) = self.home().filter(|_| origin == me) {
            // A leaf hands its own broadcast to a router, which covers the range for it.
            hand.push((home, start, end));
        }
        for (peer, s, e) in hand {
            self.stats.broadcasts_forwarded += 1;
            self.handed.record(HandedRange {
                at: now,
                peer,
                origin,
                seq,
                start: s,
                end: e,
                payload: payload.clone(),
            });
            let msg = Message::Broadcast {
                origin,
                seq,
                start: s,
                end: e,
                payload: payload.clone(),
            };
            self.send_link(peer, &msg);
        }
        if start == end || me.in_range(start, end) {
            self.emit(Event::Broadcast { origin, payload });
        }
    }

    /// Leaves (relay links) in the part of [start, end) that is ours to cover: from us up to
    /// our nearest routing link clockwise, and from `start` up to us (or to `end`, if the
    /// range ends before us) when the range was routed to its start and we are the first
    /// router at or after it: no one else covers those. Each gets a range holding only itself.
    fn leaves_to_cover(
        &self,
        me: RingAddr,
        start: RingAddr,
        end: RingAddr,
    ) -> Vec<(RingAddr, RingAddr, RingAddr)> {
        let whole = start == end;
        let inside = whole || me.in_range(start, end);
        let next = self.table.nearest_right().unwrap_or(me);
        let ours_end = if !whole && end.in_range(me, next) {
            end
        } else {
            next
        };
        let before_us_end = if inside { me } else { end };
        self.table
            .iter()
            .filter(|(a, l)| !l.kind.routes() && **a != me)
            .filter_map(|(a, _)| {
                if inside && a.in_range(me, ours_end) {
                    Some((*a, *a, ours_end))
                } else if !whole && start != me && a.in_range(start, before_us_end) {
                    Some((*a, *a, before_us_end))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Stores `value` under `key` for `lease_s` seconds (0 removes it) and keeps it alive.
    pub fn dht_put(
        &mut self,
        now: Instant,
        key: RingAddr,
        value: Vec<u8>,
        lease_s: u32,
    ) -> Result<(), Error> {
        if value.len() > MAX_VALUE {
            return Err(Error::ValueTooBig(value.len()));
        }
        if !self.puts.remember(now, key, &value, lease_s) {
            return Err(Error::Busy);
        }
        self.wake_ticks(now);
        self.put_points(now, key, &value, lease_s);
        Ok(())
    }

    /// Removes one value of `key` everywhere it is stored and stops re-putting it.
    pub fn dht_remove(&mut self, now: Instant, key: RingAddr, value: Vec<u8>) -> Result<(), Error> {
        self.dht_put(now, key, value, 0)
    }

    fn put_points(&mut self, now: Instant, key: RingAddr, value: &[u8], lease_s: u32) {
        let points = self.cfg.dht.points;
        for i in 0..points {
            let body = RoutedBody::DhtPut {
                key,
                lease_s,
                value: value.to_vec(),
            };
            self.originate(now, point(key, i, points), Mode::Closest, body);
        }
    }

    /// Looks `key` up at every replica point, each along `first_hops` paths; the answer
    /// comes as `Event::DhtFound` with the returned id.
    pub fn dht_get(&mut self, now: Instant, key: RingAddr) -> Result<u32, Error> {
        let points = self.cfg.dht.points;
        let id = self.lookups.start(now, key, points).ok_or(Error::Busy)?;
        for i in 0..points {
            let req = id << 3 | u32::from(i);
            let dst = point(key, i, points);
            let body = RoutedBody::DhtGet { req, key };
            self.originate_along(now, dst, Mode::Closest, body, self.cfg.dht.first_hops);
        }
        Ok(id)
    }

    /// Sends a routed message of ours along up to `paths` first hops, the cheapest first (one
    /// when a link is `dst` itself in exact mode); the usual way when no link makes progress
    /// (we are the closest, or a leaf).
    pub(super) fn originate_along(
        &mut self,
        now: Instant,
        dst: RingAddr,
        mode: Mode,
        body: RoutedBody,
        paths: usize,
    ) {
        let hops = if mode == Mode::Exact && self.table.get(&dst).is_some() {
            Vec::new()
        } else {
            self.table.first_hops(dst, mode, paths)
        };
        if hops.is_empty() {
            self.originate(now, dst, mode, body);
            return;
        }
        let msg = self.own(dst, mode, body);
        for hop in hops {
            self.pass_on(hop, msg.clone());
        }
    }

    /// We are the root of replica point `point`: store, and copy to our nearest neighbours.
    pub(super) fn on_dht_put(
        &mut self,
        now: Instant,
        point: RingAddr,
        key: RingAddr,
        lease_s: u32,
        value: Vec<u8>,
    ) {
        self.store.put(now, point, key, &value, lease_s);
        let mut holders = self.near.clone();
        holders.sort_by_key(|a| a.distance(point));
        let record = Record {
            point,
            key,
            lease_s,
            value,
        };
        for peer in holders.into_iter().take(self.cfg.dht.copies.saturating_sub(1)) {
            self.send_link(peer, &Message::Replicate(vec![record.clone()]));
        }
    }

    pub(super) fn dht_tick(&mut self, now: Instant) {
        self.store.expire(now);
        for (key, value, lease) in self.puts.due(now) {
            self.put_points(now, key, &value, lease);
        }
    }
}
