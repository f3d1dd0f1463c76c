//! The fleet simulator over real sockets: tokens and their grace, storing and
//! de-duplication (by gateway, epoch and seq), seq reuse, declared skips and
//! the audit of holes, every refusal, every fault, the admin routes, and the
//! real `fleet-sim` binary.

mod fleet_common;

use fleet_common::{
    DEADLINE, Fleet, GW, batch, client, drain, gzip, next_json, record, spawn_fleet_sim, start,
    stop_fleet_sim,
};
use serde_json::{Value, json};
use slmd_hil::fleet::{FleetEvent, FleetSimConfig, Hole, fingerprint};
use std::time::Duration;
use tokio::time::Instant;

impl Fleet {
    /// An ingest request with `bytes` as the body and `headers` besides the
    /// token.
    fn ingest(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
        headers: &[(&str, &str)],
        bytes: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        self.post(client, "/api/fleet/ingest", token, headers, bytes)
    }

    /// Whether `token` is honoured now (an empty batch stores nothing).
    async fn accepts(&self, token: &str) -> bool {
        let reply = self.push(token, &batch("probe", &[])).await;
        match reply.status {
            200 => true,
            401 => {
                assert_eq!(reply.json(), json!({"error": "unknown or expired token"}));
                false
            }
            other => panic!("probe answered {other}: {}", reply.text),
        }
    }

    async fn seqs(&self, gateway: &str) -> Value {
        self.get(&format!("/admin/seqs?gateway={gateway}")).await["seqs"].clone()
    }
}

#[tokio::test]
async fn the_current_token_is_accepted_and_others_are_not() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let reply = fleet.push_seqs("t1", &[1, 2, 3]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"accepted": 3, "duplicates": 0}));
    assert!(!fleet.accepts("t2").await);

    // No Authorization header, or another scheme: 401 too.
    let body = batch(GW, &[4]).to_string().into_bytes();
    let none = fleet.ingest(
        &fleet.client,
        None,
        &[("content-type", "application/json")],
        body.clone(),
    );
    assert_eq!(fleet.send(none).await.status, 401);
    let basic = fleet.ingest(
        &fleet.client,
        None,
        &[
            ("content-type", "application/json"),
            ("authorization", "Basic dDE6"),
        ],
        body,
    );
    assert_eq!(fleet.send(basic).await.status, 401);

    let log = fleet.get("/admin/requests").await;
    let log = log.as_array().expect("a list");
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["token"], fingerprint("t1"));
    assert_eq!(log[0]["token_role"], "current");
    assert_eq!(log[0]["outcome"], "accepted");
    assert_eq!(
        (log[0]["first_seq"].clone(), log[0]["last_seq"].clone()),
        (json!(1), json!(3))
    );
    assert_eq!(log[1]["token"], fingerprint("t2"));
    assert_eq!(log[1]["outcome"], "unknown_token");
    assert_eq!(log[1]["status"], 401);
    assert_eq!(log[2]["token"], Value::Null);
    // A refused batch is still named in the log.
    assert_eq!(log[2]["first_seq"], 4);
    assert_eq!(fleet.seqs(GW).await, json!([1, 2, 3]));
    fleet.stop().await;
}

#[tokio::test]
async fn a_rotation_honours_both_tokens_and_a_second_one_retires_the_first() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let report = fleet
        .admin("POST", "/admin/rotate", &json!({"token": "t2"}))
        .await;
    assert_eq!(report["current"], fingerprint("t2"));
    assert_eq!(report["previous"], fingerprint("t1"));
    assert_eq!(report["retired"], Value::Null);
    assert_eq!(report["grace_ms"], 24 * 3600 * 1000);
    assert!(report["previous_expires_at"].is_string(), "{report}");
    assert!(fleet.accepts("t1").await);
    assert!(fleet.accepts("t2").await);
    assert!(!fleet.accepts("t3").await);

    let report = fleet
        .admin(
            "POST",
            "/admin/rotate",
            &json!({"token": "t3", "grace": "2m"}),
        )
        .await;
    assert_eq!(report["retired"], fingerprint("t1"));
    assert_eq!(report["previous"], fingerprint("t2"));
    assert_eq!(report["grace_ms"], 120_000);
    assert!(!fleet.accepts("t1").await, "retired at once");
    assert!(fleet.accepts("t2").await);
    assert!(fleet.accepts("t3").await);

    let tokens = fleet.get("/admin/tokens").await;
    assert_eq!(tokens["current"], fingerprint("t3"));
    assert_eq!(tokens["previous_active"], true);
    let roles: Vec<Value> = fleet
        .get("/admin/requests")
        .await
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["token_role"].clone())
        .collect();
    assert_eq!(
        roles,
        [
            json!("previous"),
            json!("current"),
            Value::Null,
            Value::Null,
            json!("previous"),
            json!("current")
        ]
    );
    fleet.stop().await;
}

#[tokio::test]
async fn expire_previous_ends_the_grace_at_once() {
    let mut config = FleetSimConfig::new("t2");
    config.previous_token = Some("t1".to_owned());
    let fleet = start(config).await;
    assert!(
        fleet.accepts("t1").await,
        "a configured previous token is honoured"
    );
    let answer = fleet
        .admin("POST", "/admin/expire-previous", &json!({}))
        .await;
    assert_eq!(answer["retired"], fingerprint("t1"));
    assert_eq!(answer["previous"], Value::Null);
    assert!(!fleet.accepts("t1").await);
    assert!(fleet.accepts("t2").await);
    let again = fleet
        .admin("POST", "/admin/expire-previous", &json!({}))
        .await;
    assert_eq!(again["retired"], Value::Null);
    fleet.stop().await;
}

