//! What the fleet can say about a gateway's numbering, beyond storing its
//! records: seq reuse ([`Conflict`]), the numbers it declared skipped
//! ([`SkippedRange`]) and the holes nobody explained ([`Audit`]).
//!
//! slmd's push body may carry, besides SPEC §7's fields, an `epoch` (the
//! gateway's numbering epoch: a new one only when it lost track of the numbers
//! it used, so numbers may repeat across epochs) and `skipped` (`[from, to]`
//! ranges of that epoch's seqs handed out or reserved but never stored). The
//! fleet keys records by `(gateway, epoch, seq)`, so:
//!
//! - a record whose key is stored already is a duplicate; if its content
//!   differs from the stored one, the gateway reused a number: a conflict;
//! - a number declared skipped and also received is a contradiction
//!   (`records_in_skips`), whichever arrived first;
//! - a number between an epoch's lowest and highest seq that was neither
//!   received nor declared skipped is a hole: a record lost.
//!
//! Declared ranges are kept per gateway and epoch as their union: sorted,
//! disjoint, non-adjacent ranges, so a range re-sent until acknowledged, or
//! overlapping another, counts its numbers once.

use super::record::StoredRecord;
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Bound;

/// Conflicts kept per gateway for reading back (all are counted).
pub const CONFLICTS_KEPT: usize = 1000;

/// Hole ranges listed per epoch in an [`Audit`] (all are counted).
pub const HOLES_LISTED: usize = 100;

/// A seq that came again with other content: the gateway reused a number
/// within one epoch. Answered as a duplicate all the same.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Conflict {
    /// The epoch of both records.
    pub epoch: u64,
    /// The seq they share.
    pub seq: u64,
    /// The record the fleet had (and keeps).
    pub stored: StoredRecord,
    /// The record that came with the same `(gateway, epoch, seq)`.
    pub incoming: StoredRecord,
}

/// Numbers a gateway declared skipped in one epoch: a range of their union.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedRange {
    /// The epoch.
    pub epoch: u64,
    /// First number (inclusive).
    pub from: u64,
    /// Last number (inclusive).
    pub to: u64,
}

/// Numbers `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Hole {
    /// First number missing.
    pub from: u64,
    /// Last number missing.
    pub to: u64,
}

/// One gateway's numbering, epoch by epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// The gateway.
    pub gateway: String,
    /// Its epochs (those under which a batch was stored), by epoch value.
    pub epochs: Vec<EpochAudit>,
}

/// One epoch of a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EpochAudit {
    /// The epoch.
    pub epoch: u64,
    /// Unique records received.
    pub records: u64,
    /// Lowest seq received, if any.
    pub min_seq: Option<u64>,
    /// Highest seq received, if any.
    pub max_seq: Option<u64>,
    /// Numbers declared skipped (the union of the declared ranges, wherever
    /// they lie).
    pub skipped_numbers: u64,
    /// Ranges in that union.
    pub skipped_ranges: u64,
    /// Undeclared holes between `min_seq` and `max_seq`: numbers neither
    /// received nor declared skipped; the first [`HOLES_LISTED`] ranges.
    pub holes: Vec<Hole>,
    /// Hole ranges in all (`holes` lists the first ones).
    pub hole_ranges: u64,
    /// Numbers in all holes.
    pub missing: u64,
    /// Records received whose seq lies in a declared skipped range.
    pub records_in_skips: u64,
    /// Duplicates of this epoch whose content differed (seq reuse).
    pub conflicts: u64,
}

/// Numbers in `from..=to` (saturating: `[0, u64::MAX]` counts `u64::MAX`).
pub(crate) fn len(from: u64, to: u64) -> u64 {
    (to - from).saturating_add(1)
}

/// A set of numbers as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default)]
pub(crate) struct Ranges {
    /// `from` → `to`.
    map: BTreeMap<u64, u64>,
    /// Numbers in the set (saturating).
    numbers: u64,
}

