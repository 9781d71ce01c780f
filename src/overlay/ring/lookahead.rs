//! Lookahead: each node tells its routing links whom it links to (address prefixes), so a
//! routing decision sees two hops ahead (Symphony's 1-lookahead; the table's proximity route
//! selection uses the lists). Lists go out on the housekeeping tick, at most every
//! [`SHARE_EVERY`] when a quarter of them changed (or every [`SHARE_STALE`] when less did)
//! and once to each new link, and only in rings big enough
//! for routes to be longer than a hop or two, so a friend-sized ring's idle traffic is
//! untouched. Both the lists and who gets them count only links that outlived the trim
//! grace: a forming ring's start-up links mostly go within it, and telling of them would
//! cost a message per link and memory at every peer for nothing.

use std::time::{Duration, Instant};

use super::Ring;
use crate::overlay::addr::RingAddr;
use crate::overlay::table::Link;
use crate::overlay::wire::{Message, MAX_LINKS};

/// Ring-size estimate below which no lists are sent (routes there are a hop or two).
const LOOKAHEAD_MIN_RING: f64 = 32.0;
/// A changed list waits at least this long after the last one went out: while a ring forms,
/// links change every few seconds, and a list a little stale still routes well (every hop
/// still has to make progress on its own).
const SHARE_EVERY: Duration = Duration::from_secs(30);
/// A list that changed in fewer than a quarter of its links (and two) waits this long: while
/// a big ring forms for minutes, a link or two changes every half minute, and resending the
/// whole list to every link each time was the largest share of its messages (263 per node
/// at 100,000 nodes).
const SHARE_STALE: Duration = Duration::from_secs(300);

impl Ring {
    pub(super) fn share_links(&mut self, now: Instant) {
        if !self.cfg.lookahead || self.size_estimate() < LOOKAHEAD_MIN_RING {
            return;
        }
        let grace = self.cfg.trim_grace;
        let lasting = |l: &Link| l.kind.routes() && now.saturating_duration_since(l.since) >= grace;
        let due = self
            .links_told_at
            .is_none_or(|at| now.saturating_duration_since(at) >= SHARE_EVERY);
        if due {
            let current: Vec<u64> = self
                .table
                .iter()
                .filter(|(_, l)| lasting(l))
                .map(|(a, _)| a.prefix())
                .take(MAX_LINKS)
                .collect();
            let told = &self.links_told;
            let changed = current.iter().filter(|p| !told.contains(p)).count()
                + told.iter().filter(|p| !current.contains(p)).count();
            let stale = self
                .links_told_at
                .is_none_or(|at| now.saturating_duration_since(at) >= SHARE_STALE);
            if changed > 0 && (stale || changed >= (told.len() / 4).max(2)) {
                self.links_told = current;
                self.links_told_at = Some(now);
                for (_, link) in self.table.iter_mut() {
                    link.told_links = false;
                }
            }
        }
        if self.links_told.is_empty() {
            return;
        }
        let mut untold = Vec::new();
        for (peer, link) in self.table.iter_mut() {
            if lasting(link) && !link.told_links {
                link.told_links = true;
                untold.push(*peer);
            }
        }
        if untold.is_empty() {
            return;
        }
        let msg = Message::Links(self.links_told.clone());
        for peer in untold {
            self.send_link(peer, &msg);
        }
    }

