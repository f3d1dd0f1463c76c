//! The one writer: a thread that takes records from the hub and commits them
//! in groups, evicting as the caps require.
//!
//! # When it commits
//! A commit is what wears an SD card: each one appends at least the
//! changed b-tree leaf and the counters' page to the write-ahead log (and a
//! checkpoint writes them again), however few rows it carries. So the
//! writer holds records in memory and commits when the oldest has waited
//! `commit_interval`, or as soon as [`super::COMMIT_AT_RECORDS`] are
//! waiting, or when asked ([`super::Buffer::commit_soon`]: a reload), or
//! when the hub closes the channel (a clean stop commits everything). A
//! moved push cursor rides along with the next commit of records; on a
//! quiet gateway it gets a commit of its own `commit_interval` after it
//! moved. `commit_interval = 0` commits each record as it comes (group
//! commit: everything already queued goes into the same transaction).
//!
//! The live feed never waits on any of this: the hub hands records to the
//! writer through a bounded queue and never awaits it.
//!
//! When a commit fails (disk full, I/O error) the records stay in a bounded
//! in-memory queue and the thread retries every [`RETRY`]; records beyond
//! the queue are counted as lost. The error is logged when it starts and
//! when writing resumes, not per record.

use super::{
    Adopted, Buffer, BufferError, BufferSlot, Counters, DEVICE, Shared, connect, lock, row,
};
use crate::record::Record;
use rusqlite::{Connection, TransactionBehavior, params};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc::{Receiver, error::TryRecvError};

/// How often a failing write is retried.
pub const RETRY: Duration = Duration::from_secs(1);

/// The running writer thread (and the salvage thread, when one runs).
#[derive(Debug)]
pub struct WriterHandle {
    thread: std::thread::JoinHandle<()>,
    /// The buffer, once open: its salvage is stopped and joined first.
    slot: BufferSlot,
}

impl WriterHandle {
    /// Waits for the writer to commit what it holds and end (after the
    /// record channel closed). A salvage still running is stopped first (its
    /// progress is kept; it resumes at the next start).
    pub fn join(self) {
        if let Some(buffer) = self.slot.get() {
            buffer.stop_salvage();
            if let Some(salvage) = super::lock(&buffer.shared.salvage_thread).take()
                && salvage.join().is_err()
            {
                tracing::error!("buffer salvage thread panicked");
            }
        }
        if self.thread.join().is_err() {
            tracing::error!("buffer writer thread panicked");
        }
    }
}

pub(super) fn start(
    buffer: Buffer,
    records: Receiver<Arc<Record>>,
) -> Result<WriterHandle, BufferError> {
    let settings = &buffer.shared.settings;
    let conn = connect(settings)?;
    let runtime = waiting_runtime()?;
    let slot = BufferSlot::default();
    let _ = slot.set(buffer.clone());
    buffer.spawn_salvage();
    // Made here, not in the thread: it takes the cursor as committed
    // before anyone can move it.
    let writer = Writer::new(buffer, conn);
    let thread = std::thread::Builder::new()
        .name("slmd-buffer".into())
        .spawn(move || writer.run(&runtime, records))
        .map_err(|source| BufferError::Io {
            path: "buffer writer thread".into(),
            source,
        })?;
    Ok(WriterHandle { thread, slot })
}

