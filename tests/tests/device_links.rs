//! A meter's bytes become records: the real `slmd` against the real
//! `slm-sim`, over TCP and over a pseudo-terminal, clean and with faults.

use serde_json::Value;
use slmd_e2e::{Daemon, Setup, Sim, assert_records_match_answers, serial_device, tcp_device};
use std::time::Duration;

const READINGS_TIMEOUT: Duration = Duration::from_secs(60);

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

#[test]
fn tcp_readings_carry_the_values_the_meter_sent_over_one_connection() {
    let mut sim = Sim::tcp(&["--seed", "7"]);
    let setup = Setup::new();
    let address = sim.address.clone().expect("tcp address");
    let config = setup.config(&tcp_device("north", &address, ""));
    let mut daemon = Daemon::start(&config);

    let records = daemon.records("north", 5, READINGS_TIMEOUT);
    assert_eq!(records.len(), 5, "{}", daemon.proc.transcript());
    let seqs = seqs(&records);
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increasing: {seqs:?}"
    );
    for r in &records {
        assert_eq!(r["state"], "measuring");
        assert!(
            r["received_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
            "{r}"
        );
        assert!(
            r["device_time"].is_string(),
            "the meter's clock is read: {r}"
        );
        assert!(r["metrics"]["lp"].is_number());
        assert!(r.get("battery").is_none() && r["metrics"].get("battery").is_none());
    }
    daemon.proc.terminate(Duration::from_secs(10));
    assert_records_match_answers(&records, &sim.dod_lines());

    let stats = sim.stop();
    assert_eq!(
        stats["connections_accepted"], 1,
        "exactly one connection: {stats}"
    );
    assert_eq!(stats["connections_refused"], 0, "{stats}");
    assert_eq!(
        stats["busy_answers"], 0,
        "the daemon kept the meter's pacing: {stats}"
    );
}

#[test]
fn pty_readings_carry_the_values_the_meter_sent() {
    let setup = Setup::new();
    let link = setup.path("ttyNL43");
    let mut sim = Sim::pty(&link, &["--seed", "11"]);
    let config = setup.config(&serial_device("south", &link, "baud = 38400"));
    let mut daemon = Daemon::start(&config);

    let records = daemon.records("south", 4, READINGS_TIMEOUT);
    assert_eq!(records.len(), 4, "{}", daemon.proc.transcript());
    daemon.proc.terminate(Duration::from_secs(10));
    assert_records_match_answers(&records, &sim.dod_lines());
    let stats = sim.stop();
    assert_eq!(stats["busy_answers"], 0, "{stats}");
}

#[test]
fn junk_prompts_echo_and_split_answers_never_produce_a_wrong_value() {
    let mut sim = Sim::tcp(&[
        "--seed",
        "3",
        "--junk",
        "0.5",
        "--prompts",
        "--echo",
        "--split",
    ]);
    let setup = Setup::new();
    let address = sim.address.clone().expect("tcp address");
    let config = setup.config(&tcp_device("noisy", &address, ""));
    let mut daemon = Daemon::start(&config);

    let records = daemon.records("noisy", 8, READINGS_TIMEOUT);
    assert_eq!(records.len(), 8, "{}", daemon.proc.transcript());
    daemon.proc.terminate(Duration::from_secs(10));
    assert_records_match_answers(&records, &sim.dod_lines());
    let faults = sim
        .proc
        .stdout
        .json()
        .iter()
        .filter(|v| v["event"] == "fault" && v["kind"] == "junk")
        .count();
    assert!(faults > 0, "the simulator injected junk");
    let stats = sim.stop();
    assert_eq!(
        stats["connections_accepted"], 1,
        "noise is no reason to reconnect: {stats}"
    );
}

/// Stops the daemon and returns every record it printed.
fn stop_and_collect(daemon: &mut Daemon) -> Vec<Value> {
    daemon.proc.terminate(Duration::from_secs(10));
    daemon.printed_records()
}

/// Waits for a `down` state of `device`, then for records after it.
fn down_then_records(daemon: &Daemon, device: &str, n: usize) -> (usize, Vec<Value>) {
    let (down_at, _) = daemon
        .proc
        .stdout
        .wait_json(0, READINGS_TIMEOUT, |v| {
            v["type"] == "device_state" && v["device"] == device && v["state"] == "down"
        })
        .unwrap_or_else(|| panic!("status never went down\n{}", daemon.proc.transcript()));
    let mut after = Vec::new();
    let mut from = down_at + 1;
    while after.len() < n {
        match daemon.proc.stdout.wait_json(from, READINGS_TIMEOUT, |v| {
            v["type"] == "record" && v["device"] == device
        }) {
            Some((i, v)) => {
                after.push(v);
                from = i + 1;
            }
            None => panic!(
                "readings did not resume after down\n{}",
                daemon.proc.transcript()
            ),
        }
    }
    (down_at, after)
}

