//! Reload (`SIGHUP`) end to end: the real `slmd` reading a real `slm-sim`,
//! pushing to real `fleet-sim`s, its config file edited and reloaded as an
//! installer would. Every key either takes effect or is named as waiting
//! for a restart; nothing is silently ignored.

use serde_json::Value;
use slmd_e2e::api::{api_address, wait_status};
use slmd_e2e::fleet::{FleetSim, fleet_section, http};
use slmd_e2e::{Daemon, Setup, poll_until, records_after, tcp_devices, tcp_sims};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const GATEWAY: &str = "gw-test";
const TOKEN: &str = "fleet-token-1";

/// Rewrites the config with `devices_and_more` and sends `SIGHUP`; returns
/// the reload's log line (the one that says what it did).
fn reload(setup: &Setup, daemon: &Daemon, devices_and_more: &str) -> String {
    let from = daemon.proc.stderr.lines().len();
    setup.config(devices_and_more);
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let (_, line) = daemon
        .proc
        .stderr
        .wait_from(from, TIMEOUT, |l| {
            l.contains("configuration reloaded") || l.contains("not reloaded")
        })
        .unwrap_or_else(|| panic!("no reload line\n{}", daemon.proc.transcript()));
    line
}

/// Push events the daemon printed from line `from` on.
fn pushes_from(daemon: &Daemon, from: usize) -> Vec<Value> {
    daemon.proc.stdout.json()[from.min(daemon.proc.stdout.json().len())..]
        .iter()
        .filter(|v| v["type"] == "push")
        .cloned()
        .collect()
}

/// Waits until the daemon has printed `n` more records after stdout line
/// `from`; returns the line index after the last one.
fn more_records(daemon: &Daemon, from: usize, n: usize) -> usize {
    let (records, next) = records_after(&daemon.proc, from, n, TIMEOUT);
    assert_eq!(
        records.len(),
        n,
        "records did not come\n{}",
        daemon.proc.transcript()
    );
    next
}

fn api_status(api: &str) -> Value {
    wait_status(api, TIMEOUT)
}

#[test]
fn fleet_enabled_false_by_reload_stops_pushing_at_once_and_true_resumes_it() {
    let fleet = FleetSim::start(TOKEN, &[]);
    let sims = tcp_sims(1, 1201);
    let devices = tcp_devices(&sims);
    let on = format!("{devices}\n{}", fleet_section(&fleet.url(), &[TOKEN], ""));
    let off = on.replace("enabled = true", "enabled = false");
    let setup = Setup::new();
    let daemon = Daemon::start(&setup.config(&on));
    let api = api_address(&daemon.proc);
    poll_until(TIMEOUT, || (!fleet.seqs(GATEWAY).is_empty()).then_some(()))
        .unwrap_or_else(|| panic!("nothing pushed\n{}", daemon.proc.transcript()));

    let line = reload(&setup, &daemon, &off);
    assert!(line.contains("pushing off"), "{line}");
    // The uplink has stopped before the line is written: from here on the
    // fleet must not hear from this gateway.
    let held = fleet.seqs(GATEWAY).len();
    let after_reload = daemon.proc.stdout.lines().len();
    assert_eq!(api_status(&api)["fleet"]["enabled"], false);
    assert_eq!(api_status(&api)["fleet"]["state"], "disabled");
    // Ten more readings, each one a push tick (200 ms) or more apart.
    let later = more_records(&daemon, after_reload, 10);
    assert_eq!(
        fleet.seqs(GATEWAY).len(),
        held,
        "the fleet received records after [fleet] was turned off\n{}",
        daemon.proc.transcript()
    );
    assert!(pushes_from(&daemon, after_reload).is_empty());

    // Back on: what waited in the buffer goes out, nothing lost, in order.
    let line = reload(&setup, &daemon, &on);
    assert!(line.contains("uplink restarted"), "{line}");
    let wanted = daemon.printed_seqs();
    let last = *wanted.iter().max().expect("records");
    poll_until(TIMEOUT, || {
        (fleet.seqs(GATEWAY).iter().copied().max().unwrap_or(0) >= last).then_some(())
    })
    .unwrap_or_else(|| panic!("the backlog was not pushed\n{}", daemon.proc.transcript()));
    let arrived: Vec<u64> = fleet
        .seqs(GATEWAY)
        .into_iter()
        .filter(|s| *s <= last)
        .collect();
    assert_eq!(
        arrived,
        (1..=last).collect::<Vec<_>>(),
        "every record, in order"
    );
    assert_eq!(api_status(&api)["fleet"]["enabled"], true);
    assert!(later > after_reload);
}