#[tokio::test]
async fn the_previous_token_expires_when_its_grace_ends() {
    let fleet = start(FleetSimConfig::new("t1")).await;
    let rotated = Instant::now();
    fleet
        .admin(
            "POST",
            "/admin/rotate",
            &json!({"token": "t2", "grace": "300ms"}),
        )
        .await;
    assert!(fleet.accepts("t1").await, "honoured inside the grace");
    loop {
        if !fleet.accepts("t1").await {
            break;
        }
        assert!(
            rotated.elapsed() < DEADLINE,
            "t1 still honoured after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rotated.elapsed() >= Duration::from_millis(300),
        "refused after {:?}, before its grace ended",
        rotated.elapsed()
    );
    assert!(fleet.accepts("t2").await);
    let tokens = fleet.get("/admin/tokens").await;
    assert_eq!(tokens["previous"], fingerprint("t1"));
    assert_eq!(tokens["previous_active"], false);
    fleet.stop().await;
}

#[tokio::test]
async fn re_sends_are_counted_as_duplicates_and_stored_once() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let answers = [
        fleet.push_seqs("t", &[1, 2, 3]).await.json(),
        fleet.push_seqs("t", &[3, 4]).await.json(),
        fleet.push_seqs("t", &[2, 2]).await.json(),
        fleet.push_seqs("t", &[10]).await.json(),
        fleet.push_seqs("t", &[5]).await.json(),
    ];
    assert_eq!(
        answers,
        [
            json!({"accepted": 3, "duplicates": 0}),
            json!({"accepted": 1, "duplicates": 1}),
            json!({"accepted": 0, "duplicates": 2}),
            json!({"accepted": 1, "duplicates": 0}),
            json!({"accepted": 1, "duplicates": 0}),
        ]
    );
    // Another gateway has its own seq space.
    assert_eq!(
        fleet.push("t", &batch("gw-2", &[1])).await.json(),
        json!({"accepted": 1, "duplicates": 0})
    );
    assert_eq!(fleet.seqs(GW).await, json!([1, 2, 3, 4, 10, 5]));
    assert_eq!(fleet.seqs("gw-2").await, json!([1]));
    assert_eq!(fleet.seqs("nobody").await, json!([]));

    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["requests"], 6);
    assert_eq!(stats["by_status"], json!({"200": 6}));
    assert_eq!(stats["accepted"], 7);
    assert_eq!(stats["duplicates"], 3);
    assert_eq!(stats["unique"], 7);
    assert_eq!(stats["records_in_bodies"], 10);
    assert_eq!(stats["out_of_order"], 1, "seq 5 after 10");
    assert_eq!(stats["hung"], 0);
    assert!(stats["body_bytes"].as_u64().unwrap_or(0) > 0, "{stats}");

    // Records come back exactly as sent, in first-arrival order.
    let received = fleet.get(&format!("/admin/received?gateway={GW}")).await;
    let expected: Vec<Value> = [1, 2, 3, 4, 10, 5].iter().map(|&s| record(s)).collect();
    assert_eq!(received["records"], json!(expected));
    let page = fleet
        .get(&format!("/admin/received?gateway={GW}&from=4&limit=1"))
        .await;
    assert_eq!(page["records"], json!([record(10)]));
    let in_process = fleet.sim.received(GW);
    assert_eq!(in_process.len(), 6);
    assert_eq!(
        serde_json::to_value(&in_process[0]).expect("serializable"),
        record(1)
    );
    assert_eq!(in_process[0].metric("lp"), Some(Some(52.1)));
    assert_eq!(fleet.sim.stats().unique, 7);
    assert_eq!(
        fleet.get("/admin/gateways").await["gateways"],
        json!([GW, "gw-2"])
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_gzip_body_is_taken_and_counted_compressed() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let seqs: Vec<u64> = (1..=200).collect();
    let plain = batch(GW, &seqs).to_string().into_bytes();
    let compressed = gzip(&plain);
    assert!(compressed.len() * 4 < plain.len(), "JSON compresses");
    let request = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        compressed.clone(),
    );
    let reply = fleet.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json(), json!({"accepted": 200, "duplicates": 0}));
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["body_bytes"], compressed.len() as u64);
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["gzip"], true);
    assert_eq!(log[0]["body_bytes"], compressed.len() as u64);
    assert_eq!(log[0]["records"], 200);

    // Bytes that are not gzip, and an encoding the fleet does not take.
    let request = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        plain.clone(),
    );
    let reply = fleet.send(request).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "malformed");
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("gzip"),
        "{}",
        reply.text
    );
    let request = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        plain,
    );
    let reply = fleet.send(request).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["detail"]
            .as_str()
            .unwrap_or("")
            .contains("`br`"),
        "{}",
        reply.text
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_malformed_body_is_refused_naming_the_field() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let mut body = batch(GW, &[1, 2, 3, 4, 5]);
    body["records"][3]["received_at"] = json!("yesterday");
    let reply = fleet.push("t", &body).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["error"], "malformed");
    let detail = answer["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("records[3].received_at: "), "{detail}");

    for (field, value, named) in [
        ("seq", json!("7"), "records[0].seq"),
        ("device", json!(""), "records[0].device"),
        (
            "device_time",
            json!("2026-13-01T00:00:00Z"),
            "records[0].device_time",
        ),
        ("metrics", json!({"lp": "loud"}), "records[0].metrics.lp"),
        ("state", json!("running"), "records[0].state"),
        ("flags", json!("overload"), "records[0].flags"),
        ("battery", json!(80), "unknown field `battery`"),
    ] {
        let mut body = batch(GW, &[1]);
        body["records"][0][field] = value;
        let reply = fleet.push("t", &body).await;
        assert_eq!(reply.status, 400, "{field}: {}", reply.text);
        let detail = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.contains(named), "{field}: {detail}");
    }
    let not_json = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[("content-type", "application/json")],
        b"{\"gateway\": ".to_vec(),
    );
    assert_eq!(fleet.send(not_json).await.status, 400);
    let wrong_type = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[("content-type", "text/plain")],
        batch(GW, &[1]).to_string().into_bytes(),
    );
    let reply = fleet.send(wrong_type).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("Content-Type"), "{}", reply.text);

    // The token is checked before the body.
    let reply = fleet.push("wrong", &body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(fleet.seqs(GW).await, json!([]), "nothing stored");
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["by_status"], json!({"400": 10, "401": 1}));
    let outcomes: Vec<Value> = fleet
        .get("/admin/requests")
        .await
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(outcomes[0], "malformed");
    assert_eq!(outcomes[10], "unknown_token");
    fleet.stop().await;
}

