//! The buffer against a model, on real SQLite files: `seq` across restarts
//! and eviction, exact accounting at every step, pushed-first eviction, and
//! records that read back exactly as they were written.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use slmd::buffer::{
    self, Buffer, Consumer, Counters, OpenReport, Settings, WriterHandle, numbering,
};
use slmd::config::Durability;
use slmd::record::{Flag, MeterState, Record};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn settings(path: &Path, max_records: u64) -> Settings {
    Settings {
        path: path.to_owned(),
        max_records,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 10_000,
        batch_max: 1000,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 14, 0, 0)
        .single()
        .expect("valid")
}

/// A realistic record; values derived from `seq` so each is distinct.
fn record(seq: u64) -> Record {
    let received_at = t0() + chrono::Duration::milliseconds(seq as i64 * 1000 + 123);
    let tenths = |base: u64| Some((base + seq % 97) as f64 / 10.0 + 40.0);
    Record {
        seq,
        device: Arc::from(["north", "south", "east"][(seq % 3) as usize]),
        received_at,
        // Meter clocks have whole seconds, and so does `device_time`.
        device_time: (seq % 4 != 0).then(|| {
            DateTime::from_timestamp(received_at.timestamp() - (seq % 5) as i64, 0)
                .expect("in range")
        }),
        metrics: vec![
            ("lp", tenths(3)),
            ("leq", tenths(2)),
            ("lmax", tenths(9)),
            ("lmin", None),
            ("l90", tenths(1)),
        ],
        state: if seq % 7 == 0 {
            MeterState::Stopped
        } else {
            MeterState::Measuring
        },
        flags: if seq % 11 == 0 {
            vec![Flag::Overload, Flag::ClockUnsynced]
        } else {
            vec![]
        },
        interval: None,
    }
}

/// An open buffer with its writer.
struct Open {
    buffer: Buffer,
    sender: mpsc::Sender<Arc<Record>>,
    writer: WriterHandle,
}

impl Open {
    fn new(settings: Settings) -> (Open, OpenReport) {
        let (buffer, report) = buffer::open(settings).expect("buffer opens");
        let (sender, receiver) = mpsc::channel(100_000);
        let writer = buffer.start_writer(receiver).expect("writer starts");
        (
            Open {
                buffer,
                sender,
                writer,
            },
            report,
        )
    }

    /// Writes `count` new records with the next seqs; waits for the commit.
    fn write(&self, count: u64) -> Vec<u64> {
        let before = self.buffer.counters().written;
        let first = self.buffer.next_seq().max(self.last_sent_seq() + 1);
        let seqs: Vec<u64> = (first..first + count).collect();
        for &seq in &seqs {
            self.sender
                .blocking_send(Arc::new(record(seq)))
                .expect("writer alive");
        }
        self.wait_written(before + count);
        seqs
    }

    fn last_sent_seq(&self) -> u64 {
        self.buffer.counters().next_seq.saturating_sub(1)
    }

    fn wait_written(&self, target: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.buffer.counters().written < target {
            assert!(Instant::now() < deadline, "writer did not commit in time");
            std::thread::yield_now();
        }
    }

    /// Waits for the salvage of a damaged file to end; returns its report.
    fn wait_salvage(&self) -> buffer::SalvageStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.buffer.salvage_pending() {
            assert!(Instant::now() < deadline, "salvage did not end in time");
            std::thread::yield_now();
        }
        self.buffer.salvage_status().expect("a salvage ran")
    }

    /// Closes the writer (it commits what it holds) and returns the buffer.
    fn close(self) -> Buffer {
        drop(self.sender);
        self.writer.join();
        self.buffer
    }
}

/// Every stored seq, paged through history as an API client would.
fn stored_seqs(buffer: &Buffer) -> Vec<u64> {
    paged(buffer, None, 10_000)
}

/// Every seq of records received at or after `since`, page by page.
fn paged(buffer: &Buffer, since: Option<DateTime<Utc>>, limit: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after = None;
    loop {
        let page = buffer
            .history_page(None, since, after, limit)
            .expect("history reads");
        seqs.extend(page.records.iter().map(|r| r.seq));
        match page.more_after {
            Some(next) => after = Some(next),
            None => return seqs,
        }
    }
}

