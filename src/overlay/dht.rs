//! The DHT's state: values this node stores for others (with leases), values it put itself
//! (re-put at half the lease), and its lookups in flight.
//!
//! A key is stored at `points` replica points, key + i·2^160/points; at each point the node
//! closest to it (the root) and its `copies − 1` nearest neighbours hold the value. Reads ask
//! every point at once, finish when a majority answered, and merge values freshest-wins
//! (the longest remaining lease). The ring core (`super::ring`) moves the messages.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::addr::RingAddr;
use super::wire::{Record, MAX_RECORDS, MAX_VALUE};

/// Most values stored under one key, and most records one node holds.
const MAX_PER_KEY: usize = 16;
const MAX_STORED: usize = 100_000;
/// Most of our own puts kept alive, and most lookups in flight.
const MAX_PUTS: usize = 1024;
const MAX_LOOKUPS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Config {
    /// Replica points per key (1–8).
    pub points: u8,
    /// Nodes holding each point: the root and its nearest neighbours.
    pub copies: usize,
    /// Links a get leaves by toward each point, and an answer toward the asker: the cheapest
    /// few by routing cost, so the fastest of that many paths counts (the rest are ignored).
    pub first_hops: usize,
    /// Re-asks of points that did not answer before a lookup gives up.
    pub retries: u8,
    /// Answers that end a read once one of them holds values (freshest-wins); a read also
    /// ends when a majority of points answered. Default: a majority read.
    pub quorum: u8,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            points: 8,
            copies: 5,
            first_hops: 2,
            retries: 2,
            quorum: 3,
        }
    }
}

pub fn point(key: RingAddr, i: u8, points: u8) -> RingAddr {
    key.wrapping_add(RingAddr::fraction(u32::from(i), u32::from(points)))
}

#[derive(Debug)]
struct Stored {
    key: RingAddr,
    value: Box<[u8]>,
    expires: Instant,
}

/// Values held for others, by replica point.
#[derive(Debug, Default)]
pub struct Store {
    records: BTreeMap<RingAddr, Vec<Stored>>,
    count: usize,
}

impl Store {
    /// Stores (or with a zero lease removes) one value; false if refused as too big or full.
    pub fn put(&mut self, now: Instant, point: RingAddr, key: RingAddr, value: &[u8], lease_s: u32) -> bool {
        if value.len() > MAX_VALUE {
            return false;
        }
        let at = self.records.entry(point).or_default();
        let old = at.iter().position(|s| s.key == key && *s.value == *value);
        if lease_s == 0 {
            if let Some(i) = old {
                at.swap_remove(i);
                self.count -= 1;
            }
            if at.is_empty() {
                self.records.remove(&point);
            }
            return true;
        }
        let expires = now + Duration::from_secs(u64::from(lease_s));
        if let Some(i) = old {
            at[i].expires = at[i].expires.max(expires);
            return true;
        }
        if self.count >= MAX_STORED || at.iter().filter(|s| s.key == key).count() >= MAX_PER_KEY {
            if at.is_empty() {
                self.records.remove(&point);
            }
            return false;
        }
        at.push(Stored {
            key,
            value: value.into(),
            expires,
        });
        self.count += 1;
        true
    }

    /// Live values under `key` at `point`, with their remaining lease.
    pub fn values(&self, now: Instant, point: RingAddr, key: RingAddr) -> Vec<(u32, Vec<u8>)> {
        self.records
            .get(&point)
            .into_iter()
            .flatten()
            .filter(|s| s.key == key && s.expires > now)
            .take(MAX_RECORDS)
            .map(|s| (remaining(now, s.expires), s.value.to_vec()))
            .collect()
    }

    pub fn expire(&mut self, now: Instant) {
        let mut removed = 0;
        self.records.retain(|_, at| {
            let before = at.len();
            at.retain(|s| s.expires > now);
            removed += before - at.len();
            !at.is_empty()
        });
        self.count -= removed;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Live records whose point satisfies `wanted` (for handing data to a new neighbour).
    pub fn records(&self, now: Instant, mut wanted: impl FnMut(RingAddr) -> bool) -> Vec<Record> {
        let mut out = Vec::new();
        for (point, at) in &self.records {
            if !wanted(*point) {
                continue;
            }
            for s in at.iter().filter(|s| s.expires > now) {
                out.push(Record {
                    point: *point,
                    key: s.key,
                    lease_s: remaining(now, s.expires),
                    value: s.value.to_vec(),
                });
            }
        }
        out
    }
}

fn remaining(now: Instant, expires: Instant) -> u32 {
    expires
        .saturating_duration_since(now)
        .as_secs()
        .min(u64::from(u32::MAX)) as u32
}

/// Values this node put and keeps alive.
#[derive(Debug, Default)]
pub struct Puts {
    mine: BTreeMap<(RingAddr, Vec<u8>), (u32, Instant)>,
}

impl Puts {
    /// Remembers a put (or forgets it on a zero lease); false when full.
    pub fn remember(&mut self, now: Instant, key: RingAddr, value: &[u8], lease_s: u32) -> bool {
        let id = (key, value.to_vec());
        if lease_s == 0 {
            self.mine.remove(&id);
            return true;
        }
        if self.mine.len() >= MAX_PUTS && !self.mine.contains_key(&id) {
            return false;
        }
        self.mine.insert(
            id,
            (lease_s, now + Duration::from_secs(u64::from(lease_s / 2).max(1))),
        );
        true
    }

