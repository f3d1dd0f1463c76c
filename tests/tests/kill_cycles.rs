//! `kill -9` at random moments under load (four meters, fleet on): every
//! committed row reaches the fleet, every hole in the fleet's `seq` list is
//! a declared skip of at most 10 000 numbers, and every start succeeds.
//!
//! CI runs [`DEFAULT_CYCLES`]; the full run is
//! `SLMD_KILL_CYCLES=100 cargo test --release -p slmd-e2e --test kill_cycles -- --nocapture`.

use slmd_e2e::api::{api_address, status};
use slmd_e2e::fleet::{FleetSim, fleet_section};
use slmd_e2e::{
    Daemon, Setup, buffer_file, buffer_rows, open_buffer_rw, poll_until, records_after,
    tcp_devices, tcp_sims,
};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DEFAULT_CYCLES: usize = 12;
const TOKEN: &str = "kill-token";
const GATEWAY: &str = "gw-test";
const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn killed_at_random_moments_no_row_is_lost_and_every_hole_is_declared() {
    let cycles: usize = std::env::var("SLMD_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let mut sims = tcp_sims(4, 900);
    let setup = Setup::new();
    let fleet = FleetSim::start(TOKEN, &[]);
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        fleet_section(&fleet.url(), &[TOKEN], "")
    ));
    let mut rng = fastrand::Rng::with_seed(0x6b11);
    let began = Instant::now();
    let mut starts = 0;
    for cycle in 0..cycles {
        let mut daemon = Daemon::start(&config);
        api_address(&daemon.proc);
        starts += 1;
        // The moment: at start-up, or after a few readings (pushes and
        // commits are under way then).
        let readings = rng.usize(0..=8);
        if readings > 0 {
            let (got, _) = records_after(&daemon.proc, 0, readings, TIMEOUT);
            assert_eq!(
                got.len(),
                readings,
                "cycle {cycle}: readings flow\n{}",
                daemon.proc.transcript()
            );
        }
        daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.proc.wait(Duration::from_secs(10));
    }

    // A last, clean run pushes everything that was committed; the meters
    // stop first, so nothing new is committed after the last push.
    let mut last = Daemon::start(&config);
    let api = api_address(&last.proc);
    starts += 1;
    let (got, _) = records_after(&last.proc, 0, 4, TIMEOUT);
    assert_eq!(got.len(), 4, "{}", last.proc.transcript());
    for sim in &mut sims {
        sim.stop();
    }
    poll_until(TIMEOUT, || {
        let s = status(&api)?;
        let meters_down = s["devices"]
            .as_array()
            .is_some_and(|d| d.iter().all(|d| d["state"] != "connected"));
        (meters_down && s["buffer"]["unsent"] == 0 && s["fleet"]["state"] == "ok").then_some(())
    })
    .unwrap_or_else(|| panic!("the backlog was not pushed\n{}", last.proc.transcript()));
    let stopped = last.proc.terminate(Duration::from_secs(15));
    assert!(stopped.is_some_and(|s| s.success()), "clean stop");
    assert_eq!(starts, cycles + 1, "every start succeeded");

    let rows: BTreeSet<u64> = buffer_rows(&open_buffer_rw(&buffer_file(&setup)))
        .expect("rows")
        .keys()
        .map(|s| *s as u64)
        .collect();
    let fleet_seqs: BTreeSet<u64> = fleet.seqs(GATEWAY).into_iter().collect();
    let missing: Vec<&u64> = rows.difference(&fleet_seqs).collect();
    assert!(
        missing.is_empty(),
        "committed rows the fleet never got: {missing:?}"
    );
    let audit = fleet.audit(GATEWAY);
    let epochs = audit["epochs"].as_array().expect("epochs");
    assert_eq!(epochs.len(), 1, "one numbering epoch: {audit}");
    let epoch = &epochs[0];
    // Numbering starts at 1: the first record, or a skip declared from 1
    // (a run killed before its first reading).
    let skipped = fleet.skipped(GATEWAY);
    let lowest = skipped
        .iter()
        .filter_map(|r| r["from"].as_u64())
        .chain(epoch["min_seq"].as_u64())
        .min();
    assert_eq!(lowest, Some(1), "{audit} {skipped:?}");
    // And every number up to the highest is a record or declared skipped.
    let mut covered: Vec<(u64, u64)> = skipped
        .iter()
        .filter_map(|r| Some((r["from"].as_u64()?, r["to"].as_u64()?)))
        .chain(fleet_seqs.iter().map(|s| (*s, *s)))
        .collect();
    covered.sort_unstable();
    let mut next = 1;
    for (from, to) in covered {
        assert!(
            from <= next,
            "numbers {next}..{from} are neither records nor declared skips"
        );
        next = next.max(to + 1);
    }
    assert_eq!(
        epoch["missing"], 0,
        "every hole is a declared skip: {audit}"
    );
    assert_eq!(epoch["records_in_skips"], 0, "{audit}");
    let stats = fleet.stats();
    assert_eq!(stats["conflicts"], 0, "no seq used twice: {stats}");
    assert_eq!(
        stats["skip_ranges_over_bound"],
        0,
        "no skip over 10 000 numbers: {:?}",
        fleet.skipped(GATEWAY)
    );
    eprintln!(
        "kill cycles: {cycles} kills, {starts} starts, {} records at the fleet, {} rows in the buffer, \
         {} numbers declared skipped in {} ranges, in {:?}",
        fleet_seqs.len(),
        rows.len(),
        epoch["skipped_numbers"],
        epoch["skipped_ranges"],
        began.elapsed()
    );
}