#[test]
fn history_finds_since_and_pages_exactly_across_a_backward_clock_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (open, _) = Open::new(settings(&dir.path().join("buffer.sqlite"), 100_000));
    // 3000 records a second apart; after the 2000th the gateway clock
    // steps back an hour (NTP correcting a box whose clock ran fast).
    let stepped = |seq: u64| {
        let mut r = record(seq);
        if seq > 2000 {
            r.received_at -= chrono::Duration::hours(1);
        }
        r
    };
    for seq in 1..=3000 {
        open.sender
            .blocking_send(Arc::new(stepped(seq)))
            .expect("writer alive");
    }
    open.wait_written(3000);
    let buffer = &open.buffer;
    let seqs = |page: &buffer::HistoryPage| page.records.iter().map(|r| r.seq).collect::<Vec<_>>();

    let page = buffer
        .history_page(None, Some(record(500).received_at), None, 10)
        .expect("reads");
    assert_eq!(seqs(&page), (500..510).collect::<Vec<_>>());
    assert_eq!(page.more_after, Some(509));
    let next = buffer
        .history_page(None, Some(record(500).received_at), Some(509), 3)
        .expect("reads");
    assert_eq!(seqs(&next), [510, 511, 512]);
    // Between two readings: the next one of that meter.
    let between = record(1500).received_at + chrono::Duration::milliseconds(500);
    let page = buffer
        .history_page(Some("north"), Some(between), None, 2)
        .expect("reads");
    assert_eq!(seqs(&page), [1503, 1506], "north is every third");
    // Just before the step: found, though the records after it are stamped
    // earlier; those are left out (stamped before `since`).
    let since = Some(record(1990).received_at);
    assert_eq!(paged(buffer, since, 4), (1990..=2000).collect::<Vec<_>>());
    // Stamped in the hour the clock repeated: the records from before the
    // step and those after it that fall in that hour, each once.
    let repeated = stepped(2500).received_at;
    let expected: Vec<u64> = (1..=3000)
        .filter(|s| stepped(*s).received_at >= repeated)
        .collect();
    assert!(expected.contains(&2500) && expected.contains(&1000));
    assert_eq!(paged(buffer, Some(repeated), 333), expected);
    // Paging through all of it gives each record once.
    assert_eq!(stored_seqs(buffer), (1..=3000).collect::<Vec<_>>());
    // Later than everything: empty, nothing more.
    let page = buffer
        .history_page(None, Some(record(10_000).received_at), None, 10)
        .expect("reads");
    assert!(page.records.is_empty());
    assert_eq!(page.more_after, None);
    open.close();
}

fn assert_accounting(c: &Counters, buffer: &Buffer) {
    assert_eq!(
        c.written,
        c.stored + c.evicted_pushed + c.evicted_unsent,
        "written = stored + evicted: {c:?}"
    );
    let seqs = stored_seqs(buffer);
    assert_eq!(
        c.stored,
        seqs.len() as u64,
        "stored matches the rows: {c:?}"
    );
    let unsent = seqs.iter().filter(|s| **s > c.cursor).count() as u64;
    assert_eq!(c.unsent, unsent, "unsent matches the rows: {c:?}");
}

#[test]
fn seq_continues_across_restarts_and_is_never_reused_after_eviction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let mut all = Vec::new();
    for round in 0..4 {
        let (open, report) = Open::new(settings(&path, 25));
        if round == 0 {
            assert_eq!(report, OpenReport::Created);
        } else {
            assert_eq!(report, OpenReport::Checked);
        }
        all.extend(open.write(20));
        let buffer = open.close();
        // Everything but the newest 25 was evicted, yet numbering goes on.
        assert!(buffer.counters().stored <= 25);
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert_eq!(all.first(), Some(&1));
    assert_eq!(all.len(), 80);
}

#[test]
fn the_cap_holds_with_exact_accounting_at_every_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (open, _) = Open::new(settings(&dir.path().join("b.sqlite"), 50));
    for step in [1, 7, 30, 13, 49, 50, 51, 3, 100, 2] {
        open.write(step);
        let c = open.buffer.counters();
        assert!(c.stored <= 50, "cap holds: {c:?}");
        assert_accounting(&c, &open.buffer);
    }
    let c = open.close().counters();
    assert_eq!(c.written, 306);
    assert_eq!(c.evicted_pushed, 0, "nothing was pushed");
    assert!(c.evicted_unsent >= 256);
}

#[test]
fn already_pushed_records_are_evicted_first_then_the_oldest_unsent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (open, _) = Open::new(settings(&dir.path().join("b.sqlite"), 100));
    let seqs = open.write(100);
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[29])
        .expect("cursor moves");
    let c = open.buffer.counters();
    assert_eq!((c.cursor, c.unsent), (seqs[29], 70));

    open.write(20);
    let c = open.buffer.counters();
    assert_eq!(c.evicted_unsent, 0, "pushed records go first: {c:?}");
    assert_eq!(c.evicted_pushed, 20);
    let stored = stored_seqs(&open.buffer);
    assert_eq!(
        stored.first(),
        Some(&seqs[20]),
        "the oldest pushed went first"
    );
    assert_accounting(&c, &open.buffer);

    // 10 pushed left; 30 more force 20 unsent out, the oldest ones.
    open.write(30);
    let c = open.buffer.counters();
    assert_eq!(c.evicted_pushed, 30);
    assert_eq!(c.evicted_unsent, 20);
    let stored = stored_seqs(&open.buffer);
    assert_eq!(stored.first(), Some(&seqs[50]));
    let evicted_first = record(seqs[30]).received_at.timestamp_millis();
    let evicted_last = record(seqs[49]).received_at.timestamp_millis();
    assert_eq!(
        (c.evicted_unsent_first_ms, c.evicted_unsent_last_ms),
        (evicted_first, evicted_last),
        "the time range of what the fleet never got"
    );
    assert_accounting(&c, &open.buffer);
    open.close();
}