    /// Puts due for their re-put; their next one is scheduled.
    pub fn due(&mut self, now: Instant) -> Vec<(RingAddr, Vec<u8>, u32)> {
        let mut out = Vec::new();
        for ((key, value), (lease, at)) in self.mine.iter_mut() {
            if *at <= now {
                *at = now + Duration::from_secs(u64::from(*lease / 2).max(1));
                out.push((*key, value.clone(), *lease));
            }
        }
        out
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.mine.values().map(|(_, at)| *at).min()
    }
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: u32,
    pub key: RingAddr,
    /// Values with their longest remaining lease seen.
    pub values: Vec<(Vec<u8>, u32)>,
    /// Points that answered, of `points`.
    pub answered: u8,
    pub started: Instant,
}

#[derive(Debug)]
struct Lookup {
    key: RingAddr,
    started: Instant,
    sent: [Option<Instant>; 8],
    answered: u8,
    values: BTreeMap<Vec<u8>, u32>,
    tries: u8,
    deadline: Instant,
}

/// Lookups in flight, with an adaptive timeout from the answer times seen (srtt + 4·rttvar).
#[derive(Debug)]
pub struct Lookups {
    next_id: u32,
    pending: BTreeMap<u32, Lookup>,
    srtt: Option<(f64, f64)>,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups {
            next_id: 1,
            pending: BTreeMap::new(),
            srtt: None,
        }
    }
}

impl Lookups {
    /// Starts a lookup; returns its id, or None when too many are in flight. The caller
    /// sends a get to every point with request id `id << 3 | point`.
    pub fn start(&mut self, now: Instant, key: RingAddr, points: u8) -> Option<u32> {
        if self.pending.len() >= MAX_LOOKUPS {
            return None;
        }
        let id = self.next_id;
        self.next_id = self.next_id % 0x1fff_ffff + 1;
        let mut sent = [None; 8];
        for s in sent.iter_mut().take(points as usize) {
            *s = Some(now);
        }
        let deadline = now + self.timeout();
        self.pending.insert(
            id,
            Lookup {
                key,
                started: now,
                sent,
                answered: 0,
                values: BTreeMap::new(),
                tries: 0,
                deadline,
            },
        );
        Some(id)
    }

    pub fn timeout(&self) -> Duration {
        match self.srtt {
            None => Duration::from_secs(1),
            Some((srtt, var)) => Duration::from_secs_f64((srtt + 4.0 * var).clamp(0.2, 5.0)),
        }
    }

    /// Takes one answer; returns the finished lookup once a majority of points answered (or
    /// `quorum` did and values were found).
    pub fn answer(
        &mut self,
        now: Instant,
        req: u32,
        values: Vec<(u32, Vec<u8>)>,
        cfg: &Config,
    ) -> Option<Found> {
        let points = cfg.points;
        let (id, point) = (req >> 3, (req & 7) as usize);
        let lookup = self.pending.get_mut(&id)?;
        if point >= points as usize || lookup.answered & (1 << point) != 0 {
            return None;
        }
        lookup.answered |= 1 << point;
        if let Some(sent) = lookup.sent[point] {
            let sample = now.saturating_duration_since(sent).as_secs_f64();
            self.srtt = Some(match self.srtt {
                None => (sample, sample / 2.0),
                Some((s, v)) => (0.875 * s + 0.125 * sample, 0.75 * v + 0.25 * (s - sample).abs()),
            });
        }
        for (lease, value) in values {
            let best = lookup.values.entry(value).or_insert(0);
            *best = (*best).max(lease);
        }
        let lookup = self.pending.get(&id)?;
        let answered = lookup.answered.count_ones() as u8;
        if answered > points / 2 || (!lookup.values.is_empty() && answered >= cfg.quorum) {
            return self.finish(id);
        }
        None
    }

