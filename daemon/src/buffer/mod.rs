//! The offline ring buffer: every record, on the gateway's disk, until the
//! fleet has it and space is needed.
//!
//! # On disk
//! One SQLite file, `{state_dir}/buffer.sqlite`, in WAL mode. Tables:
//! - `records`: one row per record, keyed by `seq` (see [`row`] for the
//!   compact row form);
//! - `names`: small integer ids for device ids (kind 0) and metric names
//!   (kind 1), so rows do not repeat strings;
//! - `meta`: the persisted counters, one integer each (see [`Counters`]);
//! - `quarantine`: copies of records the fleet rejected, with the reason.
//!
//! The schema version is `PRAGMA user_version`; [`schema::migrate`] brings
//! older files forward and refuses newer ones.
//!
//! # Invariants, and where they are kept
//! - **Accounting.** `written = stored + evicted_pushed + evicted_unsent`
//!   at every commit: the writer updates the counters in the same
//!   transaction as the rows they count.
//! - **`seq` never reused.** `meta.next_seq` is raised in every insert
//!   transaction and survives eviction; at open the hub starts at
//!   `max(next_seq, max(seq) + 1)`. Numbers are assigned in memory before
//!   the commit (live subscribers never wait on the disk), so numbers may
//!   have been streamed live past the last commit when a run dies:
//!   `meta.clean_stop` is 0 while running and 1 after a clean stop, and
//!   after an unclean one [`open`] continues [`SEQ_SAFETY_GAP`] higher and
//!   saves that at once.
//! - **Bounded.** Before an insert would pass `max_records` (or after a
//!   commit passes `max_bytes`), the writer evicts in chunks: already-pushed
//!   records first (they only serve history), then the oldest unsent ones,
//!   counted with their `received_at` range; one log line per episode.
//! - **Delivered means acknowledged.** The push cursor (`meta.cursor`: every
//!   `seq` ≤ cursor was accepted by the fleet, or quarantined) only moves
//!   forward, in [`Buffer::mark_pushed`] and [`Buffer::quarantine`], each in
//!   its own transaction.
//! - **A poison record is kept.** A record the fleet rejects as malformed
//!   is copied to `quarantine` (outside the ring, the newest
//!   [`QUARANTINE_KEEP`] kept), flagged `quarantined` in `records`, and
//!   counted in `meta.quarantined`; the cursor moves past it so it never
//!   blocks the records behind it.
//! - **Crash safety.** A commit is atomic (WAL). `durability = "normal"`
//!   (`synchronous=NORMAL`): a killed process loses nothing committed; a
//!   power cut may lose the last commits. `"full"` (`synchronous=FULL`): a
//!   power cut loses nothing committed either, at the cost of an fsync per
//!   commit.
//! - **A damaged file never stops the daemon.** [`open`] checks the file
//!   (bounded `quick_check`); a file whose *content* fails is renamed
//!   `*.corrupt-<timestamp>` (numbered if that name is taken), its readable
//!   rows are copied into a fresh buffer, and the log says how many were
//!   saved. A refusal by the disk or the OS (full, I/O error) is not damage:
//!   [`open_or_defer`] lets the daemon start anyway and the writer opens the
//!   buffer when it can.
//! - **Disk full / I/O errors.** The writer keeps failed batches in a
//!   bounded memory queue and retries; overflow is counted as lost. The
//!   live fan-out is not involved and keeps working.

pub mod row;
mod salvage;
pub mod schema;
mod writer;

use crate::config::Durability;
use crate::record::{Record, intern};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use salvage::OpenReport;
pub use writer::WriterHandle;

/// Quarantined records kept (the newest); older ones are dropped, still
/// counted in `meta.quarantined`.
pub const QUARANTINE_KEEP: i64 = 10_000;

/// File name of the buffer inside the state folder.
pub const FILE_NAME: &str = "buffer.sqlite";

/// How long a connection waits for another one's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the buffer needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The database file.
    pub path: PathBuf,
    /// Hard cap on stored records.
    pub max_records: u64,
    /// Optional cap on the bytes the records occupy in the file.
    pub max_bytes: Option<u64>,
    /// What a commit promises across a power cut.
    pub durability: Durability,
    /// Records held in memory while the disk refuses writes.
    pub memory_queue: usize,
    /// Most records per insert transaction.
    pub batch_max: usize,
}