#[test]
fn records_read_back_exactly_in_seq_order_and_the_cursor_only_moves_forward() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(40);
    let buffer = open.close();
    let (buffer2, _) = buffer::open(settings(&path, 1000)).expect("reopens");
    drop(buffer);

    let unsent = buffer2.unsent(15).expect("unsent reads");
    let expected: Vec<Record> = seqs[..15].iter().map(|s| record(*s)).collect();
    assert_eq!(
        unsent, expected,
        "unsent records read back exactly, in seq order"
    );

    buffer2
        .mark_pushed(Consumer::FleetHttp, seqs[14])
        .expect("cursor");
    buffer2
        .mark_pushed(Consumer::FleetHttp, seqs[3])
        .expect("an older ack is harmless");
    assert_eq!(buffer2.counters().cursor, seqs[14]);
    assert_eq!(buffer2.unsent(1).expect("reads")[0].seq, seqs[15]);
    assert_eq!(buffer2.status().unsent, 25);
    assert_eq!(
        buffer2.status().oldest_unsent_received_at,
        Some(record(seqs[15]).received_at)
    );

    let south = buffer2
        .history(Some("south"), Some(record(seqs[10]).received_at), 100)
        .expect("history");
    assert!(!south.is_empty());
    assert!(
        south
            .iter()
            .all(|r| &*r.device == "south" && r.seq >= seqs[10])
    );
    assert!(
        buffer2
            .history(Some("nowhere"), None, 10)
            .expect("ok")
            .is_empty()
    );
}

/// Folds the log into the file, then overwrites its two middle pages
/// with garbage (as a failing SD card would).
fn damage_two_middle_pages(path: &Path) {
    {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }
    let mut bytes = std::fs::read(path).expect("read");
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let middle = (bytes.len() / page / 2) * page;
    bytes[middle..middle + 2 * page].fill(0xAB);
    std::fs::write(path, &bytes).expect("write");
}

#[test]
fn a_damaged_file_is_moved_aside_and_its_readable_rows_salvaged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let (open, _) = Open::new(settings(&path, 100_000));
    open.write(3000);
    let buffer = open.close();
    let before = buffer.counters();
    drop(buffer);
    damage_two_middle_pages(&path);

    let (open, report) = Open::new(settings(&path, 100_000));
    let OpenReport::MovedAside { moved_to, .. } = report else {
        panic!("expected the damaged file moved aside, got {report:?}");
    };
    let salvage = open.wait_salvage();
    let rows_saved = salvage.rows_saved;
    let done = std::path::PathBuf::from(
        moved_to
            .to_string_lossy()
            .replace(".salvaging-", ".corrupt-"),
    );
    assert!(done.exists(), "the damaged file is kept aside: {salvage:?}");
    assert!(!moved_to.exists(), "and renamed once its rows are safe");
    assert!(rows_saved > 2000 && rows_saved < 3000, "saved {rows_saved}");
    assert_eq!(
        salvage.rows_doubtful, 0,
        "garbage pages hold no row-shaped cells"
    );
    let c = open.buffer.counters();
    assert_eq!(c.stored, rows_saved);
    assert_eq!(
        c.lost,
        3000 - rows_saved,
        "the unreadable rows are counted lost"
    );
    assert!(c.next_seq >= before.next_seq, "seq never goes back");
    // What was saved is intact.
    for r in open.buffer.unsent(5000).expect("reads") {
        assert_eq!(r, record(r.seq));
    }
    let new = open.write(5);
    assert!(new[0] >= before.next_seq);
    open.close();
}

/// Copies the buffer at `from` (file, write-ahead log, anchor) to `to`, as
/// a kill would leave it: the writer has not stopped.
fn copy_as_killed(from: &Path, to: &Path) {
    for suffix in ["", "-wal"] {
        let src = format!("{}{suffix}", from.display());
        if Path::new(&src).exists() {
            std::fs::copy(&src, format!("{}{suffix}", to.display())).expect("copy");
        }
    }
    std::fs::copy(from.with_extension("anchor"), to.with_extension("anchor")).expect("anchor");
}

#[test]
fn after_an_unclean_stop_numbering_continues_past_the_reserve_and_declares_the_skip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(5);
    // While running, the file says "not stopped cleanly".
    let running: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'clean_stop'", [], |r| {
                r.get(0)
            })
        })
        .expect("meta reads");
    assert_eq!(running, 0);
    let killed = dir.path().join("killed.sqlite");
    copy_as_killed(&path, &killed);
    let clean_next = open.close().next_seq();
    assert_eq!(
        clean_next,
        seqs[4] + 1,
        "a clean stop continues without a gap"
    );
    let (again, _) = buffer::open(settings(&path, 1000)).expect("reopens");
    assert_eq!(
        (again.next_seq(), again.counters().skipped),
        (clean_next, 0)
    );
    drop(again);

    // A killed run: the numbers it may have streamed live are below the
    // anchor's limit; numbering continues there and declares the gap.
    let (after_kill, _) = buffer::open(settings(&killed, 1000)).expect("reopens");
    let next = after_kill.next_seq();
    assert!(next > clean_next, "{next}");
    let skipped = after_kill.counters().skipped;
    assert_eq!(
        skipped,
        next - clean_next,
        "every number in between is declared"
    );
    assert!(skipped <= numbering::SKIP_BOUND, "{skipped}");
    let batch = after_kill
        .next_batch(Consumer::FleetHttp, 100)
        .expect("batch");
    assert!(batch.skipped.is_empty(), "no record above the skip yet");
    drop(after_kill);
    // A second kill skips again, from where the first restart began.
    let (after_second, _) = buffer::open(settings(&killed, 1000)).expect("reopens");
    assert!(after_second.next_seq() > next);
    assert_eq!(
        after_second.counters().skipped,
        skipped + (after_second.next_seq() - next)
    );
    // Once a record lies above them, the skips travel with its batch.
    let (sender, receiver) = mpsc::channel(10);
    let writer = after_second.start_writer(receiver).expect("writer");
    let seq = after_second.next_seq();
    sender.blocking_send(Arc::new(record(seq))).expect("send");
    drop(sender);
    writer.join();
    let batch = after_second
        .next_batch(Consumer::FleetHttp, 100)
        .expect("batch");
    assert_eq!(
        batch.records.iter().map(|r| r.seq).collect::<Vec<_>>()[5],
        seq
    );
    assert_eq!(batch.skipped, vec![(clean_next, next - 1), (next, seq - 1)]);
    after_second
        .mark_pushed(Consumer::FleetHttp, seq)
        .expect("pushed");
    assert!(
        after_second
            .next_batch(Consumer::FleetHttp, 100)
            .expect("batch")
            .skipped
            .is_empty()
    );
}

