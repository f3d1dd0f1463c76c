//! The fleet simulator's side of noise limits (SPEC §7 "Events", §11) over
//! real sockets: alert events on `POST /api/fleet/events` (accepted,
//! de-duplicated by `(gateway, event_seq)`, conflicts, bad bodies named by
//! field, tokens, faults on the `events` route, the request log, the real
//! binary's lines) and interval records in ingest (served back as sent,
//! `/admin/intervals`). No fixed sleeps: every wait is on an answer, an
//! event or a line with a deadline.

mod fleet_common;

use fleet_common::{
    DEADLINE, Fleet, GW, Reply, client, drain, gzip, next_json, record, spawn_fleet_sim, start,
    stop_fleet_sim,
};
use serde_json::{Value, json};
use slmd_hil::fleet::{EventOrder, FleetEvent, FleetSimConfig, Route, TokenRole, fingerprint};
use std::time::Duration;

/// An alert event as the daemon sends it.
fn event(seq: u64, kind: &str) -> Value {
    json!({"event_seq": seq, "episode": "20261202T101500123-day-limit-nl43-north",
           "alert": "day-limit", "event": kind, "device": "nl43-north",
           "metric": "leq_15m", "value": 67.3, "threshold": 65.0,
           "at": "2026-12-02T10:15:00.412Z"})
}

/// An events body from [`GW`].
fn events_body(events: Vec<Value>) -> Value {
    json!({"gateway": GW, "events": events})
}

/// The interval record of SPEC §11 as the daemon pushes it.
fn interval(seq: u64) -> Value {
    json!({"seq": seq, "kind": "interval", "device": "nl43-north",
           "received_at": "2026-12-02T10:15:00.412Z", "device_time": null,
           "interval_start": "2026-12-02T10:00:00Z", "interval_length": "15m",
           "metrics": {"leq": 61.2, "lmax": 74.9, "lmin": 48.1, "l10": 64.0, "l90": 50.2},
           "readings": 897, "coverage": 0.997,
           "state": "measuring", "flags": ["low_coverage"]})
}

impl Fleet {
    /// Sends `body` as JSON to the events route with `token`.
    async fn send_events(&self, token: &str, body: &Value) -> Reply {
        self.post_json("/api/fleet/events", token, body).await
    }

    /// `GET /admin/events?gateway=` (with `query` appended).
    async fn events_of(&self, gateway: &str, query: &str) -> Value {
        self.get(&format!("/admin/events?gateway={gateway}{query}"))
            .await
    }
}

/// The `event_seq`s of a list of events.
fn seqs(list: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .filter_map(|e| e["event_seq"].as_u64())
        .collect()
}