#[tokio::test]
async fn batches_above_max_records_are_too_large() {
    let mut config = FleetSimConfig::new("t");
    config.max_records = Some(3);
    let fleet = start(config).await;
    let reply = fleet.push_seqs("t", &[1, 2, 3, 4]).await;
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.json(),
        json!({"error": "batch too large", "max_records": 3, "records": 4})
    );
    assert_eq!(fleet.push_seqs("t", &[1, 2, 3]).await.status, 200);

    let set = fleet
        .admin("PUT", "/admin/max-records", &json!({"max_records": 1}))
        .await;
    assert_eq!(set, json!({"max_records": 1}));
    assert_eq!(fleet.push_seqs("t", &[4, 5]).await.status, 413);
    assert_eq!(fleet.push_seqs("t", &[4]).await.status, 200);
    fleet
        .admin("PUT", "/admin/max-records", &json!({"max_records": null}))
        .await;
    assert_eq!(
        fleet.get("/admin/max-records").await,
        json!({"max_records": null})
    );
    assert_eq!(fleet.push_seqs("t", &[5, 6, 7, 8, 9]).await.status, 200);
    assert_eq!(fleet.seqs(GW).await, json!([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["outcome"], "too_large");
    assert_eq!(log[0]["records"], 4);
    fleet.stop().await;
}

#[tokio::test]
async fn a_batch_with_a_poisoned_seq_is_refused_whole() {
    let mut config = FleetSimConfig::new("t");
    config.poison = [17].into();
    let fleet = start(config).await;
    let reply = fleet.push_seqs("t", &[16, 17, 18]).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json(),
        json!({"error": "malformed record", "seqs": [17]})
    );
    assert_eq!(fleet.push_seqs("t", &[16]).await.status, 200);

    let set = fleet
        .admin("PUT", "/admin/poison", &json!({"seqs": [42, 17]}))
        .await;
    assert_eq!(set, json!({"seqs": [17, 42]}));
    let reply = fleet.push_seqs("t", &[42, 18, 17, 42]).await;
    assert_eq!(
        reply.json(),
        json!({"error": "malformed record", "seqs": [42, 17]})
    );
    fleet
        .admin("PUT", "/admin/poison", &json!({"seqs": []}))
        .await;
    assert_eq!(fleet.push_seqs("t", &[17, 18]).await.status, 200);
    assert_eq!(fleet.seqs(GW).await, json!([16, 17, 18]));
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["outcome"], "poison");
    fleet.stop().await;
}

#[tokio::test]
async fn status_faults_apply_in_order_for_their_count_before_the_token() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let pending = fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 503, "count": 2, "retry_after": 1}),
        )
        .await;
    assert_eq!(pending["pending"][0]["count"], 2);
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 429}),
        )
        .await;
    assert_eq!(
        fleet.get("/admin/faults").await["pending"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let first = fleet.push_seqs("t", &[1]).await;
    assert_eq!(first.status, 503);
    assert_eq!(first.retry_after.as_deref(), Some("1"));
    assert_eq!(first.json()["error"], "injected fault");
    // Faults come before the token: an unknown one sees the outage too.
    let second = fleet.push_seqs("unknown", &[1]).await;
    assert_eq!(second.status, 503);
    let third = fleet.push_seqs("t", &[1]).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.retry_after, None);
    let fourth = fleet.push_seqs("t", &[1]).await;
    assert_eq!(fourth.json(), json!({"accepted": 1, "duplicates": 0}));
    assert_eq!(fleet.get("/admin/faults").await, json!({"pending": []}));

    // Queued faults can be dropped.
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 500, "count": 9}),
        )
        .await;
    assert_eq!(
        fleet.admin("DELETE", "/admin/faults", &json!(null)).await,
        json!({"dropped": 1})
    );
    assert_eq!(fleet.push_seqs("t", &[2]).await.status, 200);

    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["by_status"], json!({"200": 2, "429": 1, "503": 2}));
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["outcome"], "fault");
    assert_eq!(log[0]["fault"], "status");
    assert_eq!(log[0]["first_seq"], 1, "the faulted batch is named");
    assert_eq!(fleet.seqs(GW).await, json!([1, 2]));
    fleet.stop().await;
}

#[tokio::test]
async fn a_not_json_fault_stores_the_batch_but_answers_html() {
    let fleet = start(FleetSimConfig::new("t")).await;
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "not_json", "count": 1}),
        )
        .await;
    let reply = fleet.push_seqs("t", &[1, 2]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text, "<html>OK</html>");
    assert!(
        reply
            .content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("text/html"),
        "{reply:?}"
    );
    // The re-send finds the records stored.
    let again = fleet.push_seqs("t", &[1, 2]).await;
    assert_eq!(again.json(), json!({"accepted": 0, "duplicates": 2}));
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["fault"], "not_json");
    assert_eq!(log[0]["outcome"], "accepted");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[0]["accepted"], 2);
    fleet.stop().await;
}