#[test]
fn numbering_survives_a_deleted_buffer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(5);
    drop(open.close());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let (fresh, report) = buffer::open(settings(&path, 1000)).expect("opens");
    assert_eq!(report, OpenReport::Created);
    assert_eq!(
        fresh.next_seq(),
        seqs[4] + 1,
        "the anchor remembers where numbering stopped"
    );
    assert_eq!(fresh.status().epoch, 0);
}

#[test]
fn losing_the_anchor_and_the_buffer_starts_a_new_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 100_000));
    let seqs = open.write(2000);
    drop(open.close());
    std::fs::remove_file(path.with_extension("anchor")).expect("anchor gone");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
    }
    let mut bytes = std::fs::read(&path).expect("read");
    // The header's page size (big-endian u16 at offset 16).
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    bytes[..page].fill(0);
    std::fs::write(&path, &bytes).expect("zero the first page");

    let (open, report) = Open::new(settings(&path, 100_000));
    assert!(
        matches!(report, OpenReport::MovedAside { .. }),
        "{report:?}"
    );
    let epoch = open.buffer.status().epoch;
    assert_ne!(epoch, 0, "a new epoch");
    let next = open.buffer.next_seq();
    assert!(
        next > *seqs.last().expect("seqs"),
        "above every salvaged row: {next}"
    );
    let salvage = open.wait_salvage();
    assert!(salvage.rows_saved >= 1900, "{salvage:?}");
    let new = open.write(3);
    let buffer = open.close();
    // Salvaged rows keep epoch 0; new ones go out in the new epoch.
    let first = buffer
        .next_batch(Consumer::FleetHttp, 10_000)
        .expect("batch");
    assert_eq!(first.epoch, 0);
    assert!(first.records.iter().all(|r| r.seq < new[0]));
    buffer
        .mark_pushed(Consumer::FleetHttp, first.records.last().expect("rows").seq)
        .expect("pushed");
    let second = buffer
        .next_batch(Consumer::FleetHttp, 10_000)
        .expect("batch");
    assert_eq!(second.epoch, epoch);
    assert_eq!(
        second.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        new
    );
}

#[test]
fn a_burst_with_a_healthy_disk_is_held_back_not_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tight = settings(&dir.path().join("b.sqlite"), 100_000);
    tight.memory_queue = 10;
    let (open, _) = Open::new(tight);
    // 20 000 records at once: far more than the memory queue; the channel
    // holds them back while the writer commits batch after batch.
    open.write(20_000);
    let c = open.close().counters();
    assert_eq!((c.written, c.lost), (20_000, 0), "{c:?}");
}

/// One step of a random workload.
#[derive(Debug, Clone)]
enum Op {
    Write(u64),
    /// Acknowledge up to the n-th oldest unsent record.
    Push(usize),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..40).prop_map(Op::Write),
        2 => (0usize..30).prop_map(Op::Push),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The buffer behaves like a simple model: an ordered map that drops
    /// pushed records first, then the oldest, when over the cap.
    #[test]
    fn behaves_like_the_model(ops in prop::collection::vec(op(), 1..25), cap in 5u64..60) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("b.sqlite");
        let (mut open, _) = Open::new(settings(&path, cap));
        let mut model: BTreeMap<u64, ()> = BTreeMap::new();
        let mut cursor = 0u64;
        let mut last_seq = 0u64;
        for op in ops {
            let evicted_unsent_before = open.buffer.counters().evicted_unsent;
            let is_write = matches!(op, Op::Write(_));
            match op {
                Op::Write(n) => {
                    for seq in open.write(n) {
                        prop_assert!(seq > last_seq, "seq strictly increasing");
                        last_seq = seq;
                        model.insert(seq, ());
                    }
                }
                Op::Push(n) => {
                    if let Some(seq) = stored_seqs(&open.buffer).into_iter().filter(|s| *s > cursor).nth(n) {
                        open.buffer.mark_pushed(Consumer::FleetHttp, seq).expect("cursor");
                        cursor = seq;
                    }
                }
                Op::Reopen => {
                    open.close();
                    open = Open::new(settings(&path, cap)).0;
                }
            }
            let c = open.buffer.counters();
            assert_accounting(&c, &open.buffer);
            prop_assert!(c.stored <= cap);
            prop_assert_eq!(c.cursor, cursor);
            let stored = stored_seqs(&open.buffer);
            // Every stored record is one that was written, and what is
            // stored is a suffix of the unsent ones plus possibly some pushed
            // ones: no unsent record is missing while an older one is kept.
            prop_assert!(stored.iter().all(|s| model.contains_key(s)));
            let unsent_stored: Vec<u64> = stored.iter().copied().filter(|s| *s > cursor).collect();
            let unsent_written: Vec<u64> = model.keys().copied().filter(|s| *s > cursor).collect();
            prop_assert!(unsent_written.ends_with(&unsent_stored), "evicted unsent records are the oldest");
            if is_write && c.evicted_unsent > evicted_unsent_before {
                // Unsent records only go once every pushed one has gone (a
                // write adds no pushed records, so none may be left).
                let pushed_kept = stored.iter().filter(|s| **s <= cursor).count();
                prop_assert_eq!(pushed_kept, 0, "pushed records are evicted first");
            }
        }
        open.close();
    }
}