#[test]
fn a_changed_fleet_url_takes_effect_on_reload() {
    let old = FleetSim::start(TOKEN, &[]);
    let new = FleetSim::start(TOKEN, &[]);
    let sims = tcp_sims(1, 1202);
    let devices = tcp_devices(&sims);
    let setup = Setup::new();
    let daemon = Daemon::start(&setup.config(&format!(
        "{devices}\n{}",
        fleet_section(&old.url(), &[TOKEN], "")
    )));
    poll_until(TIMEOUT, || (!old.seqs(GATEWAY).is_empty()).then_some(()))
        .unwrap_or_else(|| panic!("nothing pushed\n{}", daemon.proc.transcript()));

    let line = reload(
        &setup,
        &daemon,
        &format!("{devices}\n{}", fleet_section(&new.url(), &[TOKEN], "")),
    );
    assert!(line.contains("url changed, uplink restarted"), "{line}");
    let held_by_old = old.seqs(GATEWAY).len();
    let after_reload = daemon.proc.stdout.lines().len();
    more_records(&daemon, after_reload, 5);
    let last = *daemon.printed_seqs().iter().max().expect("records");
    poll_until(TIMEOUT, || {
        (new.seqs(GATEWAY).iter().copied().max().unwrap_or(0) >= last).then_some(())
    })
    .unwrap_or_else(|| panic!("the new fleet got nothing\n{}", daemon.proc.transcript()));
    assert_eq!(
        old.seqs(GATEWAY).len(),
        held_by_old,
        "data kept going to the old endpoint after the reload"
    );
    // Between them the two fleets hold every record.
    let both: BTreeSet<u64> = old
        .seqs(GATEWAY)
        .into_iter()
        .chain(new.seqs(GATEWAY))
        .filter(|s| *s <= last)
        .collect();
    assert_eq!(both, (1..=last).collect::<BTreeSet<_>>());
}

#[test]
fn keys_that_need_a_restart_are_named_and_api_tokens_apply_at_once() {
    let sims = tcp_sims(1, 1203);
    let devices = tcp_devices(&sims);
    let setup = Setup::new();
    let daemon = Daemon::start(&setup.config(&devices));
    let api = api_address(&daemon.proc);
    assert_eq!(api_status(&api)["needs_restart"], serde_json::json!([]));

    let secret = "api-secret-7f3a";
    // A new buffer size, another API address, and API tokens.
    let path = setup.config_with_buffer(&devices, "max_records = 1234");
    let text = std::fs::read_to_string(&path).expect("config").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:1\"\ntokens = [\"{secret}\"]"),
    );
    std::fs::write(&path, &text).expect("write");
    let from = daemon.proc.stderr.lines().len();
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let (_, waiting) = daemon
        .proc
        .stderr
        .wait_from(from, TIMEOUT, |l| l.contains("wait for a restart"))
        .unwrap_or_else(|| panic!("no restart line\n{}", daemon.proc.transcript()));
    assert!(
        waiting.contains("buffer.max_records") && waiting.contains("api.listen"),
        "{waiting}"
    );
    let restart_lines = daemon.proc.stderr.lines()[from..]
        .iter()
        .filter(|l| l.contains("wait for a restart"))
        .count();
    assert_eq!(restart_lines, 1, "one journal line per reload");
    assert!(
        !daemon.proc.transcript().contains(secret),
        "the API token appeared in the output"
    );

    // The new token is required at once, on the old address.
    let anonymous = http(&api, "GET", "/v1/status", &[], b"").expect("answer");
    assert_eq!(anonymous.status, 401);
    let auth = format!("Bearer {secret}");
    let with_token = poll_until(TIMEOUT, || {
        let r = http(&api, "GET", "/v1/status", &[("Authorization", &auth)], b"").ok()?;
        (r.status == 200).then(|| r.json())
    })
    .expect("status with the new token");
    assert_eq!(
        with_token["needs_restart"],
        serde_json::json!(["buffer.max_records", "api.listen"])
    );

    // Editing a key back clears it.
    std::fs::write(&path, text.replace("max_records = 1234", "")).expect("write");
    let from = daemon.proc.stderr.lines().len();
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    daemon
        .proc
        .stderr
        .wait_from(from, TIMEOUT, |l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("no reload\n{}", daemon.proc.transcript()));
    let r = http(&api, "GET", "/v1/status", &[("Authorization", &auth)], b"").expect("answer");
    assert_eq!(r.json()["needs_restart"], serde_json::json!(["api.listen"]));
}

#[test]
#[ignore = "needs mosquitto; .ci/run installs it"]
fn mqtt_added_by_reload_starts_publishing() {
    let setup = Setup::new();
    let broker = slmd_e2e::api::Broker::start(setup.dir.path(), slmd_e2e::api::free_port());
    let subscriber = broker.subscribe("slmd/gw-test/#");
    let sims = tcp_sims(1, 1204);
    let devices = tcp_devices(&sims);
    let daemon = Daemon::start(&setup.config(&devices));
    more_records(&daemon, 0, 1);
    let line = reload(
        &setup,
        &daemon,
        &format!("{devices}\n[mqtt]\nurl = \"{}\"\n", broker.url()),
    );
    assert!(line.contains("mqtt: restarted"), "{line}");
    subscriber
        .stdout
        .wait_from(0, TIMEOUT, |l| l.contains("\"seq\""))
        .unwrap_or_else(|| {
            panic!(
                "no record on the broker after the reload\n{}\n{}",
                daemon.proc.transcript(),
                subscriber.transcript()
            )
        });
    // And off again: the publisher says goodbye.
    let line = reload(&setup, &daemon, &devices);
    assert!(line.contains("mqtt: stopped"), "{line}");
}
