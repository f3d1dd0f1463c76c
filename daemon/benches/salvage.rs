//! Start-up and salvage of a damaged buffer (the figures of the "no silent
//! loss" issue).
//!
//! Run with `cargo bench -p slmd --bench salvage` (about a minute on two
//! cores, after the build). A buffer of 1 000 000 realistic records (three
//! devices, eleven metrics, the real writer) is damaged two ways:
//!
//! 1. its first 100 bytes (the SQLite header) zeroed: the anchor beside it
//!    is intact, so numbering continues at once;
//! 2. the same, and the anchor deleted: numbering must first find the
//!    highest `seq` in the damaged file (a scan of every page).
//!
//! For each: the time until the buffer is open and its writer started
//! (what stands between the start of `slmd run` and `READY=1`, besides
//! binding the API), then the time until the background salvage has copied
//! every row into the fresh buffer, and the rows saved. The file is in the
//! page cache (it was just written). Under `cargo test --benches` the
//! buffer holds 20 000 records.

use slmd::buffer::{self, Settings};
use slmd::config::Durability;
use slmd::record::{MeterState, Record};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const METRICS: [&str; 11] = [
    "lp", "leq", "le", "lmax", "lmin", "l5", "l10", "l50", "l90", "l95", "lpeak",
];
const DEVICES: [&str; 3] = ["nl52-north", "nl52-south", "nl43-east"];

fn settings(path: &Path) -> Settings {
    Settings {
        path: path.to_owned(),
        max_records: 10_000_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 100_000,
        batch_max: 1000,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    }
}

fn record(seq: u64, start: chrono::DateTime<chrono::Utc>) -> Record {
    let received_at = start + chrono::Duration::milliseconds(seq as i64 * 333);
    let base = 40.0 + (seq % 400) as f64 / 10.0;
    Record {
        seq,
        device: Arc::from(DEVICES[(seq % 3) as usize]),
        received_at,
        device_time: chrono::DateTime::from_timestamp(received_at.timestamp(), 0),
        metrics: METRICS
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, Some(base + i as f64 / 10.0)))
            .collect(),
        state: MeterState::Measuring,
        flags: vec![],
        interval: None,
    }
}

/// Writes `n` records into a new buffer at `path` and stops cleanly.
fn build(path: &Path, n: u64) {
    let (buffer, _) = buffer::open(settings(path)).expect("opens");
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    let writer = buffer.start_writer(rx).expect("writer");
    let start = chrono::Utc::now() - chrono::Duration::days(5);
    for seq in 1..=n {
        tx.blocking_send(Arc::new(record(seq, start)))
            .expect("send");
    }
    drop(tx);
    writer.join();
    drop(buffer);
    let conn = rusqlite::Connection::open(path).expect("opens");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
}

/// Copies the buffer and its anchor from `from` into `to`.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for name in [buffer::FILE_NAME, "buffer.anchor"] {
        std::fs::copy(from.join(name), to.join(name)).expect("copy");
    }
}

struct Figures {
    ready: Duration,
    salvage: Duration,
    saved: u64,
    next_seq: u64,
    epoch: u64,
}

fn run(dir: &Path) -> Figures {
    let path = dir.join(buffer::FILE_NAME);
    let started = Instant::now();
    let (buffer, _) = buffer::open(settings(&path)).expect("opens");
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    let writer = buffer.start_writer(rx).expect("writer");
    let ready = started.elapsed();
    while buffer.salvage_pending() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let salvage = started.elapsed() - ready;
    let saved = buffer.salvage_status().map_or(0, |s| s.rows_saved);
    let figures = Figures {
        ready,
        salvage,
        saved,
        next_seq: buffer.next_seq(),
        epoch: buffer.status().epoch,
    };
    drop(tx);
    writer.join();
    figures
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = if full { 1_000_000 } else { 20_000 };
    let template = tempfile::tempdir().expect("temp dir");
    eprintln!("building a buffer of {n} records ...");
    build(&template.path().join(buffer::FILE_NAME), n);
    let bytes = std::fs::metadata(template.path().join(buffer::FILE_NAME)).map_or(0, |m| m.len());
    println!("salvage: {n} records, {:.1} MB file", bytes as f64 / 1e6);
    for (case, lose_anchor) in [
        ("header zeroed, anchor intact", false),
        ("header zeroed, anchor lost", true),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        copy(template.path(), dir.path());
        let db = dir.path().join(buffer::FILE_NAME);
        let mut bytes = std::fs::read(&db).expect("read");
        bytes[..100].fill(0);
        std::fs::write(&db, bytes).expect("damage");
        if lose_anchor {
            std::fs::remove_file(dir.path().join("buffer.anchor")).expect("anchor");
        }
        let f = run(dir.path());
        assert_eq!(f.saved, n, "{case}: every row saved");
        assert!(f.next_seq > n, "{case}: numbering continues above the file");
        println!(
            "  {case}: ready in {:.0} ms; salvage {:.2} s ({:.0} rows/s), {} rows saved; \
             numbering continues at {} (epoch {})",
            f.ready.as_secs_f64() * 1000.0,
            f.salvage.as_secs_f64(),
            f.saved as f64 / f.salvage.as_secs_f64().max(1e-9),
            f.saved,
            f.next_seq,
            f.epoch
        );
    }
}