#[test]
fn a_quarantined_record_is_kept_flagged_counted_and_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(10);
    let buffer = open.close();

    buffer
        .mark_pushed(Consumer::FleetHttp, seqs[2])
        .expect("cursor");
    // Only the first unsent record can be quarantined.
    assert!(
        !buffer
            .quarantine(Consumer::FleetHttp, seqs[5], "not first")
            .expect("no error")
    );
    assert_eq!(buffer.counters().quarantined, 0);
    assert!(
        buffer
            .quarantine(
                Consumer::FleetHttp,
                seqs[3],
                "the fleet answered 400: bad lmax"
            )
            .expect("quarantined")
    );
    let c = buffer.counters();
    assert_eq!((c.cursor, c.quarantined, c.unsent), (seqs[3], 1, 6));
    assert_eq!(buffer.unsent(1).expect("reads")[0].seq, seqs[4]);
    assert_accounting(&c, &buffer);
    assert_eq!(buffer.status().quarantined, 1);

    let kept = buffer.quarantined(10).expect("reads");
    assert_eq!(kept.len(), 1);
    let (record_kept, reason) = &kept[0];
    assert_eq!(reason, "the fleet answered 400: bad lmax");
    assert_eq!(record_kept.seq, seqs[3]);
    assert!(record_kept.flags.contains(&Flag::Quarantined));
    assert_eq!(record_kept.metrics, record(seqs[3]).metrics);
    let in_ring = buffer.history(None, None, 100).expect("history");
    assert!(
        in_ring
            .iter()
            .find(|r| r.seq == seqs[3])
            .is_some_and(|r| r.flags.contains(&Flag::Quarantined)),
        "the ring's copy is flagged too"
    );

    // The counter and the quarantine survive a restart.
    drop(buffer);
    let (again, _) = buffer::open(settings(&path, 1000)).expect("reopens");
    assert_eq!(again.counters().quarantined, 1);
    assert_eq!(again.quarantined(10).expect("reads").len(), 1);
}

#[test]
fn a_version_1_buffer_is_migrated_with_its_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(5);
    drop(open.close());
    // Turn the file back into the first schema version.
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "DROP TABLE quarantine; DROP TABLE skipped; DROP TABLE epochs; DROP TABLE salvage;
         DROP TABLE intervals; DROP TABLE alert_events; DROP TABLE alert_episodes;
         DROP TABLE event_deliveries; DROP TABLE record_deliveries;
         ALTER TABLE records DROP COLUMN crc; PRAGMA user_version = 1;",
    )
    .expect("downgrade");
    drop(conn);

    let (buffer, _) = buffer::open(settings(&path, 1000)).expect("migrates");
    assert_eq!(stored_seqs(&buffer), seqs);
    buffer
        .mark_pushed(Consumer::FleetHttp, seqs[0])
        .expect("cursor");
    assert!(
        buffer
            .quarantine(Consumer::FleetHttp, seqs[1], "bad")
            .expect("the new table exists")
    );
    assert_eq!(file_version(&path), buffer::schema::VERSION);
}

#[test]
fn the_newest_record_of_each_device_is_read_back_for_late_joiners() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(20);
    let buffer = open.close();
    // Devices cycle north, south, east by seq % 3.
    let latest = buffer.latest_per_device(100).expect("reads");
    let expected: Vec<Record> = seqs[17..].iter().map(|s| record(*s)).collect();
    assert_eq!(latest, expected, "one per device, the newest, in seq order");
    let narrow = buffer.latest_per_device(1).expect("reads");
    assert_eq!(narrow, vec![record(seqs[19])], "only what the scan covers");
}

#[test]
fn a_lost_root_page_is_salvaged_whatever_the_seq_numbers() {
    // Numbers far apart (a gateway after many unclean stops): reading the
    // leaf pages costs the same as for numbers from 1.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let (open, _) = Open::new(settings(&path, 100_000));
    let first = 100_000_851;
    for seq in first..first + 5000 {
        open.sender
            .blocking_send(Arc::new(record(seq)))
            .expect("writer alive");
    }
    open.wait_written(5000);
    drop(open.close());
    let (root, page_size): (u64, u64) = {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
        (
            conn.query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .expect("root"),
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .expect("page size"),
        )
    };
    let mut bytes = std::fs::read(&path).expect("read");
    let at = ((root - 1) * page_size) as usize;
    bytes[at..at + page_size as usize].fill(0);
    std::fs::write(&path, &bytes).expect("zero the root page");

    let (open, report) = Open::new(settings(&path, 100_000));
    assert!(
        matches!(report, OpenReport::MovedAside { .. }),
        "{report:?}"
    );
    assert!(open.buffer.next_seq() >= first + 5000);
    let salvage = open.wait_salvage();
    assert_eq!(salvage.rows_saved, 5000, "{salvage:?}");
    let back = open.buffer.unsent(10_000).expect("reads");
    assert_eq!(back.len(), 5000);
    assert!(back.iter().all(|r| *r == record(r.seq)));
    open.close();
}