impl Settings {
    /// Settings for `config`'s `[buffer]` in `[gateway].state_dir`.
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            path: config.gateway.state_dir.join(FILE_NAME),
            max_records: config.buffer.max_records,
            max_bytes: config.buffer.max_bytes.map(|b| b.0),
            durability: config.buffer.durability,
            memory_queue: 100_000,
            batch_max: 1000,
        }
    }
}

/// Why the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// SQLite said no.
    #[error("buffer database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// A file operation around the database failed.
    #[error("buffer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was written by a newer slmd.
    #[error("buffer database {path} has schema version {found}; this slmd knows up to {known}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

impl BufferError {
    /// Whether the error comes from the disk, the OS or a lock rather than
    /// from the buffer's content: worth retrying, never worth salvaging.
    pub fn is_unavailable(&self) -> bool {
        match self {
            BufferError::Sqlite { source, .. } => salvage::is_io(source),
            BufferError::Io { .. } => true,
            BufferError::TooNew { .. } => false,
        }
    }
}

/// Numbers skipped when numbering cannot know the last `seq` handed out:
/// after an unclean stop (numbers streamed live but not yet saved) or when
/// the live feed must start before the buffer opens and the write-ahead log
/// may hold commits a read-only peek cannot see. Far more than the daemon
/// streams between two commits, so no `seq` is ever handed out twice.
pub const SEQ_SAFETY_GAP: u64 = 1_000_000;

/// `meta` key: 1 after the writer stopped cleanly, 0 while running.
const CLEAN_STOP: &str = "clean_stop";

/// Whether the last run stopped cleanly (a buffer that never ran did).
pub(crate) fn stopped_cleanly(conn: &Connection) -> rusqlite::Result<bool> {
    let value: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [CLEAN_STOP], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(value != Some(0))
}

/// Records whether the writer stopped cleanly.
pub(crate) fn set_clean_stop(conn: &Connection, clean: bool) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![CLEAN_STOP, i64::from(clean)],
    )?;
    Ok(())
}

/// How the buffer came up at start.
#[derive(Debug)]
pub enum Start {
    /// Open and checked.
    Open(Buffer, OpenReport),
    /// The disk refused (full, I/O error, permissions): the live feed starts
    /// numbering at `first_seq` and the writer opens the buffer when it can.
    Unavailable {
        /// Why it could not be opened.
        error: BufferError,
        /// Where the hub starts numbering.
        first_seq: u64,
    },
}

/// The buffer once it is open: set at start, or later by a deferred writer.
pub type BufferSlot = Arc<std::sync::OnceLock<Buffer>>;

/// Opens the buffer, or, when the disk refuses, says where numbering can
/// safely continue so the daemon runs while the writer retries.
pub fn open_or_defer(settings: Settings) -> Result<Start, BufferError> {
    match open(settings.clone()) {
        Ok((buffer, report)) => Ok(Start::Open(buffer, report)),
        Err(error) if error.is_unavailable() => {
            let peeked = salvage::peek_next_seq(&settings.path).unwrap_or(1);
            let wal = {
                let mut s = settings.path.as_os_str().to_owned();
                s.push("-wal");
                PathBuf::from(s)
            };
            let unseen = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
            let first_seq = if unseen {
                peeked + SEQ_SAFETY_GAP
            } else {
                peeked
            };
            Ok(Start::Unavailable { error, first_seq })
        }
        Err(error) => Err(error),
    }
}

/// Starts a writer for a buffer that could not be opened yet: it keeps
/// records in memory (bounded), opens the buffer as soon as the disk lets
/// it, publishes it in `slot`, and then writes as usual.
pub fn start_deferred(
    settings: Settings,
    slot: BufferSlot,
    records: tokio::sync::mpsc::Receiver<Arc<Record>>,
    first_seq: u64,
) -> Result<WriterHandle, BufferError> {
    writer::start_deferred(settings, slot, records, first_seq)
}

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
    /// Records that never reached the disk (memory queue overflowed).
    pub lost: u64,
    /// Records the fleet rejected as malformed, ever (see [`Buffer::quarantine`]).
    pub quarantined: u64,
}

impl Counters {
    const KEYS: [&'static str; 11] = [
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
    ];

