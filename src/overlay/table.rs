//! The routing table: a node's links, which of them are its near neighbours, the ring-size
//! estimate they give, and the greedy next-hop decision (by ring distance; for exact and
//! closest routing, a link that makes a little less progress but is much nearer in time may
//! win: proximity route selection).
//!
//! Only links with proven two-way reachability route (direct and tunnel links). Relay links
//! (XMPP-only peers) are leaves: a message reaches them only when they are its exact
//! destination.

use std::time::{Duration, Instant};

use super::addr::{prefix_distance, RingAddr, RING_SIZE};
use super::coords::Coord;
use super::wire::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A punched (or LAN) UDP path.
    Direct,
    /// Two hops through a common neighbour that relays for us.
    Tunnel { via: RingAddr },
    /// Only the XMPP relay: a leaf, never a routing hop.
    Relay,
}

impl LinkKind {
    pub fn routes(self) -> bool {
        !matches!(self, LinkKind::Relay)
    }
}

#[derive(Debug, Clone)]
pub struct Link {
    pub kind: LinkKind,
    pub rtt: Duration,
    pub since: Instant,
    pub last_rx: Instant,
    /// Silence after which we ping (jittered per link so one side usually pings). It grows
    /// while the link stays quiet (see `Config::ping_after_max`).
    pub ping_after: Duration,
    /// This link's jitter: its waits are the configured ones times 1 + `jitter`.
    pub jitter: f64,
    /// The longest silence a ping of ours was answered after.
    pub quiet_ok: Duration,
    pub ping: Option<Ping>,
    /// We keep this link as one of our shortcuts.
    pub our_shortcut: bool,
    /// The ring-size estimate the shortcut was drawn for.
    pub drawn_for: f32,
    /// The peer still needs this link (it has not released it with a bye).
    pub peer_needs: bool,
    /// We told the peer we no longer need it.
    pub released: bool,
    /// Last time we relayed tunnel traffic over this link.
    pub relayed_at: Option<Instant>,
    /// The peer's routing links as it last told us (address prefixes): lookahead.
    pub peer_links: Box<[u64]>,
    /// The peer has our current link list.
    pub told_links: bool,
    /// The peer's network coordinate as it told us at link-up.
    pub coord: Option<Coord>,
}

