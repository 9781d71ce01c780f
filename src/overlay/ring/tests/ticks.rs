//! Housekeeping slows down on a node with nothing to watch and speeds up at the first change.
#![allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch

use std::time::{Duration, Instant};

use super::lookahead::tests::run;
use super::{Config, Ring, QUIET_TICK_FACTOR};
use crate::overlay::addr::filled as addr;
use crate::overlay::table::LinkKind;

#[test]
fn a_settled_node_ticks_less_often_until_something_changes() {
    let start = Instant::now();
    let cfg = Config {
        shortcuts: Some(0),
        ..Config::default()
    };
    let tick = cfg.tick;
    let mut ring = Ring::new(start, addr(100), cfg, 3);
    for p in [80, 90, 110, 120] {
        ring.handle_link_up(start, addr(p), LinkKind::Direct, Duration::from_millis(10));
    }
    let grace = ring.cfg.trim_grace;
    // While its links are young it ticks at the usual pace.
    // (`run` answers its pings; the link lists it returns do not matter here.)
    run(&mut ring, start, start + grace);
    assert_eq!(ring.tick_every, tick);
    let settled = start + 2 * grace + tick * QUIET_TICK_FACTOR * 4;
    run(&mut ring, start + grace, settled);
    assert_eq!(ring.tick_every, tick * QUIET_TICK_FACTOR, "a quiet node");
    ring.handle_link_up(settled, addr(95), LinkKind::Direct, Duration::from_millis(10));
    assert_eq!(ring.tick_every, tick, "a new link");
    assert!(ring.next_tick <= settled + tick);
}
