//! The local HTTP API in-process: a real hub, a real buffer file, the API
//! served on 127.0.0.1:0 with `slmd::api::serve`, and plain HTTP clients
//! (reqwest, and raw TCP for Server-Sent Events).

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use serde_json::Value;
use slmd::api::{self, ApiState};
use slmd::buffer::{self, Buffer, BufferSlot, Settings, WriterHandle};
use slmd::config::{ApiConfig, Durability};
use slmd::device::health::{Health, HealthRules, HealthValue};
use slmd::device::{DeviceStatus, StatusCell, lock_status};
use slmd::fanout::{Hub, LIVE_CAPACITY, LinkState};
use slmd::record::{Flag, MeterState, Reading};
use slmd::uplink::{FleetState, FleetStatus, FleetStatusCell};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen soon.
const SOON: Duration = Duration::from_secs(10);

/// The keys of a record, exactly (SPEC §3).
const RECORD_KEYS: [&str; 7] = [
    "seq",
    "device",
    "received_at",
    "device_time",
    "metrics",
    "state",
    "flags",
];

/// Devices: two that report, one that never does.
const DEVICES: [&str; 3] = ["north", "south", "quiet"];

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 14, 0, 0)
        .single()
        .expect("valid time")
}

fn reading(device: &str, received_at: DateTime<Utc>, lp: f64) -> Reading {
    Reading {
        device: Arc::from(device),
        received_at,
        device_time: Some(received_at - ChronoDuration::seconds(1)),
        metrics: vec![("lp", Some(lp)), ("leq", Some(55.3)), ("lmax", None)],
        state: MeterState::Measuring,
        flags: vec![Flag::Overload],
    }
}

fn status_cell(id: &str) -> StatusCell {
    Arc::new(Mutex::new(DeviceStatus {
        id: id.to_owned(),
        protocol: "nl43",
        target: "tcp 192.0.2.10:2255".to_owned(),
        settings: Arc::new(vec![("protocol", "nl43".to_owned())]),
        identity: None,
        state: LinkState::Connecting,
        task_failed: false,
        readings_total: 0,
        last_reading_at: None,
        last_error: None,
        connects: 0,
        bad_answers: 0,
        refused_commands: 0,
        timeouts: 0,
        skipped_lines: 0,
        overlong_lines: 0,
        stale_bytes: 0,
        state_since: chrono::Utc::now(),
        run_state: MeterState::Unknown,
        health: Health::initial(&HealthRules {
            battery: true,
            sd_free: true,
            clock: true,
        }),
        care: Default::default(),
    }))
}

/// How to set up one API under test.
struct Setup {
    tokens: Vec<String>,
    stream_max: Duration,
    stuck_after: Option<Duration>,
    keep_alive: Option<Duration>,
    /// Open the buffer (otherwise the slot stays empty).
    buffer: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tokens: Vec::new(),
            stream_max: Duration::from_secs(600),
            stuck_after: None,
            keep_alive: None,
            buffer: true,
        }
    }
}

