//! What the fleet has received: per gateway, every unique record in
//! first-arrival order, de-duplicated by `(gateway, epoch, seq)` (SPEC §7,
//! with slmd's `epoch`), and per gateway and epoch the numbers declared
//! skipped, the seq reuses seen and the counts an [`Audit`] reports.
//!
//! A gateway's records of all its epochs share one list in first-arrival
//! order and one value arena; each record names its epoch by a small index
//! into the gateway's list of epochs. Each epoch maps its seqs to their
//! records, so a duplicate can be compared with the record stored.

use super::audit::{self, Audit, CONFLICTS_KEPT, Conflict, EpochAudit, Ranges, SkippedRange};
use super::record::{IntervalIn, Pending, SKIP_BOUND, SkipIn, Slot, SlotJson, StoredRecord};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Every gateway's records.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Records by gateway id.
    gateways: HashMap<Box<str>, Gateway>,
}

/// One gateway's records.
#[derive(Debug, Default)]
struct Gateway {
    /// Unique records in first-arrival order, all epochs together.
    slots: Vec<Slot>,
    /// The records' metric values, back to back (one allocation for all,
    /// instead of one per record).
    arena: Vec<u64>,
    /// Its epochs in order of first appearance; a record's `epoch_ix` is an
    /// index here.
    epochs: Vec<Epoch>,
    /// Epoch value → index in `epochs`.
    epoch_ix: HashMap<u64, u32>,
    /// The first [`CONFLICTS_KEPT`] conflicts, for reading back.
    conflicts: Vec<Conflict>,
    /// The interval records' own fields by the index of their record in
    /// `slots`: out of line, since interval records are rare (one per
    /// device, length and interval) and a slot stays small.
    intervals: BTreeMap<usize, Box<IntervalIn>>,
}

/// One epoch of one gateway.
#[derive(Debug)]
struct Epoch {
    /// The epoch's value.
    epoch: u64,
    /// Seq → index of its record in the gateway's `slots`: de-duplication,
    /// and the record a duplicate is compared with.
    seen: HashMap<u64, usize>,
    /// The highest seq stored, to count records that arrive out of order.
    max_seq: Option<u64>,
    /// The union of the ranges declared skipped.
    skipped: Ranges,
    /// Declared ranges longer than [`SKIP_BOUND`], each counted once.
    over_bound: HashSet<(u64, u64)>,
    /// Records stored whose seq lies in `skipped`.
    records_in_skips: u64,
    /// Duplicates whose content differed.
    conflicts: u64,
}

impl Epoch {
    /// An epoch with nothing in it yet.
    fn new(epoch: u64) -> Epoch {
        Epoch {
            epoch,
            seen: HashMap::new(),
            max_seq: None,
            skipped: Ranges::default(),
            over_bound: HashSet::new(),
            records_in_skips: 0,
            conflicts: 0,
        }
    }

    /// Records the declared range `from..=to`; counts what it adds into
    /// `stored`.
    fn declare(&mut self, from: u64, to: u64, stored: &mut Stored) {
        if audit::len(from, to) > SKIP_BOUND && self.over_bound.insert((from, to)) {
            stored.skip_ranges_over_bound += 1;
        }
        let new = self.skipped.insert(from, to);
        let numbers = new
            .iter()
            .fold(0u64, |sum, &(a, b)| sum.saturating_add(audit::len(a, b)));
        stored.skipped_numbers = stored.skipped_numbers.saturating_add(numbers);
        // Records already here that the new numbers cover: look each number
        // up, or each record, whichever is fewer.
        let inside = if numbers <= self.seen.len() as u64 {
            new.iter()
                .flat_map(|&(a, b)| a..=b)
                .filter(|seq| self.seen.contains_key(seq))
                .count()
        } else {
            self.seen
                .keys()
                .filter(|&&seq| {
                    let at = new.partition_point(|&(_, b)| b < seq);
                    new.get(at).is_some_and(|&(a, _)| a <= seq)
                })
                .count()
        } as u64;
        self.records_in_skips += inside;
        stored.records_in_skips += inside;
    }
}

