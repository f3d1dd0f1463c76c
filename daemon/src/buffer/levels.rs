//! Finding interval levels among the records: the `intervals` table, an
//! index by device, length and window start of the rows that are interval
//! levels (the row in `records` stays the truth; this table only points at
//! it). Written in the writer's transaction with the row; rows the ring
//! evicted are forgotten in the same transaction as the eviction.

use super::row::RawRow;
use super::{Buffer, BufferError, DEVICE, lock};
use crate::record::{Interval, Record};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use std::time::Duration;

/// Most interval levels one query returns: 10 000 (a week of 1-minute
/// levels of one meter).
pub const LEVELS_MAX: usize = 10_000;

/// Indexes the interval level in `row` (inside the writer's transaction).
pub(super) fn index(tx: &Connection, row: &RawRow, interval: &Interval) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO intervals (seq, device, length_s, start_s) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        row.seq,
        row.device,
        i64::try_from(interval.length.as_secs()).unwrap_or(i64::MAX),
        interval.start.timestamp()
    ])?;
    Ok(())
}

/// Drops index entries of rows no longer in the ring (after an eviction).
pub(super) fn forget_evicted(tx: &Connection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "DELETE FROM intervals WHERE seq <
             (SELECT coalesce(min(seq), 9223372036854775807) FROM records)",
    )?
    .execute([])?;
    Ok(())
}

impl Buffer {
    /// Interval levels of `device` and `length` whose window starts at or
    /// after `since` (all when `None`), oldest window first, at most
    /// `limit` (capped at [`LEVELS_MAX`]).
    pub fn levels(
        &self,
        device: &str,
        length: Duration,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Record>, BufferError> {
        let Some(device_id) = lock(&self.shared.names).id_of(DEVICE, device) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit.min(LEVELS_MAX)).unwrap_or(0);
        let since_s = since.map_or(i64::MIN, |t| t.timestamp());
        let length_s = i64::try_from(length.as_secs()).unwrap_or(i64::MAX);
        let records = self.select(
            "WHERE r.seq IN (SELECT seq FROM intervals
                 WHERE device = ?1 AND length_s = ?2 AND start_s >= ?3
                 ORDER BY start_s LIMIT ?4)
             ORDER BY r.seq",
            &[&device_id, &length_s, &since_s, &limit],
        )?;
        let mut levels: Vec<Record> = records.into_iter().filter(|r| r.is_interval()).collect();
        levels.sort_by_key(|r| r.interval.map(|i| i.start));
        Ok(levels)
    }
}
