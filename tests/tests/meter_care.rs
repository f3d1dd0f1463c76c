//! Meter care end to end (SPEC §4): `keep_measuring`, `no_sleep` and
//! `sync_clock` against `slm-sim` meters that power-cycle (SIGUSR1: the
//! link drops, the meter comes back stopped, optionally with sleep mode
//! on) and whose clocks drift.

use serde_json::Value;
use slmd_e2e::api::{api_address, status, wait_status};
use slmd_e2e::fleet::{FleetSim, fleet_section};
use slmd_e2e::{Daemon, Setup, Sim, poll_until, tcp_device};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Device keys every test uses: status queries (and so care) every
/// second, a quick reconnect after the power cut drops the link.
const QUICK: &str = "status_interval = \"1s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"";

/// Writes a config with `[gateway]` lines `gateway` and the tables in
/// `rest`, in `setup`'s folder; returns its path.
fn config(setup: &Setup, gateway: &str, rest: &str) -> std::path::PathBuf {
    let path = setup.path("slmd.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"gw-test\"\nstate_dir = \"{}\"\n{gateway}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [buffer]\ncommit_interval = \"250ms\"\n\n{rest}",
            setup.path("state").display()
        ),
    )
    .expect("write config");
    path
}

/// Waits for the simulator's event `event` from line `from` on that also
/// satisfies `more`; returns its line index and the event.
fn sim_event(sim: &Sim, from: usize, event: &str, more: impl Fn(&Value) -> bool) -> (usize, Value) {
    sim.proc
        .stdout
        .wait_json(from, TIMEOUT, |v| v["event"] == event && more(v))
        .unwrap_or_else(|| panic!("no {event} event\n{}", sim.proc.transcript()))
}

/// Simulator events named `event` so far, from line `from` on.
fn sim_events(sim: &Sim, from: usize, event: &str) -> Vec<Value> {
    sim.proc
        .stdout
        .json()
        .into_iter()
        .skip(from)
        .filter(|v| v["event"] == event)
        .collect()
}

/// Power-cycles `sim`; returns the line index of its `power_cycle` event.
fn power_cycle(sim: &Sim) -> usize {
    let from = sim.proc.stdout.lines().len();
    sim.power_cycle();
    sim_event(sim, from, "power_cycle", |_| true).0
}

#[test]
fn a_power_cycled_meter_measures_again_with_keep_measuring_and_says_so_once() {
    let north = Sim::tcp(&[]);
    let east = Sim::tcp(&["--family", "xl2"]);
    let setup = Setup::new();
    let devices = format!(
        "{}\n{}",
        tcp_device(
            "north",
            north.address.as_deref().expect("address"),
            &format!("keep_measuring = true\n{QUICK}")
        ),
        tcp_device(
            "east",
            east.address.as_deref().expect("address"),
            &format!("keep_measuring = true\n{QUICK}")
        )
        .replace("\"nl43\"", "\"xl2\"")
    );
    let daemon = Daemon::start(&config(&setup, "", &devices));
    daemon.records("north", 2, TIMEOUT);
    daemon.records("east", 2, TIMEOUT);

    for (sim, name) in [(&north, "north"), (&east, "east")] {
        let cut = power_cycle(sim);
        let cut_at = Instant::now();
        sim_event(sim, cut, "measure", |v| v["running"] == true);
        // Back within one status interval of the link being up again
        // (reconnect, identity, one status round).
        assert!(
            cut_at.elapsed() < Duration::from_secs(8),
            "{name} measured again only after {:?}",
            cut_at.elapsed()
        );
    }
    // The readings say so too.
    let printed = daemon.proc.stdout.lines().len();
    for device in ["north", "east"] {
        daemon
            .proc
            .stdout
            .wait_json(printed, TIMEOUT, |v| {
                v["type"] == "record" && v["device"] == device && v["state"] == "measuring"
            })
            .unwrap_or_else(|| {
                panic!("no measuring {device} record\n{}", daemon.proc.transcript())
            });
    }
    let restarted = "started the measurement again (keep_measuring)";
    assert_eq!(daemon.log_lines("meter north was found stopped"), 1);
    assert_eq!(daemon.log_lines("meter east was found stopped"), 1);
    assert_eq!(
        daemon.log_lines(restarted),
        2,
        "{}",
        daemon.proc.transcript()
    );

    // A second power cut is a second episode: one more line.
    let cut = power_cycle(&north);
    sim_event(&north, cut, "measure", |v| v["running"] == true);
    let logged = poll_until(TIMEOUT, || (daemon.log_lines(restarted) == 3).then_some(()));
    assert!(logged.is_some(), "{}", daemon.proc.transcript());
    let api = api_address(&daemon.proc);
    let status = wait_status(&api, TIMEOUT);
    let north_status = &status["devices"][0];
    assert_eq!(
        north_status["care"]["measure_restarts"], 2,
        "{north_status}"
    );
    assert_eq!(north_status["run_state"], "measuring");
}

