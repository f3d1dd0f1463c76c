//! The fleet simulator's heartbeat route over real sockets (SPEC §7,
//! "Heartbeat"): accepted and read back, bad bodies named by field, tokens
//! and grace, faults by route, gzip, liveness (offline after 3 silent
//! intervals, online again at the next heartbeat), and the real `fleet-sim`
//! binary's lines. No fixed sleeps: every wait is on an event, a line or a
//! poll with a deadline.

mod fleet_common;

use fleet_common::{
    DEADLINE, Fleet, GW, Reply, Stdout, client, drain, gzip, next_json, spawn_fleet_sim, start,
    stop_fleet_sim,
};
use serde_json::{Value, json};
use slmd_hil::fleet::{FleetEvent, FleetSimConfig, HeartbeatLine, Route, TokenRole, fingerprint};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// The heartbeat body of SPEC §7 as the daemon sends it, from `gateway`.
fn beat(gateway: &str) -> Value {
    json!({"gateway": gateway, "version": "0.1.0", "uptime_s": 12,
           "sent_at": "2026-12-02T15:00:00.123Z", "interval_s": 60,
           "meters": [{"id": "nl43-north", "protocol": "nl43", "state": "connected",
                       "run_state": "measuring", "since": "2026-12-02T14:59:50.000Z",
                       "identity": {"model": "NL-43", "serial": "00412345", "firmware": "1.2"},
                       "last_seq": 1041,
                       "health": {"battery": "Full", "sd_free_percent": 87, "clock_offset_s": -1},
                       "last_error": null},
                      {"id": "xl2-south", "protocol": "xl2", "state": "down",
                       "since": null, "identity": null, "last_seq": null,
                       "health": {"battery": "unknown", "sd_free_percent": null},
                       "last_error": "no answer for 5 s"}],
           "buffer": {"records": 123, "unsent": 4, "oldest_unsent": "2026-12-02T14:59:58.000Z"}})
}

/// [`beat`] with `interval_s` set (or removed, with `None`).
fn beat_every(gateway: &str, interval_s: Option<f64>) -> Value {
    with(beat(gateway), "/interval_s", interval_s.map(|s| json!(s)))
}

/// `body` with the value at JSON pointer `at` set to `value`, or removed
/// with `None`.
fn with(mut body: Value, at: &str, value: Option<Value>) -> Value {
    match value {
        Some(value) => *body.pointer_mut(at).unwrap_or_else(|| panic!("no {at}")) = value,
        None => {
            let (parent, key) = at.rsplit_once('/').expect("a pointer");
            body.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("no object at `{parent}`"))
                .remove(key);
        }
    }
    body
}

impl Fleet {
    /// Sends `body` as a JSON heartbeat with `token`.
    async fn heartbeat(&self, token: &str, body: &Value) -> Reply {
        self.post_json("/api/fleet/heartbeat", token, body).await
    }

    /// Queues `fault` over the admin route.
    async fn fault(&self, fault: Value) -> Value {
        self.admin("POST", "/admin/faults", &fault).await
    }