    fn values(&self) -> [i64; 11] {
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
            _ => {}
        }
    }

    /// Reads the counters.
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Counters> {
        let mut counters = Counters::default();
        let mut stmt = conn.prepare("SELECT key, value FROM meta")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (key, value) = row?;
            counters.set(&key, value);
        }
        Ok(counters)
    }

    /// Writes every counter (inside the caller's transaction).
    pub(crate) fn save(&self, conn: &Connection) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?;
        for (key, value) in Counters::KEYS.iter().zip(self.values()) {
            stmt.execute(params![key, value])?;
        }
        Ok(())
    }
}

/// What status shows about the buffer.
#[derive(Debug, Clone, Serialize)]
pub struct BufferStatus {
    /// Records stored.
    pub records: u64,
    /// `max_records`.
    pub capacity: u64,
    /// Records not yet accepted by the fleet.
    pub unsent: u64,
    /// `received_at` of the oldest unsent record.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    pub oldest_unsent_received_at: Option<DateTime<Utc>>,
    /// Unsent records evicted since the buffer was created.
    pub evicted_unsent: u64,
    /// Records committed since the buffer was created.
    pub written: u64,
    /// Records that never reached the disk (memory queue overflow).
    pub lost: u64,
    /// Records waiting in memory because the disk refused them.
    pub queued_in_memory: u64,
    /// The last write error, while writes fail.
    pub write_error: Option<String>,
    /// Records the fleet rejected as malformed, kept in quarantine.
    pub quarantined: u64,
}

/// State shared by the writer and the readers.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    /// The counters as of the last commit.
    counters: Mutex<Counters>,
    /// Records waiting in memory, and the current write error.
    pending: Mutex<(u64, Option<String>)>,
    /// Id ↔ name, for devices (kind 0) and metrics (kind 1).
    names: Mutex<Names>,
    /// Connection for readers and the cursor (WAL: readers never block the writer).
    reader: Mutex<Connection>,
}

/// The two name maps.
#[derive(Debug, Default)]
pub(crate) struct Names {
    by_id: [HashMap<i64, &'static str>; 2],
    by_name: [HashMap<&'static str, i64>; 2],
}

/// Kinds of names.
pub(crate) const DEVICE: usize = 0;
/// Metric names.
pub(crate) const METRIC: usize = 1;

impl Names {
    pub(crate) fn load(conn: &Connection) -> rusqlite::Result<Names> {
        let mut names = Names::default();
        let mut stmt = conn.prepare("SELECT kind, id, name FROM names")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (kind, id, name) = row?;
            if let Ok(kind @ (DEVICE | METRIC)) = usize::try_from(kind) {
                names.insert(kind, id, intern(&name));
            }
        }
        Ok(names)
    }

    fn insert(&mut self, kind: usize, id: i64, name: &'static str) {
        self.by_id[kind].insert(id, name);
        self.by_name[kind].insert(name, id);
    }

    /// The id of `name`, creating it (inside the caller's transaction).
    pub(crate) fn id(
        &mut self,
        conn: &Connection,
        kind: usize,
        name: &str,
    ) -> rusqlite::Result<i64> {
        if let Some(id) = self.by_name[kind].get(name) {
            return Ok(*id);
        }
        let kind_i = kind as i64;
        conn.execute(
            "INSERT OR IGNORE INTO names (kind, id, name)
             VALUES (?1, (SELECT coalesce(max(id), -1) + 1 FROM names WHERE kind = ?1), ?2)",
            params![kind_i, name],
        )?;
        let id: i64 = conn.query_row(
            "SELECT id FROM names WHERE kind = ?1 AND name = ?2",
            params![kind_i, name],
            |r| r.get(0),
        )?;
        self.insert(kind, id, intern(name));
        Ok(id)
    }

    /// Forgets ids created by a transaction that rolled back.
    pub(crate) fn forget_above(&mut self, kind: usize, keep_through: Option<i64>) {
        let keep = |id: &i64| keep_through.is_some_and(|k| *id <= k);
        self.by_id[kind].retain(|id, _| keep(id));
        self.by_name[kind].retain(|_, id| keep(id));
    }

    pub(crate) fn max_id(&self, kind: usize) -> Option<i64> {
        self.by_id[kind].keys().max().copied()
    }

    fn name(&self, kind: usize, id: i64) -> Option<&'static str> {
        self.by_id[kind].get(&id).copied()
    }
}

/// A `records` row as read: seq, device id, received_at ms, device_time
/// delta, state, flags, metrics blob.
type RawRow = (i64, i64, i64, Option<i64>, i64, i64, Vec<u8>);

