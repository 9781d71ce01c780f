//! Bounded broadcast over a ring range [start, end) (seed algorithm): a node covering a range
//! sends to each of its links inside the range, handing each the sub-range up to the next
//! link, so on a consistent ring every node in range gets it exactly once (N−1 messages for
//! the whole ring). Duplicates that churn may cause are suppressed by (origin, seq).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::addr::RingAddr;

/// How long a broadcast id is remembered, and the most remembered at once.
const SEEN_FOR: Duration = Duration::from_secs(120);
const SEEN_MAX: usize = 4096;

/// Which sub-range each link gets when `me` covers [start, end) (`start == end`: whole ring,
/// counted from `me`). `links` may be in any order; links outside the range are ignored.
pub fn split(
    me: RingAddr,
    start: RingAddr,
    end: RingAddr,
    links: impl IntoIterator<Item = RingAddr>,
) -> Vec<(RingAddr, RingAddr, RingAddr)> {
    let whole = start == end;
    let origin = if whole { me } else { start };
    let stop = if whole { me } else { end };
    let mut points: Vec<RingAddr> = links
        .into_iter()
        .filter(|a| *a != me && (whole || a.in_range(start, end)))
        .collect();
    let me_in_range = whole || me.in_range(start, end);
    if me_in_range {
        points.push(me);
    }
    points.sort_by_key(|a| origin.offset_to(*a));
    points.dedup();
    let mut out = Vec::new();
    for (i, p) in points.iter().enumerate() {
        if *p == me {
            continue;
        }
        let next = points.get(i + 1).copied().unwrap_or(stop);
        out.push((*p, *p, next));
    }
    out
}

/// Broadcast ids seen recently.
#[derive(Debug, Default)]
pub struct Seen {
    ids: BTreeMap<(RingAddr, u32), Instant>,
    order: VecDeque<(Instant, RingAddr, u32)>,
}

impl Seen {
    /// Records the id; false if it was already seen.
    pub fn first_time(&mut self, now: Instant, origin: RingAddr, seq: u32) -> bool {
        self.expire(now);
        if self.ids.contains_key(&(origin, seq)) {
            return false;
        }
        if self.order.len() >= SEEN_MAX {
            if let Some((_, o, s)) = self.order.pop_front() {
                self.ids.remove(&(o, s));
            }
        }
        self.ids.insert((origin, seq), now);
        self.order.push_back((now, origin, seq));
        true
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, o, s)) = self.order.front() {
            if now.saturating_duration_since(at) < SEEN_FOR {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&(o, s));
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn addr(x: u64) -> RingAddr {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&x.to_be_bytes());
        RingAddr::from_bytes(b)
    }

    /// Runs a broadcast over a consistent ring whose nodes link to `near` per side plus
    /// `extra` chords; returns who received it and how many messages it took.
    fn run(
        ids: &[RingAddr],
        extra: &[(usize, usize)],
        entry: usize,
        start: RingAddr,
        end: RingAddr,
    ) -> (BTreeSet<RingAddr>, usize) {
        let n = ids.len();
        let mut links: Vec<BTreeSet<RingAddr>> = vec![BTreeSet::new(); n];
        for i in 0..n {
            for d in 1..=2.min(n - 1) {
                let j = (i + d) % n;
                links[i].insert(ids[j]);
                links[j].insert(ids[i]);
            }
        }
        for &(x, y) in extra {
            let (i, j) = (x % n, y % n);
            if i != j {
                links[i].insert(ids[j]);
                links[j].insert(ids[i]);
            }
        }
        let index = |a: RingAddr| ids.iter().position(|x| *x == a).unwrap();
        let mut got = BTreeSet::new();
        let mut messages = 0;
        let mut queue = vec![(entry, start, end)];
        while let Some((at, s, e)) = queue.pop() {
            let me = ids[at];
            if s == e || me.in_range(s, e) {
                assert!(got.insert(me), "{me:?} got it twice");
            }
            for (peer, s2, e2) in split(me, s, e, links[at].iter().copied()) {
                messages += 1;
                queue.push((index(peer), s2, e2));
            }
        }
        (got, messages)
    }

    proptest! {
        #[test]
        fn bounded_broadcast_reaches_exactly_the_range(
            ids in proptest::collection::btree_set(any::<u64>(), 3..80),
            extra in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..100),
            a in any::<u64>(), b in any::<u64>(),
        ) {
            let ids: Vec<RingAddr> = ids.into_iter().map(addr).collect();
            let (start, end) = (addr(a), addr(b));
            // The broadcast enters at the first node in the range, or, if the range holds no
            // node, at any node (which must then send nothing on).
            let entry = ids.iter().position(|x| *x == ids.iter().copied().min_by_key(|x| start.offset_to(*x)).unwrap()).unwrap();
            let (got, messages) = run(&ids, &extra, entry, start, end);
            let want: BTreeSet<RingAddr> = ids.iter().copied().filter(|x| start == end || x.in_range(start, end)).collect();
            if want.is_empty() {
                prop_assert!(got.is_empty());
            } else {
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(messages, want.len() - 1);
            }
        }

        #[test]
        fn whole_ring_broadcast_costs_n_minus_one(
            ids in proptest::collection::btree_set(any::<u64>(), 2..80),
            extra in proptest::collection::vec((any::<usize>(), any::<usize>()), 0..100),
            origin in any::<usize>(),
        ) {
            let ids: Vec<RingAddr> = ids.into_iter().map(addr).collect();
            let origin = origin % ids.len();
            let (got, messages) = run(&ids, &extra, origin, ids[origin], ids[origin]);
            prop_assert_eq!(got.len(), ids.len());
            prop_assert_eq!(messages, ids.len() - 1);
        }
    }

    #[test]
    fn duplicates_are_suppressed_for_a_while() {
        let now = Instant::now();
        let mut seen = Seen::default();
        assert!(seen.first_time(now, addr(1), 1));
        assert!(!seen.first_time(now, addr(1), 1));
        assert!(seen.first_time(now, addr(1), 2));
        assert!(seen.first_time(now + SEEN_FOR, addr(1), 1));
    }
}
