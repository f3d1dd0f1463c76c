//! Buffer benchmarks (the acceptance figures of the buffer issue).
//!
//! Run with `cargo bench -p slmd --bench buffer` (under a minute on two
//! cores, after the build). Measured, on fresh files in a temporary folder:
//!
//! 1. **Sustained insert rate** of the real path: 200 000 realistic records
//!    (11 one-decimal metrics, 3 devices, `measuring`, `received_at` one ms
//!    apart, `device_time` set) sent through a tokio mpsc channel into
//!    [`Buffer::start_writer`] (`durability = normal`, `batch_max = 1000`),
//!    timed from the first send until `counters().written` reaches the count.
//!    The bounded channel holds the sender back while the writer commits.
//! 2. **The baseline**: a plain rusqlite loop with the same pragmas (WAL,
//!    `synchronous=NORMAL`) and the same `records` table, inserting the same
//!    rows (metrics blobs encoded beforehand) in transactions of 1000 with a
//!    prepared statement. The ratio buffer / plain is printed (target ≥ 0.5).
//! 3. **Bytes per record**: 1 000 000 records through the real buffer, then
//!    `PRAGMA wal_checkpoint(TRUNCATE)` from a separate connection; file size
//!    divided by the records (target ≤ 80).
//! 4. **Start-up time** with those 1 000 000 records: `buffer::open` on that
//!    file (integrity check included), reopened each iteration, median
//!    (target ≤ 300 ms). The file is in the page cache (warm start).
//!
//! Criterion prints its own estimates; a plain summary with the exact
//! figures follows at the end. Under `cargo test --benches` (criterion's test
//! mode) every size is cut down so the run stays short.

use criterion::{Criterion, SamplingMode, Throughput};
use rusqlite::{Connection, TransactionBehavior, params};
use slmd::buffer::{self, Buffer, OpenReport, Settings, row};
use slmd::config::Durability;
use slmd::record::{MeterState, Record};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The metrics of a realistic reading, in the order a meter reports them.
const METRICS: [&str; 11] = [
    "lp", "leq", "le", "lmax", "lmin", "l5", "l10", "l50", "l90", "l95", "lpeak",
];

/// Device ids (records cycle through them).
const DEVICES: [&str; 3] = ["nl52-north", "nl52-south", "nl43-east"];

/// Capacity of the writer's channel (the supervisor's `WRITER_QUEUE`).
const WRITER_QUEUE: usize = 8192;

/// The writer's `memory_queue`.
const MEMORY_QUEUE: usize = 100_000;

/// Rows per transaction, for the buffer (`batch_max`) and the baseline.
const BATCH: usize = 1000;

/// The `records` table, copied from `daemon/src/buffer/schema.rs` (version 1).
const RECORDS_DDL: &str = "CREATE TABLE records (
         seq         INTEGER PRIMARY KEY,
         device      INTEGER NOT NULL,
         received_at INTEGER NOT NULL,
         device_time INTEGER,
         state       INTEGER NOT NULL,
         flags       INTEGER NOT NULL,
         metrics     BLOB NOT NULL
     );";

/// How many records each measurement uses.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Records per insert iteration (buffer and baseline).
    insert: usize,
    /// Records in the file for bytes/record and start-up.
    big: u64,
}

impl Sizes {
    fn from_args() -> Sizes {
        let args: Vec<String> = std::env::args().collect();
        let bench = args.iter().any(|a| a == "--bench");
        let test = args.iter().any(|a| a == "--test");
        if bench && !test {
            Sizes {
                insert: 200_000,
                big: 1_000_000,
            }
        } else {
            // Criterion's test mode (`cargo test --benches`): each routine once.
            Sizes {
                insert: 2_000,
                big: 20_000,
            }
        }
    }
}

