//! Bytes written to the gateway's disk per record, on the real daemon: four
//! simulated NL-43 meters at one reading a second, the fleet push on (to a
//! `fleet-sim`), the state folder on a real file system (under the cargo
//! target folder: a tmpfs counts no writes).
//!
//! For each setting it waits until every meter reads and the fleet has
//! records, then measures `write_bytes` of the daemon's own `/proc/self/io`
//! as `/v1/status` reports it (the bytes it caused to be sent to storage:
//! the buffer, its write-ahead log, checkpoints and the anchor) over the run, and divides by the records
//! received in that time. Beside it: the size a record occupies in the file
//! (its share of the `records` b-tree pages), and commits per minute.
//!
//! Run with `cargo bench -p slmd-e2e --bench flash_wear`; `FLASH_WEAR_SECONDS`
//! sets each run's length (default 900: a checkpoint copies the log's
//! pages into the file about every 3.5 minutes here, and a run must hold
//! several for its figure to be the long-run one). Settings measured: the
//! defaults, `durability = "full"`, and `commit_interval = "0s"` (a commit
//! per reading, as slmd did before commits were grouped);
//! `FLASH_WEAR_BUFFER='commit_interval = "15s"'` measures only the
//! `[buffer]` lines given.

use slmd_e2e::api::{api_address, status};
use slmd_e2e::deb::target_tmp;
use slmd_e2e::fleet::{FleetSim, fleet_section};
use slmd_e2e::{Daemon, poll_until, tcp_devices, tcp_sims};
use std::path::Path;
use std::time::{Duration, Instant};

const TOKEN: &str = "flash-wear-bench-token";

struct Run {
    name: &'static str,
    buffer: &'static str,
}

const RUNS: [Run; 3] = [
    Run {
        name: "default (normal, commit_interval 15s)",
        buffer: "",
    },
    Run {
        name: "durability = \"full\"",
        buffer: "durability = \"full\"\n",
    },
    Run {
        name: "commit_interval = \"0s\" (a commit per reading)",
        buffer: "commit_interval = \"0s\"\n",
    },
];

fn main() {
    let seconds: u64 = std::env::var("FLASH_WEAR_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);
    println!(
        "| setting | records | bytes written | bytes written per record | record size on disk | commits per minute |"
    );
    println!("|---|---|---|---|---|---|");
    if let Ok(buffer) = std::env::var("FLASH_WEAR_BUFFER") {
        // One setting of the caller's: `[buffer]` lines.
        let buffer: &'static str = buffer.leak();
        let run = Run {
            name: buffer,
            buffer,
        };
        measure(&run, Duration::from_secs(seconds));
        return;
    }
    for run in &RUNS {
        measure(run, Duration::from_secs(seconds));
    }
}

fn measure(run: &Run, length: Duration) {
    std::fs::create_dir_all(target_tmp()).expect("target tmp");
    let dir = tempfile::tempdir_in(target_tmp()).expect("bench folder on a real disk");
    let sims = tcp_sims(4, 700);
    let fleet = FleetSim::start(TOKEN, &[]);
    let state = dir.path().join("state");
    let config = dir.path().join("slmd.toml");
    // The production push interval: the fleet section's test timings are
    // faster than a gateway runs.
    let fleet_table = fleet_section(&fleet.url(), &[TOKEN], "interval = \"5s\"");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-bench\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [buffer]\n{}\n{fleet_table}\n{}",
            state.display(),
            run.buffer,
            tcp_devices(&sims)
        ),
    )
    .expect("write config");
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    // Steady state: every meter reads, and the fleet has taken records.
    poll_until(Duration::from_secs(60), || {
        let s = status(&api)?;
        let devices = s["devices"].as_array()?;
        let all_read = devices.len() == 4
            && devices
                .iter()
                .all(|d| d["readings_total"].as_u64().unwrap_or(0) > 0);
        (all_read && !fleet.seqs("gw-bench").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no steady state\n{}", daemon.proc.transcript()));

    let before = sample(&daemon, &api);
    let started = Instant::now();
    // The measured window itself, not a wait for an event.
    std::thread::sleep(length);
    let after = sample(&daemon, &api);
    let elapsed = started.elapsed();
    daemon.proc.terminate(Duration::from_secs(15));

    let records = after.records - before.records;
    let bytes = after.write_bytes - before.write_bytes;
    let commits = after.commits - before.commits;
    let per_minute = commits as f64 * 60.0 / elapsed.as_secs_f64();
    println!(
        "| {} | {records} | {bytes} | {:.0} | {:.0} | {per_minute:.1} |",
        run.name,
        bytes as f64 / records.max(1) as f64,
        record_size_on_disk(&state.join("buffer.sqlite")),
    );
}

struct Sample {
    /// Records the daemon received (printed on its live feed).
    records: u64,
    /// `write_bytes` of its `/proc/self/io`, as its status reports it.
    write_bytes: u64,
    /// Buffer commits since start.
    commits: u64,
}

fn sample(daemon: &Daemon, api: &str) -> Sample {
    let status = status(api).expect("/v1/status answers");
    let buffer = &status["buffer"];
    Sample {
        records: daemon.printed_records().len() as u64,
        write_bytes: buffer["disk_write_bytes"]
            .as_u64()
            .expect("buffer.disk_write_bytes in /v1/status"),
        commits: buffer["commits"]["total"]
            .as_u64()
            .expect("buffer.commits.total in /v1/status"),
    }
}

/// Bytes of `records` b-tree pages per stored record (leaf and interior
/// pages, with their free space: what the file spends on a record).
fn record_size_on_disk(db: &Path) -> f64 {
    let conn = slmd_e2e::open_buffer_ro(db);
    let (pages_bytes, rows): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT sum(pgsize) FROM dbstat WHERE name = 'records'),
                    (SELECT count(*) FROM records)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("dbstat of the records table");
    pages_bytes as f64 / rows.max(1) as f64
}
