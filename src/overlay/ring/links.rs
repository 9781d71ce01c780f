//! Link upkeep: links coming up and going down, keepalive (silence → ping → drop), releasing
//! links nobody needs, tunnels through a common neighbour, and what a changed set of near
//! neighbours must tell others (neighbour notices, DHT hand-over).

use std::time::{Duration, Instant};

use rand::RngExt;
use tracing::{debug, trace};

use super::{Asked, Event, Ring, COALESCE, COALESCE_MIN_RING, DIRECT_FAILED_FOR, MAX_KNOWN_LISTS};
use crate::overlay::addr::RingAddr;
use crate::overlay::coords::Coord;
use crate::overlay::table::{Link, LinkKind, Ping};
use crate::overlay::wire::{Message, Mode, Purpose, Record, RoutedBody, MAX_RECORDS};

/// A link that relayed tunnel traffic this recently is kept.
const RELAY_KEEP: Duration = Duration::from_secs(60);
/// The higher address waits this long for the lower one to open a tunnel both want.
const TUNNEL_DEFER: Duration = Duration::from_secs(10);

impl Ring {
    /// The link layer has a link to `peer` (`Direct` or `Relay`).
    pub fn handle_link_up(&mut self, now: Instant, peer: RingAddr, kind: LinkKind, rtt: Duration) {
        if peer == self.me() || matches!(kind, LinkKind::Tunnel { .. }) {
            return;
        }
        let asked = self.asked.remove(&peer).map(|(a, _)| a);
        self.direct_failed.remove(&peer);
        self.tunnels_wanted.remove(&peer);
        match self.table.get_mut(&peer) {
            Some(link) => {
                if matches!(link.kind, LinkKind::Tunnel { .. }) {
                    self.events.push_back(Event::TunnelDown { peer });
                }
                link.kind = kind;
                link.rtt = rtt;
            }
            None => {
                let mut link = self.new_link(now, kind, rtt);
                link.our_shortcut = asked == Some(Asked::Ours(Purpose::Shortcut));
                link.drawn_for = self.size_estimate() as f32;
                self.links_due = Some(self.links_due.map_or(now, |d| d.min(now + link.ping_after)));
                self.table.insert(peer, link);
                self.stats.links_up += 1;
                debug!(%peer, ?kind, "overlay link up");
                if kind == LinkKind::Relay {
                    // No punch told the far end of a relay link about it: our first message
                    // does, so greet it with a keepalive ping at once.
                    self.ping_now(now, peer);
                }
                self.send_link(peer, &Message::Coord(self.coord.packed()));
            }
        }
        self.topology_changed(now);
    }

    /// The link to `peer` is gone (closed, lost, or never came up). One we did not need is
    /// also released to the link layer, which would otherwise keep re-opening it for us (and
    /// the peer, not needing it either, keep closing it).
    pub fn handle_link_down(&mut self, now: Instant, peer: RingAddr) {
        self.asked.remove(&peer);
        let unneeded = self.table.get(&peer).is_some() && !self.needs(now, peer);
        self.drop_link(now, peer);
        self.hand_again(now, peer);
        if unneeded {
            self.emit(Event::Disconnect { peer });
        }
    }

