//! Alert events and episodes in the buffer file (SPEC §11), so an active
//! episode survives a restart (no second onset) and an event waits, on
//! disk, until every consumer (the fleet, each channel) has delivered it.
//!
//! | table | holds |
//! |---|---|
//! | `alert_events` | every event, numbered by `event_seq` (`AUTOINCREMENT`: never reused in the file, also after pruning), with its JSON body as delivered; the newest [`EVENTS_KEEP`] kept |
//! | `alert_episodes` | one row per episode: its JSON summary (rule, device, onset, peak, clear, ack, and for an active one the state the rules restore), `active`; the newest [`EPISODES_KEEP`] finished ones kept |
//! | `event_deliveries` | per consumer: the highest `event_seq` delivered, and how many events were pruned before it delivered them (`lost`) |
//!
//! Bodies are opaque JSON here: their shape belongs to `limits`. Each
//! change is one small transaction on the readers' connection (events are
//! rare: minutes apart, not per reading), taken under the counters lock
//! like every write outside the writer thread.

use super::{Buffer, BufferError, lock};
use rusqlite::{OptionalExtension, params};

/// Events kept in the file: the newest 10 000. A consumer that falls
/// further behind (a channel down for days under a flapping limit) loses
/// the oldest, counted in its `lost`.
pub const EVENTS_KEEP: i64 = 10_000;

/// Finished episodes kept for `GET /v1/alerts`: the newest 1 000.
pub const EPISODES_KEEP: i64 = 1_000;

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its number: the consumers' order and the fleet's dedup key.
    pub event_seq: u64,
    /// The rule that raised it (channels take only their rules' events).
    pub rule: String,
    /// The JSON body as written by `limits`.
    pub body: serde_json::Value,
}

/// Why an episode could not be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// No such episode in the file.
    #[error("no alert episode {0}")]
    Unknown(String),
    /// The file could not be read or written.
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

