//! What the uplinks need of the buffer: the next batch (one epoch, the
//! skips it passes, no row that changed on disk), and moving a consumer's
//! position on acknowledgement or past a quarantined record.
//!
//! # Consumers and the cursor
//! Each durable consumer of records ([`Consumer`]: the HTTP fleet push,
//! the MQTT fleet uplink) has its own position in table
//! `record_deliveries`: every `seq` ≤ it was taken by that consumer. The
//! buffer's cursor (`meta.cursor`, what `unsent`, eviction accounting and
//! the anchor go by) is the lowest position of the consumers in use, so a
//! record counts as unsent until every enabled consumer has it.
//! [`Buffer::use_consumers`] names the ones in use (at start and on a
//! reload): a consumer new to the file starts at the cursor (it sends what
//! is unsent, not the whole buffer again); one no longer configured is
//! forgotten, so switching transports back and forth never re-sends the
//! buffer. With none named (a buffer used without an uplink, as in tests),
//! the cursor is the position of every consumer, as before consumers
//! existed.

use super::{Buffer, BufferError, QUARANTINE_KEEP, lock, row};
use crate::record::{Flag, Record};
use rusqlite::{Connection, OptionalExtension, params};

/// A durable consumer of records: it takes every record, in `seq` order,
/// at least once, and the buffer remembers how far it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consumer {
    /// `POST {url}/api/fleet/ingest` (SPEC §7).
    FleetHttp,
    /// `{prefix}/{gateway}/records` on the fleet's MQTT brokers.
    FleetMqtt,
}

impl Consumer {
    /// Every consumer.
    pub const ALL: [Consumer; 2] = [Consumer::FleetHttp, Consumer::FleetMqtt];

    /// Its name in `record_deliveries`.
    pub fn name(self) -> &'static str {
        match self {
            Consumer::FleetHttp => "fleet-http",
            Consumer::FleetMqtt => "fleet-mqtt",
        }
    }

    fn index(self) -> usize {
        match self {
            Consumer::FleetHttp => 0,
            Consumer::FleetMqtt => 1,
        }
    }
}

/// The consumers' positions (`None`: not in use).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Positions {
    at: [Option<u64>; 2],
    /// Changed since the file last got them.
    dirty: bool,
}

