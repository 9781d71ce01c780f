//! Debugging aids for the simulator (`SIM_DEBUG=1`, `SIM_TRACE=1`): which nodes are out of
//! place, their linking state, and the route a seek would take from them.

use super::world::{NodeIx, World};
use crate::overlay::RingAddr;

impl World {
    /// Describes up to `max` inconsistent nodes (for debugging the simulator).
    pub fn explain(&self, max: usize) -> Vec<String> {
        let ring = self.true_ring();
        let n = ring.len();
        let mut out = Vec::new();
        let trace = std::env::var("SIM_TRACE").is_ok();
        for i in 0..n {
            let t = self.nodes[ring[i].1 as usize].ring.table();
            let right = ring[(i + 1) % n].0;
            if t.nearest_right() == Some(right) {
                continue;
            }
            let other = &self.nodes[ring[(i + 1) % n].1 as usize];
            if trace {
                let me = ring[i].0;
                let seek = me.wrapping_add(RingAddr::from_bytes({
                    let mut b = [0u8; 20];
                    b[19] = 1;
                    b
                }));
                for l in self.trace_route(ring[i].1, seek, crate::overlay::wire::Mode::Right) {
                    out.push(format!("    {l}"));
                }
                let node = &self.nodes[ring[i].1 as usize];
                let kinds: Vec<String> = t
                    .iter()
                    .take(12)
                    .map(|(a, l)| {
                        format!(
                            "{a}:{:?}/s{}/n{}/r{}",
                            l.kind, l.our_shortcut as u8, l.peer_needs as u8, l.released as u8
                        )
                    })
                    .collect();
                out.push(format!("    {}", node.ring.describe()));
                out.push(format!(
                    "    class={:?} other_class={:?} near={:?} links: {}",
                    self.class(ring[i].1),
                    self.class(ring[(i + 1) % n].1),
                    t.near(2).iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    kinds.join(" ")
                ));
            }
            let ot = other.ring.table();
            out.push(format!(
                "{} right={:?} true={} linked={} true.left={:?} true.links={} links={}",
                ring[i].0,
                t.nearest_right().map(|a| a.to_string()),
                right,
                t.get(&right).is_some(),
                ot.nearest_left().map(|a| a.to_string()),
                ot.len(),
                t.len()
            ));
            if out.len() >= max {
                break;
            }
        }
        out
    }

    /// The path greedy routing would take now (for debugging the simulator).
    pub fn trace_route(&self, from: NodeIx, dst: RingAddr, mode: crate::overlay::wire::Mode) -> Vec<String> {
        use crate::overlay::table::Decision;
        let (mut at, mut prev, mut uphill) = (from, None, false);
        let mut out = Vec::new();
        for _ in 0..40 {
            let t = self.nodes[at as usize].ring.table();
            let d = t.decide(dst, mode, prev, uphill);
            out.push(format!("{} {:?}", t.me(), d));
            match d {
                Decision::Forward { next, uphill: u } => {
                    uphill |= u;
                    prev = Some(t.me());
                    at = self.index[&next];
                }
                _ => break,
            }
        }
        out
    }
}
