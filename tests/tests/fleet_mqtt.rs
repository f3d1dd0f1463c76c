//! The fleet over MQTT end to end: the real `slmd` publishing its buffer
//! to real Mosquitto brokers (`[fleet] transport = "mqtt"`), fed by real
//! `slm-sim` meters; the fleet side is a persistent QoS 1 subscriber
//! (`mosquitto_sub -c -q 1`) that de-duplicates by `seq`.

use serde_json::Value;
use slmd_e2e::api::{Broker, api_address, status};
use slmd_e2e::fleet::{FleetSim, fingerprint, fleet_section};
use slmd_e2e::{
    Daemon, Proc, Setup, buffer_file, open_buffer_ro, poll_until, stored_seqs_up_to, tcp_devices,
    tcp_sims,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY: &str = "gw-test";

/// The fleet's side: a persistent session on one broker, subscribed at
/// QoS 1 to every gateway's records; each line is one payload, in hex.
struct FleetSubscriber {
    proc: Proc,
}

/// One `records` publish as the fleet read it.
#[derive(Debug, Clone)]
struct Batch {
    gateway: String,
    seqs: Vec<u64>,
}

impl FleetSubscriber {
    fn start(broker: &Broker, id: &str, settings: &[&str]) -> FleetSubscriber {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-i", id, "-c", "-q", "1", "-t", "slmd/+/records"])
            .args(["-F", "%t %x"])
            .args(settings);
        FleetSubscriber {
            proc: Proc::spawn(cmd),
        }
    }

    /// Every batch received so far, in arrival order (gzipped or not).
    fn batches(&self) -> Vec<Batch> {
        self.proc
            .stdout
            .lines()
            .iter()
            .filter_map(|line| decode(line))
            .collect()
    }

    /// Every seq of `gateway` received, in arrival order, repeats included.
    fn seqs(&self) -> Vec<u64> {
        self.batches()
            .into_iter()
            .filter(|b| b.gateway == GATEWAY)
            .flat_map(|b| b.seqs)
            .collect()
    }

    /// Waits until at least `n` distinct seqs of the gateway arrived.
    fn wait_distinct(&self, n: usize, context: &dyn Fn() -> String) {
        let got = poll_until(TIMEOUT, || {
            let distinct: BTreeSet<u64> = self.seqs().into_iter().collect();
            (distinct.len() >= n).then_some(())
        });
        assert!(
            got.is_some(),
            "the fleet did not get {n} records: {:?}\n{}",
            self.seqs(),
            context()
        );
    }
}

/// `topic hex` → the batch in it (gunzipped when it starts with 1f 8b).
fn decode(line: &str) -> Option<Batch> {
    let (_topic, hex) = line.split_once(' ')?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let json = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .ok()?;
        out
    } else {
        bytes
    };
    let body: Value = serde_json::from_slice(&json).ok()?;
    Some(Batch {
        gateway: body["gateway"].as_str()?.to_owned(),
        seqs: body["records"]
            .as_array()?
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect(),
    })
}

/// `[fleet]` for the MQTT uplink to `urls` with `tokens`; `extra` lines
/// added.
fn mqtt_fleet(urls: &[String], tokens: &[&str], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    fleet_section(
        "http://127.0.0.1:9",
        tokens,
        &format!(
            "transport = \"mqtt\"\nurls = [{}]\ntoken_retry = \"1s\"\n{extra}",
            urls.join(", ")
        ),
    )
}

/// The records stored in the buffer file up to the MQTT uplink's
/// position, and that position.
fn delivered_in_file(setup: &Setup) -> (u64, Vec<u64>) {
    let conn = open_buffer_ro(&buffer_file(setup));
    let position: i64 = conn
        .query_row(
            "SELECT delivered FROM record_deliveries WHERE consumer = 'fleet-mqtt'",
            [],
            |r| r.get(0),
        )
        .expect("the MQTT uplink's position is in the file");
    let stored = stored_seqs_up_to(&conn, position as u64);
    (position as u64, stored)
}

