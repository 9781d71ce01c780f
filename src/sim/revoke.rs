//! Revocation in the simulated world: the link layer's part of it, around the real ring. A
//! node that receives a revocation broadcast (the real `Revocation`, checked against the
//! group's CA by the real code) keeps it, closes its link to the revoked node and passes the
//! news on past it (`Ring::cut_off`), as the daemon does. Links never come up between the
//! revoked node and a node that knows; when a link comes up between a node that knows and one
//! that does not, the one that knows hands the revocation over one latency later (the
//! handshake's CRL-version catch-up). Nodes that know leave the revoked node out of what
//! rendezvous shows them. The revoked node plays its worst part: from the publish on it sends
//! nothing, so broadcast sub-ranges handed to it must be covered by whoever handed them.

use std::collections::HashMap;
use std::time::Duration;

use super::world::{NodeIx, World};
use crate::node::revocation::{broadcast_payload, BROADCAST_REVOCATION};
use crate::secure::revocation::Revocation;

/// One revocation on its way through the world.
pub struct Spread {
    /// The group's CA key (what every node checks the signature against).
    pub ca: [u8; 32],
    pub revocation: Revocation,
    /// The node it names.
    pub target: NodeIx,
    /// When (virtual time) each node learnt it.
    pub learnt: HashMap<NodeIx, Duration>,
    /// When each node that had a link to the target closed it.
    pub cut: HashMap<NodeIx, Duration>,
    /// Catch-up hand-overs after link-ups.
    pub handovers: u64,
}

impl Spread {
    pub fn new(ca: [u8; 32], revocation: Revocation, target: NodeIx) -> Spread {
        Spread {
            ca,
            revocation,
            target,
            learnt: HashMap::new(),
            cut: HashMap::new(),
            handovers: 0,
        }
    }

    pub fn knows(&self, ix: NodeIx) -> bool {
        self.learnt.contains_key(&ix)
    }

    /// Whether a link between `a` and `b` is refused: one is the target, the other knows.
    pub fn refuses(&self, a: NodeIx, b: NodeIx) -> bool {
        (a == self.target && self.knows(b)) || (b == self.target && self.knows(a))
    }
}

impl World {
    /// A broadcast reached node `ix`.
    pub(super) fn revocation_broadcast(&mut self, ix: NodeIx, payload: &[u8]) {
        let Some((&BROADCAST_REVOCATION, bytes)) = payload.split_first() else {
            return;
        };
        let Some(spread) = self.revocation.as_ref() else {
            return;
        };
        let checked = Revocation::parse(bytes).and_then(|r| r.verify(&spread.ca).map(|()| r));
        if checked.is_ok_and(|rev| rev == spread.revocation) {
            self.learn(ix);
        }
    }

    /// Node `ix` learns the revocation: it keeps it and cuts the revoked node off.
    pub fn learn(&mut self, ix: NodeIx) {
        let elapsed = self.elapsed();
        let now = self.now();
        let Some(spread) = self.revocation.as_mut() else {
            return;
        };
        if spread.knows(ix) || !self.nodes[ix as usize].alive {
            return;
        }
        spread.learnt.insert(ix, elapsed);
        let target = spread.target;
        let payload = broadcast_payload(&spread.revocation);
        if ix == target {
            return;
        }
        if self.unlink(ix, target) {
            if let Some(s) = self.revocation.as_mut() {
                s.cut.insert(ix, elapsed);
            }
        }
        let peer = self.addr(target);
        let _ = self.nodes[ix as usize].ring.cut_off(now, peer, payload);
        self.drain(ix);
    }

    /// A link came up between `a` and `b`: the one that knows hands the revocation over.
    pub(super) fn revocation_catch_up(&mut self, a: NodeIx, b: NodeIx) {
        let Some(spread) = self.revocation.as_ref() else {
            return;
        };
        let (knows, not) = match (spread.knows(a), spread.knows(b)) {
            (true, false) => (a, b),
            (false, true) => (b, a),
            _ => return,
        };
        if let Some(s) = self.revocation.as_mut() {
            s.handovers += 1;
        }
        let after = self.latency(knows, not);
        self.schedule_learn(after, not);
    }
}
