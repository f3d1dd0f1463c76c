//! Opening the buffer: the check, moving a damaged file aside, and where
//! numbering continues before any number is used; or, when the disk
//! refuses the file, numbering from the anchor alone while the writer
//! waits for the disk.

use super::anchor;
use super::counters::Counters;
use super::names::{DEVICE, METRIC, Names};
use super::numbering::{self, AnchorFound, Knowledge, Numbering};
use super::salvage::{self, OpenReport, SalvageStatus};
use super::{Buffer, BufferError, BufferSlot, Settings, Shared, WriterHandle, connect, writer};
use crate::record::Record;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Numbers skipped when the live feed must start before the buffer opens
/// and neither the anchor nor a read of the file (whose write-ahead log may
/// hold commits a read-only peek cannot see) says where numbering stopped.
pub const SEQ_SAFETY_GAP: u64 = 1_000_000;

/// `meta` key: 1 after the writer stopped cleanly, 0 while running (the
/// anchor says the same; this is what a buffer of an older slmd has).
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

/// Declares `[from, to]` skipped (inside the caller's transaction).
pub(crate) fn declare_skip(
    conn: &Connection,
    c: &mut Counters,
    from: u64,
    to: u64,
) -> rusqlite::Result<()> {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let n = conn.execute(
        "INSERT OR IGNORE INTO skipped (first, last) VALUES (?1, ?2)",
        params![i(from), i(to)],
    )?;
    if n > 0 {
        c.skipped += to - from + 1;
    }
    Ok(())
}

/// How the buffer came up at start.
#[derive(Debug)]
pub enum Start {
    /// Open and checked.
    Open(Buffer, OpenReport),
    /// The disk refused (full, I/O error, permissions): the live feed starts
    /// numbering with `numbering` and the writer opens the buffer when it can.
    Unavailable {
        /// Why it could not be opened.
        error: BufferError,
        /// The numbering the hub uses meanwhile (the buffer adopts it).
        numbering: Adopted,
    },
}

/// Numbering started before the buffer could be opened.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The running numbering.
    pub numbering: Arc<Numbering>,
    /// The first `seq` it hands out.
    pub first_seq: u64,
    /// Whether the run before stopped uncleanly (a skip is declared once
    /// the buffer opens).
    pub unclean: bool,
}

/// Opens the buffer, or, when the disk refuses, starts numbering from the
/// anchor so the daemon runs while the writer retries.
pub fn open_or_defer(settings: Settings) -> Result<Start, BufferError> {
    match open(settings.clone()) {
        Ok((buffer, report)) => Ok(Start::Open(buffer, report)),
        Err(error) if error.is_unavailable() => Ok(Start::Unavailable {
            error,
            numbering: numbering_without_buffer(&settings),
        }),
        Err(error) => Err(error),
    }
}

/// Where numbering continues when the buffer cannot be read: the anchor
/// says; without one, a read-only peek at the file plus [`SEQ_SAFETY_GAP`].
fn numbering_without_buffer(settings: &Settings) -> Adopted {
    let anchor_path = anchor::path_for(&settings.path);
    let (state, first_seq, unclean) = match anchor::load(&anchor_path) {
        anchor::Loaded::Found(state) => {
            let next = state.clean_next.unwrap_or(state.limit).max(1);
            let unclean = state.clean_next.is_none();
            (state, next, unclean)
        }
        _ => {
            let peeked = peek_next_seq(&settings.path).unwrap_or(1);
            (
                anchor::AnchorState::default(),
                peeked + SEQ_SAFETY_GAP,
                true,
            )
        }
    };
    Adopted {
        numbering: Numbering::start(&anchor_path, state, first_seq),
        first_seq,
        unclean,
    }
}

/// The `seq` the buffer at `path` would continue from, read without
/// writing anything (no `-shm`, no WAL replay).
fn peek_next_seq(path: &Path) -> Option<u64> {
    let uri = format!("file:{}?immutable=1", path.display());
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri, flags).ok()?;
    let counters = Counters::load(&conn).ok()?;
    let max_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .ok()?;
    let max_seq = max_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    Some(counters.next_seq.max(max_seq + 1).max(1))
}

/// Starts a writer for a buffer that could not be opened yet: it keeps
/// records in memory (bounded), opens the buffer as soon as the disk lets
/// it (adopting `numbering`), publishes it in `slot`, and then writes as
/// usual.
pub fn start_deferred(
    settings: Settings,
    slot: BufferSlot,
    records: tokio::sync::mpsc::Receiver<Arc<Record>>,
    numbering: Adopted,
) -> Result<WriterHandle, BufferError> {
    writer::start_deferred(settings, slot, records, numbering)
}

/// Opens (or creates) the buffer: checks it, moves a damaged one aside
/// (its rows are salvaged once the writer starts), and decides where
/// numbering continues before any number is used.
pub fn open(settings: Settings) -> Result<(Buffer, OpenReport), BufferError> {
    open_with(settings, None)
}

