//! The fleet heartbeat end to end (SPEC §7): the real `slmd` telling the
//! real `fleet-sim` it is alive and what its `slm-sim` meters are doing,
//! through outages, token rotations and a dead gateway.

use serde_json::Value;
use slmd_e2e::api::{api_address, wait_status};
use slmd_e2e::fleet::{FleetSim, fingerprint, fleet_section};
use slmd_e2e::{Daemon, Setup, Sim, poll_until, tcp_device};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY: &str = "gw-test";

/// A daemon reading `devices` and pushing to `fleet` with `tokens`, a
/// heartbeat every second; `extra` lines go into `[fleet]`.
fn beating_daemon(
    fleet: &FleetSim,
    devices: &str,
    tokens: &[&str],
    extra: &str,
) -> (Setup, Daemon) {
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{devices}\n{}",
        fleet_section(
            &fleet.url(),
            tokens,
            &format!("heartbeat_interval = \"1s\"\n{extra}")
        )
    ));
    let daemon = Daemon::start(&config);
    (setup, daemon)
}

/// Waits for the fleet to print a heartbeat from line `from` on in which
/// `meter` is `state` (`"connected/measuring"`, or a prefix such as
/// `"down"`); returns the line index and the event.
fn wait_heartbeat(fleet: &FleetSim, from: usize, meter: &str, state: &str) -> (usize, Value) {
    fleet
        .proc
        .stdout
        .wait_json(from, TIMEOUT, |v| {
            v["event"] == "heartbeat"
                && v["gateway"] == GATEWAY
                && v["states"][meter]
                    .as_str()
                    .is_some_and(|s| s.starts_with(state))
        })
        .unwrap_or_else(|| {
            panic!(
                "no heartbeat with {meter} {state}\n{}",
                fleet.proc.transcript()
            )
        })
}

/// Seconds between two RFC 3339 times.
fn seconds_between(from: &Value, to: &Value) -> f64 {
    let parse = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(
            v.as_str().unwrap_or_else(|| panic!("not a time: {v}")),
        )
        .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    (parse(to) - parse(from)).num_milliseconds() as f64 / 1000.0
}

#[test]
fn heartbeats_come_at_the_set_interval_and_say_what_each_meter_does() {
    let fleet = FleetSim::start("token1", &[]);
    let sim = Sim::tcp(&["--seed", "7"]);
    let devices = tcp_device(
        "north",
        sim.address.as_deref().expect("address"),
        "status_interval = \"1s\"",
    );
    let (_setup, daemon) = beating_daemon(&fleet, &devices, &["token1"], "");
    let (at, _) = wait_heartbeat(&fleet, 0, "north", "connected/measuring");
    // Five more at the steady pace.
    let mut from = at + 1;
    for _ in 0..5 {
        from = wait_heartbeat(&fleet, from, "north", "connected").0 + 1;
    }
    let beats = fleet.heartbeats(GATEWAY);
    let steady: Vec<&Value> = beats.iter().rev().take(5).collect();
    for pair in steady.windows(2) {
        let gap = seconds_between(&pair[1]["at"], &pair[0]["at"]);
        assert!(
            (0.5..=2.5).contains(&gap),
            "heartbeats {gap:.2} s apart with heartbeat_interval = 1s\n{beats:#?}"
        );
    }
    let body = &beats.last().expect("a heartbeat")["body"];
    assert_eq!(body["gateway"], GATEWAY);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["interval_s"], 1.0);
    assert!(body["uptime_s"].as_u64().is_some(), "{body}");
    let meter = &body["meters"][0];
    assert_eq!(meter["id"], "north");
    assert_eq!(meter["protocol"], "nl43");
    assert_eq!(meter["state"], "connected");
    assert_eq!(meter["run_state"], "measuring");
    assert_eq!(meter["identity"]["model"], "NL-43", "{meter}");
    assert!(meter["identity"]["serial"].as_str().is_some(), "{meter}");
    assert!(meter["last_seq"].as_u64().is_some_and(|s| s > 0), "{meter}");
    let health = &meter["health"];
    assert_eq!(health["battery"], "Full", "{meter}");
    assert!(health["sd_free_percent"].as_u64().is_some(), "{meter}");
    assert!(
        health["clock_offset_s"]
            .as_i64()
            .is_some_and(|o| o.abs() <= 2),
        "{meter}"
    );
    assert!(body["buffer"]["records"].as_u64().is_some(), "{body}");
    assert!(body["buffer"]["unsent"].as_u64().is_some(), "{body}");
    // Health never rides along in records.
    for record in fleet.received(GATEWAY) {
        let text = record.to_string();
        assert!(
            !text.contains("battery") && !text.contains("sd_free"),
            "{text}"
        );
    }
    drop(daemon);
}

