//! The simulated world: a virtual clock and event queue, a latency model, NAT reachability
//! classes, and the link layer, around the real [`Ring`] cores of every node.
//!
//! Drive loop (per event popped in time order):
//! 1. hand the event to its node's core (`handle_message`, `handle_link_up`, …);
//! 2. drain the core's `poll_transmit` (scheduled as deliveries after the pair's latency,
//!    minus losses) and `poll_event` (connect/disconnect become link events; deliveries,
//!    DHT results and broadcasts are recorded);
//! 3. schedule the core's `poll_timeout`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use foldhash::fast::FixedState;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::queue::Queue;
use crate::overlay::dht::Found;
use crate::overlay::{Config, Event, LinkKind, Ring, RingAddr};

/// Bytes a link adds to each overlay message (ringlet's link frame header).
pub const LINK_OVERHEAD: u64 = 10;
/// How long a link attempt between peers that cannot reach each other takes to fail.
const PUNCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a node's NAT allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Cone NAT or public: links directly with anyone.
    Open,
    /// Symmetric NAT: links directly with open peers only; others need tunnels.
    Symmetric,
    /// UDP blocked: reaches peers over the XMPP relay only, so its links do not route (a
    /// leaf, outside the true ring).
    Blocked,
}

/// What the XMPP relay adds to a one-way latency (client → server → server → client).
const RELAY_EXTRA: Duration = Duration::from_millis(40);

pub type NodeIx = u32;

#[derive(Debug)]
enum Ev {
    Message {
        to: NodeIx,
        from: NodeIx,
        bytes: Box<[u8]>,
    },
    Timer {
        node: NodeIx,
    },
    LinkUp {
        a: NodeIx,
        b: NodeIx,
    },
    LinkFailed {
        node: NodeIx,
        peer: NodeIx,
    },
    LinkDown {
        node: NodeIx,
        peer: NodeIx,
    },
    Rendezvous {
        node: NodeIx,
    },
    /// A revocation handed over after a handshake reaches `node`.
    Learn {
        node: NodeIx,
    },
}

impl Ev {
    /// The node whose core the event reaches first.
    fn node(&self) -> NodeIx {
        match self {
            Ev::Message { to: node, .. }
            | Ev::Timer { node }
            | Ev::LinkUp { a: node, .. }
            | Ev::LinkFailed { node, .. }
            | Ev::LinkDown { node, .. }
            | Ev::Rendezvous { node }
            | Ev::Learn { node } => *node,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn prefetch(p: *const u8) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: SSE is part of the x86_64 baseline, and a prefetch is a hint: it never faults
    // nor reads into the program, whatever the address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
}

#[cfg(not(target_arch = "x86_64"))]
fn prefetch(_: *const u8) {}

pub struct SimNode {
    pub ring: Ring,
    pub alive: bool,
    /// Went online (asked rendezvous once): only such nodes show in rendezvous answers.
    online: bool,
    timer: Option<u64>,
    /// Rendezvous group: nodes only see their own group through XMPP (partition scenario).
    pub group: u8,
}

/// What the world recorded from node events.
#[derive(Debug, Default)]
pub struct Record {
    pub delivered_hops: Vec<u8>,
    /// App messages delivered at leaves.
    pub delivered_to_leaves: u64,
    pub found: Vec<(NodeIx, Found, Duration)>,
    pub broadcasts: u64,
    pub tunnels_up: u64,
}

pub struct World {
    base: Instant,
    now_us: u64,
    queue: Queue<Ev>,
    /// The alive nodes sorted by address, rebuilt after joins and crashes.
    sorted: std::cell::RefCell<Option<Vec<(RingAddr, NodeIx)>>>,
    pub nodes: Vec<SimNode>,
    /// Every node's place and NAT class by index, apart from its (large) core: every
    /// delivery reads the pair's latency, and at 100,000 nodes a read of the core is a cache
    /// miss.
    spots: Vec<Spot>,
    pub(super) index: HashMap<RingAddr, NodeIx, FixedState>,
    /// Every node's address by index: a delivery names its sender without touching the
    /// sender's core (a cache miss at 100,000 nodes).
    addrs: Vec<RingAddr>,
    links: HashSet<(NodeIx, NodeIx), FixedState>,
    /// Nodes that went online, in that order (crashed ones stay: rendezvous skips them).
    online: Vec<NodeIx>,
    attempts: HashSet<(NodeIx, NodeIx), FixedState>,
    rng: SmallRng,
    pub cfg: Config,
    pub loss: f64,
    /// Groups that see each other through rendezvous: (a, b) both allowed when `merged`.
    pub merged: bool,
    pub record: Record,
    pub messages: u64,
    pub bytes: u64,
    /// Timer events that reached a core.
    pub wakes: u64,
    /// Messages sent by (message kind, routed body kind), when `count_kinds` is set.
    pub kinds: std::collections::BTreeMap<(u8, u8), u64>,
    pub count_kinds: bool,
    /// A revocation spreading (the `revocation` scenario).
    pub revocation: Option<super::revoke::Spread>,
}

#[derive(Debug, Clone, Copy)]
struct Spot {
    pos: (f32, f32),
    class: Class,
}

fn pair(a: NodeIx, b: NodeIx) -> (NodeIx, NodeIx) {
    (a.min(b), a.max(b))
}

impl World {
    pub fn new(seed: u64, cfg: Config, base: Instant) -> World {
        World {
            base,
            now_us: 0,
            queue: Queue::default(),
            sorted: std::cell::RefCell::new(None),
            nodes: Vec::new(),
            spots: Vec::new(),
            index: HashMap::default(),
            addrs: Vec::new(),
            links: HashSet::default(),
            online: Vec::new(),
            attempts: HashSet::default(),
            rng: SmallRng::seed_from_u64(seed),
            cfg,
            loss: 0.0,
            merged: true,
            record: Record::default(),
            messages: 0,
            bytes: 0,
            wakes: 0,
            kinds: Default::default(),
            count_kinds: std::env::var("SIM_DEBUG").is_ok(),
            revocation: None,
        }
    }

    pub fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.now_us)
    }