    /// `GET /admin/heartbeats?gateway=`'s entries.
    async fn heartbeats(&self, gateway: &str) -> Vec<Value> {
        self.get(&format!("/admin/heartbeats?gateway={gateway}"))
            .await["heartbeats"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no heartbeats list"))
    }

    /// The `/admin/liveness` entry of `gateway`.
    async fn liveness_of(&self, gateway: &str) -> Value {
        let all = self.get("/admin/liveness").await;
        all["gateways"]
            .as_array()
            .and_then(|list| list.iter().find(|g| g["gateway"] == gateway).cloned())
            .unwrap_or_else(|| panic!("{gateway} not in {all}"))
    }
}

/// The next event that `pick` maps to something, within [`DEADLINE`].
async fn wait_event<T>(
    events: &mut broadcast::Receiver<FleetEvent>,
    what: &str,
    mut pick: impl FnMut(FleetEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(found) = pick(event) {
                        return found;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event in time"))
}

/// The line of the next `heartbeat` event.
async fn next_heartbeat(events: &mut broadcast::Receiver<FleetEvent>) -> HeartbeatLine {
    wait_event(events, "heartbeat", |e| match e {
        FleetEvent::Heartbeat(line) => Some(line),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_heartbeat_is_accepted_with_204_and_read_back() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let mut events = fleet.sim.events();
    let mut body = beat(GW);
    // More keys are welcome (SPEC §7): kept as received.
    body["site"] = json!({"name": "north fence"});
    body["meters"][0]["firmware_notes"] = json!("beta");
    let reply = fleet.heartbeat("t", &body).await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert_eq!(reply.text, "", "204 has no body");

    let line = next_heartbeat(&mut events).await;
    assert_eq!(line.gateway, GW);
    assert_eq!(line.meters, 2);
    assert_eq!(
        line.states,
        vec![
            ("nl43-north".to_owned(), "connected/measuring".to_owned()),
            ("xl2-south".to_owned(), "down".to_owned()),
        ]
    );
    assert_eq!(line.token, fingerprint("t"));
    assert_eq!(line.interval_ms, 60_000);
    assert!(!line.gzip);
    assert_eq!(line.bytes, body.to_string().len() as u64);

    let kept = fleet.heartbeats(GW).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["body"], body, "the body as received");
    assert_eq!(kept[0]["status"], 204);
    assert_eq!(kept[0]["token"], fingerprint("t"));
    assert_eq!(kept[0]["token_role"], "current");
    assert!(kept[0]["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    let in_process = fleet.sim.heartbeats(GW);
    assert_eq!(in_process.len(), 1);
    assert_eq!(in_process[0].body, body);
    assert_eq!(in_process[0].token_role, TokenRole::Current);

    // A second one; `limit` keeps the newest, oldest first.
    let mut second = beat(GW);
    second["uptime_s"] = json!(72);
    assert_eq!(fleet.heartbeat("t", &second).await.status, 204);
    let all = fleet.heartbeats(GW).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["body"]["uptime_s"], 12);
    assert_eq!(all[1]["body"]["uptime_s"], 72);
    let last = fleet
        .get(&format!("/admin/heartbeats?gateway={GW}&limit=1"))
        .await;
    assert_eq!(last["heartbeats"][0]["body"]["uptime_s"], 72);
    assert_eq!(last["heartbeats"].as_array().map(Vec::len), Some(1));
    assert!(fleet.heartbeats("nobody").await.is_empty());
    for bad in [
        "/admin/heartbeats",
        "/admin/heartbeats?gateway=gw&limit=x",
        "/admin/heartbeats?gateway=gw&epoch=1",
    ] {
        let reply = fleet.get_raw(bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text);
        assert!(reply.json()["error"].is_string(), "{bad}");
    }

    // In the request log, not in the ingest counters.
    let log = fleet.get("/admin/requests").await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["route"], "heartbeat");
    assert_eq!(log[0]["status"], 204);
    assert_eq!(log[0]["outcome"], "accepted");
    assert_eq!(log[0]["gateway"], GW);
    assert_eq!(log[0]["meters"], 2);
    assert_eq!(fleet.push_seqs("t", &[1]).await.status, 200);
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[2]["route"], "ingest");
    assert!(log[2].get("meters").is_none(), "{}", log[2]);
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["requests"], 1, "{stats}");
    assert_eq!(stats["by_status"], json!({"200": 1}));
    assert_eq!(stats["heartbeats"], 2);
    assert_eq!(stats["heartbeat_requests"], 2);

    let live = fleet.liveness_of(GW).await;
    assert_eq!(live["online"], true);
    assert_eq!(live["heartbeats"], 2);
    assert_eq!(live["interval_ms"], 60_000);
    assert_eq!(live["offline_episodes"], 0);
    fleet.stop().await;
}

#[tokio::test]
async fn bad_heartbeat_bodies_are_400_naming_the_field() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let cases: Vec<(Value, &str)> = [
        ("/gateway", None, "gateway: missing field"),
        (
            "/gateway",
            Some(json!("")),
            "gateway: expected a non-empty string",
        ),
        (
            "/meters/1/state",
            Some(json!("asleep")),
            "meters[1].state: expected one of connected, connecting, down, failed",
        ),
        (
            "/meters/0/run_state",
            Some(json!("running")),
            "meters[0].run_state: expected one of measuring",
        ),
        (
            "/uptime_s",
            Some(json!(-3)),
            "uptime_s: expected an unsigned integer",
        ),
        (
            "/sent_at",
            Some(json!("2026-12-02 15:00")),
            "sent_at: `2026-12-02 15:00` is not an RFC 3339",
        ),
        (
            "/interval_s",
            Some(json!(0)),
            "interval_s: expected a positive number",
        ),
        (
            "/meters/0/health/battery",
            Some(json!({"level": 3})),
            "meters[0].health.battery: expected a number, a string or null",
        ),
        (
            "/meters/0/identity/serial",
            Some(json!(412_345)),
            "meters[0].identity.serial: expected a string or null",
        ),
        ("/buffer/unsent", None, "buffer.unsent: missing field"),
        (
            "/buffer/oldest_unsent",
            Some(json!(17)),
            "buffer.oldest_unsent: expected an RFC 3339",
        ),
        ("", Some(json!([1, 2])), "expected an object"),
    ]
    .into_iter()
    .map(|(at, value, detail)| (with(beat(GW), at, value), detail))
    .collect();

    for (body, detail) in &cases {
        let reply = fleet.heartbeat("t", body).await;
        assert_eq!(reply.status, 400, "{detail}: {}", reply.text);
        let answer = reply.json();
        assert_eq!(answer["error"], "malformed", "{answer}");
        let said = answer["detail"].as_str().unwrap_or_default();
        assert!(
            said.starts_with(detail),
            "expected `{detail}…`, got `{said}`"
        );
    }

    // Not JSON, not declared as JSON.
    let not_json = fleet.post(
        &fleet.client,
        "/api/fleet/heartbeat",
        Some("t"),
        &[("content-type", "application/json")],
        b"{\"gateway\":".to_vec(),
    );
    let reply = fleet.send(not_json).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the body is not JSON"),
        "{}",
        reply.text
    );
    let text = fleet.post(
        &fleet.client,
        "/api/fleet/heartbeat",
        Some("t"),
        &[("content-type", "text/plain")],
        beat(GW).to_string().into_bytes(),
    );
    let reply = fleet.send(text).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not application/json")
    );

    // Nothing kept; every refusal logged with its detail and the gateway
    // when the body named one.
    assert!(fleet.sim.heartbeats(GW).is_empty());
    assert!(fleet.sim.liveness().is_empty());
    let log = fleet.sim.requests();
    assert_eq!(log.len(), cases.len() + 2);
    assert!(log.iter().all(|entry| entry.route == Route::Heartbeat
        && entry.status == Some(400)
        && entry.detail.is_some()));
    assert_eq!(log[2].gateway.as_deref(), Some(GW));
    let stats = fleet.sim.stats();
    assert_eq!(
        (stats.heartbeats, stats.heartbeat_requests),
        (0, log.len() as u64)
    );
    assert_eq!(stats.requests, 0, "no ingest request");
    fleet.stop().await;
}