#[tokio::test]
async fn events_are_accepted_de_duplicated_and_read_back() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let mut events = fleet.sim.events();
    let mut noted = event(8, "peak");
    noted["note"] = json!("louder");
    let first = fleet
        .send_events(
            "t1",
            &events_body(vec![event(9, "clear"), event(7, "onset"), noted.clone()]),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json(), json!({"accepted": 3, "duplicates": 0}));
    // A re-send (and a repeat within the body) is a duplicate; event 7
    // again with another value is a conflict, answered as a duplicate.
    let mut reused = event(7, "onset");
    reused["value"] = json!(70.1);
    let again = fleet
        .send_events(
            "t1",
            &events_body(vec![
                event(9, "clear"),
                reused.clone(),
                event(10, "clear"),
                event(10, "clear"),
            ]),
        )
        .await;
    assert_eq!(again.json(), json!({"accepted": 1, "duplicates": 3}));

    let read = fleet.events_of(GW, "").await;
    assert_eq!(seqs(&read["events"]), vec![7, 8, 9, 10]);
    assert_eq!(read["events"][0], event(7, "onset"), "the first one kept");
    assert_eq!(read["events"][1], noted, "extra fields kept");
    assert_eq!(
        seqs(&fleet.events_of(GW, "&order=arrival").await["events"]),
        vec![9, 7, 8, 10]
    );
    assert_eq!(read["total_conflicts"], 1);
    assert_eq!(read["conflicts"][0]["event_seq"], 7);
    assert_eq!(read["conflicts"][0]["incoming"], reused);
    assert_eq!(fleet.events_of("gw-other", "").await["events"], json!([]));
    assert_eq!(
        fleet.sim.alert_events(GW, EventOrder::Seq),
        read["events"].as_array().cloned().expect("list")
    );
    assert_eq!(fleet.sim.event_conflicts(GW).1, 1);

    let stats = fleet.get("/admin/stats").await;
    assert_eq!(
        (
            &stats["events"],
            &stats["event_duplicates"],
            &stats["event_conflicts"],
            &stats["event_requests"]
        ),
        (&json!(4), &json!(3), &json!(1), &json!(2))
    );
    assert_eq!(
        (&stats["requests"], &stats["accepted"]),
        (&json!(0), &json!(0)),
        "ingest counters untouched"
    );

    let log = fleet.get("/admin/requests").await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["route"], "events");
    assert_eq!(
        (
            &log[1]["status"],
            &log[1]["outcome"],
            &log[1]["gateway"],
            &log[1]["events"]
        ),
        (&json!(200), &json!("accepted"), &json!(GW), &json!(4))
    );
    assert_eq!(
        (
            &log[1]["accepted"],
            &log[1]["duplicates"],
            &log[1]["conflicts"],
            &log[1]["first_seq"],
            &log[1]["last_seq"]
        ),
        (&json!(1), &json!(3), &json!(1), &json!(9), &json!(10))
    );
    assert_eq!(log[1]["token"], fingerprint("t1"));

    // One alert_event per new event, then the request's line.
    let seen = drain(&mut events);
    let lines: Vec<Value> = seen
        .iter()
        .map(|e| serde_json::to_value(e).expect("JSON"))
        .collect();
    let names: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(
        names,
        vec![
            "alert_event",
            "alert_event",
            "alert_event",
            "events",
            "alert_event",
            "events"
        ]
    );
    assert_eq!(
        lines[0],
        json!({"event": "alert_event", "gateway": GW, "event_seq": 9,
               "episode": "20261202T101500123-day-limit-nl43-north", "alert": "day-limit",
               "kind": "clear", "device": "nl43-north", "metric": "leq_15m", "value": 67.3,
               "threshold": 65.0, "at": "2026-12-02T10:15:00.412Z",
               "token": fingerprint("t1"), "token_role": "current"})
    );
    assert!(matches!(&seen[3], FleetEvent::Events(log) if log.route == Route::Events));
    assert!(
        matches!(&seen[0], FleetEvent::AlertEvent(line) if line.token_role == TokenRole::Current)
    );
    fleet.stop().await;
}

#[tokio::test]
async fn bad_events_bodies_are_400_naming_the_field() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let mut late = event(2, "onset");
    late["at"] = json!("yesterday");
    let mut text_value = event(2, "onset");
    text_value["value"] = json!("67.3");
    let mut no_episode = event(2, "onset");
    no_episode
        .as_object_mut()
        .expect("object")
        .remove("episode");
    for (body, expected) in [
        (
            events_body(vec![event(1, "onset"), event(2, "start")]),
            "events[1].event: expected one of onset, peak, clear, got `start`",
        ),
        (
            events_body(vec![event(1, "onset"), late]),
            "events[1].at: `yesterday` is not an RFC 3339 timestamp",
        ),
        (
            events_body(vec![text_value]),
            "events[0].value: expected a number, got `67.3`",
        ),
        (
            events_body(vec![no_episode]),
            "events[0].episode: missing field",
        ),
        (json!({"gateway": GW}), "events: missing field"),
        (
            json!({"gateway": GW, "events": [], "epoch": 3}),
            "unknown field `epoch`",
        ),
    ] {
        let reply = fleet.send_events("t1", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        let answer = reply.json();
        assert_eq!(answer["error"], "malformed");
        let detail = answer["detail"].as_str().expect("detail");
        assert!(detail.starts_with(expected), "{detail}");
    }
    let not_json = fleet
        .send(fleet.post(
            &fleet.client,
            "/api/fleet/events",
            Some("t1"),
            &[("content-type", "application/json")],
            b"{".to_vec(),
        ))
        .await;
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.json()["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("the body is not JSON"))
    );
    let wrong_type = fleet
        .send(fleet.post(
            &fleet.client,
            "/api/fleet/events",
            Some("t1"),
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
        ))
        .await;
    assert_eq!(wrong_type.status, 400);
    assert!(fleet.sim.alert_events(GW, EventOrder::Seq).is_empty());
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(
        (&stats["event_requests"], &stats["events"]),
        (&json!(8), &json!(0))
    );
    let log = fleet.sim.requests();
    assert!(
        log.iter()
            .all(|l| l.route == Route::Events && l.status == Some(400))
    );
    fleet.stop().await;
}

