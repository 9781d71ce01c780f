//! The ring core: one node of the Symphony overlay, sans-IO.
//!
//! Drive loop:
//! 1. Feed what the link layer reports: `handle_link_up` / `handle_link_down` /
//!    `handle_connect_failed`, every overlay message with `handle_message`, the peers XMPP
//!    rendezvous shows with `handle_rendezvous`, and `handle_timeout` when `poll_timeout`
//!    passes. App calls: `send`, `broadcast`, `dht_put`, `dht_get`.
//! 2. Drain `poll_transmit` (a message for one link peer) and `poll_event` (connect and
//!    disconnect requests for the link layer, deliveries, DHT results) until empty.
//!
//! Submodules own one concern each: `links` (link table upkeep, keepalive, trimming,
//! tunnels), `linking` (ConnectToMe, near-neighbour seeking, shortcuts, rendezvous),
//! `services` (routing of app messages, DHT and broadcast), `lookahead` (telling links whom
//! we link to, so routing sees two hops ahead).

#[cfg(test)]
#[path = "tests/coalesce.rs"]
mod coalesce_tests;
#[cfg(test)]
#[path = "tests/dht_paths.rs"]
mod dht_paths_tests;
mod linking;
mod links;
mod lookahead;
mod services;
#[cfg(test)]
#[path = "tests/ticks.rs"]
mod ticks_tests;
pub use services::Error as ServiceError;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::RngExt;
use rand::SeedableRng;
use tracing::trace;

use super::addr::RingAddr;
use super::broadcast::Seen;
use super::coords::Coord;
use super::dht::{self, Found, Lookups, Puts, Store};
use super::table::{Decision, LinkKind, Table};
use super::wire::{self, Message, Mode, Purpose, Routed, RoutedBody};

#[derive(Debug, Clone)]
pub struct Config {
    /// Near neighbours kept on each side.
    pub near: usize,
    /// Shortcuts to keep; None: ceil(0.5·log2 N̂) once N̂ > 10 (Symphony, as Brunet).
    pub shortcuts: Option<usize>,
    /// Nodes near a drawn shortcut point linked to when network coordinates cannot choose
    /// yet (ours or the answering node's not trusted); the lowest-RTT one is kept (1: off).
    pub pns_candidates: usize,
    /// Most links; inbound shortcut requests beyond it are refused.
    pub max_degree: usize,
    /// Silence on a link before we ping it (each link jitters it by up to +10 %).
    pub ping_after: Duration,
    /// How far that wait grows on a quiet link: each ping answered after a full wait doubles
    /// it, up to this less the link's jitter (the NAT mappings on the path must outlive it:
    /// RFC 4787 asks NATs for ≥ 2 min, Linux conntrack keeps a two-way UDP flow 120 s). A
    /// link that dies quiet caps the next one to that peer at the longest silence it survived.
    pub ping_after_max: Duration,
    pub ping_timeout: Duration,
    pub ping_tries: u8,
    /// Hops a routed message may take.
    pub ttl: u8,
    /// How long a CTM waits for its reply, and a requested link for the link layer.
    pub ctm_timeout: Duration,
    /// Housekeeping period: shortcuts, tunnels, trimming, DHT leases.
    pub tick: Duration,
    /// How long an unneeded link lives before it is released.
    pub trim_grace: Duration,
    /// Re-check of our place on the ring even when nothing changed.
    pub reseek: Duration,
    /// Tell links whom we link to and route with what they tell us (see `lookahead`).
    pub lookahead: bool,
    pub dht: dht::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            near: 2,
            shortcuts: None,
            pns_candidates: 3,
            max_degree: 48,
            ping_after: Duration::from_secs(20),
            ping_after_max: Duration::from_secs(110),
            ping_timeout: Duration::from_secs(2),
            ping_tries: 3,
            ttl: 64,
            ctm_timeout: Duration::from_secs(10),
            tick: Duration::from_secs(5),
            trim_grace: Duration::from_secs(30),
            reseek: Duration::from_secs(600),
            lookahead: true,
            dht: dht::Config::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Please link to `peer` (the peer is told the same: both dial at once). Empty
    /// candidates: the link layer must signal through XMPP.
    Connect {
        peer: RingAddr,
        candidates: Vec<u8>,
    },
    /// Close the link to `peer`, or stop opening it.
    Disconnect {
        peer: RingAddr,
    },
    Deliver {
        src: RingAddr,
        hops: u8,
        payload: Vec<u8>,
    },
    Broadcast {
        origin: RingAddr,
        payload: Vec<u8>,
    },
    DhtFound(Found),
    TunnelUp {
        peer: RingAddr,
        via: RingAddr,
    },
    TunnelDown {
        peer: RingAddr,
    },
}

/// One message for the link to `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub peer: RingAddr,
    pub bytes: Vec<u8>,
}

/// Counters, for status and the simulator.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub messages_out: u64,
    pub bytes_out: u64,
    pub malformed: u64,
    /// Routed messages dropped: no way on, TTL spent, or unknown tunnel peers.
    pub dropped: u64,
    pub ctm_sent: u64,
    /// CTMs sent by why: 0 a seek of our place, 1 a known address (a near neighbour heard of,
    /// a tunnel's relay), 2 a shortcut, 3 a leaf's.
    pub ctm_by_cause: [u64; 4],
    pub links_up: u64,
    pub links_down: u64,
    pub broadcasts_forwarded: u64,
    /// Messages out by their wire kind (`overlay::wire`'s kind byte: 1 ping, 2 pong, 3
    /// routed, 4 broadcast, 5 relay, 6 replicate, 7 bye, 8 neighbours, 9 relayed, 10 links,
    /// 11 unrelayed, 12 coordinate).
    pub out_by_kind: [u64; 13],
    /// Routed messages out by their body (1 CTM, 2 CTM reply, 3 DHT put, 4 DHT get, 5 DHT
    /// values, 6 app, 7 neighbours request, 8 neighbours reply, 9 broadcast, 10 via).
    pub routed_by_body: [u64; 11],
}

/// Why we asked the link layer for a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Bootstrap,
    Ours(Purpose),
    /// The peer asked us (a CTM); `shortcut`: as its shortcut.
    Theirs {
        shortcut: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    purpose: Purpose,
    sent: Instant,
    target: RingAddr,
}

/// Entries kept about peers we learnt of: their neighbour lists (for tunnels).
const MAX_KNOWN_LISTS: usize = 256;
/// A quiet ring re-checks its place at most this many `reseek` periods apart.
const RESEEK_MAX_FACTOR: u32 = 6;
/// How long a failed direct link makes us prefer a tunnel to that peer.
const DIRECT_FAILED_FOR: Duration = Duration::from_secs(600);