pub(super) fn start_deferred(
    settings: super::Settings,
    slot: super::BufferSlot,
    mut records: Receiver<Arc<Record>>,
    numbering: Adopted,
) -> Result<WriterHandle, BufferError> {
    let handle_slot = slot.clone();
    let runtime = waiting_runtime()?;
    let thread = std::thread::Builder::new()
        .name("slmd-buffer".into())
        .spawn(move || {
            let mut held = VecDeque::new();
            let mut lost = 0u64;
            let mut last_error = String::new();
            let cap = settings.memory_queue.max(settings.batch_max);
            loop {
                let opened = super::open::open_with(settings.clone(), Some(numbering.clone())).and_then(|(buffer, report)| {
                    let conn = connect(&settings)?;
                    Ok((buffer, report, conn))
                });
                match opened {
                    Ok((buffer, report, conn)) => {
                        tracing::info!(
                            ?report,
                            held = held.len(),
                            "buffer opened; writing the readings held in memory"
                        );
                        // Made before the buffer is published: it takes the
                        // cursor as committed before anyone can move it.
                        let mut writer = Writer::new(buffer.clone(), conn);
                        let _ = slot.set(buffer.clone());
                        buffer.spawn_salvage();
                        writer.pending = held;
                        writer.lost_unsaved = lost;
                        writer.run(&runtime, records);
                        return;
                    }
                    Err(e) => {
                        let message = e.to_string();
                        if message != last_error {
                            tracing::error!(
                                error = %message,
                                "buffer cannot be opened; readings wait in memory (live feed unaffected) and opening retries every {}s",
                                RETRY.as_secs()
                            );
                            last_error = message;
                        }
                    }
                }
                loop {
                    match records.try_recv() {
                        Ok(r) if held.len() < cap => held.push_back(r),
                        Ok(_) => lost += 1,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            let unsaved = held.len() as u64 + lost;
                            tracing::error!(
                                lost = unsaved,
                                "shutting down before the buffer could be opened: {unsaved} readings were not saved"
                            );
                            return;
                        }
                    }
                }
                std::thread::sleep(RETRY);
            }
        })
        .map_err(|source| BufferError::Io {
            path: "buffer writer thread".into(),
            source,
        })?;
    Ok(WriterHandle {
        thread,
        slot: handle_slot,
    })
}

/// The writer thread's own clock for its waits: it waits for a record, a
/// wake-up or the commit deadline, whichever comes first.
fn waiting_runtime() -> Result<Runtime, BufferError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|source| BufferError::Io {
            path: "buffer writer clock".into(),
            source,
        })
}

/// An eviction episode in progress: unsent records are being evicted.
#[derive(Debug, Default)]
pub(super) struct Episode {
    count: u64,
    first_ms: i64,
    last_ms: i64,
}

struct Writer {
    buffer: Buffer,
    conn: Connection,
    /// Records received but not yet committed.
    pending: VecDeque<Arc<Record>>,
    /// Records dropped from a full memory queue, not yet persisted in `lost`.
    lost_unsaved: u64,
    /// The current write error, while writes fail.
    failing: Option<String>,
    /// The unsent-eviction episode in progress.
    episode: Option<Episode>,
    /// Since when something uncommitted waits (records, or a moved cursor).
    waiting_since: Option<Instant>,
    /// The push cursor as last committed by this writer.
    saved_cursor: u64,
    /// When to try again after a failed commit.
    retry_at: Option<Instant>,
}

impl Writer {
    fn new(buffer: Buffer, conn: Connection) -> Writer {
        let saved_cursor = buffer.counters().cursor;
        Writer {
            buffer,
            conn,
            pending: VecDeque::new(),
            lost_unsaved: 0,
            failing: None,
            episode: None,
            waiting_since: None,
            saved_cursor,
            retry_at: None,
        }
    }

    fn shared(&self) -> &Shared {
        &self.buffer.shared
    }

