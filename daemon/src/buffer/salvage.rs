//! The start-up check, and salvage of a damaged buffer.
//!
//! The check is SQLite's `quick_check` under a time budget (a progress
//! handler interrupts it after [`CHECK_BUDGET`]), so start-up stays fast on
//! a buffer of any size: small files are checked completely, huge ones as
//! far as the budget reaches, plus the schema and counters, which must read.
//!
//! Salvage: the damaged file (and its `-wal`/`-shm`) is renamed
//! `buffer.sqlite.corrupt-<UTC timestamp>`, a fresh buffer is created, and
//! rows are copied over range by range; a range that fails to read is split
//! until the unreadable rows are isolated and skipped. The counters are
//! taken over where they read; the push cursor is kept, so salvaged unsent
//! rows are still pushed (and already-pushed ones not again).

use super::{BufferError, Counters, Settings, connect};
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the start-up integrity check may take.
pub const CHECK_BUDGET: Duration = Duration::from_millis(200);

/// Rows copied per range while salvaging.
const SALVAGE_RANGE: i64 = 4096;

/// How the buffer was found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReport {
    /// There was no buffer; a new one was created.
    Created,
    /// The whole file passed `quick_check`.
    Checked,
    /// The file passed as much of `quick_check` as the time budget allowed.
    PartlyChecked,
    /// The file was damaged and replaced.
    Salvaged {
        /// Where the damaged file was moved.
        moved_to: PathBuf,
        /// Why it was judged damaged.
        reason: String,
        /// Rows copied into the fresh buffer.
        rows_saved: u64,
        /// Rows the damaged file claimed but that could not be read.
        rows_lost: u64,
    },
}

enum Check {
    /// An empty file or one without tables: a buffer not yet created.
    Fresh,
    Passed,
    PassedWithinBudget,
    /// The content is damaged: salvage.
    Damaged(String),
    /// The file could not be read for a reason outside it (disk full, I/O
    /// error, permissions): never a reason to move it aside.
    Unavailable(rusqlite::Error),
}

pub(super) fn check_or_salvage(settings: &Settings) -> Result<OpenReport, BufferError> {
    let path = &settings.path;
    if !path.exists() {
        return Ok(OpenReport::Created);
    }
    match check(path) {
        Check::Fresh => Ok(OpenReport::Created),
        Check::Passed => Ok(OpenReport::Checked),
        Check::PassedWithinBudget => Ok(OpenReport::PartlyChecked),
        Check::Unavailable(source) => Err(BufferError::Sqlite {
            path: path.clone(),
            source,
        }),
        Check::Damaged(reason) => {
            tracing::error!(file = %path.display(), %reason, "buffer database is damaged; moving it aside and salvaging its rows");
            let report = salvage(settings, reason)?;
            if let OpenReport::Salvaged {
                moved_to,
                rows_saved,
                rows_lost,
                ..
            } = &report
            {
                tracing::warn!(
                    moved_to = %moved_to.display(),
                    rows_saved,
                    rows_lost,
                    "buffer salvaged: {rows_saved} records saved into a fresh buffer, {rows_lost} unreadable; the damaged file is kept at {}",
                    moved_to.display()
                );
            }
            Ok(report)
        }
    }
}

/// A content problem is salvaged; a refusal by the disk, the OS or a lock
/// is not (the file may be perfectly sound).
fn damaged_or_unavailable(what: &str, e: rusqlite::Error) -> Check {
    if is_io(&e) {
        Check::Unavailable(e)
    } else {
        Check::Damaged(format!("{what}: {e}"))
    }
}

/// Errors that come from the disk, the OS or locks, not from the content.
pub(crate) fn is_io(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(
        f.code,
        SystemIoFailure | DiskFull | CannotOpen | PermissionDenied | ReadOnly
            | DatabaseBusy | DatabaseLocked | OutOfMemory
    ))
}

fn check(path: &Path) -> Check {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Check::Fresh;
    }
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(c) => c,
        Err(e) => return damaged_or_unavailable("cannot open", e),
    };
    let tables: rusqlite::Result<i64> = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    );
    match tables {
        Ok(0) => return Check::Fresh,
        Ok(_) => {}
        Err(e) => return damaged_or_unavailable("schema unreadable", e),
    }
    // The schema and the counters must read, whatever the budget.
    let basics = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .and_then(|_| Counters::load(&conn))
        .and_then(|_| {
            conn.query_row("SELECT max(seq) FROM records", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
        });
    if let Err(e) = basics {
        return damaged_or_unavailable("schema or counters unreadable", e);
    }
    let started = Instant::now();
    conn.progress_handler(10_000, Some(move || started.elapsed() > CHECK_BUDGET));
    let result: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check(20)")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    conn.progress_handler(0, None::<fn() -> bool>);
    match result {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Check::Passed,
        Ok(lines) => Check::Damaged(lines.join("; ")),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            Check::PassedWithinBudget
        }
        Err(e) => damaged_or_unavailable("quick_check", e),
    }
}

/// The `seq` the buffer at `path` would continue from, read without
/// writing anything (no `-shm`, no WAL replay): used to keep numbering the
/// live feed while the file cannot be opened for writing.
pub(super) fn peek_next_seq(path: &Path) -> Option<u64> {
    let uri = format!("file:{}?immutable=1", path.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri, flags).ok()?;
    let counters = Counters::load(&conn).ok()?;
    let max_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .ok()?;
    let max_seq = max_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    let next = counters.next_seq.max(max_seq + 1).max(1);
    // The same rule `open` applies, so both agree once the file opens.
    let clean = super::stopped_cleanly(&conn).ok()?;
    Some(if clean {
        next
    } else {
        next + super::SEQ_SAFETY_GAP
    })
}

