//! Uplink benchmark (the acceptance figures of the fleet push issue).
//!
//! Run with `cargo bench -p slmd --bench uplink` (about a minute on two
//! cores, after the build). Measured:
//!
//! 1. A buffer file is filled with 1 000 000 realistic records: three
//!    meters, one record per second each, values from the simulator's level
//!    model ([`slmd_hil::Recording`]: a 10 Hz walk integrated into Leq, LE,
//!    Lmax, Lmin, L5..L95, Lpeak), `device_time` a second behind
//!    `received_at`, as the daemon records them.
//! 2. `fleet-sim` runs in the same process on `127.0.0.1:0` (so both sides
//!    share the two cores, as on a gateway pushing to a local rig).
//! 3. The real [`Uplink`] drains the backlog, gzipped, with the default
//!    `batch_max` (500) and then with 5 000, each from a fresh copy of the
//!    file; timed from start until the cursor reaches the last record.
//!    Reported: records/s, and bytes per record on the wire (request bodies
//!    as `fleet-sim` received them, over the records in them). Targets:
//!    ≥ 100 000 records/s, ≤ 30 bytes/record.
//! 4. The same over MQTT: a Mosquitto broker of its own (`/usr/sbin/mosquitto`,
//!    anonymous, no persistence) on a free loopback port, and between it and
//!    the uplink a counting TCP proxy in the same process. The real
//!    [`Link`] and [`MqttUplink`] (`transport = "mqtt"`, gzipped, QoS 1)
//!    drain a fresh copy of the file with `batch_max` 500 and then 5 000;
//!    timed from start until the `fleet-mqtt` position reaches the last
//!    record. Reported: records/s, and bytes per record on the wire: every
//!    byte through the proxy in both directions (`CONNECT`, `PUBLISH`,
//!    `PUBACK`, pings, `DISCONNECT`), over the records in the publishes.
//!    The stream the uplink sent is then decoded: every record arrived, in
//!    `seq` order, and the publishes are counted. Without mosquitto this
//!    part is skipped, saying so.
//!
//! Under `cargo test --benches` it runs with 20 000 records.