#[tokio::test]
async fn a_hang_fault_holds_the_request_and_the_next_one_is_answered() {
    let fleet = start(FleetSimConfig::new("t")).await;
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "hang", "count": 1}),
        )
        .await;
    let impatient = client(Some(Duration::from_millis(500)));
    let request = fleet.ingest(
        &impatient,
        Some("t"),
        &[("content-type", "application/json")],
        batch(GW, &[1, 2]).to_string().into_bytes(),
    );
    let started = Instant::now();
    let error = tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("the client gives up in time")
        .expect_err("no answer to a hung request");
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(500));

    let reply = fleet.push_seqs("t", &[3]).await;
    assert_eq!(reply.json(), json!({"accepted": 1, "duplicates": 0}));
    assert_eq!(
        fleet.seqs(GW).await,
        json!([3]),
        "nothing stored from the hung request"
    );
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["hung"], 1);
    assert_eq!(stats["requests"], 2);
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[0]["outcome"], "hang");
    assert_eq!(log[0]["status"], Value::Null);
    assert_eq!(log[0]["records"], 2);
    fleet.stop().await;
}

#[tokio::test]
async fn shutdown_releases_a_hung_request() {
    let fleet = start(FleetSimConfig::new("t")).await;
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "hang", "count": 1}),
        )
        .await;
    let mut events = fleet.sim.events();
    let request = fleet.ingest(
        &fleet.client,
        Some("t"),
        &[("content-type", "application/json")],
        batch(GW, &[1]).to_string().into_bytes(),
    );
    let waiting = tokio::spawn(request.send());
    // Shut down only once the request is held.
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Ok(FleetEvent::Ingest(log)) = events.recv().await {
                assert_eq!(log.fault, Some(slmd_hil::fleet::FaultKind::Hang));
                return;
            }
        }
    })
    .await
    .expect("the hung request is logged");
    fleet.stop().await;
    let answer = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("released in time")
        .expect("the request task");
    // Answered 503 or cut off: either way, released.
    if let Ok(response) = answer {
        assert_eq!(response.status().as_u16(), 503);
    }
}

