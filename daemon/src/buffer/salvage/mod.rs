//! The start-up check, and salvage of a damaged buffer in the background.
//!
//! # The check
//! SQLite's `quick_check` under a time budget (a progress handler
//! interrupts it after [`CHECK_BUDGET`]), so start-up stays fast on a
//! buffer of any size: small files are checked completely, huge ones as far
//! as the budget reaches. Whatever the budget, the schema, the counters
//! (with their checksum) and the newest row must read, and the file must be
//! as long as its header says.
//!
//! # Moving aside
//! A file whose content fails is renamed `buffer.sqlite.salvaging-<UTC
//! time>` (with its `-wal` and `-shm`), and a fresh buffer is created at
//! once, so the daemon is ready and reading meters within the time of the
//! check. What SQLite can still read of the old file (counters, names,
//! epochs) seeds the fresh buffer: the push cursor, the name ids, the
//! counters. Without them, the anchor's copies are used (see
//! [`super::anchor`]). The salvage is recorded in the fresh buffer's
//! `salvage` table.
//!
//! # Salvage
//! A background thread reads the old file page by page with our own page
//! reader ([`super::pages`]), which needs neither the header nor the schema
//! nor the b-tree's interior pages: every cell of every leaf page that
//! parses is a candidate. A candidate shaped like a `records` row is
//! checked: its checksum (rows written since schema 3 carry one), its device
//! and metric ids against the old file's names, and for older rows without
//! a checksum, physical plausibility (levels in −30…200 dB, a `received_at`
//! between 2001 and the file's last change, a known state and flags). A row
//! that passes is copied into the fresh buffer under its own `seq`; a
//! doubtful one goes to the quarantine table with the reason, never to the
//! fleet. Progress is committed with each batch, so a salvage interrupted by
//! a kill resumes where it was at the next start. At the end the counters
//! are completed, numbers that an unclean stop skipped are declared, the
//! file is renamed `buffer.sqlite.corrupt-<same time>` and kept for the
//! operator, and one line says what was saved.
//!
//! The uplink does not push while a salvage runs: salvaged rows have lower
//! `seq`s than new ones, and the cursor must not pass them unsent.
//!
//! The log gets one line when a salvage starts, a progress line at most
//! every [`PROGRESS_EVERY`], and one summary, whatever the damage.

mod check;
mod rows;

pub use check::OpenReport;
pub(super) use check::{check_and_move_aside, evidence, is_io, pending};
pub(super) use rows::max_seq_in;

use super::names::DEVICE;
use super::names::{NamePairs, Names};
use super::pages::RawFile;
use super::{Buffer, lock, row};
use check::mark_done;
use rows::{Good, check_row, record_shape, scan_names, stored_crc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Rows per salvage transaction.
const BATCH_ROWS: usize = 2_000;

/// How often, at most, a running salvage logs its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// A salvage recorded in the fresh buffer's `salvage` table (as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Job {
    /// Why the file was judged damaged.
    pub(super) reason: String,
    /// The next unit (page or WAL frame) of the page reader to read.
    pub(super) next_unit: u64,
    /// Units in the file.
    pub(super) units: u64,
    /// The old file's names by id, when known (else read from its pages).
    pub(super) names: Option<NamePairs>,
    /// The old file's page size, if known (the anchor's).
    pub(super) page_size: Option<u32>,
    /// Rows the old file held, when its counters read.
    pub(super) old_stored: Option<u64>,
    /// Declare `[max(skip_floor, highest saved + 1), skip_to]` skipped when
    /// done (an unclean stop whose last committed `seq` is unknown).
    pub(super) skip_to: Option<u64>,
    /// Lower end of that skip at least.
    pub(super) skip_floor: u64,
    /// Rows copied into the fresh buffer.
    pub(super) saved: u64,
    /// Rows kept in quarantine as doubtful, by reason.
    pub(super) doubtful: BTreeMap<String, u64>,
    /// Rows found again (WAL copies, a resumed batch).
    pub(super) already: u64,
    /// Rows evicted to keep the fresh buffer within its cap.
    pub(super) evicted: u64,
    /// Cells that did not parse, and pages that did not read.
    pub(super) bad_cells: u64,
    /// Highest `seq` saved.
    pub(super) max_seq: u64,
    /// Done (the file is being renamed, or was).
    pub(super) done: bool,
}