/// What storing one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Records new to the fleet.
    pub(crate) accepted: usize,
    /// Records it already had (including repeats within the batch).
    pub(crate) duplicates: usize,
    /// New records with a seq below the highest stored one of their gateway
    /// and epoch.
    pub(crate) out_of_order: usize,
    /// Duplicates whose content differed from the stored record.
    pub(crate) conflicts: usize,
    /// The seq of the first of them.
    pub(crate) first_conflict: Option<u64>,
    /// Numbers the batch's declared skips added to the epoch's union.
    pub(crate) skipped_numbers: u64,
    /// Declared ranges over [`SKIP_BOUND`] not declared before.
    pub(crate) skip_ranges_over_bound: u64,
    /// Records that turned out to lie in a declared skip: new records in
    /// one, and records already stored that a new declaration covers.
    pub(crate) records_in_skips: u64,
    /// Of the new records, interval records (SPEC §11).
    pub(crate) intervals: usize,
}

/// A record as a window over a gateway's records yields it: the slot, its
/// interval fields (interval records), its epoch's value.
type Windowed<'a> = (&'a Slot, Option<&'a IntervalIn>, u64);

/// A gateway with more epochs than a record's epoch index can name.
#[derive(Debug, thiserror::Error)]
#[error("gateway has {} epochs, the most the fleet keeps", u32::MAX)]
pub(crate) struct TooManyEpochs;

impl Store {
    /// Stores the records of `batch`, all of `epoch`, that `gateway` has not
    /// sent before, and the ranges it declares skipped in that epoch.
    pub(crate) fn insert(
        &mut self,
        gateway: &str,
        epoch: u64,
        skipped: &[SkipIn],
        batch: Vec<Pending>,
    ) -> Result<Stored, TooManyEpochs> {
        let store = match self.gateways.get_mut(gateway) {
            Some(store) => store,
            None => self.gateways.entry(gateway.into()).or_default(),
        };
        let ix = match store.epoch_ix.get(&epoch) {
            Some(&ix) => ix,
            None => {
                let ix = u32::try_from(store.epochs.len()).map_err(|_| TooManyEpochs)?;
                store.epochs.push(Epoch::new(epoch));
                store.epoch_ix.insert(epoch, ix);
                ix
            }
        };
        let Gateway {
            slots,
            arena,
            epochs,
            conflicts,
            intervals,
            ..
        } = store;
        let Some(this) = epochs.get_mut(ix as usize) else {
            // The index came from this list.
            return Err(TooManyEpochs);
        };
        let mut stored = Stored::default();
        for skip in skipped {
            this.declare(skip.from, skip.to, &mut stored);
        }
        this.seen.reserve(batch.len());
        slots.reserve(batch.len());
        for mut pending in batch {
            let at = slots.len();
            if let Some(&existing) = this.seen.get(&pending.seq) {
                stored.duplicates += 1;
                let Some(slot) = slots.get(existing) else {
                    continue;
                };
                let interval = intervals.get(&existing).map(|i| &**i);
                if !slot.same_content(arena, interval, &pending) {
                    stored.conflicts += 1;
                    stored.first_conflict.get_or_insert(pending.seq);
                    this.conflicts += 1;
                    if conflicts.len() < CONFLICTS_KEPT {
                        conflicts.push(Conflict {
                            epoch,
                            seq: pending.seq,
                            stored: slot.to_record(arena, interval, epoch),
                            incoming: pending.to_record(epoch),
                        });
                    }
                }
                continue;
            }
            this.seen.insert(pending.seq, at);
            stored.accepted += 1;
            match this.max_seq {
                Some(max) if pending.seq < max => stored.out_of_order += 1,
                _ => this.max_seq = Some(pending.seq),
            }
            if this.skipped.contains(pending.seq) {
                this.records_in_skips += 1;
                stored.records_in_skips += 1;
            }
            if let Some(interval) = pending.interval.take() {
                intervals.insert(at, interval);
                stored.intervals += 1;
            }
            slots.push(Slot::store(pending, ix, arena));
        }
        Ok(stored)
    }

