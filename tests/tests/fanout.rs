//! Local fan-out end to end: the real `slmd` binary, real `slm-sim` meters,
//! the daemon's HTTP API over real sockets and a real Mosquitto broker
//! (SPEC §6). The tests with the broker need `mosquitto` and
//! `mosquitto_sub`, so they are `#[ignore]`d in a plain `cargo test`
//! (`.ci/run` installs both and runs them).

use serde_json::Value;
use slmd_e2e::api::{Broker, Sse, api_address};
use slmd_e2e::fleet::http;
use slmd_e2e::{Daemon, Setup, Sim, tcp_device, tcp_devices, tcp_sims};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The seqs of `records`.
fn seqs(records: &[Value]) -> BTreeSet<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

/// The seqs the MQTT subscriber saw on `…/reading` topics.
fn mqtt_seqs(sub: &slmd_e2e::Proc) -> BTreeSet<u64> {
    sub.stdout
        .lines()
        .iter()
        .filter_map(|l| l.split_once(' '))
        .filter(|(topic, _)| topic.ends_with("/reading"))
        .filter_map(|(_, payload)| serde_json::from_str::<Value>(payload).ok())
        .filter_map(|v| v["seq"].as_u64())
        .collect()
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn fifty_streams_and_an_mqtt_subscriber_share_one_meter_connection() {
    let setup = Setup::new();
    let broker = Broker::start(setup.dir.path(), 0);
    let mut sim = Sim::tcp(&["--seed", "600"]);
    let devices = tcp_device("m0", sim.address.as_deref().expect("address"), "");
    let config = setup.config(&format!(
        "{devices}\n[mqtt]\nurl = \"{}\"\ntopic_prefix = \"slmd\"\n",
        broker.url()
    ));
    let mqtt = broker.subscribe("slmd/gw-test/#");
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);

    let streams: Vec<Sse> = (0..50)
        .map(|_| Sse::open(&api, "/v1/stream", None))
        .collect();
    for stream in &streams {
        assert_eq!(stream.status(), 200);
    }
    // Every stream gets a run of live records.
    for (i, stream) in streams.iter().enumerate() {
        let got = stream.wait_records(6, TIMEOUT);
        assert!(got.len() >= 6, "stream {i} got {} records", got.len());
    }
    let last = streams
        .iter()
        .map(|s| *seqs(&s.records()).iter().max().unwrap_or(&0))
        .min()
        .unwrap_or(0);
    // The MQTT subscriber has them too.
    slmd_e2e::poll_until(TIMEOUT, || mqtt_seqs(&mqtt).contains(&last).then_some(()))
        .unwrap_or_else(|| panic!("MQTT lacks seq {last}\n{}", mqtt.transcript()));
    daemon.proc.terminate(TIMEOUT);

    // Over a common window every subscriber saw exactly the records the
    // daemon produced: nothing missing, nothing extra.
    let first = streams
        .iter()
        .map(|s| *seqs(&s.records()).iter().min().unwrap_or(&0))
        .max()
        .unwrap_or(0);
    let produced: BTreeSet<u64> = seqs(&daemon.printed_records())
        .into_iter()
        .filter(|s| (first..=last).contains(s))
        .collect();
    assert!(produced.len() >= 4, "a window of records: {produced:?}");
    for (i, stream) in streams.iter().enumerate() {
        let got: BTreeSet<u64> = seqs(&stream.records())
            .into_iter()
            .filter(|s| (first..=last).contains(s))
            .collect();
        assert_eq!(got, produced, "stream {i}");
    }
    let got: BTreeSet<u64> = mqtt_seqs(&mqtt)
        .into_iter()
        .filter(|s| (first..=last).contains(s))
        .collect();
    assert_eq!(got, produced, "MQTT subscriber");
    let stats = sim.stop();
    assert_eq!(
        stats["connections_accepted"], 1,
        "51 subscribers, one meter connection: {stats}"
    );
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn mqtt_gets_retained_status_and_the_last_will_when_the_daemon_dies() {
    let setup = Setup::new();
    let broker = Broker::start(setup.dir.path(), 0);
    let sims = tcp_sims(1, 610);
    let config = setup.config(&format!(
        "{}\n[mqtt]\nurl = \"{}\"\n",
        tcp_devices(&sims),
        broker.url()
    ));
    let daemon = Daemon::start(&config);
    daemon.records("m0", 2, TIMEOUT);
    // A subscriber that connects later still gets the retained states.
    let status = broker.subscribe("slmd/gw-test/+/status");
    let gateway = broker.subscribe("slmd/gw-test/status");
    status
        .stdout
        .wait_from(0, TIMEOUT, |l| l == "slmd/gw-test/m0/status connected")
        .unwrap_or_else(|| panic!("no retained device status\n{}", status.transcript()));
    gateway
        .stdout
        .wait_from(0, TIMEOUT, |l| l == "slmd/gw-test/status online")
        .unwrap_or_else(|| panic!("no retained online\n{}", gateway.transcript()));
    let seen = gateway.stdout.lines().len();
    daemon.proc.signal(nix::sys::signal::Signal::SIGKILL);
    gateway
        .stdout
        .wait_from(seen, TIMEOUT, |l| l == "slmd/gw-test/status offline")
        .unwrap_or_else(|| panic!("no last will\n{}", gateway.transcript()));
}

#[test]
#[ignore = "needs mosquitto, mosquitto_sub; .ci/run installs them"]
fn a_broker_outage_stalls_neither_meters_nor_buffer_and_publishing_resumes() {
    let setup = Setup::new();
    let mut broker = Broker::start(setup.dir.path(), 0);
    let port = broker.port;
    let sims = tcp_sims(2, 620);
    let config = setup.config(&format!(
        "{}\n[mqtt]\nurl = \"{}\"\n",
        tcp_devices(&sims),
        broker.url()
    ));
    let daemon = Daemon::start(&config);
    let before = broker.subscribe("slmd/gw-test/+/reading");
    slmd_e2e::poll_until(TIMEOUT, || (!mqtt_seqs(&before).is_empty()).then_some(()))
        .unwrap_or_else(|| panic!("no readings over MQTT\n{}", before.transcript()));

    broker.proc.terminate(TIMEOUT);
    // Meters keep being read, records keep being numbered and stored.
    let at = daemon.proc.stdout.lines().len();
    let during = slmd_e2e::records_after(&daemon.proc, at, 6, TIMEOUT).0;
    assert_eq!(during.len(), 6, "records kept flowing during the outage");

    let broker = Broker::start(setup.dir.path(), port);
    let after = broker.subscribe("slmd/gw-test/+/reading");
    let resumed = slmd_e2e::poll_until(TIMEOUT, || {
        let got = mqtt_seqs(&after);
        got.iter()
            .any(|s| *s > seqs(&during).iter().max().copied().unwrap_or(0))
            .then_some(got)
    });
    assert!(
        resumed.is_some(),
        "publishing resumed after the broker came back\n{}\n{}",
        after.transcript(),
        daemon.proc.transcript()
    );
    // Committed, as the API serves it (the daemon holds the file).
    let api = slmd_e2e::api::api_address(&daemon.proc);
    let stored = slmd_e2e::poll_until(Duration::from_secs(10), || {
        let stored: BTreeSet<u64> = slmd_e2e::api::committed_all(&api, &["m0", "m1"])?
            .into_keys()
            .collect();
        seqs(&during).is_subset(&stored).then_some(stored)
    });
    assert!(
        stored.is_some(),
        "records from the outage are in the buffer\n{}",
        daemon.proc.transcript()
    );
}

/// Gaps in ms between consecutive records of `device` in `records`.
fn gaps_ms(records: &[Value]) -> Vec<i64> {
    let times: Vec<i64> = records
        .iter()
        .filter_map(slmd_e2e::received_at_ms)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn a_meter_is_polled_fast_only_while_someone_watches_it() {
    let setup = Setup::new();
    let sim = Sim::tcp(&["--seed", "630"]);
    let device = tcp_device(
        "m0",
        sim.address.as_deref().expect("address"),
        "poll_interval = \"4s\"\nlive_poll_interval = \"1s\"",
    );
    let config = setup.config(&device);
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);

    let idle = daemon.records("m0", 3, TIMEOUT);
    let idle_gaps = gaps_ms(&idle[1..]);
    assert!(
        idle_gaps.iter().all(|g| *g >= 3500),
        "nobody watching: one poll per 4 s, gaps {idle_gaps:?}"
    );

    let stream = Sse::open(&api, "/v1/stream?device=m0", None);
    // The first record is the newest one (late joiner); then live ones.
    let watched = stream.wait_records(6, TIMEOUT);
    let watched_gaps = gaps_ms(&watched[2..]);
    assert!(
        watched_gaps.iter().all(|g| *g < 2000),
        "watched: one poll per second, gaps {watched_gaps:?}"
    );
    drop(stream);

    // The daemon notices the viewer left at its next write to it (a record
    // or two later); from then on the meter is polled slowly again.
    let at = daemon.proc.stdout.lines().len();
    let (after, _) = slmd_e2e::records_after(&daemon.proc, at, 6, TIMEOUT);
    let after_gaps = gaps_ms(&after[3..]);
    assert!(
        after_gaps.iter().all(|g| *g >= 3500),
        "viewer gone: back to 4 s, gaps {after_gaps:?}"
    );
    // The simulator answered every poll it got: the rate it saw is the
    // rate the daemon recorded. (Its report of an answer may reach the test
    // a moment after the daemon printed the reading.)
    let recorded = daemon.printed_records().len();
    let answered = slmd_e2e::poll_until(Duration::from_secs(10), || {
        let n = sim.dod_lines().len();
        (n >= recorded).then_some(n)
    });
    assert!(
        answered.is_some(),
        "the simulator answered {} polls, the daemon recorded {recorded}",
        sim.dod_lines().len()
    );
}

#[test]
fn a_stream_closes_after_stream_max_and_a_late_joiner_sees_the_present_first() {
    let setup = Setup::new();
    let sims = tcp_sims(2, 640);
    let config = setup.config_with_api(&tcp_devices(&sims), "stream_max = \"3s\"");
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    daemon.records("m0", 2, TIMEOUT);
    daemon.records("m1", 2, TIMEOUT);

    let stream = Sse::open(&api, "/v1/stream", None);
    let first = stream.wait_records(2, TIMEOUT);
    let devices: BTreeSet<&str> = first[..2]
        .iter()
        .filter_map(|r| r["device"].as_str())
        .collect();
    assert_eq!(
        devices,
        BTreeSet::from(["m0", "m1"]),
        "the newest record of each meter comes first"
    );
    assert!(
        stream.feed.wait_closed(Duration::from_secs(20)),
        "the stream ends by itself after stream_max"
    );
    assert!(
        stream.events().iter().any(|e| e == "end"),
        "and says so before closing: {:?}",
        stream.feed.lines()
    );
}

#[test]
fn records_on_every_route_carry_only_the_public_fields() {
    let setup = Setup::new();
    let sims = tcp_sims(1, 650);
    let config = setup.config(&tcp_devices(&sims));
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    let stream = Sse::open(&api, "/v1/stream", None);
    stream.wait_records(3, TIMEOUT);
    daemon.records("m0", 4, TIMEOUT);

    let public: BTreeSet<&str> = [
        "seq",
        "device",
        "received_at",
        "device_time",
        "metrics",
        "state",
        "flags",
    ]
    .into();
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let public_owned: BTreeSet<String> = public.iter().map(|k| (*k).to_owned()).collect();
    for record in stream.records() {
        assert_eq!(keys(&record), public_owned, "stream: {record}");
    }
    let live = http(&api, "GET", "/v1/devices/m0/live", &[], b"").expect("live");
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(keys(&live.json()), public_owned);
    let history = http(&api, "GET", "/v1/devices/m0/history?limit=10", &[], b"").expect("history");
    assert_eq!(history.status, 200, "{}", history.body);
    let history = history.json();
    let items = history
        .as_array()
        .or_else(|| history["records"].as_array())
        .cloned()
        .unwrap_or_default();
    assert!(!items.is_empty(), "{history}");
    for record in &items {
        assert_eq!(keys(record), public_owned, "history: {record}");
    }
    // Health data is in status only.
    let status = http(&api, "GET", "/v1/status", &[], b"").expect("status");
    assert_eq!(status.status, 200);
    assert!(status.body.contains("battery"), "{}", status.body);
    for text in [&live.body, &stream.feed.lines().join("\n")] {
        for health in ["battery", "\"sd", "raw"] {
            assert!(!text.contains(health), "{health} leaked into {text}");
        }
    }
}

#[test]
fn the_api_refuses_a_public_address_without_tokens_and_checks_bearer_tokens() {
    let setup = Setup::new();
    let sims = tcp_sims(1, 660);
    // Public address, no tokens: refused at start with the exact place.
    let path = setup.path("public.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"gw\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"0.0.0.0:0\"\n\n{}",
            setup.path("state").display(),
            tcp_devices(&sims)
        ),
    )
    .expect("write");
    let mut refused = Daemon::start(&path);
    let status = refused.proc.wait(TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(78), "{}", refused.proc.transcript());
    let stderr = refused.proc.stderr.lines().join("\n");
    assert!(
        stderr.contains("api.listen") && stderr.contains("requires [api].tokens"),
        "{stderr}"
    );

    // With tokens, every route wants one.
    let config = setup.config_with_api(&tcp_devices(&sims), "tokens = [\"s3cret-api\"]");
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    daemon.records("m0", 1, TIMEOUT);
    for route in [
        "/v1/status",
        "/v1/devices/m0/live",
        "/v1/devices/m0/history",
        "/metrics",
    ] {
        let none = http(&api, "GET", route, &[], b"").expect("request");
        assert_eq!(none.status, 401, "{route} without a token: {}", none.body);
        let wrong =
            http(&api, "GET", route, &[("Authorization", "Bearer nope")], b"").expect("request");
        assert_eq!(wrong.status, 401, "{route} with a wrong token");
        let right = http(
            &api,
            "GET",
            route,
            &[("Authorization", "Bearer s3cret-api")],
            b"",
        )
        .expect("request");
        assert_eq!(right.status, 200, "{route}: {}", right.body);
    }
    assert_eq!(Sse::open(&api, "/v1/stream", None).status(), 401);
    assert_eq!(
        Sse::open(&api, "/v1/stream", Some("s3cret-api")).status(),
        200
    );
    assert!(
        !daemon.proc.transcript().contains("s3cret-api"),
        "the API token is never logged"
    );
}

#[test]
fn after_a_restart_the_newest_record_is_served_from_the_buffer() {
    let setup = Setup::new();
    let mut sims = tcp_sims(1, 670);
    let config = setup.config(&tcp_devices(&sims));
    let mut daemon = Daemon::start(&config);
    daemon.records("m0", 3, TIMEOUT);
    daemon.proc.terminate(TIMEOUT);
    let mut newest = daemon
        .printed_records()
        .last()
        .cloned()
        .expect("records before the restart");
    // The printer tags its lines; the record itself has no `type`.
    newest.as_object_mut().map(|o| o.remove("type"));
    // The meter is gone now: whatever `live` shows comes from the buffer.
    sims[0].stop();
    let again = Daemon::start(&config);
    let api = api_address(&again.proc);
    let live = http(&api, "GET", "/v1/devices/m0/live", &[], b"").expect("live");
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.json(), newest, "the record from before the restart");
    let stream = Sse::open(&api, "/v1/stream", None);
    let first = stream.wait_records(1, TIMEOUT);
    assert_eq!(first.first(), Some(&newest), "a late joiner sees it first");
}