/// The push cursor as the file holds it, read by a connection of its own.
fn cursor_on_disk(path: &Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    conn.query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
        r.get(0)
    })
    .expect("cursor")
}

#[test]
fn readings_wait_for_their_commit_window_unless_asked_or_many() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut held = settings(&dir.path().join("b.sqlite"), 100_000);
    held.commit_interval = Duration::from_secs(600);
    let (open, _) = Open::new(held);
    for seq in 1..=5 {
        open.sender
            .blocking_send(Arc::new(record(seq)))
            .expect("writer alive");
    }
    // Ten minutes from the first of them: nothing is committed yet, and
    // the writer has made no commit at all.
    assert_eq!(open.buffer.counters().written, 0);
    assert_eq!(open.buffer.commit_stats().total, 0);
    // A reload asks for a commit: all five go in one.
    open.buffer.commit_soon();
    open.wait_written(5);
    assert_eq!(open.buffer.commit_stats().total, 1);
    // 500 waiting make a commit due at once.
    for seq in 6..=505 {
        open.sender
            .blocking_send(Arc::new(record(seq)))
            .expect("writer alive");
    }
    open.wait_written(505);
    assert_eq!(
        open.buffer.commit_stats().total,
        2,
        "one commit for the 500"
    );
    // What is still inside the window when the writer closes is committed.
    for seq in 506..=510 {
        open.sender
            .blocking_send(Arc::new(record(seq)))
            .expect("writer alive");
    }
    let buffer = open.close();
    assert_eq!(buffer.counters().written, 510);
    assert_eq!(buffer.commit_stats().total, 3);
}

#[test]
fn a_moved_cursor_rides_with_the_next_commit_or_gets_its_own_on_a_quiet_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let mut short = settings(&path, 100_000);
    short.commit_interval = Duration::from_millis(200);
    let (open, _) = Open::new(short);
    let seqs = open.write(10);
    let commits = open.buffer.commit_stats().total;
    // The fleet acknowledges; no reading follows (every meter is down).
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[4])
        .expect("cursor");
    assert_eq!(
        open.buffer.counters().cursor,
        seqs[4],
        "moved in memory at once"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    // (The commit is counted a moment after it is on disk.)
    while cursor_on_disk(&path) != seqs[4] as i64 || open.buffer.commit_stats().total == commits {
        assert!(
            Instant::now() < deadline,
            "the cursor never reached the file"
        );
        std::thread::yield_now();
    }
    assert_eq!(
        open.buffer.commit_stats().total,
        commits + 1,
        "a commit of its own"
    );
    // With readings flowing, the cursor goes into their commit.
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[9])
        .expect("cursor");
    let more = open.write(3);
    let before_close = open.buffer.commit_stats().total;
    assert!(before_close <= commits + 2, "{before_close} commits");
    let buffer = open.close();
    assert_eq!(cursor_on_disk(&path), seqs[9] as i64);
    assert_eq!(buffer.counters().unsent, more.len() as u64);
}

/// An interval level (SPEC §11) of `device` for the window starting at
/// `start` (10 s long).
fn interval_record(seq: u64, device: &str, start: DateTime<Utc>) -> Record {
    Record {
        seq,
        device: Arc::from(device),
        received_at: start + chrono::Duration::milliseconds(10_250),
        device_time: None,
        metrics: vec![
            ("leq", Some(61.234_567)),
            ("lmax", Some(74.9)),
            ("lmin", Some(48.1)),
            ("l10", Some(64.0)),
            ("l90", None),
        ],
        state: MeterState::Measuring,
        flags: vec![Flag::LowCoverage],
        interval: Some(slmd::record::Interval {
            start,
            length: Duration::from_secs(10),
            readings: 7,
            coverage: 0.7,
        }),
    }
}

#[test]
fn interval_levels_read_back_exactly_are_found_by_window_and_leave_history_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let (open, _) = Open::new(settings(&path, 40));
    open.write(3);
    let first = open.last_sent_seq() + 1;
    let windows: Vec<DateTime<Utc>> = (0..3)
        .map(|i| t0() + chrono::Duration::seconds(10 * i))
        .collect();
    for (i, start) in windows.iter().enumerate() {
        open.sender
            .blocking_send(Arc::new(interval_record(first + i as u64, "north", *start)))
            .expect("writer alive");
    }
    open.wait_written(6);
    let buffer = open.close();
    // Pushed like any record, exactly as written.
    let unsent = buffer.unsent(100).expect("unsent");
    assert_eq!(unsent.len(), 6);
    assert_eq!(unsent[3], interval_record(first, "north", windows[0]));
    // Found by device, length and window start.
    let levels = buffer
        .levels("north", Duration::from_secs(10), Some(windows[1]), 100)
        .expect("levels");
    let starts: Vec<DateTime<Utc>> = levels
        .iter()
        .filter_map(|r| r.interval.map(|i| i.start))
        .collect();
    assert_eq!(starts, windows[1..]);
    assert!(
        buffer
            .levels("north", Duration::from_secs(60), None, 100)
            .expect("levels")
            .is_empty()
    );
    assert!(
        buffer
            .levels("south", Duration::from_secs(10), None, 100)
            .expect("levels")
            .is_empty()
    );
    // History and the latest reading are readings only.
    assert_eq!(stored_seqs(&buffer).len(), 3);

    // Evicted with the ring: the index forgets them too.
    let (open, _) = Open::new(settings(&path, 40));
    open.write(40);
    let buffer = open.close();
    assert!(
        buffer
            .levels("north", Duration::from_secs(10), None, 100)
            .expect("levels")
            .is_empty()
    );
}