impl Link {
    pub fn new(now: Instant, kind: LinkKind, rtt: Duration, ping_after: Duration) -> Link {
        Link {
            kind,
            rtt,
            since: now,
            last_rx: now,
            ping_after,
            jitter: 0.0,
            quiet_ok: Duration::ZERO,
            ping: None,
            our_shortcut: false,
            drawn_for: 0.0,
            peer_needs: true,
            released: false,
            relayed_at: None,
            peer_links: Box::default(),
            told_links: false,
            coord: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub nonce: u32,
    pub sent: Instant,
    pub tries: u8,
    /// Silence on the link when the first try went out.
    pub quiet: Duration,
}

/// What to do with a routed message at this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Deliver,
    Forward {
        next: RingAddr,
        uphill: bool,
    },
    /// Path mode: deliver here and pass it on.
    DeliverAndForward {
        next: RingAddr,
    },
    Drop,
}

/// Links sorted by address in two parallel vectors: a node has tens of links, and a
/// 100,000-node simulation holds them all, so the compact layout beats a tree map. The
/// addresses sit apart from the (much larger) links so a lookup's binary search reads a few
/// cache lines, not one per probe.
#[derive(Debug)]
pub struct Table {
    me: RingAddr,
    keys: Vec<RingAddr>,
    links: Vec<Link>,
}

impl Table {
    pub fn new(me: RingAddr) -> Self {
        Table {
            me,
            keys: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn me(&self) -> RingAddr {
        self.me
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    fn find(&self, peer: &RingAddr) -> Result<usize, usize> {
        self.keys.binary_search(peer)
    }

    pub fn get(&self, peer: &RingAddr) -> Option<&Link> {
        self.find(peer).ok().map(|i| &self.links[i])
    }

    pub fn get_mut(&mut self, peer: &RingAddr) -> Option<&mut Link> {
        self.find(peer).ok().map(|i| &mut self.links[i])
    }

    pub fn insert(&mut self, peer: RingAddr, link: Link) {
        match self.find(&peer) {
            Ok(i) => self.links[i] = link,
            Err(i) => {
                self.keys.insert(i, peer);
                self.links.insert(i, link);
            }
        }
    }

    pub fn remove(&mut self, peer: &RingAddr) -> Option<Link> {
        let i = self.find(peer).ok()?;
        self.keys.remove(i);
        let link = self.links.remove(i);
        if self.links.capacity() > 2 * self.links.len() + 8 {
            self.keys.shrink_to_fit();
            self.links.shrink_to_fit();
        }
        Some(link)
    }

    /// Our links' addresses, sorted (what every lookup searches first).
    pub fn addresses(&self) -> &[RingAddr] {
        &self.keys
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RingAddr, &Link)> {
        self.keys.iter().zip(&self.links)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&RingAddr, &mut Link)> {
        self.keys.iter().zip(&mut self.links)
    }

    pub fn routing(&self) -> impl Iterator<Item = (&RingAddr, &Link)> {
        self.iter().filter(|(_, l)| l.kind.routes())
    }

    pub fn has_routing_links(&self) -> bool {
        self.routing().next().is_some()
    }

    /// Routing links clockwise from us, nearest first (each once, wrapping around).
    fn clockwise(&self) -> impl Iterator<Item = RingAddr> + '_ {
        let split = self.keys.partition_point(|a| *a <= self.me);
        let n = self.keys.len();
        (split..n)
            .chain(0..split)
            .filter(|i| self.links[*i].kind.routes())
            .map(|i| self.keys[i])
    }

    /// Routing links counter-clockwise from us, nearest first.
    fn counter_clockwise(&self) -> impl Iterator<Item = RingAddr> + '_ {
        let split = self.keys.partition_point(|a| *a < self.me);
        let n = self.keys.len();
        (0..split)
            .rev()
            .chain((split..n).rev().filter(|i| self.keys[*i] != self.me))
            .filter(|i| self.links[*i].kind.routes())
            .map(|i| self.keys[i])
    }

    /// Up to `k` routing links clockwise from us, nearest first.
    pub fn right(&self, k: usize) -> Vec<RingAddr> {
        self.clockwise().take(k).collect()
    }

    /// Up to `k` routing links counter-clockwise from us, nearest first.
    pub fn left(&self, k: usize) -> Vec<RingAddr> {
        self.counter_clockwise().take(k).collect()
    }

    /// The nearest routing link clockwise (`right(1)` without allocating).
    pub fn nearest_right(&self) -> Option<RingAddr> {
        self.clockwise().next()
    }

    /// The nearest routing link counter-clockwise.
    pub fn nearest_left(&self) -> Option<RingAddr> {
        self.counter_clockwise().next()
    }

    /// Our near neighbours: `k` per side (one list; a peer on both sides appears once).
    pub fn near(&self, k: usize) -> Vec<RingAddr> {
        let mut near = self.right(k);
        for a in self.left(k) {
            if !near.contains(&a) {
                near.push(a);
            }
        }
        near
    }

    /// Whether `peer` would be among our `k` nearest on its side if we linked to it.
    pub fn would_be_near(&self, peer: RingAddr, k: usize) -> bool {
        if peer == self.me {
            return false;
        }
        let Some(kth) = k.checked_sub(1) else {
            return false;
        };
        // Each side lists nearest first, so comparing with the k-th is comparing with them all.
        let clockwise = self.me.offset_to(peer);
        let right_ok = self
            .clockwise()
            .nth(kth)
            .is_none_or(|a| clockwise < self.me.offset_to(a));
        let back = peer.offset_to(self.me);
        let left_ok = self
            .counter_clockwise()
            .nth(kth)
            .is_none_or(|a| back < a.offset_to(self.me));
        right_ok || left_ok
    }

    /// N̂ = (gaps between near neighbours) · 2^160 / (their span); small rings count links.
    pub fn size_estimate(&self, k: usize) -> f64 {
        let right = self.right(k);
        let left = self.left(k);
        let routing = self.routing().count();
        if routing < 2 * k || right.is_empty() || left.is_empty() {
            return (routing + 1) as f64;
        }
        let (far_left, far_right) = (left[left.len() - 1], right[right.len() - 1]);
        let span = far_left.offset_to(far_right).as_f64();
        if span <= 0.0 {
            return (routing + 1) as f64;
        }
        (left.len() + right.len()) as f64 * RING_SIZE / span
    }

    /// Greedy next hop for a message to `dst` that arrived over `from` (None: ours).
    pub fn decide(&self, dst: RingAddr, mode: Mode, from: Option<RingAddr>, uphill: bool) -> Decision {
        if dst == self.me && matches!(mode, Mode::Exact) {
            return Decision::Deliver;
        }
        if mode == Mode::Exact && self.get(&dst).is_some() {
            return Decision::Forward {
                next: dst,
                uphill: false,
            };
        }
        let metric = |n: RingAddr| metric(mode, dst, n);
        let best = self
            .routing()
            .filter(|(a, _)| Some(**a) != from)
            .map(|(a, _)| *a)
            .min_by_key(|a| metric(*a));
        let mine = metric(self.me);
        let best = match (mode, best) {
            (Mode::Exact | Mode::Closest, Some(b)) if metric(b) < mine => {
                Some(self.nearest_in_time(b, dst, mode, from))
            }
            _ => best,
        };
        match (mode, best) {
            (Mode::Path, Some(next)) if metric(next) < mine => Decision::DeliverAndForward { next },
            (_, Some(next)) if metric(next) < mine => Decision::Forward { next, uphill: false },
            (Mode::Exact, _) if !uphill => self.anneal(dst, from),
            (Mode::Exact, _) => Decision::Drop,
            _ => Decision::Deliver,
        }
    }

    /// Proximity route selection with lookahead: among the links that make progress, the one
    /// that trades least latency for the progress it gives up (see [`Table::progress_costs`]).
    fn nearest_in_time(&self, best: RingAddr, dst: RingAddr, mode: Mode, from: Option<RingAddr>) -> RingAddr {
        self.progress_costs(dst, mode, from)
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .map_or(best, |(a, _)| a)
    }

    /// The links that make progress toward `dst`, cheapest first (at most `k`): the first is
    /// the one [`Table::decide`] forwards to when it forwards.
    pub fn first_hops(&self, dst: RingAddr, mode: Mode, k: usize) -> Vec<RingAddr> {
        let mut costs: Vec<(RingAddr, f64)> = self.progress_costs(dst, mode, None).collect();
        costs.sort_by(|x, y| x.1.total_cmp(&y.1));
        costs.into_iter().take(k).map(|(a, _)| a).collect()
    }

    /// Each link nearer `dst` than we are (but `from`), with its cost: a link's progress is how
    /// near `dst` it or one of its own links comes (the lists peers send us: one decision sees
    /// two hops ahead, as Symphony's 1-lookahead); each halving of the remaining distance not
    /// made against the best such is worth `PROGRESS_WORTH` of one-way latency. Only links
    /// nearer than we are qualify, so every hop still makes progress whatever the lists say.
    fn progress_costs(
        &self,
        dst: RingAddr,
        mode: Mode,
        from: Option<RingAddr>,
    ) -> impl Iterator<Item = (RingAddr, f64)> + '_ {
        let prefix = dst.prefix();
        let mine = metric(mode, dst, self.me);
        let reach = move |a: &RingAddr, l: &Link| {
            let own = prefix_distance(a.prefix(), prefix);
            l.peer_links
                .iter()
                .fold(own, |r, p| r.min(prefix_distance(*p, prefix)))
        };
        // Against the best reach every cost has the same `- log2(best)` term: leave it out.
        let worth = PROGRESS_WORTH.as_secs_f64();
        self.routing()
            .filter(move |(a, _)| Some(**a) != from && metric(mode, dst, **a) < mine)
            .map(move |(a, l)| {
                let cost = l.rtt.as_secs_f64() / 2.0 + worth * (reach(a, l).max(1) as f64).log2();
                (*a, cost)
            })
    }