/// Asserts the fleet got every record the file holds up to the uplink's
/// position and up to the highest seq the fleet got: nothing lost, no
/// hole (numbers an unclean stop skipped were never records).
fn assert_complete(got: &BTreeSet<u64>, setup: &Setup, context: &str) {
    let (position, stored) = delivered_in_file(setup);
    let max = got.last().copied().unwrap_or(0);
    let conn = open_buffer_ro(&buffer_file(setup));
    let below_max = stored_seqs_up_to(&conn, max.max(position));
    let missing: Vec<u64> = below_max
        .iter()
        .chain(&stored)
        .filter(|s| !got.contains(s))
        .copied()
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    assert!(
        missing.is_empty(),
        "{} records up to the position {position} (or the highest the fleet got, {max}) never reached the fleet, first {:?}\n{context}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(position > 0, "something was delivered\n{context}");
}

/// `mosquitto_pub` one message.
fn publish(broker: &Broker, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", topic, "-m", message])
        .status()
        .expect("mosquitto_pub runs");
    assert!(status.success(), "mosquitto_pub failed");
}

/// The daemon's fleet status.
fn fleet_status(daemon: &Daemon) -> Value {
    status(&api_address(&daemon.proc)).map_or(Value::Null, |s| s["fleet"].clone())
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub, mosquitto_pub; .ci/run installs them"]
fn records_reach_the_fleet_through_the_second_broker_when_the_first_is_killed() {
    slmd_e2e::needs::require_tools(&["mosquitto", "mosquitto_sub", "mosquitto_pub"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = Broker::start(dir.path(), 0);
    // The second node bridges everything under slmd/ both ways with the
    // first, as a cluster's nodes share their traffic.
    let b = Broker::start_with(
        dir.path(),
        0,
        &format!(
            "allow_anonymous true\nconnection node-a\naddress 127.0.0.1:{}\ntopic slmd/# both 1\n\
             cleansession false\nrestart_timeout 1\nnotifications false\n",
            a.port
        ),
    );
    let fleet = FleetSubscriber::start(&b, "fleet-on-b", &[]);
    // The bridge is up once a publish on the first node reaches the
    // subscriber on the second.
    let bridged = poll_until(TIMEOUT, || {
        publish(
            &a,
            "slmd/probe/records",
            r#"{"gateway":"probe","records":[]}"#,
        );
        fleet
            .proc
            .stdout
            .wait_from(0, Duration::from_millis(300), |l| {
                decode(l).is_some_and(|b| b.gateway == "probe")
            })
    });
    assert!(
        bridged.is_some(),
        "the bridge did not come up\n{}",
        b.proc.transcript()
    );

    let sims = tcp_sims(2, 910);
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        mqtt_fleet(&[a.url(), b.url()], &["token1"], "batch_max = 20")
    ));
    let mut daemon = Daemon::start(&config);
    let context = || daemon.proc.transcript();
    fleet.wait_distinct(30, &context);
    assert_eq!(
        fleet_status(&daemon)["broker"],
        a.url(),
        "the first broker is used first"
    );

    // The first node dies mid-stream.
    a.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let moved = poll_until(TIMEOUT, || {
        (fleet_status(&daemon)["broker"] == b.url().as_str()).then_some(())
    });
    assert!(
        moved.is_some(),
        "no failover to the second broker\n{}",
        context()
    );
    let before = fleet.seqs().into_iter().collect::<BTreeSet<_>>().len();
    fleet.wait_distinct(before + 30, &context);
    daemon.proc.terminate(TIMEOUT);

    let transcript = daemon.proc.transcript();
    assert_complete(&fleet.seqs().into_iter().collect(), &setup, &transcript);
    assert!(
        transcript.contains(&format!("connected to the fleet's broker {}", b.url())),
        "the journal says where it went\n{transcript}"
    );
    assert!(
        daemon.printed("auth_failed").is_empty(),
        "no token trouble\n{transcript}"
    );
    let _ = a.proc.terminate(Duration::from_secs(5));
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub, mosquitto_passwd; .ci/run installs them"]
fn a_token_rotation_over_mqtt_loses_no_tick_and_no_record() {
    slmd_e2e::needs::require_tools(&["mosquitto", "mosquitto_sub", "mosquitto_passwd"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = dir.path().join("passwords");
    let set_password = |token: &str| {
        // A fresh file holding only `token` for the gateway's user.
        let _ = std::fs::remove_file(&passwords);
        let status = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwords)
            .args([GATEWAY, token])
            .status()
            .expect("mosquitto_passwd runs");
        assert!(status.success(), "mosquitto_passwd failed");
    };
    set_password("token1");
    let broker = Broker::start_with(
        dir.path(),
        0,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    );
    // Anonymous access is off: the fleet's subscriber logs in as the
    // gateway's user.
    let sims = tcp_sims(2, 930);
    let setup = Setup::new();
    let devices = tcp_devices(&sims);
    let write_config = |tokens: &[&str]| {
        setup.config(&format!(
            "{devices}\n{}",
            mqtt_fleet(&[broker.url()], tokens, "gzip = false")
        ))
    };
    let config = write_config(&["token1"]);
    let mut daemon = Daemon::start(&config);
    let fleet = FleetSubscriber::start(&broker, "fleet-rotation", &["-u", GATEWAY, "-P", "token1"]);
    let pushes = |token: &str| {
        let fp = fingerprint(token);
        daemon
            .printed("push")
            .into_iter()
            .filter(|p| p["token"] == fp.as_str())
            .count()
    };
    let wait_pushes = |token: &str, n: usize| {
        let start = pushes(token);
        let got = poll_until(TIMEOUT, || (pushes(token) >= start + n).then_some(()));
        assert!(
            got.is_some(),
            "{n} more pushes with {token} did not come\n{}",
            daemon.proc.transcript()
        );
    };
    wait_pushes("token1", 3);

    // The installer stages the new token first, before the fleet knows it.
    write_config(&["token2", "token1"]);
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let rejected = poll_until(TIMEOUT, || {
        (!daemon.printed("token_rejected").is_empty()).then_some(())
    });
    assert!(
        rejected.is_some(),
        "token2 was not tried\n{}",
        daemon.proc.transcript()
    );
    wait_pushes("token1", 3);

    // The fleet rotates: the broker's password file now holds token2 and
    // is reloaded (Mosquitto drops the connections it no longer accepts).
    let staged_refusals = daemon.printed("token_rejected").len();
    set_password("token2");
    broker.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_pushes("token2", 3);
    let status = fleet_status(&daemon);
    assert_eq!(
        status["token_slot"], 1,
        "back on the preferred token: {status}"
    );
    daemon.proc.terminate(TIMEOUT);

    let transcript = daemon.proc.transcript();
    assert!(
        daemon.printed("auth_failed").is_empty(),
        "a rotation in this order never pauses publishing\n{transcript}"
    );
    // Before the broker knew token2 only token2 was refused; after, only
    // the retired token1 (when the dropped connection came back).
    let refusals = daemon.printed("token_rejected");
    for (i, refused) in refusals.iter().enumerate() {
        let expected = if i < staged_refusals {
            "token2"
        } else {
            "token1"
        };
        assert_eq!(
            refused["token"],
            fingerprint(expected).as_str(),
            "refusal {i}: {refused}\n{transcript}"
        );
    }
    // No lost tick: every failed publish was retried within one interval
    // and the backoff's first step (the fleet section sets 200 ms and 50 ms).
    for failed in daemon.printed("push_failed") {
        assert!(
            failed["retry_in_ms"].as_u64().unwrap_or(u64::MAX) <= 500,
            "a failed publish waited long: {failed}\n{transcript}"
        );
    }
    // The subscriber's login may have gone with the rotation; its
    // persistent session kept what came meanwhile: the same session, back
    // with the new token, gets the rest.
    let first_part: BTreeSet<u64> = fleet.seqs().into_iter().collect();
    drop(fleet);
    let rest = FleetSubscriber::start(&broker, "fleet-rotation", &["-u", GATEWAY, "-P", "token2"]);
    let (position, _) = delivered_in_file(&setup);
    let all = poll_until(TIMEOUT, || {
        let all: BTreeSet<u64> = first_part.iter().copied().chain(rest.seqs()).collect();
        (all.last().copied().unwrap_or(0) >= position).then_some(all)
    })
    .unwrap_or_else(|| {
        panic!(
            "the fleet did not get up to {position}
{transcript}"
        )
    });
    assert_complete(&all, &setup, &transcript);
    for secret in ["token1", "token2"] {
        assert!(
            !transcript.contains(secret),
            "the token {secret} appears in the daemon's output\n{transcript}"
        );
    }
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn kill_9_mid_batch_loses_nothing_and_resends_at_most_the_batch_in_flight() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Broker::start(dir.path(), 0);
    let fleet = FleetSubscriber::start(&broker, "fleet-kill", &[]);
    let sims = tcp_sims(3, 950);
    let setup = Setup::new();
    const BATCH: usize = 15;
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        mqtt_fleet(
            &[broker.url()],
            &["token1"],
            &format!("batch_max = {BATCH}\ninterval = \"100ms\"")
        )
    ));
    let mut rng = fastrand::Rng::with_seed(0x6d71_7474);
    let rounds = 8;
    for round in 0..rounds {
        let daemon = Daemon::start(&config);
        let wanted = 1 + rng.usize(0..3);
        let pushed = daemon
            .proc
            .stdout
            .wait_count(wanted, TIMEOUT, |v| v["type"] == "push");
        assert_eq!(
            pushed.len(),
            wanted,
            "round {round}: no push\n{}",
            daemon.proc.transcript()
        );
        let extra = rng.usize(0..4);
        if extra > 0 {
            daemon
                .proc
                .stdout
                .wait_count(extra, TIMEOUT, |v| v["type"] == "record");
        }
        daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
        assert!(
            daemon.proc.stdout.wait_closed(TIMEOUT),
            "round {round}: still running after SIGKILL"
        );
    }
    let mut daemon = Daemon::start(&config);
    daemon
        .proc
        .stdout
        .wait_count(3, TIMEOUT, |v| v["type"] == "push");
    daemon.proc.terminate(TIMEOUT);
    let (position, _) = delivered_in_file(&setup);
    let arrived = poll_until(TIMEOUT, || {
        (fleet.seqs().into_iter().max().unwrap_or(0) >= position).then_some(())
    });
    assert!(arrived.is_some(), "the fleet did not get up to {position}");

    let transcript = daemon.proc.transcript();
    assert_complete(&fleet.seqs().into_iter().collect(), &setup, &transcript);
    // Each seq arrived at most twice, and the repeats are at most one
    // batch per kill: runs of consecutive seqs no longer than a batch.
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for seq in fleet.seqs() {
        *times.entry(seq).or_default() += 1;
    }
    let repeated: Vec<u64> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        times.values().all(|n| *n <= 2),
        "a record arrived more than twice: {times:?}"
    );
    let mut runs: Vec<Vec<u64>> = Vec::new();
    for seq in &repeated {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|last| last + 1 == *seq) => run.push(*seq),
            _ => runs.push(vec![*seq]),
        }
    }
    assert!(
        runs.len() <= rounds && runs.iter().all(|r| r.len() <= BATCH),
        "repeats beyond one batch per kill ({rounds} kills, batches of {BATCH}): {runs:?}"
    );
}