use slmd::buffer::{self, BufferSlot, Consumer, Settings};
use slmd::config::{Durability, FleetConfig, FleetTransport};
use slmd::record::{MeterState, Record};
use slmd::uplink::mqtt::{Link, MqttUplink};
use slmd::uplink::{FleetStatus, UPLINK_EVENTS, Uplink};
use slmd_hil::Recording;
use slmd_hil::fleet::{FleetSim, FleetSimConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

const DEVICES: [&str; 3] = ["nl43-north", "nl43-south", "nl52-east"];
const TOKEN: &str = "bench-token";
const GATEWAY: &str = "gw-bench";

fn settings(path: PathBuf) -> Settings {
    Settings {
        path,
        max_records: 100_000_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 100_000,
        batch_max: 1000,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    }
}

/// `count` records as three meters produce them, one per second each.
fn records(count: u64) -> impl Iterator<Item = Arc<Record>> {
    // 2026-11-22T00:00:00Z
    let start = 1_795_305_600_i64;
    let mut meters: Vec<Recording> = (0..DEVICES.len() as u64)
        .map(|i| Recording::new(4300 + i, start))
        .collect();
    (1..=count).map(move |seq| {
        let device = ((seq - 1) % DEVICES.len() as u64) as usize;
        let (meter_secs, values) = meters[device].next().unwrap_or_default();
        // The answer arrives a little after the meter's second ticks.
        let received_ms = (meter_secs + 1) * 1000 + 130 + device as i64 * 7;
        let db = |v: Option<firmware_bridge::Deci>| v.map(|d| d.db());
        let mut metrics = vec![
            ("lp", db(values.lp)),
            ("leq", db(values.leq)),
            ("le", db(values.le)),
            ("lmax", db(values.lmax)),
            ("lmin", db(values.lmin)),
        ];
        metrics.extend(
            ["l5", "l10", "l50", "l90", "l95"]
                .iter()
                .zip(values.ln)
                .map(|(n, v)| (*n, db(v))),
        );
        metrics.push(("lpeak", db(values.lpeak)));
        Arc::new(Record {
            seq,
            device: Arc::from(DEVICES[device]),
            received_at: chrono::DateTime::from_timestamp_millis(received_ms).unwrap_or_default(),
            device_time: chrono::DateTime::from_timestamp(meter_secs, 0),
            metrics,
            state: MeterState::Measuring,
            flags: Vec::new(),
            interval: None,
        })
    })
}

/// Fills a buffer file with `count` records through the real writer.
fn fill(path: &Path, count: u64) {
    let (buffer, _) = buffer::open(settings(path.to_owned())).expect("buffer opens");
    let (tx, rx) = mpsc::channel(8192);
    let writer = buffer.start_writer(rx).expect("writer starts");
    for record in records(count) {
        tx.blocking_send(record).expect("writer alive");
    }
    drop(tx);
    writer.join();
    assert_eq!(buffer.counters().written, count, "every record committed");
}

struct Drain {
    records: u64,
    elapsed: Duration,
    body_bytes: u64,
    requests: u64,
}

/// The runtime a drain runs on (two workers).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Drains the buffer at `path` into a fresh in-process fleet-sim.
fn drain(path: &Path, count: u64, batch_max: u32) -> Drain {
    let runtime = runtime();
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let fleet = FleetSim::new(FleetSimConfig::new(TOKEN));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = fleet.clone();
        let server_stop = stop.clone();
        tokio::spawn(async move { server.serve(listener, server_stop).await });

        let (buffer, _) = buffer::open(settings(path.to_owned())).expect("buffer opens");
        let slot = BufferSlot::default();
        let _ = slot.set(buffer.clone());
        let config = FleetConfig {
            enabled: true,
            url: Some(url),
            tokens: vec![TOKEN.to_owned()],
            batch_max,
            ..FleetConfig::default()
        };
        let (uplink, _handle) =
            Uplink::new(config, GATEWAY.to_owned(), slot).expect("uplink starts");
        let started = Instant::now();
        tokio::spawn(uplink.run(stop.clone()));
        let deadline = started + Duration::from_secs(600);
        while buffer.counters().cursor < count {
            assert!(Instant::now() < deadline, "drain did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        stop.cancel();
        let stats = fleet.stats();
        assert_eq!(stats.unique, count, "every record arrived once");
        assert_eq!(stats.out_of_order, 0, "in seq order");
        Drain {
            records: stats.records_in_bodies,
            elapsed,
            body_bytes: stats.body_bytes,
            requests: stats.requests,
        }
    })
}

/// Where Debian and Ubuntu install the broker (`apt-get install mosquitto`).
const MOSQUITTO: [&str; 2] = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"];

/// A Mosquitto broker of the bench's own on a free loopback port; killed
/// when dropped, also when the bench panics.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts it and waits until it accepts connections; `None` when
    /// mosquitto is not installed.
    fn start() -> Option<Mosquitto> {
        let program = MOSQUITTO.iter().find(|p| Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("mosquitto log");
        let child = Command::new(program)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("mosquitto log"))
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let mut broker = Mosquitto { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = broker.child.try_wait().ok().flatten();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "mosquitto did not start ({exited:?}):\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(broker)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What went through the counting proxy.
#[derive(Default)]
struct Wire {
    /// Bytes from the uplink to the broker.
    up: AtomicU64,
    /// Bytes from the broker to the uplink.
    down: AtomicU64,
    /// Connections not yet closed both ways.
    open: AtomicU64,
    /// Each connection's bytes from the uplink, decoded after the run.
    sent: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

/// A TCP proxy on `listener` to the broker on `port`, counting every byte.
async fn proxy(listener: TcpListener, port: u16, wire: Arc<Wire>, stop: CancellationToken) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        let Ok(broker) = TcpStream::connect(("127.0.0.1", port)).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        let log = Arc::new(Mutex::new(Vec::new()));
        wire.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(log.clone());
        wire.open.fetch_add(1, Ordering::SeqCst);
        let (client_read, client_write) = client.into_split();
        let (broker_read, broker_write) = broker.into_split();
        let wire = wire.clone();
        tokio::spawn(async move {
            tokio::join!(
                pump(client_read, broker_write, &wire.up, Some(&log)),
                pump(broker_read, client_write, &wire.down, None),
            );
            wire.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Copies `from` to `to` until either closes, counting the bytes into
/// `count` and keeping them in `log`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
    log: Option<&Mutex<Vec<u8>>>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(log) = log {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]);
        }
        if to.write_all(&chunk[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The part of a records payload the check reads.
#[derive(serde::Deserialize)]
struct Batch {
    records: Vec<Seq>,
}

#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

/// What the uplink published, decoded from its byte stream.
#[derive(Default)]
struct Published {
    publishes: u64,
    /// Records in the publishes, re-sends included.
    records: u64,
    /// Distinct records.
    unique: u64,
    /// Records seen for the first time after a higher `seq`.
    out_of_order: u64,
}

/// The MQTT packet at `at` in `stream`: its first byte, its body (after
/// the remaining length) and where the next one starts; `None` at the end
/// or for a packet cut short.
fn packet(stream: &[u8], at: usize) -> Option<(u8, &[u8], usize)> {
    let header = *stream.get(at)?;
    let (mut length, mut shift, mut i) = (0usize, 0, at + 1);
    loop {
        let byte = *stream.get(i)?;
        length |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let body = stream.get(i..i + length)?;
    Some((header, body, i + length))
}

/// Decodes the MQTT packets the uplink sent on each connection (fixed
/// header, remaining length; `PUBLISH` is type 3) and the records in the
/// `PUBLISH` payloads.
fn published(streams: &[Vec<u8>], count: u64) -> Published {
    let mut seen = vec![false; count as usize + 1];
    let mut max_seq = 0;
    let mut out = Published::default();
    for stream in streams {
        let mut at = 0;
        // A connection cut mid-packet ends its stream early: that packet
        // never counted.
        while let Some((header, body, next)) = packet(stream, at) {
            at = next;
            if header >> 4 != 3 {
                continue;
            }
            out.publishes += 1;
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let packet_id = if (header >> 1) & 3 > 0 { 2 } else { 0 };
            let payload = &body[2 + topic_len + packet_id..];
            let mut json = Vec::new();
            if payload.starts_with(&[0x1f, 0x8b]) {
                flate2::read::GzDecoder::new(payload)
                    .read_to_end(&mut json)
                    .expect("gzip payload");
            } else {
                json.extend_from_slice(payload);
            }
            let batch: Batch = serde_json::from_slice(&json).expect("records payload");
            for Seq { seq } in batch.records {
                out.records += 1;
                let first = seen.get_mut(seq as usize).expect("seq in range");
                if !*first {
                    *first = true;
                    out.unique += 1;
                    if seq < max_seq {
                        out.out_of_order += 1;
                    }
                    max_seq = max_seq.max(seq);
                }
            }
        }
    }
    out
}

struct MqttDrain {
    elapsed: Duration,
    /// Bytes through the proxy, both ways.
    wire_bytes: u64,
    published: Published,
}

/// Drains the buffer at `path` over MQTT to the broker on `port`, through
/// a counting proxy.
fn drain_mqtt(path: &Path, count: u64, batch_max: u32, port: u16) -> MqttDrain {
    let runtime = runtime();
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let wire = Arc::new(Wire::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("mqtt://{}", listener.local_addr().expect("addr"));
        let proxy_stop = CancellationToken::new();
        tokio::spawn(proxy(listener, port, wire.clone(), proxy_stop.clone()));

        let (buffer, _) = buffer::open(settings(path.to_owned())).expect("buffer opens");
        let slot = BufferSlot::default();
        let _ = slot.set(buffer.clone());
        let config = FleetConfig {
            enabled: true,
            transport: FleetTransport::Mqtt,
            urls: vec![url],
            tokens: vec![TOKEN.to_owned()],
            batch_max,
            ..FleetConfig::default()
        };
        let status = Arc::new(Mutex::new(FleetStatus::disabled()));
        let (events, _) = broadcast::channel(UPLINK_EVENTS);
        let (_reload_tx, reload) = watch::channel(config.clone());
        let started = Instant::now();
        let (link, handle) = Link::new(&config, GATEWAY, status.clone(), events.clone(), reload)
            .expect("link starts");
        let push = MqttUplink::new(&config, GATEWAY.to_owned(), handle, slot, status, events);
        let link = tokio::spawn(link.run(stop.clone()));
        let push = tokio::spawn(push.run(stop.clone()));
        let deadline = started + Duration::from_secs(600);
        while buffer.position(Consumer::FleetMqtt) < count {
            assert!(Instant::now() < deadline, "MQTT drain did not finish");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = started.elapsed();
        stop.cancel();
        // The link disconnects cleanly; the proxy sees both ways close.
        let _ = push.await;
        let _ = link.await;
        let closed = Instant::now() + Duration::from_secs(5);
        while wire.open.load(Ordering::SeqCst) > 0 && Instant::now() < closed {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        proxy_stop.cancel();
        let streams: Vec<Vec<u8>> = wire
            .sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|log| std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect();
        let published = published(&streams, count);
        assert_eq!(published.unique, count, "every record arrived once");
        assert_eq!(published.out_of_order, 0, "in seq order");
        MqttDrain {
            elapsed,
            wire_bytes: wire.up.load(Ordering::SeqCst) + wire.down.load(Ordering::SeqCst),
            published,
        }
    })
}

/// A fresh copy of `master` for one run (the position of a previous run is
/// in the file).
fn copy_of(master: &Path, copy: &Path) {
    let conn = rusqlite::Connection::open(master).expect("open master");
    conn.execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])
        .expect("copy");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let count: u64 = if full { 1_000_000 } else { 20_000 };
    let dir = tempfile::tempdir().expect("temp dir");
    let master = dir.path().join("master.sqlite");
    let fill_started = Instant::now();
    fill(&master, count);
    println!(
        "filled a buffer with {count} records in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );
    let broker = Mosquitto::start();
    if broker.is_none() {
        println!(
            "mqtt uplink drain skipped: `mosquitto` is missing (not in {}; apt-get install mosquitto)",
            MOSQUITTO.join(" or ")
        );
    }
    for batch_max in [500, 5000] {
        let copy = dir.path().join(format!("drain-{batch_max}.sqlite"));
        copy_of(&master, &copy);
        let result = drain(&copy, count, batch_max);
        let rate = count as f64 / result.elapsed.as_secs_f64();
        let per_record = result.body_bytes as f64 / result.records.max(1) as f64;
        println!(
            "uplink drain, batch_max {batch_max:>5}: {count} records in {:.2} s = {rate:>9.0} records/s \
             (target ≥ 100 000); {per_record:.1} bytes/record gzipped on the wire (target ≤ 30); \
             {} requests",
            result.elapsed.as_secs_f64(),
            result.requests
        );
        let Some(broker) = &broker else {
            continue;
        };
        let copy = dir.path().join(format!("drain-mqtt-{batch_max}.sqlite"));
        copy_of(&master, &copy);
        let result = drain_mqtt(&copy, count, batch_max, broker.port);
        let rate = count as f64 / result.elapsed.as_secs_f64();
        let per_record = result.wire_bytes as f64 / result.published.records.max(1) as f64;
        println!(
            "mqtt uplink drain, batch_max {batch_max:>5}: {count} records in {:.2} s = {rate:>9.0} records/s \
             (target ≥ 100 000); {per_record:.1} bytes/record gzipped on the wire, all MQTT traffic both ways \
             (target ≤ 30); {} publishes",
            result.elapsed.as_secs_f64(),
            result.published.publishes
        );
    }
}