/// A realistic record: values vary pseudo-randomly but deterministically
/// with `seq`, in tenths of a dB, as meters report them.
fn record(seq: u64) -> Record {
    // 2026-11-22T14:00:00Z, then one ms per record.
    let base_ms = 1_795_356_000_000_i64;
    let received_ms = base_ms + seq as i64;
    let received_at = chrono::DateTime::from_timestamp_millis(received_ms).expect("in range");
    // The meter clock: whole seconds, a second behind the gateway.
    let device_time = chrono::DateTime::from_timestamp(received_ms.div_euclid(1000) - 1, 0);
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let lp = 450 + (next() % 250) as i64; // 45.0 .. 70.0 dB
    let metrics = METRICS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let spread = (next() % 60) as i64 - 30;
            let tenths = match *name {
                "lpeak" => lp + 200 + spread.abs(),
                "lmax" => lp + 50 + spread.abs(),
                "lmin" => lp - 80 + spread / 4,
                _ => lp + spread - i as i64,
            };
            (*name, Some(tenths as f64 / 10.0))
        })
        .collect();
    Record {
        seq,
        device: Arc::from(DEVICES[(seq % DEVICES.len() as u64) as usize]),
        received_at,
        device_time,
        metrics,
        state: MeterState::Measuring,
        flags: Vec::new(),
        interval: None,
    }
}

/// A record's row as the baseline inserts it: what the buffer stores.
struct PlainRow {
    seq: i64,
    device: i64,
    received_ms: i64,
    device_delta: Option<i64>,
    state: i64,
    flags: i64,
    metrics: Vec<u8>,
}

impl PlainRow {
    fn of(record: &Record) -> PlainRow {
        let id = |list: &[&str], name: &str| list.iter().position(|n| *n == name).unwrap_or(0);
        let received_ms = record.received_at.timestamp_millis();
        PlainRow {
            seq: record.seq as i64,
            device: id(&DEVICES, &record.device) as i64,
            received_ms,
            device_delta: record
                .device_time
                .map(|t| t.timestamp() - received_ms.div_euclid(1000)),
            state: row::state_code(record.state),
            flags: row::flag_bits(&record.flags),
            metrics: row::encode_metrics(&record.metrics, |name| id(&METRICS, name) as u8),
        }
    }
}

fn settings(path: PathBuf) -> Settings {
    Settings {
        path,
        max_records: 100_000_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: MEMORY_QUEUE,
        batch_max: BATCH,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    }
}

/// Sends `records` into a running writer of `buffer` and waits (polling the
/// counters) until all are committed; returns the time from first send to
/// the last commit seen. Then closes the channel and joins the writer.
fn push_through(
    buffer: &Buffer,
    count: u64,
    records: impl Iterator<Item = Arc<Record>>,
) -> Duration {
    let target = buffer.counters().written + count;
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = buffer.start_writer(rx).expect("writer starts");
    let started = Instant::now();
    // The bounded channel is the flow control: a healthy writer takes one
    // batch at a time, so `blocking_send` waits while it commits.
    for record in records {
        tx.blocking_send(record).expect("writer alive");
    }
    loop {
        let c = buffer.counters();
        if c.written + c.lost >= target {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    drop(tx);
    writer.join();
    let c = buffer.counters();
    assert_eq!(c.written, target, "every record written");
    assert_eq!(c.lost, 0, "no record lost");
    assert_eq!(c.evicted_pushed + c.evicted_unsent, 0, "no eviction");
    elapsed
}

/// One buffer iteration on a fresh file.
fn buffer_iteration(records: &[Arc<Record>]) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let (buffer, _) = buffer::open(settings(dir.path().join(buffer::FILE_NAME))).expect("opens");
    push_through(&buffer, records.len() as u64, records.iter().cloned())
}

/// A connection like the buffer's: WAL, `synchronous=NORMAL`, the table.
fn plain_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("opens");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("synchronous");
    conn.execute_batch(RECORDS_DDL).expect("schema");
    conn
}

/// One baseline iteration on a fresh file.
fn plain_iteration(rows: &[PlainRow]) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut conn = plain_connection(&dir.path().join("plain.sqlite"));
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO records (seq, device, received_at, device_time, state, flags, metrics)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .expect("prepare");
            for r in chunk {
                insert
                    .execute(params![
                        r.seq,
                        r.device,
                        r.received_ms,
                        r.device_delta,
                        r.state,
                        r.flags,
                        r.metrics
                    ])
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    started.elapsed()
}

/// Per-iteration durations (with a label) of each criterion call of one
/// routine.
#[derive(Default)]
struct Samples {
    calls: Vec<Vec<(Duration, &'static str)>>,
}

impl Samples {
    fn call(&mut self) -> &mut Vec<(Duration, &'static str)> {
        self.calls.push(Vec::new());
        self.calls.last_mut().expect("just pushed")
    }

