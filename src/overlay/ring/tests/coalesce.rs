//! Big rings weigh bursts together: near-set changes are told once the burst is over, and near
//! candidates heard together are linked nearest first, as many per side as a side holds.
//! Friend-sized rings act at once.
#![allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch

use std::time::{Duration, Instant};

use super::{Config, Ring, COALESCE, COALESCE_MIN_RING};
use crate::overlay::addr::RingAddr;
use crate::overlay::table::LinkKind;
use crate::overlay::wire::{Message, Mode, Purpose, RoutedBody};

const RTT: Duration = Duration::from_millis(10);

/// Point `me + offset` of a ring cut into `parts`.
fn at(parts: u32, offset: i32) -> RingAddr {
    RingAddr::fraction((1000 + offset).rem_euclid(parts as i32) as u32, parts)
}

/// A ring at point 1000 of `parts`, linked to the points 4 and 8 away on each side: its size
/// estimate is `parts`.
fn ring(start: Instant, parts: u32) -> Ring {
    let mut ring = Ring::new(start, at(parts, 0), Config::default(), 5);
    for off in [-8, -4, 4, 8] {
        ring.handle_link_up(start, at(parts, off), LinkKind::Direct, RTT);
    }
    // The setup's own changes are told.
    ring.handle_timeout(start + COALESCE);
    while ring.poll_transmit().is_some() {}
    while ring.poll_event().is_some() {}
    ring
}

/// What `ring` sent: neighbour lists (to whom, what) and near-purpose CTMs (for whom).
fn sent(ring: &mut Ring) -> (Vec<(RingAddr, Vec<RingAddr>)>, Vec<RingAddr>) {
    let (mut lists, mut ctms) = (Vec::new(), Vec::new());
    while let Some(t) = ring.poll_transmit() {
        match Message::parse(&t.bytes) {
            Ok(Message::Neighbours(list)) => lists.push((t.peer, list)),
            Ok(Message::Routed(r))
                if r.mode == Mode::Exact
                    && matches!(
                        r.body,
                        RoutedBody::Ctm {
                            purpose: Purpose::Near,
                            ..
                        }
                    ) =>
            {
                ctms.push(r.dst)
            }
            _ => {}
        }
    }
    (lists, ctms)
}

#[test]
fn a_burst_of_near_changes_is_told_once_in_a_big_ring_and_at_once_in_a_small_one() {
    for (parts, big) in [(4096, true), (24, false)] {
        let start = Instant::now();
        let mut r = ring(start, parts);
        assert_eq!(
            r.size_estimate() >= COALESCE_MIN_RING,
            big,
            "size estimate {}",
            r.size_estimate()
        );
        // Four nearer nodes link within 30 ms: each changes the near set.
        let mut now = start;
        let mut lists = Vec::new();
        for off in [1, -1, 2, -2] {
            now += Duration::from_millis(10);
            r.handle_link_up(now, at(parts, off), LinkKind::Direct, RTT);
            lists.extend(sent(&mut r).0);
        }
        if !big {
            assert!(
                lists.len() > 8,
                "a small ring tells each change at once: {lists:?}"
            );
            continue;
        }
        assert!(lists.is_empty(), "told within the burst: {lists:?}");
        r.handle_timeout(start + Duration::from_millis(10) + COALESCE);
        let (lists, _) = sent(&mut r);
        let near: Vec<RingAddr> = r.table.near(r.cfg.near);
        let mut to: Vec<RingAddr> = lists.iter().map(|(p, _)| *p).collect();
        to.sort();
        let mut want: Vec<RingAddr> = [-8, -4, -2, -1, 1, 2, 4, 8].map(|o| at(parts, o)).to_vec();
        want.sort();
        assert_eq!(to, want, "the new set and those who dropped out, once each");
        assert!(lists.iter().all(|(_, l)| *l == near), "all told the final set");
    }
}

#[test]
fn near_candidates_heard_together_are_linked_nearest_first_as_many_as_a_side_holds() {
    for (parts, big) in [(4096, true), (24, false)] {
        let start = Instant::now();
        let mut r = ring(start, parts);
        let heard: Vec<RingAddr> = [3, -3, 1, 2, -1, -2].map(|o| at(parts, o)).to_vec();
        r.handle_message(start, at(parts, 4), &Message::Neighbours(heard).emit());
        let (_, ctms) = sent(&mut r);
        if !big {
            assert_eq!(ctms.len(), 6, "a small ring asks for each at once: {ctms:?}");
            continue;
        }
        assert!(ctms.is_empty(), "asked within the burst: {ctms:?}");
        r.handle_timeout(start + COALESCE);
        let (_, mut ctms) = sent(&mut r);
        ctms.sort();
        let mut want: Vec<RingAddr> = [-2, -1, 1, 2].map(|o| at(parts, o)).to_vec();
        want.sort();
        assert_eq!(ctms, want, "the two nearest on each side");
    }
}
