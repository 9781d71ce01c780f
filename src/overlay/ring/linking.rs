//! How links are made: ConnectToMe (a CTM routed toward an address; its receiver dials us and
//! replies with its candidates and nearest neighbours; we dial back, so both open at once),
//! seeking our near neighbours, drawing Symphony shortcuts, rendezvous bootstrap and merging
//! rings that formed apart, and the periodic tick that ties it together.

use std::time::{Duration, Instant};

use rand::RngExt;
use tracing::debug;

use super::{
    Asked, Event, Pending, Ring, COALESCE, COALESCE_MIN_RING, MAX_NEAR_CANDIDATES, RESEEK_MAX_FACTOR,
};
use crate::overlay::addr::{RingAddr, RING_SIZE};
use crate::overlay::coords::Packed;
use crate::overlay::table::LinkKind;
use crate::overlay::wire::{Mode, Purpose, RoutedBody};

/// Most CTMs in flight, and most links asked of the link layer at once.
const MAX_PENDING: usize = 64;
const MAX_ASKED: usize = 64;
/// Bootstrap links asked for when we have none (at least; the near neighbours among the
/// members XMPP shows, when there are more).
const BOOTSTRAP_LINKS: usize = 3;
const MAX_SEEK_BACKOFF: Duration = Duration::from_secs(60);
const LEAF_SEEK_EVERY: Duration = Duration::from_secs(10);
/// Ring-size estimate below which shortcuts are drawn without proximity trials (the 3
/// candidates of a draw in a 12-member ring are a quarter of it).
const PNS_MIN_RING: f64 = 32.0;
/// Neighbours per side a shortcut CTM's reply lists (with their coordinates), and how many of
/// them nearest the drawn point are weighed by predicted RTT against the replying node.
const SHORTCUT_REPLY_NEAR: usize = 4;
const PNS_BY_COORDS: usize = 8;

impl Ring {
    /// Peers XMPP rendezvous shows online. With no links they bootstrap us; later, any that
    /// would be a nearer neighbour is linked directly: that is how rings formed apart merge.
    pub fn handle_rendezvous(&mut self, now: Instant, peers: &[RingAddr]) {
        if !self.table.has_routing_links() {
            let bootstrapping = self
                .asked
                .values()
                .filter(|(a, _)| *a == Asked::Bootstrap)
                .count();
            let me = self.me();
            let mut fresh = peers
                .iter()
                .copied()
                .filter(|p| *p != me && self.table.get(p).is_none() && !self.asked.contains_key(p))
                .collect::<Vec<_>>();
            // The nearest on each side: in a small group they are the ring already.
            // A leaf (relay links only, which never route) keeps the ones it has.
            let have = bootstrapping + self.table.len();
            let want = BOOTSTRAP_LINKS.max(2 * self.cfg.near).saturating_sub(have);
            let mut picked = Vec::with_capacity(want);
            fresh.sort_by_key(|p| me.offset_to(*p));
            picked.extend(fresh.iter().take(want.div_ceil(2)));
            for p in fresh.iter().rev() {
                if picked.len() >= want {
                    break;
                }
                if !picked.contains(p) {
                    picked.push(*p);
                }
            }
            for peer in picked {
                self.ask_link(now, peer, Asked::Bootstrap, Vec::new());
            }
            return;
        }
        for peer in peers.iter().copied() {
            if peer != self.me()
                && self.table.get(&peer).is_none()
                && !self.asked.contains_key(&peer)
                && self.table.would_be_near(peer, self.cfg.near)
            {
                self.ask_link(now, peer, Asked::Ours(Purpose::Near), Vec::new());
            }
        }
    }

    /// Links to `peer` if it would be one of our near neighbours. A leaf links only to whom
    /// its seeks find: with no routing links, everyone would be near.
    ///
    /// In a big ring, candidates heard within [`COALESCE`] are weighed together: lists arrive
    /// in bursts while the ring forms, and only the nearest few per side are still near once
    /// they link.
    pub(super) fn consider_near(&mut self, now: Instant, peer: RingAddr) {
        if !self.wants_near(peer) {
            return;
        }
        if self.size_estimate() < COALESCE_MIN_RING {
            self.request_link(now, peer, Purpose::Near);
            return;
        }
        if self.near_candidates.len() < MAX_NEAR_CANDIDATES {
            self.near_candidates.insert(peer);
        }
        self.link_candidates_at.get_or_insert(now + COALESCE);
    }

