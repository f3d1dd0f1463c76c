//! Fleet push end to end: the real `slmd` pushing to the real `fleet-sim`
//! over loopback, fed by real `slm-sim` meters (SPEC §7).
//!
//! Each test reads three views and checks they agree: what the daemon
//! printed (`--print jsonl`: records and push events), what `fleet-sim`
//! stored and logged per request, and, where it matters, the buffer file.

use serde_json::{Value, json};
use slmd_e2e::fleet::{FleetSim, fingerprint, fleet_section};
use slmd_e2e::{
    Daemon, Setup, Sim, buffer_file, open_buffer_ro, poll_until, stored_seqs_up_to, tcp_devices,
    tcp_sims,
};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY: &str = "gw-test";

/// A daemon reading `sims` and pushing to `fleet` with `tokens` (preferred
/// first); `extra` lines go into `[fleet]`.
fn pushing_daemon(fleet: &FleetSim, sims: &[Sim], tokens: &[&str], extra: &str) -> (Setup, Daemon) {
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(sims),
        fleet_section(&fleet.url(), tokens, extra)
    ));
    let daemon = Daemon::start(&config);
    (setup, daemon)
}

/// Waits until `n` more push events than `from` were printed with `token`'s
/// fingerprint; returns the index after the last one.
fn wait_pushes(daemon: &Daemon, from: usize, n: usize, token: &str) -> usize {
    let fp = fingerprint(token);
    let mut at = from;
    for i in 0..n {
        match daemon.proc.stdout.wait_json(at, TIMEOUT, |v| {
            v["type"] == "push" && v["token"] == fp.as_str()
        }) {
            Some((index, _)) => at = index + 1,
            None => panic!(
                "push {} of {n} with token {fp} did not come\n{}",
                i + 1,
                daemon.proc.transcript()
            ),
        }
    }
    at
}

