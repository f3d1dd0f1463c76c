//! Buffers full of realistic records, written by the daemon's own buffer
//! code (so the file, its checksums and its anchor are exactly what a
//! running gateway leaves), and the ways the damage tests break them.

use serde_json::Value;
use slmd::buffer::{self, Settings};
use slmd::config::Durability;
use slmd::record::{MeterState, Record};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The metrics an NL-43 main channel reports, in `DOD?` order.
const METRICS: [&str; 11] = crate::MAIN_METRICS;

/// A buffer written as a gateway would have: `records` in `seq` order,
/// the first `pushed` of them accepted by the fleet, stopped cleanly.
pub struct Fixture {
    /// Every record, by position (`seq` = position + 1).
    pub records: Vec<Record>,
    /// The push cursor.
    pub pushed: u64,
}

impl Fixture {
    /// Writes `n` records of `devices` (round robin, one a second per
    /// device, ending now) into the buffer at `db`, marks the first
    /// `pushed` as accepted and stops cleanly.
    pub fn write(db: &Path, devices: &[&str], n: u64, pushed: u64) -> Fixture {
        let settings = Settings {
            path: db.to_owned(),
            max_records: 10_000_000,
            max_bytes: None,
            durability: Durability::Normal,
            memory_queue: 100_000,
            batch_max: 1000,
            commit_interval: std::time::Duration::ZERO,
            exclusive: true,
        };
        let (buffer, _) = buffer::open(settings).expect("fixture buffer opens");
        assert_eq!(buffer.next_seq(), 1, "a fixture starts a new buffer");
        let mut rng = fastrand::Rng::with_seed(0x5a1_7a6e);
        let start =
            chrono::Utc::now() - chrono::Duration::seconds((n / devices.len() as u64) as i64 + 60);
        let mut level: Vec<f64> = devices.iter().map(|_| 55.0).collect();
        let records: Vec<Record> = (1..=n)
            .map(|seq| {
                let d = (seq as usize - 1) % devices.len();
                level[d] = (level[d] + rng.i32(-8..=8) as f64 / 10.0).clamp(30.0, 100.0);
                let tenths = |v: f64| (v * 10.0).round() / 10.0;
                let lp = tenths(level[d]);
                let received_at = start
                    + chrono::Duration::milliseconds(
                        ((seq - 1) / devices.len() as u64) as i64 * 1000 + rng.i64(0..1000),
                    );
                let values = [
                    lp,
                    tenths(lp + 1.3),
                    tenths(lp + 31.2),
                    tenths(lp + 6.4),
                    tenths(lp - 4.1),
                    tenths(lp + 4.0),
                    tenths(lp + 2.9),
                    tenths(lp + 0.4),
                    tenths(lp - 2.8),
                    tenths(lp - 3.5),
                    tenths(lp + 18.0),
                ];
                Record {
                    seq,
                    device: Arc::from(devices[d]),
                    received_at,
                    device_time: Some(
                        chrono::DateTime::from_timestamp(received_at.timestamp() - 1, 0)
                            .expect("in range"),
                    ),
                    metrics: METRICS
                        .iter()
                        .zip(values)
                        .map(|(name, v)| (*name, (seq % 97 != 0).then_some(v)))
                        .collect(),
                    state: MeterState::Measuring,
                    flags: vec![],
                    interval: None,
                }
            })
            .collect();
        let (sender, receiver) = tokio::sync::mpsc::channel(records.len().max(1));
        let writer = buffer.start_writer(receiver).expect("writer starts");
        for record in &records {
            sender
                .blocking_send(Arc::new(record.clone()))
                .expect("writer alive");
        }
        // The cursor reaches the file with a commit of the writer's, so it
        // moves while the writer runs (once the records are committed).
        let committed = crate::poll_until(std::time::Duration::from_secs(120), || {
            (buffer.counters().stored == n).then_some(())
        });
        assert!(committed.is_some(), "every fixture record committed");
        if pushed > 0 {
            buffer
                .mark_pushed(slmd::buffer::Consumer::FleetHttp, pushed)
                .expect("cursor");
        }
        drop(sender);
        writer.join();
        assert_eq!(buffer.counters().cursor, pushed, "the cursor moved");
        drop(buffer);
        // Everything in the main file, as after a long quiet run.
        let conn = rusqlite::Connection::open(db).expect("reopen");
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint");
        Fixture { records, pushed }
    }

    /// Each record as the fleet receives it (SPEC §3 JSON).
    pub fn json(&self) -> Vec<Value> {
        self.records
            .iter()
            .map(|r| serde_json::to_value(r).expect("record JSON"))
            .collect()
    }
}

/// The leaf pages of `table` and their row counts, read with SQLite's
/// `dbstat` from a sound file.
pub fn leaf_pages(db: &Path, table: &str) -> BTreeMap<u64, u64> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare(
            "SELECT pageno, ncell FROM dbstat WHERE name = ?1 AND pagetype = 'leaf' ORDER BY pageno",
        )
        .expect("dbstat");
    stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .expect("leaf pages")
}

/// The root page of `table` (or index) and the page size.
pub fn root_page(db: &Path, name: &str) -> (u64, u64) {
    let conn = rusqlite::Connection::open(db).expect("open");
    let root: u64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .expect("root page");
    let size: u64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    (root, size)
}

/// Overwrites `len` bytes at `offset` of `path` with `byte`.
pub fn fill(path: &Path, offset: u64, len: usize, byte: u8) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for damage");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&vec![byte; len]).expect("damage");
    file.sync_all().expect("sync");
}

/// Flips `n` random bytes of `path` (seeded); returns their offsets.
pub fn flip_bytes(path: &Path, n: usize, seed: u64) -> Vec<u64> {
    let mut bytes = std::fs::read(path).expect("read");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut offsets = Vec::with_capacity(n);
    for _ in 0..n {
        let at = rng.usize(..bytes.len());
        bytes[at] ^= rng.u8(1..);
        offsets.push(at as u64);
    }
    std::fs::write(path, bytes).expect("write");
    offsets
}

/// `path` + `suffix`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}