#[tokio::test]
async fn tokens_and_gzip_are_those_of_ingest() {
    let mut config = FleetSimConfig::new("t2");
    config.previous_token = Some("t1".to_owned());
    let fleet = start(config).await;
    let body = events_body(vec![event(1, "onset")]);
    let unknown = fleet.send_events("nope", &body).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json(), json!({"error": "unknown or expired token"}));
    let bare = fleet
        .send(fleet.post(
            &fleet.client,
            "/api/fleet/events",
            None,
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        ))
        .await;
    assert_eq!(bare.status, 401);
    assert!(
        fleet.sim.alert_events(GW, EventOrder::Seq).is_empty(),
        "nothing stored"
    );
    // The previous token in its grace, gzipped.
    let zipped = fleet
        .send(fleet.post(
            &fleet.client,
            "/api/fleet/events",
            Some("t1"),
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(body.to_string().as_bytes()),
        ))
        .await;
    assert_eq!(zipped.status, 200, "{}", zipped.text);
    assert_eq!(zipped.json(), json!({"accepted": 1, "duplicates": 0}));
    let log = fleet.sim.requests();
    assert_eq!(log[2].token_role, Some(TokenRole::Previous));
    assert!(log[2].gzip);
    fleet.sim.expire_previous();
    assert_eq!(fleet.send_events("t1", &body).await.status, 401);
    assert_eq!(
        fleet.send_events("t2", &body).await.json(),
        json!({"accepted": 0, "duplicates": 1})
    );
    fleet.stop().await;
}

#[tokio::test]
async fn faults_on_the_events_route_hit_events_only() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let body = events_body(vec![event(1, "onset")]);
    fleet
        .admin("POST", "/admin/faults",
               &json!({"kind": "status", "status": 503, "retry_after": 2, "count": 2, "route": "events"}))
        .await;
    // Ingest and heartbeat are not hit.
    assert_eq!(fleet.push_seqs("t1", &[1]).await.status, 200);
    let first = fleet.send_events("t1", &body).await;
    assert_eq!(
        (first.status, first.retry_after.as_deref()),
        (503, Some("2"))
    );
    assert_eq!(first.json()["error"], "injected fault");
    // A fault comes before the token, as on ingest.
    assert_eq!(fleet.send_events("nope", &body).await.status, 503);
    assert!(fleet.sim.alert_events(GW, EventOrder::Seq).is_empty());
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 429, "route": "events"}),
        )
        .await;
    assert_eq!(fleet.send_events("t1", &body).await.status, 429);
    // `all` covers events too.
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 503, "count": 100, "route": "all"}),
        )
        .await;
    assert_eq!(fleet.send_events("t1", &body).await.status, 503);
    assert_eq!(
        fleet.admin("DELETE", "/admin/faults", &Value::Null).await["dropped"],
        1
    );
    // not_json: stored, answered HTML; the re-send is a duplicate.
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "not_json", "route": "events"}),
        )
        .await;
    let portal = fleet.send_events("t1", &body).await;
    assert_eq!(portal.status, 200);
    assert_eq!(portal.text, "<html>OK</html>");
    assert!(
        portal
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert_eq!(
        fleet.send_events("t1", &body).await.json(),
        json!({"accepted": 0, "duplicates": 1})
    );
    // hang: held until the client gives up; nothing stored.
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "hang", "route": "events"}),
        )
        .await;
    let impatient = client(Some(Duration::from_millis(300)));
    let request = fleet.post(
        &impatient,
        "/api/fleet/events",
        Some("t1"),
        &[("content-type", "application/json")],
        events_body(vec![event(2, "peak")]).to_string().into_bytes(),
    );
    let held = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("gave up in time");
    assert!(held.is_err(), "a hung request is never answered");
    assert_eq!(
        seqs(&json!(fleet.sim.alert_events(GW, EventOrder::Seq))),
        vec![1]
    );
    let statuses: Vec<Option<u16>> = fleet
        .sim
        .requests()
        .iter()
        .filter(|l| l.route == Route::Events)
        .map(|l| l.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            Some(503),
            Some(503),
            Some(429),
            Some(503),
            Some(200),
            Some(200),
            None
        ]
    );
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(
        (&stats["event_requests"], &stats["requests"]),
        (&json!(7), &json!(1))
    );
    fleet.stop().await;
}