#[test]
fn interval_levels_salvaged_from_a_damaged_file_are_found_by_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let (open, _) = Open::new(settings(&path, 100_000));
    open.write(1000);
    let first = open.last_sent_seq() + 1;
    let levels = 1000;
    for i in 0..levels {
        let start = t0() + chrono::Duration::seconds(10 * i as i64);
        open.sender
            .blocking_send(Arc::new(interval_record(first + i, "north", start)))
            .expect("writer alive");
    }
    open.wait_written(1000 + levels);
    drop(open.close());
    damage_two_middle_pages(&path);

    let (open, report) = Open::new(settings(&path, 100_000));
    assert!(
        matches!(report, OpenReport::MovedAside { .. }),
        "expected the damaged file moved aside, got {report:?}"
    );
    open.wait_salvage();
    let saved: Vec<Record> = open
        .buffer
        .unsent(10_000)
        .expect("reads")
        .into_iter()
        .filter(|r| r.interval.is_some())
        .collect();
    assert!(!saved.is_empty(), "some interval levels were saved");
    let found = open
        .buffer
        .levels("north", Duration::from_secs(10), None, 10_000)
        .expect("levels");
    assert_eq!(found, saved, "every saved interval level is found");
    open.close();
}

#[test]
fn alert_events_are_numbered_kept_per_consumer_and_episodes_acked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.sqlite");
    let (open, _) = Open::new(settings(&path, 100));
    let buffer = open.close();
    buffer.event_delivery("fleet", true).expect("register");
    let body = |event: &str| serde_json::json!({"event": event, "episode": "e1"});
    let summary = serde_json::json!({"episode": "e1", "alert": "loud", "ack": null});
    let one = buffer
        .record_alert_event("e1", "loud", &body("onset"), &summary, true)
        .expect("stored");
    let two = buffer
        .record_alert_event("e1", "loud", &body("clear"), &summary, false)
        .expect("stored");
    assert!(two > one);
    // A consumer registered now starts after them; the fleet gets both.
    buffer
        .event_delivery("channel:late", true)
        .expect("register");
    let events = buffer.alert_events_after(0, 10).expect("read");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].body["event_seq"], one);
    assert_eq!(buffer.event_delivery("fleet", true).expect("pos"), (0, 0));
    assert_eq!(
        buffer.event_delivery("channel:late", true).expect("pos"),
        (two, 0)
    );
    buffer.mark_events_delivered("fleet", one).expect("mark");
    assert_eq!(buffer.event_delivery("fleet", true).expect("pos"), (one, 0));

    // Acks keep the first time and the latest note; unknown ones are errors.
    let acked = buffer
        .ack_episode("e1", "crane", "2026-12-02T10:00:00.000Z")
        .expect("ack");
    assert_eq!(acked["ack"]["note"], "crane");
    let again = buffer
        .ack_episode("e1", "done", "2026-12-02T11:00:00.000Z")
        .expect("ack");
    assert_eq!(again["ack"]["at"], "2026-12-02T10:00:00.000Z");
    assert_eq!(again["ack"]["note"], "done");
    assert!(matches!(
        buffer.ack_episode("e9", "", "2026-12-02T11:00:00.000Z"),
        Err(buffer::alerts::AckError::Unknown(_))
    ));
    let (active, recent) = buffer.episodes(10).expect("episodes");
    assert!(active.is_empty());
    assert_eq!(recent[0]["ack"]["note"], "done");

    // Reopened: all of it is still there, and numbering goes on.
    drop(buffer);
    let (open, _) = Open::new(settings(&path, 100));
    let buffer = open.close();
    assert_eq!(buffer.last_event_seq().expect("last"), two);
    assert_eq!(buffer.event_delivery("fleet", true).expect("pos"), (one, 0));
}