/// The buffer: open once, then shared by the writer thread, the API and the
/// uplink.
#[derive(Debug, Clone)]
pub struct Buffer {
    shared: Arc<Shared>,
}

/// Opens (or creates) the buffer, checking and if need be salvaging it.
pub fn open(settings: Settings) -> Result<(Buffer, OpenReport), BufferError> {
    let report = salvage::check_or_salvage(&settings)?;
    let mut conn = connect(&settings.path, settings.durability)?;
    let sql = |source| BufferError::Sqlite {
        path: settings.path.clone(),
        source,
    };
    let mut counters = Counters::load(&conn).map_err(sql)?;
    let max_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .map_err(sql)?;
    let max_seq = max_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    counters.next_seq = counters.next_seq.max(max_seq + 1).max(1);
    if !stopped_cleanly(&conn).map_err(sql)? {
        counters.next_seq += SEQ_SAFETY_GAP;
        tracing::warn!(
            next_seq = counters.next_seq,
            "the previous run did not stop cleanly: numbering continues {SEQ_SAFETY_GAP} higher, \
             so no seq that was streamed live but not yet saved is ever used again"
        );
    }
    // From here until a clean stop, a restart must assume a crash. The
    // raised `next_seq` is saved now, so a second crash cannot reuse it.
    let tx = conn.transaction().map_err(sql)?;
    counters.save(&tx).map_err(sql)?;
    set_clean_stop(&tx, false).map_err(sql)?;
    tx.commit().map_err(sql)?;
    let names = Names::load(&conn).map_err(sql)?;
    let buffer = Buffer {
        shared: Arc::new(Shared {
            settings,
            counters: Mutex::new(counters),
            pending: Mutex::new((0, None)),
            names: Mutex::new(names),
            reader: Mutex::new(conn),
        }),
    };
    Ok((buffer, report))
}