#[tokio::test]
async fn bad_admin_input_is_a_400_with_a_json_error() {
    let fleet = start(FleetSimConfig::new("t")).await;
    for (method, path, body) in [
        ("POST", "/admin/rotate", "{}"),
        ("POST", "/admin/rotate", r#"{"token": "  "}"#),
        (
            "POST",
            "/admin/rotate",
            r#"{"token": "t2", "grace": "soon"}"#,
        ),
        ("POST", "/admin/rotate", r#"{"token": "t2", "grace": 5}"#),
        ("POST", "/admin/rotate", "not json"),
        (
            "POST",
            "/admin/faults",
            r#"{"kind": "status", "status": 200}"#,
        ),
        (
            "POST",
            "/admin/faults",
            r#"{"kind": "status", "status": 503, "count": 0}"#,
        ),
        ("POST", "/admin/faults", r#"{"kind": "explode"}"#),
        (
            "POST",
            "/admin/faults",
            r#"{"kind": "hang", "retry_after": 1}"#,
        ),
        ("PUT", "/admin/max-records", r#"{"max_records": 0}"#),
        ("PUT", "/admin/max-records", r#"{"max_records": -1}"#),
        ("PUT", "/admin/max-records", "{}"),
        ("PUT", "/admin/poison", r#"{"seqs": ["a"]}"#),
        ("PUT", "/admin/poison", r#"{"seq": [1]}"#),
        ("GET", "/admin/received", ""),
        ("GET", "/admin/seqs?gateway=gw&from=x", ""),
        ("GET", "/admin/seqs?gw=gw", ""),
    ] {
        let reply = fleet.admin_raw(method, path, body).await;
        assert_eq!(reply.status, 400, "{method} {path} {body}: {}", reply.text);
        let error = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!error.is_empty(), "{method} {path} {body}: {}", reply.text);
    }
    let grace = fleet
        .admin_raw(
            "POST",
            "/admin/rotate",
            r#"{"token": "t2", "grace": "soon"}"#,
        )
        .await;
    assert!(
        grace.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("soon"),
        "{}",
        grace.text
    );
    // Nothing changed.
    assert_eq!(
        fleet.get("/admin/tokens").await["current"],
        fingerprint("t")
    );
    assert_eq!(fleet.get("/admin/faults").await, json!({"pending": []}));

    let missing = fleet.admin_raw("GET", "/nope", "").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "no such route");
    let wrong = fleet.admin_raw("GET", "/api/fleet/ingest", "").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.json()["error"], "method not allowed");
    fleet.stop().await;
}

#[tokio::test]
async fn plain_tokens_appear_nowhere() {
    let (current, next, unknown) = ("secret-AAAA-1", "secret-BBBB-2", "secret-CCCC-3");
    let mut config = FleetSimConfig::new(current);
    config.previous_token = Some("secret-DDDD-0".to_owned());
    let fleet = start(config).await;
    let mut events = fleet.sim.events();
    fleet.push_seqs(current, &[1]).await;
    fleet.push_seqs(unknown, &[2]).await;
    let rotated = fleet
        .admin("POST", "/admin/rotate", &json!({"token": next}))
        .await;
    fleet.push_seqs(next, &[3]).await;
    fleet
        .admin(
            "POST",
            "/admin/faults",
            &json!({"kind": "status", "status": 503}),
        )
        .await;
    fleet.push_seqs(next, &[4]).await;
    let expired = fleet
        .admin("POST", "/admin/expire-previous", &json!({}))
        .await;

    let mut seen = vec![
        rotated.to_string(),
        expired.to_string(),
        fleet.get("/admin/requests").await.to_string(),
        fleet.get("/admin/stats").await.to_string(),
        fleet.get("/admin/tokens").await.to_string(),
        format!("{:?}", fleet.sim),
        format!("{:?}", FleetSimConfig::new(current)),
    ];
    let events = drain(&mut events);
    assert!(events.len() >= 7, "{events:?}");
    for event in &events {
        seen.push(serde_json::to_string(event).expect("serializable"));
        seen.push(format!("{event:?}"));
    }
    for text in &seen {
        assert!(!text.contains("secret-"), "a plain token leaked: {text}");
    }
    let all = seen.join("\n");
    for token in [current, next, unknown] {
        assert!(
            all.contains(&fingerprint(token)),
            "{token} is named by its fingerprint"
        );
    }
    fleet.stop().await;
}

/// A push body from [`GW`] in `epoch` with records `seqs` and `skipped`
/// ranges.
fn epoch_batch(epoch: u64, seqs: &[u64], skipped: &[(u64, u64)]) -> Value {
    let mut body = batch(GW, seqs);
    body["epoch"] = json!(epoch);
    if !skipped.is_empty() {
        let pairs: Vec<Value> = skipped.iter().map(|&(a, b)| json!([a, b])).collect();
        body["skipped"] = json!(pairs);
    }
    body
}

/// [`record`] with another `lp`: the same seq, other content.
fn record_with_lp(seq: u64, lp: f64) -> Value {
    let mut record = record(seq);
    record["metrics"]["lp"] = json!(lp);
    record
}

#[tokio::test]
async fn de_duplication_is_by_gateway_epoch_and_seq() {
    let fleet = start(FleetSimConfig::new("t")).await;
    assert_eq!(
        fleet
            .push("t", &epoch_batch(0, &[1, 2, 3], &[]))
            .await
            .json(),
        json!({"accepted": 3, "duplicates": 0})
    );
    // The same seqs in another epoch are new records.
    assert_eq!(
        fleet.push("t", &epoch_batch(7, &[1, 2], &[])).await.json(),
        json!({"accepted": 2, "duplicates": 0})
    );
    // Within an epoch they are duplicates; a body without `epoch` is epoch 0.
    assert_eq!(
        fleet.push("t", &epoch_batch(7, &[2, 3], &[])).await.json(),
        json!({"accepted": 1, "duplicates": 1})
    );
    assert_eq!(
        fleet.push_seqs("t", &[3, 4]).await.json(),
        json!({"accepted": 1, "duplicates": 1})
    );

    assert_eq!(fleet.seqs(GW).await, json!([1, 2, 3, 1, 2, 3, 4]));
    assert_eq!(
        fleet
            .get(&format!("/admin/seqs?gateway={GW}&epoch=7"))
            .await["seqs"],
        json!([1, 2, 3])
    );
    assert_eq!(
        fleet
            .get(&format!("/admin/seqs?gateway={GW}&epoch=0&from=2&limit=5"))
            .await["seqs"],
        json!([3, 4])
    );
    assert_eq!(
        fleet
            .get(&format!("/admin/seqs?gateway={GW}&epoch=8"))
            .await["seqs"],
        json!([])
    );
    assert_eq!(fleet.sim.seqs_in(GW, 7), vec![1, 2, 3]);
    assert_eq!(fleet.sim.seqs_in(GW, 0), vec![1, 2, 3, 4]);

    // Records of epoch 0 come back exactly as SPEC §3; others name their
    // epoch.
    let received = fleet
        .get(&format!("/admin/received?gateway={GW}&epoch=7&limit=1"))
        .await;
    let mut expected = record(1);
    expected["epoch"] = json!(7);
    assert_eq!(received["records"], json!([expected]));
    let zero = fleet
        .get(&format!("/admin/received?gateway={GW}&epoch=0"))
        .await;
    let plain: Vec<Value> = [1, 2, 3, 4].iter().map(|&s| record(s)).collect();
    assert_eq!(zero["records"], json!(plain));
    let in_process = fleet.sim.received_in(GW, 7);
    assert_eq!(
        in_process
            .iter()
            .map(|r| (r.epoch, r.seq))
            .collect::<Vec<_>>(),
        vec![(7, 1), (7, 2), (7, 3)]
    );
    assert_eq!(
        serde_json::to_value(&in_process[0]).expect("serializable"),
        expected
    );
    assert_eq!(fleet.sim.received(GW).len(), 7);

    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["unique"], 7);
    assert_eq!(stats["duplicates"], 2);
    assert_eq!(stats["out_of_order"], 0, "each epoch counts its own order");
    assert_eq!(stats["conflicts"], 0);
    let log = fleet.get("/admin/requests").await;
    assert_eq!(log[1]["epoch"], 7);
    assert!(
        log[0].get("epoch").is_none(),
        "epoch 0 is left out: {}",
        log[0]
    );
    fleet.stop().await;
}

#[tokio::test]
async fn a_reused_seq_is_a_duplicate_and_a_conflict() {
    let fleet = start(FleetSimConfig::new("t")).await;
    let mut events = fleet.sim.events();
    fleet.push("t", &epoch_batch(3, &[1, 2, 3], &[])).await;
    // A true re-send: plain duplicates.
    assert_eq!(
        fleet.push("t", &epoch_batch(3, &[2, 3], &[])).await.json(),
        json!({"accepted": 0, "duplicates": 2})
    );
    assert_eq!(fleet.sim.stats().conflicts, 0);
    assert!(fleet.sim.conflicts(GW).is_empty());

    // The same seqs with other content: still duplicates, but conflicts.
    let mut reused = epoch_batch(3, &[], &[]);
    reused["records"] = json!([record_with_lp(2, 60.0), record(4), record_with_lp(3, 61.5)]);
    assert_eq!(
        fleet.push("t", &reused).await.json(),
        json!({"accepted": 1, "duplicates": 2})
    );
    // The same content in another epoch is no conflict.
    let mut elsewhere = epoch_batch(4, &[], &[]);
    elsewhere["records"] = json!([record_with_lp(2, 60.0)]);
    assert_eq!(
        fleet.push("t", &elsewhere).await.json(),
        json!({"accepted": 1, "duplicates": 0})
    );

    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["conflicts"], 2);
    assert_eq!(stats["duplicates"], 4);
    let conflicts = fleet.sim.conflicts(GW);
    assert_eq!(
        conflicts
            .iter()
            .map(|c| (c.epoch, c.seq))
            .collect::<Vec<_>>(),
        vec![(3, 2), (3, 3)]
    );
    assert_eq!(conflicts[0].stored.metric("lp"), Some(Some(52.1)));
    assert_eq!(conflicts[0].incoming.metric("lp"), Some(Some(60.0)));

    let answer = fleet.get(&format!("/admin/conflicts?gateway={GW}")).await;
    assert_eq!(answer["total"], 2);
    let mut stored = record(2);
    stored["epoch"] = json!(3);
    let mut incoming = record_with_lp(2, 60.0);
    incoming["epoch"] = json!(3);
    assert_eq!(
        answer["conflicts"][0],
        json!({"epoch": 3, "seq": 2, "stored": stored, "incoming": incoming})
    );
    assert_eq!(
        fleet
            .get(&format!("/admin/conflicts?gateway={GW}&epoch=4"))
            .await,
        json!({"conflicts": [], "total": 0})
    );
    assert_eq!(
        fleet.get("/admin/conflicts?gateway=nobody").await,
        json!({"conflicts": [], "total": 0})
    );
    // The stored record is kept.
    assert_eq!(
        fleet.sim.received_in(GW, 3)[1].metric("lp"),
        Some(Some(52.1))
    );

    let log = fleet.get("/admin/requests").await;
    assert!(log[1].get("conflicts").is_none(), "{}", log[1]);
    assert_eq!(log[2]["conflicts"], 2);
    let ingests: Vec<usize> = drain(&mut events)
        .into_iter()
        .filter_map(|event| match event {
            FleetEvent::Ingest(log) => Some(log.conflicts),
            _ => None,
        })
        .collect();
    assert_eq!(ingests, vec![0, 0, 2, 0]);
    fleet.stop().await;
}

#[tokio::test]
async fn a_bad_epoch_or_skipped_is_refused_naming_the_field() {
    let fleet = start(FleetSimConfig::new("t")).await;
    for (field, value, named) in [
        (
            "skipped",
            json!([[1, 2], [9, 3]]),
            "skipped[1]: from 9 is greater than to 3",
        ),
        (
            "skipped",
            json!([[1, 2, 3]]),
            "skipped[0]: invalid length 3",
        ),
        (
            "skipped",
            json!([7]),
            "skipped[0]: invalid type: integer `7`",
        ),
        (
            "skipped",
            json!([[-1, 2]]),
            "skipped[0][0]: invalid value: integer `-1`",
        ),
        ("skipped", json!("1-2"), "skipped: invalid type: string"),
        ("epoch", json!(-3), "epoch: invalid value: integer `-3`"),
        ("epoch", json!("7"), "epoch: invalid type: string"),
        (
            "epoch",
            json!(1u64 << 53),
            "epoch: invalid value: integer `9007199254740992`",
        ),
    ] {
        let mut body = batch(GW, &[1]);
        body[field] = value;
        let reply = fleet.push("t", &body).await;
        assert_eq!(reply.status, 400, "{field}: {}", reply.text);
        let answer = reply.json();
        assert_eq!(answer["error"], "malformed");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(named), "{field}: {detail}");
    }
    assert_eq!(fleet.seqs(GW).await, json!([]), "nothing stored");
    assert_eq!(
        fleet.get(&format!("/admin/skipped?gateway={GW}")).await,
        json!({"skipped": []})
    );
    fleet.stop().await;
}

#[tokio::test]
async fn declared_skips_are_merged_and_counted_once() {
    let fleet = start(FleetSimConfig::new("t")).await;
    // Re-sent until acknowledged: the same ranges several times, one
    // overlapping, one touching, one inside.
    for skipped in [
        &[(1041, 1050), (2001, 2001)][..],
        &[(1041, 1050), (2001, 2001)],
        &[(1045, 1060), (2002, 2005), (1042, 1043)],
    ] {
        let reply = fleet.push("t", &epoch_batch(5, &[], skipped)).await;
        assert_eq!(reply.json(), json!({"accepted": 0, "duplicates": 0}));
    }
    // Over the bound, twice, and another epoch with the same numbers.
    for _ in 0..2 {
        fleet
            .push("t", &epoch_batch(5, &[], &[(100_000, 110_000)]))
            .await;
    }
    fleet.push("t", &epoch_batch(6, &[], &[(1041, 1041)])).await;

    let expected = json!([
        {"epoch": 5, "from": 1041, "to": 1060},
        {"epoch": 5, "from": 2001, "to": 2005},
        {"epoch": 5, "from": 100_000, "to": 110_000},
        {"epoch": 6, "from": 1041, "to": 1041},
    ]);
    assert_eq!(
        fleet.get(&format!("/admin/skipped?gateway={GW}")).await,
        json!({"skipped": expected})
    );
    assert_eq!(
        fleet
            .get(&format!("/admin/skipped?gateway={GW}&epoch=6"))
            .await["skipped"],
        json!([{"epoch": 6, "from": 1041, "to": 1041}])
    );
    assert_eq!(
        serde_json::to_value(fleet.sim.skipped(GW)).expect("serializable"),
        expected
    );
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["skipped_numbers"], 20 + 5 + 10_001 + 1);
    assert_eq!(stats["skip_ranges_over_bound"], 1);
    assert_eq!(stats["records_in_skips"], 0);

    // The log and the events show the ranges as each request declared them.
    let log = fleet.get("/admin/requests").await;
    assert_eq!(
        log[2]["skipped"],
        json!([[1045, 1060], [2002, 2005], [1042, 1043]])
    );
    assert_eq!(log[2]["epoch"], 5);
    fleet.stop().await;
}