pub struct Ring {
    cfg: Config,
    table: Table,
    rng: SmallRng,
    candidates: Vec<u8>,
    asked: BTreeMap<RingAddr, (Asked, Instant)>,
    pending: BTreeMap<u32, Pending>,
    next_token: u32,
    near: Vec<RingAddr>,
    lists: BTreeMap<RingAddr, Vec<RingAddr>>,
    /// `size_estimate()` until `near` or `lists` change (it runs on every link and reply).
    size_cache: std::cell::Cell<Option<f64>>,
    direct_failed: BTreeMap<RingAddr, Instant>,
    tunnels_wanted: BTreeMap<RingAddr, Instant>,
    /// Peers whose link died quiet: the longest silence it had survived.
    quiet_caps: BTreeMap<RingAddr, Duration>,
    next_tick: Instant,
    /// The wait between housekeeping ticks: `tick`, doubling while ticks find nothing to do
    /// (up to [`QUIET_TICK_FACTOR`] times), back to `tick` on any change.
    tick_every: Duration,
    /// A pending look for our true neighbours (after a change, or while sides are short).
    seek_at: Option<Instant>,
    /// Our near set as last told to it, while a change waits to be told, and when it is due.
    told_near: Option<Vec<RingAddr>>,
    tell_near_at: Option<Instant>,
    /// Addresses that would be near neighbours, waiting to be weighed together, and when.
    near_candidates: BTreeSet<RingAddr>,
    link_candidates_at: Option<Instant>,
    /// The earliest keepalive deadline of any link as of the last keepalive pass (traffic
    /// only moves deadlines later, so waking here is never late).
    links_due: Option<Instant>,
    last_seek: Instant,
    seek_backoff: Duration,
    /// The wait before the next re-check of our place: `reseek`, doubled after each re-check
    /// while our near neighbours stay the same (up to [`RESEEK_MAX_FACTOR`] times).
    reseek_after: Duration,
    store: Store,
    puts: Puts,
    lookups: Lookups,
    seen: Seen,
    /// Our network coordinate, moved by every RTT sample to a link that told us its own.
    coord: Coord,
    /// Our routing links as last sent to them (lookahead), and when.
    links_told: Vec<u64>,
    links_told_at: Option<Instant>,
    /// Sub-ranges we handed links in recent broadcasts, for `cut_off`.
    handed: services::Handed,
    broadcast_seq: u32,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// In rings of at least [`COALESCE_MIN_RING`], how long a change of near set waits before it
/// is told and near candidates wait to be weighed together: a forming ring changes in bursts.
/// Smaller rings act at once (a friend group's ring forms in a second).
const COALESCE: Duration = Duration::from_millis(250);
const COALESCE_MIN_RING: f64 = 32.0;
/// Most near candidates waiting to be weighed.
const MAX_NEAR_CANDIDATES: usize = 64;

/// How many `tick`s apart a quiet node's housekeeping may be: in a settled ring nearly every
/// tick finds nothing to do, and at 100,000 simulated nodes they were a third of all wakes.
const QUIET_TICK_FACTOR: u32 = 6;

/// Bound on queued transmits and events (a driver that stops draining loses the oldest).
const QUEUE_LIMIT: usize = 4096;

impl Ring {
    pub fn new(now: Instant, me: RingAddr, cfg: Config, seed: u64) -> Ring {
        Ring {
            table: Table::new(me),
            rng: SmallRng::seed_from_u64(seed),
            candidates: Vec::new(),
            asked: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_token: 1,
            near: Vec::new(),
            lists: BTreeMap::new(),
            size_cache: std::cell::Cell::new(None),
            direct_failed: BTreeMap::new(),
            tunnels_wanted: BTreeMap::new(),
            quiet_caps: BTreeMap::new(),
            next_tick: now + cfg.tick,
            tick_every: cfg.tick,
            seek_at: None,
            told_near: None,
            tell_near_at: None,
            near_candidates: BTreeSet::new(),
            link_candidates_at: None,
            links_due: None,
            last_seek: now,
            seek_backoff: Duration::from_secs(2),
            reseek_after: cfg.reseek,
            store: Store::default(),
            puts: Puts::default(),
            lookups: Lookups::default(),
            seen: Seen::default(),
            coord: Coord::default(),
            links_told: Vec::new(),
            links_told_at: None,
            handed: Default::default(),
            broadcast_seq: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn me(&self) -> RingAddr {
        self.table.me()
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether our nearest neighbours on both sides count us among their near neighbours (as
    /// their last notices said); None until we have both.
    pub fn neighbours_agree(&self) -> Option<bool> {
        let left = self.table.nearest_left()?;
        let right = self.table.nearest_right()?;
        let lists_us = |peer: RingAddr| self.lists.get(&peer).is_some_and(|l| l.contains(&self.me()));
        Some(lists_us(left) && lists_us(right))
    }

    /// A one-line account of the linking state (for debugging).
    pub fn describe(&self) -> String {
        let wanted: Vec<String> = self.tunnels_wanted.keys().map(|a| a.to_string()).collect();
        let failed: Vec<String> = self.direct_failed.keys().map(|a| a.to_string()).collect();
        let lists: Vec<String> = self
            .lists
            .iter()
            .map(|(a, l)| {
                format!(
                    "{a}:[{}]",
                    l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
                )
            })
            .collect();
        format!(
            "tunnels_wanted={wanted:?} direct_failed={failed:?} pending={} asked={} lists={}",
            self.pending.len(),
            self.asked.len(),
            lists.join(" ")
        )
    }

    /// Values held for others.
    pub fn stored(&self) -> usize {
        self.store.len()
    }

    /// Our link-layer candidates (opaque here), sent in CTMs and their replies.
    pub fn set_candidates(&mut self, candidates: Vec<u8>) {
        self.candidates = candidates;
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at = self.next_tick;
        let due = [
            self.links_due,
            self.lookups.next_deadline(),
            self.seek_at,
            self.tell_near_at,
            self.link_candidates_at,
        ];
        for d in due.into_iter().flatten() {
            at = at.min(d);
        }
        Some(at)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Deadlines only move later between keepalive rounds (traffic, pongs), so a round
        // before `links_due` would find nothing to do.
        if self.links_due.is_some_and(|d| d <= now) {
            self.keepalive(now);
        }
        if self.tell_near_at.is_some_and(|at| at <= now) {
            self.tell_near();
        }
        if self.link_candidates_at.is_some_and(|at| at <= now) {
            self.link_near_candidates(now);
        }
        if self.seek_at.is_some_and(|at| at <= now) {
            self.seek(now);
        }
        let (resend, found) = self
            .lookups
            .on_timeout(now, self.cfg.dht.points, self.cfg.dht.retries);
        for (point, req, key) in resend {
            self.originate(now, point, Mode::Closest, RoutedBody::DhtGet { req, key });
        }
        for f in found {
            self.emit(Event::DhtFound(f));
        }
        if now >= self.next_tick {
            let (sent, events) = (self.stats.messages_out, self.events.len());
            self.tick(now);
            let quiet = self.stats.messages_out == sent && self.events.len() == events && self.settled(now);
            self.tick_every = if quiet {
                (self.tick_every * 2).min(self.cfg.tick * QUIET_TICK_FACTOR)
            } else {
                self.cfg.tick
            };
            let next = now + self.tick_every;
            // Re-puts (due at half their lease) and the next re-check of our place are never
            // put off by a quiet tick.
            let reseek = self.seek_at.is_none().then(|| self.last_seek + self.reseek_after);
            let due = self.puts.next_due().into_iter().chain(reseek).min();
            self.next_tick = due.map_or(next, |due| next.min(due.max(now + self.cfg.tick)));
        }
    }

    /// Whether housekeeping has nothing in flight to watch: no CTMs or links asked, no
    /// tunnels wanted, no candidates waiting, and no link young enough to be trimmed or told.
    fn settled(&self, now: Instant) -> bool {
        let young = 2 * self.cfg.trim_grace;
        self.pending.is_empty()
            && self.asked.is_empty()
            && self.tunnels_wanted.is_empty()
            && self.near_candidates.is_empty()
            && self
                .table
                .iter()
                .all(|(_, l)| now.saturating_duration_since(l.since) >= young)
    }

    /// Something changed: housekeeping ticks at its usual pace again.
    pub(super) fn wake_ticks(&mut self, now: Instant) {
        self.tick_every = self.cfg.tick;
        self.next_tick = self.next_tick.min(now + self.cfg.tick);
    }

    /// One overlay message from the link to `from`.
    pub fn handle_message(&mut self, now: Instant, from: RingAddr, bytes: &[u8]) {
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed += 1;
                trace!(%from, error = %e, "malformed overlay message");
                return;
            }
        };
        if let Some(link) = self.table.get_mut(&from) {
            link.last_rx = now;
        } else {
            // Only linked peers talk to us; a message racing a link's teardown is dropped.
            self.stats.dropped += 1;
            return;
        }
        self.dispatch(now, from, msg, true);
    }

    /// `outer`: the message came straight off a link (tunnelled messages may not nest).
    fn dispatch(&mut self, now: Instant, from: RingAddr, msg: Message, outer: bool) {
        match msg {
            Message::Ping(n) => self.send_link(from, &Message::Pong(n)),
            Message::Pong(n) => self.on_pong(now, from, n),
            Message::Routed(r) => self.route(now, Some(from), r),
            Message::Broadcast {
                origin,
                seq,
                start,
                end,
                payload,
            } => self.cover(now, origin, seq, start, end, payload),
            Message::Relay { to, inner } if outer => self.on_relay(now, from, to, inner),
            Message::Relayed { from: peer, inner } if outer => self.on_relayed(now, from, peer, &inner),
            Message::Unrelayed { to, inner } if outer => self.on_unrelayed(now, from, to, &inner),
            Message::Relay { .. } | Message::Relayed { .. } | Message::Unrelayed { .. } => {
                self.stats.malformed += 1
            }
            Message::Replicate(records) => {
                for r in records {
                    self.store.put(now, r.point, r.key, &r.value, r.lease_s);
                }
            }
            Message::Bye => self.on_bye(now, from),
            Message::Neighbours(list) => self.on_neighbours(now, from, list),
            Message::Links(prefixes) => self.on_links(from, prefixes),
            Message::Coord(c) => self.on_coord(from, c.coord()),
        }
    }

    /// Sends a routed message of our own.
    fn originate(&mut self, now: Instant, dst: RingAddr, mode: Mode, body: RoutedBody) {
        let msg = self.own(dst, mode, body);
        self.route(now, None, msg);
    }

    /// A routed message of ours, before its first hop.
    pub(super) fn own(&self, dst: RingAddr, mode: Mode, body: RoutedBody) -> Routed {
        Routed {
            src: self.me(),
            dst,
            mode,
            ttl: self.cfg.ttl,
            hops: 0,
            uphill: false,
            body,
        }
    }

    /// Sends a routed message one hop on, to `next`: one hop taken, one of its TTL spent.
    pub(super) fn pass_on(&mut self, next: RingAddr, mut msg: Routed) {
        msg.ttl = msg.ttl.saturating_sub(1);
        msg.hops = msg.hops.saturating_add(1);
        self.send_link(next, &Message::Routed(msg));
    }

    /// Answers a get for `req` with `values`, along as many paths as gets take.
    fn answer_get(&mut self, now: Instant, asker: RingAddr, req: u32, values: Vec<(u32, Vec<u8>)>) {
        let paths = self.cfg.dht.first_hops;
        self.originate_along(
            now,
            asker,
            Mode::Exact,
            RoutedBody::DhtValues { req, values },
            paths,
        );
    }

    /// Routes a message one step: delivers it here, passes it on, or drops it.
    fn route(&mut self, now: Instant, from: Option<RingAddr>, mut msg: Routed) {
        if let (Some(_), RoutedBody::DhtGet { req, key }) = (from, &msg.body) {
            // A replica holder on the way answers at once: the root's nearest neighbours hold
            // copies, and greedy routing usually reaches the root through one of them.
            let values = self.store.values(now, msg.dst, *key);
            if !values.is_empty() {
                self.answer_get(now, msg.src, *req, values);
                return;
            }
        }
        if from.is_none() && !self.table.has_routing_links() && msg.dst != self.me() {
            // A leaf (or a node still bootstrapping) hands its messages to a link of its.
            let home = self.home();
            if let Some(home) = home {
                msg.hops += 1;
                self.send_link(home, &Message::Routed(msg));
            } else {
                self.stats.dropped += 1;
            }
            return;
        }
        match self.table.decide(msg.dst, msg.mode, from, msg.uphill) {
            Decision::Deliver => self.deliver(now, msg),
            Decision::Drop => self.stats.dropped += 1,
            Decision::Forward { next, uphill } => {
                if msg.ttl == 0 {
                    self.stats.dropped += 1;
                    return;
                }
                msg.uphill |= uphill;
                self.pass_on(next, msg);
            }
            Decision::DeliverAndForward { next } => {
                let on = msg.clone();
                self.deliver(now, msg);
                if on.ttl > 0 {
                    self.pass_on(next, on);
                }
            }
        }
    }

    fn deliver(&mut self, now: Instant, msg: Routed) {
        let Routed {
            src, dst, hops, body, ..
        } = msg;
        match body {
            RoutedBody::Ctm {
                token,
                purpose,
                reply_via,
                candidates,
            } => self.on_ctm(now, src, token, purpose, reply_via, candidates),
            RoutedBody::CtmReply {
                token,
                candidates,
                neighbours,
                coords,
            } => self.on_ctm_reply(now, src, token, candidates, neighbours, &coords),
            RoutedBody::NeighboursRequest { req, reply_via } => {
                let neighbours = self.table.near(self.cfg.near);
                self.reply(
                    now,
                    src,
                    reply_via,
                    RoutedBody::NeighboursReply { req, neighbours },
                );
            }
            RoutedBody::Via { to, inner } => {
                if self.table.get(&to).is_none() {
                    self.stats.dropped += 1;
                    return;
                }
                let msg = Routed {
                    src,
                    dst: to,
                    mode: Mode::Exact,
                    ttl: 2,
                    hops,
                    uphill: false,
                    body: *inner,
                };
                self.route(now, None, msg);
            }
            RoutedBody::NeighboursReply { neighbours, .. } => self.learn_list(src, neighbours),
            RoutedBody::App(payload) => self.emit(Event::Deliver { src, hops, payload }),
            RoutedBody::DhtPut { key, lease_s, value } => self.on_dht_put(now, dst, key, lease_s, value),
            RoutedBody::DhtGet { req, key } => {
                let values = self.store.values(now, dst, key);
                self.answer_get(now, src, req, values);
            }
            RoutedBody::DhtValues { req, values } => {
                if let Some(found) = self.lookups.answer(now, req, values, &self.cfg.dht) {
                    self.emit(Event::DhtFound(found));
                }
            }
            RoutedBody::Broadcast { seq, end, payload } => self.cover(now, src, seq, dst, end, payload),
        }
    }

    /// The link a message of ours to `dst` leaves by (ourselves if it stays here).
    fn first_hop(&self, dst: RingAddr, mode: Mode) -> RingAddr {
        match self.table.decide(dst, mode, None, false) {
            Decision::Forward { next, .. } | Decision::DeliverAndForward { next } => next,
            Decision::Deliver | Decision::Drop => self.me(),
        }
    }

    /// Where a node without routing links sends its messages: a link that told us of its
    /// near neighbours (a router; another leaf has none), else a link drawn at random (one
    /// of them will answer and so show itself a router).
    pub(super) fn home(&mut self) -> Option<RingAddr> {
        let router = self
            .table
            .iter()
            .map(|(a, _)| *a)
            .find(|a| self.lists.get(a).is_some_and(|l| !l.is_empty()));
        if router.is_some() || self.table.is_empty() {
            return router;
        }
        let pick = self.rng.random_range(0..self.table.len());
        self.table.iter().map(|(a, _)| *a).nth(pick)
    }

    /// Answers `to` through `via`, a link of theirs, unless we can reach them directly.
    fn reply(&mut self, now: Instant, to: RingAddr, via: RingAddr, body: RoutedBody) {
        if via == to || via == self.me() || self.table.get(&to).is_some() {
            self.originate(now, to, Mode::Exact, body);
        } else {
            let body = RoutedBody::Via {
                to,
                inner: Box::new(body),
            };
            self.originate(now, via, Mode::Exact, body);
        }
    }

    /// Queues a message for the link to `peer` (wrapped for the relay if it is a tunnel).
    fn send_link(&mut self, peer: RingAddr, msg: &Message) {
        let (to, bytes) = match self.table.get(&peer).map(|l| l.kind) {
            Some(LinkKind::Tunnel { via }) => (
                via,
                Message::Relay {
                    to: peer,
                    inner: msg.emit(),
                }
                .emit(),
            ),
            Some(_) => (peer, msg.emit()),
            None => {
                self.stats.dropped += 1;
                return;
            }
        };
        self.push(to, bytes);
    }

    fn push(&mut self, peer: RingAddr, bytes: Vec<u8>) {
        self.stats.messages_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        let (kind, body) = wire::kind_and_body(&bytes);
        let stats = &mut self.stats;
        for (count, slot) in [
            (&mut stats.out_by_kind[..], kind),
            (&mut stats.routed_by_body[..], body),
        ] {
            if let Some(n) = slot.and_then(|k| count.get_mut(usize::from(k))) {
                *n += 1;
            }
        }
        if self.outbox.len() >= QUEUE_LIMIT {
            self.outbox.pop_front();
        }
        self.outbox.push_back(Transmit { peer, bytes });
    }

    fn emit(&mut self, event: Event) {
        if self.events.len() >= QUEUE_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn token(&mut self) -> u32 {
        let t = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(1);
        t
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;
    use crate::overlay::addr::filled as addr;

    /// Links tell each other their coordinates at link-up; a direct link's RTT moves ours, a
    /// relay link's (mostly the XMPP servers') does not.
    #[test]
    fn coordinates_are_told_at_link_up_and_move_on_direct_links_only() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        ring.handle_link_up(now, addr(2), LinkKind::Relay, Duration::from_millis(90));
        ring.handle_link_up(now, addr(3), LinkKind::Direct, Duration::from_millis(30));
        let told: Vec<RingAddr> = std::iter::from_fn(|| ring.poll_transmit())
            .filter(|t| matches!(Message::parse(&t.bytes), Ok(Message::Coord(_))))
            .map(|t| t.peer)
            .collect();
        assert_eq!(told, vec![addr(2), addr(3)]);
        let theirs = crate::overlay::coords::Coord {
            x: 12.0,
            ..Default::default()
        };
        let fresh = ring.coord;
        ring.handle_message(now, addr(2), &Message::Coord(theirs.packed()).emit());
        assert_eq!(
            ring.coord, fresh,
            "a relay link's RTT says little of where we are"
        );
        ring.handle_message(now, addr(3), &Message::Coord(theirs.packed()).emit());
        assert_ne!(ring.coord, fresh);
        assert!(
            ring.coord.rtt_ms(&theirs) > fresh.rtt_ms(&theirs),
            "moved away: 30 ms apart"
        );
        assert_eq!(
            ring.table().get(&addr(2)).and_then(|l| l.coord),
            Some(theirs.packed().coord())
        );
    }

    #[test]
    fn bad_messages_are_counted_and_change_nothing() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        ring.handle_link_up(now, addr(2), LinkKind::Direct, Duration::from_millis(10));
        while ring.poll_transmit().is_some() {}
        for junk in [&[][..], &[9, 9, 9], &[0, 3, 1, 2]] {
            ring.handle_message(now, addr(2), junk);
        }
        assert_eq!(ring.stats().malformed, 3);
        // A stranger (no link) is not heard at all, even with a well-formed message.
        ring.handle_message(now, addr(3), &Message::Ping(1).emit());
        assert_eq!(ring.stats().dropped, 1);
        assert!(ring.poll_transmit().is_none(), "no answer to junk or strangers");
        assert_eq!(ring.table().len(), 1);
        // The link still works.
        ring.handle_message(now, addr(2), &Message::Ping(5).emit());
        let t = ring.poll_transmit().unwrap();
        assert_eq!(
            (t.peer, Message::parse(&t.bytes)),
            (addr(2), Ok(Message::Pong(5)))
        );
    }

    #[test]
    fn messages_out_are_counted_by_kind_and_routed_body() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        ring.handle_link_up(now, addr(2), LinkKind::Direct, Duration::from_millis(10));
        while ring.poll_transmit().is_some() {}
        let before = ring.stats().clone();
        ring.handle_message(now, addr(2), &Message::Ping(5).emit());
        ring.send(now, addr(2), b"hi".to_vec()).unwrap();
        let after = ring.stats();
        assert_eq!(after.out_by_kind[2] - before.out_by_kind[2], 1, "one pong");
        assert_eq!(
            after.out_by_kind[3] - before.out_by_kind[3],
            1,
            "one routed message"
        );
        assert_eq!(
            after.routed_by_body[6] - before.routed_by_body[6],
            1,
            "an app body"
        );
        assert_eq!(after.messages_out - before.messages_out, 2);
    }

    /// With nothing changing, the periodic re-check of our place backs off: 10, 20, 40 min
    /// apart, then at most an hour.
    #[test]
    fn a_quiet_ring_rechecks_its_place_less_and_less_often() {
        let start = Instant::now();
        let cfg = Config {
            shortcuts: Some(0),
            ..Config::default()
        };
        let reseek = cfg.reseek;
        let mut ring = Ring::new(start, addr(1), cfg, 7);
        let peers = [2, 3, 254, 255];
        for n in peers {
            ring.handle_link_up(start, addr(n), LinkKind::Direct, Duration::from_millis(10));
        }
        let mut rechecks = Vec::new();
        let mut sent = ring.stats().ctm_sent;
        for step in 0..(140 * 60 / 5) {
            let now = start + Duration::from_secs(step * 5);
            for n in peers {
                ring.handle_message(now, addr(n), &Message::Ping(step as u32).emit());
            }
            ring.handle_timeout(now);
            while ring.poll_transmit().is_some() {}
            if ring.stats().ctm_sent > sent {
                sent = ring.stats().ctm_sent;
                rechecks.push((now - start).as_secs() / 60);
            }
        }
        // The first seek follows the links coming up; then 10, 20, 40 and 60 min apart.
        assert_eq!(rechecks, vec![0, 10, 30, 70, 130], "{reseek:?}");
    }

    /// A link the ring does not need that goes down is released to the link layer (which
    /// would re-open it otherwise); a near neighbour's is not.
    #[test]
    fn a_lost_link_is_released_unless_the_ring_needs_it() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        for n in [2, 3, 254, 255, 128] {
            ring.handle_link_up(now, addr(n), LinkKind::Direct, Duration::from_millis(10));
        }
        while ring.poll_event().is_some() {}
        let released = |ring: &mut Ring| {
            std::iter::from_fn(|| ring.poll_event())
                .filter_map(|e| match e {
                    Event::Disconnect { peer } => Some(peer),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        ring.handle_link_down(now, addr(128));
        assert_eq!(released(&mut ring), vec![addr(128)]);
        ring.handle_link_down(now, addr(2));
        assert_eq!(released(&mut ring), vec![], "a near neighbour is wanted back");
    }

    #[test]
    fn a_silent_link_is_pinged_then_dropped() {
        let now = Instant::now();
        let cfg = Config::default();
        let mut ring = Ring::new(now, addr(1), cfg.clone(), 7);
        ring.handle_link_up(now, addr(2), LinkKind::Direct, Duration::from_millis(10));
        let mut t = now;
        let mut pings = 0;
        for _ in 0..100 {
            t = ring.poll_timeout().unwrap().max(t + Duration::from_millis(1));
            ring.handle_timeout(t);
            while let Some(tx) = ring.poll_transmit() {
                pings += matches!(Message::parse(&tx.bytes), Ok(Message::Ping(_))) as u32;
            }
            if ring.table().is_empty() {
                break;
            }
        }
        assert!(ring.table().is_empty(), "a link that never answers must go");
        assert_eq!(pings, u32::from(cfg.ping_tries));
        let waited = t - now;
        assert!(
            waited >= cfg.ping_after && waited <= cfg.ping_after * 2,
            "dropped after {waited:?}"
        );
        assert!(std::iter::from_fn(|| ring.poll_event()).any(|e| e == Event::Disconnect { peer: addr(2) }));
    }

    /// Tunnel traffic from a peer that now comes through another relay moves our end of the
    /// tunnel there: our answers take the relay that works.
    #[test]
    fn a_tunnel_follows_the_relay_its_traffic_comes_through() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        for relay in [addr(3), addr(4)] {
            ring.handle_link_up(now, relay, LinkKind::Direct, Duration::from_millis(10));
        }
        while ring.poll_transmit().is_some() {}
        let relayed = |nonce: u32| {
            Message::Relayed {
                from: addr(2),
                inner: Message::Ping(nonce).emit(),
            }
            .emit()
        };
        ring.handle_message(now, addr(3), &relayed(5));
        assert_eq!(
            ring.table().get(&addr(2)).map(|l| l.kind),
            Some(LinkKind::Tunnel { via: addr(3) })
        );
        while ring.poll_transmit().is_some() {}
        ring.handle_message(now, addr(4), &relayed(6));
        assert_eq!(
            ring.table().get(&addr(2)).map(|l| l.kind),
            Some(LinkKind::Tunnel { via: addr(4) })
        );
        let pong = std::iter::from_fn(|| ring.poll_transmit())
            .find(|t| matches!(Message::parse(&t.bytes), Ok(Message::Relay { to, .. }) if to == addr(2)))
            .expect("the pong goes back through a relay");
        assert_eq!(pong.peer, addr(4), "answered through the relay that works");
        assert!(std::iter::from_fn(|| ring.poll_event()).any(|e| e
            == Event::TunnelUp {
                peer: addr(2),
                via: addr(4)
            }));
    }

    /// A relay whose link to a tunnel's far end is gone hands the traffic back; the sender
    /// drops the dead tunnel and routes the broadcast sub-range it had handed into it to the
    /// sub-range's start.
    /// A bounded broadcast routed to its start lands on the first router at or after it; a
    /// leaf between the start and that router belongs to no one else's part of the range
    /// (the revocation scenario missed such a leaf behind the revoked node).
    #[test]
    fn the_first_router_in_a_range_covers_the_leaves_before_it() {
        let now = Instant::now();
        let hop = Duration::from_millis(10);
        let mut ring = Ring::new(now, addr(100), Config::default(), 7);
        for router in [addr(50), addr(150)] {
            ring.handle_link_up(now, router, LinkKind::Direct, hop);
        }
        for leaf in [addr(70), addr(90), addr(120)] {
            ring.handle_link_up(now, leaf, LinkKind::Relay, hop);
        }
        while ring.poll_transmit().is_some() {}
        let mut handed = |seq: u32, start: u8, end: u8| {
            let routed = Message::Routed(Routed {
                src: addr(9),
                dst: addr(start),
                mode: Mode::Right,
                ttl: 8,
                hops: 1,
                uphill: false,
                body: RoutedBody::Broadcast {
                    seq,
                    end: addr(end),
                    payload: b"news".to_vec(),
                },
            });
            ring.handle_message(now, addr(50), &routed.emit());
            let mut got: Vec<(RingAddr, RingAddr, RingAddr)> = std::iter::from_fn(|| ring.poll_transmit())
                .filter_map(|t| match Message::parse(&t.bytes) {
                    Ok(Message::Broadcast { start, end, .. }) => Some((t.peer, start, end)),
                    _ => None,
                })
                .collect();
            got.sort();
            got
        };
        assert_eq!(
            handed(1, 80, 140),
            vec![(addr(90), addr(90), addr(100)), (addr(120), addr(120), addr(140)),],
            "the leaf at 70 is before the range, the router at 150 after it"
        );
        assert_eq!(
            handed(2, 75, 95),
            vec![(addr(90), addr(90), addr(95))],
            "a range with no router in it: the first router after it covers its leaves"
        );
    }

    #[test]
    fn a_relay_without_the_far_end_hands_tunnel_traffic_back_and_it_goes_another_way() {
        let now = Instant::now();
        let hop = Duration::from_millis(10);
        // What 1 hands its tunnel to 2 when it covers [2, 4) with links 2 (tunnel) and 3.
        let handed = Message::Broadcast {
            origin: addr(9),
            seq: 4,
            start: addr(2),
            end: addr(3),
            payload: b"game".to_vec(),
        }
        .emit();

        // The relay (3) links to the sender (1) but no longer to the far end (2).
        let mut relay = Ring::new(now, addr(3), Config::default(), 7);
        relay.handle_link_up(now, addr(1), LinkKind::Direct, hop);
        while relay.poll_transmit().is_some() {}
        let relay_msg = Message::Relay {
            to: addr(2),
            inner: handed.clone(),
        };
        relay.handle_message(now, addr(1), &relay_msg.emit());
        let back = relay.poll_transmit().expect("the traffic goes back");
        let unrelayed = Message::Unrelayed {
            to: addr(2),
            inner: handed.clone(),
        };
        assert_eq!(
            (back.peer, Message::parse(&back.bytes)),
            (addr(1), Ok(unrelayed.clone()))
        );

        // The sender (1) has a tunnel to 2 through 3, and a direct link to 5.
        let mut ring = Ring::new(now, addr(1), Config::default(), 7);
        for link in [addr(3), addr(5)] {
            ring.handle_link_up(now, link, LinkKind::Direct, hop);
        }
        let opened = Message::Relayed {
            from: addr(2),
            inner: Message::Ping(1).emit(),
        };
        ring.handle_message(now, addr(3), &opened.emit());
        assert!(ring.table().get(&addr(2)).is_some());
        let covered = Message::Broadcast {
            origin: addr(9),
            seq: 4,
            start: addr(2),
            end: addr(4),
            payload: b"game".to_vec(),
        };
        ring.handle_message(now, addr(5), &covered.emit());
        let into_tunnel = Message::Relay {
            to: addr(2),
            inner: handed.clone(),
        };
        let sent: Vec<_> = std::iter::from_fn(|| ring.poll_transmit()).collect();
        assert!(sent
            .iter()
            .any(|t| t.peer == addr(3) && Message::parse(&t.bytes) == Ok(into_tunnel.clone())));
        // Handed back by another node than the tunnel's relay: not believed.
        ring.handle_message(now, addr(5), &unrelayed.emit());
        assert!(ring.table().get(&addr(2)).is_some());
        ring.handle_message(now, addr(3), &unrelayed.emit());
        assert!(ring.table().get(&addr(2)).is_none(), "the dead tunnel goes");
        let resent = std::iter::from_fn(|| ring.poll_transmit())
            .filter_map(|t| match Message::parse(&t.bytes) {
                Ok(Message::Routed(r)) if matches!(r.body, RoutedBody::Broadcast { .. }) => Some(r),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(resent.len(), 1, "the sub-range is routed to its start, once");
        assert_eq!(
            (resent[0].src, resent[0].dst, resent[0].mode),
            (addr(9), addr(2), Mode::Right)
        );
        assert_eq!(
            resent[0].body,
            RoutedBody::Broadcast {
                seq: 4,
                end: addr(3),
                payload: b"game".to_vec()
            }
        );
    }

    /// Two linked rings for `run` of virtual time over a path that forgets a flow silent for
    /// longer than `nat_lifetime` (a NAT mapping). Returns when keepalive pings went out,
    /// when anything went out, and how often the link died (each time it is linked again at
    /// once, as a re-punch would).
    fn quiet_pair(nat_lifetime: Duration, run: Duration) -> (Vec<Instant>, Vec<Instant>, u32) {
        let now = Instant::now();
        // One near neighbour a side: the two are each other's whole ring (no seeking).
        let cfg = Config {
            near: 1,
            ..Config::default()
        };
        let mut rings = [1u8, 2].map(|i| Ring::new(now, addr(i), cfg.clone(), u64::from(i)));
        let link_both = |rings: &mut [Ring; 2], t: Instant| {
            rings[0].handle_link_up(t, addr(2), LinkKind::Direct, Duration::from_millis(10));
            rings[1].handle_link_up(t, addr(1), LinkKind::Direct, Duration::from_millis(10));
        };
        link_both(&mut rings, now);
        let (mut t, mut last_traffic, mut deaths) = (now, now, 0);
        let (mut pings, mut sent) = (Vec::new(), Vec::new());
        while t < now + run {
            t = rings.iter().filter_map(Ring::poll_timeout).min().unwrap().max(t);
            for r in &mut rings {
                r.handle_timeout(t);
            }
            let mut moved = true;
            while moved {
                moved = false;
                for i in 0..2 {
                    while let Some(tx) = rings[i].poll_transmit() {
                        moved = true;
                        if matches!(Message::parse(&tx.bytes), Ok(Message::Ping(_))) {
                            pings.push(t);
                        }
                        sent.push(t);
                        if t - last_traffic > nat_lifetime {
                            continue; // the mapping is gone: the datagram is lost
                        }
                        last_traffic = t;
                        rings[1 - i].handle_message(t, addr(i as u8 + 1), &tx.bytes);
                    }
                }
            }
            let died = rings.iter().any(|r| r.table().is_empty());
            for r in &mut rings {
                while r.poll_event().is_some() {}
            }
            if died {
                deaths += 1;
                rings[0].handle_link_down(t, addr(2));
                rings[1].handle_link_down(t, addr(1));
                link_both(&mut rings, t);
                last_traffic = t;
            }
            t += Duration::from_millis(1);
        }
        (pings, sent, deaths)
    }

    /// Exchanges (datagrams closer than the ping retry timeout belong to one).
    fn rounds(times: &[Instant]) -> Vec<Instant> {
        let mut out: Vec<Instant> = Vec::new();
        for p in times {
            if out.last().is_none_or(|l| *p - *l > Duration::from_secs(10)) {
                out.push(*p);
            }
        }
        out
    }

    #[test]
    fn a_quiet_link_pings_less_and_less_up_to_the_maximum() {
        let cfg = Config::default();
        let (pings, _, deaths) = quiet_pair(Duration::MAX, Duration::from_secs(1200));
        assert_eq!(deaths, 0);
        let rounds = rounds(&pings);
        let gaps: Vec<Duration> = rounds.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.len() >= 8 && gaps.len() <= 16,
            "{} rounds in 20 min: {gaps:?}",
            rounds.len()
        );
        let late = &gaps[gaps.len() - 4..];
        assert!(
            late.iter()
                .all(|g| *g >= cfg.ping_after_max.mul_f64(0.9) && *g <= cfg.ping_after_max),
            "late gaps {late:?}"
        );
    }

    #[test]
    fn a_link_that_dies_quiet_keeps_the_next_one_within_what_it_survived() {
        let lifetime = Duration::from_secs(50);
        let (_, sent, deaths) = quiet_pair(lifetime, Duration::from_secs(1800));
        assert_eq!(
            deaths, 1,
            "the first link dies probing past 50 s; the next ones do not"
        );
        let rounds = rounds(&sent);
        let last_15_min: Vec<Duration> = rounds
            .windows(2)
            .filter(|w| w[0] - rounds[0] > Duration::from_secs(900))
            .map(|w| w[1] - w[0])
            .collect();
        assert!(!last_15_min.is_empty());
        assert!(last_15_min.iter().all(|g| *g <= lifetime), "gaps {last_15_min:?}");
        assert!(
            last_15_min.iter().all(|g| *g >= Duration::from_secs(20)),
            "gaps {last_15_min:?}"
        );
    }
}

/// A handful of ring cores wired to each other by hand (every pair linked, instant delivery):
/// the DHT and broadcast end to end without the simulator.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod small_ring_tests {
    use super::*;

    struct Net {
        nodes: Vec<Ring>,
        events: Vec<(usize, Event)>,
    }

    impl Net {
        fn new(now: Instant, n: u8) -> Net {
            let mut nodes: Vec<Ring> = (0..n)
                .map(|i| {
                    Ring::new(
                        now,
                        RingAddr::from_bytes([i.wrapping_mul(37); 20]),
                        Config::default(),
                        u64::from(i),
                    )
                })
                .collect();
            let addrs: Vec<RingAddr> = nodes.iter().map(|r| r.me()).collect();
            for (i, ring) in nodes.iter_mut().enumerate() {
                for (j, a) in addrs.iter().enumerate() {
                    if i != j {
                        ring.handle_link_up(now, *a, LinkKind::Direct, Duration::from_millis(5));
                    }
                }
            }
            let mut net = Net {
                nodes,
                events: Vec::new(),
            };
            net.settle(now);
            net
        }

        fn settle(&mut self, now: Instant) {
            for _ in 0..10_000 {
                let mut moved = false;
                for i in 0..self.nodes.len() {
                    while let Some(t) = self.nodes[i].poll_transmit() {
                        moved = true;
                        let from = self.nodes[i].me();
                        if let Some(j) = self.nodes.iter().position(|r| r.me() == t.peer) {
                            self.nodes[j].handle_message(now, from, &t.bytes);
                        }
                    }
                    while let Some(e) = self.nodes[i].poll_event() {
                        moved = true;
                        self.events.push((i, e));
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the small ring never went quiet");
        }

        fn found(&mut self) -> Vec<Found> {
            let found = self
                .events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::DhtFound(f) => Some(f.clone()),
                    _ => None,
                })
                .collect();
            self.events.clear();
            found
        }
    }

    #[test]
    fn dht_values_are_put_found_from_anywhere_and_removed() {
        let now = Instant::now();
        let mut net = Net::new(now, 6);
        let key = RingAddr::from_bytes([200; 20]);
        net.nodes[0].dht_put(now, key, b"one".to_vec(), 60).unwrap();
        net.nodes[1].dht_put(now, key, b"two".to_vec(), 60).unwrap();
        net.settle(now);
        assert!(
            net.nodes.iter().filter(|r| r.stored() > 0).count() >= 3,
            "at least 3 copies"
        );
        net.nodes[4].dht_get(now, key).unwrap();
        net.settle(now);
        let found = net.found();
        let values: Vec<&[u8]> = found[0].values.iter().map(|(v, _)| v.as_slice()).collect();
        assert_eq!(values, vec![&b"one"[..], &b"two"[..]]);
        net.nodes[0].dht_remove(now, key, b"one".to_vec()).unwrap();
        net.settle(now);
        net.nodes[5].dht_get(now, key).unwrap();
        net.settle(now);
        let found = net.found();
        assert_eq!(
            found[0].values.len(),
            1,
            "removed everywhere: {:?}",
            found[0].values
        );
        assert!(matches!(
            net.nodes[0].dht_put(now, key, vec![0; 1025], 60),
            Err(services::Error::ValueTooBig(1025))
        ));
    }

    #[test]
    fn a_whole_ring_broadcast_reaches_everyone_once() {
        let now = Instant::now();
        let mut net = Net::new(now, 7);
        net.events.clear();
        let me = net.nodes[3].me();
        net.nodes[3].broadcast(now, me, me, b"hi".to_vec()).unwrap();
        net.settle(now);
        let mut got: Vec<usize> = net
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Broadcast { payload, .. } if payload == b"hi"))
            .map(|(i, _)| *i)
            .collect();
        got.sort();
        assert_eq!(got, (0..7).collect::<Vec<_>>());
        let forwarded: u64 = net.nodes.iter().map(|r| r.stats().broadcasts_forwarded).sum();
        assert_eq!(forwarded, 6);
    }

    /// A ring at 100 with near neighbours `spread` apart on each side (2 per side over
    /// 4·spread of 256), after its first tick: the token of the shortcut CTM it sent.
    fn drawing_a_shortcut(spread: u8) -> (Ring, Instant, u32) {
        use crate::overlay::addr::filled as addr;
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(100), Config::default(), 7);
        for n in [100 - 2 * spread, 100 - spread, 100 + spread, 100 + 2 * spread] {
            ring.handle_link_up(now, addr(n), LinkKind::Direct, Duration::from_millis(10));
        }
        while ring.poll_event().is_some() {}
        while ring.poll_transmit().is_some() {}
        let later = now + ring.cfg.tick;
        ring.handle_timeout(later);
        let token = std::iter::from_fn(|| ring.poll_transmit())
            .find_map(|t| match Message::parse(&t.bytes) {
                Ok(Message::Routed(Routed {
                    body:
                        RoutedBody::Ctm {
                            token,
                            purpose: Purpose::Shortcut,
                            ..
                        },
                    ..
                })) => Some(token),
                _ => None,
            })
            .expect("a shortcut CTM");
        while ring.poll_event().is_some() {}
        (ring, later, token)
    }