    fn wants_near(&self, peer: RingAddr) -> bool {
        peer != self.me()
            && self.table.has_routing_links()
            && self.table.get(&peer).is_none()
            && !self.asked.contains_key(&peer)
            && self.table.would_be_near(peer, self.cfg.near)
    }

    /// Asks for links to the nearest candidates on each side, as many as a side holds.
    pub(super) fn link_near_candidates(&mut self, now: Instant) {
        self.link_candidates_at = None;
        let me = self.me();
        let mut candidates: Vec<RingAddr> = std::mem::take(&mut self.near_candidates)
            .into_iter()
            .filter(|a| self.wants_near(*a))
            .collect();
        candidates.sort_by_key(|a| a.distance(me));
        let (mut right, mut left) = (0, 0);
        for peer in candidates {
            let side = if me.offset_to(peer) <= peer.offset_to(me) {
                &mut right
            } else {
                &mut left
            };
            if *side < self.cfg.near {
                *side += 1;
                self.request_link(now, peer, Purpose::Near);
            }
        }
    }

    /// Asks for a link to a known address: a CTM, or a tunnel where direct linking failed.
    pub(super) fn request_link(&mut self, now: Instant, peer: RingAddr, purpose: Purpose) {
        if self.direct_failed_recently(now, peer) {
            self.tunnels_wanted.entry(peer).or_insert(now);
            self.wake_ticks(now);
            self.try_tunnel(now, peer);
            return;
        }
        // Exact routing: when we are closer to `peer` than any link of ours, annealing's one
        // uphill step still finds the neighbour that told us of it.
        let already = self
            .pending
            .values()
            .any(|p| p.purpose == purpose && p.target == peer);
        if !already {
            self.send_ctm(now, peer, Mode::Exact, purpose);
        }
    }