#[tokio::test]
async fn unknown_tokens_are_401_and_the_previous_one_is_honoured_within_grace() {
    let mut config = FleetSimConfig::new("t2");
    config.previous_token = Some("t1".to_owned());
    let fleet = start(config).await;
    let mut events = fleet.sim.events();

    let unknown = fleet.heartbeat("nope", &beat(GW)).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json(), json!({"error": "unknown or expired token"}));
    let refused = wait_event(&mut events, "heartbeat_refused", |e| match e {
        FleetEvent::HeartbeatRefused(log) => Some(log),
        _ => None,
    })
    .await;
    assert_eq!(refused.status, Some(401));
    assert_eq!(refused.token.as_deref(), Some(fingerprint("nope").as_str()));
    // The token comes before the body: a bad body with a bad token is 401.
    assert_eq!(fleet.heartbeat("nope", &json!({})).await.status, 401);
    let no_token = fleet.post(
        &fleet.client,
        "/api/fleet/heartbeat",
        None,
        &[("content-type", "application/json")],
        beat(GW).to_string().into_bytes(),
    );
    assert_eq!(fleet.send(no_token).await.status, 401);

    assert_eq!(fleet.heartbeat("t2", &beat(GW)).await.status, 204);
    assert_eq!(
        fleet.heartbeat("t1", &beat(GW)).await.status,
        204,
        "the previous token within its grace"
    );
    let kept = fleet.heartbeats(GW).await;
    assert_eq!(kept[0]["token_role"], "current");
    assert_eq!(kept[1]["token_role"], "previous");
    assert_eq!(kept[1]["token"], fingerprint("t1"));

    fleet
        .admin("POST", "/admin/expire-previous", &json!({}))
        .await;
    assert_eq!(fleet.heartbeat("t1", &beat(GW)).await.status, 401);
    // A rotation: the old current token is the previous one now.
    fleet
        .admin("POST", "/admin/rotate", &json!({"token": "t3"}))
        .await;
    assert_eq!(fleet.heartbeat("t2", &beat(GW)).await.status, 204);
    assert_eq!(fleet.heartbeat("t3", &beat(GW)).await.status, 204);
    assert_eq!(fleet.sim.heartbeats(GW).len(), 4);
    let log = fleet.get("/admin/requests").await;
    let outcomes: Vec<&Value> = log
        .as_array()
        .expect("a list")
        .iter()
        .filter(|entry| entry["status"] == 401)
        .map(|entry| &entry["outcome"])
        .collect();
    assert_eq!(outcomes, vec![&json!("unknown_token"); 4]);
    fleet.stop().await;
}