    /// The gateways that sent anything, sorted.
    pub(crate) fn gateways(&self) -> Vec<String> {
        let mut names: Vec<String> = self.gateways.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// `gateway`'s unique records (of `epoch` only, when given; interval
    /// records only, with `intervals_only`) in first-arrival order, from
    /// index `from` of those, at most `limit`; each with its interval fields
    /// and its epoch's value.
    fn window(
        &self,
        gateway: &str,
        epoch: Option<u64>,
        from: usize,
        limit: Option<usize>,
        intervals_only: bool,
    ) -> (impl Iterator<Item = Windowed<'_>> + '_, &[u64]) {
        let store = self.gateways.get(gateway);
        let (slots, arena, epochs): (&[Slot], &[u64], &[Epoch]) = match store {
            Some(store) => (&store.slots, &store.arena, &store.epochs),
            None => (&[], &[], &[]),
        };
        let extra = store.map(|store| &store.intervals);
        // Without a filter, `from` is a slice index; with one, it counts the
        // records selected.
        let (start, only, skip) = match epoch {
            None if !intervals_only => (from.min(slots.len()), None, 0),
            None => (0, None, from),
            Some(epoch) => match store.and_then(|store| store.epoch_ix.get(&epoch)) {
                Some(&ix) => (0, Some(ix), from),
                None => (slots.len(), None, 0),
            },
        };
        let records = slots[start..]
            .iter()
            .enumerate()
            .map(move |(i, slot)| (start + i, slot))
            .filter(move |(_, slot)| only.is_none_or(|ix| slot.epoch_ix == ix))
            .filter(move |(_, slot)| !intervals_only || slot.is_interval())
            .skip(skip)
            .take(limit.unwrap_or(usize::MAX))
            .map(move |(at, slot)| {
                let epoch = epochs.get(slot.epoch_ix as usize).map_or(0, |e| e.epoch);
                let interval = extra.and_then(|extra| extra.get(&at)).map(|i| &**i);
                (slot, interval, epoch)
            });
        (records, arena)
    }

    /// `gateway`'s records in the public form.
    pub(crate) fn records(
        &self,
        gateway: &str,
        epoch: Option<u64>,
        from: usize,
        limit: Option<usize>,
    ) -> Vec<StoredRecord> {
        self.select(gateway, epoch, from, limit, false)
    }

    /// `gateway`'s interval records in the public form, in first-arrival
    /// order.
    pub(crate) fn intervals(&self, gateway: &str, epoch: Option<u64>) -> Vec<StoredRecord> {
        self.select(gateway, epoch, 0, None, true)
    }

    /// `gateway`'s records (interval records only, with `intervals_only`)
    /// in the public form.
    fn select(
        &self,
        gateway: &str,
        epoch: Option<u64>,
        from: usize,
        limit: Option<usize>,
        intervals_only: bool,
    ) -> Vec<StoredRecord> {
        let (slots, arena) = self.window(gateway, epoch, from, limit, intervals_only);
        slots
            .map(|(slot, interval, epoch)| slot.to_record(arena, interval, epoch))
            .collect()
    }

    /// `gateway`'s records ready to serialize as SPEC §3.
    pub(crate) fn records_json(
        &self,
        gateway: &str,
        epoch: Option<u64>,
        from: usize,
        limit: Option<usize>,
        intervals_only: bool,
    ) -> impl Iterator<Item = SlotJson<'_>> + '_ {
        let (slots, arena) = self.window(gateway, epoch, from, limit, intervals_only);
        slots.map(move |(slot, interval, epoch)| slot.json(arena, interval, epoch))
    }

    /// `gateway`'s sequence numbers in first-arrival order.
    pub(crate) fn seqs(
        &self,
        gateway: &str,
        epoch: Option<u64>,
        from: usize,
        limit: Option<usize>,
    ) -> Vec<u64> {
        let (slots, _) = self.window(gateway, epoch, from, limit, false);
        slots.map(|(slot, _, _)| slot.seq).collect()
    }

    /// `gateway`'s epochs (only `epoch`, when given), by epoch value.
    fn epochs(&self, gateway: &str, epoch: Option<u64>) -> Vec<&Epoch> {
        let mut epochs: Vec<&Epoch> = self
            .gateways
            .get(gateway)
            .map(|store| {
                store
                    .epochs
                    .iter()
                    .filter(|e| epoch.is_none_or(|want| e.epoch == want))
                    .collect()
            })
            .unwrap_or_default();
        epochs.sort_unstable_by_key(|e| e.epoch);
        epochs
    }

    /// The conflicts kept for `gateway` (of `epoch` only, when given), in the
    /// order seen, and how many there were in all.
    pub(crate) fn conflicts(&self, gateway: &str, epoch: Option<u64>) -> (Vec<Conflict>, u64) {
        let kept = self
            .gateways
            .get(gateway)
            .map(|store| {
                store
                    .conflicts
                    .iter()
                    .filter(|c| epoch.is_none_or(|want| c.epoch == want))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let total = self
            .epochs(gateway, epoch)
            .iter()
            .map(|e| e.conflicts)
            .sum();
        (kept, total)
    }

    /// The union of `gateway`'s declared skips (of `epoch` only, when
    /// given), by epoch, then by number.
    pub(crate) fn skipped(&self, gateway: &str, epoch: Option<u64>) -> Vec<SkippedRange> {
        self.epochs(gateway, epoch)
            .into_iter()
            .flat_map(|e| {
                e.skipped.iter().map(|(from, to)| SkippedRange {
                    epoch: e.epoch,
                    from,
                    to,
                })
            })
            .collect()
    }

    /// What an audit of `gateway` needs, copied out so the sorting and the
    /// walk run without the state lock.
    pub(crate) fn audit_input(&self, gateway: &str, epoch: Option<u64>) -> AuditInput {
        let epochs = self
            .epochs(gateway, epoch)
            .into_iter()
            .map(|e| EpochInput {
                epoch: e.epoch,
                seqs: e.seen.keys().copied().collect(),
                skipped: e.skipped.iter().collect(),
                skipped_numbers: e.skipped.numbers(),
                records_in_skips: e.records_in_skips,
                conflicts: e.conflicts,
            })
            .collect();
        AuditInput {
            gateway: gateway.to_owned(),
            epochs,
        }
    }
}

/// A gateway's epochs as an audit reads them.
#[derive(Debug)]
pub(crate) struct AuditInput {
    /// The gateway.
    gateway: String,
    /// Its epochs by value.
    epochs: Vec<EpochInput>,
}

/// One epoch as an audit reads it.
#[derive(Debug)]
struct EpochInput {
    /// The epoch.
    epoch: u64,
    /// Its seqs, unsorted.
    seqs: Vec<u64>,
    /// Its declared skips, merged, sorted.
    skipped: Vec<(u64, u64)>,
    /// Numbers in them.
    skipped_numbers: u64,
    /// Records stored in them.
    records_in_skips: u64,
    /// Seq reuses seen.
    conflicts: u64,
}

impl AuditInput {
    /// The audit: sorts each epoch's seqs once and walks them beside the
    /// declared skips.
    pub(crate) fn audit(self) -> Audit {
        let epochs = self
            .epochs
            .into_iter()
            .map(|mut e| {
                e.seqs.sort_unstable();
                let (holes, hole_ranges, missing) = audit::holes(&e.seqs, &e.skipped);
                EpochAudit {
                    epoch: e.epoch,
                    records: e.seqs.len() as u64,
                    min_seq: e.seqs.first().copied(),
                    max_seq: e.seqs.last().copied(),
                    skipped_numbers: e.skipped_numbers,
                    skipped_ranges: e.skipped.len() as u64,
                    holes,
                    hole_ranges,
                    missing,
                    records_in_skips: e.records_in_skips,
                    conflicts: e.conflicts,
                }
            })
            .collect();
        Audit {
            gateway: self.gateway,
            epochs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Interner, prepared};
    use super::*;

    /// A checked batch of records `seqs`, each with metric `lp` = `lp(seq)`.
    fn batch_with(interner: &mut Interner, seqs: &[u64], lp: impl Fn(u64) -> f64) -> Vec<Pending> {
        let records: Vec<String> = seqs
            .iter()
            .map(|&seq| {
                format!(
                    r#"{{"seq":{seq},"device":"d","received_at":"2026-01-01T00:00:00.000Z","device_time":null,"metrics":{{"lp":{:?}}},"state":"measuring","flags":[]}}"#,
                    lp(seq)
                )
            })
            .collect();
        let records: Vec<&str> = records.iter().map(String::as_str).collect();
        prepared(interner, &records)
    }

    fn batch(interner: &mut Interner, seqs: &[u64]) -> Vec<Pending> {
        batch_with(interner, seqs, |seq| seq as f64 + 0.5)
    }

    fn skips(ranges: &[(u64, u64)]) -> Vec<SkipIn> {
        ranges
            .iter()
            .map(|&(from, to)| SkipIn { from, to })
            .collect()
    }

    fn insert(store: &mut Store, gw: &str, epoch: u64, batch: Vec<Pending>) -> Stored {
        store.insert(gw, epoch, &[], batch).expect("stored")
    }

    #[test]
    fn de_duplicates_by_gateway_and_seq() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        let first = insert(&mut store, "gw", 0, batch(&mut interner, &[5, 6, 6, 7]));
        assert_eq!(
            first,
            Stored {
                accepted: 3,
                duplicates: 1,
                ..Stored::default()
            }
        );
        let again = insert(&mut store, "gw", 0, batch(&mut interner, &[3, 7, 8]));
        assert_eq!(
            again,
            Stored {
                accepted: 2,
                duplicates: 1,
                out_of_order: 1,
                ..Stored::default()
            }
        );
        // Another gateway has its own seq space.
        assert_eq!(
            insert(&mut store, "other", 0, batch(&mut interner, &[5])).accepted,
            1
        );
        assert_eq!(store.seqs("gw", None, 0, None), vec![5, 6, 7, 3, 8]);
        assert_eq!(store.seqs("gw", None, 1, Some(2)), vec![6, 7]);
        assert_eq!(store.seqs("gw", None, 9, Some(2)), Vec::<u64>::new());
        assert_eq!(store.seqs("nobody", None, 0, None), Vec::<u64>::new());
        let records = store.records("gw", None, 3, None);
        assert_eq!(records[0].seq, 3);
        assert_eq!(records[0].metric("lp"), Some(Some(3.5)));
        assert_eq!(records[1].metric("lp"), Some(Some(8.5)));
        assert_eq!(store.gateways(), vec!["gw".to_owned(), "other".to_owned()]);
        assert_eq!(store.conflicts("gw", None), (vec![], 0));
    }

    /// A checked interval record `seq` with coverage `coverage`.
    fn interval(interner: &mut Interner, seq: u64, coverage: &str) -> Pending {
        let record = format!(
            r#"{{"seq":{seq},"kind":"interval","device":"d","received_at":"2026-01-01T00:15:00.000Z","device_time":null,"interval_start":"2026-01-01T00:00:00Z","interval_length":"15m","metrics":{{"leq":61.2}},"readings":897,"coverage":{coverage},"state":"measuring","flags":["low_coverage"]}}"#
        );
        prepared(interner, &[&record]).pop().expect("one record")
    }

    #[test]
    fn interval_records_are_kept_beside_the_readings() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        let mut first = batch(&mut interner, &[1, 2]);
        first.push(interval(&mut interner, 3, "0.997"));
        first.extend(batch(&mut interner, &[4]));
        let stored = insert(&mut store, "gw", 0, first);
        assert_eq!((stored.accepted, stored.intervals), (4, 1));
        let mut second = vec![interval(&mut interner, 6, "1")];
        second.extend(batch(&mut interner, &[5]));
        // A re-send; seq 3 of another epoch is new.
        second.push(interval(&mut interner, 6, "1"));
        second.push(interval(&mut interner, 3, "0.5"));
        let stored = insert(&mut store, "gw", 7, second);
        assert_eq!(
            (stored.accepted, stored.intervals, stored.duplicates),
            (3, 2, 1)
        );
        let stored = insert(&mut store, "gw", 0, vec![interval(&mut interner, 3, "0.5")]);
        assert_eq!((stored.duplicates, stored.conflicts), (1, 1));
        let (conflicts, _) = store.conflicts("gw", None);
        let coverage = |r: &StoredRecord| r.interval.as_ref().map(|i| i.coverage.to_string());
        assert_eq!(coverage(&conflicts[0].stored).as_deref(), Some("0.997"));
        assert_eq!(coverage(&conflicts[0].incoming).as_deref(), Some("0.5"));

        let intervals = store.intervals("gw", None);
        assert_eq!(
            intervals
                .iter()
                .map(|r| (r.epoch, r.seq))
                .collect::<Vec<_>>(),
            vec![(0, 3), (7, 6), (7, 3)]
        );
        assert_eq!(
            intervals[1].interval.as_ref().map(|i| i.readings),
            Some(897)
        );
        assert_eq!(store.intervals("gw", Some(7)).len(), 2);
        assert!(store.intervals("other", None).is_empty());
        let all = store.records("gw", None, 0, None);
        assert_eq!(all.len(), 7);
        assert!(all[2].interval.is_some() && all[3].interval.is_none());
        let json: Vec<serde_json::Value> = store
            .records_json("gw", None, 1, None, true)
            .map(|r| serde_json::to_value(&r).expect("JSON"))
            .collect();
        assert_eq!(json.len(), 2);
        assert_eq!(
            (&json[0]["epoch"], &json[0]["seq"], &json[0]["coverage"]),
            (
                &serde_json::json!(7),
                &serde_json::json!(6),
                &serde_json::json!(1)
            )
        );
        let json: Vec<serde_json::Value> = store
            .records_json("gw", None, 2, Some(2), false)
            .map(|r| serde_json::to_value(&r).expect("JSON"))
            .collect();
        assert_eq!(
            (
                &json[0]["kind"],
                &json[0]["interval_length"],
                &json[1]["kind"]
            ),
            (
                &serde_json::json!("interval"),
                &serde_json::json!("15m"),
                &serde_json::Value::Null
            )
        );
    }

    #[test]
    fn each_epoch_has_its_own_seq_space() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        insert(&mut store, "gw", 0, batch(&mut interner, &[1, 2, 3]));
        let other = insert(&mut store, "gw", 7, batch(&mut interner, &[1, 2, 9]));
        assert_eq!(
            (other.accepted, other.duplicates, other.out_of_order),
            (3, 0, 0)
        );
        let again = insert(&mut store, "gw", 7, batch(&mut interner, &[2, 4]));
        assert_eq!(
            (again.accepted, again.duplicates, again.out_of_order),
            (1, 1, 1)
        );
        assert_eq!(store.seqs("gw", None, 0, None), vec![1, 2, 3, 1, 2, 9, 4]);
        assert_eq!(store.seqs("gw", Some(0), 0, None), vec![1, 2, 3]);
        assert_eq!(store.seqs("gw", Some(7), 0, None), vec![1, 2, 9, 4]);
        assert_eq!(store.seqs("gw", Some(7), 1, Some(2)), vec![2, 9]);
        assert_eq!(store.seqs("gw", Some(8), 0, None), Vec::<u64>::new());
        let records = store.records("gw", Some(7), 0, Some(1));
        assert_eq!((records[0].epoch, records[0].seq), (7, 1));
        let json: Vec<String> = store
            .records_json("gw", None, 2, Some(2), false)
            .map(|r| serde_json::to_string(&r).expect("JSON"))
            .collect();
        assert!(json[0].starts_with(r#"{"seq":3,"#), "{}", json[0]);
        assert!(json[1].starts_with(r#"{"epoch":7,"seq":1,"#), "{}", json[1]);
    }

    #[test]
    fn a_duplicate_with_other_content_is_a_conflict() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        insert(&mut store, "gw", 3, batch(&mut interner, &[1, 2]));
        let resend = insert(&mut store, "gw", 3, batch(&mut interner, &[1, 2]));
        assert_eq!((resend.duplicates, resend.conflicts), (2, 0));
        // Seqs 2 and 1 with other values; 5 new, then again identical.
        let reused = insert(
            &mut store,
            "gw",
            3,
            batch_with(&mut interner, &[2, 5, 1, 5], |seq| seq as f64 + 0.25),
        );
        assert_eq!(
            reused,
            Stored {
                accepted: 1,
                duplicates: 3,
                conflicts: 2,
                first_conflict: Some(2),
                ..Stored::default()
            }
        );
        // A repeat within one batch with other content.
        let mut twice = batch_with(&mut interner, &[6], |_| 1.0);
        twice.extend(batch_with(&mut interner, &[6], |_| 2.0));
        let within = insert(&mut store, "gw", 3, twice);
        assert_eq!(
            (within.accepted, within.duplicates, within.conflicts),
            (1, 1, 1)
        );
        // Another epoch: no conflict, a new record.
        assert_eq!(
            insert(
                &mut store,
                "gw",
                4,
                batch_with(&mut interner, &[1], |_| 9.0)
            )
            .accepted,
            1
        );
        let (kept, total) = store.conflicts("gw", None);
        assert_eq!(total, 3);
        assert_eq!(
            kept.iter().map(|c| (c.epoch, c.seq)).collect::<Vec<_>>(),
            vec![(3, 2), (3, 1), (3, 6)]
        );
        assert_eq!(kept[0].stored.metric("lp"), Some(Some(2.5)));
        assert_eq!(kept[0].incoming.metric("lp"), Some(Some(2.25)));
        assert_eq!((kept[0].stored.epoch, kept[0].incoming.epoch), (3, 3));
        assert_eq!(kept[2].stored.metric("lp"), Some(Some(1.0)));
        assert_eq!(kept[2].incoming.metric("lp"), Some(Some(2.0)));
        assert_eq!(store.conflicts("gw", Some(4)), (vec![], 0));
        assert_eq!(
            store.records("gw", Some(3), 0, None)[1].metric("lp"),
            Some(Some(2.5))
        );
    }

    #[test]
    fn conflicts_are_kept_up_to_the_cap_and_counted_in_all() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        let seqs: Vec<u64> = (0..CONFLICTS_KEPT as u64 + 5).collect();
        insert(&mut store, "gw", 0, batch(&mut interner, &seqs));
        let reused = insert(
            &mut store,
            "gw",
            0,
            batch_with(&mut interner, &seqs, |_| 1.0),
        );
        assert_eq!(reused.conflicts, seqs.len());
        let (kept, total) = store.conflicts("gw", None);
        assert_eq!((kept.len(), total), (CONFLICTS_KEPT, seqs.len() as u64));
    }

    #[test]
    fn declared_skips_are_merged_and_records_in_them_counted() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        // A record first, then a declaration covering it.
        insert(&mut store, "gw", 0, batch(&mut interner, &[1, 2, 3, 20]));
        let declared = store
            .insert("gw", 0, &skips(&[(3, 5), (10, 12), (3, 5)]), vec![])
            .expect("stored");
        assert_eq!(
            (declared.skipped_numbers, declared.records_in_skips),
            (6, 1)
        );
        // A declaration first, then a record inside it; a repeat adds nothing.
        let later = store
            .insert(
                "gw",
                0,
                &skips(&[(4, 6), (10, 12)]),
                batch(&mut interner, &[11, 21]),
            )
            .expect("stored");
        assert_eq!(
            (
                later.skipped_numbers,
                later.records_in_skips,
                later.accepted
            ),
            (1, 1, 2)
        );
        // A wide declaration counts the records it covers by walking them.
        let wide = store
            .insert("gw", 0, &skips(&[(0, 30_000)]), vec![])
            .expect("stored");
        assert_eq!(wide.records_in_skips, 4, "1, 2, 20, 21");
        assert_eq!(wide.skip_ranges_over_bound, 1);
        assert_eq!(wide.skipped_numbers, 30_001 - 7);
        let again = store
            .insert(
                "gw",
                0,
                &skips(&[(0, 30_000), (5, 10_004), (5, 10_005)]),
                vec![],
            )
            .expect("stored");
        assert_eq!(
            (
                again.skip_ranges_over_bound,
                again.skipped_numbers,
                again.records_in_skips
            ),
            (1, 0, 0),
            "only (5, 10005) is new and over the bound"
        );
        // Other epochs and gateways are apart.
        let elsewhere = store
            .insert("gw", 1, &skips(&[(1, 1)]), batch(&mut interner, &[1]))
            .expect("stored");
        assert_eq!(
            (elsewhere.skipped_numbers, elsewhere.records_in_skips),
            (1, 1)
        );
        assert_eq!(
            store.skipped("gw", None),
            vec![
                SkippedRange {
                    epoch: 0,
                    from: 0,
                    to: 30_000
                },
                SkippedRange {
                    epoch: 1,
                    from: 1,
                    to: 1
                }
            ]
        );
        assert_eq!(store.skipped("gw", Some(1)).len(), 1);
        assert_eq!(store.skipped("other", None), vec![]);
    }

    #[test]
    fn an_audit_finds_the_undeclared_holes_per_epoch() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        insert(&mut store, "gw", 9, batch(&mut interner, &[10, 11, 15, 20]));
        store
            .insert("gw", 9, &skips(&[(12, 13), (18, 19), (100, 200)]), vec![])
            .expect("stored");
        insert(&mut store, "gw", 2, batch(&mut interner, &[5, 3, 1]));
        store
            .insert("gw", 4, &skips(&[(1, 2)]), vec![])
            .expect("stored");
        let audit = store.audit_input("gw", None).audit();
        assert_eq!(audit.gateway, "gw");
        assert_eq!(
            audit.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            vec![2, 4, 9]
        );
        let two = &audit.epochs[0];
        assert_eq!(
            (two.records, two.min_seq, two.max_seq),
            (3, Some(1), Some(5))
        );
        assert_eq!(
            two.holes,
            vec![
                audit::Hole { from: 2, to: 2 },
                audit::Hole { from: 4, to: 4 }
            ]
        );
        assert_eq!((two.hole_ranges, two.missing), (2, 2));
        let four = &audit.epochs[1];
        assert_eq!(
            (four.records, four.min_seq, four.skipped_numbers),
            (0, None, 2)
        );
        assert!(four.holes.is_empty());
        let nine = &audit.epochs[2];
        assert_eq!(
            nine.holes,
            vec![
                audit::Hole { from: 14, to: 14 },
                audit::Hole { from: 16, to: 17 }
            ]
        );
        assert_eq!(
            (nine.missing, nine.skipped_numbers, nine.skipped_ranges),
            (3, 105, 3)
        );
        assert_eq!(store.audit_input("gw", Some(4)).audit().epochs.len(), 1);
        assert!(store.audit_input("nobody", None).audit().epochs.is_empty());
    }
}
