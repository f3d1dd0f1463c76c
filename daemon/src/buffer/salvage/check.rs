//! The start-up check of the buffer file, and moving a damaged one aside
//! (and, once its rows are safe, to its final name).

use super::super::counters::Counters;
use super::super::names::{DEVICE, METRIC, NamePairs, Names};
use super::super::{BufferError, Settings};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the start-up integrity check may take.
pub const CHECK_BUDGET: Duration = Duration::from_millis(200);

/// File name infix of a damaged file whose rows are being salvaged.
pub(in crate::buffer) const WORKING: &str = ".salvaging-";

/// File name infix of a damaged file whose rows are safe.
pub(in crate::buffer) const DONE: &str = ".corrupt-";

/// How the buffer was found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReport {
    /// There was no buffer; a new one was created.
    Created,
    /// The whole file passed `quick_check`.
    Checked,
    /// The file passed as much of `quick_check` as the time budget allowed.
    PartlyChecked,
    /// The file was damaged: it was moved aside and a fresh buffer started;
    /// its rows are salvaged in the background.
    MovedAside {
        /// Where the damaged file was moved.
        moved_to: PathBuf,
        /// Why it was judged damaged.
        reason: String,
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

/// What SQLite could still read of a damaged file when it was moved aside.
#[derive(Debug, Clone, Default)]
pub(in crate::buffer) struct OldFile {
    /// Its counters, when they read and pass their checksum.
    pub(in crate::buffer) counters: Option<Counters>,
    /// Whether its last run stopped cleanly, when that reads.
    pub(in crate::buffer) clean: Option<bool>,
    /// Its names, when they read.
    pub(in crate::buffer) names: Option<NamePairs>,
    /// Its epochs, when they read.
    pub(in crate::buffer) epochs: Option<Vec<(u64, u64)>>,
}

/// The result of the start-up check.
pub(in crate::buffer) struct Prepared {
    pub(in crate::buffer) report: OpenReport,
    /// What could be read of the file moved aside now.
    pub(in crate::buffer) old: Option<OldFile>,
}

/// Checks the buffer file; a damaged one is moved aside (see the module doc).
pub(in crate::buffer) fn check_and_move_aside(
    settings: &Settings,
) -> Result<Prepared, BufferError> {
    let path = &settings.path;
    if !path.exists() {
        return Ok(Prepared {
            report: OpenReport::Created,
            old: None,
        });
    }
    let report = match check(path) {
        Check::Fresh => OpenReport::Created,
        Check::Passed => OpenReport::Checked,
        Check::PassedWithinBudget => OpenReport::PartlyChecked,
        Check::Unavailable(source) => {
            return Err(BufferError::Sqlite {
                path: path.clone(),
                source,
            });
        }
        Check::Damaged(reason) => {
            let old = read_what_reads(path);
            let moved_to = move_aside(path)?;
            tracing::error!(
                file = %path.display(),
                moved_to = %moved_to.display(),
                %reason,
                "buffer database is damaged ({reason}); moved aside to {} and started a fresh \
                 buffer; its rows are salvaged in the background",
                moved_to.display()
            );
            return Ok(Prepared {
                report: OpenReport::MovedAside { moved_to, reason },
                old: Some(old),
            });
        }
    };
    Ok(Prepared { report, old: None })
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

/// A read-only connection that still sees the write-ahead log and never
/// checkpoints it into the file (so a damaged file stays as it is).
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
}

/// The page count the header claims, when the header says it is valid
/// (its "version valid for" equals the change counter).
fn header_pages(path: &Path) -> Option<(u64, u64)> {
    use std::io::Read;
    let mut header = [0u8; 100];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    if &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    (be32(24) == be32(92) && page_size >= 512).then(|| (u64::from(be32(28)), page_size))
}

fn check(path: &Path) -> Check {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) => {
            return Check::Unavailable(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(e.to_string()),
            ));
        }
    };
    if len == 0 {
        return Check::Fresh;
    }
    if let Some((pages, page_size)) = header_pages(path)
        && pages.saturating_mul(page_size) > len
    {
        return Check::Damaged(format!(
            "the file is shorter than its header says: {} of {pages} pages",
            len / page_size
        ));
    }
    let conn = match open_read_only(path) {
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
        .and_then(|_| Names::load(&conn))
        .and_then(|_| {
            conn.query_row("SELECT max(seq) FROM records", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
        });
    if let Err(e) = basics {
        return damaged_or_unavailable("schema, names or counters unreadable", e);
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

/// What SQLite can still read of a damaged file (each part on its own).
fn read_what_reads(path: &Path) -> OldFile {
    let Ok(conn) = open_read_only(path) else {
        return OldFile::default();
    };
    // A damaged file must not hold up the start: each query gets a budget.
    let started = Instant::now();
    conn.progress_handler(10_000, Some(move || started.elapsed() > CHECK_BUDGET));
    let names = Names::load(&conn)
        .ok()
        .map(|n| (n.pairs(DEVICE), n.pairs(METRIC)));
    let epochs = conn
        .prepare("SELECT first_seq, epoch FROM epochs ORDER BY first_seq")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ok()
        .map(|rows| {
            rows.into_iter()
                .filter_map(|(f, e)| Some((u64::try_from(f).ok()?, u64::try_from(e).ok()?)))
                .collect()
        });
    // The counters are only taken together with the newest row: a
    // `next_seq` whose rows do not read is not proof of anything.
    let counters = Counters::load(&conn).ok().and_then(|mut c| {
        let max: Option<i64> = conn
            .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
            .ok()?;
        let max = max.and_then(|m| u64::try_from(m).ok()).unwrap_or(0);
        c.next_seq = c.next_seq.max(max + 1);
        Some(c)
    });
    let clean = counters
        .is_some()
        .then(|| super::super::stopped_cleanly(&conn).ok())
        .flatten();
    OldFile {
        counters,
        clean,
        names,
        epochs,
    }
}

/// `path` + `suffix` (`buffer.sqlite` + `-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The name a damaged file gets when its salvage is done.
fn done_name(working: &Path) -> PathBuf {
    let text = working.as_os_str().to_string_lossy();
    PathBuf::from(text.replacen(WORKING, DONE, 1))
}

/// `buffer.sqlite.salvaging-<UTC time>`, numbered when that name (or its
/// final `.corrupt-` name) is taken: two damaged files in one second must
/// not overwrite each other.
fn aside_name(path: &Path) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let taken = |p: &Path| {
        [p.to_owned(), done_name(p)].iter().any(|p| {
            ["", "-wal", "-shm"]
                .iter()
                .any(|s| with_suffix(p, s).exists())
        })
    };
    let base = with_suffix(path, &format!("{WORKING}{stamp}"));
    if !taken(&base) {
        return base;
    }
    (1u32..)
        .map(|n| with_suffix(path, &format!("{WORKING}{stamp}.{n}")))
        .find(|p| !taken(p))
        .unwrap_or(base)
}

/// Renames the file and its `-wal`/`-shm` (the WAL holds its newest
/// commits) to a fresh aside name.
fn move_aside(path: &Path) -> Result<PathBuf, BufferError> {
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
    Ok(moved_to)
}

/// Renames a salvaged file and its companions to their `.corrupt-` names.
pub(in crate::buffer) fn mark_done(working: &Path) -> std::io::Result<PathBuf> {
    let done = done_name(working);
    for suffix in ["", "-wal", "-shm"] {
        let from = with_suffix(working, suffix);
        if from.exists() {
            std::fs::rename(&from, with_suffix(&done, suffix))?;
        }
    }
    Ok(done)
}

/// Damaged files beside the buffer at `path` whose salvage is not done,
/// oldest first.
pub(in crate::buffer) fn pending(path: &Path) -> Vec<PathBuf> {
    aside_files(path, WORKING)
}

/// Whether anything beside the buffer at `path` shows it held records
/// before: damaged files, salvaged or not.
pub(in crate::buffer) fn evidence(path: &Path) -> bool {
    !aside_files(path, WORKING).is_empty() || !aside_files(path, DONE).is_empty()
}

fn aside_files(path: &Path, infix: &str) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}{infix}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
        })
        .collect();
    files.sort();
    files
}