#[test]
fn a_silenced_meter_is_down_in_the_next_heartbeat() {
    let fleet = FleetSim::start("token1", &[]);
    let sim = Sim::tcp(&["--silent-after", "4s", "--silent-for", "120s"]);
    let devices = tcp_device(
        "north",
        sim.address.as_deref().expect("address"),
        "answer_timeout = \"500ms\"",
    );
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{devices}\n{}",
        fleet_section(&fleet.url(), &["token1"], "heartbeat_interval = \"10s\"")
    ));
    let _daemon = Daemon::start(&config);
    let (at, _) = wait_heartbeat(&fleet, 0, "north", "connected");
    wait_heartbeat(&fleet, at + 1, "north", "down");
    let beats = fleet.heartbeats(GATEWAY);
    let down = beats
        .iter()
        .find(|b| b["body"]["meters"][0]["state"] == "down")
        .expect("a down heartbeat");
    // It went within one interval (10 s) of the meter going down: at
    // once, as the change happened.
    let meter = &down["body"]["meters"][0];
    let after = seconds_between(&meter["since"], &down["at"]);
    assert!(
        after < 10.0,
        "the heartbeat saying down came {after:.1} s after the meter went down\n{down:#}"
    );
    assert!(
        meter["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer")),
        "{meter}"
    );
}

#[test]
fn with_the_fleet_down_heartbeats_resume_and_records_are_not_delayed_by_them() {
    let fleet = FleetSim::start("token1", &[]);
    let sim = Sim::tcp(&[]);
    let devices = tcp_device("north", sim.address.as_deref().expect("address"), "");
    let (_setup, daemon) = beating_daemon(&fleet, &devices, &["token1"], "");
    wait_heartbeat(&fleet, 0, "north", "connected");

    // Heartbeats hang and then fail; records keep flowing meanwhile.
    fleet.fault_on("heartbeat", serde_json::json!({"kind": "hang", "count": 2}));
    fleet.fault_on(
        "heartbeat",
        serde_json::json!({"kind": "status", "status": 503, "count": 1000}),
    );
    let seen = fleet.seqs(GATEWAY).len();
    let more = poll_until(TIMEOUT, || {
        let n = fleet.seqs(GATEWAY).len();
        (n >= seen + 8).then_some(n)
    });
    assert!(
        more.is_some(),
        "records stopped while heartbeats hung or failed\n{}",
        daemon.proc.transcript()
    );
    let refused = poll_until(TIMEOUT, || {
        let n = fleet
            .requests()
            .iter()
            .filter(|r| r["route"] == "heartbeat" && r["status"] == 503)
            .count();
        (n >= 2).then_some(n)
    });
    assert!(refused.is_some(), "the heartbeat was not retried");

    // The whole fleet goes down, then comes back: heartbeats resume.
    fleet.clear_faults();
    fleet.outage();
    let during = fleet.heartbeats(GATEWAY).len();
    let outage_line = fleet.proc.stdout.lines().len();
    fleet
        .proc
        .stdout
        .wait_json(outage_line, TIMEOUT, |v| v["event"] == "heartbeat_refused")
        .unwrap_or_else(|| panic!("no heartbeat tried during the outage"));
    fleet.clear_faults();
    let back = fleet.proc.stdout.lines().len();
    wait_heartbeat(&fleet, back, "north", "connected");
    assert!(fleet.heartbeats(GATEWAY).len() > during);
    // Every record arrived, in order.
    let audit = fleet.audit(GATEWAY);
    assert_eq!(audit["epochs"][0]["missing"], 0, "{audit}");
    assert_eq!(fleet.stats()["out_of_order"], 0);
    let log = daemon.proc.stderr.lines().join("\n");
    assert!(
        log.matches("fleet heartbeat failed").count() <= 2,
        "a failing heartbeat is logged when it starts, not per try\n{log}"
    );
}

