//! The simulator's event queue: a calendar (timing wheel) of 1 ms buckets over a 65 s horizon,
//! with a heap for events further out. Events leave in (time, insertion order) order, so a
//! run is deterministic; a 100,000-node run holds hundreds of thousands of events, where a
//! single binary heap spends its time in cache misses.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

const WIDTH_US: u64 = 1000;
const SLOTS: u64 = 1 << 16;

pub struct Queue<E> {
    wheel: Vec<Vec<(u64, u64, E)>>,
    /// Events beyond the wheel's horizon, by (time, seq); their payloads sit in `far_items`.
    far: BinaryHeap<Reverse<(u64, u64, usize)>>,
    far_items: Vec<Option<E>>,
    far_free: Vec<usize>,
    /// The bucket being drained, sorted so that the next event is last.
    ready: Vec<(u64, u64, E)>,
    bucket: u64,
    seq: u64,
    len: usize,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            far: BinaryHeap::new(),
            far_items: Vec::new(),
            far_free: Vec::new(),
            ready: Vec::new(),
            bucket: 0,
            seq: 0,
            len: 0,
        }
    }
}

impl<E> Queue<E> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an event at `at` (µs); times before the bucket being drained count as now.
    pub fn push(&mut self, at: u64, ev: E) {
        self.seq += 1;
        self.len += 1;
        let b = (at / WIDTH_US).max(self.bucket);
        let item = (at, self.seq, ev);
        if b == self.bucket {
            // Keep `ready` sorted descending by (time, seq): the new event goes before every
            // later one.
            let pos = self.ready.partition_point(|(t, s, _)| (*t, *s) > (at, item.1));
            self.ready.insert(pos, item);
        } else if b < self.bucket + SLOTS {
            self.wheel[(b % SLOTS) as usize].push(item);
        } else {
            let slot = match self.far_free.pop() {
                Some(s) => {
                    self.far_items[s] = Some(item.2);
                    s
                }
                None => {
                    self.far_items.push(Some(item.2));
                    self.far_items.len() - 1
                }
            };
            self.far.push(Reverse((at, item.1, slot)));
        }
    }

    /// The next event at or before `until` (µs), with its time.
    pub fn pop_until(&mut self, until: u64) -> Option<(u64, E)> {
        loop {
            if let Some((at, _, _)) = self.ready.last() {
                if *at > until {
                    return None;
                }
                let (at, _, ev) = self.ready.pop()?;
                self.len -= 1;
                return Some((at, ev));
            }
            if self.len == 0 || (self.bucket + 1) * WIDTH_US > until {
                return None;
            }
            self.bucket += 1;
            self.fill_ready();
        }
    }

    /// The event `k` places after the next one, if it is in the bucket being drained (for
    /// prefetching what it will touch).
    pub fn upcoming(&self, k: usize) -> Option<&E> {
        let i = self.ready.len().checked_sub(k + 1)?;
        Some(&self.ready[i].2)
    }

    fn fill_ready(&mut self) {
        let b = self.bucket;
        let mut ready = std::mem::take(&mut self.wheel[(b % SLOTS) as usize]);
        while let Some(Reverse((at, seq, slot))) = self.far.peek().copied() {
            if at / WIDTH_US > b {
                break;
            }
            self.far.pop();
            if let Some(ev) = self.far_items[slot].take() {
                self.far_free.push(slot);
                ready.push((at, seq, ev));
            }
        }
        ready.sort_unstable_by_key(|e| Reverse((e.0, e.1)));
        self.ready = ready;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_leave_in_time_then_insertion_order() {
        let mut q = Queue::default();
        let times = [5_000u64, 200, 70_000_000, 200, 999, 1_000, 65_536_000, 3];
        for (i, t) in times.iter().enumerate() {
            q.push(*t, i);
        }
        let mut out = Vec::new();
        while let Some((t, i)) = q.pop_until(u64::MAX / 2) {
            out.push((t, i));
            if i == 4 {
                q.push(999, 100); // same time, pushed later: leaves after
                q.push(500, 101); // in the past: leaves at once
            }
        }
        let order: Vec<usize> = out.iter().map(|(_, i)| *i).collect();
        assert_eq!(order, vec![7, 1, 3, 4, 101, 100, 5, 0, 6, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn nothing_leaves_after_the_limit() {
        let mut q = Queue::default();
        q.push(10_000, 'a');
        q.push(2_000_000, 'b');
        assert_eq!(q.pop_until(9_999), None);
        assert_eq!(q.pop_until(10_000), Some((10_000, 'a')));
        assert_eq!(q.pop_until(1_999_999), None);
        q.push(1_500_000, 'c');
        assert_eq!(q.pop_until(3_000_000), Some((1_500_000, 'c')));
        assert_eq!(q.pop_until(3_000_000), Some((2_000_000, 'b')));
        assert_eq!(q.len(), 0);
    }
}