/// Each consumer's position as the file holds it.
fn positions_on_disk(path: &Path) -> BTreeMap<String, i64> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let mut stmt = conn
        .prepare("SELECT consumer, delivered FROM record_deliveries")
        .expect("the table exists");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("reads")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn two_uplinks_keep_their_own_positions_and_eviction_counts_what_either_has_not_taken() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 10));
    let both = [Consumer::FleetHttp, Consumer::FleetMqtt];
    open.buffer.use_consumers(&both).expect("consumers");
    let seqs = open.write(8);

    // HTTP takes everything; the MQTT uplink has taken nothing yet.
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[7])
        .expect("moves");
    let c = open.buffer.counters();
    assert_eq!((c.cursor, c.unsent), (0, 8), "unsent until both have them");
    assert!(
        open.buffer
            .next_batch(Consumer::FleetHttp, 100)
            .expect("reads")
            .records
            .is_empty()
    );
    let batch = open
        .buffer
        .next_batch(Consumer::FleetMqtt, 100)
        .expect("reads");
    assert_eq!(
        batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs,
        "the MQTT uplink gets every record, in order"
    );
    assert_eq!(open.buffer.backlog(Consumer::FleetHttp).expect("counts"), 0);
    assert_eq!(open.buffer.backlog(Consumer::FleetMqtt).expect("counts"), 8);

    // The MQTT uplink's acknowledgement is on disk when the call returns.
    open.buffer
        .mark_pushed_durably(Consumer::FleetMqtt, seqs[3])
        .expect("moves");
    assert_eq!(
        positions_on_disk(&path).get("fleet-mqtt"),
        Some(&(seqs[3] as i64))
    );
    assert_eq!(cursor_on_disk(&path), seqs[3] as i64, "the cursor with it");
    let c = open.buffer.counters();
    assert_eq!((c.cursor, c.unsent), (seqs[3], 4));

    // Full (10): what both have taken goes first, then the oldest that
    // the MQTT uplink lacks, counted as unsent although HTTP has them.
    let more = open.write(6);
    let c = open.buffer.counters();
    assert_eq!((c.evicted_pushed, c.evicted_unsent), (4, 0), "{c:?}");
    open.write(3);
    let c = open.buffer.counters();
    assert_eq!((c.evicted_pushed, c.evicted_unsent), (4, 3), "{c:?}");
    assert_accounting(&c, &open.buffer);
    assert_eq!(
        open.buffer
            .next_batch(Consumer::FleetMqtt, 1)
            .expect("reads")
            .records[0]
            .seq,
        seqs[7],
        "the MQTT uplink goes on with the oldest record still stored"
    );
    let buffer = open.close();
    drop(buffer);

    // Both positions survive a restart.
    let (again, _) = buffer::open(settings(&path, 10)).expect("reopens");
    again.use_consumers(&both).expect("consumers");
    assert_eq!(again.position(Consumer::FleetHttp), seqs[7]);
    assert_eq!(again.position(Consumer::FleetMqtt), seqs[3]);
    assert!(more.iter().all(|s| *s > seqs[7]));
}

#[test]
fn a_new_uplink_starts_at_the_cursor_and_a_dropped_one_is_forgotten() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    open.buffer
        .use_consumers(&[Consumer::FleetHttp])
        .expect("consumers");
    let seqs = open.write(5);
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[4])
        .expect("moves");
    // MQTT added by a reload: it sends what is unsent, not the buffer.
    open.buffer
        .use_consumers(&[Consumer::FleetHttp, Consumer::FleetMqtt])
        .expect("consumers");
    assert_eq!(open.buffer.position(Consumer::FleetMqtt), seqs[4]);
    let later = open.write(3);
    open.buffer
        .mark_pushed(Consumer::FleetHttp, later[2])
        .expect("moves");
    assert_eq!(open.buffer.counters().unsent, 3, "the MQTT uplink lacks 3");
    // Off again: forgotten, and the cursor follows the one left.
    open.buffer
        .use_consumers(&[Consumer::FleetHttp])
        .expect("consumers");
    let c = open.buffer.counters();
    assert_eq!((c.cursor, c.unsent), (later[2], 0));
    assert_eq!(
        positions_on_disk(&path).keys().collect::<Vec<_>>(),
        ["fleet-http"]
    );
    // Pushing turned off names no consumer: nothing is forgotten.
    open.buffer.use_consumers(&[]).expect("no change");
    assert_eq!(open.buffer.position(Consumer::FleetHttp), later[2]);
    assert_accounting(&open.buffer.counters(), &open.buffer);
    open.close();
}

#[test]
fn a_version_4_buffer_is_migrated_and_its_cursor_is_where_each_uplink_starts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    let seqs = open.write(5);
    // One uplink, as before there were consumers: the cursor itself.
    open.buffer
        .mark_pushed(Consumer::FleetHttp, seqs[2])
        .expect("moves");
    drop(open.close());
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch("DROP TABLE record_deliveries; PRAGMA user_version = 4;")
        .expect("downgrade");
    drop(conn);

    let (buffer, _) = buffer::open(settings(&path, 1000)).expect("migrates");
    buffer
        .use_consumers(&[Consumer::FleetMqtt])
        .expect("the new table exists");
    let batch = buffer.next_batch(Consumer::FleetMqtt, 100).expect("reads");
    assert_eq!(
        batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs[3..],
        "switched to MQTT, it sends what the HTTP uplink had not"
    );
    assert_eq!(file_version(&path), buffer::schema::VERSION);
}

#[test]
fn a_record_one_uplink_quarantined_is_passed_over_by_the_other_and_counted_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("b.sqlite");
    let (open, _) = Open::new(settings(&path, 1000));
    open.buffer
        .use_consumers(&[Consumer::FleetHttp, Consumer::FleetMqtt])
        .expect("consumers");
    let seqs = open.write(3);
    assert!(
        open.buffer
            .quarantine(Consumer::FleetHttp, seqs[0], "the fleet answered 400")
            .expect("quarantines")
    );
    let batch = open
        .buffer
        .next_batch(Consumer::FleetMqtt, 100)
        .expect("reads");
    assert_eq!(
        batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs[1..],
        "never sent as a normal record"
    );
    let c = open.buffer.counters();
    assert_eq!(c.quarantined, 1);
    assert_eq!(
        (c.cursor, c.unsent),
        (seqs[0], 2),
        "passed over by both: out of the unsent count"
    );
    open.close();
}

/// The schema version written in a buffer file.
fn file_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|conn| conn.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .expect("the file's schema version")
}
