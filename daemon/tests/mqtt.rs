//! The MQTT fan-out against a real mosquitto broker (SPEC §6): each test
//! starts its own broker on a free port (killed on drop), a real hub and the
//! publisher in-process, and watches the broker with a separate subscriber;
//! the last test is the fleet link's TLS (`uplink::mqtt`).
//!
//! They need mosquitto (and the TLS ones openssl), so they are `#[ignore]`d
//! in a plain `cargo test`; `.ci/run` installs it and runs them with
//! `-- --include-ignored`. Without it they fail, naming it.

use chrono::{TimeZone, Utc};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use slmd::config::MqttConfig;
use slmd::fanout::{Hub, LinkState};
use slmd::mqtt::{MqttPublisher, MqttStatusCell, lock_status};
use slmd::record::{Flag, MeterState, Reading, Record};
use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Deadline for anything awaited.
const WAIT: Duration = Duration::from_secs(30);

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Logs of the code under test, shown with a failing test's output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "slmd=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Awaits `future` or fails the test naming `what`.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Checks `condition` on a status cell (the publisher's, the fleet
/// link's) until it holds; returns the status that met it.
async fn wait_status<S: Clone + std::fmt::Debug>(
    cell: &Arc<std::sync::Mutex<S>>,
    what: &str,
    condition: impl Fn(&S) -> bool,
) -> S {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if condition(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A mosquitto process with its own config and log, killed on drop.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    /// A plain listener on a free port.
    async fn start() -> Broker {
        let port = free_port();
        Broker::start_with(port, format!("listener {port} 127.0.0.1\n")).await
    }

    /// `listeners` plus the common settings; `port` is where it is ready.
    async fn start_with(port: u16, listeners: String) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        // `user root`: stay the user we are (as root, mosquitto would
        // otherwise switch to `mosquitto` and lose access to our files).
        let config = format!("{listeners}allow_anonymous true\npersistence false\nuser root\n");
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write config");
        let mut broker = Broker {
            port,
            dir,
            child: None,
        };
        broker.restart().await;
        broker
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts mosquitto (again) with the same config, on the same port.
    async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("mosquitto.log"))
            .expect("log file");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.path("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {MOSQUITTO} (package mosquitto; .ci/run installs it): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .is_err()
        {
            if let Some(Ok(Some(exit))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mosquitto exited with {exit}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto not listening: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills mosquitto (SIGKILL) and waits until it is gone.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as a subscriber sees it.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: String,
    retain: bool,
}

/// A separate MQTT client subscribed to `filter`, collecting messages.
struct Subscriber {
    messages: mpsc::UnboundedReceiver<Message>,
    _client: AsyncClient,
    task: JoinHandle<()>,
}

static SUBSCRIBERS: AtomicUsize = AtomicUsize::new(0);

impl Subscriber {
    /// Connected and subscribed (SUBACK seen); retained messages follow.
    async fn connect(port: u16, filter: &str) -> Subscriber {
        let n = SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
        let mut options = MqttOptions::new(format!("test-sub-{n}"), "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, subscribed) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut subscribed_tx = Some(subscribed_tx);
            // Ends with the connection: a test that restarts the broker
            // connects a new subscriber.
            while let Ok(event) = eventloop.poll().await {
                match event {
                    rumqttc::Event::Incoming(Packet::SubAck(_)) => {
                        if let Some(tx) = subscribed_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    rumqttc::Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            retain: p.retain,
                        });
                    }
                    _ => {}
                }
            }
        });
        within("the subscription", subscribed)
            .await
            .expect("subscriber connected");
        Subscriber {
            messages,
            _client: client,
            task,
        }
    }

    /// The next message on `topic`.
    async fn next_on(&mut self, topic: &str) -> Message {
        let messages = &mut self.messages;
        within(&format!("a message on {topic}"), async {
            loop {
                let message = messages.recv().await.expect("subscriber still connected");
                if message.topic == topic {
                    return message;
                }
            }
        })
        .await
    }

    /// Messages until the last payload seen on each topic of `expected`
    /// matches it; returns the last message per topic.
    async fn until_latest(&mut self, expected: &[(&str, &str)]) -> HashMap<String, Message> {
        let messages = &mut self.messages;
        let mut latest: HashMap<String, Message> = HashMap::new();
        let done = |latest: &HashMap<String, Message>| {
            expected
                .iter()
                .all(|(t, p)| latest.get(*t).is_some_and(|m| m.payload == *p))
        };
        within(&format!("statuses {expected:?}"), async {
            while !done(&latest) {
                let message = messages.recv().await.expect("subscriber still connected");
                latest.insert(message.topic.clone(), message);
            }
        })
        .await;
        latest
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy between the publisher and the broker that the test can cut
/// (closing both sides without an MQTT DISCONNECT, as a crash or a dead
/// link would), block (new connections are accepted and closed at once),
/// and stall towards the publisher (the broker's acks do not arrive).
struct Proxy {
    port: u16,
    current: Arc<std::sync::Mutex<CancellationToken>>,
    blocked: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let current = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let blocked = Arc::new(AtomicBool::new(false));
        let (stalled, _) = watch::channel(false);
        let task = {
            let current = current.clone();
            let blocked = blocked.clone();
            let stalled = stalled.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if blocked.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let cut = current.lock().expect("lock").clone();
                    let stall = stalled.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            // Cut: both sockets are dropped, a plain TCP close.
                            () = cut.cancelled() => {}
                            () = pipe(inbound, upstream, stall) => {}
                        }
                    });
                }
            })
        };
        Proxy {
            port,
            current,
            blocked,
            stalled,
            task,
        }
    }

    /// Closes every connection through the proxy now.
    fn cut(&self) {
        let mut current = self.current.lock().expect("lock");
        current.cancel();
        *current = CancellationToken::new();
    }

    fn block(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    /// Holds back (or releases) everything the broker sends.
    fn stall(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

/// Copies between `inbound` and the broker until either side closes;
/// bytes from the broker wait while `stall` is true.
async fn pipe(mut inbound: TcpStream, upstream: u16, mut stall: watch::Receiver<bool>) {
    let Ok(mut outbound) =
        TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, upstream))).await
    else {
        return;
    };
    let (mut from_client, mut to_client) = inbound.split();
    let (mut from_broker, mut to_broker) = outbound.split();
    let down = async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match from_broker.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if stall.wait_for(|stalled| !*stalled).await.is_err()
                || to_client.write_all(&chunk[..n]).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy(&mut from_client, &mut to_broker) => {}
        () = down => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// A publisher running on its own task, fed by a real hub.