    pub(super) fn send_ctm(&mut self, now: Instant, target: RingAddr, mode: Mode, purpose: Purpose) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        let token = self.token();
        self.pending.insert(
            token,
            Pending {
                purpose,
                sent: now,
                target,
            },
        );
        self.wake_ticks(now);
        self.stats.ctm_sent += 1;
        let cause = match (purpose, mode) {
            (Purpose::Near, Mode::Left | Mode::Right) => 0,
            (Purpose::Near, _) => 1,
            (Purpose::Shortcut, _) => 2,
            (Purpose::Leaf, _) => 3,
        };
        self.stats.ctm_by_cause[cause] += 1;
        debug!(%target, ?mode, ?purpose, "sending a CTM");
        let candidates = self.candidates.clone();
        let reply_via = self.first_hop(target, mode);
        self.originate(
            now,
            target,
            mode,
            RoutedBody::Ctm {
                token,
                purpose,
                reply_via,
                candidates,
            },
        );
    }

    fn ask_link(&mut self, now: Instant, peer: RingAddr, why: Asked, candidates: Vec<u8>) {
        if self.asked.len() >= MAX_ASKED || self.asked.contains_key(&peer) {
            return;
        }
        self.asked.insert(peer, (why, now));
        self.wake_ticks(now);
        self.emit(Event::Connect { peer, candidates });
    }

    pub(super) fn on_ctm(
        &mut self,
        now: Instant,
        src: RingAddr,
        token: u32,
        purpose: Purpose,
        reply_via: RingAddr,
        candidates: Vec<u8>,
    ) {
        if src == self.me() {
            return;
        }
        let linked = self.table.get(&src).is_some();
        // Room for anyone below the degree limit; beyond it only for nodes that would be
        // our near neighbours (the ring's consistency comes first).
        let room = self.table.len() + self.asked.len() < self.cfg.max_degree;
        let accept =
            linked || room || (purpose != Purpose::Shortcut && self.table.would_be_near(src, self.cfg.near));
        if let Some(link) = self.table.get_mut(&src) {
            link.peer_needs = true;
        } else if accept {
            self.ask_link(
                now,
                src,
                Asked::Theirs {
                    shortcut: purpose == Purpose::Shortcut,
                },
                candidates,
            );
        }
        let reply_candidates = if accept {
            self.candidates.clone()
        } else {
            Vec::new()
        };
        let (neighbours, coords) = if purpose == Purpose::Shortcut {
            let neighbours = self.table.near(SHORTCUT_REPLY_NEAR.max(self.cfg.near));
            let coords = self.coords_of(&neighbours);
            (neighbours, coords)
        } else {
            (self.table.near(self.cfg.near), Vec::new())
        };
        let body = RoutedBody::CtmReply {
            token,
            candidates: reply_candidates,
            neighbours,
            coords,
        };
        if purpose == Purpose::Shortcut {
            self.originate(now, src, Mode::Exact, body);
        } else {
            self.reply(now, src, reply_via, body);
        }
        self.consider_near(now, src);
    }

    pub(super) fn on_ctm_reply(
        &mut self,
        now: Instant,
        src: RingAddr,
        token: u32,
        candidates: Vec<u8>,
        neighbours: Vec<RingAddr>,
        coords: &[Packed],
    ) {
        let pending = self.pending.remove(&token);
        let purpose = pending.map(|p| p.purpose);
        self.learn_list(src, neighbours.clone());
        // Whether the replying node is the one to link (a shortcut may go to one nearer in time).
        let mut link_src = true;
        if let (Some(p), false) = (pending, src == self.me()) {
            if p.purpose == Purpose::Shortcut {
                match self.nearest_in_time(now, p.target, src, &neighbours, coords) {
                    Some(best) if best != src => {
                        link_src = false;
                        self.ask_link(now, best, Asked::Ours(Purpose::Shortcut), Vec::new());
                    }
                    Some(_) => {}
                    None => self.try_alternatives(now, p.target, &neighbours),
                }
            }
        }
        if let (Some(purpose), false) = (purpose, src == self.me()) {
            let n = self.size_estimate() as f32;
            // A near neighbour answering a shortcut request is no shortcut: draw another.
            let near = self.near.contains(&src);
            match self.table.get_mut(&src) {
                Some(_) if (near || !link_src) && purpose == Purpose::Shortcut => {}
                Some(link) if purpose == Purpose::Shortcut && !link.our_shortcut => {
                    link.our_shortcut = true;
                    link.drawn_for = n;
                }
                Some(_) => {}
                None if link_src && (!candidates.is_empty() || purpose != Purpose::Shortcut) => {
                    self.ask_link(now, src, Asked::Ours(purpose), candidates);
                }
                None => {}
            }
        }
        for n in neighbours {
            self.consider_near(now, n);
        }
    }

    /// Our coordinate, then each of `peers`' as they told us (an untrusted one when unknown).
    fn coords_of(&self, peers: &[RingAddr]) -> Vec<Packed> {
        let theirs = peers.iter().map(|a| {
            let coord = self.table.get(a).and_then(|l| l.coord);
            coord.unwrap_or_default().packed()
        });
        std::iter::once(self.coord.packed()).chain(theirs).collect()
    }

    /// Proximity neighbour selection by coordinates: of the node that answered a shortcut CTM
    /// and its neighbours nearest the drawn point, the one with the least predicted RTT (a
    /// Symphony shortcut's exact place matters little; its latency is paid on every route
    /// through it). None when our coordinate or the answerer's cannot be trusted yet, or in a
    /// ring too small for a choice: then trial links choose.
    fn nearest_in_time(
        &self,
        now: Instant,
        target: RingAddr,
        src: RingAddr,
        neighbours: &[RingAddr],
        coords: &[Packed],
    ) -> Option<RingAddr> {
        let (theirs, listed) = coords.split_first()?;
        let theirs = theirs.coord();
        if !self.coord.trusted()
            || !theirs.trusted()
            || listed.len() != neighbours.len()
            || self.size_estimate() < PNS_MIN_RING
        {
            return None;
        }
        let mut near_point: Vec<(RingAddr, f32)> = neighbours
            .iter()
            .zip(listed)
            .map(|(a, c)| (*a, c.coord()))
            .filter(|(a, c)| {
                *a != self.me()
                    && c.trusted()
                    && self.table.get(a).is_none()
                    && !self.direct_failed_recently(now, *a)
            })
            .map(|(a, c)| (a, self.coord.rtt_ms(&c)))
            .collect();
        near_point.sort_by_key(|(a, _)| a.distance(target));
        near_point.truncate(PNS_BY_COORDS);
        near_point
            .into_iter()
            .chain(std::iter::once((src, self.coord.rtt_ms(&theirs))))
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .map(|(a, _)| a)
    }

    /// Proximity neighbour selection: also link to the nodes nearest the drawn point among
    /// the responder's neighbours; `keep_shortcuts` keeps the lowest-RTT ones. Not in a ring
    /// smaller than `PNS_MIN_RING`: there the nodes nearest a point are a large part of the
    /// ring and routes are a hop or two, so a trial link buys nothing for its punch and handshake.
    fn try_alternatives(&mut self, now: Instant, target: RingAddr, neighbours: &[RingAddr]) {
        if self.size_estimate() < PNS_MIN_RING {
            return;
        }
        let mut near_point: Vec<RingAddr> = neighbours
            .iter()
            .copied()
            .filter(|a| *a != self.me() && self.table.get(a).is_none())
            .collect();
        near_point.sort_by_key(|a| a.distance(target));
        let extra = self.cfg.pns_candidates.saturating_sub(1);
        for a in near_point.into_iter().take(extra) {
            if !self.direct_failed_recently(now, a) {
                self.ask_link(now, a, Asked::Ours(Purpose::Shortcut), Vec::new());
            }
        }
    }

    /// Looks for our successor and predecessor with CTMs routed right of and left of us;
    /// repeats with backoff while a side is short (always, for a leaf).
    pub(super) fn seek(&mut self, now: Instant) {
        self.seek_at = None;
        // A leaf seeks too (through the link it has): its neighbours are where greedy
        // routing toward it ends, so they must link to it.
        if self.table.is_empty() {
            return;
        }
        let one = RingAddr::from_bytes({
            let mut b = [0u8; 20];
            b[19] = 1;
            b
        });
        let me = self.me();
        let sides = [
            (me.wrapping_add(one), Mode::Right),
            (me.wrapping_sub(one), Mode::Left),
        ];
        for (target, mode) in sides {
            let busy = self
                .pending
                .values()
                .any(|p| p.purpose == Purpose::Near && p.target == target);
            if !busy {
                self.send_ctm(now, target, mode, Purpose::Near);
            }
        }
        self.last_seek = now;
        if self.sides_short() {
            self.seek_at = Some(now + self.seek_backoff);
            // A leaf keeps looking often: nodes joining beside it do not know of it.
            let cap = if self.table.has_routing_links() {
                MAX_SEEK_BACKOFF
            } else {
                LEAF_SEEK_EVERY
            };
            self.seek_backoff = (self.seek_backoff * 2).min(cap);
        }
    }

    fn sides_short(&self) -> bool {
        self.table.right(self.cfg.near).len() < self.cfg.near
            || self.table.left(self.cfg.near).len() < self.cfg.near
    }

    /// N̂: nodes on the ring, from the spacing of up to 4 neighbours per side (ours and, past
    /// them, those our nearest neighbours told us of); more gaps, less noise than 2 per side.
    pub fn size_estimate(&self) -> f64 {
        if let Some(n) = self.size_cache.get() {
            return n;
        }
        let n = self.estimate_size();
        self.size_cache.set(Some(n));
        n
    }

    fn estimate_size(&self) -> f64 {
        const PER_SIDE: usize = 4;
        let me = self.me();
        let mut known: Vec<RingAddr> = self.near.clone();
        for n in &self.near {
            known.extend(self.lists.get(n).into_iter().flatten().copied());
        }
        known.sort();
        known.dedup();
        known.retain(|a| *a != me);
        let mut right: Vec<RingAddr> = known
            .iter()
            .copied()
            .filter(|a| me.offset_to(*a) < RingAddr::HALF)
            .collect();
        let mut left: Vec<RingAddr> = known
            .iter()
            .copied()
            .filter(|a| me.offset_to(*a) >= RingAddr::HALF)
            .collect();
        right.sort_by_key(|a| me.offset_to(*a));
        left.sort_by_key(|a| a.offset_to(me));
        right.truncate(PER_SIDE);
        left.truncate(PER_SIDE);
        let (Some(far_left), Some(far_right)) = (left.last(), right.last()) else {
            return self.table.size_estimate(self.cfg.near);
        };
        let gaps = left.len() + right.len();
        let span = far_left.offset_to(*far_right).as_f64();
        if gaps <= 2 * self.cfg.near || span <= 0.0 {
            return self.table.size_estimate(self.cfg.near);
        }
        gaps as f64 * RING_SIZE / span
    }

    /// Shortcuts wanted now: the configured count, or ceil(0.5·log2 N̂) once N̂ > 10.
    pub fn shortcuts_wanted(&self) -> usize {
        if let Some(k) = self.cfg.shortcuts {
            return k;
        }
        let n = self.size_estimate();
        if n > 10.0 {
            (0.5 * n.log2()).ceil() as usize
        } else {
            0
        }
    }

    /// Draws a shortcut target at harmonic distance 2^(160 − (1−u)·log2 N̂), either side.
    /// Draws again (a few times) when the point falls among our near neighbours, where a
    /// shortcut would only duplicate a near link.
    fn shortcut_target(&mut self) -> RingAddr {
        // Bidirectional: distances from one node spacing (2^160/N̂) to half the ring.
        let n = self.size_estimate().max(2.0);
        let me = self.me();
        let near_right = self.table.right(self.cfg.near).last().map(|a| me.offset_to(*a));
        let near_left = self.table.left(self.cfg.near).last().map(|a| a.offset_to(me));
        let mut target = me;
        for _ in 0..8 {
            let u: f64 = self.rng.random_range(0.0..1.0);
            let d = RingAddr::from_f64(RING_SIZE / 2.0 / (n / 2.0).powf(1.0 - u));
            let clockwise = self.rng.random_bool(0.5);
            target = if clockwise {
                me.wrapping_add(d)
            } else {
                me.wrapping_sub(d)
            };
            let within = if clockwise { near_right } else { near_left };
            if within.is_none_or(|w| d > w) {
                break;
            }
        }
        target
    }

    fn keep_shortcuts(&mut self, now: Instant) {
        let want = self.shortcuts_wanted();
        let have = self.table.iter().filter(|(_, l)| l.our_shortcut).count();
        let asking = self
            .pending
            .values()
            .filter(|p| p.purpose == Purpose::Shortcut)
            .count()
            + self
                .asked
                .values()
                .filter(|(a, _)| *a == Asked::Ours(Purpose::Shortcut))
                .count();
        for _ in (have + asking)..want {
            let target = self.shortcut_target();
            self.send_ctm(now, target, Mode::Closest, Purpose::Shortcut);
        }
        let n = self.size_estimate() as f32;
        let drifted = self
            .table
            .iter()
            .find(|(_, l)| l.our_shortcut && (l.drawn_for > 4.0 * n || 4.0 * l.drawn_for < n))
            .map(|(a, _)| *a);
        // Too many (trial links of proximity selection, or a shrunk ring): give up the
        // slowest. A shortcut drawn for a ring size far from today's is redrawn.
        let release = if have > want {
            self.table
                .iter()
                .filter(|(_, l)| l.our_shortcut)
                .max_by_key(|(_, l)| l.rtt)
                .map(|(a, _)| *a)
        } else {
            drifted
        };
        if let Some(link) = release.and_then(|a| self.table.get_mut(&a)) {
            link.our_shortcut = false;
        }
    }

    /// Housekeeping every `tick`.
    pub(super) fn tick(&mut self, now: Instant) {
        let timeout = self.cfg.ctm_timeout;
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.sent) < timeout);
        let stale: Vec<RingAddr> = self
            .asked
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= timeout * 3)
            .map(|(a, _)| *a)
            .collect();
        for peer in stale {
            // The link layer is still trying: tell it to stop.
            self.asked.remove(&peer);
            self.emit(Event::Disconnect { peer });
        }
        if self.seek_at.is_none() && now >= self.last_seek + self.reseek_after {
            self.seek_at = Some(now);
            // Each re-check that changes nothing makes the next one later (a change of our
            // near neighbours resets the wait).
            self.reseek_after = (self.reseek_after * 2).min(self.cfg.reseek * RESEEK_MAX_FACTOR);
        }
        if self.table.has_routing_links() {
            self.keep_shortcuts(now);
            self.share_links(now);
        }
        // Lists matter while we link to the peer or want a tunnel to it.
        let (table, wanted) = (&self.table, &self.tunnels_wanted);
        self.lists
            .retain(|a, _| table.get(a).is_some() || wanted.contains_key(a));
        // Retry what our near neighbours told us of (a CTM may have been lost to churn).
        let heard: Vec<RingAddr> = self
            .near
            .iter()
            .filter_map(|n| self.lists.get(n))
            .flatten()
            .copied()
            .collect();
        for a in heard {
            self.consider_near(now, a);
        }
        let wanted: Vec<RingAddr> = self.tunnels_wanted.keys().copied().collect();
        for peer in wanted {
            self.try_tunnel(now, peer);
        }
        self.trim(now);
        self.dht_tick(now);
    }

    /// Whether `peer` is linked by a path that routes.
    pub fn routes_to(&self, peer: RingAddr) -> bool {
        self.table.get(&peer).is_some_and(|l| l.kind != LinkKind::Relay)
    }
}