#[test]
fn a_dropped_tcp_link_goes_down_and_readings_resume() {
    let mut sim = Sim::tcp(&["--seed", "5", "--drop-every", "3s"]);
    let setup = Setup::new();
    let address = sim.address.clone().expect("tcp address");
    let config = setup.config(&tcp_device(
        "flaky",
        &address,
        "reconnect_min = \"200ms\"\nreconnect_max = \"2s\"",
    ));
    let mut daemon = Daemon::start(&config);

    let (_, after) = down_then_records(&daemon, "flaky", 2);
    let all = stop_and_collect(&mut daemon);
    assert!(all.len() >= after.len());
    assert_records_match_answers(&all, &sim.dod_lines());
    let stats = sim.stop();
    assert!(
        stats["connections_accepted"].as_u64() >= Some(2),
        "reconnected: {stats}"
    );
}

#[test]
fn a_silent_meter_goes_down_and_comes_back_by_itself() {
    let mut sim = Sim::tcp(&["--seed", "9", "--silent-after", "2s", "--silent-for", "5s"]);
    let setup = Setup::new();
    let address = sim.address.clone().expect("tcp address");
    let config = setup.config(&tcp_device(
        "quiet",
        &address,
        "answer_timeout = \"1s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"",
    ));
    let mut daemon = Daemon::start(&config);

    let (_, after) = down_then_records(&daemon, "quiet", 2);
    assert!(after.iter().all(|r| r["metrics"]["lp"].is_number()));
    let all = stop_and_collect(&mut daemon);
    assert_records_match_answers(&all, &sim.dod_lines());
    let connected_again = daemon
        .proc
        .stdout
        .json()
        .iter()
        .any(|v| v["type"] == "device_state" && v["state"] == "connected");
    assert!(connected_again);
    sim.stop();
}

#[test]
fn a_vanished_serial_device_is_reopened_at_its_path() {
    let setup = Setup::new();
    let link = setup.path("ttyUSB-by-id");
    let mut sim = Sim::pty(&link, &["--seed", "13", "--drop-every", "3s"]);
    let config = setup.config(&serial_device(
        "usb",
        &link,
        "reconnect_min = \"200ms\"\nreconnect_max = \"2s\"",
    ));
    let mut daemon = Daemon::start(&config);

    down_then_records(&daemon, "usb", 2);
    let all = stop_and_collect(&mut daemon);
    assert_records_match_answers(&all, &sim.dod_lines());
    sim.stop();
}

/// Seconds by which a record's `device_time` differs from its `received_at`.
fn device_minus_received(record: &Value) -> i64 {
    let parse = |key: &str| {
        record[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("{key} is RFC 3339: {record}"))
    };
    (parse("device_time") - parse("received_at")).num_seconds()
}

#[test]
fn device_time_follows_the_meter_clock_and_a_wrong_clock_is_flagged() {
    // One meter's clock is an hour behind UTC; the other is set to UTC+1
    // local time, which the config declares.
    let mut behind = Sim::tcp(&["--seed", "21", "--clock-offset", "-3600"]);
    let mut local = Sim::tcp(&["--seed", "22", "--clock-offset", "3600"]);
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}{}",
        tcp_device("behind", behind.address.as_deref().expect("addr"), ""),
        tcp_device(
            "local",
            local.address.as_deref().expect("addr"),
            "utc_offset = \"+01:00\""
        )
    ));
    let mut daemon = Daemon::start(&config);

    for r in daemon.records("behind", 2, READINGS_TIMEOUT) {
        let skew = device_minus_received(&r);
        assert!((-3603..=-3597).contains(&skew), "an hour behind: {r}");
        assert!(
            r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "clock_unsynced")),
            "{r}"
        );
    }
    for r in daemon.records("local", 2, READINGS_TIMEOUT) {
        let skew = device_minus_received(&r);
        assert!((-3..=3).contains(&skew), "local time converted to UTC: {r}");
        assert!(r["flags"].as_array().is_some_and(|f| f.is_empty()), "{r}");
    }
    stop_and_collect(&mut daemon);
    behind.stop();
    local.stop();
}