impl Buffer {
    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> BufferError + '_ {
        move |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        }
    }

    /// Stores an event and its episode's new summary in one transaction;
    /// returns the event's `event_seq`. `body` gets `event_seq` added.
    pub fn record_alert_event(
        &self,
        episode: &str,
        rule: &str,
        body: &serde_json::Value,
        episode_body: &serde_json::Value,
        active: bool,
    ) -> Result<u64, BufferError> {
        let sql_err = self.sql_err();
        let _write = lock(&self.shared.counters);
        let mut conn = lock(&self.shared.reader);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&sql_err)?;
        tx.execute(
            "INSERT INTO alert_events (episode, rule, body) VALUES (?1, ?2, '')",
            params![episode, rule],
        )
        .map_err(&sql_err)?;
        let event_seq = tx.last_insert_rowid();
        let mut body = body.clone();
        if let Some(map) = body.as_object_mut() {
            map.insert("event_seq".into(), event_seq.into());
        }
        tx.execute(
            "UPDATE alert_events SET body = ?2 WHERE event_seq = ?1",
            params![event_seq, body.to_string()],
        )
        .map_err(&sql_err)?;
        // Episodes are ordered by their latest event's number: unlike a
        // time, it never ties and never steps back with the clock.
        tx.execute(
            "INSERT OR REPLACE INTO alert_episodes (episode, active, last_event, body)
             VALUES (?1, ?2, ?3, ?4)",
            params![episode, active, event_seq, episode_body.to_string()],
        )
        .map_err(&sql_err)?;
        prune(&tx, event_seq).map_err(&sql_err)?;
        tx.commit().map_err(&sql_err)?;
        self.note_commit();
        Ok(u64::try_from(event_seq).unwrap_or(0))
    }

    /// Replaces an episode's summary (an ack) without an event.
    fn update_episode(&self, episode: &str, body: &serde_json::Value) -> Result<(), BufferError> {
        let sql_err = self.sql_err();
        let _write = lock(&self.shared.counters);
        let conn = lock(&self.shared.reader);
        conn.execute(
            "UPDATE alert_episodes SET body = ?2 WHERE episode = ?1",
            params![episode, body.to_string()],
        )
        .map_err(&sql_err)?;
        Ok(())
    }

    /// Acknowledges `episode` with `note` at `at` (RFC 3339); returns its
    /// summary as stored after the ack. An episode acknowledged before
    /// keeps its first ack and gets the new note (the latest word counts).
    pub fn ack_episode(
        &self,
        episode: &str,
        note: &str,
        at: &str,
    ) -> Result<serde_json::Value, AckError> {
        let Some((mut body, _active)) = self.episode(episode)? else {
            return Err(AckError::Unknown(episode.to_owned()));
        };
        if let Some(map) = body.as_object_mut() {
            let acked_at = map
                .get("ack")
                .and_then(|a| a.get("at"))
                .cloned()
                .unwrap_or_else(|| at.into());
            map.insert(
                "ack".into(),
                serde_json::json!({"at": acked_at, "note": note, "last_at": at}),
            );
        }
        self.update_episode(episode, &body)?;
        Ok(body)
    }

    /// One episode's summary and whether it is active.
    pub fn episode(&self, episode: &str) -> Result<Option<(serde_json::Value, bool)>, BufferError> {
        let sql_err = self.sql_err();
        let conn = lock(&self.shared.reader);
        let row: Option<(String, bool)> = conn
            .query_row(
                "SELECT body, active FROM alert_episodes WHERE episode = ?1",
                [episode],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(&sql_err)?;
        Ok(row.map(|(body, active)| (parse(&body), active)))
    }

    /// Active episodes (oldest first) and the newest `recent` finished ones
    /// (newest first).
    pub fn episodes(
        &self,
        recent: usize,
    ) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>), BufferError> {
        let sql_err = self.sql_err();
        let conn = lock(&self.shared.reader);
        let read = |sql: &str, limit: i64| -> rusqlite::Result<Vec<serde_json::Value>> {
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt.query_map([limit], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(|b| parse(&b))).collect()
        };
        let active = read(
            "SELECT body FROM alert_episodes WHERE active = 1 ORDER BY last_event LIMIT ?1",
            i64::MAX,
        )
        .map_err(&sql_err)?;
        let finished = read(
            "SELECT body FROM alert_episodes WHERE active = 0 ORDER BY last_event DESC LIMIT ?1",
            i64::try_from(recent).unwrap_or(i64::MAX),
        )
        .map_err(&sql_err)?;
        Ok((active, finished))
    }

    /// Up to `limit` events after `after`, in `event_seq` order.
    pub fn alert_events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, BufferError> {
        let sql_err = self.sql_err();
        let conn = lock(&self.shared.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT event_seq, rule, body FROM alert_events WHERE event_seq > ?1
                 ORDER BY event_seq LIMIT ?2",
            )
            .map_err(&sql_err)?;
        let rows = stmt
            .query_map(
                params![
                    i64::try_from(after).unwrap_or(i64::MAX),
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| {
                    Ok(StoredEvent {
                        event_seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        rule: r.get(1)?,
                        body: parse(&r.get::<_, String>(2)?),
                    })
                },
            )
            .map_err(&sql_err)?;
        rows.collect::<Result<_, _>>().map_err(&sql_err)
    }

    /// The highest `event_seq` ever stored (0 when none).
    pub fn last_event_seq(&self) -> Result<u64, BufferError> {
        let sql_err = self.sql_err();
        let conn = lock(&self.shared.reader);
        // `sqlite_sequence` keeps the AUTOINCREMENT high-water mark even
        // when every event was pruned.
        let seq: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'alert_events'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(&sql_err)?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    /// How far `consumer` has delivered (and how many it lost to pruning).
    /// A consumer met for the first time starts after every event stored
    /// so far when `from_now`, else from the oldest kept.
    pub fn event_delivery(
        &self,
        consumer: &str,
        from_now: bool,
    ) -> Result<(u64, u64), BufferError> {
        let start = if from_now { self.last_event_seq()? } else { 0 };
        let sql_err = self.sql_err();
        let _write = lock(&self.shared.counters);
        let conn = lock(&self.shared.reader);
        conn.execute(
            "INSERT OR IGNORE INTO event_deliveries (consumer, delivered, lost) VALUES (?1, ?2, 0)",
            params![consumer, i64::try_from(start).unwrap_or(0)],
        )
        .map_err(&sql_err)?;
        let (delivered, lost): (i64, i64) = conn
            .query_row(
                "SELECT delivered, lost FROM event_deliveries WHERE consumer = ?1",
                [consumer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(&sql_err)?;
        Ok((
            u64::try_from(delivered).unwrap_or(0),
            u64::try_from(lost).unwrap_or(0),
        ))
    }

    /// Notes that `consumer` delivered every event up to `event_seq`.
    pub fn mark_events_delivered(&self, consumer: &str, event_seq: u64) -> Result<(), BufferError> {
        let sql_err = self.sql_err();
        let _write = lock(&self.shared.counters);
        let conn = lock(&self.shared.reader);
        conn.execute(
            "UPDATE event_deliveries SET delivered = max(delivered, ?2) WHERE consumer = ?1",
            params![consumer, i64::try_from(event_seq).unwrap_or(i64::MAX)],
        )
        .map_err(&sql_err)?;
        Ok(())
    }
}

/// Keeps the newest [`EVENTS_KEEP`] events (`newest` is the one just
/// stored) and [`EPISODES_KEEP`] finished episodes; a consumer that had not
/// delivered a pruned event counts it lost and moves past it.
fn prune(tx: &rusqlite::Transaction<'_>, newest: i64) -> rusqlite::Result<()> {
    // Numbers are handed out in order and only pruning deletes, from the
    // oldest: the kept events are exactly the last EVENTS_KEEP numbers.
    let oldest = newest - EVENTS_KEEP + 1;
    if oldest > 1 {
        let pruned = tx.execute("DELETE FROM alert_events WHERE event_seq < ?1", [oldest])?;
        if pruned > 0 {
            tx.execute(
                "UPDATE event_deliveries SET lost = lost + (?1 - 1 - delivered), delivered = ?1 - 1
                 WHERE delivered < ?1 - 1",
                [oldest],
            )?;
        }
    }
    tx.execute(
        "DELETE FROM alert_episodes WHERE active = 0 AND episode IN
             (SELECT episode FROM alert_episodes WHERE active = 0
              ORDER BY last_event DESC LIMIT -1 OFFSET ?1)",
        [EPISODES_KEEP],
    )?;
    Ok(())
}

fn parse(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}
