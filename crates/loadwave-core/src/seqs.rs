//! The sequence numbers of a driver's reports that were folded, as runs.
//!
//! A driver numbers its reports 0, 1, 2, … and sends one a second, so the numbers folded
//! are almost always one contiguous run. [`SeqSet`] keeps them as sorted, disjoint,
//! non-adjacent inclusive runs: its size (in memory and in a snapshot) grows with the gaps
//! (reports not yet arrived, or lost), not with the age of the test, and whether a number
//! was seen is still answered exactly.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of `u64` stored as inclusive runs `[first, last]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    /// Sorted by `first`; no two runs overlap or touch.
    runs: Vec<(u64, u64)>,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        SeqSet::default()
    }

    /// The index of the run holding `seq`, or where a run starting at `seq` would go.
    fn find(&self, seq: u64) -> Result<usize, usize> {
        // The first run whose last number is ≥ seq.
        let i = self.runs.partition_point(|&(_, last)| last < seq);
        match self.runs.get(i) {
            Some(&(first, _)) if first <= seq => Ok(i),
            _ => Err(i),
        }
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.find(seq).is_ok()
    }

    /// Adds `seq`; returns whether it was new.
    pub fn insert(&mut self, seq: u64) -> bool {
        let i = match self.find(seq) {
            Ok(_) => return false,
            Err(i) => i,
        };
        // `i` is the first run after `seq`; `i - 1` (if any) ends before it.
        let joins_prev = i > 0 && self.runs[i - 1].1.checked_add(1) == Some(seq);
        let joins_next = i < self.runs.len() && seq.checked_add(1) == Some(self.runs[i].0);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[i - 1].1 = self.runs[i].1;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = seq,
            (false, true) => self.runs[i].0 = seq,
            (false, false) => self.runs.insert(i, (seq, seq)),
        }
        true
    }

    /// Whether inserting `seq` would add a run (it is neither in the set nor next to a
    /// number in it): what a bound on the runs checks before an insert.
    pub fn would_open_run(&self, seq: u64) -> bool {
        let i = match self.find(seq) {
            Ok(_) => return false,
            Err(i) => i,
        };
        let joins_prev = i > 0 && self.runs[i - 1].1.checked_add(1) == Some(seq);
        let joins_next = i < self.runs.len() && seq.checked_add(1) == Some(self.runs[i].0);
        !joins_prev && !joins_next
    }

    /// How many numbers the set holds.
    pub fn len(&self) -> u64 {
        self.runs.iter().fold(0u64, |n, &(first, last)| {
            n.saturating_add((last - first).saturating_add(1))
        })
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// How many numbers ≤ `last` the set holds.
    pub fn count_through(&self, last: u64) -> u64 {
        self.runs
            .iter()
            .take_while(|&&(first, _)| first <= last)
            .fold(0u64, |n, &(first, end)| {
                n.saturating_add((end.min(last) - first).saturating_add(1))
            })
    }

    /// The runs, as inclusive `(first, last)` pairs in order.
    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }
}

/// Serialized as `[[first, last], …]`.
impl Serialize for SeqSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.runs.serialize(s)
    }
}

/// Reads the runs, or the plain list of numbers that snapshots written before the runs
/// hold (`[0, 1, 2, 5]`).
impl<'de> Deserialize<'de> for SeqSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            One(u64),
            Run(u64, u64),
        }
        let mut runs = Vec::new();
        for item in Vec::<Item>::deserialize(d)? {
            let (first, last) = match item {
                Item::One(n) => (n, n),
                Item::Run(first, last) => (first, last),
            };
            if first > last {
                return Err(serde::de::Error::custom(format!(
                    "sequence run [{first}, {last}] is reversed"
                )));
            }
            runs.push((first, last));
        }
        // Sorted and apart already when this build wrote them; anything else is merged.
        runs.sort_unstable();
        let mut set = SeqSet::new();
        for (first, last) in runs {
            match set.runs.last_mut() {
                Some((_, end)) if first <= end.saturating_add(1) => *end = (*end).max(last),
                _ => set.runs.push((first, last)),
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn runs_merge_and_answer_exactly() {
        let mut s = SeqSet::new();
        for seq in [0, 1, 2, 5, 4, 9, 3] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(4));
        assert_eq!(s.runs(), &[(0, 5), (9, 9)]);
        assert_eq!(s.len(), 7);
        assert!(s.contains(0) && s.contains(5) && s.contains(9));
        assert!(!s.contains(6) && !s.contains(8) && !s.contains(10));
        assert!(!s.would_open_run(6) && !s.would_open_run(8) && !s.would_open_run(4));
        assert!(s.would_open_run(7) && s.would_open_run(11));
        assert_eq!(s.count_through(3), 4);
        assert_eq!(s.count_through(8), 6);
        assert_eq!(s.count_through(100), 7);
        s.insert(7);
        s.insert(8);
        s.insert(6);
        assert_eq!(s.runs(), &[(0, 9)]);
    }

    #[test]
    fn agrees_with_a_plain_set() {
        // A fixed pseudo-random order over 0..300 with a few numbers left out.
        let mut x: u64 = 7;
        let mut s = SeqSet::new();
        let mut plain = BTreeSet::new();
        for _ in 0..2_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let seq = (x >> 33) % 300;
            if seq % 37 == 11 {
                continue;
            }
            assert_eq!(s.insert(seq), plain.insert(seq));
        }
        assert_eq!(s.len(), plain.len() as u64);
        for seq in 0..310 {
            assert_eq!(s.contains(seq), plain.contains(&seq), "{seq}");
            assert_eq!(
                s.count_through(seq),
                plain.range(..=seq).count() as u64,
                "{seq}"
            );
        }
        // Gaps only where numbers were left out.
        assert!(s.runs().len() <= 10, "{:?}", s.runs());
    }

    #[test]
    fn serializes_as_runs_and_reads_the_old_list() {
        let mut s = SeqSet::new();
        for seq in (0..1_000).chain([1_500]) {
            s.insert(seq);
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "[[0,999],[1500,1500]]");
        assert_eq!(serde_json::from_str::<SeqSet>(&json).unwrap(), s);
        let old: SeqSet = serde_json::from_str("[0,1,2,3,7,5]").unwrap();
        assert_eq!(old.runs(), &[(0, 3), (5, 5), (7, 7)]);
        assert!(serde_json::from_str::<SeqSet>("[[3,1]]").is_err());
        // Numbers near the top of the range (a driver's sequence is untrusted input).
        let mut top = SeqSet::new();
        assert!(top.insert(u64::MAX));
        assert!(top.insert(u64::MAX - 1));
        assert_eq!(top.runs(), &[(u64::MAX - 1, u64::MAX)]);
        assert_eq!(top.count_through(u64::MAX), 2);
    }
}