/// The highest seq the fleet accepted so far, by the daemon's push events.
fn last_pushed(daemon: &Daemon) -> u64 {
    daemon
        .printed("push")
        .iter()
        .filter_map(|p| p["last_seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Asserts that the fleet holds exactly the records 1..=last, first
/// arrivals in seq order.
fn assert_no_gap(fleet: &FleetSim, last: u64, context: &str) {
    let seqs = fleet.seqs(GATEWAY);
    let expected: Vec<u64> = (1..=last).collect();
    let got: Vec<u64> = seqs.iter().copied().filter(|s| *s <= last).collect();
    if got != expected {
        let have: BTreeSet<u64> = seqs.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|s| !have.contains(s))
            .copied()
            .collect();
        panic!(
            "fleet records are not exactly 1..={last} in order: missing {missing:?}, arrival order {seqs:?}\n{context}"
        );
    }
    assert_eq!(fleet.stats()["out_of_order"], 0, "{context}");
}

/// Daemon requests in fleet-sim's log (probes by the test carry no records).
fn daemon_requests(fleet: &FleetSim) -> Vec<Value> {
    fleet
        .requests()
        .into_iter()
        .filter(|r| r["records"].as_u64().unwrap_or(0) > 0)
        .collect()
}

#[test]
fn a_token_rotation_costs_no_push_and_leaves_no_gap() {
    let fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(2, 400);
    let setup = Setup::new();
    let devices = tcp_devices(&sims);
    let config = setup.config(&format!(
        "{devices}\n{}",
        fleet_section(&fleet.url(), &["token1"], "")
    ));
    let mut daemon = Daemon::start(&config);
    let at = wait_pushes(&daemon, 0, 3, "token1");

    // The fleet rotates: both tokens are honoured during the grace window.
    fleet.rotate("token2");
    assert!(fleet.accepts("token1") && fleet.accepts("token2"));
    let at = wait_pushes(&daemon, at, 2, "token1");

    // The installer stages the new token first and reloads.
    setup.config(&format!(
        "{devices}\n{}",
        fleet_section(&fleet.url(), &["token2", "token1"], "")
    ));
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .proc
        .stdout
        .wait_json(at, TIMEOUT, |v| v["type"] == "tokens_reloaded")
        .unwrap_or_else(|| panic!("no reload\n{}", daemon.proc.transcript()));
    let at = wait_pushes(&daemon, at, 2, "token2");

    // A second rotation retires token1 at once; token2 stays valid.
    fleet.rotate("token3");
    assert!(!fleet.accepts("token1"));
    assert!(fleet.accepts("token2") && fleet.accepts("token3"));
    wait_pushes(&daemon, at, 3, "token2");
    daemon.proc.terminate(TIMEOUT);

    let transcript = daemon.proc.transcript();
    for kind in ["push_failed", "auth_failed", "token_rejected"] {
        assert!(
            daemon.printed(kind).is_empty(),
            "a rotation done in this order never fails a push, but saw {kind}\n{transcript}"
        );
    }
    let requests = daemon_requests(&fleet);
    assert!(
        requests.iter().all(|r| r["status"] == 200),
        "every push request was accepted: {requests:?}"
    );
    assert_no_gap(&fleet, last_pushed(&daemon), &transcript);
    for secret in ["token1", "token2", "token3"] {
        assert!(
            !transcript.contains(secret),
            "the token {secret} appears in the daemon's output\n{transcript}"
        );
    }
}

#[test]
fn a_staged_unknown_token_fails_over_in_the_same_tick_and_is_picked_up_later() {
    let fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(1, 410);
    let (_setup, mut daemon) =
        pushing_daemon(&fleet, &sims, &["staged", "token1"], "token_retry = \"1s\"");
    let at = wait_pushes(&daemon, 0, 3, "token1");

    // The first batch: 401 with the staged token, then 200 with the known
    // one for the same records, with no failure in between.
    let requests = daemon_requests(&fleet);
    let (first, second) = (&requests[0], &requests[1]);
    assert_eq!(first["status"], 401, "{requests:?}");
    assert_eq!(first["token"], fingerprint("staged"));
    assert_eq!(second["status"], 200, "{requests:?}");
    assert_eq!(second["token"], fingerprint("token1"));
    assert_eq!(first["first_seq"], second["first_seq"]);
    assert!(daemon.printed("push_failed").is_empty());

    // The fleet learns the staged token: the daemon moves to it by itself.
    fleet.rotate("staged");
    wait_pushes(&daemon, at, 2, "staged");
    daemon.proc.terminate(TIMEOUT);
    assert!(daemon.printed("push_failed").is_empty());
    assert_no_gap(&fleet, last_pushed(&daemon), &daemon.proc.transcript());
}

#[test]
fn every_token_rejected_pauses_pushing_until_the_token_file_is_fixed() {
    let fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(1, 420);
    let setup = Setup::new();
    let token_file = setup.path("fleet.token");
    std::fs::write(&token_file, "expired-token\n").expect("write token file");
    let fleet_table = fleet_section(&fleet.url(), &[], "").replace(
        "tokens = []",
        &format!("token_file = \"{}\"", token_file.display()),
    );
    let config = setup.config(&format!("{}\n{fleet_table}", tcp_devices(&sims)));
    let mut daemon = Daemon::start(&config);

    daemon
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| v["type"] == "auth_failed")
        .unwrap_or_else(|| panic!("no auth_failed\n{}", daemon.proc.transcript()));
    // Readings keep flowing into the buffer meanwhile.
    daemon.records("m0", 3, TIMEOUT);
    assert!(fleet.seqs(GATEWAY).is_empty());
    let stderr = daemon.proc.stderr.lines().join("\n");
    assert_eq!(
        stderr.matches("rejected every token").count(),
        1,
        "one clear line when pushing pauses, not one per try\n{stderr}"
    );
    assert!(
        stderr.contains("can be read by every user"),
        "a world-readable token file is warned about\n{stderr}"
    );

    // The installer fixes the file (no signal): pushing resumes from seq 1.
    let fixed = setup.path("fleet.token.new");
    std::fs::write(&fixed, "token1\n").expect("write");
    std::fs::rename(&fixed, &token_file).expect("rename");
    let at = daemon
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| v["type"] == "tokens_reloaded")
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            panic!(
                "token file change not noticed\n{}",
                daemon.proc.transcript()
            )
        });
    wait_pushes(&daemon, at, 2, "token1");
    daemon.proc.terminate(TIMEOUT);
    let transcript = daemon.proc.transcript();
    assert_no_gap(&fleet, last_pushed(&daemon), &transcript);
    assert!(!transcript.contains("expired-token") && !transcript.contains("token1"));
}