impl Positions {
    /// Reads `record_deliveries`; a position below `cursor` (a cursor
    /// rebuilt from the anchor) is raised to it.
    pub(crate) fn load(conn: &Connection, cursor: u64) -> rusqlite::Result<Positions> {
        let mut positions = Positions::default();
        let mut stmt = conn.prepare("SELECT consumer, delivered FROM record_deliveries")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, delivered) = row?;
            if let Some(c) = Consumer::ALL.iter().find(|c| c.name() == name) {
                positions.at[c.index()] = Some(u64::try_from(delivered).unwrap_or(0).max(cursor));
            }
        }
        Ok(positions)
    }

    /// Whether any consumer is in use.
    fn any(&self) -> bool {
        self.at.iter().any(Option::is_some)
    }

    /// The lowest position in use.
    fn lowest(&self) -> Option<u64> {
        self.at.iter().flatten().min().copied()
    }

    /// Writes every position in use and removes the others (inside the
    /// caller's transaction, which also saves the counters).
    pub(crate) fn save(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        for c in Consumer::ALL {
            match self.at[c.index()] {
                Some(p) => conn.execute(
                    "INSERT OR REPLACE INTO record_deliveries (consumer, delivered) VALUES (?1, ?2)",
                    params![c.name(), i64::try_from(p).unwrap_or(i64::MAX)],
                )?,
                None => conn.execute(
                    "DELETE FROM record_deliveries WHERE consumer = ?1",
                    [c.name()],
                )?,
            };
        }
        self.dirty = false;
        Ok(())
    }

    /// Whether the file lags behind.
    pub(crate) fn dirty(&self) -> bool {
        self.dirty
    }
}

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
    ///
    /// A record another consumer quarantined is passed over (this
    /// consumer's position moves past it), never sent.
    pub fn next_batch(&self, consumer: Consumer, limit: usize) -> Result<Batch, BufferError> {
        loop {
            let cursor = self.position(consumer);
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
                    if self.quarantine(consumer, first_bad, reason)? {
                        continue;
                    }
                }
                records.retain(|r| r.seq < first_bad);
            }
            if let Some(put_aside) = records
                .iter()
                .position(|r| r.flags.contains(&Flag::Quarantined))
            {
                if put_aside == 0 {
                    let seq = records[0].seq;
                    self.mark_pushed(consumer, seq)?;
                    continue;
                }
                records.truncate(put_aside);
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
    /// it are pushed. Returns false when `seq` is not `consumer`'s first
    /// unsent record (nothing is changed then).
    pub fn quarantine(
        &self,
        consumer: Consumer,
        seq: u64,
        reason: &str,
    ) -> Result<bool, BufferError> {
        /// What the transaction found at `seq`.
        enum Found {
            /// Not `consumer`'s first unsent record.
            NotFirst,
            /// Already in quarantine (another consumer put it aside).
            AlreadyAside,
            /// Put aside now.
            PutAside,
        }
        let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
        let mut found = Found::NotFirst;
        self.commit_positions(|tx, counters, positions| {
            let position = positions.at[consumer.index()].unwrap_or(counters.cursor);
            let cursor = i64::try_from(position).unwrap_or(i64::MAX);
            let first: Option<i64> = tx
                .query_row(
                    "SELECT seq FROM records WHERE seq > ?1 ORDER BY seq LIMIT 1",
                    [cursor],
                    |r| r.get(0),
                )
                .optional()?;
            if first != Some(seq_i) {
                return Ok(false);
            }
            let flags: i64 =
                tx.query_row("SELECT flags FROM records WHERE seq = ?1", [seq_i], |r| {
                    r.get(0)
                })?;
            if flags & row::QUARANTINED_BIT != 0 {
                found = Found::AlreadyAside;
                return Ok(false);
            }
            found = Found::PutAside;
            let now_ms = chrono::Utc::now().timestamp_millis();
            tx.execute(
                "UPDATE records SET flags = flags | ?2 WHERE seq = ?1",
                params![seq_i, row::QUARANTINED_BIT],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO quarantine
                     (seq, device, received_at, device_time, state, flags, metrics, quarantined_at, reason, crc)
                 SELECT seq, device, received_at, device_time, state, flags, metrics, ?2, ?3, crc
                 FROM records WHERE seq = ?1",
                params![seq_i, now_ms, reason],
            )?;
            tx.execute(
                "DELETE FROM quarantine WHERE seq IN
                     (SELECT seq FROM quarantine ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
                [QUARANTINE_KEEP],
            )?;
            counters.quarantined += 1;
            advance(tx, counters, positions, consumer, seq)?;
            Ok(true)
        })?;
        match found {
            Found::NotFirst => Ok(false),
            // Only move past it.
            Found::AlreadyAside => self.mark_pushed(consumer, seq).map(|()| true),
            Found::PutAside => Ok(true),
        }
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

    /// Records that `consumer` took every `seq` ≤ `up_to` (the fleet
    /// accepted them). A position never moves back.
    ///
    /// The position (and the cursor, when it moves) changes in memory at
    /// once (the next batch starts after it) and reaches the file with the
    /// writer's next commit, riding along with records or, on a quiet
    /// gateway, in a commit of its own at most `commit_interval` later: a
    /// push costs the SD card no write of its own. A `kill -9` in between
    /// sends those records again (at least once; the fleet de-duplicates
    /// by `seq`). [`Buffer::mark_pushed_durably`] writes it at once.
    pub fn mark_pushed(&self, consumer: Consumer, up_to: u64) -> Result<(), BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        // The counters lock is the write lock: while it is held no commit
        // changes which rows exist, so the count matches the counters.
        let mut counters = lock(&self.shared.counters);
        let mut positions = lock(&self.shared.positions);
        let conn = lock(&self.shared.reader);
        let before = counters.cursor;
        advance(&conn, &mut counters, &mut positions, consumer, up_to).map_err(sql_err)?;
        let moved = counters.cursor != before || positions.dirty();
        drop(conn);
        drop(positions);
        drop(counters);
        if moved {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Like [`Buffer::mark_pushed`], and written to the file before it
    /// returns (its own small transaction): a `kill -9` after it sends
    /// nothing up to `up_to` again. The MQTT uplink calls it once per
    /// acknowledged batch, so a crash re-sends at most the batch in flight.
    pub fn mark_pushed_durably(&self, consumer: Consumer, up_to: u64) -> Result<(), BufferError> {
        self.commit_positions(|tx, counters, positions| {
            let before = *counters;
            advance(tx, counters, positions, consumer, up_to)?;
            Ok(positions.dirty() || *counters != before)
        })
    }

    /// Names the consumers in use (see the module doc): a new one starts
    /// at the cursor, the others are forgotten. An empty list (the fleet
    /// is off) changes nothing, so turning pushing off and on again
    /// re-sends nothing. Written to the file at once.
    pub fn use_consumers(&self, consumers: &[Consumer]) -> Result<(), BufferError> {
        if consumers.is_empty() {
            return Ok(());
        }
        self.commit_positions(|tx, counters, positions| {
            for c in Consumer::ALL {
                let slot = &mut positions.at[c.index()];
                *slot = if consumers.contains(&c) {
                    Some(slot.unwrap_or(counters.cursor))
                } else {
                    None
                };
            }
            positions.dirty = true;
            // Forgetting the consumer that was behind may move the cursor.
            if let Some(lowest) = positions.lowest() {
                move_cursor(tx, counters, lowest)?;
            }
            Ok(true)
        })
    }

    /// Applies `change` to copies of the counters and the positions in one
    /// write transaction of its own, committed when `change` says something
    /// changed, and only then taken as the buffer's (a failed write leaves
    /// memory as the file is). The counters' lock is the write lock, as for
    /// the writer.
    fn commit_positions(
        &self,
        change: impl FnOnce(&Connection, &mut super::Counters, &mut Positions) -> rusqlite::Result<bool>,
    ) -> Result<(), BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let mut shared = lock(&self.shared.counters);
        let mut counters = *shared;
        let mut positions = lock(&self.shared.positions);
        let mut next = *positions;
        let mut conn = lock(&self.shared.reader);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        if !change(&tx, &mut counters, &mut next).map_err(sql_err)? {
            return Ok(());
        }
        if counters != *shared {
            counters.save(&tx).map_err(sql_err)?;
        }
        next.save(&tx).map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        self.note_commit();
        *shared = counters;
        *positions = next;
        Ok(())
    }

    /// Every `seq` ≤ this was taken by `consumer` (the cursor when it is
    /// not in use, or when none is).
    pub fn position(&self, consumer: Consumer) -> u64 {
        let counters = lock(&self.shared.counters);
        let positions = lock(&self.shared.positions);
        positions.at[consumer.index()].unwrap_or(counters.cursor)
    }

    /// Records stored that `consumer` has not taken yet.
    pub fn backlog(&self, consumer: Consumer) -> Result<u64, BufferError> {
        let counters = self.counters();
        let position = self.position(consumer);
        if position <= counters.cursor {
            return Ok(counters.unsent);
        }
        let conn = lock(&self.shared.reader);
        let ahead = count_between(&conn, counters.cursor, position).map_err(|source| {
            BufferError::Sqlite {
                path: self.shared.settings.path.clone(),
                source,
            }
        })?;
        Ok(counters.unsent.saturating_sub(ahead))
    }

    /// Writes the positions with a commit of the writer (inside its
    /// transaction, under the counters lock).
    pub(crate) fn save_positions(&self, conn: &Connection) -> rusqlite::Result<()> {
        lock(&self.shared.positions).save(conn)
    }

    /// Whether a position changed since the file got it.
    pub(crate) fn positions_dirty(&self) -> bool {
        lock(&self.shared.positions).dirty()
    }
}

/// Moves `consumer` to `up_to` (never back) and the cursor to the lowest
/// position in use; with no consumer in use, the cursor itself.
fn advance(
    conn: &Connection,
    counters: &mut super::Counters,
    positions: &mut Positions,
    consumer: Consumer,
    up_to: u64,
) -> rusqlite::Result<()> {
    let lowest = if positions.any() {
        let Some(at) = positions.at[consumer.index()] else {
            // Not in use: what it takes counts for nothing.
            return Ok(());
        };
        if up_to > at {
            positions.at[consumer.index()] = Some(up_to);
            positions.dirty = true;
        }
        positions.lowest().unwrap_or(up_to)
    } else {
        up_to
    };
    move_cursor(conn, counters, lowest)
}

/// Moves the cursor forward to `to`, taking the records passed off
/// `unsent`.
fn move_cursor(conn: &Connection, counters: &mut super::Counters, to: u64) -> rusqlite::Result<()> {
    if to <= counters.cursor {
        return Ok(());
    }
    let newly = count_between(conn, counters.cursor, to)?;
    counters.cursor = to;
    counters.unsent = counters.unsent.saturating_sub(newly);
    Ok(())
}

/// Stored records with `from < seq ≤ to`.
fn count_between(conn: &Connection, from: u64, to: u64) -> rusqlite::Result<u64> {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM records WHERE seq > ?1 AND seq <= ?2",
        params![i(from), i(to)],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}
