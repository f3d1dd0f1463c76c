//! What the uplink needs of the buffer: the next batch (one epoch, the
//! skips it passes, no row that changed on disk), and moving the cursor on
//! acknowledgement or past a quarantined record.

use super::{Buffer, BufferError, QUARANTINE_KEEP, lock, row};
use crate::record::Record;
use rusqlite::{OptionalExtension, params};

/// One push batch: records of one epoch, in `seq` order, with the skipped
/// ranges they pass.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The records' numbering epoch.
    pub epoch: u64,
    /// Up to the limit asked for.
    pub records: Vec<Record>,
    /// `[from, to]` ranges declared skipped that lie above the cursor and
    /// below the batch's last record: sent with it, until it is accepted.
    pub skipped: Vec<(u64, u64)>,
}

impl Buffer {
    /// The next push batch: up to `limit` unsent records of one epoch, in
    /// `seq` order, and the skipped ranges they pass. A row that fails its
    /// checksum (it changed on disk) is quarantined when it is the first
    /// unsent one, and the batch ends before it otherwise, so it never
    /// leaves as a normal record.
    pub fn next_batch(&self, limit: usize) -> Result<Batch, BufferError> {
        loop {
            let cursor = self.counters().cursor;
            let cursor_i = i64::try_from(cursor).unwrap_or(i64::MAX);
            let (mut records, bad) = self.select_checked(
                "records",
                "WHERE r.seq > ?1 ORDER BY r.seq LIMIT ?2",
                &[&cursor_i, &(limit as i64)],
            )?;
            let first_unsent = records.first().map(|r| r.seq);
            if let Some(&first_bad) = bad.first() {
                if first_unsent.is_none_or(|f| first_bad < f) {
                    let reason =
                        "the row changed on disk (checksum mismatch, or ids without a name)";
                    tracing::warn!(seq = first_bad, "record {first_bad} quarantined: {reason}");
                    if self.quarantine(first_bad, reason)? {
                        continue;
                    }
                }
                records.retain(|r| r.seq < first_bad);
            }
            let epoch_of = |seq: u64| {
                self.shared
                    .epochs
                    .iter()
                    .take_while(|(first, _)| *first <= seq)
                    .last()
                    .map_or(0, |(_, e)| *e)
            };
            let Some(first) = records.first() else {
                return Ok(Batch::default());
            };
            let epoch = epoch_of(first.seq);
            records.retain(|r| epoch_of(r.seq) == epoch);
            let last = records.last().map_or(cursor, |r| r.seq);
            let skipped = self.skips_between(cursor, last)?;
            return Ok(Batch {
                epoch,
                records,
                skipped,
            });
        }
    }

    /// Skipped ranges with `cursor < last` and `last < below`.
    fn skips_between(&self, cursor: u64, below: u64) -> Result<Vec<(u64, u64)>, BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let conn = lock(&self.shared.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT first, last FROM skipped WHERE last > ?1 AND last < ?2 ORDER BY first",
            )
            .map_err(sql_err)?;
        let rows = stmt
            .query_map(params![i(cursor), i(below)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(sql_err)?;
        let mut skips = Vec::new();
        for row in rows {
            let (first, last) = row.map_err(sql_err)?;
            skips.push((
                u64::try_from(first).unwrap_or(0),
                u64::try_from(last).unwrap_or(0),
            ));
        }
        Ok(skips)
    }

    /// Puts the first unsent record, `seq`, in quarantine because the
    /// fleet rejected it as malformed (`reason`): a copy goes to the
    /// `quarantine` table (out of the ring's reach, the newest
    /// [`QUARANTINE_KEEP`] kept), the row gets the `quarantined` flag, the
    /// counter goes up and the cursor moves past it, so the records behind
    /// it are pushed. Returns false when `seq` is not the first unsent
    /// record (nothing is changed then).
    pub fn quarantine(&self, seq: u64, reason: &str) -> Result<bool, BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let mut shared = lock(&self.shared.counters);
        let mut counters = *shared;
        let mut conn = lock(&self.shared.reader);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let cursor = i64::try_from(counters.cursor).unwrap_or(i64::MAX);
        let first: Option<i64> = tx
            .query_row(
                "SELECT seq FROM records WHERE seq > ?1 ORDER BY seq LIMIT 1",
                [cursor],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql_err)?;
        let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
        if first != Some(seq_i) {
            return Ok(false);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        tx.execute(
            "UPDATE records SET flags = flags | ?2 WHERE seq = ?1",
            params![seq_i, row::QUARANTINED_BIT],
        )
        .map_err(sql_err)?;
        tx.execute(
            "INSERT OR REPLACE INTO quarantine
                 (seq, device, received_at, device_time, state, flags, metrics, quarantined_at, reason, crc)
             SELECT seq, device, received_at, device_time, state, flags, metrics, ?2, ?3, crc
             FROM records WHERE seq = ?1",
            params![seq_i, now_ms, reason],
        )
        .map_err(sql_err)?;
        tx.execute(
            "DELETE FROM quarantine WHERE seq IN
                 (SELECT seq FROM quarantine ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
            [QUARANTINE_KEEP],
        )
        .map_err(sql_err)?;
        counters.cursor = seq;
        counters.unsent = counters.unsent.saturating_sub(1);
        counters.quarantined += 1;
        counters.save(&tx).map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        self.note_commit();
        *shared = counters;
        Ok(true)
    }

    /// The quarantined records still kept, oldest first, with the reason
    /// the fleet gave.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<(Record, String)>, BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let reasons: Vec<(i64, String)> = {
            let conn = lock(&self.shared.reader);
            let mut stmt = conn
                .prepare("SELECT seq, reason FROM quarantine ORDER BY seq LIMIT ?1")
                .map_err(sql_err)?;
            let rows = stmt
                .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql_err)?;
            rows.collect::<Result<_, _>>().map_err(sql_err)?
        };
        let mut out = Vec::with_capacity(reasons.len());
        for (seq, reason) in reasons {
            let (record, _) = self.select_checked("quarantine", "WHERE r.seq = ?1", &[&seq])?;
            out.extend(record.into_iter().map(|r| (r, reason.clone())));
        }
        Ok(out)
    }

    /// Records that every `seq` ≤ `up_to` was accepted by the fleet. The
    /// cursor never moves back.
    ///
    /// The cursor moves in memory at once (the next batch starts after it)
    /// and reaches the file with the writer's next commit, riding along
    /// with records or, on a quiet gateway, in a commit of its own at most
    /// `commit_interval` later: a push costs the SD card no write of its
    /// own. A `kill -9` in between sends those records again (at least
    /// once; the fleet de-duplicates by `seq`).
    pub fn mark_pushed(&self, up_to: u64) -> Result<(), BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        // The counters lock is the write lock: while it is held no commit
        // changes which rows exist, so the count matches the counters.
        let mut counters = lock(&self.shared.counters);
        if up_to <= counters.cursor {
            return Ok(());
        }
        let newly: i64 = lock(&self.shared.reader)
            .query_row(
                "SELECT count(*) FROM records WHERE seq > ?1 AND seq <= ?2",
                params![
                    i64::try_from(counters.cursor).unwrap_or(i64::MAX),
                    i64::try_from(up_to).unwrap_or(i64::MAX)
                ],
                |r| r.get(0),
            )
            .map_err(sql_err)?;
        counters.cursor = up_to;
        counters.unsent = counters
            .unsent
            .saturating_sub(u64::try_from(newly).unwrap_or(0));
        drop(counters);
        self.shared.wake.notify_one();
        Ok(())
    }
}
