//! The offline ring buffer: every record, on the gateway's disk, until the
//! fleet has it and space is needed.
//!
//! # On disk
//! One SQLite file, `{state_dir}/buffer.sqlite`, in WAL mode, 1 KiB pages
//! ([`PAGE_SIZE`]; a file created by an older slmd keeps its 4 KiB), held
//! by the daemon alone while it runs ([`Settings::exclusive`]: the
//! write-ahead log's index in memory, no `-shm` file). Tables:
//! - `records`: one row per record, keyed by `seq`, with a checksum (see
//!   [`row`] for the compact row form);
//! - `names`: small integer ids for device ids (kind 0) and metric names
//!   (kind 1), so rows do not repeat strings;
//! - `meta`: the persisted counters, one integer each, and their checksum
//!   (see [`Counters`]);
//! - `quarantine`: copies of records the fleet rejected, and rows a salvage
//!   found doubtful, with the reason;
//! - `skipped`: `seq` ranges handed out or reserved but never stored
//!   (unclean stops), declared to the fleet with the next push;
//! - `epochs`: the numbering epoch of each `seq` range (see [`numbering`]);
//! - `salvage`: salvages of damaged files, with their progress.
//!
//! Beside it, `buffer.anchor` ([`anchor`]) holds what a damaged or deleted
//! buffer must not take with it: the numbering limit and epoch, a copy of
//! the push cursor, the names.
//!
//! The schema version is `PRAGMA user_version`; [`schema::migrate`] brings
//! older files forward and refuses newer ones.
//!
//! # Invariants, and where they are kept
//! - **Accounting.** `written = stored + evicted_pushed + evicted_unsent`
//!   at every commit: the writer (and the salvage) update the counters in
//!   the same transaction as the rows they count.
//! - **`seq` never reused**, even when the buffer file is lost, zeroed,
//!   truncated or deleted: numbers are reserved in the anchor in blocks
//!   before the hub hands them out ([`numbering::Numbering::ensure`]), and
//!   [`open`] continues after everything the anchor, the buffer and any
//!   damaged file say was used ([`numbering::decide`]). After an unclean
//!   stop the numbers between the last commit and the anchor's limit are
//!   declared skipped (at most [`numbering::SKIP_BOUND`]); when nothing can
//!   rule out reuse, a new epoch starts.
//! - **Bounded.** Before an insert would pass `max_records` (or after a
//!   commit passes `max_bytes`), the writer evicts in chunks: already-pushed
//!   records first (they only serve history), then the oldest unsent ones,
//!   counted with their `received_at` range; one log line per episode.
//! - **Delivered means acknowledged.** The push cursor (`meta.cursor`: every
//!   `seq` ≤ cursor was accepted by the fleet, or quarantined) only moves
//!   forward, in [`Buffer::mark_pushed`] (in memory, committed with the
//!   writer's next commit) and [`Buffer::quarantine`] (its own
//!   transaction). A cursor lost to a crash only sends records again.
//! - **A poison record is kept.** A record the fleet rejects as malformed
//!   is copied to `quarantine` (outside the ring, the newest
//!   [`QUARANTINE_KEEP`] kept), flagged `quarantined` in `records`, and
//!   counted in `meta.quarantined`; the cursor moves past it so it never
//!   blocks the records behind it.
//! - **Crash safety.** A commit is atomic (WAL). `durability = "normal"`
//!   (`synchronous=NORMAL`): a killed process loses nothing committed; a
//!   power cut may lose the commits the kernel had not yet written back.
//!   `"full"` (`synchronous=FULL`): a power cut loses nothing committed
//!   either, at the cost of an fsync per commit. What is not yet committed
//!   is at most `commit_interval` of readings ([`writer`]); a clean stop
//!   and a reload commit it.
//! - **Gentle on flash.** Every setting that decides how many bytes reach
//!   the disk per record is here, with its reason: commits grouped by the
//!   writer, the cursor riding along with them ([`Buffer::mark_pushed`]),
//!   [`PAGE_SIZE`], [`CHECKPOINT_BYTES`], [`JOURNAL_SIZE_LIMIT`], the
//!   exclusive VFS, and the anchor's cursor copy at most every
//!   [`numbering::CURSOR_COPY_EVERY`]. `synchronous` is the user's choice
//!   (`durability`): `FULL` adds no bytes of slmd's own, but each fsync
//!   makes the file system commit its journal.
//! - **A damaged file never stops the daemon, and loses only what is
//!   unreadable.** [`open`] checks the file (bounded `quick_check`); a file
//!   whose *content* fails is moved aside and a fresh buffer started at once;
//!   its rows are salvaged in the background, page by page, and each is
//!   checked before it is kept ([`salvage`]). A refusal by the disk or the
//!   OS (full, I/O error) is not damage: [`open_or_defer`] lets the daemon
//!   start anyway and the writer opens the buffer when it can.
//! - **Disk full / I/O errors.** The writer keeps failed batches in a
//!   bounded memory queue and retries; overflow is counted as lost. The
//!   live fan-out is not involved and keeps working.