/// A connection with the buffer's pragmas; creates the schema if needed.
pub(crate) fn connect(path: &Path, durability: Durability) -> Result<Connection, BufferError> {
    let sql = |source| BufferError::Sqlite {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BufferError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    let conn = Connection::open(path).map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    let synchronous = match durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sql)?;
    schema::migrate(&conn, path)?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is plain data, valid after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Buffer {
    /// The `seq` the hub should assign next.
    pub fn next_seq(&self) -> u64 {
        lock(&self.shared.counters).next_seq
    }

    /// The counters as of the last commit.
    pub fn counters(&self) -> Counters {
        *lock(&self.shared.counters)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.settings.path
    }

    /// Starts the writer thread, which takes records from `records` until
    /// it closes, then commits what it holds and ends.
    pub fn start_writer(
        &self,
        records: tokio::sync::mpsc::Receiver<Arc<Record>>,
    ) -> Result<WriterHandle, BufferError> {
        writer::start(self.clone(), records)
    }

    /// What status shows.
    pub fn status(&self) -> BufferStatus {
        let counters = self.counters();
        let (queued, write_error) = lock(&self.shared.pending).clone();
        let oldest = self.oldest_unsent_received_at().ok().flatten();
        BufferStatus {
            records: counters.stored,
            capacity: self.shared.settings.max_records,
            unsent: counters.unsent,
            oldest_unsent_received_at: oldest,
            evicted_unsent: counters.evicted_unsent,
            written: counters.written,
            lost: counters.lost,
            queued_in_memory: queued,
            write_error,
            quarantined: counters.quarantined,
        }
    }

    fn oldest_unsent_received_at(&self) -> rusqlite::Result<Option<DateTime<Utc>>> {
        let cursor = self.counters().cursor;
        let conn = lock(&self.shared.reader);
        let ms: Option<i64> = conn
            .query_row(
                "SELECT received_at FROM records WHERE seq > ?1 ORDER BY seq LIMIT 1",
                [i64::try_from(cursor).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()?;
        Ok(ms.and_then(DateTime::from_timestamp_millis))
    }

    /// Up to `limit` unsent records (`seq` > cursor), in `seq` order.
    pub fn unsent(&self, limit: usize) -> Result<Vec<Record>, BufferError> {
        let cursor = self.counters().cursor;
        self.select(
            "WHERE r.seq > ?1 ORDER BY r.seq LIMIT ?2",
            &[&i64::try_from(cursor).unwrap_or(i64::MAX), &(limit as i64)],
        )
    }

    /// The newest stored record of each device among the newest `scan`
    /// records (enough to cover every meter that reported lately), in
    /// `seq` order: what a late joiner of the live feed sees first after a
    /// restart.
    pub fn latest_per_device(&self, scan: usize) -> Result<Vec<Record>, BufferError> {
        let recent = self.select("ORDER BY r.seq DESC LIMIT ?1", &[&(scan as i64)])?;
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<Record> = recent
            .into_iter()
            .filter(|r| seen.insert(r.device.clone()))
            .collect();
        latest.reverse();
        Ok(latest)
    }

    /// Records of `device` (or all) received at or after `since`, oldest
    /// first, at most `limit`.
    pub fn history(
        &self,
        device: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Record>, BufferError> {
        let since_ms = since.map_or(i64::MIN, |t| t.timestamp_millis());
        let device_id = match device {
            None => None,
            Some(name) => match lock(&self.shared.names).by_name[DEVICE].get(name) {
                Some(id) => Some(*id),
                None => return Ok(Vec::new()),
            },
        };
        match device_id {
            Some(id) => self.select(
                "WHERE r.device = ?1 AND r.received_at >= ?2 ORDER BY r.seq LIMIT ?3",
                &[&id, &since_ms, &(limit as i64)],
            ),
            None => self.select(
                "WHERE r.received_at >= ?1 ORDER BY r.seq LIMIT ?2",
                &[&since_ms, &(limit as i64)],
            ),
        }
    }

    fn select(
        &self,
        tail: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Record>, BufferError> {
        self.select_from("records", tail, args)
    }

    fn select_from(
        &self,
        table: &str,
        tail: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Record>, BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let conn = lock(&self.shared.reader);
        let query = format!(
            "SELECT r.seq, r.device, r.received_at, r.device_time, r.state, r.flags, r.metrics
             FROM {table} r {tail}"
        );
        let mut stmt = conn.prepare_cached(&query).map_err(sql_err)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            })
            .map_err(sql_err)?;
        let rows: Vec<RawRow> = rows.collect::<Result<_, _>>().map_err(sql_err)?;
        drop(stmt);
        drop(conn);
        // The writer registers every name it uses in this map before its
        // commit, so every committed id is known here.
        let names = lock(&self.shared.names);
        let mut records = Vec::with_capacity(rows.len());
        for (seq, device, received_ms, device_delta, state, flags, blob) in rows {
            let device_name = names.name(DEVICE, device).unwrap_or("?");
            let received_at = DateTime::from_timestamp_millis(received_ms).unwrap_or_default();
            let device_time = device_delta.and_then(|d| {
                DateTime::from_timestamp(received_ms.div_euclid(1000).saturating_add(d), 0)
            });
            let metrics = match row::decode_metrics(&blob, |id| names.name(METRIC, i64::from(id))) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(seq, error = %e, "buffer row with unreadable metrics; kept, served without them");
                    Vec::new()
                }
            };
            records.push(Record {
                seq: u64::try_from(seq).unwrap_or(0),
                device: Arc::from(device_name),
                received_at,
                device_time,
                metrics,
                state: row::state_from_code(state),
                flags: row::flags_from_bits(flags),
            });
        }
        Ok(records)
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
                 (seq, device, received_at, device_time, state, flags, metrics, quarantined_at, reason)
             SELECT seq, device, received_at, device_time, state, flags, metrics, ?2, ?3
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
            let record = self.select_from("quarantine", "WHERE r.seq = ?1", &[&seq])?;
            out.extend(record.into_iter().map(|r| (r, reason.clone())));
        }
        Ok(out)
    }

    /// Records that every `seq` ≤ `up_to` was accepted by the fleet. The
    /// cursor never moves back.
    pub fn mark_pushed(&self, up_to: u64) -> Result<(), BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        // The counters lock is the write lock: taken before the transaction,
        // in the same order as the writer thread, so neither waits on the other
        // inside SQLite and the in-memory counters always match the file.
        let mut shared = lock(&self.shared.counters);
        if up_to <= shared.cursor {
            return Ok(());
        }
        let mut counters = *shared;
        let mut conn = lock(&self.shared.reader);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql_err)?;
        let newly: i64 = tx
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
        counters.save(&tx).map_err(sql_err)?;
        tx.commit().map_err(sql_err)?;
        *shared = counters;
        Ok(())
    }
}