    /// The iterations of the last `n` calls (the measurement, after the
    /// warm-up).
    fn measured(&self, n: usize) -> impl Iterator<Item = &(Duration, &'static str)> {
        let skip = self.calls.len().saturating_sub(n);
        self.calls[skip..].iter().flatten()
    }

    /// Median over the last `n` calls.
    fn median(&self, n: usize) -> Option<Duration> {
        let mut all: Vec<Duration> = self.measured(n).map(|(t, _)| *t).collect();
        all.sort();
        all.get(all.len() / 2).copied()
    }

    fn iterations(&self, n: usize) -> usize {
        self.measured(n).count()
    }

    /// How often each label occurs in the last `n` calls.
    fn labels(&self, n: usize) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for (_, label) in self.measured(n) {
            *counts.entry(*label).or_default() += 1;
        }
        counts
    }
}

/// The 1M-record file, built once.
struct Big {
    dir: tempfile::TempDir,
    records: u64,
    build_time: Duration,
    db_bytes: u64,
    wal_bytes: u64,
    page_size: i64,
    page_count: i64,
    freelist: i64,
}

impl Big {
    fn path(&self) -> PathBuf {
        self.dir.path().join(buffer::FILE_NAME)
    }
}

fn build_big(records: u64) -> Big {
    eprintln!("building a buffer of {records} records (once) ...");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(buffer::FILE_NAME);
    let (buf, _) = buffer::open(settings(path.clone())).expect("opens");
    let build_time = push_through(
        &buf,
        records,
        (1..=records).map(|seq| Arc::new(record(seq))),
    );
    assert_eq!(buf.counters().stored, records);
    // The writer has ended; checkpoint from a separate connection while the
    // buffer's (idle) reader connection is still open, as in the daemon.
    let conn = Connection::open(&path).expect("opens");
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "checkpoint not blocked (log {log}, done {done})");
    let pragma = |name: &str| -> i64 {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .expect("pragma")
    };
    let (page_size, page_count, freelist) = (
        pragma("page_size"),
        pragma("page_count"),
        pragma("freelist_count"),
    );
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let db_bytes = size(&path);
    let wal_bytes = size(&dir.path().join(format!("{}-wal", buffer::FILE_NAME)));
    drop(conn);
    drop(buf);
    Big {
        dir,
        records,
        build_time,
        db_bytes,
        wal_bytes,
        page_size,
        page_count,
        freelist,
    }
}

fn rate(records: usize, time: Duration) -> f64 {
    records as f64 / time.as_secs_f64()
}