    pub fn elapsed(&self) -> Duration {
        Duration::from_micros(self.now_us)
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Adds a node that starts (asks rendezvous) after `delay`.
    pub fn add_node(&mut self, class: Class, group: u8, delay: Duration) -> NodeIx {
        let mut id = [0u8; 20];
        for b in id.iter_mut() {
            *b = self.rng.random();
        }
        let addr = RingAddr::from_bytes(id);
        let ix = self.nodes.len() as NodeIx;
        let seed = self.rng.random();
        let ring = Ring::new(self.now(), addr, self.cfg.clone(), seed);
        let pos = (self.rng.random::<f32>(), self.rng.random::<f32>());
        self.spots.push(Spot { pos, class });
        self.nodes.push(SimNode {
            ring,
            alive: true,
            online: false,
            timer: None,
            group,
        });
        self.index.insert(addr, ix);
        self.addrs.push(addr);
        self.sorted.replace(None);
        self.schedule(delay, Ev::Rendezvous { node: ix });
        ix
    }

    pub fn addr(&self, ix: NodeIx) -> RingAddr {
        self.addrs[ix as usize]
    }

    /// One-way latency: 5 ms plus 88 ms per unit of distance in a unit square, so the median
    /// pair is ~50 ms apart.
    pub fn latency(&self, a: NodeIx, b: NodeIx) -> Duration {
        let (pa, pb) = (self.spots[a as usize].pos, self.spots[b as usize].pos);
        let d = ((pa.0 - pb.0).powi(2) + (pa.1 - pb.1).powi(2)).sqrt() as f64;
        let direct = Duration::from_micros(5_000 + (d * 88_000.0) as u64);
        if self.leaf(a) || self.leaf(b) {
            direct + RELAY_EXTRA
        } else {
            direct
        }
    }

    /// A UDP-blocked node: every link of it is an XMPP relay link.
    pub fn leaf(&self, ix: NodeIx) -> bool {
        self.class(ix) == Class::Blocked
    }

    pub fn class(&self, ix: NodeIx) -> Class {
        self.spots[ix as usize].class
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        let at = self.now_us + after.as_micros() as u64;
        self.queue.push(at, ev);
    }

    /// Runs every event up to `until` (virtual time since start).
    pub fn run_until(&mut self, until: Duration) {
        let until_us = until.as_micros() as u64;
        while let Some((at, ev)) = self.queue.pop_until(until_us) {
            self.prefetch_ahead();
            self.now_us = self.now_us.max(at);
            self.handle(ev);
        }
        self.now_us = self.now_us.max(until_us);
    }

    /// Asks the CPU to load what coming events will touch: at 100,000 nodes every event
    /// lands on a core that is not in cache, and the simulator spends most of its time
    /// waiting for memory. Two stages: the node's core early, the link list it points to
    /// (searched by every message) once the core is likely loaded.
    fn prefetch_ahead(&self) {
        const CORE_AHEAD: usize = 8;
        const LINKS_AHEAD: usize = 3;
        if let Some(ix) = self.queue.upcoming(CORE_AHEAD).map(Ev::node) {
            let ring = &self.nodes[ix as usize].ring;
            prefetch(std::ptr::from_ref(ring.table()).cast());
        }
        if let Some(ix) = self.queue.upcoming(LINKS_AHEAD).map(Ev::node) {
            let keys = self.nodes[ix as usize].ring.table().addresses();
            let bytes = std::mem::size_of_val(keys);
            let start: *const u8 = keys.as_ptr().cast();
            for off in (0..bytes).step_by(64) {
                prefetch(start.wrapping_add(off));
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Message { to, from, bytes } => {
                // A link its sender closed still delivers what was sent before the close (the
                // close travels behind it, as the link layer's Close frame does): the receiver
                // has not been told yet. One the receiver closed delivers nothing more.
                let from_addr = self.addr(from);
                // The receiver's table first: it is prefetched, the world's link set is not.
                let open = self.nodes[to as usize].ring.table().get(&from_addr).is_some()
                    || self.links.contains(&pair(to, from));
                if self.alive(to) && open {
                    self.nodes[to as usize]
                        .ring
                        .handle_message(now, from_addr, &bytes);
                    self.drain(to);
                }
            }
            Ev::Timer { node } => {
                let n = &mut self.nodes[node as usize];
                if n.alive && n.timer == Some(self.now_us) {
                    n.timer = None;
                    self.wakes += 1;
                    n.ring.handle_timeout(now);
                    self.drain(node);
                }
            }
            Ev::LinkUp { a, b } => {
                self.attempts.remove(&pair(a, b));
                if self.alive(a) && self.alive(b) && self.links.insert(pair(a, b)) {
                    let rtt = self.latency(a, b) * 2;
                    let kind = if self.leaf(a) || self.leaf(b) {
                        LinkKind::Relay
                    } else {
                        LinkKind::Direct
                    };
                    for (x, y) in [(a, b), (b, a)] {
                        let peer = self.addr(y);
                        self.nodes[x as usize].ring.handle_link_up(now, peer, kind, rtt);
                        self.drain(x);
                    }
                    self.revocation_catch_up(a, b);
                }
            }
            Ev::Learn { node } => self.learn(node),
            Ev::LinkFailed { node, peer } => {
                self.attempts.remove(&pair(node, peer));
                if self.alive(node) {
                    let peer = self.addr(peer);
                    self.nodes[node as usize].ring.handle_connect_failed(now, peer);
                    self.drain(node);
                }
            }
            Ev::LinkDown { node, peer } => {
                if self.alive(node) {
                    let peer = self.addr(peer);
                    self.nodes[node as usize].ring.handle_link_down(now, peer);
                    self.drain(node);
                }
            }
            Ev::Rendezvous { node } => {
                if !self.alive(node) {
                    return;
                }
                if !self.nodes[node as usize].online {
                    self.nodes[node as usize].online = true;
                    self.online.push(node);
                }
                let sample = self.rendezvous_sample(node);
                self.nodes[node as usize].ring.handle_rendezvous(now, &sample);
                self.drain(node);
                // XMPP address requests: every 10 s ± 5 while seeking, every minute after.
                let seeking = !self.nodes[node as usize].ring.table().has_routing_links();
                let next = if seeking {
                    self.rng.random_range(5_000..15_000)
                } else {
                    self.rng.random_range(30_000..90_000)
                };
                self.schedule(Duration::from_millis(next), Ev::Rendezvous { node });
            }
        }
    }

    pub fn alive(&self, ix: NodeIx) -> bool {
        self.nodes[ix as usize].alive
    }

    /// Up to ten random online peers the node's XMPP rendezvous would show (not those whose
    /// join time has not come yet).
    fn rendezvous_sample(&mut self, node: NodeIx) -> Vec<RingAddr> {
        let group = self.nodes[node as usize].group;
        let mut out = Vec::new();
        for _ in 0..40 {
            if out.len() >= 10 {
                break;
            }
            let peer = self.online[self.rng.random_range(0..self.online.len())];
            let p = &self.nodes[peer as usize];
            let refused = self.revocation.as_ref().is_some_and(|s| s.refuses(node, peer));
            if peer != node && p.alive && (self.merged || p.group == group) && !refused {
                out.push(p.ring.me());
            }
        }
        out
    }

    pub(super) fn drain(&mut self, ix: NodeIx) {
        let now = self.now();
        while let Some(t) = self.nodes[ix as usize].ring.poll_transmit() {
            self.messages += 1;
            self.bytes += t.bytes.len() as u64 + LINK_OVERHEAD;
            if self.count_kinds {
                let (kind, body) = crate::overlay::wire::kind_and_body(&t.bytes);
                *self
                    .kinds
                    .entry((kind.unwrap_or(0), body.unwrap_or(0)))
                    .or_default() += 1;
            }
            let Some(&to) = self.index.get(&t.peer) else {
                continue;
            };
            // The revoked node, at its worst, forwards nothing once it is revoked.
            if self.revocation.as_ref().is_some_and(|s| s.target == ix) {
                continue;
            }
            if !self.links.contains(&pair(ix, to)) || (self.loss > 0.0 && self.rng.random_bool(self.loss)) {
                continue;
            }
            let lat = self.latency(ix, to);
            self.schedule(
                lat,
                Ev::Message {
                    to,
                    from: ix,
                    bytes: t.bytes.into_boxed_slice(),
                },
            );
        }
        while let Some(ev) = self.nodes[ix as usize].ring.poll_event() {
            match ev {
                Event::Connect { peer, .. } => self.connect(ix, peer),
                Event::Disconnect { peer } => {
                    if let Some(&p) = self.index.get(&peer) {
                        self.unlink(ix, p);
                    }
                }
                Event::Deliver { hops, .. } => {
                    self.record.delivered_hops.push(hops);
                    self.record.delivered_to_leaves += u64::from(self.leaf(ix));
                }
                Event::DhtFound(found) => {
                    let took = now.saturating_duration_since(found.started);
                    self.record.found.push((ix, found, took));
                }
                Event::Broadcast { payload, .. } => {
                    self.record.broadcasts += 1;
                    self.revocation_broadcast(ix, &payload);
                }
                Event::TunnelUp { peer, .. } => {
                    self.record.tunnels_up += 1;
                    let refused = self
                        .revocation
                        .as_ref()
                        .is_some_and(|s| s.knows(ix) && self.index.get(&peer) == Some(&s.target));
                    if refused {
                        self.nodes[ix as usize].ring.handle_link_down(now, peer);
                    }
                }
                Event::TunnelDown { .. } => {}
            }
        }
        if let Some(at) = self.nodes[ix as usize].ring.poll_timeout() {
            // Rounded up: a timer that fires before a sub-microsecond deadline finds nothing
            // due and only wakes the core twice.
            let after = at.saturating_duration_since(self.base);
            let at_us = after.as_micros() as u64 + u64::from(after.subsec_nanos() % 1000 != 0);
            let at_us = at_us.max(self.now_us + 1);
            let n = &mut self.nodes[ix as usize];
            if n.timer.is_none_or(|t| at_us < t || t <= self.now_us) {
                n.timer = Some(at_us);
                self.schedule(Duration::from_micros(at_us - self.now_us), Ev::Timer { node: ix });
            }
        }
    }

    /// The link layer: a direct link comes up after an offer/answer and a check (two round
    /// trips) unless both ends are behind symmetric NATs or the peer is gone.
    fn connect(&mut self, a: NodeIx, peer: RingAddr) {
        let Some(&b) = self.index.get(&peer) else { return };
        let key = pair(a, b);
        if a == b || self.links.contains(&key) || !self.attempts.insert(key) {
            return;
        }
        let refused = self.revocation.as_ref().is_some_and(|s| s.refuses(a, b));
        let reachable = self.alive(b)
            && !refused
            && !(self.class(a) == Class::Symmetric && self.class(b) == Class::Symmetric);
        if reachable {
            let after = self.latency(a, b) * 4;
            self.schedule(after, Ev::LinkUp { a, b });
        } else {
            self.schedule(PUNCH_TIMEOUT, Ev::LinkFailed { node: a, peer: b });
            if self.alive(b) {
                self.schedule(PUNCH_TIMEOUT, Ev::LinkFailed { node: b, peer: a });
            }
        }
    }

    pub fn linked(&self, a: NodeIx, b: NodeIx) -> bool {
        self.links.contains(&pair(a, b))
    }

    /// Removes the link between `a` and `b` (the other end hears of it after a latency);
    /// false if there was none.
    pub(super) fn unlink(&mut self, a: NodeIx, b: NodeIx) -> bool {
        if !self.links.remove(&pair(a, b)) {
            return false;
        }
        let lat = self.latency(a, b);
        self.schedule(lat, Ev::LinkDown { node: b, peer: a });
        true
    }

    pub(super) fn schedule_learn(&mut self, after: Duration, node: NodeIx) {
        self.schedule(after, Ev::Learn { node });
    }

    /// Starts a crashed node again with the same address and a fresh ring core (a restarted
    /// daemon): it asks rendezvous at once.
    pub fn revive(&mut self, ix: NodeIx) {
        let now = self.now();
        let seed = self.rng.random();
        let n = &mut self.nodes[ix as usize];
        let addr = n.ring.me();
        n.ring = Ring::new(now, addr, self.cfg.clone(), seed);
        n.alive = true;
        n.timer = None;
        self.sorted.replace(None);
        self.schedule(Duration::ZERO, Ev::Rendezvous { node: ix });
    }

    /// Kills a node without a word: its peers find out by silence.
    pub fn crash(&mut self, ix: NodeIx) {
        self.nodes[ix as usize].alive = false;
        self.sorted.replace(None);
        let gone: Vec<(NodeIx, NodeIx)> = self
            .links
            .iter()
            .filter(|(x, y)| *x == ix || *y == ix)
            .copied()
            .collect();
        for l in gone {
            self.links.remove(&l);
        }
    }

    /// Sorted alive nodes that route (leaves are not in it): the true ring.
    pub fn true_ring(&self) -> Vec<(RingAddr, NodeIx)> {
        self.with_true_ring(|r| r.to_vec())
    }

    pub(super) fn with_true_ring<T>(&self, f: impl FnOnce(&[(RingAddr, NodeIx)]) -> T) -> T {
        let mut cached = self.sorted.borrow_mut();
        let ring = cached.get_or_insert_with(|| {
            let mut v: Vec<(RingAddr, NodeIx)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| n.alive && self.class(*i as NodeIx) != Class::Blocked)
                .map(|(i, n)| (n.ring.me(), i as NodeIx))
                .collect();
            v.sort();
            v
        });
        f(ring)
    }

    /// Alive nodes whose nearest left and right links are not their true neighbours.
    pub fn inconsistent(&self) -> usize {
        self.with_true_ring(|ring| {
            (0..ring.len())
                .filter(|&i| !self.knows_neighbours(ring, i))
                .count()
        })
    }

    /// Whether every node knows its true neighbours (stops at the first that does not).
    pub fn consistent(&self) -> bool {
        self.with_true_ring(|ring| (0..ring.len()).all(|i| self.knows_neighbours(ring, i)))
    }

    fn knows_neighbours(&self, ring: &[(RingAddr, NodeIx)], i: usize) -> bool {
        let n = ring.len();
        if n < 2 {
            return true;
        }
        let t = self.nodes[ring[i].1 as usize].ring.table();
        t.nearest_right() == Some(ring[(i + 1) % n].0) && t.nearest_left() == Some(ring[(i + n - 1) % n].0)
    }

    pub fn random_alive(&mut self) -> NodeIx {
        loop {
            let ix = self.rng.random_range(0..self.nodes.len()) as NodeIx;
            if self.alive(ix) {
                return ix;
            }
        }
    }

    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.rng
    }

    /// Lets a node act (send, put, get …) and then drains it.
    pub fn with_node<T>(&mut self, ix: NodeIx, f: impl FnOnce(&mut Ring, Instant) -> T) -> T {
        let now = self.now();
        let out = f(&mut self.nodes[ix as usize].ring, now);
        self.drain(ix);
        out
    }
}