#[test]
fn without_keep_measuring_a_stopped_meter_shows_stopped_in_status_and_heartbeat() {
    let fleet = FleetSim::start("token1", &[]);
    let north = Sim::tcp(&[]);
    let setup = Setup::new();
    let devices = tcp_device("north", north.address.as_deref().expect("address"), QUICK);
    let fleet_table = fleet_section(&fleet.url(), &["token1"], "heartbeat_interval = \"1s\"");
    let daemon = Daemon::start(&config(&setup, "", &format!("{devices}\n{fleet_table}")));
    daemon.records("north", 2, TIMEOUT);
    let cut = power_cycle(&north);
    let (at, _) = fleet
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| {
            v["event"] == "heartbeat" && v["states"]["north"] == "connected/stopped"
        })
        .unwrap_or_else(|| {
            panic!(
                "no heartbeat with north stopped\n{}",
                fleet.proc.transcript()
            )
        });
    // Three more heartbeats: still stopped, nobody started it.
    let mut from = at + 1;
    for _ in 0..3 {
        from = fleet
            .proc
            .stdout
            .wait_json(from, TIMEOUT, |v| v["event"] == "heartbeat")
            .map(|(i, v)| {
                assert_eq!(v["states"]["north"], "connected/stopped", "{v}");
                i + 1
            })
            .unwrap_or_else(|| panic!("heartbeats stopped\n{}", fleet.proc.transcript()));
    }
    assert!(
        sim_events(&north, cut, "measure").is_empty(),
        "without keep_measuring slmd never starts the meter"
    );
    let api = api_address(&daemon.proc);
    let status = wait_status(&api, TIMEOUT);
    assert_eq!(status["devices"][0]["run_state"], "stopped", "{status}");
    let table = std::process::Command::new(slmd_e2e::bin("slmd"))
        .args(["status", "--config"])
        .arg(setup.path("slmd.toml"))
        .args(["--api", &api])
        .output()
        .expect("slmd status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("  stopped · battery"), "{table}");
    let records = daemon.proc.stdout.json();
    assert!(
        records
            .iter()
            .rev()
            .find(|v| v["type"] == "record" && v["device"] == "north")
            .is_some_and(|r| r["state"] == "stopped"),
        "records carry the run state"
    );
    assert_eq!(
        daemon.log_lines("meter north is not measuring"),
        1,
        "{}",
        daemon.proc.transcript()
    );
}

#[test]
fn no_sleep_keeps_a_power_cycled_meter_awake() {
    let sleepy = ["--power-cycle-asleep", "--sleep-after", "8s"];
    let awake = Sim::tcp(&sleepy);
    let dozing = Sim::tcp(&sleepy);
    let setup = Setup::new();
    let devices = format!(
        "{}\n{}",
        tcp_device(
            "awake",
            awake.address.as_deref().expect("address"),
            &format!("no_sleep = true\nkeep_measuring = true\n{QUICK}")
        ),
        tcp_device(
            "dozing",
            dozing.address.as_deref().expect("address"),
            &format!("keep_measuring = true\nanswer_timeout = \"1s\"\n{QUICK}")
        ),
    );
    let daemon = Daemon::start(&config(&setup, "", &devices));
    daemon.records("awake", 2, TIMEOUT);
    daemon.records("dozing", 2, TIMEOUT);
    let awake_cut = power_cycle(&awake);
    let dozing_cut = power_cycle(&dozing);
    // Both come back with sleep mode on; only `awake` has it turned off.
    sim_event(&dozing, dozing_cut, "asleep", |_| true);
    // `awake` would have slept at the same moment; two readings later it
    // still answers.
    let mut from = daemon.proc.stdout.lines().len();
    for _ in 0..2 {
        from = daemon
            .proc
            .stdout
            .wait_json(from, TIMEOUT, |v| {
                v["type"] == "record" && v["device"] == "awake"
            })
            .unwrap_or_else(|| {
                panic!(
                    "awake stopped reading
{}",
                    daemon.proc.transcript()
                )
            })
            .0
            + 1;
    }
    assert!(
        sim_events(&awake, awake_cut, "asleep").is_empty(),
        "no_sleep turned sleep mode off\n{}",
        awake.proc.transcript()
    );
    assert_eq!(
        daemon.log_lines("meter awake: sleep mode was on"),
        1,
        "{}",
        daemon.proc.transcript()
    );
    // The one without no_sleep went to sleep and is down.
    let api = api_address(&daemon.proc);
    let down = poll_until(TIMEOUT, || {
        status(&api).filter(|s| s["devices"][1]["state"] == "down")
    });
    assert!(down.is_some(), "{}", daemon.proc.transcript());
}

