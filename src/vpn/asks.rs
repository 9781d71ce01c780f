//! When to ask the DHT for an online member's published VPN address (sans-IO). A member that
//! just came online is probably publishing right now, so it is asked again soon; one that
//! stays unknown may run without a VPN, so it is asked less and less often.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::core::NodeIdBytes;

/// The wait before the second ask; each later ask waits twice as long, up to [`ASK_MAX`].
pub const ASK_FIRST: Duration = Duration::from_millis(250);
pub const ASK_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Ask {
    due: Instant,
    wait: Duration,
}

/// The online members and when each may be asked next.
#[derive(Debug, Default)]
pub struct MemberAsks {
    members: BTreeMap<NodeIdBytes, Ask>,
}

/// What [`MemberAsks::sync`] found changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub joined: Vec<NodeIdBytes>,
    pub left: Vec<NodeIdBytes>,
}

impl MemberAsks {
    /// Takes the members online now: newcomers are due at once, the departed forgotten.
    pub fn sync(&mut self, now: Instant, online: &BTreeSet<NodeIdBytes>) -> Changes {
        let left: Vec<NodeIdBytes> = self
            .members
            .keys()
            .filter(|n| !online.contains(*n))
            .copied()
            .collect();
        for node in &left {
            self.members.remove(node);
        }
        let mut joined = Vec::new();
        for &node in online {
            self.members.entry(node).or_insert_with(|| {
                joined.push(node);
                Ask {
                    due: now,
                    wait: ASK_FIRST,
                }
            });
        }
        Changes { joined, left }
    }

    /// The members to ask now among those whose address is not `known`; each is scheduled
    /// again after its current wait, which doubles.
    pub fn take_due(&mut self, now: Instant, known: impl Fn(&NodeIdBytes) -> bool) -> Vec<NodeIdBytes> {
        let mut due = Vec::new();
        for (node, ask) in &mut self.members {
            if now >= ask.due && !known(node) {
                due.push(*node);
                ask.due = now + ask.wait;
                ask.wait = (ask.wait * 2).min(ASK_MAX);
            }
        }
        due
    }

    /// The earliest moment a member whose address is not `known` is due.
    pub fn next_due(&self, known: impl Fn(&NodeIdBytes) -> bool) -> Option<Instant> {
        self.members
            .iter()
            .filter(|(node, _)| !known(node))
            .map(|(_, ask)| ask.due)
            .min()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests pick an arbitrary start instant
mod tests {
    use super::*;

    fn node(b: u8) -> NodeIdBytes {
        [b; 20]
    }

    fn set(nodes: &[u8]) -> BTreeSet<NodeIdBytes> {
        nodes.iter().map(|&b| node(b)).collect()
    }

    #[test]
    fn newcomers_are_due_at_once_then_back_off_doubling_to_the_cap() {
        let t0 = Instant::now();
        let mut asks = MemberAsks::default();
        let changes = asks.sync(t0, &set(&[1]));
        assert_eq!(changes.joined, vec![node(1)]);
        assert_eq!(asks.next_due(|_| false), Some(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..14 {
            assert_eq!(asks.take_due(now, |_| false), vec![node(1)]);
            let next = asks.next_due(|_| false).expect("still unknown");
            waits.push(next - now);
            assert!(asks
                .take_due(next - Duration::from_millis(1), |_| false)
                .is_empty());
            now = next;
        }
        assert_eq!(waits[0], ASK_FIRST);
        assert_eq!(waits[1], ASK_FIRST * 2);
        assert_eq!(waits[2], ASK_FIRST * 4);
        assert_eq!(*waits.last().expect("waits"), ASK_MAX);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn known_members_are_not_asked_nor_waited_for() {
        let t0 = Instant::now();
        let mut asks = MemberAsks::default();
        asks.sync(t0, &set(&[1, 2]));
        let known = |n: &NodeIdBytes| *n == node(1);
        assert_eq!(asks.take_due(t0, known), vec![node(2)]);
        assert_eq!(asks.next_due(known), Some(t0 + ASK_FIRST));
        assert_eq!(asks.next_due(|_| true), None);
    }

    #[test]
    fn departed_members_are_forgotten_and_start_over_when_back() {
        let t0 = Instant::now();
        let mut asks = MemberAsks::default();
        asks.sync(t0, &set(&[1, 2]));
        asks.take_due(t0, |_| false);
        asks.take_due(t0 + ASK_FIRST, |_| false);
        let later = t0 + Duration::from_millis(500);
        let changes = asks.sync(later, &set(&[2]));
        assert_eq!(
            changes,
            Changes {
                joined: vec![],
                left: vec![node(1)]
            }
        );
        let back = asks.sync(later, &set(&[1, 2]));
        assert_eq!(back.joined, vec![node(1)]);
        // node 1 starts again at once; node 2 keeps its grown wait.
        assert_eq!(asks.take_due(later, |_| false), vec![node(1)]);
        assert_eq!(asks.next_due(|_| false), Some(later + ASK_FIRST));
    }
}