    /// Points to re-ask (point, request id, key) and lookups that gave up.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        points: u8,
        retries: u8,
    ) -> (Vec<(RingAddr, u32, RingAddr)>, Vec<Found>) {
        let timeout = self.timeout();
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        for (id, l) in self.pending.iter_mut() {
            if l.deadline > now {
                continue;
            }
            if l.tries >= retries {
                expired.push(*id);
                continue;
            }
            l.tries += 1;
            l.deadline = now + timeout * (1 << l.tries);
            for p in 0..points {
                if l.answered & (1 << p) == 0 {
                    l.sent[p as usize] = Some(now);
                    resend.push((point(l.key, p, points), *id << 3 | u32::from(p), l.key));
                }
            }
        }
        let found = expired.into_iter().filter_map(|id| self.finish(id)).collect();
        (resend, found)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|l| l.deadline).min()
    }

    fn finish(&mut self, id: u32) -> Option<Found> {
        let l = self.pending.remove(&id)?;
        Some(Found {
            id,
            key: l.key,
            values: l.values.into_iter().collect(),
            answered: l.answered.count_ones() as u8,
            started: l.started,
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a real Instant is the tests' virtual epoch
mod tests {
    use super::*;
    use crate::overlay::addr::filled as addr;

    #[test]
    fn store_keeps_several_values_per_key_until_their_lease_ends() {
        let now = Instant::now();
        let mut store = Store::default();
        assert!(store.put(now, addr(1), addr(2), b"a", 10));
        assert!(store.put(now, addr(1), addr(2), b"b", 20));
        assert!(
            store.put(now, addr(1), addr(2), b"a", 5),
            "a shorter re-put keeps the longer lease"
        );
        assert_eq!(store.values(now, addr(1), addr(2)).len(), 2);
        let later = now + Duration::from_secs(15);
        assert_eq!(store.values(later, addr(1), addr(2)), vec![(5, b"b".to_vec())]);
        store.expire(later);
        assert_eq!(store.len(), 1);
        assert!(store.put(later, addr(1), addr(2), b"b", 0));
        assert!(store.is_empty());
        assert!(!store.put(now, addr(1), addr(2), &[0; MAX_VALUE + 1], 10));
    }

    #[test]
    fn lookups_finish_on_a_majority_and_merge_freshest() {
        let now = Instant::now();
        let mut lookups = Lookups::default();
        let id = lookups.start(now, addr(3), 4).unwrap();
        let at = now + Duration::from_millis(100);
        let cfg = Config::default();
        assert!(lookups
            .answer(at, id << 3, vec![(10, b"v".to_vec())], &cfg)
            .is_none());
        assert!(
            lookups.answer(at, id << 3, vec![], &cfg).is_none(),
            "a repeated answer counts once"
        );
        assert!(lookups
            .answer(at, id << 3 | 1, vec![(30, b"v".to_vec())], &cfg)
            .is_none());
        let found = lookups.answer(at, id << 3 | 2, vec![], &cfg).unwrap();
        assert_eq!(found.values, vec![(b"v".to_vec(), 30)]);
        assert_eq!(found.answered, 3);
        assert!(lookups.timeout() < Duration::from_secs(1));
    }

    #[test]
    fn a_quorum_of_one_ends_at_the_first_answer_with_values() {
        let now = Instant::now();
        let mut lookups = Lookups::default();
        let cfg = Config {
            quorum: 1,
            ..Config::default()
        };
        let id = lookups.start(now, addr(3), 4).unwrap();
        assert!(
            lookups.answer(now, id << 3, vec![], &cfg).is_none(),
            "an empty answer is not enough"
        );
        let found = lookups
            .answer(now, id << 3 | 3, vec![(9, b"w".to_vec())], &cfg)
            .unwrap();
        assert_eq!(found.answered, 2);
    }

    #[test]
    fn silent_points_are_asked_again_then_the_lookup_gives_up() {
        let now = Instant::now();
        let mut lookups = Lookups::default();
        let id = lookups.start(now, addr(3), 4).unwrap();
        lookups.answer(now, id << 3, vec![], &Config::default());
        let (resend, done) = lookups.on_timeout(now + Duration::from_secs(1), 4, 1);
        assert_eq!(resend.len(), 3);
        assert!(done.is_empty());
        let (resend, done) = lookups.on_timeout(now + Duration::from_secs(10), 4, 1);
        assert!(resend.is_empty());
        assert_eq!(done[0].answered, 1);
    }

    #[test]
    fn puts_come_due_at_half_their_lease() {
        let now = Instant::now();
        let mut puts = Puts::default();
        puts.remember(now, addr(1), b"x", 60);
        assert!(puts.due(now + Duration::from_secs(29)).is_empty());
        assert_eq!(puts.due(now + Duration::from_secs(30)).len(), 1);
        assert_eq!(puts.next_due(), Some(now + Duration::from_secs(60)));
    }
}