    fn run(mut self, runtime: &Runtime, mut records: Receiver<Arc<Record>>) {
        let mut closed = false;
        loop {
            if !closed {
                self.take_queued(&mut records, &mut closed);
            }
            let asked = self.shared().commit_now.swap(false, Ordering::AcqRel);
            if !self.has_work() {
                if closed {
                    break;
                }
                self.wait(runtime, &mut records, &mut closed, None);
                continue;
            }
            let waiting_since = *self.waiting_since.get_or_insert_with(Instant::now);
            // Set only while commits fail (cleared by the next success).
            let due = self
                .retry_at
                .unwrap_or(waiting_since + self.shared().settings.commit_interval);
            let full = self.failing.is_none() && self.pending.len() >= super::COMMIT_AT_RECORDS;
            if !(closed || asked || full || Instant::now() >= due) {
                self.wait(runtime, &mut records, &mut closed, Some(due));
                continue;
            }
            let ok = self.commit_waiting();
            self.publish_pending();
            if !ok {
                if closed {
                    self.give_up();
                    break;
                }
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
        self.end_episode();
        if self.failing.is_none() {
            // Same lock order as every other write.
            let guard = lock(&self.buffer.shared.counters);
            let c = *guard;
            match super::set_clean_stop(&self.conn, true) {
                // Every number handed out is committed or was counted lost:
                // the next run continues exactly.
                Ok(()) => self
                    .buffer
                    .shared
                    .numbering
                    .clean_stop(c.next_seq, c.cursor),
                Err(e) => tracing::warn!(error = %e, "buffer: could not record the clean stop"),
            }
        }
    }

    /// Takes what the hub has queued, without waiting for more: up to one
    /// batch while writes succeed (the rest stays in the channel, which is
    /// backpressure, not loss), everything while they fail (the channel
    /// must keep room for the hub; the memory queue is bounded).
    fn take_queued(&mut self, records: &mut Receiver<Arc<Record>>, closed: &mut bool) {
        let batch_max = self.shared().settings.batch_max.max(1);
        while self.failing.is_some() || self.pending.len() < batch_max {
            match records.try_recv() {
                Ok(r) => self.enqueue(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    *closed = true;
                    break;
                }
            }
        }
    }

    /// Waits for a record, a wake-up (cursor moved, commit asked for) or
    /// `until`, whichever comes first.
    fn wait(
        &mut self,
        runtime: &Runtime,
        records: &mut Receiver<Arc<Record>>,
        closed: &mut bool,
        until: Option<Instant>,
    ) {
        let shared = Arc::clone(&self.buffer.shared);
        let received = runtime.block_on(async {
            let deadline = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                record = records.recv() => Some(record),
                () = shared.wake.notified() => None,
                () = deadline => None,
            }
        });
        match received {
            Some(Some(record)) => self.enqueue(record),
            Some(None) => *closed = true,
            None => {}
        }
    }

    /// Whether anything waits to be committed: records, a moved cursor or
    /// consumer position, or a count of records lost to a full memory queue.
    fn has_work(&self) -> bool {
        !self.pending.is_empty()
            || self.lost_unsaved > 0
            || lock(&self.shared().counters).cursor != self.saved_cursor
            || self.buffer.positions_dirty()
    }

    /// Commits everything waiting, batch by batch. `false` on failure.
    fn commit_waiting(&mut self) -> bool {
        loop {
            if !self.commit_some() {
                return false;
            }
            if self.pending.is_empty() {
                self.waiting_since = None;
                self.retry_at = None;
                return true;
            }
        }
    }

    /// Queues a record, counting it as lost when the memory queue is full.
    fn enqueue(&mut self, record: Arc<Record>) {
        let settings = &self.shared().settings;
        // Never smaller than one batch: a healthy writer holds that much.
        if self.pending.len() >= settings.memory_queue.max(settings.batch_max) {
            self.lost_unsaved += 1;
        } else {
            self.pending.push_back(record);
        }
        self.waiting_since.get_or_insert_with(Instant::now);
    }

    /// Commits up to one batch from the front of the queue. `false` on failure.
    fn commit_some(&mut self) -> bool {
        let settings = &self.shared().settings;
        let cap = usize::try_from(settings.max_records)
            .unwrap_or(usize::MAX)
            .max(1);
        let n = self.pending.len().min(settings.batch_max.max(1)).min(cap);
        let mark = lock(&self.shared().names).mark();
        match self.insert_batch(n, mark) {
            Ok(()) => {
                self.pending.drain(..n);
                if let Some(error) = self.failing.take() {
                    tracing::info!(previous_error = %error, "buffer writes resumed");
                }
                if let Err(e) = self.enforce_byte_cap() {
                    tracing::warn!(error = %e, "buffer: could not enforce max_bytes; will retry");
                }
                true
            }
            Err(e) => {
                lock(&self.shared().names).rollback_to(mark);
                let message = e.to_string();
                if self.failing.as_deref() != Some(message.as_str()) {
                    tracing::error!(
                        error = %message,
                        queued = self.pending.len(),
                        "buffer write failed; readings wait in memory (live feed unaffected) and writing retries every {}s",
                        RETRY.as_secs()
                    );
                }
                self.failing = Some(message);
                false
            }
        }
    }

    /// Inserts the first `n` pending records in one transaction; `mark`:
    /// the names before it (new ones are mirrored to the anchor first).
    fn insert_batch(&mut self, n: usize, mark: super::names::Mark) -> rusqlite::Result<()> {
        let shared = Arc::clone(&self.buffer.shared);
        // The counters lock is the write lock (see `Buffer::mark_pushed`).
        let mut guard = lock(&shared.counters);
        let mut c = *guard;
        let max_records = shared.settings.max_records.max(1);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let incoming = n as u64;
        let chunk = (max_records / 100).clamp(1, 10_000);
        let mut unsent_evicted = None;
        if c.stored + incoming > max_records {
            let need = c.stored + incoming - max_records;
            let n = need.max(chunk).min(c.stored);
            unsent_evicted = evict(&tx, &mut c, n)?;
        }
        {
            let mut names = lock(&shared.names);
            let mut insert = tx.prepare_cached(
                "INSERT INTO records (seq, device, received_at, device_time, state, flags, metrics, crc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for record in self.pending.range(..n) {
                let device = names.id(&tx, DEVICE, &record.device)?;
                let blob = names.encode_metrics(&tx, &row::stored_metrics(record))?;
                let received_ms = record.received_at.timestamp_millis();
                let device_delta = record
                    .device_time
                    .map(|t| t.timestamp() - received_ms.div_euclid(1000));
                let row = row::RawRow {
                    seq: i64::try_from(record.seq).unwrap_or(i64::MAX),
                    device,
                    received_at: received_ms,
                    device_time: device_delta,
                    state: row::state_code(record.state),
                    flags: row::record_bits(record),
                    metrics: blob,
                };
                insert.execute(params![
                    row.seq,
                    row.device,
                    row.received_at,
                    row.device_time,
                    row.state,
                    row.flags,
                    row.metrics,
                    row::crc(&row)
                ])?;
                if let Some(interval) = &record.interval {
                    super::levels::index(&tx, &row, interval)?;
                }
                c.written += 1;
                c.stored += 1;
                if record.seq > c.cursor {
                    c.unsent += 1;
                }
                c.next_seq = c.next_seq.max(record.seq + 1);
            }
        }
        c.lost += self.lost_unsaved;
        self.buffer.mirror_names_since(mark);
        c.save(&tx)?;
        self.buffer.save_positions(&tx)?;
        tx.commit()?;
        // Counted before the counters show the rows: whoever sees them sees
        // the commit too.
        self.buffer.note_commit();
        self.lost_unsaved = 0;
        *guard = c;
        drop(guard);
        self.cursor_committed(c.cursor);
        self.note_eviction(unsent_evicted, max_records, chunk, &c);
        Ok(())
    }

    /// Notes the cursor a commit carried; the anchor's copy follows it,
    /// never ahead of the file's.
    fn cursor_committed(&mut self, cursor: u64) {
        if cursor != self.saved_cursor {
            self.saved_cursor = cursor;
            self.buffer.shared.numbering.cursor_moved(cursor, false);
        }
    }

    /// Evicts a chunk after a commit that left the records over `max_bytes`.
    fn enforce_byte_cap(&mut self) -> rusqlite::Result<()> {
        let shared = Arc::clone(&self.buffer.shared);
        let Some(max_bytes) = shared.settings.max_bytes else {
            return Ok(());
        };
        let used: i64 = self.conn.query_row(
            "SELECT (p.page_count - f.freelist_count) * s.page_size
             FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
            [],
            |r| r.get(0),
        )?;
        if u64::try_from(used).unwrap_or(0) <= max_bytes {
            return Ok(());
        }
        let mut guard = lock(&shared.counters);
        let mut c = *guard;
        let max_records = shared.settings.max_records.max(1);
        let chunk = (c.stored / 100).clamp(1, 10_000);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = chunk.min(c.stored);
        let unsent_evicted = evict(&tx, &mut c, n)?;
        c.save(&tx)?;
        self.buffer.save_positions(&tx)?;
        tx.commit()?;
        self.buffer.note_commit();
        *guard = c;
        drop(guard);
        self.cursor_committed(c.cursor);
        self.note_eviction(unsent_evicted, max_records, chunk, &c);
        Ok(())
    }

    /// Tracks an eviction episode: one line when unsent records start to be
    /// evicted, one with the count and time range when it is over.
    fn note_eviction(
        &mut self,
        evicted: Option<Episode>,
        max_records: u64,
        chunk: u64,
        c: &Counters,
    ) {
        match (evicted, &mut self.episode) {
            (Some(now), None) => {
                tracing::warn!(
                    "buffer full: evicting the oldest unsent records (not yet accepted by the fleet); \
                     check the uplink, or raise [buffer].max_records"
                );
                self.episode = Some(now);
            }
            (Some(now), Some(episode)) => {
                episode.count += now.count;
                episode.last_ms = now.last_ms;
            }
            (None, Some(_)) if c.unsent + 2 * chunk <= max_records => self.end_episode(),
            (None, _) => {}
        }
    }

    fn end_episode(&mut self) {
        if let Some(e) = self.episode.take() {
            let time = |ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| crate::record::format_millis(&t))
                    .unwrap_or_default()
            };
            tracing::warn!(
                evicted_unsent = e.count,
                "buffer: {} unsent records evicted, received {} to {}",
                e.count,
                time(e.first_ms),
                time(e.last_ms)
            );
        }
    }

    fn publish_pending(&self) {
        let mut pending = lock(&self.shared().pending);
        *pending = (self.pending.len() as u64, self.failing.clone());
    }

    fn give_up(&mut self) {
        let lost = self.pending.len() as u64 + self.lost_unsaved;
        if lost > 0 {
            tracing::error!(
                lost,
                error = self.failing.as_deref().unwrap_or("unknown"),
                "shutting down while the buffer cannot be written: {lost} readings were not saved"
            );
        }
    }
}

