//! `/v1/status` latency while the API is abused, on the real daemon:
//!
//! 1. quiet, on a buffer of 1 000 000 records;
//! 2. with 8 clients reading `history?since=` back to back on that buffer
//!    for 10 s (after one first read, timed alone: it maps the buffer);
//! 3. while 4 000 connections that send nothing are opened and held.
//!
//! Run with `cargo bench -p slmd-e2e --bench api_abuse`; prints one table
//! row per case (status latency p50 / p99 / max; history latency for
//! case 2; the daemon's descriptors and memory for case 3).

use slmd_e2e::api::{api_address, status};
use slmd_e2e::fixture::Fixture;
use slmd_e2e::fleet::http;
use slmd_e2e::{
    Daemon, Setup, buffer_file, open_fds, poll_until, raise_fd_limit, rss_kib, tcp_device,
};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RECORDS: u64 = 1_000_000;
const DEVICES: [&str; 4] = ["m0", "m1", "m2", "m3"];
const SAMPLES: usize = 200;
const HISTORY_CLIENTS: usize = 8;
const HOSTILE: usize = 4000;
const BUSY: Duration = Duration::from_secs(10);

fn main() {
    raise_fd_limit(HOSTILE as u64 + 512);
    let setup = Setup::new();
    let started = Instant::now();
    std::fs::create_dir_all(setup.path("state")).expect("state dir");
    Fixture::write(&buffer_file(&setup), &DEVICES, RECORDS, 0);
    eprintln!(
        "fixture of {RECORDS} records written in {:?}",
        started.elapsed()
    );
    // Meters that are not there: the buffer is what the API reads.
    let devices: String = DEVICES
        .iter()
        .map(|id| tcp_device(id, "127.0.0.1:9", ""))
        .collect();
    let config = setup.config(&devices);
    let daemon = Daemon::start_with_fd_limit(&config, 4096, "none");
    let api = api_address(&daemon.proc);
    poll_until(Duration::from_secs(60), || status(&api)).expect("status answers");

    println!("| case | status p50 | p99 | max | other |");
    println!("|---|---|---|---|---|");
    let quiet = sample_status(&api);
    row("quiet, 1 000 000 records", &quiet, String::new());

    // The first `since` read after a start maps the buffer's times.
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let since = since.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let first = Instant::now();
    let r = http(
        &api,
        "GET",
        &format!("/v1/devices/m0/history?since={since}&limit=1000"),
        &[],
        b"",
    )
    .expect("history answers");
    assert_eq!(r.status, 200, "{}", r.body);
    println!(
        "| first history?since= after start (maps {RECORDS} records) | | | | {} ms |",
        ms(first.elapsed())
    );

    // 8 history readers, back to back, for BUSY.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..HISTORY_CLIENTS)
        .map(|i| {
            let (api, stop, since) = (api.clone(), stop.clone(), since.clone());
            std::thread::spawn(move || {
                let path = format!(
                    "/v1/devices/{}/history?since={since}&limit=1000",
                    DEVICES[i % DEVICES.len()]
                );
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = http(&api, "GET", &path, &[], b"").expect("history answers");
                    assert_eq!(r.status, 200, "{}", r.body);
                    took.push(t.elapsed());
                }
                took
            })
        })
        .collect();
    let mut busy = Vec::new();
    let until = Instant::now() + BUSY;
    while Instant::now() < until {
        busy.push(time_status(&api));
    }
    busy.sort();
    stop.store(true, Ordering::Relaxed);
    let mut history: Vec<Duration> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("reader"))
        .collect();
    history.sort();
    row(
        &format!("{HISTORY_CLIENTS} clients reading history?since=1h ago, limit 1000"),
        &busy,
        format!(
            "history p50 {} ms, p99 {} ms ({} reads)",
            ms(percentile(&history, 50)),
            ms(percentile(&history, 99)),
            history.len()
        ),
    );

    // Connections that send nothing, opened as fast as possible and held.
    let pid = daemon.proc.pid();
    let rss_before = rss_kib(pid);
    let flood_done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (api, done) = (api.clone(), flood_done.clone());
        std::thread::spawn(move || {
            let addr = api.parse().expect("address");
            let mut held = Vec::new();
            for _ in 0..HOSTILE {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                    held.push(s);
                }
            }
            done.store(true, Ordering::Relaxed);
            held
        })
    };
    let mut flooded = Vec::new();
    while !flood_done.load(Ordering::Relaxed) || flooded.len() < SAMPLES {
        flooded.push(time_status(&api));
    }
    let held = flood.join().expect("flood");
    flooded.sort();
    let fds = open_fds(pid);
    let rss_peak = rss_kib(pid);
    row(
        &format!("{HOSTILE} silent connections opened and held"),
        &flooded,
        format!(
            "{} of them established; daemon fds {fds}; RSS {} → {} MiB",
            held.len(),
            rss_before / 1024,
            rss_peak / 1024
        ),
    );
    drop(held);
}

fn sample_status(api: &str) -> Vec<Duration> {
    let mut took: Vec<Duration> = (0..SAMPLES).map(|_| time_status(api)).collect();
    took.sort();
    took
}

fn time_status(api: &str) -> Duration {
    let t = Instant::now();
    let r = http(api, "GET", "/v1/status", &[], b"").expect("status answers");
    assert_eq!(r.status, 200, "{}", r.body);
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(case: &str, sorted: &[Duration], other: String) {
    println!(
        "| {case} | {} ms | {} ms | {} ms | {other} |",
        ms(percentile(sorted, 50)),
        ms(percentile(sorted, 99)),
        ms(sorted.last().copied().unwrap_or_default())
    );
}