/// One API under test and everything around it.
struct Api {
    addr: SocketAddr,
    hub: Arc<Hub>,
    cells: Vec<StatusCell>,
    fleet: FleetStatusCell,
    buffer: Option<Buffer>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    client: reqwest::Client,
    token: Option<String>,
    _writer: Option<WriterHandle>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(setup: Setup) -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let slot: BufferSlot = Arc::new(OnceLock::new());
        let (hub, buffer, writer) = if setup.buffer {
            let (buffer, _) = buffer::open(Settings {
                path: dir.path().join(buffer::FILE_NAME),
                max_records: 100_000,
                max_bytes: None,
                durability: Durability::Normal,
                memory_queue: 10_000,
                batch_max: 1000,
                commit_interval: std::time::Duration::ZERO,
                exclusive: true,
            })
            .expect("buffer opens");
            let hub = Hub::new(buffer.next_seq());
            let writer = buffer
                .start_writer(hub.add_durable_sink(1024))
                .expect("writer starts");
            slot.set(buffer.clone()).expect("slot empty");
            (hub, Some(buffer), Some(writer))
        } else {
            (Hub::new(1), None, None)
        };
        let cells: Vec<StatusCell> = DEVICES.iter().map(|d| status_cell(d)).collect();
        let fleet: FleetStatusCell = Arc::new(Mutex::new(FleetStatus::disabled()));
        let config = ApiConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            tokens: setup.tokens.clone(),
            stream_max: setup.stream_max,
        };
        let mut state = ApiState::new(
            &config,
            "gw-test".to_owned(),
            hub.clone(),
            slot,
            cells.clone(),
            fleet.clone(),
        );
        if let Some(bound) = setup.stuck_after {
            state = state.with_stuck_after(bound);
        }
        if let Some(interval) = setup.keep_alive {
            state = state.with_keep_alive(interval);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(api::serve(listener, state, shutdown.clone()));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(SOON)
            .build()
            .expect("client");
        Api {
            addr,
            hub,
            cells,
            fleet,
            buffer,
            shutdown,
            server: Some(server),
            client,
            token: setup.tokens.first().cloned(),
            _writer: writer,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path` with the configured token (if any).
    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// `GET path` → status and JSON body.
    async fn json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
        (status, value)
    }

    async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status().as_u16(), 200);
        response.text().await.expect("metrics body")
    }

    /// Waits until the metric `name` (no labels) satisfies `ok`.
    async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + SOON;
        loop {
            let value = metric(&self.metrics().await, name, &[]);
            if value.is_some_and(&ok) {
                return value.unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {value:?}\n{}",
                self.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn publish(&self, device: &str, received_at: DateTime<Utc>, lp: f64) -> u64 {
        self.hub.publish(reading(device, received_at, lp)).seq
    }

    /// Waits until the buffer committed `count` records.
    async fn wait_written(&self, count: u64) {
        let buffer = self.buffer.as_ref().expect("a buffer");
        let deadline = Instant::now() + SOON;
        while buffer.counters().written < count {
            assert!(
                Instant::now() < deadline,
                "the buffer did not commit {count} records"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens `/v1/stream{query}`.
    async fn stream(&self, query: &str) -> SseClient {
        SseClient::open(
            self.addr,
            &format!("/v1/stream{query}"),
            self.token.as_deref(),
            None,
        )
        .await
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            timeout(SOON, server)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task")
                .expect("serve ok");
        }
    }
}

/// The value of `name{labels}` in a metrics page.
fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_owned()
    } else {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    page.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == wanted).then(|| value.parse().ok()).flatten()
    })
}

/// One Server-Sent Event (or a comment line block).
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
    comment: bool,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data not JSON ({e}): {self:?}"))
    }

    /// A record: no event name.
    fn is_record(&self) -> bool {
        self.event.is_none() && !self.comment
    }

    fn seq(&self) -> u64 {
        self.json()["seq"].as_u64().expect("a seq")
    }
}

/// A raw SSE client: HTTP/1.0 (so the body is not chunked) over TCP.
struct SseClient {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<String>,
}

impl SseClient {
    /// Connects (with a small receive buffer when `rcvbuf` is set, so a
    /// client that stops reading fills up fast) and reads the head.
    async fn open(
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        rcvbuf: Option<usize>,
    ) -> SseClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        socket.connect(&addr.into()).expect("connect");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut stream = TcpStream::from_std(socket.into()).expect("tokio stream");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("send request");
        let mut reader = BufReader::new(stream);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let n = timeout(SOON, reader.read_line(&mut line))
                .await
                .expect("response head in time")
                .expect("read head");
            assert!(n > 0, "connection closed in the head: {head:?}");
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            head.push(line);
        }
        let status = head[0]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        SseClient {
            reader,
            status,
            headers: head,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    /// The next event or comment; `None` at the end of the stream.
    async fn next_raw(&mut self) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        let mut any = false;
        loop {
            let mut line = String::new();
            let n = timeout(SOON, self.reader.read_line(&mut line))
                .await
                .expect("an SSE line in time")
                .ok()?;
            if n == 0 {
                return any.then_some(event);
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return Some(event);
                }
                continue;
            }
            any = true;
            if line.starts_with(':') {
                event.comment = true;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event.event = Some(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => {}
            }
        }
    }

    /// The next event, skipping keep-alive comments.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            let event = self.next_raw().await?;
            if !event.comment {
                return Some(event);
            }
        }
    }

    async fn expect_next(&mut self) -> SseEvent {
        self.next().await.expect("another event")
    }

    /// The next record, skipping `state` events.
    async fn next_record(&mut self) -> SseEvent {
        loop {
            let event = self.expect_next().await;
            match event.event.as_deref() {
                None => return event,
                Some("state") => {}
                Some(other) => panic!("expected a record, got {other}: {event:?}"),
            }
        }
    }

    /// Whether the server closed (or reset) the connection, reading
    /// whatever is left.
    async fn closed(&mut self) -> bool {
        let mut sink = Vec::new();
        timeout(
            SOON,
            tokio::io::AsyncReadExt::read_to_end(&mut self.reader, &mut sink),
        )
        .await
        .is_ok()
    }
}

/// `name{key="value",...} number`, with label escapes undone; panics on
/// anything else.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad name: {line}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label: {line}"));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        other => panic!("bad escape {other:?}: {line}"),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.push((key.to_owned(), value));
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest
        .strip_prefix(' ')
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("bad value: {line}"));
    (name.to_owned(), labels, value)
}

/// A response body as JSON.
async fn body_json(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn assert_record_keys(value: &Value) {
    let expected: BTreeSet<String> = RECORD_KEYS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(keys(value), expected, "record keys of {value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_gateway_devices_with_health_buffer_fleet_and_subscribers() {
    let api = Api::start(Setup::default()).await;
    {
        let mut north = lock_status(&api.cells[0]);
        north.state = LinkState::Connected;
        north.readings_total = 2;
        north.last_reading_at = Some(t0());
        north.health.battery = HealthValue::Read("Full".to_owned());
        north.health.clock_offset_s = HealthValue::Read(-2);
        north.run_state = MeterState::Stopped;
        north.bad_answers = 3;
        north.timeouts = 4;
        north.refused_commands = 5;
        let mut south = lock_status(&api.cells[1]);
        south.state = LinkState::Down;
        south.last_error = Some("no answer within 2s".to_owned());
    }
    {
        let mut fleet = api.fleet.lock().expect("fleet");
        fleet.enabled = true;
        fleet.state = FleetState::Ok;
        fleet.token_slot = Some(1);
        fleet.accepted = 7;
    }
    api.publish("north", t0(), 50.0);
    let newest = api.publish("north", t0() + ChronoDuration::seconds(1), 51.0);
    api.wait_written(2).await;

    let (code, status) = api.json("/v1/status").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["gateway"], "gw-test");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_u64().is_some(), "{status}");
    let devices = status["devices"].as_array().expect("devices");
    let ids: Vec<&str> = devices.iter().filter_map(|d| d["id"].as_str()).collect();
    assert_eq!(ids, DEVICES);
    let north = &devices[0];
    assert_eq!(north["state"], "connected");
    assert_eq!(north["readings_total"], 2);
    assert_eq!(north["last_reading_at"], "2026-11-22T14:00:00.000Z");
    assert_eq!(north["health"]["battery"], "Full");
    assert_eq!(north["health"]["clock_offset_s"], -2);
    assert_eq!(
        north["health"]["sd_free_percent"],
        serde_json::Value::Null,
        "not read yet"
    );
    assert_eq!(north["run_state"], "stopped");
    assert_eq!(north["bad_answers"], 3);
    assert_eq!(north["watchers"], 0);
    assert_eq!(devices[1]["state"], "down");
    assert_eq!(devices[1]["last_error"], "no answer within 2s");
    assert_eq!(devices[2]["state"], "connecting");

    let buffer = &status["buffer"];
    assert_eq!(buffer["open"], true, "{buffer}");
    assert_eq!(buffer["records"], 2);
    assert_eq!(buffer["capacity"], 100_000);
    assert_eq!(buffer["unsent"], 2);
    assert_eq!(
        buffer["oldest_unsent_received_at"],
        "2026-11-22T14:00:00.000Z"
    );
    assert_eq!(buffer["evicted_unsent"], 0);
    assert_eq!(buffer["written"], 2);

    let fleet = &status["fleet"];
    assert_eq!(fleet["enabled"], true);
    assert_eq!(fleet["state"], "ok");
    assert_eq!(fleet["token_slot"], 1);
    assert_eq!(fleet["accepted"], 7);
    assert_eq!(status["subscribers"], 0);

    // With a stream open, subscribers and watchers count it.
    let mut sse = api.stream("?device=north").await;
    assert_eq!(sse.next_record().await.seq(), newest);
    let (_, status) = api.json("/v1/status").await;
    assert_eq!(status["subscribers"], 1, "{status}");
    assert_eq!(status["devices"][0]["watchers"], 1);
    assert_eq!(status["devices"][1]["watchers"], 0);

    // Health data is in status and the metrics, never in records.
    let (_, live) = api.json("/v1/devices/north/live").await;
    assert!(!live.to_string().contains("Full"), "{live}");
    let metrics = api.metrics().await;
    assert!(
        metrics.contains("slmd_device_battery_info{device=\"north\",battery=\"Full\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slmd_device_clock_offset_seconds{device=\"north\"} -2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slmd_device_run_state{device=\"north\",state=\"stopped\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("slmd_device_sd_free_percent{device=\"north\"}"),
        "not read yet: absent"
    );
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_history_say_when_the_buffer_is_not_open() {
    let api = Api::start(Setup {
        buffer: false,
        ..Setup::default()
    })
    .await;
    let (code, status) = api.json("/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["buffer"]["open"], false, "{status}");
    assert!(
        status["buffer"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not open")),
        "{status}"
    );
    let (code, body) = api.json("/v1/devices/north/history").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["error"], "buffer not open");
    // Live data does not need the buffer.
    api.publish("north", t0(), 50.0);
    let (code, live) = api.json("/v1/devices/north/live").await;
    assert_eq!(code, 200, "{live}");
    let metrics = api.metrics().await;
    assert_eq!(metric(&metrics, "slmd_buffer_open", &[]), Some(0.0));
    assert_eq!(metric(&metrics, "slmd_buffer_records", &[]), None);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_the_newest_record_or_says_why_not() {
    let api = Api::start(Setup::default()).await;
    api.publish("north", t0(), 50.0);
    let newest = api.publish("north", t0() + ChronoDuration::seconds(1), 51.5);
    api.publish("south", t0(), 40.0);

    let (code, live) = api.json("/v1/devices/north/live").await;
    assert_eq!(code, 200, "{live}");
    assert_record_keys(&live);
    assert_eq!(live["seq"], newest);
    assert_eq!(live["device"], "north");
    assert_eq!(live["metrics"]["lp"], 51.5);
    assert_eq!(live["metrics"]["lmax"], Value::Null);
    assert_eq!(live["flags"], serde_json::json!(["overload"]));
    assert_eq!(live["received_at"], "2026-11-22T14:00:01.000Z");
    assert_eq!(live["device_time"], "2026-11-22T14:00:00Z");

    let (code, unknown) = api.json("/v1/devices/nope/live").await;
    assert_eq!(code, 404, "{unknown}");
    assert_eq!(unknown["error"], "unknown device");
    assert!(
        unknown["detail"]
            .as_str()
            .is_some_and(|d| d.contains("north"))
    );

    let (code, quiet) = api.json("/v1/devices/quiet/live").await;
    assert_eq!(code, 404, "{quiet}");
    assert_eq!(quiet["error"], "no reading yet");
    assert_ne!(quiet["error"], unknown["error"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_the_buffer_oldest_first_with_since_and_limit() {
    let api = Api::start(Setup::default()).await;
    let mut north = Vec::new();
    for i in 0..20 {
        let at = t0() + ChronoDuration::seconds(i);
        north.push(api.publish("north", at, 50.0 + i as f64));
        api.publish("south", at, 40.0);
    }
    api.wait_written(40).await;

    let (code, all) = api.json("/v1/devices/north/history").await;
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["device"], "north");
    assert_eq!(all["limit"], api::HISTORY_DEFAULT_LIMIT);
    assert_eq!(all["truncated"], false);
    let records = all["records"].as_array().expect("records");
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, north);
    for record in records {
        assert_record_keys(record);
        assert_eq!(record["device"], "north");
    }

    // since is inclusive; limit keeps the oldest; truncated says more follow.
    let (code, page) = api
        .json("/v1/devices/north/history?since=2026-11-22T14:00:05Z&limit=3")
        .await;
    assert_eq!(code, 200, "{page}");
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, north[5..8]);
    assert_eq!(page["truncated"], true);
    assert_eq!(page["since"], "2026-11-22T14:00:05.000Z");

    // An offset, percent-encoded.
    let (code, page) = api
        .json("/v1/devices/north/history?since=2026-11-22T15:00:18%2B01:00")
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(2));

    for (query, param) in [
        ("since=yesterday", "since"),
        ("since=", "since"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=ten", "limit"),
        ("until=2026-11-22T14:00:00Z", "until"),
    ] {
        let (code, body) = api
            .json(&format!("/v1/devices/north/history?{query}"))
            .await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["parameter"], param, "{query}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains(param)),
            "{query}: {body}"
        );
    }
    let (code, body) = api.json("/v1/devices/nope/history").await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"], "unknown device");
    let (code, body) = api.json("/v1/devices/quiet/history").await;
    assert_eq!(
        (code, body["records"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_newest_of_each_watched_device_then_the_flow() {
    let api = Api::start(Setup::default()).await;
    api.publish("north", t0(), 50.0);
    let south = api.publish("south", t0(), 40.0);
    let north = api.publish("north", t0(), 51.0);
    lock_status(&api.cells[1]).state = LinkState::Down;
    lock_status(&api.cells[1]).last_error = Some("refused".to_owned());

    let mut sse = api.stream("").await;
    assert_eq!(sse.status, 200);
    assert!(
        sse.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        sse.headers
    );
    // Snapshot in seq order, records are unnamed events with id = seq.
    let first = sse.expect_next().await;
    assert!(first.is_record(), "{first:?}");
    assert_eq!(first.seq(), south);
    assert_eq!(first.id.as_deref(), Some(south.to_string().as_str()));
    assert_record_keys(&first.json());
    assert_eq!(sse.expect_next().await.seq(), north);
    // Then the state of each watched device.
    let mut states = Vec::new();
    for _ in DEVICES {
        let event = sse.expect_next().await;
        assert_eq!(event.event.as_deref(), Some("state"), "{event:?}");
        states.push(event.json());
    }
    assert_eq!(
        states,
        vec![
            serde_json::json!({"device": "north", "state": "connecting", "error": null}),
            serde_json::json!({"device": "south", "state": "down", "error": "refused"}),
            serde_json::json!({"device": "quiet", "state": "connecting", "error": null}),
        ]
    );
    // Then the live flow, in seq order, state changes included.
    let mut expected = Vec::new();
    for i in 0..50 {
        expected.push(api.publish(if i % 2 == 0 { "north" } else { "south" }, t0(), 52.0));
    }
    api.hub.device_state(
        Arc::from("north"),
        LinkState::Down,
        Some("timeout".to_owned()),
    );
    let last = api.publish("north", t0(), 53.0);
    expected.push(last);
    let mut seen = Vec::new();
    let mut state_change = None;
    while seen.len() < expected.len() {
        let event = sse.expect_next().await;
        match event.event.as_deref() {
            None => {
                assert_record_keys(&event.json());
                seen.push(event.seq());
            }
            Some("state") => state_change = Some((seen.len(), event.json())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, expected);
    assert_eq!(
        state_change,
        Some((
            50,
            serde_json::json!({"device": "north", "state": "down", "error": "timeout"})
        ))
    );
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_filter_picks_devices_and_rejects_unknown_ones() {
    let api = Api::start(Setup::default()).await;
    api.publish("north", t0(), 50.0);
    let south = api.publish("south", t0(), 40.0);

    let mut sse = api.stream("?device=south,quiet").await;
    assert_eq!(sse.expect_next().await.seq(), south);
    let states: Vec<String> = [sse.expect_next().await, sse.expect_next().await]
        .iter()
        .map(|e| e.json()["device"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(states, ["south", "quiet"]);
    assert_eq!(*api.hub.watchers("south").borrow(), 1);
    assert_eq!(*api.hub.watchers("quiet").borrow(), 1);
    assert_eq!(*api.hub.watchers("north").borrow(), 0);
    api.publish("north", t0(), 50.0);
    api.hub
        .device_state(Arc::from("north"), LinkState::Down, None);
    let wanted = api.publish("south", t0(), 41.0);
    let next = sse.expect_next().await;
    assert!(next.is_record(), "{next:?}");
    assert_eq!(next.seq(), wanted);

    for query in [
        "?device=north,nope",
        "?device=",
        "?device=,",
        "?devices=north",
    ] {
        let response = api.get(&format!("/v1/stream{query}")).await;
        assert_eq!(response.status().as_u16(), 400, "{query}");
        let body: Value = body_json(response).await;
        assert!(
            body["error"].is_string() && body["detail"].is_string(),
            "{body}"
        );
    }
    let response = api.get("/v1/stream?device=nope").await;
    let body: Value = body_json(response).await;
    assert_eq!(body["parameter"], "device");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains("nope")),
        "{body}"
    );
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_behind_is_told_what_it_missed_and_resumes_from_the_newest() {
    let api = Api::start(Setup {
        buffer: false,
        ..Setup::default()
    })
    .await;
    // A small receive buffer, so not reading fills the pipe quickly.
    let mut sse = SseClient::open(api.addr, "/v1/stream?device=north", None, Some(4096)).await;
    assert_eq!(sse.expect_next().await.event.as_deref(), Some("state"));
    // The client stops reading while far more than the broadcast holds,
    // and far more than any socket buffer holds, is published.
    let total = 8 * LIVE_CAPACITY;
    let first = api.publish("north", t0(), 0.0);
    for i in 1..total {
        api.publish("north", t0(), i as f64);
    }
    let last = first + total as u64 - 1;
    // Then it reads again.
    let mut received = Vec::new();
    let mut missed = 0;
    let mut lags = 0;
    while received.last() != Some(&last) {
        let event = sse.expect_next().await;
        match event.event.as_deref() {
            None => received.push(event.seq()),
            Some("lagged") => {
                lags += 1;
                missed += event.json()["missed"].as_u64().expect("missed");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(lags >= 1, "no lagged event");
    assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order");
    // Every record was either received or counted as missed.
    assert_eq!(received.len() as u64 + missed, total as u64);
    // The flow goes on.
    let next = api.publish("north", t0(), 1.0);
    assert_eq!(sse.expect_next().await.seq(), next);
    let metrics = api.metrics().await;
    assert_eq!(
        metric(&metrics, "slmd_stream_lagged_records_total", &[]),
        Some(missed as f64)
    );
    assert_eq!(
        metric(&metrics, "slmd_stream_stuck_disconnects_total", &[]),
        Some(0.0)
    );
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_is_cut_off_and_counted_while_another_gets_every_record() {
    let api = Api::start(Setup {
        buffer: false,
        stuck_after: Some(Duration::from_millis(300)),
        ..Setup::default()
    })
    .await;
    let mut stuck = SseClient::open(api.addr, "/v1/stream?device=north", None, Some(4096)).await;
    let mut reader = api.stream("?device=north").await;
    assert_eq!(reader.expect_next().await.event.as_deref(), Some("state"));
    assert_eq!(
        api.wait_metric("slmd_stream_subscribers", |v| v == 2.0)
            .await,
        2.0
    );

    // Bursts well below the broadcast's capacity, each read by `reader`
    // before the next: `reader` never lags, `stuck` never reads.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut expected = Vec::new();
    let mut seen = Vec::new();
    loop {
        for _ in 0..100 {
            expected.push(api.publish("north", t0(), 50.0));
        }
        while seen.len() < expected.len() {
            let event = reader.expect_next().await;
            assert!(event.is_record(), "the reading client got {event:?}");
            seen.push(event.seq());
        }
        let page = api.metrics().await;
        if metric(&page, "slmd_stream_stuck_disconnects_total", &[]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck client was never cut off\n{page}"
        );
    }
    assert_eq!(seen, expected);
    // The stuck stream is gone; its connection was closed.
    api.wait_metric("slmd_stream_subscribers", |v| v == 1.0)
        .await;
    assert!(stuck.closed().await, "the stuck connection stays open");
    assert_eq!(*api.hub.watchers("north").borrow(), 1);
    // The other stream goes on.
    let next = api.publish("north", t0(), 50.0);
    assert_eq!(reader.expect_next().await.seq(), next);
    let page = api.metrics().await;
    assert_eq!(
        metric(&page, "slmd_stream_stuck_disconnects_total", &[]),
        Some(1.0)
    );
    drop(reader);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_max_ends_the_stream_with_an_end_event_and_releases_the_watch() {
    let api = Api::start(Setup {
        stream_max: Duration::from_millis(500),
        ..Setup::default()
    })
    .await;
    let mut watchers = api.hub.watchers("north");
    let mut sse = api.stream("?device=north").await;
    assert_eq!(*watchers.borrow_and_update(), 1);
    assert_eq!(*api.hub.watchers("south").borrow(), 0);
    let end = loop {
        let event = sse.expect_next().await;
        if event.event.as_deref() == Some("end") {
            break event;
        }
    };
    assert_eq!(end.json(), serde_json::json!({"reason": "stream_max"}));
    assert!(sse.next().await.is_none(), "nothing after end");
    timeout(SOON, watchers.wait_for(|n| *n == 0))
        .await
        .expect("the watch is released")
        .expect("watch channel");
    api.wait_metric("slmd_stream_subscribers", |v| v == 0.0)
        .await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_releases_its_watch() {
    let api = Api::start(Setup::default()).await;
    let mut watchers = api.hub.watchers("north");
    let mut sse = api.stream("").await;
    assert_eq!(sse.expect_next().await.event.as_deref(), Some("state"));
    assert_eq!(*watchers.borrow_and_update(), 1);
    drop(sse);
    timeout(SOON, watchers.wait_for(|n| *n == 0))
        .await
        .expect("the watch is released when the client leaves")
        .expect("watch channel");
    api.wait_metric("slmd_stream_subscribers", |v| v == 0.0)
        .await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keep_alive_comments() {
    let api = Api::start(Setup {
        keep_alive: Some(Duration::from_millis(100)),
        ..Setup::default()
    })
    .await;
    let mut sse = api.stream("?device=north").await;
    assert_eq!(sse.expect_next().await.event.as_deref(), Some("state"));
    let comment = sse.next_raw().await.expect("a keep-alive");
    assert!(comment.comment, "{comment:?}");
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_serve_returns() {
    let api = Api::start(Setup::default()).await;
    let mut sse = api.stream("?device=north").await;
    assert_eq!(sse.expect_next().await.event.as_deref(), Some("state"));
    api.shutdown.cancel();
    let end = sse.expect_next().await;
    assert_eq!(end.event.as_deref(), Some("end"));
    assert_eq!(end.json(), serde_json::json!({"reason": "shutdown"}));
    assert!(sse.next().await.is_none());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_a_stuck_stream_after_the_grace_period() {
    let api = Api::start(Setup {
        buffer: false,
        ..Setup::default()
    })
    .await;
    let mut stuck = SseClient::open(api.addr, "/v1/stream?device=north", None, Some(4096)).await;
    // Fill its pipe: it never reads.
    for _ in 0..4 * LIVE_CAPACITY {
        api.publish("north", t0(), 50.0);
    }
    let started = Instant::now();
    api.stop().await;
    assert!(started.elapsed() < api::SHUTDOWN_GRACE + Duration::from_secs(3));
    assert!(stuck.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_every_route() {
    let token = "s3cret-Token_1";
    let api = Api::start(Setup {
        tokens: vec!["other-token".to_owned(), token.to_owned()],
        ..Setup::default()
    })
    .await;
    api.publish("north", t0(), 50.0);
    let routes = [
        "/v1/status",
        "/v1/devices/north/live",
        "/v1/devices/north/history",
        "/v1/stream",
        "/metrics",
        "/nowhere",
    ];
    for route in routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic czNjcmV0"),
            Some(token),
        ] {
            let mut request = api.client.get(api.url(route));
            if let Some(value) = auth {
                request = request.header("authorization", value);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status().as_u16(), 401, "{route} with {auth:?}");
            assert!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{route}: {:?}",
                response.headers()
            );
            let body: Value = body_json(response).await;
            assert!(
                body["error"].is_string() && body["detail"].is_string(),
                "{body}"
            );
            assert!(!body.to_string().contains("s3cret"), "{body}");
        }
    }
    // The right token (either configured one) opens every route.
    for route in &routes[..5] {
        let response = api.get(route).await;
        assert_eq!(response.status().as_u16(), 200, "{route}");
    }
    let response = api
        .client
        .get(api.url("/v1/status"))
        .bearer_auth("other-token")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(api.get("/nowhere").await.status().as_u16(), 404);
    let mut sse = api.stream("?device=north").await;
    assert_eq!(sse.status, 200);
    assert!(sse.next_record().await.json()["seq"].is_u64());
    drop(sse);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_field_page_is_served_without_a_token_and_only_the_page() {
    let token = "page-Token_9";
    let api = Api::start(Setup {
        tokens: vec![token.to_owned()],
        ..Setup::default()
    })
    .await;
    for (path, kind, holds) in [
        ("/", "text/html", "<main id=\"page\""),
        ("/page.js", "text/javascript", "/v1/stream"),
        ("/page.css", "text/css", ".meter"),
    ] {
        let response = api.client.get(api.url(path)).send().await.expect("request");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(
            header("content-security-policy").contains("script-src 'self'"),
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff");
        let body = response.text().await.expect("body");
        assert!(body.contains(holds), "{path}");
    }
    // Anything else still needs the token: writing to the page's paths,
    // and every data route.
    let post = api.client.post(api.url("/")).send().await.expect("request");
    assert_eq!(post.status().as_u16(), 401);
    let status = api
        .client
        .get(api.url("/v1/status"))
        .send()
        .await
        .expect("request");
    assert_eq!(status.status().as_u16(), 401);
    let other = api
        .client
        .get(api.url("/page.html"))
        .send()
        .await
        .expect("request");
    assert_eq!(other.status().as_u16(), 401);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let api = Api::start(Setup::default()).await;
    let (code, body) = api.json("/v2/nothing").await;
    assert_eq!(code, 404);
    assert_eq!(body["error"], "not found");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("/v2/nothing"))
    );
    let response = api
        .client
        .post(api.url("/v1/status"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("GET,HEAD")
    );
    let body: Value = body_json(response).await;
    assert_eq!(body["error"], "method not allowed");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let api = Api::start(Setup::default()).await;
    lock_status(&api.cells[0]).state = LinkState::Connected;
    lock_status(&api.cells[0]).timeouts = 3;
    api.publish("north", t0(), 50.0);
    api.publish("north", t0(), 51.0);
    api.wait_written(2).await;
    lock_status(&api.cells[0]).readings_total = 2;

    let response = api.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some(api::metrics::CONTENT_TYPE)
    );
    let page = response.text().await.expect("text");
    // Every line: a comment, or `name{labels} value`.
    let mut families = BTreeSet::new();
    for line in page.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let kind = words.next();
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
            if kind == Some("TYPE") {
                families.insert(words.next().expect("a name").to_owned());
            }
            continue;
        }
        let (name, labels, _) = parse_sample(line);
        assert!(
            families.contains(&name),
            "{name} has no TYPE line before it"
        );
        for (key, _) in &labels {
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
        }
    }
    for name in [
        "slmd_device_readings_total",
        "slmd_device_errors_total",
        "slmd_device_up",
        "slmd_buffer_records",
        "slmd_buffer_capacity",
        "slmd_buffer_unsent",
        "slmd_buffer_evicted_unsent_total",
        "slmd_buffer_written_total",
        "slmd_fleet_accepted_total",
        "slmd_fleet_duplicates_total",
        "slmd_fleet_quarantined_total",
        "slmd_fleet_state",
        "slmd_stream_subscribers",
        "slmd_stream_lagged_records_total",
        "slmd_stream_stuck_disconnects_total",
    ] {
        assert!(families.contains(name), "{name} missing\n{page}");
    }
    assert_eq!(
        metric(&page, "slmd_device_up", &[("device", "north")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "slmd_device_up", &[("device", "south")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&page, "slmd_device_readings_total", &[("device", "north")]),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &page,
            "slmd_device_errors_total",
            &[("device", "north"), ("kind", "timeouts")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &page,
            "slmd_device_state",
            &[("device", "north"), ("state", "connected")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&page, "slmd_buffer_records", &[]), Some(2.0));
    assert_eq!(metric(&page, "slmd_buffer_written_total", &[]), Some(2.0));
    assert_eq!(metric(&page, "slmd_buffer_unsent", &[]), Some(2.0));
    assert_eq!(
        metric(&page, "slmd_fleet_state", &[("state", "disabled")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&page, "slmd_fleet_state", &[("state", "ok")]),
        Some(0.0)
    );
    assert_eq!(metric(&page, "slmd_stream_subscribers", &[]), Some(0.0));
    api.stop().await;
}