impl Job {
    fn doubtful_total(&self) -> u64 {
        self.doubtful.values().sum()
    }
}

/// Records a salvage in the fresh buffer (inside the caller's transaction).
pub(super) fn register(conn: &Connection, aside: &Path, job: &Job) -> rusqlite::Result<()> {
    let state = serde_json::to_string(job).unwrap_or_default();
    conn.execute(
        "INSERT OR REPLACE INTO salvage (aside, state) VALUES (?1, ?2)",
        params![key_of(aside), state],
    )?;
    Ok(())
}

/// The salvage table's key for a damaged file: its file name.
fn key_of(aside: &Path) -> String {
    aside
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The recorded salvage of `aside`, if any.
pub(super) fn recorded(conn: &Connection, aside: &Path) -> Option<Job> {
    conn.query_row(
        "SELECT state FROM salvage WHERE aside = ?1",
        [key_of(aside)],
        |r| r.get::<_, String>(0),
    )
    .optional()
    .ok()
    .flatten()
    .and_then(|s| serde_json::from_str(&s).ok())
}

/// What status shows about salvages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SalvageStatus {
    /// Whether a salvage is under way (the uplink waits meanwhile).
    pub running: bool,
    /// The damaged file being (or last) salvaged.
    pub file: Option<String>,
    /// Pages (and WAL frames) read of it.
    pub pages_done: u64,
    /// Pages (and WAL frames) in it.
    pub pages: u64,
    /// Rows copied into the buffer.
    pub rows_saved: u64,
    /// Rows kept in quarantine as doubtful.
    pub rows_doubtful: u64,
    /// Damaged files still waiting.
    pub files_waiting: usize,
}

/// Salvages `jobs` one after the other; returns early (progress saved)
/// when `stop` is set.
pub(super) fn run(buffer: Buffer, jobs: Vec<(PathBuf, Job)>, stop: Arc<AtomicBool>) {
    let settings = buffer.shared.settings.clone();
    let mut conn = match super::connect(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "salvage cannot open the buffer; it resumes at the next start");
            buffer.set_salvage(|s| s.running = false);
            return;
        }
    };
    let total = jobs.len();
    for (i, (aside, job)) in jobs.into_iter().enumerate() {
        buffer.set_salvage(|s| {
            s.running = true;
            s.files_waiting = total - i - 1;
            s.file = Some(aside.display().to_string());
        });
        if !salvage_one(&buffer, &mut conn, &aside, job, &stop) {
            return;
        }
    }
    buffer.set_salvage(|s| s.running = false);
}

/// One damaged file; false when stopped before the end.
fn salvage_one(
    buffer: &Buffer,
    conn: &mut Connection,
    aside: &Path,
    mut job: Job,
    stop: &AtomicBool,
) -> bool {
    if !job.done {
        match RawFile::open(aside, job.page_size) {
            Ok(mut raw) => {
                job.units = raw.units();
                if job.next_unit == 0 {
                    tracing::info!(
                        file = %aside.display(),
                        pages = job.units,
                        page_size = raw.page_size(),
                        "salvaging the damaged buffer's rows ({} pages); the fleet push waits until it is done",
                        job.units
                    );
                } else {
                    tracing::info!(
                        file = %aside.display(),
                        "resuming the salvage of {} at page {} of {}",
                        aside.display(),
                        job.next_unit,
                        job.units
                    );
                }
                if job.names.is_none() {
                    job.names = Some(scan_names(&mut raw));
                }
                let copied = retrying(stop, || {
                    copy_rows(buffer, conn, aside, &mut raw, &mut job, stop)
                });
                if copied != Some(true) {
                    return false;
                }
            }
            Err(e) => {
                tracing::error!(
                    file = %aside.display(),
                    error = %e,
                    "the damaged buffer cannot be read at all; nothing is salvaged from it"
                );
            }
        }
        if retrying(stop, || finish(buffer, conn, aside, &mut job)).is_none() {
            return false;
        }
    }
    match mark_done(aside) {
        Ok(done) => {
            let doubtful = job.doubtful_total();
            let reasons: Vec<String> = job
                .doubtful
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            let lost = job.old_stored.map_or("unknown".to_owned(), |s| {
                s.saturating_sub(job.saved + doubtful).to_string()
            });
            tracing::warn!(
                moved_to = %done.display(),
                rows_saved = job.saved,
                rows_doubtful = doubtful,
                "buffer salvaged: {} records saved into the fresh buffer, {doubtful} doubtful kept in \
                 quarantine{}, {lost} unreadable; the damaged file is kept at {}",
                job.saved,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                done.display()
            );
            buffer.set_salvage(|s| s.file = Some(done.display().to_string()));
        }
        Err(e) => tracing::error!(
            file = %aside.display(),
            error = %e,
            "the damaged buffer's rows are safe, but it cannot be renamed"
        ),
    }
    true
}