#[tokio::test]
async fn records_inside_declared_skips_are_counted_whichever_came_first() {
    let fleet = start(FleetSimConfig::new("t")).await;
    // Record first, then a declaration covering it.
    fleet.push("t", &epoch_batch(1, &[10, 11, 12], &[])).await;
    fleet.push("t", &epoch_batch(1, &[13], &[(12, 20)])).await;
    assert_eq!(fleet.sim.stats().records_in_skips, 2, "12 and 13");
    // Declaration first, then records; a re-send is not counted again.
    fleet.push("t", &epoch_batch(1, &[], &[(30, 31)])).await;
    fleet.push("t", &epoch_batch(1, &[31, 32], &[])).await;
    fleet.push("t", &epoch_batch(1, &[31], &[(30, 31)])).await;
    // The same numbers in another epoch are not inside anything.
    fleet.push("t", &epoch_batch(2, &[12, 31], &[])).await;
    let stats = fleet.get("/admin/stats").await;
    assert_eq!(stats["records_in_skips"], 3);
    let audit = fleet.sim.audit(GW);
    let per_epoch: Vec<(u64, u64)> = audit
        .epochs
        .iter()
        .map(|e| (e.epoch, e.records_in_skips))
        .collect();
    assert_eq!(per_epoch, vec![(1, 3), (2, 0)]);
    fleet.stop().await;
}