pub mod alerts;
pub mod anchor;
mod counters;
mod levels;
mod names;
pub mod numbering;
mod open;
pub mod pages;
mod push;
pub mod row;
mod salvage;
pub mod schema;
pub mod timeline;
mod writer;

use crate::config::Durability;
use crate::record::Record;
use chrono::{DateTime, Utc};
use names::{DEVICE, METRIC, Names};
use numbering::Numbering;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use counters::Counters;
pub use open::{Adopted, SEQ_SAFETY_GAP, Start, open, open_or_defer, start_deferred};
pub(crate) use open::{declare_skip, set_clean_stop, stopped_cleanly};
pub use push::{Batch, Consumer};
pub use salvage::{OpenReport, SalvageStatus};
pub use writer::WriterHandle;

/// Most `seq` numbers one history read scans past where it starts: what
/// bounds its cost when the device asked for has few records among many
/// (the read stops there and says where to go on, see [`HistoryPage`]).
pub const HISTORY_SCAN: u64 = 100_000;

/// Quarantined records kept (the newest); older ones are dropped, still
/// counted in `meta.quarantined`.
pub const QUARANTINE_KEEP: i64 = 10_000;

/// File name of the buffer inside the state folder.
pub const FILE_NAME: &str = "buffer.sqlite";

/// Default `[buffer].commit_interval`: what a `kill -9` may cost, and what
/// buys the low write volume (README, "Flash wear").
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(15);

/// Readings waiting that make a commit due before its interval is up: a
/// busy gateway commits many full pages at a time instead of holding an
/// unbounded group in memory (about 27 KiB of rows; below `batch_max`, so
/// one transaction takes them all).
pub const COMMIT_AT_RECORDS: usize = 500;

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
    /// Longest a record waits in memory before its commit (`0`: at once).
    pub commit_interval: Duration,
    /// Hold the file for this process alone (see [`EXCLUSIVE_VFS`]);
    /// `false` lets other programs read it while the daemon runs.
    pub exclusive: bool,
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
            commit_interval: config.buffer.commit_interval,
            exclusive: config.buffer.exclusive,
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