#[test]
fn a_drifting_meter_clock_is_set_at_most_once_a_day_and_only_with_sync_clock() {
    // Both meters run 30 s fast and gain 0.2 s every second; both start
    // stopped, a moment the meter takes a clock setting.
    let drifting = [
        "--stopped",
        "--clock-offset",
        "30",
        "--clock-drift-ppm",
        "200000",
    ];
    let synced = Sim::tcp(&drifting);
    let left = Sim::tcp(&drifting);
    let setup = Setup::new();
    let devices = format!(
        "{}\n{}",
        tcp_device(
            "synced",
            synced.address.as_deref().expect("address"),
            &format!("sync_clock = \"daily\"\nkeep_measuring = true\n{QUICK}")
        ),
        tcp_device(
            "left",
            left.address.as_deref().expect("address"),
            &format!("keep_measuring = true\n{QUICK}")
        ),
    );
    // This machine's kernel may not call its clock synchronised (no NTP in
    // a container): trust it, as a gateway with a GPS clock would.
    let daemon = Daemon::start(&config(&setup, "clock_trusted = true", &devices));
    let (set_at, set) = sim_event(&synced, 0, "clock_set", |_| true);
    let before = set["offset_before_s"].as_f64().expect("offset before");
    let after = set["offset_after_s"].as_f64().expect("offset after");
    assert!(before > 29.0, "{set}");
    assert!(after.abs() < 2.0, "set to the gateway's time: {set}");
    // The clock was set before the measurement started, not in it.
    let (started_at, _) = sim_event(&synced, 0, "measure", |v| v["running"] == true);
    assert!(set_at < started_at, "{}", synced.proc.transcript());
    sim_event(&left, 0, "measure", |v| v["running"] == true);

    // The clock drifts off again; a power cut stops the meter (a moment
    // it would take the clock); it is not set again the same day.
    let api = api_address(&daemon.proc);
    let drifted = poll_until(TIMEOUT, || {
        status(&api).filter(|s| {
            s["devices"][0]["health"]["clock_offset_s"]
                .as_i64()
                .is_some_and(|o| o > 3)
        })
    });
    assert!(drifted.is_some(), "{}", daemon.proc.transcript());
    let cut = power_cycle(&synced);
    sim_event(&synced, cut, "measure", |v| v["running"] == true);
    let pending = poll_until(TIMEOUT, || {
        status(&api).filter(|s| {
            s["devices"][0]["care"]["pending"]
                .as_str()
                .is_some_and(|p| p.contains("at most once a day"))
        })
    })
    .unwrap_or_else(|| panic!("{}", daemon.proc.transcript()));
    assert_eq!(
        sim_events(&synced, 0, "clock_set").len(),
        1,
        "once a day at most"
    );
    let care = &pending["devices"][0]["care"];
    assert_eq!(care["clock_syncs"], 1, "{care}");
    assert!(care["last_clock_sync_at"].as_str().is_some(), "{care}");
    assert!(
        sim_events(&left, 0, "clock_set").is_empty(),
        "without sync_clock the meter clock is never set"
    );
    assert_eq!(
        daemon.log_lines("meter synced: its clock was +"),
        1,
        "{}",
        daemon.proc.transcript()
    );
}