struct Running {
    hub: Arc<Hub>,
    status: MqttStatusCell,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    fn start(url: &str, gateway: &str, devices: &[&str], qos: u8) -> Running {
        let config = MqttConfig {
            url: url.to_owned(),
            topic_prefix: "test".to_owned(),
            qos,
        };
        let devices = devices.iter().map(|d| Arc::from(*d)).collect();
        let publisher = MqttPublisher::new(&config, gateway, devices).expect("valid config");
        Running::spawn(publisher)
    }

    fn spawn(publisher: MqttPublisher) -> Running {
        let status = publisher.status();
        let hub = Hub::new(1);
        let events = hub.subscribe();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher.run(events, shutdown.clone()));
        Running {
            hub,
            status,
            shutdown,
            task,
        }
    }

    async fn connected(&self) {
        wait_status(&self.status, "the publisher to connect", |s| s.connected).await;
    }

    fn publish(&self, device: &str, lp: f64) -> Arc<Record> {
        self.hub.publish(reading(device, lp))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("the publisher to stop", self.task)
            .await
            .expect("publisher task ends cleanly");
    }
}

fn reading(device: &str, lp: f64) -> Reading {
    Reading {
        device: Arc::from(device),
        received_at: Utc
            .with_ymd_and_hms(2026, 11, 22, 14, 15, 17)
            .single()
            .expect("valid time"),
        device_time: Utc.with_ymd_and_hms(2026, 11, 22, 14, 15, 16).single(),
        metrics: vec![("lp", Some(lp)), ("leq", Some(55.3)), ("lmax", None)],
        state: MeterState::Measuring,
        flags: vec![Flag::ClockUnsynced],
    }
}