/// The buffer once it is open: set at start, or later by a deferred writer.
pub type BufferSlot = Arc<std::sync::OnceLock<Buffer>>;

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
    /// Records that never reached the disk (memory queue overflow), or that
    /// a damaged file lost.
    pub lost: u64,
    /// Records waiting in memory for their commit, as of the writer's last
    /// commit attempt: none while writes succeed; while the disk refuses
    /// them, the records waiting for it.
    pub queued_in_memory: u64,
    /// The last write error, while writes fail.
    pub write_error: Option<String>,
    /// Records the fleet rejected as malformed, kept in quarantine.
    pub quarantined: u64,
    /// `seq` numbers declared skipped (unclean stops), ever.
    pub skipped: u64,
    /// The numbering epoch of new records (0 unless numbering had to start
    /// again without knowing which numbers were used).
    pub epoch: u64,
    /// The salvage of a damaged file, while one runs or after one ran.
    pub salvage: Option<SalvageStatus>,
    /// Write transactions, since start and in the last minute.
    pub commits: CommitStats,
    /// Bytes this process has caused to be written to storage since it
    /// started (`write_bytes` of `/proc/self/io`; the buffer, its
    /// write-ahead log and the anchor are the only files slmd writes), when
    /// the kernel reports it.
    pub disk_write_bytes: Option<u64>,
}

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent
/// to storage (page-cache pages it dirtied), the figure that wears a card.
pub fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// State shared by the writer and the readers.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    /// The counters as of the last commit.
    counters: Mutex<Counters>,
    /// How far each durable consumer of records has got (locked after
    /// `counters`, never before).
    positions: Mutex<push::Positions>,
    /// Records waiting in memory, and the current write error.
    pending: Mutex<(u64, Option<String>)>,
    /// Id ↔ name, for devices (kind 0) and metrics (kind 1).
    names: Mutex<Names>,
    /// Connection for readers and the cursor (WAL: readers never block the writer).
    reader: Mutex<Connection>,
    /// The numbering: where the anchor keeps its reservations.
    numbering: Arc<Numbering>,
    /// `(first seq, epoch)` of each numbering epoch, by first seq.
    epochs: Vec<(u64, u64)>,
    /// Damaged files to salvage, taken by the writer's start.
    jobs: Mutex<Vec<(PathBuf, salvage::Job)>>,
    /// The salvage's progress (`None`: there was none).
    salvage: Mutex<Option<SalvageStatus>>,
    /// Asks a running salvage to stop (it resumes at the next start).
    stop_salvage: Arc<AtomicBool>,
    /// The salvage thread, joined at shutdown.
    salvage_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Where times start along `seq`, for `history?since=`.
    timeline: Mutex<timeline::Timeline>,
    /// Wakes the writer: the cursor moved, or a commit is asked for now.
    wake: tokio::sync::Notify,
    /// Commit what is waiting now instead of at the end of the interval.
    commit_now: AtomicBool,
    /// The writer's commits, for `/metrics`.
    commits: Mutex<CommitLog>,
}

/// Commits made by the writer: the total, and their times over the last
/// minute (at most [`CommitLog::WINDOW_MAX`] kept).
#[derive(Debug, Default)]
pub(crate) struct CommitLog {
    total: u64,
    recent: std::collections::VecDeque<std::time::Instant>,
}

impl CommitLog {
    /// Most commit times kept for the per-minute figure (more than any
    /// setting makes: 64 meters committing each reading at 10 a second
    /// make 38 400 a minute).
    const WINDOW_MAX: usize = 65_536;
    const MINUTE: Duration = Duration::from_secs(60);

    fn note(&mut self, now: std::time::Instant) {
        self.total += 1;
        self.forget_before(now);
        if self.recent.len() == Self::WINDOW_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
    }

    fn forget_before(&mut self, now: std::time::Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= Self::MINUTE)
        {
            self.recent.pop_front();
        }
    }
}

/// The writer's commits, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CommitStats {
    /// Write transactions committed since the daemon started (records,
    /// the cursor riding along, evictions, quarantines).
    pub total: u64,
    /// Of those, in the last 60 s.
    pub last_minute: u64,
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

/// Page size of a buffer file created by this build (an existing file
/// keeps its own: SQLite cannot change it in WAL mode). Each commit writes
/// whole pages: the last leaf of `records` (rewritten with the rows added),
/// a new leaf or two, their parent and the counters' page. At 1 KiB those
/// cost about a third of what they cost at the default 4 KiB (measured,
/// README "Flash wear"); rows are small (about 60 bytes), so leaves stay
/// full and the tree stays shallow (four levels at ten million records).
pub const PAGE_SIZE: u32 = 1024;

/// Write-ahead log size at which a commit checkpoints it into the file.
/// A checkpoint writes each page the log holds once more, however many
/// commits changed it; the pages that every commit repeats (the counters,
/// the last leaf, their parents) are a few KiB, so checkpointing often
/// costs little. A small log keeps the file's copy near the log's
/// (start-up recovery reads the whole log) and makes `synchronous=NORMAL`
/// sync it often: the checkpoint is when the log is synced.
pub const CHECKPOINT_BYTES: i64 = 128 * 1024;

