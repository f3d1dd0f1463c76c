//! The persisted counters: one integer per key in table `meta`, saved in
//! the same transaction as the rows they count, with a checksum key so a
//! page whose bytes changed is not taken for counters.

use rusqlite::{Connection, params};
use serde::Serialize;

/// The persisted counters (table `meta`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// The next `seq` to assign (one past the highest ever committed).
    pub next_seq: u64,
    /// Every `seq` ≤ cursor was accepted by the fleet (or quarantined).
    pub cursor: u64,
    /// Records ever committed.
    pub written: u64,
    /// Records currently stored.
    pub stored: u64,
    /// Stored records with `seq` > cursor.
    pub unsent: u64,
    /// Records evicted after they were pushed.
    pub evicted_pushed: u64,
    /// Records evicted before they were pushed (data the fleet never got).
    pub evicted_unsent: u64,
    /// Oldest `received_at` (Unix ms) among evicted unsent records, 0 if none.
    pub evicted_unsent_first_ms: i64,
    /// Newest `received_at` (Unix ms) among evicted unsent records, 0 if none.
    pub evicted_unsent_last_ms: i64,
    /// Records that never reached the disk (memory queue overflowed), or
    /// that a damaged file lost.
    pub lost: u64,
    /// Records the fleet rejected as malformed, ever (see
    /// [`super::Buffer::quarantine`]).
    pub quarantined: u64,
    /// `seq` numbers declared skipped (handed out or reserved, never
    /// stored: unclean stops), ever.
    pub skipped: u64,
}

/// `meta` key of the counters' checksum.
const CHECKSUM: &str = "counters_crc";

impl Counters {
    const KEYS: [&'static str; 12] = [
        "next_seq",
        "cursor",
        "written",
        "stored",
        "unsent",
        "evicted_pushed",
        "evicted_unsent",
        "evicted_unsent_first_ms",
        "evicted_unsent_last_ms",
        "lost",
        "quarantined",
        "skipped",
    ];

    fn values(&self) -> [i64; 12] {
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        [
            i(self.next_seq),
            i(self.cursor),
            i(self.written),
            i(self.stored),
            i(self.unsent),
            i(self.evicted_pushed),
            i(self.evicted_unsent),
            self.evicted_unsent_first_ms,
            self.evicted_unsent_last_ms,
            i(self.lost),
            i(self.quarantined),
            i(self.skipped),
        ]
    }

    fn set(&mut self, key: &str, value: i64) {
        let u = u64::try_from(value).unwrap_or(0);
        match key {
            "next_seq" => self.next_seq = u,
            "cursor" => self.cursor = u,
            "written" => self.written = u,
            "stored" => self.stored = u,
            "unsent" => self.unsent = u,
            "evicted_pushed" => self.evicted_pushed = u,
            "evicted_unsent" => self.evicted_unsent = u,
            "evicted_unsent_first_ms" => self.evicted_unsent_first_ms = value,
            "evicted_unsent_last_ms" => self.evicted_unsent_last_ms = value,
            "lost" => self.lost = u,
            "quarantined" => self.quarantined = u,
            "skipped" => self.skipped = u,
            _ => {}
        }
    }

    /// CRC-32 of the values in key order, as stored.
    fn checksum(&self) -> i64 {
        let mut h = crc32fast::Hasher::new();
        for v in self.values() {
            h.update(&v.to_le_bytes());
        }
        i64::from(h.finalize())
    }

    /// Reads the counters. A checksum that does not match (bytes of the
    /// page changed) is `SQLITE_CORRUPT`, like any other damage; files from
    /// before the checksum have none and are taken as they are.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Counters> {
        let mut counters = Counters::default();
        let mut checksum = None;
        let mut stmt = conn.prepare("SELECT key, value FROM meta")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (key, value) = row?;
            if key == CHECKSUM {
                checksum = Some(value);
            } else {
                counters.set(&key, value);
            }
        }
        match checksum {
            Some(stored) if stored != counters.checksum() => Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some("the buffer's counters fail their checksum".into()),
            )),
            _ => Ok(counters),
        }
    }

    /// Writes every counter and the checksum (inside the caller's
    /// transaction).
    pub(crate) fn save(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?;
        for (key, value) in Counters::KEYS.iter().zip(self.values()) {
            stmt.execute(params![key, value])?;
        }
        stmt.execute(params![CHECKSUM, self.checksum()])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_a_changed_value_is_damage() {
        let conn = Connection::open_in_memory().expect("memory db");
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;",
        )
        .expect("schema");
        let c = Counters {
            next_seq: 1042,
            cursor: 1000,
            written: 1041,
            stored: 900,
            unsent: 41,
            evicted_pushed: 141,
            skipped: 7,
            ..Counters::default()
        };
        c.save(&conn).expect("save");
        assert_eq!(Counters::load(&conn).expect("load"), c);
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'cursor'", [])
            .expect("change");
        let error = Counters::load(&conn).expect_err("checksum");
        assert!(error.to_string().contains("checksum"), "{error}");
        // A file from before the checksum reads as it is.
        conn.execute("DELETE FROM meta WHERE key = ?1", [CHECKSUM])
            .expect("drop checksum");
        assert_eq!(Counters::load(&conn).expect("load").cursor, 0);
    }
}
