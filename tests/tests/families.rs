//! Every meter family end to end: the real `slmd` against `slm-sim`
//! personalities (NL-43 over TCP and streaming over a pty, XL2, Svantek and
//! Casella over ptys), each record compared with what the simulator says
//! it sent (its `reading` events), never with what the daemon's codec
//! thinks.

use serde_json::{Map, Value};
use slmd_e2e::api::{Broker, Sse, api_address, wait_status};
use slmd_e2e::{Daemon, Setup, Sim};
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A `[[device]]` table for a serial meter of `protocol`.
fn serial(id: &str, protocol: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nprotocol = \"{protocol}\"\ntransport = \"serial\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// The non-null metrics of a record or of a simulator reading, by name.
fn values(metrics: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = metrics
        .as_object()
        .map(Map::iter)
        .into_iter()
        .flatten()
        .filter_map(|(name, v)| Some((name.clone(), v.as_f64()?)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The `reading` events `sim` reported, in order.
fn sent(sim: &Sim) -> Vec<Value> {
    sim.proc
        .stdout
        .json()
        .into_iter()
        .filter(|v| v["event"] == "reading")
        .collect()
}

/// Asserts that the records of one meter are, in order, readings the
/// simulator sent: the same values (the same metrics with a value, equal to
/// the bit), and for a meter that stamps its readings the same
/// `device_time`. Readings the daemon never received (a dropped link, a
/// probe) may be skipped; nothing may be invented or reordered.
fn assert_records_were_sent(records: &[Value], sent: &[Value], device: &str) {
    assert!(!records.is_empty(), "no records of {device}");
    let mut next = 0;
    for record in records {
        let wanted = values(&record["metrics"]);
        let found = sent[next..].iter().position(|reading| {
            values(&reading["metrics"]) == wanted
                && (reading["device_time"].is_null()
                    || reading["device_time"] == record["device_time"])
        });
        match found {
            Some(offset) => next += offset + 1,
            None => panic!(
                "{device}: record seq {} has values the simulator never sent (after reading {next}): {record}\nsent: {:#?}",
                record["seq"],
                &sent[next.saturating_sub(3)..]
            ),
        }
    }
}

/// The records `daemon` printed for `device`.
fn records_of(daemon: &Daemon, device: &str) -> Vec<Value> {
    daemon
        .printed_records()
        .into_iter()
        .filter(|r| r["device"] == device)
        .collect()
}

/// The simulators of one gateway with every family, and the device tables.
struct Site {
    sims: Vec<(&'static str, Sim)>,
    devices: String,
}

fn site(setup: &Setup, faults: &[&str]) -> Site {
    let mut sims = Vec::new();
    let mut devices = String::new();
    let tcp = Sim::tcp(&[&["--seed", "41"], faults].concat());
    devices.push_str(&format!(
        "[[device]]\nid = \"nl43-tcp\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{}\"\n\n",
        tcp.address.as_deref().expect("address")
    ));
    sims.push(("nl43-tcp", tcp));
    for (id, protocol, family, seed, extra) in [
        ("nl43-stream", "nl43", "nl43", "42", "mode = \"stream\""),
        ("xl2", "xl2", "xl2", "43", ""),
        ("svan", "svantek", "svantek", "44", ""),
        ("cel", "casella", "casella", "45", ""),
    ] {
        let link = setup.path(&format!("tty-{id}"));
        let sim = Sim::pty(
            &link,
            &[&["--family", family, "--seed", seed], faults].concat(),
        );
        devices.push_str(&serial(id, protocol, &link, extra));
        sims.push((id, sim));
    }
    Site { sims, devices }
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn every_family_on_one_gateway_with_100_streams_and_mqtt() {
    let setup = Setup::new();
    let broker = Broker::start(setup.dir.path(), 0);
    let mut site = site(&setup, &[]);
    let config = setup.config(&format!(
        "{}\n[mqtt]\nurl = \"{}\"\ntopic_prefix = \"slmd\"\n",
        site.devices,
        broker.url()
    ));
    let mqtt = broker.subscribe("slmd/gw-test/+/reading");
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    let streams: Vec<Sse> = (0..100)
        .map(|_| Sse::open(&api, "/v1/stream", None))
        .collect();
    for (id, _) in &site.sims {
        let got = daemon.records(id, 6, TIMEOUT);
        assert_eq!(got.len(), 6, "{id}\n{}", daemon.proc.transcript());
    }
    for (i, stream) in streams.iter().enumerate() {
        let got = stream.wait_records(5, TIMEOUT);
        assert!(got.len() >= 5, "stream {i} got {}", got.len());
    }

    // Identity, as each family reads it, in status.
    let status = wait_status(&api, TIMEOUT);
    let device = |id: &str| {
        status["devices"]
            .as_array()
            .and_then(|d| d.iter().find(|d| d["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing from {status}"))
    };
    assert_eq!(device("nl43-tcp")["identity"]["model"], "NL-43");
    assert_eq!(device("nl43-tcp")["protocol"], "nl43");
    assert_eq!(device("xl2")["identity"]["model"], "XL2");
    assert!(device("xl2")["identity"]["serial"].is_string());
    assert!(
        device("svan")["identity"]["model"]
            .as_str()
            .is_some_and(|m| m.starts_with("SVAN")),
        "{}",
        device("svan")
    );
    assert_eq!(device("cel")["protocol"], "casella");
    let metrics = slmd_e2e::fleet::http(&api, "GET", "/metrics", &[], b"").expect("metrics");
    assert!(
        metrics.body.lines().any(
            |l| l.starts_with("slmd_device_info{device=\"xl2\",protocol=\"xl2\",model=\"XL2\"")
        ),
        "{}",
        metrics.body
    );

    // What the buffer stored (committed so far) is what the meters sent.
    for (id, sim) in &site.sims {
        let page = slmd_e2e::fleet::http(
            &api,
            "GET",
            &format!("/v1/devices/{id}/history?limit=10000"),
            &[],
            b"",
        )
        .expect("history");
        let page: Value = serde_json::from_str(&page.body).expect("history JSON");
        let stored = page["records"].as_array().cloned().unwrap_or_default();
        assert_records_were_sent(&stored, &sent(sim), id);
    }
    for stream in &streams {
        stream.close();
    }
    daemon.proc.terminate(Duration::from_secs(10));
    for (id, sim) in &mut site.sims {
        let records = records_of(&daemon, id);
        assert_records_were_sent(&records, &sent(sim), id);
        let stats = sim.stop();
        assert_eq!(
            stats["connections_accepted"], 1,
            "{id}: one link per meter: {stats}"
        );
    }
    // The streaming meter streams: far more readings than one a second.
    let streamed = records_of(&daemon, "nl43-stream");
    let polled = records_of(&daemon, "nl43-tcp");
    assert!(
        streamed.len() > 3 * polled.len(),
        "DRD? at 10 Hz: {} streamed vs {} polled",
        streamed.len(),
        polled.len()
    );
    // Casella readings carry the meter's own time.
    assert!(
        records_of(&daemon, "cel")
            .iter()
            .all(|r| r["device_time"].is_string())
    );
    // MQTT saw every family.
    let topics: Vec<String> = mqtt.stdout.lines();
    for (id, _) in &site.sims {
        assert!(
            topics
                .iter()
                .any(|l| l.starts_with(&format!("slmd/gw-test/{id}/reading "))),
            "no MQTT reading of {id}"
        );
    }
}

#[test]
fn junk_and_split_writes_never_become_values_in_any_family() {
    let setup = Setup::new();
    let mut site = site(&setup, &["--junk", "0.4", "--split"]);
    let config = setup.config(&site.devices);
    let mut daemon = Daemon::start(&config);
    for (id, sim) in &site.sims {
        // Junk first, then readings after it.
        sim.proc
            .stdout
            .wait_json(0, TIMEOUT, |v| v["event"] == "fault" && v["kind"] == "junk")
            .unwrap_or_else(|| panic!("{id}: the simulator injected no junk"));
        let wanted = records_of(&daemon, id).len() + 3;
        let got = daemon.records(id, wanted, TIMEOUT);
        assert_eq!(got.len(), wanted, "{id}\n{}", daemon.proc.transcript());
    }
    daemon.proc.terminate(Duration::from_secs(10));
    for (id, sim) in &mut site.sims {
        assert_records_were_sent(&records_of(&daemon, id), &sent(sim), id);
        let stats = sim.stop();
        assert_eq!(
            stats["connections_accepted"], 1,
            "{id}: noise is no reason to reconnect: {stats}"
        );
    }
}

/// Waits until `device` is `down` in the printed feed, then until `n`
/// records of it follow.
fn down_then_records(daemon: &Daemon, device: &str, n: usize) {
    let (down_at, _) = daemon
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| {
            v["type"] == "device_state" && v["device"] == device && v["state"] == "down"
        })
        .unwrap_or_else(|| panic!("{device} never went down\n{}", daemon.proc.transcript()));
    let mut from = down_at + 1;
    for _ in 0..n {
        let (i, _) = daemon
            .proc
            .stdout
            .wait_json(from, TIMEOUT, |v| {
                v["type"] == "record" && v["device"] == device
            })
            .unwrap_or_else(|| {
                panic!(
                    "{device}: readings did not resume after down\n{}",
                    daemon.proc.transcript()
                )
            });
        from = i + 1;
    }
}

/// One pty simulator per `(id, family, device keys)`, each started with
/// `sim_args`, and the device tables for them.
fn pty_meters(
    setup: &Setup,
    meters: &[(&'static str, &str, &str)],
    sim_args: &[&str],
) -> (Vec<(&'static str, Sim)>, String) {
    let mut devices = String::new();
    let mut sims = Vec::new();
    for (id, family, extra) in meters {
        let link = setup.path(&format!("tty-{id}"));
        let sim = Sim::pty(&link, &[&["--family", family], sim_args].concat());
        devices.push_str(&serial(id, family, &link, extra));
        sims.push((*id, sim));
    }
    (sims, devices)
}

/// Checks each meter's records against its simulator and stops it.
fn check_and_stop(daemon: &Daemon, sims: &mut [(&'static str, Sim)]) -> Vec<Value> {
    sims.iter_mut()
        .map(|(id, sim)| {
            assert_records_were_sent(&records_of(daemon, id), &sent(sim), id);
            sim.stop()
        })
        .collect()
}

/// Quick reconnects, so a test waits seconds, not the default minute.
const QUICK_RECONNECT: &str = "reconnect_min = \"200ms\"\nreconnect_max = \"1s\"";

#[test]
fn a_silent_meter_of_each_family_goes_down_and_comes_back() {
    let setup = Setup::new();
    let polled = format!("answer_timeout = \"500ms\"\n{QUICK_RECONNECT}");
    let pushed = format!("poll_interval = \"1s\"\n{QUICK_RECONNECT}");
    let (mut sims, devices) = pty_meters(
        &setup,
        &[
            ("xl2", "xl2", &polled),
            ("svan", "svantek", &polled),
            ("cel", "casella", &pushed),
        ],
        &["--silent-after", "3s", "--silent-for", "5s"],
    );
    let mut daemon = Daemon::start(&setup.config(&devices));
    for (id, _) in &sims {
        down_then_records(&daemon, id, 2);
    }
    daemon.proc.terminate(Duration::from_secs(10));
    check_and_stop(&daemon, &mut sims);
}

#[test]
fn an_unplugged_meter_of_each_family_is_reopened_at_its_path() {
    let setup = Setup::new();
    let (mut sims, devices) = pty_meters(
        &setup,
        &[
            ("xl2", "xl2", QUICK_RECONNECT),
            ("svan", "svantek", QUICK_RECONNECT),
            ("cel", "casella", QUICK_RECONNECT),
        ],
        &["--drop-every", "4s"],
    );
    let mut daemon = Daemon::start(&setup.config(&devices));
    for (id, _) in &sims {
        down_then_records(&daemon, id, 2);
    }
    daemon.proc.terminate(Duration::from_secs(10));
    for stats in check_and_stop(&daemon, &mut sims) {
        assert!(
            stats["connections_accepted"].as_u64() >= Some(2),
            "the pty came back and was reopened: {stats}"
        );
    }
}

/// Milliseconds between consecutive `received_at`s.
fn gaps_ms(records: &[Value]) -> Vec<i64> {
    let times: Vec<i64> = records
        .iter()
        .filter_map(slmd_e2e::received_at_ms)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn an_nl43_streams_while_watched_and_polls_otherwise() {
    let setup = Setup::new();
    let sim = Sim::tcp(&["--seed", "47"]);
    let device = format!(
        "[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{}\"\npoll_interval = \"2s\"\nlive_mode = \"stream\"\n",
        sim.address.as_deref().expect("address")
    );
    let config = setup.config(&device);
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);

    let idle = daemon.records("m", 3, TIMEOUT);
    let idle_gaps = gaps_ms(&idle[1..]);
    assert!(
        idle_gaps.iter().all(|g| *g >= 1500),
        "nobody watching: DOD? every 2 s, gaps {idle_gaps:?}"
    );

    let stream = Sse::open(&api, "/v1/stream?device=m", None);
    // The first record is the newest one (late joiner); then the stream.
    let watched = stream.wait_records(30, TIMEOUT);
    let watched_gaps = gaps_ms(&watched[5..]);
    let fast = watched_gaps.iter().filter(|g| **g < 300).count();
    assert!(
        fast * 10 >= watched_gaps.len() * 8,
        "watched: DRD? lines every 100 ms, gaps {watched_gaps:?}"
    );
    drop(stream);

    let at = daemon.proc.stdout.lines().len();
    let (after, _) = slmd_e2e::records_after(&daemon.proc, at, 25, TIMEOUT);
    // The daemon notices the viewer left at its next write to it, then
    // stops the output; from then on it polls every 2 s again.
    let tail = &after[after.len() - 3..];
    let after_gaps = gaps_ms(tail);
    assert!(
        after_gaps.iter().all(|g| *g >= 1500),
        "viewer gone: back to polling, gaps {after_gaps:?}"
    );
    assert!(
        sim.proc
            .stdout
            .json()
            .iter()
            .any(|v| v["event"] == "result" && v["command"] == "DRD?"),
        "the simulator saw DRD?"
    );
}

#[test]
fn check_names_each_family_meter_by_what_it_said() {
    let setup = Setup::new();
    let (mut sims, devices) = pty_meters(
        &setup,
        &[
            ("xl2", "xl2", ""),
            ("svan", "svantek", ""),
            ("cel", "casella", ""),
        ],
        &["--seed", "48"],
    );
    let config = setup.config(&devices);
    let out = std::process::Command::new(slmd_e2e::bin("slmd"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("slmd check runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {text}"))
            .to_owned()
    };
    assert!(
        line("xl2").contains(" ok ") && line("xl2").contains("answers, XL2 serial A2A-"),
        "{text}"
    );
    assert!(line("svan").contains("answers, SVAN 971"), "{text}");
    assert!(line("cel").contains("pushes lines"), "{text}");
    for (_, sim) in &mut sims {
        sim.stop();
    }
}