#[tokio::test]
async fn faults_apply_only_to_their_route() {
    let fleet = start(FleetSimConfig::new("t")).await;

    // A heartbeat fault leaves ingest alone.
    let pending = fleet
        .fault(json!({"kind": "status", "status": 503, "retry_after": 2, "route": "heartbeat"}))
        .await;
    assert_eq!(pending["pending"][0]["route"], "heartbeat");
    assert_eq!(fleet.push_seqs("t", &[1]).await.status, 200);
    let hit = fleet.heartbeat("t", &beat(GW)).await;
    assert_eq!(hit.status, 503);
    assert_eq!(hit.retry_after.as_deref(), Some("2"));
    assert_eq!(hit.json()["error"], "injected fault");
    assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 204);

    // An ingest fault (the default route) leaves heartbeats alone.
    let pending = fleet.fault(json!({"kind": "status", "status": 500})).await;
    assert_eq!(pending["pending"][0]["route"], "ingest");
    assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 204);
    assert_eq!(fleet.push_seqs("t", &[2]).await.status, 500);
    assert_eq!(fleet.push_seqs("t", &[2]).await.status, 200);

    // `all`: one count shared by both routes, before the token.
    fleet
        .fault(json!({"kind": "status", "status": 429, "count": 3, "route": "all"}))
        .await;
    assert_eq!(fleet.heartbeat("unknown", &beat(GW)).await.status, 429);
    assert_eq!(fleet.push_seqs("t", &[3]).await.status, 429);
    assert_eq!(fleet.heartbeat("t", &json!({})).await.status, 429);
    assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 204);
    assert_eq!(fleet.push_seqs("t", &[3]).await.status, 200);

    // The fleet is down, then back.
    fleet
        .fault(json!({"kind": "status", "status": 503, "count": 100_000, "route": "all"}))
        .await;
    for _ in 0..3 {
        assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 503);
        assert_eq!(fleet.push_seqs("t", &[4]).await.status, 503);
    }
    let waiting = fleet.get("/admin/faults").await;
    assert_eq!(waiting["pending"][0]["count"], 100_000 - 6);
    assert_eq!(waiting["pending"][0]["route"], "all");
    assert_eq!(
        fleet.admin("DELETE", "/admin/faults", &json!(null)).await,
        json!({"dropped": 1})
    );
    assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 204);
    assert_eq!(fleet.push_seqs("t", &[4]).await.status, 200);

    // A heartbeat not_json fault: kept, answered 200 HTML.
    fleet
        .fault(json!({"kind": "not_json", "route": "heartbeat"}))
        .await;
    let html = fleet.heartbeat("t", &beat(GW)).await;
    assert_eq!(html.status, 200);
    assert_eq!(html.text, "<html>OK</html>");
    assert!(
        html.content_type
            .as_deref()
            .unwrap_or_default()
            .starts_with("text/html")
    );
    let kept = fleet.heartbeats(GW).await;
    assert_eq!(kept.last().expect("kept")["status"], 200);

    // Bad route names are refused and queue nothing.
    let bad = fleet
        .send(
            fleet
                .client
                .post(format!("{}/admin/faults", fleet.base))
                .body(r#"{"kind": "hang", "route": "alerts"}"#),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("route")
    );
    assert_eq!(fleet.get("/admin/faults").await, json!({"pending": []}));

    // The log: faulted heartbeats name the fault; ingest stats saw only
    // ingest requests.
    let log = fleet.sim.requests();
    let faulted_heartbeats = log
        .iter()
        .filter(|e| e.route == Route::Heartbeat && e.fault.is_some())
        .count();
    assert_eq!(faulted_heartbeats, 1 + 2 + 3 + 1);
    let stats = fleet.sim.stats();
    assert_eq!(stats.requests, 9, "{stats:?}");
    assert_eq!(stats.by_status.get(&503), Some(&3));
    assert_eq!(stats.heartbeat_requests, 11);
    assert_eq!(stats.heartbeats, 5);
    fleet.stop().await;
}