impl Ranges {
    /// Adds `from..=to` (`from <= to`); returns the parts that were not in the
    /// set before, in order.
    pub(crate) fn insert(&mut self, from: u64, to: u64) -> Vec<(u64, u64)> {
        // Ranges that overlap or touch the new one: the one starting at or
        // before `from` if it reaches `from - 1`, and those starting inside
        // `from + 1..=to + 1`.
        let mut touched: Vec<(u64, u64)> = Vec::new();
        if let Some((&start, &end)) = self.map.range(..=from).next_back() {
            if end.saturating_add(1) >= from {
                touched.push((start, end));
            }
        }
        touched.extend(
            self.map
                .range((Bound::Excluded(from), Bound::Included(to.saturating_add(1))))
                .map(|(&start, &end)| (start, end)),
        );
        // Walk `from..=to` past the touched ranges (sorted, disjoint); `at`
        // is the next number not yet looked at, `None` past `u64::MAX`.
        let mut new = Vec::new();
        let mut at = Some(from);
        for &(start, end) in &touched {
            let Some(next) = at.filter(|&next| next <= to) else {
                break;
            };
            if start > next {
                new.push((next, (start - 1).min(to)));
            }
            if end >= next {
                at = end.checked_add(1);
            }
        }
        if let Some(next) = at.filter(|&next| next <= to) {
            new.push((next, to));
        }
        let merged_from = touched.first().map_or(from, |&(start, _)| start.min(from));
        let merged_to = touched.last().map_or(to, |&(_, end)| end.max(to));
        for (start, _) in &touched {
            self.map.remove(start);
        }
        self.map.insert(merged_from, merged_to);
        for &(a, b) in &new {
            self.numbers = self.numbers.saturating_add(len(a, b));
        }
        new
    }

    /// Whether `n` is in the set.
    pub(crate) fn contains(&self, n: u64) -> bool {
        self.map
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &end)| n <= end)
    }

    /// The ranges in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&from, &to)| (from, to))
    }

    /// Numbers in the set (saturating).
    pub(crate) fn numbers(&self) -> u64 {
        self.numbers
    }
}