/// [`open`], adopting numbering that started before the buffer could be
/// opened.
pub(super) fn open_with(
    settings: Settings,
    adopted: Option<Adopted>,
) -> Result<(Buffer, OpenReport), BufferError> {
    let sql = |source| BufferError::Sqlite {
        path: settings.path.clone(),
        source,
    };
    let anchor_path = anchor::path_for(&settings.path);
    let anchor = match &adopted {
        Some(a) => AnchorFound::Valid(a.numbering.state()),
        None => numbering::found(anchor::load(&anchor_path)),
    };
    let prepared = salvage::check_and_move_aside(&settings)?;
    let mut conn = connect(&settings)?;
    let mut counters = Counters::load(&conn).map_err(sql)?;
    let max_seq: Option<i64> = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .map_err(sql)?;
    let max_seq = max_seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    counters.next_seq = counters.next_seq.max(max_seq + 1).max(1);
    let mut names = Names::load(&conn).map_err(sql)?;
    let mut epochs = load_epochs(&conn).map_err(sql)?;
    let anchor_state = match &anchor {
        AnchorFound::Valid(state) => Some(state.clone()),
        AnchorFound::Absent(_) => None,
    };

    // A file moved aside now: seed the fresh buffer with what still reads
    // of it (else the anchor's copies) and record its salvage.
    let mut fresh_job = None;
    // A file that existed and passed its check knows every number it
    // committed (its `next_seq` survives eviction), even when it holds none.
    let mut committed_known = matches!(
        prepared.report,
        OpenReport::Checked | OpenReport::PartlyChecked
    );
    let mut committed_next = counters.next_seq;
    // Whether the run that wrote the counters stopped cleanly.
    let mut clean = stopped_cleanly(&conn).map_err(sql)?;
    if let (OpenReport::MovedAside { moved_to, reason }, Some(old)) =
        (&prepared.report, &prepared.old)
    {
        let (devices, metrics) = old.names.clone().unwrap_or_else(|| {
            anchor_state
                .as_ref()
                .map(|a| (a.devices.clone(), a.metrics.clone()))
                .unwrap_or_default()
        });
        names = Names::from_pairs(&devices, &metrics);
        epochs = old
            .epochs
            .clone()
            .or_else(|| anchor_state.as_ref().map(|a| a.epochs.clone()))
            .unwrap_or_default();
        let limit = anchor_state.as_ref().map_or(u64::MAX, |a| a.limit);
        match old.counters.filter(|c| c.cursor <= limit) {
            Some(c) => {
                counters = Counters {
                    written: c.evicted_pushed + c.evicted_unsent,
                    stored: 0,
                    unsent: 0,
                    ..c
                };
                committed_known = true;
                committed_next = c.next_seq;
                clean = old.clean.unwrap_or(false);
            }
            None => {
                let cursor = anchor_state.as_ref().map_or(0, |a| a.cursor);
                tracing::warn!(
                    cursor,
                    "the damaged buffer's counters are lost: the push cursor is rebuilt from the \
                     anchor's copy ({cursor}; at most {}s old), so records pushed after it are sent \
                     again (the fleet ignores duplicates); eviction and loss totals start again",
                    numbering::CURSOR_COPY_EVERY.as_secs()
                );
                counters.cursor = cursor;
                committed_known = false;
            }
        }
        fresh_job = Some((
            moved_to.clone(),
            salvage::Job {
                reason: reason.clone(),
                names: (old.names.is_some()
                    || anchor_state.as_ref().is_some_and(|a| !a.devices.is_empty()))
                .then_some((devices, metrics)),
                page_size: anchor_state
                    .as_ref()
                    .map(|a| a.page_size)
                    .filter(|p| *p >= 512),
                old_stored: old.counters.map(|c| c.stored),
                ..salvage::Job::default()
            },
        ));
    }

    // Damaged files from before (a salvage cut short), and the new one.
    let mut jobs: Vec<(PathBuf, salvage::Job)> = salvage::pending(&settings.path)
        .into_iter()
        .map(|aside| {
            let job = match &fresh_job {
                Some((path, job)) if *path == aside => job.clone(),
                _ => salvage::recorded(&conn, &aside).unwrap_or_else(|| salvage::Job {
                    reason: "a salvage interrupted before it was recorded".into(),
                    ..salvage::Job::default()
                }),
            };
            (aside, job)
        })
        .collect();

    let decision = match &adopted {
        Some(a) => numbering::Decision {
            epoch: a.numbering.epoch(),
            next: a.first_seq,
            skip: (a.unclean && committed_next < a.first_seq)
                .then(|| (committed_next, a.first_seq - 1)),
            skip_after_salvage: false,
            new_epoch: None,
            note: (committed_next > a.first_seq).then(|| {
                format!(
                    "the buffer holds seq numbers up to {} that the live feed (from {}) used again",
                    committed_next - 1,
                    a.first_seq
                )
            }),
        },
        None => {
            let needs_scan = anchor_state.is_none() && !committed_known && !jobs.is_empty();
            let damaged_max_seq = if needs_scan {
                jobs.iter()
                    .filter_map(|(path, job)| salvage::max_seq_in(path, job.page_size))
                    .max()
            } else {
                None
            };
            numbering::decide(
                &Knowledge {
                    anchor: anchor.clone(),
                    committed_next,
                    committed_known,
                    buffer_clean: clean,
                    buffer_epoch: epochs.last().map_or(0, |(_, e)| *e),
                    damaged_max_seq,
                    damaged: !jobs.is_empty(),
                    evidence: salvage::evidence(&settings.path),
                },
                numbering::random_epoch,
            )
        }
    };
    if let Some(note) = &decision.note {
        tracing::warn!(next_seq = decision.next, "{note}");
    }
    if let Some(why) = &decision.new_epoch {
        tracing::error!(
            epoch = decision.epoch,
            next_seq = decision.next,
            "{why}: starting numbering epoch {} (the fleet keeps numbers of different epochs apart)",
            decision.epoch
        );
    }
    if decision.skip_after_salvage
        && let Some((_, job)) = jobs.last_mut()
    {
        job.skip_to = Some(decision.next - 1);
        job.skip_floor = decision.next.saturating_sub(numbering::SKIP_BOUND);
    }
    if epochs.last().map_or(0, |(_, e)| *e) != decision.epoch {
        epochs.push((decision.next, decision.epoch));
    }

    counters.next_seq = counters.next_seq.max(decision.next);
    let tx = conn.transaction().map_err(sql)?;
    names.store(&tx).map_err(sql)?;
    store_epochs(&tx, &epochs).map_err(sql)?;
    if let Some((from, to)) = decision.skip {
        declare_skip(&tx, &mut counters, from, to).map_err(sql)?;
    }
    for (aside, job) in &jobs {
        salvage::register(&tx, aside, job).map_err(sql)?;
    }
    counters.save(&tx).map_err(sql)?;
    // From here until a clean stop, the buffer says "not stopped cleanly".
    set_clean_stop(&tx, false).map_err(sql)?;
    let page_size = page_size(&tx).map_err(sql)?;
    tx.commit().map_err(sql)?;
    // The skip and the new `next_seq` are committed first: a kill before
    // the anchor's reservation below then finds nothing new to skip. No
    // number is handed out before the anchor holds the reservation.
    let numbering = match adopted {
        Some(a) => a.numbering,
        None => {
            let state = anchor::AnchorState {
                epoch: decision.epoch,
                limit: anchor_state.as_ref().map_or(0, |a| a.limit),
                clean_next: None,
                cursor: counters.cursor,
                page_size,
                devices: names.pairs(DEVICE),
                metrics: names.pairs(METRIC),
                epochs: epochs.clone(),
            };
            Numbering::start(&anchor_path, state, decision.next)
        }
    };
    let salvage_status = (!jobs.is_empty()).then(|| SalvageStatus {
        running: true,
        files_waiting: jobs.len(),
        ..SalvageStatus::default()
    });
    let positions = super::push::Positions::load(&conn, counters.cursor).map_err(sql)?;
    let buffer = Buffer {
        shared: Arc::new(Shared {
            settings,
            positions: Mutex::new(positions),
            counters: Mutex::new(counters),
            pending: Mutex::new((0, None)),
            names: Mutex::new(names),
            reader: Mutex::new(conn),
            numbering,
            epochs,
            jobs: Mutex::new(jobs),
            salvage: Mutex::new(salvage_status),
            stop_salvage: Arc::new(AtomicBool::new(false)),
            salvage_thread: Mutex::new(None),
            timeline: Mutex::new(super::timeline::Timeline::default()),
            wake: tokio::sync::Notify::new(),
            commit_now: AtomicBool::new(false),
            commits: Mutex::new(super::CommitLog::default()),
        }),
    };
    Ok((buffer, prepared.report))
}

/// The epochs table, by first seq.
fn load_epochs(conn: &Connection) -> rusqlite::Result<Vec<(u64, u64)>> {
    let mut stmt = conn.prepare("SELECT first_seq, epoch FROM epochs ORDER BY first_seq")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    let mut epochs = Vec::new();
    for row in rows {
        let (first, epoch) = row?;
        epochs.push((
            u64::try_from(first).unwrap_or(0),
            u64::try_from(epoch).unwrap_or(0),
        ));
    }
    Ok(epochs)
}

/// Writes the epochs (inside the caller's transaction).
fn store_epochs(conn: &Connection, epochs: &[(u64, u64)]) -> rusqlite::Result<()> {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (first, epoch) in epochs {
        conn.execute(
            "INSERT OR REPLACE INTO epochs (first_seq, epoch) VALUES (?1, ?2)",
            params![i(*first), i(*epoch)],
        )?;
    }
    Ok(())
}

/// The file's page size.
fn page_size(conn: &Connection) -> rusqlite::Result<u32> {
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u32::try_from(size).unwrap_or(4096))
}