#[tokio::test]
async fn a_hang_fault_on_heartbeat_holds_it_and_the_next_one_is_answered() {
    let fleet = start(FleetSimConfig::new("t")).await;
    fleet
        .fault(json!({"kind": "hang", "route": "heartbeat"}))
        .await;
    let impatient = client(Some(Duration::from_millis(300)));
    let request = fleet.post(
        &impatient,
        "/api/fleet/heartbeat",
        Some("t"),
        &[("content-type", "application/json")],
        beat(GW).to_string().into_bytes(),
    );
    let error = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("the client gives up in time")
        .expect_err("no answer to a hung request");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(fleet.heartbeat("t", &beat(GW)).await.status, 204);
    assert_eq!(
        fleet.sim.heartbeats(GW).len(),
        1,
        "the hung one is not kept"
    );
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["outcome"], "hang");
    assert_eq!(log[0]["route"], "heartbeat");
    assert_eq!(log[0]["status"], Value::Null);
    assert_eq!(fleet.sim.stats().hung, 0, "hung counts ingest requests");
    fleet.stop().await;
}

#[tokio::test]
async fn a_gzip_heartbeat_is_accepted() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let body = beat(GW);
    let compressed = gzip(body.to_string().as_bytes());
    let wire = compressed.len() as u64;
    let request = fleet.post(
        &fleet.client,
        "/api/fleet/heartbeat",
        Some("t"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        compressed,
    );
    let mut events = fleet.sim.events();
    assert_eq!(fleet.send(request).await.status, 204);
    let line = next_heartbeat(&mut events).await;
    assert!(line.gzip);
    assert_eq!(line.bytes, wire, "bytes on the wire");
    assert_eq!(fleet.sim.heartbeats(GW)[0].body, body);

    let broken = fleet.post(
        &fleet.client,
        "/api/fleet/heartbeat",
        Some("t"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        b"not gzip at all".to_vec(),
    );
    let reply = fleet.send(broken).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("gzip")
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_silent_gateway_is_marked_offline_and_online_again() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let mut events = fleet.sim.events();
    // Taken before sending: the server's clock starts no earlier.
    let last = Instant::now();
    assert_eq!(
        fleet
            .heartbeat("t", &beat_every(GW, Some(0.2)))
            .await
            .status,
        204
    );
    // Another gateway keeps its default-sized interval and stays online.
    assert_eq!(fleet.heartbeat("t", &beat("gw-other")).await.status, 204);

    // Nothing more arrives: the server's timer notices by itself.
    let (gateway, interval_ms, last_at) = wait_event(&mut events, "gateway_offline", |e| match e {
        FleetEvent::GatewayOffline {
            gateway,
            interval_ms,
            last_heartbeat_at,
        } => Some((gateway, interval_ms, last_heartbeat_at)),
        _ => None,
    })
    .await;
    let silent = last.elapsed();
    assert_eq!(gateway, GW);
    assert_eq!(interval_ms, 200);
    assert!(
        silent >= Duration::from_millis(600),
        "offline after 3 intervals, not before: {silent:?}"
    );
    assert!(
        silent < Duration::from_millis(600) + Duration::from_secs(2),
        "offline promptly: {silent:?}"
    );
    // The mark and the event are made under one lock: the event means
    // the liveness already says so.
    let live = fleet
        .sim
        .liveness()
        .into_iter()
        .find(|g| g.gateway == GW)
        .expect("known gateway");
    assert!(!live.online);
    assert_eq!(live.offline_episodes, 1);
    assert_eq!(live.last_heartbeat_at, last_at);
    let over_http = fleet.liveness_of(GW).await;
    assert_eq!(over_http["online"], false);
    assert_eq!(over_http["interval_ms"], 200);
    assert_eq!(over_http["offline_episodes"], 1);
    assert_eq!(fleet.liveness_of("gw-other").await["online"], true);

    // Back (with a longer interval, so a loaded machine cannot miss the
    // keep-alive below): one online event, the episode counted once.
    assert_eq!(
        fleet
            .heartbeat("t", &beat_every(GW, Some(0.5)))
            .await
            .status,
        204
    );
    let (gateway, offline_for_ms) = wait_event(&mut events, "gateway_online", |e| match e {
        FleetEvent::GatewayOnline {
            gateway,
            offline_for_ms,
            ..
        } => Some((gateway, offline_for_ms)),
        FleetEvent::GatewayOffline { gateway, .. } => panic!("{gateway} offline twice"),
        _ => None,
    })
    .await;
    assert_eq!(gateway, GW);
    assert!(offline_for_ms < 60_000, "{offline_for_ms}");
    let live = fleet.liveness_of(GW).await;
    assert_eq!(live["online"], true);
    assert_eq!(live["offline_episodes"], 1);
    assert_eq!(live["heartbeats"], 2);

    assert_eq!(live["interval_ms"], 500);
    // Kept alive by regular heartbeats (well within 3 intervals): no
    // second episode.
    let mut events = fleet.sim.events();
    for _ in 0..8 {
        let sent = Instant::now();
        assert_eq!(
            fleet
                .heartbeat("t", &beat_every(GW, Some(0.5)))
                .await
                .status,
            204
        );
        tokio::time::sleep_until(sent + Duration::from_millis(100)).await;
    }
    for event in drain(&mut events) {
        assert!(
            !matches!(event, FleetEvent::GatewayOffline { .. }),
            "{event:?}"
        );
    }
    fleet.stop().await;
}

#[tokio::test]
async fn without_interval_s_the_configured_interval_applies() {
    let mut config = FleetSimConfig::new("t");
    config.heartbeat_interval = Duration::from_millis(150);
    let fleet = start(config).await;
    let mut events = fleet.sim.events();
    assert_eq!(
        fleet.heartbeat("t", &beat_every(GW, None)).await.status,
        204
    );
    let interval_ms = wait_event(&mut events, "gateway_offline", |e| match e {
        FleetEvent::GatewayOffline { interval_ms, .. } => Some(interval_ms),
        _ => None,
    })
    .await;
    assert_eq!(interval_ms, 150);
    // A later heartbeat naming its interval replaces the default.
    assert_eq!(
        fleet
            .heartbeat("t", &beat_every(GW, Some(30.0)))
            .await
            .status,
        204
    );
    assert_eq!(fleet.liveness_of(GW).await["interval_ms"], 30_000);
    fleet.stop().await;
}

/// The next stdout line whose event is `event`.
async fn next_event(lines: &mut Stdout, event: &str) -> Value {
    loop {
        let line = next_json(lines)
            .await
            .unwrap_or_else(|| panic!("no {event} line before the end"));
        if line["event"] == event {
            return line;
        }
    }
}

#[tokio::test]
async fn the_fleet_sim_binary_prints_heartbeats_and_liveness() {
    let token = "hb-secret-token";
    let (child, mut lines) = spawn_fleet_sim(&[
        "--listen",
        "127.0.0.1:0",
        "--token",
        token,
        "--heartbeat-interval",
        "200ms",
    ]);
    let listening = next_json(&mut lines).await.expect("listening line");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let http = client(None);
    // A heartbeat with `token`, answered in time.
    let send = |token: &str, body: Value| {
        let request = http
            .post(format!("http://{addr}/api/fleet/heartbeat"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send();
        async {
            tokio::time::timeout(DEADLINE, request)
                .await
                .expect("in time")
                .expect("an answer")
        }
    };

    let refused = send("hb-secret-wrong", beat(GW)).await;
    assert_eq!(refused.status().as_u16(), 401);
    let line = next_event(&mut lines, "heartbeat_refused").await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["route"], "heartbeat");
    assert_eq!(line["outcome"], "unknown_token");

    let body = beat_every(GW, None);
    let sent = Instant::now();
    let accepted = send(token, body.clone()).await;
    assert_eq!(accepted.status().as_u16(), 204);
    let line = next_event(&mut lines, "heartbeat").await;
    assert_eq!(line["gateway"], GW);
    assert_eq!(line["meters"], 2);
    assert_eq!(
        line["states"],
        json!({"nl43-north": "connected/measuring", "xl2-south": "down"})
    );
    assert_eq!(line["token"], fingerprint(token));
    assert_eq!(line["bytes"], body.to_string().len());
    assert_eq!(line["gzip"], false);

    // No more requests: the offline line comes by itself, 3 × 200 ms later.
    let offline = next_event(&mut lines, "gateway_offline").await;
    assert!(sent.elapsed() >= Duration::from_millis(600));
    assert_eq!(offline["gateway"], GW);
    assert_eq!(offline["interval_ms"], 200);
    assert!(offline["last_heartbeat_at"].is_string(), "{offline}");

    let again = send(token, body.clone()).await;
    assert_eq!(again.status().as_u16(), 204);
    let online = next_event(&mut lines, "gateway_online").await;
    assert_eq!(online["gateway"], GW);
    assert!(online["offline_for_ms"].is_u64(), "{online}");
    let text = http
        .get(format!("http://{addr}/admin/liveness"))
        .send()
        .await
        .expect("liveness")
        .text()
        .await
        .expect("a body");
    let liveness: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(liveness["gateways"][0]["online"], true);
    assert_eq!(liveness["gateways"][0]["offline_episodes"], 1);

    let rest = stop_fleet_sim(child, lines).await;
    let stats = rest.last().expect("a stats line");
    assert_eq!(stats["heartbeats"], 2);
    assert_eq!(stats["heartbeat_requests"], 3);
    assert_eq!(stats["requests"], 0);
    let printed = format!("{rest:?}");
    assert!(
        !printed.contains("secret"),
        "a token was printed: {printed}"
    );
}