#[test]
fn an_outage_a_non_json_200_and_a_hang_lose_and_double_nothing() {
    let fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(2, 430);
    let (_setup, mut daemon) = pushing_daemon(&fleet, &sims, &["token1"], "");
    let at = wait_pushes(&daemon, 0, 2, "token1");

    fleet.fault(json!({"kind": "status", "status": 503, "count": 3}));
    fleet.fault(json!({"kind": "status", "status": 503, "count": 1, "retry_after": 1}));
    fleet.fault(json!({"kind": "not_json", "count": 2}));
    fleet.fault(json!({"kind": "hang", "count": 1}));
    fleet.fault(json!({"kind": "status", "status": 500, "count": 1}));
    // Recovery: pushes succeed again after every fault was used.
    let at = daemon
        .proc
        .stdout
        .wait_json(at, TIMEOUT, |v| {
            v["type"] == "push_failed" && v["error"].as_str().is_some_and(|e| e.contains("500"))
        })
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("the faults were not all met\n{}", daemon.proc.transcript()));
    wait_pushes(&daemon, at, 3, "token1");
    let seen_before_stop = daemon.printed_seqs();
    daemon.proc.terminate(TIMEOUT);
    let transcript = daemon.proc.transcript();

    let failed = daemon.printed("push_failed");
    let errors: Vec<&str> = failed.iter().filter_map(|f| f["error"].as_str()).collect();
    assert_eq!(
        failed.len(),
        8,
        "3 + 1 × 503, 2 non-JSON, 1 hang, 1 × 500: {errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("not {\"accepted\"")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("did not answer in time")),
        "{errors:#?}"
    );
    let after_retry_after = &failed[3];
    assert!(
        after_retry_after["retry_in_ms"].as_u64().unwrap_or(0) >= 1000,
        "Retry-After: 1 is honoured: {after_retry_after}"
    );

    let last = last_pushed(&daemon);
    assert_no_gap(&fleet, last, &transcript);
    let stats = fleet.stats();
    assert_eq!(stats["unique"], last, "{stats}");
    assert!(
        stats["duplicates"].as_u64().unwrap_or(0) >= 1,
        "the batches answered with HTML were stored and sent again: {stats}"
    );
    assert!(seen_before_stop.range(..=last).count() as u64 == last);
    let stderr = daemon.proc.stderr.lines().join("\n");
    assert_eq!(
        stderr.matches("fleet push failed:").count(),
        1,
        "a failure is logged when it starts, not per try\n{stderr}"
    );
    assert_eq!(
        stderr.matches("fleet push recovered").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn kill_9_while_pushing_leaves_no_gap_only_resends() {
    let fleet = FleetSim::start("token1", &[]);
    let sims = tcp_sims(3, 440);
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        fleet_section(&fleet.url(), &["token1"], "interval = \"100ms\"")
    ));
    let mut rng = fastrand::Rng::with_seed(0x5eed_f1ee7);
    for round in 0..8 {
        let daemon = Daemon::start(&config);
        // Let it push a little, then kill it a random number of records
        // later: somewhere inside a read, a request, or a cursor update.
        let at = wait_pushes(&daemon, 0, 1 + rng.usize(0..3), "token1");
        let extra = rng.usize(0..4);
        if extra > 0 {
            daemon
                .proc
                .stdout
                .wait_count(extra, TIMEOUT, |v| v["type"] == "record");
        }
        let _ = at;
        daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
        assert!(
            daemon.proc.stdout.wait_closed(TIMEOUT),
            "round {round}: still running after SIGKILL"
        );
    }
    // A last run catches up and stops cleanly.
    let mut daemon = Daemon::start(&config);
    wait_pushes(&daemon, 0, 3, "token1");
    daemon.proc.terminate(TIMEOUT);

    let db = buffer_file(&setup);
    let conn = open_buffer_ro(&db);
    let cursor: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
            r.get(0)
        })
        .expect("cursor");
    let stored = stored_seqs_up_to(&conn, cursor as u64);
    let at_fleet = fleet.seqs(GATEWAY);
    let unique: BTreeSet<u64> = at_fleet.iter().copied().collect();
    assert_eq!(
        unique.len(),
        at_fleet.len(),
        "fleet-sim stores each seq once"
    );
    assert_eq!(
        unique
            .iter()
            .copied()
            .filter(|s| *s <= cursor as u64)
            .collect::<Vec<_>>(),
        stored,
        "every committed record up to the cursor is at the fleet, and nothing else"
    );
    let mut sorted = at_fleet.clone();
    sorted.sort_unstable();
    assert_eq!(at_fleet, sorted, "first arrivals are in seq order");
}