/// Largest write-ahead log kept after a checkpoint: a burst (catching up
/// after an outage, a salvage) that grew it gives the space back; below
/// it the log is reused in place, which costs the file system nothing.
pub const JOURNAL_SIZE_LIMIT: i64 = 1024 * 1024;

/// The SQLite VFS of an exclusive buffer: it holds a lock on the file for
/// the daemon's lifetime and keeps the write-ahead log's index in the
/// daemon's memory, shared by its connections, instead of in a `-shm` file
/// beside the buffer. That file's pages are rewritten by every commit and
/// written back by the kernel every half minute: about 40 KiB a minute,
/// more than the records themselves at four meters.
const EXCLUSIVE_VFS: &str = "unix-excl";

/// A connection with the buffer's pragmas; creates the schema if needed.
pub(crate) fn connect(settings: &Settings) -> Result<Connection, BufferError> {
    let path = &settings.path;
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
    let vfs = if settings.exclusive {
        EXCLUSIVE_VFS
    } else {
        "unix"
    };
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs)
        .map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    // Only a file without pages takes it; an existing one keeps its own.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    let synchronous = match settings.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(sql)?;
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(sql)?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        (CHECKPOINT_BYTES / page_size.max(512)).max(1),
    )
    .map_err(sql)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)
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

    /// Asks the writer to commit what it holds now rather than at the end
    /// of its interval (a reload does). Returns at once.
    pub fn commit_soon(&self) {
        self.shared
            .commit_now
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Commits made since start, and in the last minute.
    pub fn commit_stats(&self) -> CommitStats {
        let mut log = lock(&self.shared.commits);
        log.forget_before(std::time::Instant::now());
        CommitStats {
            total: log.total,
            last_minute: log.recent.len() as u64,
        }
    }

    fn note_commit(&self) {
        lock(&self.shared.commits).note(std::time::Instant::now());
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

    /// Starts salvaging the damaged files found at open, if any, in a
    /// thread of its own; stopped (progress kept) by [`Buffer::stop_salvage`].
    fn spawn_salvage(&self) {
        let jobs = std::mem::take(&mut *lock(&self.shared.jobs));
        if jobs.is_empty() {
            return;
        }
        let buffer = self.clone();
        let stop = Arc::clone(&self.shared.stop_salvage);
        let spawned = std::thread::Builder::new()
            .name("slmd-salvage".into())
            .spawn(move || salvage::run(buffer, jobs, stop));
        match spawned {
            Ok(handle) => *lock(&self.shared.salvage_thread) = Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the salvage thread; it runs at the next start");
                self.set_salvage(|s| s.running = false);
            }
        }
    }

    /// Asks a running salvage to stop; it resumes at the next start.
    pub(crate) fn stop_salvage(&self) {
        self.shared
            .stop_salvage
            .store(true, std::sync::atomic::Ordering::Release);
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
            skipped: counters.skipped,
            epoch: self.shared.numbering.epoch(),
            salvage: lock(&self.shared.salvage).clone(),
            commits: self.commit_stats(),
            disk_write_bytes: process_write_bytes(),
        }
    }

    /// The numbering this buffer's records get (the hub hands out numbers
    /// through it).
    pub fn numbering(&self) -> Arc<Numbering> {
        Arc::clone(&self.shared.numbering)
    }

    /// Whether a damaged file's rows are still being salvaged: the uplink
    /// waits, so the cursor never passes salvaged rows unsent.
    pub fn salvage_pending(&self) -> bool {
        lock(&self.shared.salvage)
            .as_ref()
            .is_some_and(|s| s.running)
    }

    /// The salvage's progress, if there was one.
    pub fn salvage_status(&self) -> Option<SalvageStatus> {
        lock(&self.shared.salvage).clone()
    }

    fn set_salvage(&self, change: impl FnOnce(&mut SalvageStatus)) {
        let mut status = lock(&self.shared.salvage);
        change(status.get_or_insert_with(SalvageStatus::default));
    }

    /// Writes the names to the anchor when ids were created since `mark`:
    /// called before the commit that uses them, so the anchor always knows
    /// every committed id.
    fn mirror_names_since(&self, mark: names::Mark) {
        let (devices, metrics) = {
            let names = lock(&self.shared.names);
            if !names.grew_since(mark) {
                return;
            }
            (names.pairs(DEVICE), names.pairs(METRIC))
        };
        self.shared.numbering.names_changed(devices, metrics);
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
        let recent = self.select(
            &format!(
                "WHERE r.flags & {} = 0 ORDER BY r.seq DESC LIMIT ?1",
                row::INTERVAL_BIT
            ),
            &[&(scan as i64)],
        )?;
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<Record> = recent
            .into_iter()
            .filter(|r| seen.insert(r.device.clone()))
            .collect();
        latest.reverse();
        Ok(latest)
    }

    /// Records of `device` (or all) received at or after `since`, oldest
    /// first, at most `limit` (and within one [`HISTORY_SCAN`]); see
    /// [`Buffer::history_page`].
    pub fn history(
        &self,
        device: Option<&str>,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<Record>, BufferError> {
        Ok(self.history_page(device, since, None, limit)?.records)
    }

    /// One page of history: records of `device` (or all) received at or
    /// after `since` (any time when `None`) with a `seq` above `after`, in
    /// `seq` order (the order they were received), at most `limit`.
    ///
    /// Cost, whatever the buffer holds: `since` is placed by the
    /// [`timeline`] kept in memory (no index on disk, no table scan), then
    /// the read walks `seq` forward over at most [`HISTORY_SCAN`] numbers.
    /// When it stops at `limit` or at the end of that window,
    /// [`HistoryPage::more_after`] says where to go on: the same `since`
    /// with `after` = that gives the next page, never skipping or repeating
    /// a record whatever the clock did. After a backward clock step, records
    /// stamped before `since` are left out even if they arrived later.
    pub fn history_page(
        &self,
        device: Option<&str>,
        since: Option<DateTime<Utc>>,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BufferError> {
        let empty = HistoryPage {
            records: Vec::new(),
            more_after: None,
        };
        let device_id = match device {
            None => None,
            Some(name) => match lock(&self.shared.names).id_of(DEVICE, name) {
                Some(id) => Some(id),
                None => return Ok(empty),
            },
        };
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let range = seq_range(&lock(&self.shared.reader)).map_err(sql_err)?;
        let Some((oldest, newest)) = range else {
            return Ok(empty);
        };
        let mut start = after.map_or(oldest, |a| a.saturating_add(1).max(oldest));
        if let Some(since) = since {
            let salvage = self.salvage_status().map(|s| (s.rows_saved, s.running));
            let mut timeline = lock(&self.shared.timeline);
            timeline
                .catch_up(&self.shared.reader, salvage)
                .map_err(sql_err)?;
            timeline.forget_below(oldest);
            match timeline.start_of(since.timestamp_millis()) {
                Some(first) => start = start.max(first),
                None => return Ok(empty),
            }
        }
        if start > newest || limit == 0 {
            return Ok(empty);
        }
        // Past the scan window's end: stop, and say where to go on.
        let end = start.saturating_add(HISTORY_SCAN);
        let sql = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let since_ms = since.map_or(i64::MIN, |t| t.timestamp_millis());
        // One more than asked, to tell whether more follow.
        let wanted = sql(limit as u64).saturating_add(1);
        let mut records = match device_id {
            // Readings only: interval levels have their own route
            // (`Buffer::levels`).
            Some(id) => self.select(
                "WHERE r.seq >= ?1 AND r.seq < ?2 AND r.received_at >= ?3 AND r.device = ?4 \
                 AND r.flags & 32 = 0 ORDER BY r.seq LIMIT ?5",
                &[&sql(start), &sql(end), &since_ms, &id, &wanted],
            )?,
            None => self.select(
                "WHERE r.seq >= ?1 AND r.seq < ?2 AND r.received_at >= ?3 AND r.flags & 32 = 0 \
                 ORDER BY r.seq LIMIT ?4",
                &[&sql(start), &sql(end), &since_ms, &wanted],
            )?,
        };
        let more_after = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|r| r.seq)
        } else if end <= newest {
            Some(end - 1)
        } else {
            None
        };
        Ok(HistoryPage {
            records,
            more_after,
        })
    }

    fn select(
        &self,
        tail: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Record>, BufferError> {
        let (records, bad) = self.select_checked("records", tail, args)?;
        if let Some(first) = bad.first() {
            self.note_bad_rows(*first, bad.len());
        }
        Ok(records)
    }

    /// Logs rows that fail their checksum once per run (they are never
    /// served; the uplink quarantines them when it reaches them).
    fn note_bad_rows(&self, first: u64, count: usize) {
        static NOTED: std::sync::Once = std::sync::Once::new();
        NOTED.call_once(|| {
            tracing::error!(
                seq = first,
                "buffer rows changed on disk (checksum mismatch, {count} in one read, first seq \
                 {first}); they are not served, and the fleet push quarantines them"
            );
        });
    }

    /// Rows of `table` (the `records` layout), decoded; rows whose
    /// checksum fails, or whose ids have no name, are left out and
    /// returned by `seq`.
    fn select_checked(
        &self,
        table: &str,
        tail: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<(Vec<Record>, Vec<u64>), BufferError> {
        let sql_err = |source| BufferError::Sqlite {
            path: self.shared.settings.path.clone(),
            source,
        };
        let conn = lock(&self.shared.reader);
        let query = format!(
            "SELECT r.seq, r.device, r.received_at, r.device_time, r.state, r.flags, r.metrics, r.crc
             FROM {table} r {tail}"
        );
        let mut stmt = conn.prepare_cached(&query).map_err(sql_err)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    (
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, Vec<u8>>(6)?,
                    ),
                    r.get::<_, Option<i64>>(7)?,
                ))
            })
            .map_err(sql_err)?;
        let rows: Vec<(RawRow, Option<i64>)> = rows.collect::<Result<_, _>>().map_err(sql_err)?;
        drop(stmt);
        drop(conn);
        // The writer registers every name it uses in this map before its
        // commit, so every committed id is known here.
        let names = lock(&self.shared.names);
        let mut records = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        for ((seq, device, received_ms, device_delta, state, flags, blob), crc) in rows {
            let checked = row::RawRow {
                seq,
                device,
                received_at: received_ms,
                device_time: device_delta,
                state,
                flags,
                metrics: blob,
            };
            let seq_u = u64::try_from(seq).unwrap_or(0);
            if crc.is_some_and(|c| c != row::crc(&checked)) {
                bad.push(seq_u);
                continue;
            }
            let Some(device_name) = names.name(DEVICE, device) else {
                bad.push(seq_u);
                continue;
            };
            let Ok(mut metrics) =
                row::decode_metrics(&checked.metrics, |id| names.name(METRIC, i64::from(id)))
            else {
                bad.push(seq_u);
                continue;
            };
            let received_at = DateTime::from_timestamp_millis(received_ms).unwrap_or_default();
            let device_time = device_delta.and_then(|d| {
                DateTime::from_timestamp(received_ms.div_euclid(1000).saturating_add(d), 0)
            });
            let interval = row::take_interval(&mut metrics, flags);
            records.push(Record {
                seq: seq_u,
                device: Arc::from(device_name),
                received_at,
                device_time,
                metrics,
                state: row::state_from_code(state),
                flags: row::flags_from_bits(flags),
                interval,
            });
        }
        Ok((records, bad))
    }
}

/// One page of history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// The records, in `seq` order.
    pub records: Vec<Record>,
    /// When more may follow: the `seq` to continue after (`after`). The
    /// page stopped at its limit, or at the end of its scan window (then it
    /// may even be empty).
    pub more_after: Option<u64>,
}

/// The oldest and newest `seq` in the ring, if any: two lookups at the
/// ends of the primary key (one `min(), max()` query would scan the table).
fn seq_range(conn: &Connection) -> rusqlite::Result<Option<(u64, u64)>> {
    let end = |order: &str| -> rusqlite::Result<Option<u64>> {
        conn.prepare_cached(&format!(
            "SELECT seq FROM records ORDER BY seq {order} LIMIT 1"
        ))?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()
        .map(|seq| seq.map(|s| u64::try_from(s).unwrap_or(0)))
    };
    Ok(end("ASC")?.zip(end("DESC")?))
}