fn json(record: &Record) -> String {
    serde_json::to_string(record).expect("serialisable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run installs it"]
async fn records_arrive_on_the_reading_topic_as_the_exact_record_json_at_every_qos() {
    init_logs();
    let broker = Broker::start().await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    for qos in 0..=2u8 {
        let gateway = format!("gw-q{qos}");
        let mut sub = Subscriber::connect(broker.port, &format!("test/{gateway}/+/reading")).await;
        let publisher = Running::start(&url, &gateway, &["north", "south"], qos);
        publisher.connected().await;
        let sent = [
            publisher.publish("north", 50.5),
            publisher.publish("south", 61.0),
            publisher.publish("north", 52.25),
        ];
        for record in &sent {
            let topic = format!("test/{gateway}/{}/reading", record.device);
            let message = sub.next_on(&topic).await;
            assert_eq!(message.payload, json(record), "QoS {qos}");
            assert!(!message.retain, "readings are not retained");
        }
        // Counted only once the broker confirmed them (or, at QoS 0, once written).
        wait_status(&publisher.status, "3 readings published", |s| {
            s.published_total == 3
        })
        .await;
        let status = lock_status(&publisher.status).clone();
        assert_eq!(status.dropped_total, 0, "QoS {qos}: {status:?}");
        assert_eq!(status.reconnects, 0);
        publisher.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run installs it"]
async fn device_status_and_online_are_retained_and_a_clean_stop_says_offline() {
    init_logs();
    let broker = Broker::start().await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut live = Subscriber::connect(broker.port, "test/gw-s/#").await;
    let publisher = Running::start(&url, "gw-s", &["a", "b", "c", "d"], 1);
    let hub = &publisher.hub;
    hub.device_state(Arc::from("a"), LinkState::Connected, None);
    hub.device_state(Arc::from("b"), LinkState::Down, Some("no answer".into()));
    hub.device_state(Arc::from("c"), LinkState::Connecting, None);
    // `d` never reports: configured devices are `down` until connected.
    let expected = [
        ("test/gw-s/status", "online"),
        ("test/gw-s/a/status", "connected"),
        ("test/gw-s/b/status", "down"),
        ("test/gw-s/c/status", "down"),
        ("test/gw-s/d/status", "down"),
    ];
    live.until_latest(&expected).await;

    // A subscriber that comes later gets all of them as retained messages.
    let mut late = Subscriber::connect(broker.port, "test/gw-s/#").await;
    let seen = late.until_latest(&expected).await;
    for (topic, _) in expected {
        assert!(seen[topic].retain, "{topic} is retained: {:?}", seen[topic]);
    }

    // A change is published live, and a record implies `connected`.
    hub.device_state(Arc::from("a"), LinkState::Down, Some("timeout".into()));
    assert_eq!(late.next_on("test/gw-s/a/status").await.payload, "down");
    publisher.publish("b", 40.0);
    assert_eq!(
        late.next_on("test/gw-s/b/status").await.payload,
        "connected"
    );
    late.next_on("test/gw-s/b/reading").await;

    // A clean stop: devices down, gateway offline (not left `online`).
    publisher.stop().await;
    let stopped = [
        ("test/gw-s/status", "offline"),
        ("test/gw-s/a/status", "down"),
        ("test/gw-s/b/status", "down"),
    ];
    late.until_latest(&stopped).await;
    let mut after = Subscriber::connect(broker.port, "test/gw-s/status").await;
    let message = after.next_on("test/gw-s/status").await;
    assert_eq!(message.payload, "offline");
    assert!(message.retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run installs it"]
async fn the_last_will_says_offline_when_the_connection_dies_without_disconnect() {
    init_logs();
    let broker = Broker::start().await;
    let proxy = Proxy::start(broker.port).await;
    let mut live = Subscriber::connect(broker.port, "test/gw-w/status").await;
    let mut readings = Subscriber::connect(broker.port, "test/gw-w/+/reading").await;
    let publisher = Running::start(
        &format!("mqtt://127.0.0.1:{}", proxy.port),
        "gw-w",
        &["m"],
        1,
    );
    assert_eq!(live.next_on("test/gw-w/status").await.payload, "online");

    // The broker gets a reading but its ack never reaches the publisher:
    // handed over is not published.
    proxy.stall(true);
    let record = publisher.publish("m", 45.0);
    assert_eq!(
        readings.next_on("test/gw-w/m/reading").await.payload,
        json(&record)
    );
    assert_eq!(lock_status(&publisher.status).published_total, 0);

    // The link dies under the publisher (no DISCONNECT reaches the broker),
    // and stays dead for now.
    proxy.block(true);
    proxy.cut();
    assert_eq!(live.next_on("test/gw-w/status").await.payload, "offline");
    // The unacknowledged reading is counted as dropped, not published.
    wait_status(&publisher.status, "the publisher to notice", |s| {
        !s.connected && s.last_error.is_some() && s.dropped_total == 1 && s.published_total == 0
    })
    .await;
    // The will is retained: a subscriber arriving now is told too.
    let mut late = Subscriber::connect(broker.port, "test/gw-w/status").await;
    let will = late.next_on("test/gw-w/status").await;
    assert_eq!(will.payload, "offline");
    assert!(will.retain);

    // The link comes back: the publisher reconnects by itself.
    proxy.stall(false);
    proxy.block(false);
    assert_eq!(live.next_on("test/gw-w/status").await.payload, "online");
    wait_status(&publisher.status, "the reconnect to be counted", |s| {
        s.connected && s.reconnects == 1
    })
    .await;
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run installs it"]
async fn a_broker_outage_never_stalls_the_hub_and_publishing_resumes_by_itself() {
    init_logs();
    const N: u64 = 3000;
    let mut broker = Broker::start().await;
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut sub = Subscriber::connect(broker.port, "test/gw-o/#").await;
    let publisher = Running::start(&url, "gw-o", &["m"], 1);
    publisher.connected().await;
    publisher
        .hub
        .device_state(Arc::from("m"), LinkState::Connected, None);
    let first = publisher.publish("m", 50.0);
    assert_eq!(
        sub.next_on("test/gw-o/m/reading").await.payload,
        json(&first)
    );
    wait_status(&publisher.status, "the first reading acked", |s| {
        s.published_total == 1
    })
    .await;

    broker.stop();
    wait_status(&publisher.status, "the publisher to see the outage", |s| {
        !s.connected
    })
    .await;
    let before = lock_status(&publisher.status).dropped_total;
    let started = Instant::now();
    for i in 0..N {
        publisher.publish("m", 40.0 + (i % 100) as f64 / 10.0);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "{N} hub publishes took {took:?} during the outage"
    );
    // Every one of them is accounted for (dropped while disconnected, or
    // skipped as lag), and the publisher says it is disconnected.
    wait_status(&publisher.status, "the outage readings counted", |s| {
        s.dropped_total == before + N
    })
    .await;
    let status = lock_status(&publisher.status).clone();
    assert!(!status.connected, "{status:?}");
    assert!(status.last_error.is_some(), "{status:?}");
    assert_eq!(status.published_total, 1, "{status:?}");
    assert!(!publisher.task.is_finished());

    // Same port, fresh broker (no persistence: it forgot the retained
    // statuses): the publisher reconnects and announces itself again.
    broker.restart().await;
    wait_status(&publisher.status, "the reconnect", |s| {
        s.connected && s.reconnects == 1
    })
    .await;
    drop(sub);
    let mut sub = Subscriber::connect(broker.port, "test/gw-o/#").await;
    sub.until_latest(&[
        ("test/gw-o/status", "online"),
        ("test/gw-o/m/status", "connected"),
    ])
    .await;
    let next = publisher.publish("m", 55.5);
    assert_eq!(
        sub.next_on("test/gw-o/m/reading").await.payload,
        json(&next)
    );
    wait_status(&publisher.status, "the new reading acked", |s| {
        s.published_total == 2
    })
    .await;
    publisher.stop().await;
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (package openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A private CA (`ca.pem`), a server certificate for localhost and
/// 127.0.0.1 (`server.pem`, `server.key`) and a client certificate
/// (`client.pem`, `client.key`), all signed by the CA, in `dir`.
fn private_pki(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        dir,
        &[
            &["req", "-x509", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=slmd test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    for (name, cn, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/CN=gw-t",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        let (key, csr, pem, cnf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.cnf"),
        );
        openssl(
            dir,
            &[
                &["req", "-nodes"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", cn],
            ]
            .concat(),
        );
        std::fs::write(dir.join(&cnf), ext).expect("write ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &cnf,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and openssl; .ci/run installs them"]
async fn mqtts_verifies_the_broker_certificate() {
    init_logs();
    let pki = tempfile::tempdir().expect("temp dir");
    let dir = pki.path();
    private_pki(dir);

    // TLS for the publisher, plain for the test's subscriber.
    let tls_port = free_port();
    let plain_port = free_port();
    let broker = Broker::start_with(
        plain_port,
        format!(
            "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\nlistener {plain_port} 127.0.0.1\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .await;
    let config = MqttConfig {
        url: format!("mqtts://localhost:{tls_port}"),
        topic_prefix: "test".to_owned(),
        qos: 1,
    };

    // With the system roots only, the private CA is not trusted.
    let untrusted =
        Running::spawn(MqttPublisher::new(&config, "gw-t", vec![]).expect("system roots found"));
    wait_status(&untrusted.status, "the TLS handshake to fail", |s| {
        s.last_error.is_some()
    })
    .await;
    let status = lock_status(&untrusted.status).clone();
    assert!(!status.connected, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS") || e.contains("certificate")),
        "{status:?}"
    );
    untrusted.stop().await;

    // Trusting the private CA, records flow.
    let mut sub = Subscriber::connect(broker.port, "test/gw-t/+/reading").await;
    let publisher = MqttPublisher::new(&config, "gw-t", vec![])
        .and_then(|p| p.with_root_certificates(&dir.join("ca.pem")))
        .expect("CA file usable");
    let publisher = Running::spawn(publisher);
    publisher.connected().await;
    let record = publisher.publish("x", 48.0);
    assert_eq!(
        sub.next_on("test/gw-t/x/reading").await.payload,
        json(&record)
    );
    publisher.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and openssl; .ci/run installs them"]
async fn the_fleet_link_speaks_tls_with_a_private_ca_and_a_client_certificate() {
    use slmd::config::{FleetConfig, FleetTransport};
    use slmd::uplink::mqtt::Link;
    use slmd::uplink::{FleetStatus, FleetStatusCell, UPLINK_EVENTS};
    init_logs();
    let pki = tempfile::tempdir().expect("temp dir");
    let dir = pki.path();
    private_pki(dir);
    // The fleet's broker asks every client for a certificate from its CA;
    // the test's subscriber reads on a plain listener beside it.
    let tls_port = free_port();
    let plain_port = free_port();
    let broker = Broker::start_with(
        plain_port,
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             listener {plain_port} 127.0.0.1\n",
            dir.join("ca.pem").display(),
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .await;
    let fleet = FleetConfig {
        enabled: true,
        transport: FleetTransport::Mqtt,
        urls: vec![format!("mqtts://localhost:{tls_port}")],
        tokens: vec!["t".to_owned()],
        ca_file: Some(dir.join("ca.pem")),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..FleetConfig::default()
    };
    let start = |config: &FleetConfig| {
        let status: FleetStatusCell = Arc::new(std::sync::Mutex::new(FleetStatus::disabled()));
        let (events, _) = tokio::sync::broadcast::channel(UPLINK_EVENTS);
        let (_reload, reloaded) = watch::channel(config.clone());
        let (link, handle) =
            Link::new(config, "gw-t", status.clone(), events, reloaded).expect("link");
        let stop = CancellationToken::new();
        let task = tokio::spawn(link.run(stop.clone()));
        (status, handle, stop, task, _reload)
    };

    // Without the client certificate the broker refuses the handshake,
    // and the status says why.
    let (status, _, stop, task, _reload) = start(&fleet);
    let now = wait_status(&status, "an error reported", |s| s.last_error.is_some()).await;
    assert!(now.broker.is_none(), "never connected: {now:?}");
    stop.cancel();
    let _ = task.await;

    // With it, a publish is acknowledged and reaches the fleet.
    let with_cert = FleetConfig {
        client_cert: Some(dir.join("client.pem")),
        client_key: Some(dir.join("client.key")),
        ..fleet.clone()
    };
    let mut sub = Subscriber::connect(broker.port, "slmd/gw-t/records").await;
    let (status, handle, stop, task, _reload) = start(&with_cert);
    within("the TLS connection", handle.connected()).await;
    handle
        .publish(
            handle.topic("records"),
            br#"{"gateway":"gw-t","records":[]}"#.to_vec(),
            false,
            WAIT,
        )
        .await
        .expect("acknowledged");
    assert_eq!(
        sub.next_on("slmd/gw-t/records").await.payload,
        r#"{"gateway":"gw-t","records":[]}"#
    );
    assert_eq!(
        status.lock().expect("status").broker.as_deref(),
        Some(format!("mqtts://localhost:{tls_port}").as_str())
    );
    stop.cancel();
    let _ = task.await;

    // A certificate file that is not there stops the start, naming it.
    let missing = FleetConfig {
        client_cert: Some(dir.join("nope.pem")),
        ..with_cert
    };
    let (_, reloaded) = watch::channel(missing.clone());
    let (events, _) = tokio::sync::broadcast::channel(UPLINK_EVENTS);
    let status: FleetStatusCell = Arc::new(std::sync::Mutex::new(FleetStatus::disabled()));
    let error = Link::new(&missing, "gw-t", status, events, reloaded)
        .err()
        .expect("refused");
    assert!(error.to_string().contains("nope.pem"), "{error}");
}
