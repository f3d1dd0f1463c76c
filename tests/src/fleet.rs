//! The fleet side of end-to-end tests: a running `fleet-sim`, its admin
//! routes, and a plain HTTP/1.1 client over `std::net` (no client library
//! between the test and the bytes).

use crate::{Proc, START_TIMEOUT, bin};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// A response: status code and body text.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body, decoded as UTF-8 (lossy).
    pub body: String,
}

impl Response {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole answer.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The body of a `Transfer-Encoding: chunked` message, unchunked.
pub(crate) fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..end])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        let stop = (start + size).min(data.len());
        out.extend_from_slice(&data[start..stop]);
        data = data.get(stop + 2..).unwrap_or(&[]);
    }
    out
}

/// A running `fleet-sim`.
pub struct FleetSim {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:port`.
    pub addr: String,
}

impl FleetSim {
    /// `fleet-sim --listen 127.0.0.1:0 --token <token> <extra>`.
    pub fn start(token: &str, extra: &[&str]) -> FleetSim {
        let mut cmd = Command::new(bin("fleet-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--token", token])
            .args(extra);
        let proc = Proc::spawn(cmd);
        let (_, listening) = proc
            .stdout
            .wait_json(0, START_TIMEOUT, |v| v["event"] == "listening")
            .unwrap_or_else(|| panic!("fleet-sim did not listen\n{}", proc.transcript()));
        let addr = listening["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no addr in {listening}"))
            .to_owned();
        FleetSim { proc, addr }
    }

    /// `http://127.0.0.1:port`, for `[fleet].url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An admin request with a JSON body; panics unless it succeeds.
    pub fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let text = body.to_string();
        let response = http(
            &self.addr,
            method,
            path,
            &[("Content-Type", "application/json")],
            text.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            response.status == 200,
            "{method} {path} {text}: {} {}",
            response.status,
            response.body
        );
        if response.body.trim().is_empty() {
            Value::Null
        } else {
            response.json()
        }
    }

    /// An admin GET.
    pub fn get(&self, path: &str) -> Value {
        let response =
            http(&self.addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        response.json()
    }

    /// Rotates to `token` (the current one becomes the previous).
    pub fn rotate(&self, token: &str) -> Value {
        self.admin("POST", "/admin/rotate", json!({ "token": token }))
    }

    /// Queues a fault, e.g. `{"kind":"status","status":503,"count":3}`.
    pub fn fault(&self, fault: Value) {
        self.admin("POST", "/admin/faults", fault);
    }

    /// `/admin/intervals?gateway=`: the interval records (`"kind":
    /// "interval"`, SPEC §11) received from `gateway`, in first-arrival
    /// order, exactly as received.
    pub fn intervals(&self, gateway: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/intervals?gateway={gateway}"));
        v["records"]
            .as_array()
            .unwrap_or_else(|| panic!("no records in {v}"))
            .clone()
    }

    /// `/admin/events?gateway=`: the alert events received from `gateway`
    /// (`POST /api/fleet/events`), one of each `event_seq`, in `event_seq`
    /// order, as received (object keys sorted).
    pub fn events(&self, gateway: &str) -> Vec<Value> {
        self.events_query(gateway, "")
    }

    /// The alert events of `gateway` in arrival order.
    pub fn events_in_arrival(&self, gateway: &str) -> Vec<Value> {
        self.events_query(gateway, "&order=arrival")
    }

    /// The `events` list of `/admin/events?gateway=<gateway><query>`.
    fn events_query(&self, gateway: &str, query: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/events?gateway={gateway}{query}"));
        v["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events in {v}"))
            .clone()
    }

    /// The events of `gateway` received again with other content (an
    /// `event_seq` reused): `{"events","conflicts":[{"event_seq","stored",
    /// "incoming"}, ...],"total_conflicts"}` of `/admin/events`.
    pub fn event_conflicts(&self, gateway: &str) -> Value {
        self.get(&format!("/admin/events?gateway={gateway}"))
    }

    /// One events request with `token`, as a gateway sends it; the answer
    /// whatever its status (`200 {"accepted","duplicates"}` when taken).
    pub fn post_events(&self, token: &str, gateway: &str, events: &[Value]) -> Response {
        let body = json!({ "gateway": gateway, "events": events }).to_string();
        let auth = format!("Bearer {token}");
        http(
            &self.addr,
            "POST",
            "/api/fleet/events",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("events: {e}"))
    }

    /// Unique seqs received from `gateway`, in first-arrival order.
    pub fn seqs(&self, gateway: &str) -> Vec<u64> {
        let v = self.get(&format!("/admin/seqs?gateway={gateway}"));
        v["seqs"]
            .as_array()
            .unwrap_or_else(|| panic!("no seqs in {v}"))
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    }

    /// Unique records received from `gateway`, in first-arrival order.
    pub fn received(&self, gateway: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/received?gateway={gateway}"));
        v["records"]
            .as_array()
            .unwrap_or_else(|| panic!("no records in {v}"))
            .clone()
    }

    /// `/admin/audit?gateway=`: per epoch, records, holes and declared
    /// skips.
    pub fn audit(&self, gateway: &str) -> Value {
        self.get(&format!("/admin/audit?gateway={gateway}"))
    }

    /// `/admin/conflicts?gateway=`: seqs that arrived twice with different
    /// content (a reused number).
    pub fn conflicts(&self, gateway: &str) -> Value {
        self.get(&format!("/admin/conflicts?gateway={gateway}"))
    }

    /// `/admin/skipped?gateway=`: the declared skips, merged.
    pub fn skipped(&self, gateway: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/skipped?gateway={gateway}"));
        v["skipped"]
            .as_array()
            .unwrap_or_else(|| panic!("no skipped in {v}"))
            .clone()
    }

    /// Pushes `records` as `gateway` with `token`, as a gateway would (a
    /// fleet that already holds them, for tests of what comes after).
    pub fn ingest(&self, token: &str, gateway: &str, records: &[Value]) {
        for chunk in records.chunks(5000) {
            let response = self.post_ingest(token, gateway, chunk);
            assert_eq!(response.status, 200, "ingest: {}", response.body);
        }
    }

    /// One ingest request with `token`, as a gateway sends it.
    fn post_ingest(&self, token: &str, gateway: &str, records: &[Value]) -> Response {
        let body = json!({ "gateway": gateway, "records": records }).to_string();
        let auth = format!("Bearer {token}");
        http(
            &self.addr,
            "POST",
            "/api/fleet/ingest",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("ingest: {e}"))
    }

    /// `/admin/stats`.
    pub fn stats(&self) -> Value {
        self.get("/admin/stats")
    }

    /// `/admin/requests`: every ingest, heartbeat and events request, in
    /// order (each names its `route`).
    pub fn requests(&self) -> Vec<Value> {
        let v = self.get("/admin/requests");
        match v {
            Value::Array(a) => a,
            other => other["requests"]
                .as_array()
                .unwrap_or_else(|| panic!("no requests in {other}"))
                .clone(),
        }
    }

    /// Queues `fault` for the requests of `route` (`"ingest"`,
    /// `"heartbeat"`, `"events"` or `"all"`, whose count every route
    /// consumes), e.g.
    /// `fault_on("all", json!({"kind":"status","status":503,"count":100000}))`.
    pub fn fault_on(&self, route: &str, fault: Value) {
        let mut fault = fault;
        fault["route"] = json!(route);
        self.admin("POST", "/admin/faults", fault);
    }

    /// "The fleet is down": every ingest, heartbeat and events request is
    /// answered `503` until [`FleetSim::clear_faults`].
    pub fn outage(&self) {
        self.fault_on(
            "all",
            json!({"kind": "status", "status": 503, "count": 100_000}),
        );
    }

    /// Drops every waiting fault (`DELETE /admin/faults`); returns how many
    /// there were.
    pub fn clear_faults(&self) -> u64 {
        let v = self.admin("DELETE", "/admin/faults", Value::Null);
        v["dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("no dropped in {v}"))
    }

    /// `/admin/heartbeats?gateway=`: the accepted heartbeats of `gateway`
    /// (the last 1000), oldest first, as whole entries
    /// `{"at","token","token_role","status","body"}`; the body as the
    /// gateway sent it is `entry["body"]`.
    pub fn heartbeats(&self, gateway: &str) -> Vec<Value> {
        let v = self.get(&format!("/admin/heartbeats?gateway={gateway}"));
        v["heartbeats"]
            .as_array()
            .unwrap_or_else(|| panic!("no heartbeats in {v}"))
            .clone()
    }

    /// `/admin/liveness`: `{"gateways":[{"gateway","online","last_heartbeat_at",
    /// "interval_ms","heartbeats","offline_episodes"}, ...]}`.
    pub fn liveness(&self) -> Value {
        self.get("/admin/liveness")
    }

    /// The `/admin/liveness` entry of `gateway`, `None` before its first
    /// accepted heartbeat.
    pub fn liveness_of(&self, gateway: &str) -> Option<Value> {
        let v = self.liveness();
        v["gateways"]
            .as_array()
            .unwrap_or_else(|| panic!("no gateways in {v}"))
            .iter()
            .find(|g| g["gateway"] == gateway)
            .cloned()
    }

    /// One heartbeat request with `token` and `body`, as a gateway sends it;
    /// the answer whatever its status (`204` when accepted).
    pub fn post_heartbeat(&self, token: &str, body: &Value) -> Response {
        let text = body.to_string();
        let auth = format!("Bearer {token}");
        http(
            &self.addr,
            "POST",
            "/api/fleet/heartbeat",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            text.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("heartbeat: {e}"))
    }

    /// Whether `token` is accepted right now: an empty batch is pushed with
    /// it (an empty batch stores nothing).
    pub fn accepts(&self, token: &str) -> bool {
        let response = self.post_ingest(token, "probe", &[]);
        match response.status {
            200 => true,
            401 => false,
            other => panic!("probe ingest answered {other}: {}", response.body),
        }
    }
}

/// A `[fleet]` table pushing to `url` with `tokens` (preferred first), fast
/// timings for tests; each `key = value` line of `extra` adds a key or
/// replaces the default one.
pub fn fleet_section(url: &str, tokens: &[&str], extra: &str) -> String {
    let tokens: Vec<String> = tokens.iter().map(|t| format!("{t:?}")).collect();
    let mut lines: Vec<(String, String)> = [
        ("enabled", "true".to_owned()),
        ("url", format!("{url:?}")),
        ("tokens", format!("[{}]", tokens.join(", "))),
        ("interval", "\"200ms\"".to_owned()),
        ("retry_min", "\"50ms\"".to_owned()),
        ("retry_max", "\"500ms\"".to_owned()),
        ("auth_retry", "\"500ms\"".to_owned()),
        ("timeout", "\"2s\"".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once('=').expect("extra lines are key = value");
        let (key, value) = (key.trim().to_owned(), value.trim().to_owned());
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => lines.push((key, value)),
        }
    }
    let body: Vec<String> = lines.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("[fleet]\n{}\n", body.join("\n"))
}

/// The short SHA-256 fingerprint the daemon and `fleet-sim` print for a token.
pub fn fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}
