//! The buffer's schema and its forward migrations.
//!
//! `PRAGMA user_version` holds the version. [`migrate`] applies every step
//! from the file's version to [`VERSION`] in one transaction, and refuses a
//! file from a newer slmd rather than guess at it.

use super::BufferError;
use rusqlite::Connection;
use std::path::Path;

/// The schema version this build writes.
pub const VERSION: i64 = 5;

/// Migration steps; step `i` takes version `i` to `i + 1`.
const STEPS: [&str; 5] = [
    // 0 → 1: the first schema.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE names (
         kind INTEGER NOT NULL,   -- 0 device id, 1 metric name
         id   INTEGER NOT NULL,
         name TEXT NOT NULL,
         PRIMARY KEY (kind, id),
         UNIQUE (kind, name)
     ) WITHOUT ROWID;
     CREATE TABLE records (
         seq         INTEGER PRIMARY KEY,
         device      INTEGER NOT NULL,
         received_at INTEGER NOT NULL,
         device_time INTEGER,
         state       INTEGER NOT NULL,
         flags       INTEGER NOT NULL,
         metrics     BLOB NOT NULL
     );",
    // 1 → 2: records the fleet rejected as malformed, kept apart from the
    // ring (eviction never reaches them) with the reason.
    "CREATE TABLE quarantine (
         seq            INTEGER PRIMARY KEY,
         device         INTEGER NOT NULL,
         received_at    INTEGER NOT NULL,
         device_time    INTEGER,
         state          INTEGER NOT NULL,
         flags          INTEGER NOT NULL,
         metrics        BLOB NOT NULL,
         quarantined_at INTEGER NOT NULL,
         reason         TEXT NOT NULL
     );",
    // 2 → 3: a checksum per row (NULL for rows written before), so a
    // salvage keeps only rows that are exactly as written; numbers declared
    // skipped; numbering epochs by first seq; salvages in progress.
    "ALTER TABLE records ADD COLUMN crc INTEGER;
     ALTER TABLE quarantine ADD COLUMN crc INTEGER;
     CREATE TABLE skipped (
         first INTEGER PRIMARY KEY,
         last  INTEGER NOT NULL
     );
     CREATE TABLE epochs (
         first_seq INTEGER PRIMARY KEY,
         epoch     INTEGER NOT NULL
     );
     CREATE TABLE salvage (
         aside TEXT PRIMARY KEY,
         state TEXT NOT NULL
     );",
    // 3 → 4: noise limits (SPEC §11). `intervals` indexes the interval
    // levels among the records by device, length and window start (the
    // row itself stays the truth); alert events in their own never-reused
    // `event_seq` order, the episodes they belong to, and how far each
    // consumer of events (the fleet, each channel) has delivered them.
    "CREATE TABLE intervals (
         seq      INTEGER PRIMARY KEY,
         device   INTEGER NOT NULL,
         length_s INTEGER NOT NULL,
         start_s  INTEGER NOT NULL
     );
     CREATE INDEX intervals_by_window ON intervals (device, length_s, start_s);
     CREATE TABLE alert_events (
         event_seq INTEGER PRIMARY KEY AUTOINCREMENT,
         episode   TEXT NOT NULL,
         rule      TEXT NOT NULL,
         body      TEXT NOT NULL
     );
     CREATE TABLE alert_episodes (
         episode    TEXT PRIMARY KEY,
         active     INTEGER NOT NULL,
         last_event INTEGER NOT NULL,
         body       TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX alert_episodes_by_event ON alert_episodes (active, last_event);
     CREATE TABLE event_deliveries (
         consumer  TEXT PRIMARY KEY,
         delivered INTEGER NOT NULL,
         lost      INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // 4 → 5: how far each durable consumer of records (the HTTP and the
    // MQTT fleet uplink) has delivered them. A file from before has no
    // rows: a consumer starts at `meta.cursor`, which is where the one
    // uplink of that version had got to.
    "CREATE TABLE record_deliveries (
         consumer  TEXT PRIMARY KEY,
         delivered INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

/// Brings the database at `path` to [`VERSION`].
pub fn migrate(conn: &Connection, path: &Path) -> Result<(), BufferError> {
    let sql = |source| BufferError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if found > VERSION {
        return Err(BufferError::TooNew {
            path: path.to_owned(),
            found,
            known: VERSION,
        });
    }
    if found == VERSION {
        return Ok(());
    }
    let start = usize::try_from(found).unwrap_or(0);
    let mut script = String::from("BEGIN IMMEDIATE;");
    for step in &STEPS[start..] {
        script.push_str(step);
    }
    script.push_str(&format!("PRAGMA user_version = {VERSION}; COMMIT;"));
    conn.execute_batch(&script).map_err(sql)
}