#[tokio::test]
async fn interval_records_are_served_back_as_sent() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let mut whole = interval(1051);
    whole["coverage"] = json!(1);
    whole["interval_length"] = json!("1h");
    let mut reading = record(1049);
    reading["kind"] = json!("reading");
    let body = json!({"gateway": GW, "records": [reading.clone(), record(1048), interval(1050), whole.clone()]});
    let reply = fleet.push("t1", &body).await;
    assert_eq!(reply.json(), json!({"accepted": 4, "duplicates": 0}));
    let received = fleet.get(&format!("/admin/received?gateway={GW}")).await;
    assert_eq!(
        received["records"],
        json!([reading, record(1048), interval(1050), whole])
    );
    let intervals = fleet.get(&format!("/admin/intervals?gateway={GW}")).await;
    assert_eq!(intervals["records"], json!([interval(1050), whole]));
    assert_eq!(
        fleet
            .get(&format!("/admin/intervals?gateway={GW}&from=1"))
            .await["records"],
        json!([whole])
    );
    assert!(
        fleet.sim.intervals(GW)[1]
            .interval
            .as_ref()
            .is_some_and(|i| i.readings == 897)
    );
    // Exactly as sent (`json!` sorts the metrics), in the wire's field
    // order.
    let raw = fleet
        .get_raw(&format!("/admin/intervals?gateway={GW}&limit=1"))
        .await;
    assert!(
        raw.text.starts_with(r#"{"records":[{"seq":1050,"kind":"interval","device":"nl43-north","received_at":"2026-12-02T10:15:00.412Z","device_time":null,"interval_start":"2026-12-02T10:00:00Z","interval_length":"15m","metrics":{"l10":64.0,"l90":50.2,"leq":61.2,"lmax":74.9,"lmin":48.1},"readings":897,"coverage":0.997,"state":"measuring","flags":["low_coverage"]}"#),
        "{}",
        raw.text
    );
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(
        (&stats["unique"], &stats["intervals"]),
        (&json!(4), &json!(2))
    );
    // A re-send is a duplicate; other coverage is a conflict.
    let mut changed = interval(1050);
    changed["coverage"] = json!(0.5);
    let again = fleet
        .push(
            "t1",
            &json!({"gateway": GW, "records": [interval(1050), changed]}),
        )
        .await;
    assert_eq!(again.json(), json!({"accepted": 0, "duplicates": 2}));
    assert_eq!(
        fleet.get(&format!("/admin/conflicts?gateway={GW}")).await["total"],
        1
    );
    // Interval fields on a reading, or missing from an interval: 400.
    let mut odd = record(2000);
    odd["coverage"] = json!(1);
    let mut short = interval(2001);
    short.as_object_mut().expect("object").remove("readings");
    for (record, expected) in [
        (
            odd,
            r#"records[0].coverage: only an interval record ("kind": "interval") has this field"#,
        ),
        (short, "records[0]: missing field `readings`"),
    ] {
        let reply = fleet
            .push("t1", &json!({"gateway": GW, "records": [record]}))
            .await;
        assert_eq!(reply.status, 400);
        let detail = reply.json()["detail"].as_str().expect("detail").to_owned();
        assert!(detail.starts_with(expected), "{detail}");
    }
    fleet.stop().await;
}

#[tokio::test]
async fn the_binary_prints_a_line_per_alert_event() {
    let (child, mut lines) = spawn_fleet_sim(&["--listen", "127.0.0.1:0", "--token", "t1"]);
    let listening = next_json(&mut lines).await.expect("listening line");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let http = client(None);
    let send = |body: Value| {
        let request = http
            .post(format!("http://{addr}/api/fleet/events"))
            .header("authorization", "Bearer t1")
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
    let answer = send(events_body(vec![event(7, "onset")])).await;
    assert_eq!(answer.status(), 200);
    let line = next_json(&mut lines).await.expect("alert_event line");
    assert_eq!(
        (
            &line["event"],
            &line["gateway"],
            &line["event_seq"],
            &line["kind"],
            &line["episode"]
        ),
        (
            &json!("alert_event"),
            &json!(GW),
            &json!(7),
            &json!("onset"),
            &json!("20261202T101500123-day-limit-nl43-north")
        )
    );
    let request = next_json(&mut lines).await.expect("events line");
    assert_eq!(
        (
            &request["event"],
            &request["route"],
            &request["accepted"],
            &request["events"]
        ),
        (&json!("events"), &json!("events"), &json!(1), &json!(1))
    );
    let answer = send(json!({"gateway": GW, "events": [{"event_seq": 8}]})).await;
    assert_eq!(answer.status(), 400);
    let refused = next_json(&mut lines).await.expect("events line");
    assert_eq!(
        (&refused["event"], &refused["status"]),
        (&json!("events"), &json!(400))
    );
    let rest = stop_fleet_sim(child, lines).await;
    let stats = rest.last().expect("stats");
    assert_eq!(
        (&stats["events"], &stats["event_requests"]),
        (&json!(1), &json!(2))
    );
}