    /// The one uphill step: we are closest of all we know, yet not the destination; try the
    /// nearest link on the far side of `dst`, which may know the way.
    fn anneal(&self, dst: RingAddr, from: Option<RingAddr>) -> Decision {
        let dst_clockwise = self.me.offset_to(dst) < RingAddr::HALF;
        self.routing()
            .map(|(a, _)| *a)
            .filter(|a| Some(*a) != from)
            .filter(|a| {
                let beyond = if dst_clockwise {
                    dst.offset_to(*a) < RingAddr::HALF
                } else {
                    a.offset_to(dst) < RingAddr::HALF
                };
                beyond && *a != dst
            })
            .min_by_key(|a| a.distance(dst))
            .map_or(Decision::Drop, |next| Decision::Forward { next, uphill: true })
    }
}

/// What halving the remaining ring distance is worth in one-way latency when choosing a next
/// hop (about one greedy hop's latency: a Symphony hop roughly halves the distance or better).
const PROGRESS_WORTH: Duration = Duration::from_millis(25);

/// How far node `n` is from being where a message to `dst` in `mode` should land.
pub fn metric(mode: Mode, dst: RingAddr, n: RingAddr) -> RingAddr {
    match mode {
        Mode::Exact | Mode::Closest | Mode::Path => dst.distance(n),
        Mode::Right => dst.offset_to(n),
        Mode::Left => n.offset_to(dst),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn link(now: Instant, kind: LinkKind) -> Link {
        Link::new(now, kind, Duration::from_millis(50), Duration::from_secs(20))
    }

    fn addr(x: u64) -> RingAddr {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&x.to_be_bytes());
        RingAddr::from_bytes(b)
    }

    /// A consistent ring over `ids`: each node links to `near` per side and to `extra`
    /// pseudo-random others.
    fn ring(ids: &[RingAddr], near: usize, extra: &[(usize, usize)]) -> Vec<Table> {
        let now = Instant::now();
        let mut sorted = ids.to_vec();
        sorted.sort();
        sorted.dedup();
        let n = sorted.len();
        let mut tables: Vec<Table> = sorted.iter().map(|a| Table::new(*a)).collect();
        for i in 0..n {
            for d in 1..=near.min(n - 1) {
                let j = (i + d) % n;
                let (a, b) = (sorted[i], sorted[j]);
                tables[i].insert(b, link(now, LinkKind::Direct));
                tables[j].insert(a, link(now, LinkKind::Direct));
            }
        }
        for &(x, y) in extra {
            let (i, j) = (x % n, y % n);
            if i != j {
                let (a, b) = (sorted[i], sorted[j]);
                tables[i].insert(b, link(now, LinkKind::Direct));
                tables[j].insert(a, link(now, LinkKind::Direct));
            }
        }
        tables
    }

    fn route(tables: &[Table], from: usize, dst: RingAddr, mode: Mode) -> (Option<usize>, usize) {
        let index = |a: RingAddr| tables.iter().position(|t| t.me() == a).unwrap();
        let (mut at, mut prev, mut uphill) = (from, None, false);
        for hops in 0..256 {
            match tables[at].decide(dst, mode, prev, uphill) {
                Decision::Deliver => return (Some(at), hops),
                Decision::Forward { next, uphill: step } => {
                    uphill |= step;
                    prev = Some(tables[at].me());
                    at = index(next);
                }
                Decision::DeliverAndForward { next } => {
                    prev = Some(tables[at].me());
                    at = index(next);
                }
                Decision::Drop => return (None, hops),
            }
        }
        panic!("routing loop");
    }

    /// What peers told each link about their own links: 0 nothing, 1 the truth, 2 junk (a
    /// stale or lying peer): routing must stay correct whatever the lists say.
    fn tell_lists(tables: &mut [Table], lists: u8, junk: u64) {
        let truth: Vec<(RingAddr, Box<[u64]>)> = tables
            .iter()
            .map(|t| (t.me(), t.keys.iter().map(|a| a.prefix()).collect()))
            .collect();
        for t in tables.iter_mut() {
            for (i, (a, l)) in t.iter_mut().enumerate() {
                l.peer_links = match lists {
                    0 => Box::default(),
                    1 => truth
                        .iter()
                        .find(|(b, _)| b == a)
                        .map(|(_, p)| p.clone())
                        .unwrap_or_default(),
                    _ => (0..3u64).map(|k| junk.wrapping_mul(i as u64 + k + 1)).collect(),
                };
            }
        }
    }

    proptest! {
        #[test]
        fn greedy_routing_reaches_every_node_on_a_consistent_ring(
            ids in proptest::collection::btree_set(any::<u64>(), 3..60),
            extra in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..80),
            from in any::<usize>(), to in any::<usize>(),
            lists in 0u8..3, junk in any::<u64>(),
        ) {
            let ids: Vec<RingAddr> = ids.into_iter().map(addr).collect();
            let mut tables = ring(&ids, 2, &extra);
            tell_lists(&mut tables, lists, junk);
            let (from, to) = (from % tables.len(), to % tables.len());
            let dst = tables[to].me();
            let (at, hops) = route(&tables, from, dst, Mode::Exact);
            prop_assert_eq!(at, Some(to));
            prop_assert!(hops < tables.len());
        }

        #[test]
        fn each_greedy_step_makes_progress(
            ids in proptest::collection::btree_set(any::<u64>(), 3..60),
            extra in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..80),
            from in any::<usize>(), target in any::<u64>(),
            lists in 0u8..3, junk in any::<u64>(),
        ) {
            let ids: Vec<RingAddr> = ids.into_iter().map(addr).collect();
            let mut tables = ring(&ids, 2, &extra);
            tell_lists(&mut tables, lists, junk);
            let dst = addr(target);
            for mode in [Mode::Closest, Mode::Right, Mode::Left] {
                let mut at = from % tables.len();
                loop {
                    match tables[at].decide(dst, mode, None, false) {
                        Decision::Forward { next, .. } => {
                            prop_assert!(metric(mode, dst, next) < metric(mode, dst, tables[at].me()));
                            at = tables.iter().position(|t| t.me() == next).unwrap();
                        }
                        Decision::Deliver => break,
                        other => prop_assert!(false, "unexpected {:?}", other),
                    }
                }
                // It lands where the mode says: the closest node, the successor, the predecessor.
                let best = tables.iter().map(|t| t.me()).min_by_key(|a| metric(mode, dst, *a)).unwrap();
                prop_assert_eq!(tables[at].me(), best);
            }
        }
    }

    #[test]
    fn near_neighbours_and_size_estimate() {
        let ids: Vec<RingAddr> = (0..100u64).map(|i| addr(i * (u64::MAX / 100))).collect();
        let tables = ring(&ids, 2, &[]);
        let t = &tables[10];
        assert_eq!(t.right(2), vec![ids[11], ids[12]]);
        assert_eq!(t.left(2), vec![ids[9], ids[8]]);
        let n = t.size_estimate(2);
        assert!((n - 100.0).abs() < 1.0, "estimate {n}");
        assert!(t.would_be_near(addr(10 * (u64::MAX / 100) + 5), 2));
        assert!(!t.would_be_near(ids[50], 2));
    }

    /// Lookahead: a link whose own links come much nearer the destination wins over one that is
    /// a little nearer itself; a link that makes no progress never wins, whatever it links to.
    #[test]
    fn a_link_whose_links_come_nearest_wins_but_only_among_links_that_make_progress() {
        let now = Instant::now();
        let mut t = Table::new(addr(10 << 56));
        let (nearer, farther, backwards) = (addr(60 << 56), addr(50 << 56), addr(5 << 56));
        for a in [nearer, farther, backwards] {
            t.insert(a, link(now, LinkKind::Direct));
        }
        let dst = addr(120 << 56);
        let next = |t: &Table| match t.decide(dst, Mode::Closest, None, false) {
            Decision::Forward { next, .. } => next,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(next(&t), nearer, "plain greedy");
        t.get_mut(&backwards).unwrap().peer_links = vec![dst.prefix()].into();
        assert_eq!(next(&t), nearer, "a link that goes backwards is no candidate");
        t.get_mut(&farther).unwrap().peer_links = vec![(118u64 << 56), (3 << 56)].into();
        assert_eq!(next(&t), farther, "two hops ahead");
    }

    #[test]
    fn a_much_nearer_link_in_time_wins_over_a_little_more_progress() {
        let now = Instant::now();
        let with_rtt = |ms: u64| {
            let mut l = link(now, LinkKind::Direct);
            l.rtt = Duration::from_millis(ms);
            l
        };
        let dst = addr(1 << 40);
        let mut t = Table::new(addr(0));
        // Best progress (2^34 left) but 200 ms away; one halving behind and
        // 20 ms away; far behind (16× the best's remaining distance) and 2 ms away.
        t.insert(addr((1 << 40) - (1 << 34)), with_rtt(200));
        t.insert(addr((1 << 40) - (1 << 35)), with_rtt(20));
        t.insert(addr((1 << 40) - (1 << 38)), with_rtt(2));
        let next = |t: &Table| match t.decide(dst, Mode::Closest, None, false) {
            Decision::Forward { next, .. } => next,
            other => panic!("{other:?}"),
        };
        assert_eq!(next(&t), addr((1 << 40) - (1 << 35)));
        // Without the slow link the best-progress one is also the quickest choice.
        t.remove(&addr((1 << 40) - (1 << 34)));
        assert_eq!(next(&t), addr((1 << 40) - (1 << 35)));
    }

    #[test]
    fn relay_links_are_leaves() {
        let now = Instant::now();
        let mut t = Table::new(addr(100));
        t.insert(addr(200), link(now, LinkKind::Relay));
        t.insert(addr(50), link(now, LinkKind::Direct));
        assert_eq!(
            t.decide(addr(200), Mode::Exact, None, false),
            Decision::Forward {
                next: addr(200),
                uphill: false
            }
        );
        assert_eq!(t.decide(addr(190), Mode::Closest, None, false), Decision::Deliver);
        assert!(t.right(2).iter().all(|a| *a != addr(200)));
    }
}