/// The undeclared holes of one epoch: `seqs` sorted ascending (unique),
/// `skipped` sorted disjoint ranges. Returns the first [`HOLES_LISTED`]
/// holes, the number of hole ranges and the numbers missing in all.
pub(crate) fn holes(seqs: &[u64], skipped: &[(u64, u64)]) -> (Vec<Hole>, u64, u64) {
    let mut listed = Vec::new();
    let (mut ranges, mut missing) = (0u64, 0u64);
    // Skipped ranges ending before the current gap are behind us for good:
    // gaps come in ascending order.
    let mut next_skip = 0;
    for pair in seqs.windows(2) {
        let (low, high) = (pair[0], pair[1]);
        if high - low < 2 {
            continue;
        }
        // The gap low+1..=high-1, minus the skipped ranges.
        let (gap_to, mut at) = (high - 1, low + 1);
        while next_skip < skipped.len() && skipped[next_skip].1 < at {
            next_skip += 1;
        }
        let mut k = next_skip;
        while at <= gap_to {
            match skipped.get(k) {
                Some(&(from, to)) if from <= gap_to => {
                    if from > at {
                        let hole = Hole {
                            from: at,
                            to: from - 1,
                        };
                        ranges += 1;
                        missing = missing.saturating_add(len(hole.from, hole.to));
                        if listed.len() < HOLES_LISTED {
                            listed.push(hole);
                        }
                    }
                    match to.checked_add(1) {
                        Some(next) => at = at.max(next),
                        None => break,
                    }
                    k += 1;
                }
                _ => {
                    let hole = Hole {
                        from: at,
                        to: gap_to,
                    };
                    ranges += 1;
                    missing = missing.saturating_add(len(hole.from, hole.to));
                    if listed.len() < HOLES_LISTED {
                        listed.push(hole);
                    }
                    break;
                }
            }
        }
    }
    (listed, ranges, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(u64, u64)]) -> Ranges {
        let mut set = Ranges::default();
        for &(a, b) in ranges {
            set.insert(a, b);
        }
        set
    }

    #[test]
    fn ranges_merge_overlaps_repeats_and_neighbours() {
        let mut s = Ranges::default();
        assert_eq!(s.insert(10, 20), vec![(10, 20)]);
        assert_eq!(s.insert(10, 20), vec![], "a repeat adds nothing");
        assert_eq!(s.insert(15, 25), vec![(21, 25)]);
        assert_eq!(s.insert(30, 30), vec![(30, 30)]);
        assert_eq!(s.insert(26, 29), vec![(26, 29)], "touching both sides");
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(10, 30)]);
        assert_eq!(s.numbers(), 21);
        assert_eq!(s.insert(40, 50), vec![(40, 50)]);
        assert_eq!(s.insert(60, 70), vec![(60, 70)]);
        assert_eq!(s.insert(5, 65), vec![(5, 9), (31, 39), (51, 59)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(5, 70)]);
        assert_eq!(s.numbers(), 66);
        assert_eq!(s.insert(7, 8), vec![], "inside");
        assert!(s.contains(5) && s.contains(70) && !s.contains(4) && !s.contains(71));
    }

    #[test]
    fn ranges_survive_the_ends_of_u64() {
        let mut s = set(&[(0, 0), (u64::MAX, u64::MAX)]);
        assert_eq!(s.numbers(), 2);
        assert_eq!(s.insert(0, u64::MAX), vec![(1, u64::MAX - 1)]);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![(0, u64::MAX)]);
        assert_eq!(s.numbers(), u64::MAX, "saturated");
        assert!(s.contains(u64::MAX) && s.contains(0));
        let mut t = set(&[(u64::MAX - 5, u64::MAX)]);
        assert_eq!(
            t.insert(u64::MAX - 9, u64::MAX),
            vec![(u64::MAX - 9, u64::MAX - 6)]
        );
        assert_eq!(t.numbers(), 10);
    }

    #[test]
    fn ranges_match_a_model() {
        // Against a plain set of numbers, over random small ranges.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut s = Ranges::default();
            let mut model = std::collections::BTreeSet::new();
            for _ in 0..20 {
                let a = rng.u64(0..100);
                let b = a + rng.u64(0..15);
                let new = s.insert(a, b);
                let expected: Vec<u64> = (a..=b).filter(|n| !model.contains(n)).collect();
                let got: Vec<u64> = new.iter().flat_map(|&(x, y)| x..=y).collect();
                assert_eq!(got, expected);
                model.extend(a..=b);
                assert_eq!(s.numbers(), model.len() as u64);
                let flat: Vec<u64> = s.iter().flat_map(|(x, y)| x..=y).collect();
                assert_eq!(flat, model.iter().copied().collect::<Vec<_>>());
                let pairs: Vec<(u64, u64)> = s.iter().collect();
                for w in pairs.windows(2) {
                    assert!(w[0].1 + 1 < w[1].0, "disjoint, not touching: {pairs:?}");
                }
            }
        }
    }

    #[test]
    fn holes_leave_out_declared_skips() {
        let seqs = [1, 2, 3, 10, 11, 20, 30];
        let (listed, ranges, missing) = holes(&seqs, &[]);
        assert_eq!(
            listed,
            vec![
                Hole { from: 4, to: 9 },
                Hole { from: 12, to: 19 },
                Hole { from: 21, to: 29 }
            ]
        );
        assert_eq!((ranges, missing), (3, 23));
        let skipped = [(0, 1), (5, 6), (8, 15), (21, 29), (40, 50)];
        let (listed, ranges, missing) = holes(&seqs, &skipped);
        assert_eq!(
            listed,
            vec![
                Hole { from: 4, to: 4 },
                Hole { from: 7, to: 7 },
                Hole { from: 16, to: 19 }
            ]
        );
        assert_eq!((ranges, missing), (3, 6));
        assert_eq!(holes(&[], &skipped), (vec![], 0, 0));
        assert_eq!(holes(&[5], &[]), (vec![], 0, 0));
        assert_eq!(holes(&[0, u64::MAX], &[(1, u64::MAX)]), (vec![], 0, 0));
        let (_, ranges, missing) = holes(&[0, u64::MAX], &[]);
        assert_eq!((ranges, missing), (1, u64::MAX - 1));
    }

    #[test]
    fn holes_are_listed_up_to_the_cap_and_counted_in_all() {
        let seqs: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        let (listed, ranges, missing) = holes(&seqs, &[]);
        assert_eq!(listed.len(), HOLES_LISTED);
        assert_eq!(listed[0], Hole { from: 1, to: 2 });
        assert_eq!((ranges, missing), (999, 1998));
    }

    #[test]
    fn holes_match_a_model() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..300 {
            let mut seqs: Vec<u64> = (0..rng.usize(0..30)).map(|_| rng.u64(0..120)).collect();
            seqs.sort_unstable();
            seqs.dedup();
            let skips = set(&(0..rng.usize(0..6))
                .map(|_| {
                    let a = rng.u64(0..120);
                    (a, a + rng.u64(0..20))
                })
                .collect::<Vec<_>>());
            let skipped: Vec<(u64, u64)> = skips.iter().collect();
            let (listed, ranges, missing) = holes(&seqs, &skipped);
            let expected: Vec<u64> = match (seqs.first(), seqs.last()) {
                (Some(&lo), Some(&hi)) => (lo..=hi)
                    .filter(|n| seqs.binary_search(n).is_err() && !skips.contains(*n))
                    .collect(),
                _ => Vec::new(),
            };
            let got: Vec<u64> = listed.iter().flat_map(|h| h.from..=h.to).collect();
            assert_eq!(got, expected, "{seqs:?} {skipped:?}");
            assert_eq!(missing, expected.len() as u64);
            assert_eq!(ranges, listed.len() as u64);
        }
    }
}