#[test]
fn a_token_rotation_costs_no_heartbeat() {
    let fleet = FleetSim::start("token1", &[]);
    let sim = Sim::tcp(&[]);
    let devices = tcp_device("north", sim.address.as_deref().expect("address"), "");
    // token2 is staged before the fleet knows it: the daemon fails over to
    // token1 within each heartbeat, and retries token2 every second.
    let (_setup, daemon) = beating_daemon(
        &fleet,
        &devices,
        &["token2", "token1"],
        "token_retry = \"1s\"",
    );
    let (at, _) = wait_heartbeat(&fleet, 0, "north", "connected");
    let at = wait_heartbeat(&fleet, at + 1, "north", "connected").0;
    fleet.rotate("token2");
    let token2 = fingerprint("token2");
    let (at, _) = fleet
        .proc
        .stdout
        .wait_json(at, TIMEOUT, |v| {
            v["event"] == "heartbeat" && v["token"] == token2.as_str()
        })
        .unwrap_or_else(|| panic!("never a heartbeat with token2\n{}", fleet.proc.transcript()));
    fleet.admin("POST", "/admin/expire-previous", Value::Null);
    let mut from = at + 1;
    for _ in 0..3 {
        from = wait_heartbeat(&fleet, from, "north", "connected").0 + 1;
    }
    let beats = fleet.heartbeats(GATEWAY);
    for pair in beats.windows(2) {
        let gap = seconds_between(&pair[0]["at"], &pair[1]["at"]);
        assert!(
            gap <= 2.5,
            "a {gap:.1} s hole between heartbeats across the rotation\n{beats:#?}"
        );
    }
    let rejected = fleet
        .requests()
        .iter()
        .filter(|r| r["route"] == "heartbeat" && r["status"] == 401)
        .count();
    assert!(
        rejected >= 1,
        "the staged token was tried (and refused) before the rotation"
    );
    let log = daemon.proc.stderr.lines().join("\n");
    assert!(
        !log.contains("fleet heartbeat failed"),
        "a 401 failed over within the heartbeat, costing none\n{log}"
    );
    let api = api_address(&daemon.proc);
    let status = wait_status(&api, TIMEOUT);
    assert_eq!(status["fleet"]["heartbeat"]["failures"], 0, "{status}");
}

#[test]
fn the_fleet_marks_a_dead_gateway_offline_and_online_when_it_returns() {
    let fleet = FleetSim::start("token1", &[]);
    let sim = Sim::tcp(&[]);
    let devices = tcp_device("north", sim.address.as_deref().expect("address"), "");
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{devices}\n{}",
        fleet_section(&fleet.url(), &["token1"], "heartbeat_interval = \"1s\"")
    ));
    let mut daemon = Daemon::start(&config);
    wait_heartbeat(&fleet, 0, "north", "connected");
    daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    daemon.proc.wait(TIMEOUT);
    let (at, offline) = fleet
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| v["event"] == "gateway_offline")
        .unwrap_or_else(|| panic!("never offline\n{}", fleet.proc.transcript()));
    assert_eq!(offline["gateway"], GATEWAY);
    assert!(
        killed.elapsed() >= Duration::from_secs(2),
        "offline after 3 missed intervals, not sooner"
    );
    assert_eq!(fleet.liveness_of(GATEWAY).expect("known")["online"], false);
    let _again = Daemon::start(&config);
    fleet
        .proc
        .stdout
        .wait_json(at, TIMEOUT, |v| v["event"] == "gateway_online")
        .unwrap_or_else(|| panic!("never online again\n{}", fleet.proc.transcript()));
    assert_eq!(fleet.liveness_of(GATEWAY).expect("known")["online"], true);
}