    /// Hands `ring` a reply to its shortcut CTM from `sender`; returns the links it asks for.
    fn answered(
        ring: &mut Ring,
        now: Instant,
        token: u32,
        sender: RingAddr,
        beside: &[RingAddr],
        coords: Vec<crate::overlay::coords::Packed>,
    ) -> Vec<RingAddr> {
        let reply = Message::Routed(Routed {
            src: sender,
            dst: ring.me(),
            mode: Mode::Exact,
            ttl: 8,
            hops: 2,
            uphill: false,
            body: RoutedBody::CtmReply {
                token,
                candidates: vec![1, 2, 3],
                neighbours: beside.to_vec(),
                coords,
            },
        });
        let via = ring.table().near(1)[0];
        ring.handle_message(now, via, &reply.emit());
        let mut asked: Vec<RingAddr> = std::iter::from_fn(|| ring.poll_event())
            .filter_map(|e| match e {
                Event::Connect { peer, .. } => Some(peer),
                _ => None,
            })
            .collect();
        asked.sort();
        asked
    }

    /// With coordinates it trusts, a node links only the one candidate nearest in time among
    /// the answering node and its neighbours nearest the drawn point; with none, trial links
    /// choose (see `proximity_trials_only_in_rings_big_enough_for_them`).
    #[test]
    fn a_shortcut_goes_to_the_candidate_nearest_in_time() {
        use crate::overlay::addr::filled as addr;
        use crate::overlay::coords::Coord;
        let at = |x: f32, error: f32| {
            Coord {
                x,
                y: 0.0,
                height: 1.0,
                error,
            }
            .packed()
        };
        let (sender, beside) = (addr(200), [addr(199), addr(201), addr(202)]);
        let cases = [
            // (sender, 199, 201, 202) → asked
            (
                [at(80.0, 0.1), at(60.0, 0.1), at(5.0, 0.1), at(90.0, 0.1)],
                vec![addr(201)],
            ),
            (
                [at(3.0, 0.1), at(60.0, 0.1), at(5.0, 0.1), at(90.0, 0.1)],
                vec![sender],
            ),
            // 201's coordinate is not trusted: the next best.
            (
                [at(80.0, 0.1), at(60.0, 0.1), at(5.0, 1.2), at(90.0, 0.1)],
                vec![addr(199)],
            ),
        ];
        for (coords, want) in cases {
            let (mut ring, now, token) = drawing_a_shortcut(1);
            ring.coord = Coord {
                error: 0.1,
                ..Coord::default()
            };
            let asked = answered(&mut ring, now, token, sender, &beside, coords.to_vec());
            assert_eq!(asked, want);
        }
        let (mut ring, now, token) = drawing_a_shortcut(1);
        let coords = [at(80.0, 0.1), at(60.0, 0.1), at(5.0, 0.1), at(90.0, 0.1)];
        let asked = answered(&mut ring, now, token, sender, &beside, coords.to_vec());
        assert_eq!(asked.len(), 3, "our own coordinate untrusted: trials, {asked:?}");
    }

    /// A shortcut reply makes us link to its sender and, where the ring is big enough, also
    /// to the sender's neighbours nearest the drawn point (proximity trials); in a ring of a
    /// dozen those trials would be a quarter of it, so only the sender is linked.
    #[test]
    fn proximity_trials_only_in_rings_big_enough_for_them() {
        use crate::overlay::addr::filled as addr;
        for (spread, links_asked) in [(20u8, 1usize), (1, 3)] {
            let (mut ring, later, token) = drawing_a_shortcut(spread);
            let (sender, beside) = (addr(200), [addr(199), addr(201), addr(202)]);
            let asked = answered(&mut ring, later, token, sender, &beside, Vec::new());
            let n_hat = ring.size_estimate();
            assert_eq!(asked.len(), links_asked, "N̂ {n_hat:.0}: asked {asked:?}");
            assert!(asked.contains(&sender), "N̂ {n_hat:.0}");
        }
    }
}