/// Evicts `n` records: already-pushed first, then the oldest unsent.
/// Returns what was evicted of the unsent ones, if any.
pub(super) fn evict(
    tx: &Connection,
    c: &mut Counters,
    n: u64,
) -> rusqlite::Result<Option<Episode>> {
    let cursor = i64::try_from(c.cursor).unwrap_or(i64::MAX);
    let limit = i64::try_from(n).unwrap_or(i64::MAX);
    let pushed = tx.execute(
        "DELETE FROM records WHERE seq IN
             (SELECT seq FROM records WHERE seq <= ?1 ORDER BY seq LIMIT ?2)",
        params![cursor, limit],
    )? as u64;
    c.evicted_pushed += pushed;
    c.stored = c.stored.saturating_sub(pushed);
    let rest = n.saturating_sub(pushed);
    if rest == 0 {
        super::levels::forget_evicted(tx)?;
        return Ok(None);
    }
    let rest_i = i64::try_from(rest).unwrap_or(i64::MAX);
    let (count, first_ms, last_ms): (i64, Option<i64>, Option<i64>) = tx.query_row(
        "SELECT count(*), min(received_at), max(received_at) FROM
             (SELECT received_at FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
        params![cursor, rest_i],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    tx.execute(
        "DELETE FROM records WHERE seq IN
             (SELECT seq FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
        params![cursor, rest_i],
    )?;
    super::levels::forget_evicted(tx)?;
    let count = u64::try_from(count).unwrap_or(0);
    if count == 0 {
        return Ok(None);
    }
    let (first_ms, last_ms) = (first_ms.unwrap_or(0), last_ms.unwrap_or(0));
    c.evicted_unsent += count;
    c.unsent = c.unsent.saturating_sub(count);
    c.stored = c.stored.saturating_sub(count);
    if c.evicted_unsent_first_ms == 0 {
        c.evicted_unsent_first_ms = first_ms;
    }
    c.evicted_unsent_last_ms = c.evicted_unsent_last_ms.max(last_ms);
    Ok(Some(Episode {
        count,
        first_ms,
        last_ms,
    }))
}