#[test]
fn a_poison_record_is_quarantined_and_the_rest_arrive() {
    let fleet = FleetSim::start("token1", &["--poison", "7"]);
    let sims = tcp_sims(3, 450);
    // A slow tick builds batches of several records, so the bad one has to
    // be found inside a batch.
    let (setup, mut daemon) = pushing_daemon(&fleet, &sims, &["token1"], "interval = \"3s\"");
    let (at, quarantined) = daemon
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| v["type"] == "quarantined")
        .unwrap_or_else(|| panic!("nothing quarantined\n{}", daemon.proc.transcript()));
    assert_eq!(quarantined["seq"], 7);
    wait_pushes(&daemon, at, 2, "token1");
    daemon.proc.terminate(TIMEOUT);
    let transcript = daemon.proc.transcript();

    let last = last_pushed(&daemon);
    let seqs = fleet.seqs(GATEWAY);
    let expected: Vec<u64> = (1..=last).filter(|s| *s != 7).collect();
    assert_eq!(
        seqs.iter()
            .copied()
            .filter(|s| *s <= last)
            .collect::<Vec<_>>(),
        expected,
        "every record but the poison one arrived, in order\n{transcript}"
    );
    let stderr = daemon.proc.stderr.lines().join("\n");
    assert_eq!(
        stderr.matches("record 7 quarantined").count(),
        1,
        "{stderr}"
    );

    let conn = open_buffer_ro(&buffer_file(&setup));
    let (reason, flags): (String, i64) = conn
        .query_row(
            "SELECT q.reason, r.flags FROM quarantine q JOIN records r USING (seq) WHERE seq = 7",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("seq 7 is kept in quarantine");
    assert!(reason.contains("400"), "{reason}");
    assert_ne!(flags & 16, 0, "the row is flagged quarantined");
    let count: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'quarantined'",
            [],
            |r| r.get(0),
        )
        .expect("counter");
    assert_eq!(count, 1);
}

#[test]
fn a_replayed_record_is_pushed_in_its_received_at_place() {
    let fleet = FleetSim::start("token1", &[]);
    let replaying = Sim::tcp(&["--seed", "460", "--replay", "3"]);
    let live = Sim::tcp(&["--seed", "461"]);
    let sims = vec![replaying, live];
    let (_setup, mut daemon) = pushing_daemon(&fleet, &sims, &["token1"], "");
    daemon.records("m0", 6, TIMEOUT);
    let at = daemon.proc.stdout.lines().len();
    wait_pushes(&daemon, at, 2, "token1");
    daemon.proc.terminate(TIMEOUT);
    let transcript = daemon.proc.transcript();

    let received = fleet.received(GATEWAY);
    let seqs: Vec<u64> = received.iter().filter_map(|r| r["seq"].as_u64()).collect();
    let last = *seqs.last().expect("records at the fleet");
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{transcript}");
    let time = |r: &Value, key: &str| {
        r[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let old: Vec<&Value> = received
        .iter()
        .filter(|r| match (time(r, "device_time"), time(r, "received_at")) {
            (Some(d), Some(at)) => at - d > chrono::Duration::minutes(30),
            _ => false,
        })
        .collect();
    assert!(
        !old.is_empty(),
        "the replayed records carry hour-old meter times: {received:#?}"
    );
    // ReceivedAt order: an old device_time does not move a record.
    let received_at: Vec<_> = received.iter().map(|r| time(r, "received_at")).collect();
    assert!(
        received_at.windows(2).all(|w| w[0] <= w[1]),
        "fleet arrival order is received_at order"
    );
}

#[test]
fn fleet_disabled_opens_no_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sims = tcp_sims(1, 470);
    let setup = Setup::new();
    let config = setup.config(&format!(
        "{}\n{}",
        tcp_devices(&sims),
        fleet_section(&url, &["token1"], "").replace("enabled = true", "enabled = false")
    ));
    let mut daemon = Daemon::start(&config);
    daemon.records("m0", 4, TIMEOUT);
    // Records are committed and would be pushed within a tick (200 ms):
    // after several ticks' worth of records nobody has knocked.
    daemon.proc.terminate(TIMEOUT);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("a connection from {peer} with [fleet].enabled = false"),
        Err(e) => panic!("accept: {e}"),
    }
    let rows = poll_until(Duration::from_secs(5), || {
        let conn = open_buffer_ro(&buffer_file(&setup));
        conn.query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
            r.get::<_, i64>(0)
        })
        .ok()
    });
    assert_eq!(rows, Some(0), "nothing was marked pushed");
}