/// Runs `step` until it succeeds; a failing write to the buffer (a full
/// disk, an I/O error) is logged when it starts and retried every
/// [`super::writer::RETRY`], like the writer's. `None` when stopped first.
fn retrying<T>(stop: &AtomicBool, mut step: impl FnMut() -> rusqlite::Result<T>) -> Option<T> {
    let mut failing: Option<String> = None;
    loop {
        match step() {
            Ok(value) => {
                if failing.is_some() {
                    tracing::info!("salvage writes resumed");
                }
                return Some(value);
            }
            Err(e) => {
                let message = e.to_string();
                if failing.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        error = %message,
                        "salvage cannot write to the buffer; retrying every {}s (progress is kept)",
                        super::writer::RETRY.as_secs()
                    );
                }
                failing = Some(message);
                if stop.load(Ordering::Acquire) {
                    return None;
                }
                std::thread::sleep(super::writer::RETRY);
            }
        }
    }
}

/// What one batch found.
#[derive(Default)]
struct Batch {
    good: Vec<Good>,
    doubtful: Vec<(row::RawRow, Option<i64>, &'static str)>,
}

/// Copies the rows, batch by batch, from `job.next_unit` on; false when
/// stopped.
fn copy_rows(
    buffer: &Buffer,
    conn: &mut Connection,
    aside: &Path,
    raw: &mut RawFile,
    job: &mut Job,
    stop: &AtomicBool,
) -> rusqlite::Result<bool> {
    let (devices, metrics) = job.names.clone().unwrap_or_default();
    let names = Names::from_pairs(&devices, &metrics);
    // Rows from before the checksum must predate the file's last change.
    let newest_ms = std::fs::metadata(aside)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
        })
        .saturating_add(86_400_000);
    let mut batch = Batch::default();
    let mut last_progress = Instant::now();
    let mut unit = job.next_unit;
    while unit < job.units {
        if stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        match raw.read_unit(unit) {
            Ok(page) => {
                job.bad_cells += u64::from(page.bad_cells);
                for cell in &page.cells {
                    let Some(shape) = record_shape(cell) else {
                        continue;
                    };
                    let crc = stored_crc(cell);
                    match check_row(cell, shape.clone(), &names, newest_ms) {
                        Ok(good) => batch.good.push(good),
                        Err(why) => batch.doubtful.push((shape, crc, why)),
                    }
                }
            }
            Err(_) => job.bad_cells += 1,
        }
        unit += 1;
        if batch.good.len() + batch.doubtful.len() >= BATCH_ROWS || unit == job.units {
            job.next_unit = unit;
            commit(buffer, conn, aside, job, std::mem::take(&mut batch))?;
            buffer.set_salvage(|s| {
                s.pages_done = unit;
                s.pages = job.units;
                s.rows_saved = job.saved;
                s.rows_doubtful = job.doubtful_total();
            });
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                tracing::info!(
                    "salvage: {unit} of {} pages read, {} records saved so far",
                    job.units,
                    job.saved
                );
            }
        }
    }
    Ok(true)
}

