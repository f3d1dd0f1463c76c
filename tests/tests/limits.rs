//! Noise limits end to end (SPEC §11): a simulated NL-43 driven loud and
//! quiet (`slm-sim --control-stdin`, `offset <dB>`), the real daemon with
//! alert rules, a real local webhook receiver ([`HookServer`]), a real
//! Mosquitto broker, and `fleet-sim` for the fleet's events.

use serde_json::Value;
use slmd_e2e::api::{Broker, Sse, api_address};
use slmd_e2e::fleet::{FleetSim, fleet_section};
use slmd_e2e::hook::HookServer;
use slmd_e2e::{Daemon, Setup, Sim, poll_until, tcp_device};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);
const TOKEN: &str = "tok-limits";

/// A site: a calm simulated NL-43 (`--seed seed`), a webhook receiver
/// and a folder for the config and the state.
struct Site {
    sim: Sim,
    hook: HookServer,
    setup: Setup,
}

impl Site {
    fn new(seed: u64) -> Site {
        Site {
            sim: Sim::tcp(&["--calm", "--control-stdin", "--seed", &seed.to_string()]),
            hook: HookServer::start(),
            setup: Setup::new(),
        }
    }

    /// Writes the config: the meter as `north`, `[levels]` with 10-second
    /// windows, a webhook channel `site` to the receiver, the rule `loud`
    /// (Lp above 70 dB for 2 s, clear below 65 dB), and `extra`.
    fn config(&self, extra: &str) -> std::path::PathBuf {
        let path = self.setup.path("slmd.toml");
        let address = self.sim.address.as_deref().expect("address");
        std::fs::write(
            &path,
            format!(
                "[gateway]\nid = \"gw-limits\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
                 [buffer]\ncommit_interval = \"250ms\"\n\n{}\n\
                 [levels]\nintervals = [\"10s\"]\ntimezone = \"Europe/Zurich\"\n\n\
                 [[channel]]\nid = \"site\"\nkind = \"webhook\"\nurl = \"{}\"\nretry_min = \"100ms\"\nretry_max = \"500ms\"\n\n\
                 [[alert]]\nid = \"loud\"\nmetric = \"lp\"\nabove = 70.0\nfor = \"2s\"\nclear_below = 65.0\npeak_every = \"1h\"\nchannels = [\"site\"]\n\n{extra}",
                self.setup.path("state").display(),
                tcp_device("north", address, "reconnect_min = \"100ms\"\nreconnect_max = \"1s\""),
                self.hook.url("/noise"),
            ),
        )
        .expect("write config");
        path
    }
}

/// The webhook bodies received so far, as JSON.
fn bodies(hook: &HookServer) -> Vec<Value> {
    hook.requests().into_iter().filter_map(|r| r.json).collect()
}

/// Waits until the webhook has an event `event` (after `from` bodies).
fn wait_hook(hook: &HookServer, from: usize, event: &str) -> Value {
    wait_hook_for(hook, from, event, "loud")
}

/// Waits until the webhook has an event `event` of rule `alert`.
fn wait_hook_for(hook: &HookServer, from: usize, event: &str, alert: &str) -> Value {
    poll_until(TIMEOUT, || {
        bodies(hook)
            .into_iter()
            .skip(from)
            .find(|b| b["event"] == event && b["alert"] == alert)
    })
    .unwrap_or_else(|| panic!("no {alert} {event} at the webhook; got {:?}", bodies(hook)))
}