fn main() {
    let sizes = Sizes::from_args();
    let mut c = Criterion::default().configure_from_args();
    const SAMPLES: usize = 10;

    // 1 and 2: insert rate, buffer and baseline.
    let records: Vec<Arc<Record>> = (1..=sizes.insert as u64)
        .map(|seq| Arc::new(record(seq)))
        .collect();
    let rows: Vec<PlainRow> = records.iter().map(|r| PlainRow::of(r)).collect();
    let blob_len = rows.first().map_or(0, |r| r.metrics.len());
    assert!(rows.iter().all(|r| r.metrics.len() == blob_len));
    let buffer_samples = RefCell::new(Samples::default());
    let plain_samples = RefCell::new(Samples::default());
    {
        let mut group = c.benchmark_group("buffer_insert");
        group
            .sample_size(SAMPLES)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(8))
            .throughput(Throughput::Elements(sizes.insert as u64));
        group.bench_function("buffer_writer", |b| {
            b.iter_custom(|iters| {
                let mut samples = buffer_samples.borrow_mut();
                let call = samples.call();
                (0..iters)
                    .map(|_| {
                        let t = buffer_iteration(black_box(&records));
                        call.push((t, ""));
                        t
                    })
                    .sum()
            })
        });
        group.bench_function("plain_rusqlite", |b| {
            b.iter_custom(|iters| {
                let mut samples = plain_samples.borrow_mut();
                let call = samples.call();
                (0..iters)
                    .map(|_| {
                        let t = plain_iteration(black_box(&rows));
                        call.push((t, ""));
                        t
                    })
                    .sum()
            })
        });
        group.finish();
    }
    drop(rows);
    drop(records);

    // 3 and 4: the big file, its size and the start-up time.
    let mut big: Option<Big> = None;
    let open_samples = RefCell::new(Samples::default());
    {
        let mut group = c.benchmark_group("buffer_open");
        group
            .sample_size(SAMPLES)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(3));
        group.bench_function(format!("open_{}_records", sizes.big), |b| {
            let big = big.get_or_insert_with(|| build_big(sizes.big));
            let settings = settings(big.path());
            b.iter_custom(|iters| {
                let mut samples = open_samples.borrow_mut();
                let call = samples.call();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let (buf, report) = buffer::open(settings.clone()).expect("opens");
                    let t = started.elapsed();
                    assert_eq!(buf.counters().stored, big.records);
                    let kind = match report {
                        OpenReport::Created => "created",
                        OpenReport::Checked => "checked (whole quick_check)",
                        OpenReport::PartlyChecked => "partly checked (quick_check budget hit)",
                        OpenReport::MovedAside { .. } => "MOVED ASIDE (damaged)",
                    };
                    drop(black_box(buf));
                    call.push((t, kind));
                    total += t;
                }
                total
            })
        });
        group.finish();
    }

    c.final_summary();

    // The summary, in plain lines.
    println!();
    println!("==== slmd buffer benchmark summary ====");
    if sizes.insert < 200_000 {
        println!("(test mode: reduced sizes, maybe unoptimised; not the acceptance figures)");
    }
    let buffer_median = buffer_samples.borrow().median(SAMPLES);
    let plain_median = plain_samples.borrow().median(SAMPLES);
    match buffer_median {
        Some(t) => println!(
            "insert, real buffer path : {:>10.0} records/s  (median of {} runs of {} records: {:.3} s)",
            rate(sizes.insert, t),
            buffer_samples.borrow().iterations(SAMPLES),
            sizes.insert,
            t.as_secs_f64()
        ),
        None => println!("insert, real buffer path : not run"),
    }
    match plain_median {
        Some(t) => println!(
            "insert, plain rusqlite   : {:>10.0} records/s  (median of {} runs of {} rows, {} B metrics blob: {:.3} s)",
            rate(sizes.insert, t),
            plain_samples.borrow().iterations(SAMPLES),
            sizes.insert,
            blob_len,
            t.as_secs_f64()
        ),
        None => println!("insert, plain rusqlite   : not run"),
    }
    if let (Some(b), Some(p)) = (buffer_median, plain_median) {
        let ratio = rate(sizes.insert, b) / rate(sizes.insert, p);
        println!(
            "ratio buffer / plain     : {ratio:>10.2}            (target >= 0.5: {})",
            if ratio >= 0.5 { "met" } else { "NOT met" }
        );
    }
    match &big {
        Some(big) => {
            let per_record = (big.db_bytes + big.wal_bytes) as f64 / big.records as f64;
            println!(
                "bytes per record on disk : {per_record:>10.1}            (target <= 80: {}; {} records, file {} B + wal {} B, {} pages of {} B, {} free)",
                if per_record <= 80.0 { "met" } else { "NOT met" },
                big.records,
                big.db_bytes,
                big.wal_bytes,
                big.page_count,
                big.page_size,
                big.freelist
            );
            println!(
                "building that file       : {:>10.0} records/s  ({} records in {:.2} s through the writer)",
                rate(big.records as usize, big.build_time),
                big.records,
                big.build_time.as_secs_f64()
            );
            match open_samples.borrow().median(SAMPLES) {
                Some(t) => {
                    let ms = t.as_secs_f64() * 1000.0;
                    let how: Vec<String> = open_samples
                        .borrow()
                        .labels(SAMPLES)
                        .iter()
                        .map(|(k, n)| format!("{n}x {k}"))
                        .collect();
                    println!(
                        "{:<25}: {ms:>10.1} ms median   (target <= 300: {}; {} opens: {})",
                        format!("open, {} records", big.records),
                        if ms <= 300.0 { "met" } else { "NOT met" },
                        open_samples.borrow().iterations(SAMPLES),
                        how.join(", ")
                    );
                }
                None => println!("open                     : not run"),
            }
        }
        None => println!("bytes per record, open   : not run"),
    }
}