/// Commits one batch and the progress, under the buffer's write lock.
fn commit(
    buffer: &Buffer,
    conn: &mut Connection,
    aside: &Path,
    job: &mut Job,
    batch: Batch,
) -> rusqlite::Result<()> {
    let shared = Arc::clone(&buffer.shared);
    let mut guard = lock(&shared.counters);
    let mut c = *guard;
    let mark = lock(&shared.names).mark();
    let result = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut saved = 0u64;
        let mut already = 0u64;
        let mut max_seq = job.max_seq;
        {
            let mut names = lock(&shared.names);
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO records
                     (seq, device, received_at, device_time, state, flags, metrics, crc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for good in &batch.good {
                let device = names.id(&tx, DEVICE, good.device)?;
                let blob = names.encode_metrics(&tx, &good.metrics)?;
                let fresh = row::RawRow {
                    device,
                    metrics: blob,
                    ..good.raw.clone()
                };
                let crc = row::crc(&fresh);
                let n = insert.execute(params![
                    fresh.seq,
                    fresh.device,
                    fresh.received_at,
                    fresh.device_time,
                    fresh.state,
                    fresh.flags,
                    fresh.metrics,
                    crc
                ])?;
                if n == 0 {
                    already += 1;
                    continue;
                }
                // A salvaged interval level is found by `levels` like
                // one the writer stored.
                if fresh.flags & row::INTERVAL_BIT != 0
                    && let Some(interval) =
                        row::take_interval(&mut good.metrics.clone(), fresh.flags)
                {
                    super::levels::index(&tx, &fresh, &interval)?;
                }
                saved += 1;
                let seq = u64::try_from(fresh.seq).unwrap_or(0);
                max_seq = max_seq.max(seq);
                c.written += 1;
                c.stored += 1;
                if seq > c.cursor {
                    c.unsent += 1;
                }
            }
            let mut quarantine = tx.prepare_cached(
                "INSERT OR IGNORE INTO quarantine
                     (seq, device, received_at, device_time, state, flags, metrics, quarantined_at, reason, crc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            for (r, crc, why) in &batch.doubtful {
                quarantine.execute(params![
                    r.seq,
                    r.device,
                    r.received_at,
                    r.device_time,
                    r.state,
                    r.flags,
                    r.metrics,
                    now_ms,
                    format!("salvage: {why}"),
                    crc
                ])?;
            }
        }
        tx.execute(
            "DELETE FROM quarantine WHERE seq IN
                 (SELECT seq FROM quarantine ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
            [super::QUARANTINE_KEEP],
        )?;
        let max_records = shared.settings.max_records.max(1);
        let mut evicted = 0;
        if c.stored > max_records {
            let before = c.stored;
            let over = c.stored - max_records;
            super::writer::evict(&tx, &mut c, over)?;
            evicted = before - c.stored;
        }
        let mut next = job.clone();
        next.saved += saved;
        next.already += already;
        next.evicted += evicted;
        next.max_seq = max_seq;
        for (_, _, why) in &batch.doubtful {
            *next.doubtful.entry((*why).to_owned()).or_default() += 1;
        }
        register(&tx, aside, &next)?;
        buffer.mirror_names_since(mark);
        c.save(&tx)?;
        tx.commit()?;
        Ok(next)
    })();
    match result {
        Ok(next) => {
            *job = next;
            *guard = c;
            Ok(())
        }
        Err(e) => {
            lock(&shared.names).rollback_to(mark);
            Err(e)
        }
    }
}

/// Completes the accounting, declares the skip, records the end.
fn finish(
    buffer: &Buffer,
    conn: &mut Connection,
    aside: &Path,
    job: &mut Job,
) -> rusqlite::Result<()> {
    let shared = Arc::clone(&buffer.shared);
    let mut guard = lock(&shared.counters);
    let mut c = *guard;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut next = job.clone();
    next.done = true;
    if let Some(old_stored) = job.old_stored {
        c.lost += old_stored.saturating_sub(job.saved + job.doubtful_total());
    }
    if let Some(to) = job.skip_to {
        let from = job.skip_floor.max(job.max_seq + 1);
        if from <= to {
            super::declare_skip(&tx, &mut c, from, to)?;
        }
    }
    register(&tx, aside, &next)?;
    c.save(&tx)?;
    tx.commit()?;
    *guard = c;
    *job = next;
    Ok(())
}