/// One request to the API: its status and body.
fn call(api: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let response = slmd_e2e::fleet::http(api, method, path, &[], body.unwrap_or("").as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (response.status, response.body)
}

fn get(api: &str, path: &str) -> Value {
    let (status, body) = call(api, "GET", path, None);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn a_loud_meter_alerts_the_webhook_mqtt_and_the_fleet_is_acked_and_clears_when_quiet() {
    let site = Site::new(7);
    let (sim, hook) = (&site.sim, &site.hook);
    let fleet = FleetSim::start(TOKEN, &[]);
    let broker = Broker::start(&site.setup.path(""), 0);
    let retained = broker.subscribe("slmd/gw-limits/alerts/#");
    let extra = format!(
        "[mqtt]\nurl = \"{}\"\n\n{}",
        broker.url(),
        fleet_section(&fleet.url(), &[TOKEN], "")
    );
    let path = site.config(&extra);
    let daemon = Daemon::start(&path);
    daemon.records("north", 3, TIMEOUT);
    let api = api_address(&daemon.proc);
    assert!(bodies(hook).is_empty(), "quiet: no alert");

    sim.set_offset(30.0);
    let onset = wait_hook(hook, 0, "onset");
    assert_eq!(onset["gateway"], "gw-limits");
    assert_eq!(onset["alert"], "loud");
    assert_eq!(onset["device"], "north");
    assert_eq!(onset["metric"], "lp");
    assert_eq!(onset["threshold"], 70.0);
    assert!(onset["value"].as_f64().is_some_and(|v| v > 70.0), "{onset}");
    let episode = onset["episode"].as_str().expect("episode").to_owned();

    // Listed as active, with the same episode.
    let alerts = get(&api, "/v1/alerts");
    let active = alerts["active"].as_array().expect("active");
    assert_eq!(active.len(), 1, "{alerts}");
    assert_eq!(active[0]["episode"], episode.as_str());
    assert_eq!(active[0]["ack"], Value::Null);

    // On MQTT: the event, and the episode retained while active.
    let topic = format!("slmd/gw-limits/alerts/{episode}");
    retained
        .stdout
        .wait_from(0, TIMEOUT, |l| {
            l.starts_with(&topic) && l.contains("\"onset\"")
        })
        .unwrap_or_else(|| panic!("no retained onset\n{}", retained.transcript()));
    let late = broker.subscribe("slmd/gw-limits/alerts/#");
    late.stdout
        .wait_from(0, TIMEOUT, |l| l.starts_with(&topic))
        .unwrap_or_else(|| {
            panic!(
                "a late subscriber gets no active alert\n{}",
                late.transcript()
            )
        });

    // Acknowledged through the API, with a note.
    let (status, body) = call(
        &api,
        "POST",
        &format!("/v1/alerts/{episode}/ack"),
        Some(r#"{"note": "crane work, site informed"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let acked: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(acked["ack"]["note"], "crane work, site informed");
    let (status, body) = call(&api, "POST", "/v1/alerts/nope/ack", Some("{}"));
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        &api,
        "POST",
        &format!("/v1/alerts/{episode}/ack"),
        Some(r#"{"note": 5}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        get(&api, "/v1/alerts")["active"][0]["ack"]["note"],
        "crane work, site informed"
    );
    // `slmd status` shows it to the tech on the gateway.
    let table = std::process::Command::new(slmd_e2e::bin("slmd"))
        .args(["status", "--config"])
        .arg(&path)
        .args(["--api", &api])
        .output()
        .expect("slmd status");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("limits  1 rule · 1 active"), "{table}");
    assert!(table.contains("  ALERT loud north lp peak "), "{table}");
    assert!(table.contains("> 70.0 · acked"), "{table}");

    // Quiet again: cleared, once, with the same episode.
    sim.set_offset(0.0);
    let clear = wait_hook(hook, 0, "clear");
    assert_eq!(clear["episode"], episode.as_str());
    assert!(clear["value"].as_f64().is_some_and(|v| v < 65.0), "{clear}");
    let alerts = get(&api, "/v1/alerts");
    assert_eq!(
        alerts["active"].as_array().map(Vec::len),
        Some(0),
        "{alerts}"
    );
    assert_eq!(alerts["recent"][0]["episode"], episode.as_str());
    assert!(alerts["recent"][0]["cleared_at"].is_string(), "{alerts}");
    assert_eq!(
        alerts["recent"][0]["ack"]["note"],
        "crane work, site informed"
    );
    retained
        .stdout
        .wait_from(0, TIMEOUT, |l| {
            l.starts_with("slmd/gw-limits/alerts {") && l.contains("\"clear\"")
        })
        .unwrap_or_else(|| panic!("no clear event on MQTT\n{}", retained.transcript()));

    // The fleet got the same events, in order, with their event_seq.
    let events = poll_until(TIMEOUT, || {
        let events = fleet.events("gw-limits");
        events
            .iter()
            .any(|e| e["event"] == "clear")
            .then_some(events)
    })
    .unwrap_or_else(|| panic!("the fleet has no clear\n{}", fleet.proc.transcript()));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["onset", "clear"], "{events:?}");
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| e["event_seq"].as_u64())
        .collect();
    assert_eq!(seqs.len(), 2, "{events:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    // The webhook got exactly the onset and the clear.
    let kinds: Vec<String> = bodies(hook)
        .iter()
        .filter_map(|b| b["event"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["onset", "clear"]);
}

#[test]
fn a_kill_9_during_an_episode_sends_no_second_onset_and_the_clear_still_comes() {
    let site = Site::new(8);
    let (sim, hook) = (&site.sim, &site.hook);
    let path = site.config("");
    let mut daemon = Daemon::start(&path);
    daemon.records("north", 2, TIMEOUT);
    sim.set_offset(30.0);
    let onset = wait_hook(hook, 0, "onset");
    let episode = onset["episode"].as_str().expect("episode").to_owned();

    daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.proc.wait(TIMEOUT).expect("killed");
    let again = Daemon::start(&path);
    // Loud readings well past `for` after the restart (readings only: an
    // interval level closing meanwhile is a record too, without `lp`)...
    let printed = again.proc.stdout.wait_count(8, TIMEOUT, |v| {
        v["type"] == "record" && v["device"] == "north" && v.get("kind").is_none()
    });
    assert!(
        printed
            .iter()
            .rev()
            .take(3)
            .all(|r| r["metrics"]["lp"].as_f64().is_some_and(|lp| lp > 70.0)),
        "still loud: {printed:?}"
    );
    let api = api_address(&again.proc);
    let alerts = get(&api, "/v1/alerts");
    assert_eq!(alerts["active"][0]["episode"], episode.as_str(), "{alerts}");
    // ...and no second onset.
    let onsets = bodies(hook)
        .iter()
        .filter(|b| b["event"] == "onset")
        .count();
    assert_eq!(onsets, 1, "{:?}", bodies(hook));

    sim.set_offset(0.0);
    let clear = wait_hook(hook, 0, "clear");
    assert_eq!(clear["episode"], episode.as_str());
    assert!(
        again.log_lines("still active from before the restart") >= 1,
        "{}",
        again.proc.transcript()
    );
}

#[test]
fn a_webhook_down_for_a_while_gets_every_event_in_order_when_it_returns() {
    let site = Site::new(9);
    let (sim, hook) = (&site.sim, &site.hook);
    let path = site.config("");
    let daemon = Daemon::start(&path);
    daemon.records("north", 2, TIMEOUT);
    hook.down();
    let down_at = std::time::Instant::now();
    // Two episodes while the receiver is away.
    for _ in 0..2 {
        let onsets = daemon.log_lines("loud onset on north");
        sim.set_offset(30.0);
        poll_until(TIMEOUT, || {
            (daemon.log_lines("loud onset on north") > onsets).then_some(())
        })
        .unwrap_or_else(|| panic!("no onset\n{}", daemon.proc.transcript()));
        let clears = daemon.log_lines("loud clear on north");
        sim.set_offset(0.0);
        poll_until(TIMEOUT, || {
            (daemon.log_lines("loud clear on north") > clears).then_some(())
        })
        .unwrap_or_else(|| panic!("no clear\n{}", daemon.proc.transcript()));
    }
    // Away for a minute in all, while readings go on arriving.
    let before = daemon.printed_records().len();
    while down_at.elapsed() < Duration::from_secs(60) {
        let seen = daemon.printed_records().len();
        daemon.records("north", seen + 1, TIMEOUT);
    }
    assert!(
        daemon.printed_records().len() >= before + 10,
        "readings flowed while the webhook was down"
    );
    assert!(hook.attempts().is_empty());
    assert_eq!(
        daemon.log_lines("cannot deliver alert events to channel:site"),
        1,
        "the outage is logged once\n{}",
        daemon.proc.transcript()
    );

    hook.up();
    let got = poll_until(TIMEOUT, || {
        let got = bodies(hook);
        (got.len() >= 4).then_some(got)
    })
    .unwrap_or_else(|| panic!("not every event arrived: {:?}", bodies(hook)));
    let kinds: Vec<&str> = got.iter().filter_map(|b| b["event"].as_str()).collect();
    assert_eq!(kinds, ["onset", "clear", "onset", "clear"], "{got:?}");
    let seqs: Vec<u64> = got.iter().filter_map(|b| b["event_seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 4, "{got:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(
        daemon.log_lines("alert events reach channel:site again") >= 1,
        "{}",
        daemon.proc.transcript()
    );
    assert_ne!(got[0]["episode"], got[2]["episode"], "two episodes");
}

#[test]
fn interval_levels_are_stored_pushed_streamed_listed_and_fire_their_rule_and_ntfy_is_told() {
    let site = Site::new(10);
    let (sim, hook) = (&site.sim, &site.hook);
    let fleet = FleetSim::start(TOKEN, &[]);
    // A phone's ntfy topic (a real local HTTP server standing in for
    // ntfy.sh), told by a rule of its own.
    let phone = HookServer::start();
    let rules = format!(
        "[[alert]]\nid = \"leq-limit\"\nmetric = \"leq_10s\"\nabove = 75.0\nchannels = [\"site\"]\n\n\
         [[channel]]\nid = \"phone\"\nkind = \"ntfy\"\nurl = \"{}\"\ntoken = \"tk-phone\"\n\n\
         [[alert]]\nid = \"loud-phone\"\nmetric = \"lp\"\nabove = 70.0\nfor = \"2s\"\nchannels = [\"phone\"]\n",
        phone.url("/site-noise")
    );
    let extra = format!("{rules}\n{}", fleet_section(&fleet.url(), &[TOKEN], ""));
    let path = site.config(&extra);
    let daemon = Daemon::start(&path);
    let api = api_address(&daemon.proc);
    let stream = Sse::open(&api, "/v1/stream?device=north", None);

    // The first whole window (the first one may be partial).
    let (_, first) = daemon
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| {
            v["type"] == "record" && v["kind"] == "interval"
        })
        .unwrap_or_else(|| panic!("no interval level\n{}", daemon.proc.transcript()));
    assert_eq!(first["interval_length"], "10s");
    assert_eq!(first["device"], "north");
    for metric in ["leq", "lmax", "lmin", "l10", "l90"] {
        assert!(first["metrics"][metric].is_number(), "{metric}: {first}");
    }
    let start =
        chrono::DateTime::parse_from_rfc3339(first["interval_start"].as_str().expect("start"))
            .expect("rfc3339");
    assert_eq!(start.timestamp() % 10, 0, "aligned: {first}");
    let leq = first["metrics"]["leq"].as_f64().expect("leq");
    assert!((45.0..65.0).contains(&leq), "quiet leq {leq}");

    // Listed by the API, pushed to the fleet, streamed as `event: level`.
    let levels = poll_until(TIMEOUT, || {
        let v = get(&api, "/v1/devices/north/levels?length=10s");
        (!v["levels"].as_array()?.is_empty()).then_some(v)
    })
    .expect("levels listed");
    assert_eq!(levels["levels"][0]["kind"], "interval");
    let (status, body) = call(&api, "GET", "/v1/devices/north/levels?length=5m", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("10s"), "{body}");
    poll_until(TIMEOUT, || {
        (!fleet.intervals("gw-limits").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no interval at the fleet\n{}", fleet.proc.transcript()));
    poll_until(TIMEOUT, || {
        stream.events().iter().any(|e| e == "level").then_some(())
    })
    .expect("event: level on the stream");
    // History carries readings only.
    let history = get(&api, "/v1/devices/north/history?limit=10000");
    assert!(
        history["records"]
            .as_array()
            .expect("records")
            .iter()
            .all(|r| r.get("kind").is_none()),
        "{history}"
    );

    // Loud: the rule on the 10-second Leq fires at the end of the first
    // window that breaks it, not before.
    sim.set_offset(30.0);
    let onset = wait_hook_for(hook, 0, "onset", "leq-limit");
    assert_eq!(onset["metric"], "leq_10s");
    let at = chrono::DateTime::parse_from_rfc3339(onset["at"].as_str().expect("at")).expect("at");
    assert_eq!(
        at.timestamp_subsec_millis(),
        0,
        "at a window's end: {onset}"
    );
    assert_eq!(at.timestamp() % 10, 0, "at a window's end: {onset}");

    // The phone got its rule's onset as an ntfy message, and only that.
    let told = phone.wait_for(1, TIMEOUT);
    let message = &told[0];
    assert_eq!(message.method, "POST");
    assert_eq!(message.path, "/site-noise");
    assert_eq!(message.header("title"), Some("loud-phone: onset on north"));
    assert_eq!(message.header("priority"), Some("high"));
    assert_eq!(message.header("authorization"), Some("Bearer tk-phone"));
    assert!(
        message.body.starts_with("lp above ") && message.body.contains("(limit 70.0 dB)"),
        "{message:?}"
    );
    assert!(
        bodies(hook).iter().all(|b| b["alert"] != "loud-phone"),
        "a channel takes only its rules' events: {:?}",
        bodies(hook)
    );
}