#[tokio::test]
async fn an_audit_finds_undeclared_holes_per_epoch() {
    let fleet = start(FleetSimConfig::new("t")).await;
    // Epoch 0 (no field): 1..=10 and 20..=30, 41; 11..=15 declared skipped.
    let mut seqs: Vec<u64> = (1..=10).chain(20..=30).collect();
    seqs.push(41);
    fleet.push_seqs("t", &seqs).await;
    fleet
        .push("t", &epoch_batch(0, &[], &[(11, 15), (35, 39)]))
        .await;
    // Epoch 9: the same numbers again, out of order, none skipped.
    fleet.push("t", &epoch_batch(9, &[5, 3, 8], &[])).await;

    let audit = fleet.get(&format!("/admin/audit?gateway={GW}")).await;
    assert_eq!(
        audit,
        json!({"gateway": GW, "epochs": [
            {"epoch": 0, "records": 22, "min_seq": 1, "max_seq": 41,
             "skipped_numbers": 10, "skipped_ranges": 2,
             "holes": [{"from": 16, "to": 19}, {"from": 31, "to": 34}, {"from": 40, "to": 40}],
             "hole_ranges": 3, "missing": 9, "records_in_skips": 0, "conflicts": 0},
            {"epoch": 9, "records": 3, "min_seq": 3, "max_seq": 8,
             "skipped_numbers": 0, "skipped_ranges": 0,
             "holes": [{"from": 4, "to": 4}, {"from": 6, "to": 7}],
             "hole_ranges": 2, "missing": 3, "records_in_skips": 0, "conflicts": 0},
        ]})
    );
    assert_eq!(
        fleet
            .get(&format!("/admin/audit?gateway={GW}&epoch=9"))
            .await["epochs"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let in_process = fleet.sim.audit(GW);
    assert_eq!(
        serde_json::to_value(&in_process).expect("serializable"),
        audit
    );
    assert_eq!(
        fleet.get("/admin/audit?gateway=nobody").await,
        json!({"gateway": "nobody", "epochs": []})
    );

    // Once the gap is explained, it is no hole.
    fleet
        .push("t", &epoch_batch(0, &[], &[(16, 19), (31, 34)]))
        .await;
    fleet.push("t", &epoch_batch(0, &[40], &[])).await;
    let epoch0 = &fleet.sim.audit(GW).epochs[0];
    assert!(epoch0.holes.is_empty(), "{epoch0:?}");
    assert_eq!((epoch0.hole_ranges, epoch0.missing), (0, 0));
    fleet.stop().await;
}

/// Pushes `batches` batches of 100 000 small records from [`GW`], gzipped,
/// losing every 1000th number; audits; checks the holes; returns how long
/// the audit took.
async fn audit_a_run(batches: u64) -> Duration {
    let fleet = start(FleetSimConfig::new("t")).await;
    let mut seq = 0u64;
    for _ in 0..batches {
        let seqs: Vec<u64> = (0..100_000u64)
            .map(|i| {
                seq += 1;
                if i % 1000 == 999 {
                    seq += 1;
                }
                seq
            })
            .collect();
        let records: Vec<String> = seqs
            .iter()
            .map(|seq| format!(r#"{{"seq":{seq},"device":"d","received_at":"2026-01-01T00:00:00.000Z","device_time":null,"metrics":{{}},"state":"measuring","flags":[]}}"#))
            .collect();
        let body = format!(r#"{{"gateway":"{GW}","records":[{}]}}"#, records.join(","));
        let request = fleet.ingest(
            &fleet.client,
            Some("t"),
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            gzip(body.as_bytes()),
        );
        assert_eq!(fleet.send(request).await.status, 200);
    }
    let started = Instant::now();
    let audit = fleet.sim.audit(GW);
    let took = started.elapsed();
    let epoch = &audit.epochs[0];
    assert_eq!(epoch.records, batches * 100_000);
    // Each lost number lies before a record sent: a hole of one number.
    let lost = batches * 100;
    assert_eq!((epoch.hole_ranges, epoch.missing), (lost, lost));
    assert_eq!(epoch.holes.len(), 100, "listed up to the cap");
    assert_eq!(
        epoch.holes[0],
        Hole {
            from: 1000,
            to: 1000
        }
    );
    fleet.stop().await;
    took
}

#[tokio::test]
async fn an_audit_finds_every_lost_number_of_a_long_run() {
    audit_a_run(1).await;
}

/// Run with `cargo test -p slmd-hil --release --test fleet_sim -- --ignored
/// --nocapture million`.
#[tokio::test]
#[ignore = "a million records: slow in a debug build"]
async fn an_audit_of_a_million_records_is_quick() {
    let took = audit_a_run(10).await;
    eprintln!("audit of 1 000 000 records: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn a_body_without_epoch_or_skipped_is_logged_as_before() {
    let fleet = start(FleetSimConfig::new("t")).await;
    fleet.push_seqs("t", &[1, 2]).await;
    fleet.push_seqs("t", &[2]).await;
    let log = fleet.get("/admin/requests").await;
    for entry in log.as_array().expect("a list") {
        for key in ["epoch", "skipped", "conflicts"] {
            assert!(entry.get(key).is_none(), "{key} in {entry}");
        }
    }
    let stats = fleet.get("/admin/stats").await;
    for key in [
        "conflicts",
        "skipped_numbers",
        "skip_ranges_over_bound",
        "records_in_skips",
    ] {
        assert_eq!(stats[key], 0, "{key}");
    }
    let received = fleet.get(&format!("/admin/received?gateway={GW}")).await;
    assert_eq!(received["records"], json!([record(1), record(2)]));
    assert_eq!(fleet.sim.skipped(GW), vec![]);
    assert!(fleet.sim.conflicts(GW).is_empty());
    for path in [
        "/admin/seqs?gateway=gw&epoch=x",
        "/admin/received?gateway=gw&epoch=-1",
        "/admin/audit",
        "/admin/audit?gateway=gw&from=1",
        "/admin/skipped?gw=gw",
        "/admin/conflicts?gateway=gw&epoch=",
    ] {
        let reply = fleet.admin_raw("GET", path, "").await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert!(reply.json()["error"].is_string(), "{path}: {}", reply.text);
    }
    fleet.stop().await;
}

#[tokio::test]
async fn the_fleet_sim_binary_prints_its_address_and_every_request() {
    let token = "bin-secret-token";
    let (child, mut lines) = spawn_fleet_sim(&[
        "--listen",
        "127.0.0.1:0",
        "--token",
        token,
        "--grace",
        "1h",
        "--poison",
        "99",
    ]);
    let listening = next_json(&mut lines).await.expect("listening line");
    assert_eq!(listening["event"], "listening", "{listening}");
    let addr: std::net::SocketAddr = listening["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad addr: {listening}"));
    assert_ne!(addr.port(), 0, "the real bound port");

    let http = client(None);
    let body = gzip(batch(GW, &[7, 8, 9]).to_string().as_bytes());
    let response = tokio::time::timeout(
        DEADLINE,
        http.post(format!("http://{addr}/api/fleet/ingest"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send(),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let ingest = next_json(&mut lines).await.expect("ingest line");
    assert_eq!(ingest["event"], "ingest", "{ingest}");
    assert_eq!(ingest["status"], 200);
    assert_eq!(ingest["outcome"], "accepted");
    assert_eq!(ingest["token"], fingerprint(token));
    assert_eq!(ingest["records"], 3);
    assert_eq!(ingest["accepted"], 3);
    assert_eq!(ingest["duplicates"], 0);
    assert_eq!(
        (ingest["first_seq"].clone(), ingest["last_seq"].clone()),
        (json!(7), json!(9))
    );
    assert!(
        ingest.get("epoch").is_none() && ingest.get("skipped").is_none(),
        "{ingest}"
    );

    // slmd's epoch and declared skips show in the line.
    let mut body = batch(GW, &[7]);
    body["epoch"] = json!(7_394_025_617u64);
    body["skipped"] = json!([[1041, 1050], [2001, 2001]]);
    let response = tokio::time::timeout(
        DEADLINE,
        http.post(format!("http://{addr}/api/fleet/ingest"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send(),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    assert_eq!(response.status().as_u16(), 200);
    let with_epoch = next_json(&mut lines).await.expect("ingest line");
    assert_eq!(with_epoch["epoch"], 7_394_025_617u64, "{with_epoch}");
    assert_eq!(with_epoch["skipped"], json!([[1041, 1050], [2001, 2001]]));
    assert_eq!(with_epoch["accepted"], 1, "another epoch: a new record");

    let rotate = http
        .post(format!("http://{addr}/admin/rotate"))
        .body(r#"{"token":"bin-secret-next"}"#)
        .send()
        .await
        .expect("rotate");
    assert_eq!(rotate.status().as_u16(), 200);
    let rotated = next_json(&mut lines).await.expect("rotate line");
    assert_eq!(rotated["event"], "rotate", "{rotated}");
    assert_eq!(rotated["current"], fingerprint("bin-secret-next"));

    let rest = stop_fleet_sim(child, lines).await;
    let stats = rest.last().expect("a stats line");
    assert_eq!(stats["unique"], 4);
    assert_eq!(stats["skipped_numbers"], 11);
    let printed = format!("{listening}{ingest}{rotated}{rest:?}");
    assert!(
        !printed.contains("secret"),
        "a plain token was printed: {printed}"
    );
}