/// `path` + `suffix` (`buffer.sqlite` + `-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// `buffer.sqlite.corrupt-<UTC time>`, numbered when that name is taken
/// (two salvages in one second must not overwrite the first damaged file).
fn aside_name(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let taken = |p: &Path| {
        ["", "-wal", "-shm"]
            .iter()
            .any(|s| with_suffix(p, s).exists())
    };
    let base = with_suffix(path, &format!(".corrupt-{stamp}"));
    if !taken(&base) {
        return base;
    }
    (1u32..)
        .map(|n| with_suffix(path, &format!(".corrupt-{stamp}.{n}")))
        .find(|p| !taken(p))
        .unwrap_or(base)
}

fn salvage(settings: &Settings, reason: String) -> Result<OpenReport, BufferError> {
    let path = &settings.path;
    let moved_to = aside_name(path);
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(path, suffix);
        if from.exists() {
            let to = with_suffix(&moved_to, suffix);
            std::fs::rename(&from, &to).map_err(|source| BufferError::Io {
                path: from.clone(),
                source,
            })?;
        }
    }
    let mut fresh = connect(path, settings.durability)?;
    let sql = |source| BufferError::Sqlite {
        path: path.clone(),
        source,
    };
    let old = Connection::open_with_flags(&moved_to, OpenFlags::SQLITE_OPEN_READ_WRITE).ok();
    let old_counters = old
        .as_ref()
        .and_then(|c| Counters::load(c).ok())
        .unwrap_or_default();

    let tx = fresh.transaction().map_err(sql)?;
    if let Some(old) = &old {
        copy_names(old, &tx);
    }
    let mut saved = 0u64;
    let mut max_seq = 0i64;
    if let Some(old) = &old {
        let (lo, hi) = seq_bounds(old, &old_counters);
        let mut start = lo;
        while start <= hi {
            let end = start.saturating_add(SALVAGE_RANGE);
            let (n, top) = copy_range(old, &tx, start, end).map_err(sql)?;
            saved += n;
            max_seq = max_seq.max(top);
            start = end;
        }
    }
    let unsent: i64 = tx
        .query_row(
            "SELECT count(*) FROM records WHERE seq > ?1",
            [i64::try_from(old_counters.cursor).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .map_err(sql)?;
    let rows_lost = old_counters.stored.saturating_sub(saved);
    let counters = Counters {
        next_seq: old_counters
            .next_seq
            .max(u64::try_from(max_seq).unwrap_or(0) + 1),
        cursor: old_counters.cursor,
        written: saved + old_counters.evicted_pushed + old_counters.evicted_unsent,
        stored: saved,
        unsent: u64::try_from(unsent).unwrap_or(0),
        lost: old_counters.lost + rows_lost,
        ..old_counters
    };
    counters.save(&tx).map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(OpenReport::Salvaged {
        moved_to,
        reason,
        rows_saved: saved,
        rows_lost,
    })
}

fn copy_names(old: &Connection, new: &Connection) {
    let Ok(mut stmt) = old.prepare("SELECT kind, id, name FROM names") else {
        return;
    };
    let Ok(rows) = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    }) else {
        return;
    };
    for (kind, id, name) in rows.flatten() {
        let _ = new.execute(
            "INSERT OR IGNORE INTO names (kind, id, name) VALUES (?1, ?2, ?3)",
            params![kind, id, name],
        );
    }
}

/// The `seq` range to scan: from the table when it reads, else from the
/// counters (every `seq` ever assigned is below `next_seq`).
fn seq_bounds(old: &Connection, counters: &Counters) -> (i64, i64) {
    let bounds = old.query_row("SELECT min(seq), max(seq) FROM records", [], |r| {
        Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
    });
    match bounds {
        Ok((Some(lo), Some(hi))) => (lo, hi),
        Ok(_) => (1, 0),
        Err(_) => (1, i64::try_from(counters.next_seq).unwrap_or(i64::MAX)),
    }
}

type Row = (i64, i64, i64, Option<i64>, i64, i64, Vec<u8>);

/// Copies the readable rows with `lo <= seq < hi`; returns (rows, max seq).
fn copy_range(
    old: &Connection,
    new: &Connection,
    lo: i64,
    hi: i64,
) -> rusqlite::Result<(u64, i64)> {
    match read_range(old, lo, hi) {
        Ok(rows) => {
            let mut insert = new.prepare_cached(
                "INSERT OR IGNORE INTO records (seq, device, received_at, device_time, state, flags, metrics)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut top = 0;
            for r in &rows {
                insert.execute(params![r.0, r.1, r.2, r.3, r.4, r.5, r.6])?;
                top = top.max(r.0);
            }
            Ok((rows.len() as u64, top))
        }
        Err(_) if hi - lo <= 1 => Ok((0, 0)),
        Err(_) => {
            let mid = lo + (hi - lo) / 2;
            let (a, ta) = copy_range(old, new, lo, mid)?;
            let (b, tb) = copy_range(old, new, mid, hi)?;
            Ok((a + b, ta.max(tb)))
        }
    }
}

fn read_range(old: &Connection, lo: i64, hi: i64) -> rusqlite::Result<Vec<Row>> {
    // One row is read by equality: a range scan steps on to the next row to
    // test its bound, and fails there when that row's page is damaged.
    let (sql, args) = if hi - lo == 1 {
        ("WHERE seq = ?1", params![lo])
    } else {
        ("WHERE seq >= ?1 AND seq < ?2", params![lo, hi])
    };
    let mut stmt = old.prepare_cached(&format!(
        "SELECT seq, device, received_at, device_time, state, flags, metrics FROM records {sql}"
    ))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })?;
    rows.collect()
}