    pub(super) fn on_links(&mut self, from: RingAddr, prefixes: Vec<u64>) {
        if let Some(link) = self.table.get_mut(&from) {
            link.peer_links = prefixes.into_boxed_slice();
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
pub(super) mod tests {
    use super::*;
    use crate::overlay::addr::filled as addr;
    use crate::overlay::ring::Config;
    use crate::overlay::table::LinkKind;

    /// Runs `ring` second by second to `until`, answering its pings; returns the link lists
    /// it sent, by peer.
    pub(in crate::overlay::ring) fn run(
        ring: &mut Ring,
        from: Instant,
        until: Instant,
    ) -> Vec<(RingAddr, Vec<u64>)> {
        let mut told = Vec::new();
        let mut now = from;
        while now < until {
            now += Duration::from_secs(1);
            ring.handle_timeout(now);
            let out: Vec<_> = std::iter::from_fn(|| ring.poll_transmit()).collect();
            for t in out {
                match Message::parse(&t.bytes) {
                    Ok(Message::Ping(n)) => ring.handle_message(now, t.peer, &Message::Pong(n).emit()),
                    Ok(Message::Links(list)) => told.push((t.peer, list)),
                    _ => {}
                }
            }
            while ring.poll_event().is_some() {}
        }
        told
    }

    /// Lists go once to each link that outlived the trim grace, naming exactly those links,
    /// and only where the ring-size estimate is 32 or more (2 near neighbours per side
    /// `spread` apart in 256 positions: 1 → N̂ 256, 20 → N̂ 13).
    #[test]
    fn links_are_told_once_of_lasting_links_and_only_in_rings_big_enough() {
        for (spread, big) in [(1u8, true), (20, false)] {
            let start = Instant::now();
            let mut ring = Ring::new(start, addr(100), Config::default(), 3);
            let peers = [100 - 2 * spread, 100 - spread, 100 + spread, 100 + 2 * spread].map(addr);
            for p in peers {
                ring.handle_link_up(start, p, LinkKind::Direct, Duration::from_millis(10));
            }
            let grace = ring.cfg.trim_grace;
            let early = run(&mut ring, start, start + grace - Duration::from_secs(1));
            assert!(
                early.is_empty(),
                "told of links younger than the grace: {early:?}"
            );
            let told = run(
                &mut ring,
                start + grace - Duration::from_secs(1),
                start + grace * 3,
            );
            if !big {
                assert!(told.is_empty(), "a friend-sized ring sent lists: {told:?}");
                continue;
            }
            let mut to: Vec<RingAddr> = told.iter().map(|(p, _)| *p).collect();
            to.sort();
            assert_eq!(to, peers.to_vec(), "each link told once");
            let mut named: Vec<u64> = peers.iter().map(|p| p.prefix()).collect();
            named.sort();
            for (_, list) in &told {
                assert_eq!(list, &named);
            }
        }
    }

    /// A link more is told to that link alone until the list is [`SHARE_STALE`]; a quarter
    /// of the list changed goes to every link after [`SHARE_EVERY`].
    #[test]
    fn lists_go_again_when_a_quarter_changed_or_they_are_stale() {
        for (added, again_after) in [(1u8, SHARE_STALE), (3, SHARE_EVERY)] {
            let start = Instant::now();
            let mut ring = Ring::new(start, addr(100), Config::default(), 3);
            let far = [10, 30, 50, 70, 130, 150, 170, 190];
            let link = |ring: &mut Ring, at: Instant, p: u8| {
                ring.handle_link_up(at, addr(p), LinkKind::Direct, Duration::from_millis(10));
                // Not ours to trim: the peer needs it.
                ring.table.get_mut(&addr(p)).unwrap().peer_needs = true;
            };
            for p in [98, 99, 101, 102].into_iter().chain(far) {
                link(&mut ring, start, p);
            }
            let grace = ring.cfg.trim_grace;
            let first = run(&mut ring, start, start + grace * 2);
            assert_eq!(first.len(), 12, "each of 12 links told once");
            let told_at = start + grace;
            let t1 = start + grace * 2;
            let new: Vec<u8> = (0..added).map(|i| 210 + 10 * i).collect();
            for p in &new {
                link(&mut ring, t1, *p);
            }
            // Until the list may go again, a new link that outlived the grace hears the old
            // one; three new links make it go (to all) as soon as they outlived the grace.
            let lasting = t1 + grace;
            let quiet_until = (told_at + again_after).max(lasting) - Duration::from_secs(2);
            let early = run(&mut ring, t1, quiet_until);
            let mut to: Vec<RingAddr> = early.iter().map(|(p, _)| *p).collect();
            to.sort();
            let expected: Vec<RingAddr> = if added == 1 {
                new.iter().map(|p| addr(*p)).collect()
            } else {
                Vec::new()
            };
            assert_eq!(to, expected, "{added} added");
            assert!(early.iter().all(|(_, l)| l.len() == 12), "{early:?}");
            let again = run(&mut ring, quiet_until, quiet_until + grace);
            assert_eq!(again.len(), 12 + new.len(), "{added} added: {again:?}");
            assert!(again.iter().all(|(_, l)| l.len() == 12 + new.len()));
        }
    }

    #[test]
    fn a_list_from_a_link_is_kept_for_routing_and_one_from_a_stranger_is_ignored() {
        let now = Instant::now();
        let mut ring = Ring::new(now, addr(100), Config::default(), 3);
        ring.handle_link_up(now, addr(90), LinkKind::Direct, Duration::from_millis(10));
        let list = vec![addr(7).prefix(), addr(8).prefix()];
        ring.handle_message(now, addr(90), &Message::Links(list.clone()).emit());
        ring.handle_message(now, addr(50), &Message::Links(list.clone()).emit());
        assert_eq!(&*ring.table.get(&addr(90)).unwrap().peer_links, &list[..]);
        assert!(ring.table.get(&addr(50)).is_none());
        assert_eq!(ring.stats.dropped, 1, "the stranger's message is counted");
    }
}
