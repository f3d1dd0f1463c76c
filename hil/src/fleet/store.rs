//! What the fleet has received: per gateway, every unique record in
//! first-arrival order, de-duplicated by `(gateway, seq)` (SPEC §7).

use super::record::{Pending, Slot, SlotJson, StoredRecord};
use std::collections::{HashMap, HashSet};

/// Every gateway's records.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// Records by gateway id.
    gateways: HashMap<Box<str>, Gateway>,
}

/// One gateway's records.
#[derive(Debug, Default)]
struct Gateway {
    /// Unique records in first-arrival order.
    slots: Vec<Slot>,
    /// The records' metric values, back to back (one allocation for all,
    /// instead of one per record).
    arena: Vec<u64>,
    /// The sequence numbers stored, for de-duplication.
    seen: HashSet<u64>,
    /// The highest sequence number stored, to count records that arrive out
    /// of order.
    max_seq: Option<u64>,
}

/// What storing one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Records new to the fleet.
    pub(crate) accepted: usize,
    /// Records it already had (including repeats within the batch).
    pub(crate) duplicates: usize,
    /// New records with a seq below the gateway's highest stored one.
    pub(crate) out_of_order: usize,
}

impl Store {
    /// Stores the records of `batch` that `gateway` has not sent before.
    pub(crate) fn insert(&mut self, gateway: &str, batch: Vec<Pending>) -> Stored {
        let store = match self.gateways.get_mut(gateway) {
            Some(store) => store,
            None => self.gateways.entry(gateway.into()).or_default(),
        };
        store.seen.reserve(batch.len());
        store.slots.reserve(batch.len());
        let mut stored = Stored::default();
        for pending in batch {
            if !store.seen.insert(pending.seq) {
                stored.duplicates += 1;
                continue;
            }
            stored.accepted += 1;
            match store.max_seq {
                Some(max) if pending.seq < max => stored.out_of_order += 1,
                _ => store.max_seq = Some(pending.seq),
            }
            store.slots.push(Slot::store(pending, &mut store.arena));
        }
        stored
    }

    /// The gateways that sent anything, sorted.
    pub(crate) fn gateways(&self) -> Vec<String> {
        let mut names: Vec<String> = self.gateways.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }

    /// `gateway`'s unique records in first-arrival order, from index `from`,
    /// at most `limit`.
    fn window(&self, gateway: &str, from: usize, limit: Option<usize>) -> (&[Slot], &[u64]) {
        let Some(store) = self.gateways.get(gateway) else {
            return (&[], &[]);
        };
        let from = from.min(store.slots.len());
        let end = limit.map_or(store.slots.len(), |limit| {
            from.saturating_add(limit).min(store.slots.len())
        });
        (&store.slots[from..end], &store.arena)
    }

    /// `gateway`'s records in the public form.
    pub(crate) fn records(
        &self,
        gateway: &str,
        from: usize,
        limit: Option<usize>,
    ) -> Vec<StoredRecord> {
        let (slots, arena) = self.window(gateway, from, limit);
        slots.iter().map(|slot| slot.to_record(arena)).collect()
    }

    /// `gateway`'s records ready to serialize as SPEC §3.
    pub(crate) fn records_json(
        &self,
        gateway: &str,
        from: usize,
        limit: Option<usize>,
    ) -> impl Iterator<Item = SlotJson<'_>> + '_ {
        let (slots, arena) = self.window(gateway, from, limit);
        slots.iter().map(move |slot| slot.json(arena))
    }

    /// `gateway`'s sequence numbers in first-arrival order.
    pub(crate) fn seqs(&self, gateway: &str, from: usize, limit: Option<usize>) -> Vec<u64> {
        let (slots, _) = self.window(gateway, from, limit);
        slots.iter().map(|slot| slot.seq).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Interner, parse};
    use super::*;

    fn batch(interner: &mut Interner, seqs: &[u64]) -> Vec<Pending> {
        let records: Vec<String> = seqs
            .iter()
            .map(|seq| {
                format!(
                    r#"{{"seq":{seq},"device":"d","received_at":"2026-01-01T00:00:00.000Z","device_time":null,"metrics":{{"lp":{seq}.5}},"state":"measuring","flags":[]}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"gateway":"gw","records":[{}]}}"#, records.join(","));
        let parsed = parse(body.as_bytes()).expect("valid");
        parsed
            .records
            .into_iter()
            .map(|r| interner.prepare(r.0))
            .collect()
    }

    #[test]
    fn de_duplicates_by_gateway_and_seq() {
        let mut store = Store::default();
        let mut interner = Interner::default();
        let first = store.insert("gw", batch(&mut interner, &[5, 6, 6, 7]));
        assert_eq!(
            first,
            Stored {
                accepted: 3,
                duplicates: 1,
                out_of_order: 0
            }
        );
        let again = store.insert("gw", batch(&mut interner, &[3, 7, 8]));
        assert_eq!(
            again,
            Stored {
                accepted: 2,
                duplicates: 1,
                out_of_order: 1
            }
        );
        // Another gateway has its own seq space.
        assert_eq!(
            store.insert("other", batch(&mut interner, &[5])).accepted,
            1
        );
        assert_eq!(store.seqs("gw", 0, None), vec![5, 6, 7, 3, 8]);
        assert_eq!(store.seqs("gw", 1, Some(2)), vec![6, 7]);
        assert_eq!(store.seqs("gw", 9, Some(2)), Vec::<u64>::new());
        assert_eq!(store.seqs("nobody", 0, None), Vec::<u64>::new());
        let records = store.records("gw", 3, None);
        assert_eq!(records[0].seq, 3);
        assert_eq!(records[0].metric("lp"), Some(Some(3.5)));
        assert_eq!(records[1].metric("lp"), Some(Some(8.5)));
        assert_eq!(store.gateways(), vec!["gw".to_owned(), "other".to_owned()]);
    }
}