/// A broker password file with `users` (name, password), replacing it.
fn password_file(path: &std::path::Path, users: &[(&str, &str)]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, "").expect("create password file");
    for (user, password) in users {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(path)
            .args([user, password])
            .status()
            .expect("mosquitto_passwd runs");
        assert!(status.success(), "mosquitto_passwd failed");
    }
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub, mosquitto_passwd; .ci/run installs them"]
fn both_uplinks_run_at_once_and_one_refused_holds_back_only_its_own_records() {
    slmd_e2e::needs::require_tools(&["mosquitto", "mosquitto_sub", "mosquitto_passwd"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let passwords = dir.path().join("passwords");
    let gateway_ok = [("fleet", "fleet-pw"), (GATEWAY, "token1")];
    password_file(&passwords, &gateway_ok);
    let broker = Broker::start_with(
        dir.path(),
        0,
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    );
    let mqtt_fleet_side =
        FleetSubscriber::start(&broker, "fleet-both", &["-u", "fleet", "-P", "fleet-pw"]);
    let http_fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(2, 970);
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        fleet_section(
            &http_fleet.url(),
            &["token1"],
            &format!("transport = \"both\"\nurls = [{:?}]", broker.url())
        )
    ));
    let mut daemon = Daemon::start(&config);
    let context = || daemon.proc.transcript();
    mqtt_fleet_side.wait_distinct(10, &context);
    let got = poll_until(TIMEOUT, || {
        (http_fleet.seqs(GATEWAY).len() >= 10).then_some(())
    });
    assert!(got.is_some(), "the HTTP fleet got nothing\n{}", context());

    // The broker stops taking the gateway: the MQTT uplink waits, the HTTP
    // push goes on, and the records count as unsent until both have them.
    password_file(&passwords, &[("fleet", "fleet-pw")]);
    broker.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = poll_until(TIMEOUT, || {
        (fleet_status(&daemon)["mqtt"]["state"] == "auth_failed").then_some(())
    });
    assert!(
        refused.is_some(),
        "the MQTT uplink was not refused\n{}",
        context()
    );
    let http_before = http_fleet.seqs(GATEWAY).len();
    let held_back = poll_until(TIMEOUT, || {
        let status = status(&api_address(&daemon.proc))?;
        let fleet = &status["fleet"];
        (http_fleet.seqs(GATEWAY).len() >= http_before + 10
            && fleet["mqtt"]["backlog"].as_u64()? >= 10
            && status["buffer"]["unsent"].as_u64()? >= 10
            && fleet["backlog"].as_u64()? < 5)
            .then_some(status)
    });
    assert!(
        held_back.is_some(),
        "HTTP did not go on while MQTT was held back: {}\n{}",
        status(&api_address(&daemon.proc)).unwrap_or_default(),
        context()
    );

    // Taken again: the MQTT uplink catches up from where it stopped.
    password_file(&passwords, &gateway_ok);
    broker.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let caught_up = poll_until(TIMEOUT, || {
        let status = status(&api_address(&daemon.proc))?;
        (status["fleet"]["mqtt"]["state"] == "ok" && status["fleet"]["mqtt"]["backlog"] == 0)
            .then_some(())
    });
    assert!(
        caught_up.is_some(),
        "the MQTT uplink did not catch up\n{}",
        context()
    );
    daemon.proc.terminate(TIMEOUT);

    let transcript = daemon.proc.transcript();
    // Each fleet has every record its uplink says it delivered.
    let (position, _) = delivered_in_file(&setup);
    let all = poll_until(TIMEOUT, || {
        let got: BTreeSet<u64> = mqtt_fleet_side.seqs().into_iter().collect();
        (got.last().copied().unwrap_or(0) >= position).then_some(got)
    })
    .unwrap_or_else(|| panic!("the MQTT fleet did not get up to {position}\n{transcript}"));
    assert_complete(&all, &setup, &transcript);
    let at_http: BTreeSet<u64> = http_fleet.seqs(GATEWAY).into_iter().collect();
    let http_position: i64 = open_buffer_ro(&buffer_file(&setup))
        .query_row(
            "SELECT delivered FROM record_deliveries WHERE consumer = 'fleet-http'",
            [],
            |r| r.get(0),
        )
        .expect("the HTTP uplink's position is in the file");
    assert!(
        (1..=http_position as u64).all(|s| at_http.contains(&s)),
        "the HTTP fleet lacks records up to {http_position}\n{transcript}"
    );
}
