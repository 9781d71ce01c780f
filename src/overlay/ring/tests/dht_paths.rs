//! A DHT get leaves toward each replica point by the cheapest `first_hops` links, and its
//! answer comes back the same way, so the fastest of several paths counts; the lookup still
//! ends once.
#![allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Config, Event, Ring};
use crate::overlay::addr::RingAddr;
use crate::overlay::table::LinkKind;
use crate::overlay::wire::{Message, RoutedBody};

/// A node at 0 linked to 31 nodes spread evenly around the ring, with `first_hops` paths per
/// point. With the key at [`key`], every replica point has several links nearer to it than
/// the node is.
fn ring(now: Instant, first_hops: usize) -> Ring {
    let mut cfg = Config::default();
    cfg.dht.first_hops = first_hops;
    let mut ring = Ring::new(now, RingAddr::fraction(0, 32), cfg, 3);
    for i in 1..32 {
        let rtt = Duration::from_millis(10 + 3 * u64::from(i));
        ring.handle_link_up(now, RingAddr::fraction(i, 32), LinkKind::Direct, rtt);
    }
    while ring.poll_transmit().is_some() {}
    while ring.poll_event().is_some() {}
    ring
}

/// 9/128 of the ring: its 8 points are 1 to 9 parts of 128 off the links, 7 or more off us.
fn key() -> RingAddr {
    RingAddr::fraction(9, 128)
}

/// The gets `ring` sent: the links each request left by.
fn gets(ring: &mut Ring) -> BTreeMap<u32, Vec<RingAddr>> {
    let mut by_req: BTreeMap<u32, Vec<RingAddr>> = BTreeMap::new();
    while let Some(t) = ring.poll_transmit() {
        if let Ok(Message::Routed(r)) = Message::parse(&t.bytes) {
            if let RoutedBody::DhtGet { req, .. } = r.body {
                assert_eq!(r.hops, 1, "a get leaves us as one hop taken");
                by_req.entry(req).or_default().push(t.peer);
            }
        }
    }
    by_req
}

#[test]
fn each_point_is_asked_along_two_distinct_links_by_default() {
    let now = Instant::now();
    let key = key();
    for (first_hops, paths) in [(Config::default().dht.first_hops, 2), (1, 1)] {
        let mut ring = ring(now, first_hops);
        ring.dht_get(now, key).unwrap();
        let by_req = gets(&mut ring);
        assert_eq!(by_req.len(), usize::from(ring.cfg.dht.points), "{by_req:?}");
        for (req, mut links) in by_req {
            links.sort();
            links.dedup();
            assert_eq!(links.len(), paths, "request {req:x} left by {links:?}");
        }
    }
}

#[test]
fn answers_along_both_paths_end_the_lookup_once() {
    let now = Instant::now();
    let mut ring = ring(now, 2);
    let key = key();
    let id = ring.dht_get(now, key).unwrap();
    let by_req = gets(&mut ring);
    let me = ring.me();
    // Every path of every point answers with the value (quorum 3: three points end it).
    for (req, links) in by_req {
        for from in links {
            let answer = Message::Routed(crate::overlay::wire::Routed {
                src: from,
                dst: me,
                mode: crate::overlay::wire::Mode::Exact,
                ttl: 8,
                hops: 3,
                uphill: false,
                body: RoutedBody::DhtValues {
                    req,
                    values: vec![(60, b"v".to_vec())],
                },
            });
            ring.handle_message(now, from, &answer.emit());
        }
    }
    let found: Vec<u32> = std::iter::from_fn(|| ring.poll_event())
        .filter_map(|e| match e {
            Event::DhtFound(f) => Some(f.id),
            _ => None,
        })
        .collect();
    assert_eq!(found, vec![id]);
}

/// The node a get reached answers along two paths too (its answer is as slow as the request).
#[test]
fn the_answer_goes_back_along_two_paths() {
    let now = Instant::now();
    let mut ring = ring(now, 2);
    let me = ring.me();
    let asker = key();
    let via = RingAddr::fraction(16, 32);
    let get = Message::Routed(crate::overlay::wire::Routed {
        src: asker,
        dst: me,
        mode: crate::overlay::wire::Mode::Closest,
        ttl: 8,
        hops: 4,
        uphill: false,
        body: RoutedBody::DhtGet { req: 9, key: me },
    });
    ring.handle_message(now, via, &get.emit());
    let mut to = Vec::new();
    while let Some(t) = ring.poll_transmit() {
        if let Ok(Message::Routed(r)) = Message::parse(&t.bytes) {
            if matches!(r.body, RoutedBody::DhtValues { req: 9, .. }) && r.dst == asker {
                to.push(t.peer);
            }
        }
    }
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 2, "answered by {to:?}");
}
