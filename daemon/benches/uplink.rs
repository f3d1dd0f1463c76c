//! Uplink benchmark (the acceptance figures of the fleet push issue).
//!
//! Run with `cargo bench -p slmd --bench uplink` (about a minute on two
//! cores, after the build). Measured:
//!
//! 1. A buffer file is filled with 1 000 000 realistic records: three
//!    meters, one record per second each, values from the simulator's level
//!    model ([`slmd_hil::Recording`]: a 10 Hz walk integrated into Leq, LE,
//!    Lmax, Lmin, L5..L95, Lpeak), `device_time` a second behind
//!    `received_at`, as the daemon records them.
//! 2. `fleet-sim` runs in the same process on `127.0.0.1:0` (so both sides
//!    share the two cores, as on a gateway pushing to a local rig).
//! 3. The real [`Uplink`] drains the backlog, gzipped, with the default
//!    `batch_max` (500) and then with 5 000, each from a fresh copy of the
//!    file; timed from start until the cursor reaches the last record.
//!    Reported: records/s, and bytes per record on the wire (request bodies
//!    as `fleet-sim` received them, over the records in them). Targets:
//!    ≥ 100 000 records/s, ≤ 30 bytes/record.
//!
//! Under `cargo test --benches` it runs with 20 000 records.

use slmd::buffer::{self, BufferSlot, Settings};
use slmd::config::{Durability, FleetConfig};
use slmd::record::{MeterState, Record};
use slmd::uplink::Uplink;
use slmd_hil::Recording;
use slmd_hil::fleet::{FleetSim, FleetSimConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DEVICES: [&str; 3] = ["nl43-north", "nl43-south", "nl52-east"];
const TOKEN: &str = "bench-token";
const GATEWAY: &str = "gw-bench";

fn settings(path: PathBuf) -> Settings {
    Settings {
        path,
        max_records: 100_000_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 100_000,
        batch_max: 1000,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    }
}

/// `count` records as three meters produce them, one per second each.
fn records(count: u64) -> impl Iterator<Item = Arc<Record>> {
    // 2026-11-22T00:00:00Z
    let start = 1_795_305_600_i64;
    let mut meters: Vec<Recording> = (0..DEVICES.len() as u64)
        .map(|i| Recording::new(4300 + i, start))
        .collect();
    (1..=count).map(move |seq| {
        let device = ((seq - 1) % DEVICES.len() as u64) as usize;
        let (meter_secs, values) = meters[device].next().unwrap_or_default();
        // The answer arrives a little after the meter's second ticks.
        let received_ms = (meter_secs + 1) * 1000 + 130 + device as i64 * 7;
        let db = |v: Option<firmware_bridge::Deci>| v.map(|d| d.db());
        let mut metrics = vec![
            ("lp", db(values.lp)),
            ("leq", db(values.leq)),
            ("le", db(values.le)),
            ("lmax", db(values.lmax)),
            ("lmin", db(values.lmin)),
        ];
        metrics.extend(
            ["l5", "l10", "l50", "l90", "l95"]
                .iter()
                .zip(values.ln)
                .map(|(n, v)| (*n, db(v))),
        );
        metrics.push(("lpeak", db(values.lpeak)));
        Arc::new(Record {
            seq,
            device: Arc::from(DEVICES[device]),
            received_at: chrono::DateTime::from_timestamp_millis(received_ms).unwrap_or_default(),
            device_time: chrono::DateTime::from_timestamp(meter_secs, 0),
            metrics,
            state: MeterState::Measuring,
            flags: Vec::new(),
            interval: None,
        })
    })
}

/// Fills a buffer file with `count` records through the real writer.
fn fill(path: &Path, count: u64) {
    let (buffer, _) = buffer::open(settings(path.to_owned())).expect("buffer opens");
    let (tx, rx) = mpsc::channel(8192);
    let writer = buffer.start_writer(rx).expect("writer starts");
    for record in records(count) {
        tx.blocking_send(record).expect("writer alive");
    }
    drop(tx);
    writer.join();
    assert_eq!(buffer.counters().written, count, "every record committed");
}

struct Drain {
    records: u64,
    elapsed: Duration,
    body_bytes: u64,
    requests: u64,
}

/// Drains the buffer at `path` into a fresh in-process fleet-sim.
fn drain(path: &Path, count: u64, batch_max: u32) -> Drain {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let fleet = FleetSim::new(FleetSimConfig::new(TOKEN));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = fleet.clone();
        let server_stop = stop.clone();
        tokio::spawn(async move { server.serve(listener, server_stop).await });

        let (buffer, _) = buffer::open(settings(path.to_owned())).expect("buffer opens");
        let slot = BufferSlot::default();
        let _ = slot.set(buffer.clone());
        let config = FleetConfig {
            enabled: true,
            url: Some(url),
            tokens: vec![TOKEN.to_owned()],
            batch_max,
            ..FleetConfig::default()
        };
        let (uplink, _handle) =
            Uplink::new(config, GATEWAY.to_owned(), slot).expect("uplink starts");
        let started = Instant::now();
        tokio::spawn(uplink.run(stop.clone()));
        let deadline = started + Duration::from_secs(600);
        while buffer.counters().cursor < count {
            assert!(Instant::now() < deadline, "drain did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        stop.cancel();
        let stats = fleet.stats();
        assert_eq!(stats.unique, count, "every record arrived once");
        assert_eq!(stats.out_of_order, 0, "in seq order");
        Drain {
            records: stats.records_in_bodies,
            elapsed,
            body_bytes: stats.body_bytes,
            requests: stats.requests,
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let count: u64 = if full { 1_000_000 } else { 20_000 };
    let dir = tempfile::tempdir().expect("temp dir");
    let master = dir.path().join("master.sqlite");
    let fill_started = Instant::now();
    fill(&master, count);
    println!(
        "filled a buffer with {count} records in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    for batch_max in [500, 5000] {
        // A fresh copy per run: the cursor of the previous run is in the file.
        let copy = dir.path().join(format!("drain-{batch_max}.sqlite"));
        let conn = rusqlite::Connection::open(&master).expect("open master");
        conn.execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])
            .expect("copy");
        drop(conn);
        let result = drain(&copy, count, batch_max);
        let rate = count as f64 / result.elapsed.as_secs_f64();
        let per_record = result.body_bytes as f64 / result.records.max(1) as f64;
        println!(
            "uplink drain, batch_max {batch_max:>5}: {count} records in {:.2} s = {rate:>9.0} records/s \
             (target ≥ 100 000); {per_record:.1} bytes/record gzipped on the wire (target ≤ 30); \
             {} requests",
            result.elapsed.as_secs_f64(),
            result.requests
        );
    }
}