    /// The link layer could not link to `peer` directly (both behind hard NATs, say).
    pub fn handle_connect_failed(&mut self, now: Instant, peer: RingAddr) {
        self.asked.remove(&peer);
        self.wake_ticks(now);
        self.direct_failed.insert(peer, now);
        if self.direct_failed.len() > MAX_KNOWN_LISTS {
            let oldest = self
                .direct_failed
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.direct_failed.remove(&a);
            }
        }
        if self.table.would_be_near(peer, self.cfg.near) && self.table.get(&peer).is_none() {
            self.tunnels_wanted.insert(peer, now);
            self.try_tunnel(now, peer);
        }
    }

    /// Whether a direct link to `peer` is still worth trying after punching failed: the ring
    /// needs it (a tunnel stands in for it, or is being sought).
    pub fn wants_direct(&self, peer: RingAddr) -> bool {
        self.tunnels_wanted.contains_key(&peer)
            || self
                .table
                .get(&peer)
                .is_some_and(|l| matches!(l.kind, LinkKind::Tunnel { .. }))
    }

    pub(super) fn direct_failed_recently(&self, now: Instant, peer: RingAddr) -> bool {
        self.direct_failed
            .get(&peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < DIRECT_FAILED_FOR)
    }

    fn drop_link(&mut self, now: Instant, peer: RingAddr) {
        let Some(link) = self.table.remove(&peer) else {
            return;
        };
        self.stats.links_down += 1;
        debug!(%peer, "overlay link down");
        self.lists.remove(&peer);
        self.size_cache.set(None);
        if matches!(link.kind, LinkKind::Tunnel { .. }) {
            self.emit(Event::TunnelDown { peer });
        }
        let riding: Vec<RingAddr> = self
            .table
            .iter()
            .filter(|(_, l)| l.kind == LinkKind::Tunnel { via: peer })
            .map(|(a, _)| *a)
            .collect();
        for t in riding {
            self.table.remove(&t);
            self.emit(Event::TunnelDown { peer: t });
            self.tunnels_wanted.insert(t, now);
        }
        self.topology_changed(now);
    }

    /// Closes a link from our side: tells the link layer (tunnels have none to tell).
    pub(super) fn close(&mut self, now: Instant, peer: RingAddr) {
        if let Some(link) = self.table.get(&peer) {
            if !matches!(link.kind, LinkKind::Tunnel { .. }) {
                self.emit(Event::Disconnect { peer });
            }
        }
        self.drop_link(now, peer);
    }

    fn new_link(&mut self, now: Instant, kind: LinkKind, rtt: Duration) -> Link {
        let jitter = self.rng.random_range(0.0..0.1);
        let mut link = Link::new(now, kind, rtt, self.cfg.ping_after.mul_f64(1.0 + jitter));
        link.jitter = jitter;
        link
    }

    /// Pings silent links; drops those that stay silent.
    pub(super) fn keepalive(&mut self, now: Instant) {
        let mut dead = Vec::new();
        let mut ping = Vec::new();
        let mut next_due = None;
        let (timeout, tries) = (self.cfg.ping_timeout, self.cfg.ping_tries);
        for (peer, link) in self.table.iter_mut() {
            match link.ping {
                Some(p) if now >= p.sent + timeout => {
                    if p.tries >= tries {
                        dead.push(*peer);
                    } else {
                        link.ping = Some(Ping {
                            sent: now,
                            tries: p.tries + 1,
                            ..p
                        });
                        ping.push((*peer, p.nonce));
                    }
                }
                None if now >= link.last_rx + link.ping_after => ping.push((*peer, first_ping(now, link))),
                _ => {}
            }
            let due = match link.ping {
                Some(p) => p.sent + timeout,
                None => link.last_rx + link.ping_after,
            };
            next_due = Some(next_due.map_or(due, |d: Instant| d.min(due)));
        }
        for (peer, nonce) in ping {
            self.send_link(peer, &Message::Ping(nonce));
        }
        self.links_due = next_due;
        for peer in dead {
            debug!(%peer, "overlay link silent: dropped");
            self.remember_quiet_cap(peer);
            self.close(now, peer);
        }
    }

    fn ping_now(&mut self, now: Instant, peer: RingAddr) {
        let Some(link) = self.table.get_mut(&peer) else {
            return;
        };
        let nonce = first_ping(now, link);
        let due = now + self.cfg.ping_timeout;
        self.links_due = Some(self.links_due.map_or(due, |d| d.min(due)));
        self.send_link(peer, &Message::Ping(nonce));
    }

    pub(super) fn on_pong(&mut self, now: Instant, from: RingAddr, nonce: u32) {
        let limit = self.quiet_limit(from);
        let mut sample = None;
        if let Some(link) = self.table.get_mut(&from) {
            if let Some(p) = link.ping.filter(|p| p.nonce == nonce) {
                link.rtt = now.saturating_duration_since(p.sent);
                link.ping = None;
                sample = link
                    .coord
                    .filter(|_| link.kind == LinkKind::Direct)
                    .map(|c| (link.rtt, c));
                if p.tries == 1 {
                    link.quiet_ok = link.quiet_ok.max(p.quiet);
                    // The path outlived a full wait: try twice as long next time.
                    if p.quiet >= link.ping_after {
                        link.ping_after = (link.ping_after * 2).min(limit.mul_f64(1.0 - link.jitter));
                    }
                }
            }
        }
        if let Some((rtt, theirs)) = sample {
            self.observe_coord(rtt, theirs);
        }
    }

    /// A link told us its network coordinate: one RTT sample (the link's RTT so far) for ours.
    pub(super) fn on_coord(&mut self, from: RingAddr, theirs: Coord) {
        let Some(link) = self.table.get_mut(&from) else {
            return;
        };
        link.coord = Some(theirs);
        if link.kind == LinkKind::Direct {
            let rtt = link.rtt;
            self.observe_coord(rtt, theirs);
        }
    }

    /// One RTT sample to a link whose coordinate is `theirs`. Only direct links give them: a
    /// relay link's RTT is mostly the XMPP servers'.
    fn observe_coord(&mut self, rtt: Duration, theirs: Coord) {
        let nudge = (self.rng.random_range(-1.0..1.0), self.rng.random_range(-1.0..1.0));
        self.coord.observe(rtt, &theirs, nudge);
    }

    /// How long a link to `peer` may stay quiet at most.
    fn quiet_limit(&self, peer: RingAddr) -> Duration {
        let cap = self.quiet_caps.get(&peer).copied().unwrap_or(Duration::MAX);
        self.cfg.ping_after_max.min(cap).max(self.cfg.ping_after)
    }

    /// A link died quiet after a longer silence than it had ever survived: the path (a NAT
    /// mapping, most likely) does not last that long, so the next link to the peer stops at
    /// what it survived. (A crashed peer lowers its own cap the same way; that costs only
    /// pings.)
    fn remember_quiet_cap(&mut self, peer: RingAddr) {
        let Some(link) = self.table.get(&peer) else {
            return;
        };
        let Some(p) = link.ping else { return };
        if p.quiet <= link.quiet_ok || link.quiet_ok.is_zero() {
            return;
        }
        let cap = link.quiet_ok.max(self.cfg.ping_after);
        debug!(%peer, ?cap, "quiet link died: capping its keepalive wait");
        self.quiet_caps.insert(peer, cap);
        if self.quiet_caps.len() > MAX_KNOWN_LISTS {
            let first = self.quiet_caps.keys().next().copied();
            if let Some(first) = first.filter(|f| *f != peer) {
                self.quiet_caps.remove(&first);
            }
        }
    }

    pub(super) fn on_bye(&mut self, now: Instant, from: RingAddr) {
        let needed = self.needs(now, from);
        if let Some(link) = self.table.get_mut(&from) {
            link.peer_needs = false;
            if !needed {
                self.close(now, from);
            }
        }
    }

    pub(super) fn on_neighbours(&mut self, now: Instant, from: RingAddr, list: Vec<RingAddr>) {
        if let Some(link) = self.table.get_mut(&from) {
            link.peer_needs = true;
        }
        // It counts us as near but we know nodes between us: tell it who they are.
        if list.contains(&self.me()) && !self.near.contains(&from) {
            let near = self.near.clone();
            self.send_link(from, &Message::Neighbours(near));
        }
        self.learn_list(from, list.clone());
        for a in list {
            self.consider_near(now, a);
        }
    }

    /// Remembers a peer's neighbour list (for finding a common neighbour to tunnel through).
    pub(super) fn learn_list(&mut self, peer: RingAddr, list: Vec<RingAddr>) {
        if self.lists.len() >= MAX_KNOWN_LISTS && !self.lists.contains_key(&peer) {
            let evict = self.lists.keys().find(|a| self.table.get(a).is_none()).copied();
            match evict {
                Some(a) => {
                    self.lists.remove(&a);
                }
                None => return,
            }
        }
        if self.lists.get(&peer) == Some(&list) {
            return;
        }
        self.lists.insert(peer, list);
        // Only our near neighbours' lists feed the size estimate.
        if self.near.contains(&peer) {
            self.size_cache.set(None);
        }
    }

    /// Whether we need the link to `peer`: a near neighbour, our shortcut, the relay of one of
    /// our tunnels or of someone else's, or a bootstrap link we still depend on.
    pub(super) fn needs(&self, now: Instant, peer: RingAddr) -> bool {
        let Some(link) = self.table.get(&peer) else {
            return false;
        };
        self.near.contains(&peer)
            || link.our_shortcut
            || link.kind == LinkKind::Relay
            || link
                .relayed_at
                .is_some_and(|t| now.saturating_duration_since(t) < RELAY_KEEP)
            || self
                .table
                .iter()
                .any(|(_, l)| l.kind == LinkKind::Tunnel { via: peer })
            || self.near.len() < 2 * self.cfg.near.min(self.table.len())
    }

    /// Releases links neither side needs: a bye says we are done; the link closes once the
    /// peer is done too.
    pub(super) fn trim(&mut self, now: Instant) {
        let grace = self.cfg.trim_grace;
        let candidates: Vec<RingAddr> = self
            .table
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.since) >= grace)
            .map(|(a, _)| *a)
            .collect();
        for peer in candidates {
            let needed = self.needs(now, peer);
            let Some(link) = self.table.get_mut(&peer) else {
                continue;
            };
            if needed {
                link.released = false;
                continue;
            }
            let peer_needs = link.peer_needs;
            if !link.released {
                link.released = true;
                self.send_link(peer, &Message::Bye);
            }
            // Over the degree limit, links only the peer needs close too.
            if !peer_needs || self.table.len() > self.cfg.max_degree {
                self.close(now, peer);
            }
        }
    }

    /// Our near neighbours may have changed: tell the new set who we link to, hand them the
    /// DHT records they should now hold, and look for what is missing.
    pub(super) fn topology_changed(&mut self, now: Instant) {
        self.size_cache.set(None);
        self.wake_ticks(now);
        let near = self.table.near(self.cfg.near);
        if near.is_empty() && !self.table.is_empty() && self.seek_at.is_none() {
            // A leaf: its relay links do not route, but it must find its neighbours.
            self.seek_at = Some(now + Duration::from_millis(200));
        }
        if near == self.near {
            return;
        }
        let old = std::mem::replace(&mut self.near, near.clone());
        // In a big ring that is forming, near sets change in bursts (a CTM reply's list links
        // several nodes within a few RTTs): tell the set once the burst is over.
        if self.told_near.is_none() {
            self.told_near = Some(old.clone());
            let wait = if self.size_estimate() >= COALESCE_MIN_RING {
                COALESCE
            } else {
                Duration::ZERO
            };
            self.tell_near_at = Some(now + wait);
        }
        if self.tell_near_at.is_some_and(|at| at <= now) {
            self.tell_near();
        }
        for peer in near.iter().filter(|p| !old.contains(p)) {
            self.hand_over(now, *peer);
        }
        self.seek_backoff = Duration::from_secs(2);
        self.reseek_after = self.cfg.reseek;
        let soon = now + Duration::from_millis(200);
        self.seek_at = Some(self.seek_at.map_or(soon, |at| at.min(soon)));
    }

    /// Tells our near set who it is, and those who dropped out of it since we last told:
    /// they learn who is nearer.
    pub(super) fn tell_near(&mut self) {
        self.tell_near_at = None;
        let Some(told) = self.told_near.take() else {
            return;
        };
        if told == self.near {
            return;
        }
        let near = self.near.clone();
        for peer in near.iter().chain(told.iter().filter(|p| !near.contains(p))) {
            if self.table.get(peer).is_some() {
                self.send_link(*peer, &Message::Neighbours(near.clone()));
            }
        }
    }

    /// Sends `peer` the records it is now one of the `copies` closest holders of.
    fn hand_over(&mut self, now: Instant, peer: RingAddr) {
        let copies = self.cfg.dht.copies;
        let mut holders: Vec<RingAddr> = self.near.clone();
        holders.push(self.me());
        let records: Vec<Record> = self.store.records(now, |point| {
            let mut h = holders.clone();
            h.sort_by_key(|a| a.distance(point));
            h.iter().take(copies).any(|a| *a == peer)
        });
        for chunk in records.chunks(MAX_RECORDS) {
            self.send_link(peer, &Message::Replicate(chunk.to_vec()));
        }
    }

    /// Opens (or keeps trying) a tunnel to `peer` through a neighbour we both link to.
    pub(super) fn try_tunnel(&mut self, now: Instant, peer: RingAddr) {
        let Some(since) = self.tunnels_wanted.get(&peer).copied() else {
            return;
        };
        if self.table.get(&peer).is_some() || !self.table.would_be_near(peer, self.cfg.near) {
            self.tunnels_wanted.remove(&peer);
            return;
        }
        if peer < self.me() && now.saturating_duration_since(since) < TUNNEL_DEFER {
            return;
        }
        let theirs = self.lists.get(&peer).cloned().unwrap_or_default();
        let via = theirs
            .iter()
            .filter_map(|a| {
                self.table
                    .get(a)
                    .filter(|l| l.kind == LinkKind::Direct)
                    .map(|l| (*a, l.rtt))
            })
            .min_by_key(|(_, rtt)| *rtt)
            .map(|(a, _)| a);
        match via {
            Some(via) => {
                trace!(%peer, %via, "opening tunnel");
                let inner = Message::Ping(0).emit();
                self.push(via, Message::Relay { to: peer, inner }.emit());
            }
            None if theirs.is_empty() => {
                let req = self.token();
                let reply_via = self.first_hop(peer, Mode::Exact);
                let body = RoutedBody::NeighboursRequest { req, reply_via };
                self.originate(now, peer, Mode::Exact, body);
            }
            None => {
                // No overlap: link to one of its neighbours, then try again (Brunet's rule).
                let pick = theirs
                    .iter()
                    .copied()
                    .filter(|a| *a != self.me() && self.table.get(a).is_none())
                    .filter(|a| !self.direct_failed_recently(now, *a))
                    .min_by_key(|a| a.distance(self.me()));
                // Not through `request_link`: this link is for relaying, near or not.
                if let Some(a) = pick {
                    let busy = self.pending.values().any(|p| p.target == a);
                    if !busy {
                        self.send_ctm(now, a, Mode::Exact, Purpose::Near);
                    }
                }
            }
        }
    }

    /// A tunnel end asks us to pass `inner` on to `to`: only between two direct links. If our
    /// link to `to` is gone, the traffic goes back to the sender, which then knows that its
    /// tunnel through us is dead and can send it another way.
    pub(super) fn on_relay(&mut self, now: Instant, from: RingAddr, to: RingAddr, inner: Vec<u8>) {
        let direct = |r: &Ring, a: RingAddr| r.table.get(&a).is_some_and(|l| l.kind == LinkKind::Direct);
        if to == from || !direct(self, from) {
            self.stats.dropped += 1;
            return;
        }
        if !direct(self, to) {
            self.push(from, Message::Unrelayed { to, inner }.emit());
            return;
        }
        for a in [from, to] {
            if let Some(l) = self.table.get_mut(&a) {
                l.relayed_at = Some(now);
            }
        }
        self.push(to, Message::Relayed { from, inner }.emit());
    }

    /// The relay `via` could not pass our tunnel traffic on to `to`: the tunnel through it is
    /// dead (its far end has not noticed yet; its pings would only find out after
    /// `ping_after`). It goes, and what we sent is sent again another way: a routed message is
    /// routed anew; a broadcast's sub-range is handed again as for any lost link. Link upkeep
    /// is not resent.
    pub(super) fn on_unrelayed(&mut self, now: Instant, via: RingAddr, to: RingAddr, inner: &[u8]) {
        let through_via = self
            .table
            .get(&to)
            .is_some_and(|l| l.kind == LinkKind::Tunnel { via });
        if !through_via {
            self.stats.dropped += 1;
            return;
        }
        debug!(peer = %to, %via, "tunnel gone at its relay");
        self.handle_link_down(now, to);
        if let Ok(Message::Routed(msg)) = Message::parse(inner) {
            self.route(now, None, msg);
        }
    }

    /// Tunnel traffic from `peer`, passed on by the common neighbour `via`. The first of it
    /// opens the tunnel on this end if we want the link.
    pub(super) fn on_relayed(&mut self, now: Instant, via: RingAddr, peer: RingAddr, inner: &[u8]) {
        let via_direct = self.table.get(&via).is_some_and(|l| l.kind == LinkKind::Direct);
        if !via_direct || peer == self.me() {
            self.stats.dropped += 1;
            return;
        }
        if self.table.get(&peer).is_none() {
            let accept =
                self.table.would_be_near(peer, self.cfg.near) || self.table.len() < self.cfg.max_degree;
            if !accept {
                self.stats.dropped += 1;
                return;
            }
            let link = self.new_link(now, LinkKind::Tunnel { via }, via_rtt(self, via));
            self.links_due = Some(self.links_due.map_or(now, |d| d.min(now + link.ping_after)));
            self.table.insert(peer, link);
            self.tunnels_wanted.remove(&peer);
            self.stats.links_up += 1;
            self.emit(Event::TunnelUp { peer, via });
            debug!(%peer, %via, "tunnel up");
            self.topology_changed(now);
        }
        let mut moved = false;
        let via_hop = self.table.get(&via).map(|l| l.rtt);
        if let Some(link) = self.table.get_mut(&peer) {
            link.last_rx = now;
            // The far end reaches us through another relay than ours (it opened the tunnel
            // anew, its way to our relay is gone): answer the way that works, or our answers
            // die at a relay it no longer links to while its traffic keeps our end alive.
            if matches!(link.kind, LinkKind::Tunnel { via: old } if old != via) {
                link.kind = LinkKind::Tunnel { via };
                link.rtt = via_rtt_of(via_hop);
                moved = true;
            }
        }
        if moved {
            debug!(%peer, %via, "tunnel moved to another relay");
            self.emit(Event::TunnelUp { peer, via });
        }
        match Message::parse(inner) {
            Ok(msg) => self.dispatch(now, peer, msg, false),
            Err(_) => self.stats.malformed += 1,
        }
    }
}

/// A tunnel's first RTT guess: twice the hop to its relay.
fn via_rtt(ring: &Ring, via: RingAddr) -> Duration {
    via_rtt_of(ring.table.get(&via).map(|l| l.rtt))
}

fn via_rtt_of(hop: Option<Duration>) -> Duration {
    hop.map_or(Duration::from_secs(1), |rtt| rtt * 2)
}

/// Starts a keepalive round on `link`; returns the nonce to send.
fn first_ping(now: Instant, link: &mut Link) -> u32 {
    let nonce = now.duration_since(link.since).subsec_nanos() | 1;
    link.ping = Some(Ping {
        nonce,
        sent: now,
        tries: 1,
        quiet: now.saturating_duration_since(link.last_rx),
    });
    nonce
}
