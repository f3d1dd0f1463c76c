//! Where in the ring a time starts: what lets `history?since=` skip
//! straight to its records, on a million-row buffer, without an index on
//! `received_at` (which would cost a second B-tree write with every commit,
//! on a gateway's flash).
//!
//! The ring is in arrival (`seq`) order, and `received_at` mostly grows
//! with it, but the gateway clock can step back. So this keeps, in memory,
//! the largest `received_at` of each block of [`BLOCK`] consecutive `seq`
//! numbers. Their running maximum never decreases along `seq`, so the
//! first block where it reaches `since` is the first that can hold a record
//! received at or after `since`; every earlier block holds only older ones,
//! whatever the clock did. The history read then starts there and filters
//! by time.
//!
//! Cost: built on the first read by one pass over `(seq, received_at)` in
//! chunks of [`CHUNK`] rows (the reader lock is released between chunks,
//! so status answers meanwhile); each later read first takes in the rows
//! written since (a few, at a meter's pace). Memory: 16 bytes per block,
//! 160 KiB for 10 million records. A salvage puts old rows back under
//! lower `seq`s, so a changed salvage count rebuilds it.

use rusqlite::Connection;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// `seq` numbers per block.
pub const BLOCK: u64 = 1024;

/// Rows read per lock hold while building.
pub const CHUNK: i64 = 65_536;

/// The largest `received_at` per block, and how far the ring was read.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    /// Block number (`seq / BLOCK`) → largest `received_at` (ms) in it.
    blocks: BTreeMap<u64, i64>,
    /// The highest `seq` taken in.
    read_to: u64,
    /// The salvage state it was built under (rows saved, still running).
    salvage: Option<(u64, bool)>,
}

impl Timeline {
    /// Takes in every row above `read_to`, a chunk per hold of `reader`.
    /// Starts over when the salvage state differs from the one it was
    /// built under.
    pub(crate) fn catch_up(
        &mut self,
        reader: &Mutex<Connection>,
        salvage: Option<(u64, bool)>,
    ) -> rusqlite::Result<()> {
        if salvage != self.salvage {
            *self = Timeline {
                salvage,
                ..Timeline::default()
            };
        }
        loop {
            let rows: Vec<(i64, i64)> = {
                let conn = reader
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, received_at FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                stmt.query_map(
                    [i64::try_from(self.read_to).unwrap_or(i64::MAX), CHUNK],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<rusqlite::Result<_>>()?
            };
            for &(seq, received) in &rows {
                let seq = u64::try_from(seq).unwrap_or(0);
                let max = self.blocks.entry(seq / BLOCK).or_insert(received);
                *max = (*max).max(received);
                self.read_to = self.read_to.max(seq);
            }
            if rows.len() < usize::try_from(CHUNK).unwrap_or(usize::MAX) {
                return Ok(());
            }
        }
    }

    /// Forgets blocks wholly below `oldest` (evicted).
    pub(crate) fn forget_below(&mut self, oldest: u64) {
        let keep = self.blocks.split_off(&(oldest / BLOCK));
        self.blocks = keep;
    }

    /// The first `seq` that can hold a record received at or after
    /// `since_ms`: every record below it was received earlier. `None` when
    /// no record taken in was.
    pub(crate) fn start_of(&self, since_ms: i64) -> Option<u64> {
        let mut running = i64::MIN;
        // Blocks are few (one per 1024 records): a walk over the running
        // maximum is as quick as a bisection over a copy of it.
        for (&block, &max) in &self.blocks {
            running = running.max(max);
            if running >= since_ms {
                return Some(block * BLOCK);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(rows: &[(u64, i64)]) -> Timeline {
        let conn = Connection::open_in_memory().expect("sqlite");
        conn.execute_batch("CREATE TABLE records (seq INTEGER PRIMARY KEY, received_at INTEGER)")
            .expect("schema");
        for (seq, t) in rows {
            conn.execute(
                "INSERT INTO records VALUES (?1, ?2)",
                [i64::try_from(*seq).expect("small"), *t],
            )
            .expect("insert");
        }
        let reader = Mutex::new(conn);
        let mut timeline = Timeline::default();
        timeline.catch_up(&reader, None).expect("reads");
        timeline
    }

    #[test]
    fn a_backward_clock_step_never_hides_the_start() {
        // Seconds along seq, then the clock steps back an hour at 3000.
        let rows: Vec<(u64, i64)> = (1..=6000)
            .map(|seq| {
                let t = i64::try_from(seq).expect("small") * 1000;
                (seq, if seq > 3000 { t - 3_600_000 } else { t })
            })
            .collect();
        let timeline = timeline(&rows);
        // Before the step: the block holding 2500.
        assert_eq!(timeline.start_of(2_500_000), Some(2 * BLOCK));
        // Only reached before the step: still found there, not lost
        // behind the stepped records.
        assert_eq!(timeline.start_of(2_999_000), Some(2 * BLOCK));
        // Later than anything: none.
        assert_eq!(timeline.start_of(10_000_000), None);
        // Earlier than everything: the first block.
        assert_eq!(timeline.start_of(0), Some(0));
    }

    #[test]
    fn evicted_blocks_are_forgotten() {
        let rows: Vec<(u64, i64)> = (1..=5000)
            .map(|seq| (seq, i64::try_from(seq).expect("small")))
            .collect();
        let mut timeline = timeline(&rows);
        timeline.forget_below(3000);
        assert_eq!(timeline.start_of(0), Some(2 * BLOCK));
    }
}
