//! Anti-replay window for datagram counters (RFC 6479 style): accepts each counter once, in
//! any order within the last [`WINDOW`] counters, and refuses anything older.

pub const WINDOW: u64 = 2048;
/// One word more than the window: the window's oldest and newest counters may sit in words
/// that would otherwise share a slot.
const WORDS: usize = (WINDOW / 64) as usize + 1;

#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far, plus one (0: none yet).
    next: u64,
    bits: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted (call before the costly decryption).
    pub fn fresh(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        if self.next - counter > WINDOW {
            return false;
        }
        let (word, bit) = slot(counter);
        self.bits[word] & (1 << bit) == 0
    }

    /// Marks `counter` as seen (call only after the datagram authenticated); false if it was
    /// a replay or too old.
    pub fn accept(&mut self, counter: u64) -> bool {
        if !self.fresh(counter) {
            return false;
        }
        if counter >= self.next {
            // Clear the words the window slides into (all bits start clear).
            if let Some(top) = self.next.checked_sub(1) {
                let (old_word, new_word) = (top / 64, counter / 64);
                for w in old_word + 1..=new_word.min(old_word + WORDS as u64) {
                    self.bits[(w % WORDS as u64) as usize] = 0;
                }
            }
            self.next = counter + 1;
        }
        let (word, bit) = slot(counter);
        self.bits[word] |= 1 << bit;
        true
    }
}

fn slot(counter: u64) -> (usize, u32) {
    (((counter / 64) % WORDS as u64) as usize, (counter % 64) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn each_counter_once_and_nothing_older_than_the_window() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(10_000));
        assert!(!w.accept(10_000 - WINDOW - 1));
        assert!(w.accept(10_000 - WINDOW + 1));
        assert!(!w.accept(5));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Against a model that remembers everything: a counter is accepted iff it was never
        /// accepted and is within the window of the highest so far.
        #[test]
        fn matches_a_model_that_remembers_everything(counters in prop::collection::vec(0u64..6000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut top: Option<u64> = None;
            for c in counters {
                let expect = !seen.contains(&c) && top.is_none_or(|t| c + WINDOW > t);
                prop_assert_eq!(w.accept(c), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    top = Some(top.map_or(c, |t| t.max(c)));
                }
            }
        }
    }
}
