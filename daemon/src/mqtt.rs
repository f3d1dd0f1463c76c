//! Publishing records and device state to a local MQTT broker (SPEC §6).
//!
//! One [`MqttPublisher`] per daemon, fed by a live [`Hub`](crate::fanout::Hub)
//! subscription. It is a live fan-out, not a delivery guarantee: every
//! record is already in the buffer before it gets here, so a record that
//! cannot be published now is counted and skipped, never waited for.
//!
//! # Topics and payloads
//!
//! | topic | payload | QoS | retained |
//! |---|---|---|---|
//! | `{prefix}/{gateway}/{device}/reading` | the record JSON of SPEC §3 (`serde_json::to_string(&record)`) | `[mqtt].qos` | no |
//! | `{prefix}/{gateway}/{device}/status` | `connected` or `down` | 1 | yes |
//! | `{prefix}/{gateway}/status` | `online`, or `offline` (last will, and on a clean stop) | 1 | yes |
//!
//! - A device's `connecting` state is published as `down`: the meter is not
//!   (yet) answering, and SPEC §6 names only `connected` and `down`.
//!   Configured devices are `down` until they report `connected`, so a stale
//!   retained `connected` from before a crash is corrected on start.
//! - A device that delivers a record is `connected`; this also heals a state
//!   change lost while this consumer lagged behind the hub.
//! - `/`, `+`, `#` and NUL in the gateway id (the config allows them) are
//!   replaced by `_` in topics; device ids cannot contain them.
//! - On every (re)connect (`CONNACK`) the gateway's `online` and the last
//!   known status of every device are published again, retained: a broker
//!   restarted without persistence has forgotten them, and a clean session
//!   has lost whatever was in flight.
//! - On a clean stop the devices are published `down` and the gateway
//!   `offline` before the `DISCONNECT` (which suppresses the will); on a
//!   crash, a cut link or `kill -9` the broker publishes the last will
//!   `offline` (after at most 1.5 × [`KEEP_ALIVE`] when the link dies
//!   silently). Device statuses are not part of the will: read the
//!   gateway's status first.
//!
//! # Connection
//!
//! Client id `slmd-{gateway}` (characters other than `A-Z a-z 0-9 - _ .`
//! replaced by `_`), clean session, keep-alive [`KEEP_ALIVE`]. `mqtt://` is
//! plain TCP (port 1883 by default), `mqtts://` is TLS with rustls and ring
//! (port 8883), verified against the system's root certificates (see
//! [`system_roots`]) or the ones given to
//! [`MqttPublisher::with_root_certificates`].
//!
//! rumqttc's `EventLoop::poll` reconnects at once when polled after an
//! error, so the publisher waits between failed polls: exponential backoff
//! with jitter from [`RETRY_MIN`] to about 2 × [`RETRY_MAX`]. The backoff
//! starts over after a connection that stayed up for [`STABLE_AFTER`]; a
//! connection that is accepted and then dropped at once (a duplicate client
//! id, a broker that kicks us) keeps backing off instead of looping. The
//! journal gets one warning when the broker is lost (the reason and the
//! next step) and one line when it is back (how long, how many tries, how
//! many readings were not published); the tries in between are `debug`.
//!
//! # Never stalling anything
//!
//! The publisher reads the hub and drives rumqttc's event loop in one task,
//! and never awaits the broker while handling a hub event: records go to
//! rumqttc's bounded request queue ([`REQUEST_CAPACITY`]) with
//! `try_publish`. While disconnected nothing is queued. The hub side is a
//! broadcast channel, so even a stuck publisher cannot slow a device or the
//! buffer writer: it is told it lagged.
//!
//! # What is counted ([`MqttStatus`])
//!
//! - `published_total`: readings the broker acknowledged (`PUBACK` at QoS 1,
//!   `PUBCOMP` at QoS 2) or, at QoS 0, that were written to the connection.
//!   Handing a publish to rumqttc does not count: with a clean session its
//!   un-acknowledged publishes are dropped on reconnect.
//! - `dropped_total`: readings not published: arrived while disconnected,
//!   found the request queue full, or were queued or in flight when the
//!   connection broke; plus hub events skipped because this consumer lagged
//!   (those may include device-state events).
//! - `reconnects`: connections established after the first one.

use crate::config::MqttConfig;
use crate::fanout::{Event, LinkState};
use crate::record::Record;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Capacity of rumqttc's request queue: how many publishes may wait for the
/// connection before new readings are dropped (about 17 minutes of one
/// meter at 1 s, or a few seconds of a burst).
pub const REQUEST_CAPACITY: usize = 1000;

/// MQTT keep-alive: the broker publishes the last will about 1.5 × this
/// after the link dies silently.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// First wait after a failed connection attempt.
pub const RETRY_MIN: Duration = Duration::from_millis(200);

/// Longest wait between connection attempts before jitter (jitter adds up
/// to the same again, so at most about 30 s).
pub const RETRY_MAX: Duration = Duration::from_secs(15);

/// A connection that stayed up this long starts the backoff over when it
/// breaks; a shorter one continues it.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long a clean stop may take to publish `offline` and disconnect.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest packet accepted or sent (a record is well under 1 KiB).
const MAX_PACKET: usize = 1024 * 1024;

/// Seconds rumqttc waits for the TCP (and TLS) connect and the `CONNACK`.
const CONNECT_TIMEOUT_SECS: u64 = 5;

/// At most one journal line per this period about lagging behind the hub.
const LAG_LOG_EVERY: Duration = Duration::from_secs(60);

/// Default ports by scheme.
const MQTT_PORT: u16 = 1883;
const MQTTS_PORT: u16 = 8883;

/// Where to look for the system's CA bundle when `SSL_CERT_FILE` is not set
/// (Debian's first).
const CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// Where to look for single CA files when neither `SSL_CERT_FILE` nor
/// `SSL_CERT_DIR` is set and no bundle exists.
const CA_DIR: &str = "/etc/ssl/certs";

/// Status payloads.
const CONNECTED: &str = "connected";
const DOWN: &str = "down";
const ONLINE: &str = "online";
const OFFLINE: &str = "offline";

/// Why a publisher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The broker URL is not `mqtt://host[:port]` or `mqtts://host[:port]`.
    #[error(
        "invalid MQTT broker URL {url:?}: {reason}; expected mqtt://host[:port] or mqtts://host[:port]"
    )]
    Url {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The QoS is not 0, 1 or 2.
    #[error("invalid MQTT QoS {0}: expected 0, 1 or 2")]
    Qos(u8),
    /// `mqtts://` without any usable root certificate.
    #[error(
        "no TLS root certificates found in {searched}; mqtts:// needs the system CA bundle (package ca-certificates) or SSL_CERT_FILE"
    )]
    NoTlsRoots {
        /// The files and folders that were read.
        searched: String,
    },
    /// A root certificate file given explicitly could not be used.
    #[error("cannot use TLS root certificates from {}: {reason}", path.display())]
    TlsRoots {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the TLS configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// What status and metrics show about the MQTT fan-out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MqttStatus {
    /// The broker URL as configured.
    pub broker: String,
    /// Whether the broker accepted the connection and it has not failed since.
    pub connected: bool,
    /// Readings the broker acknowledged (QoS 1/2) or written to the
    /// connection (QoS 0).
    pub published_total: u64,
    /// Readings not published (disconnected, queue full, lost in flight on
    /// a broken connection) and hub events skipped while lagging.
    pub dropped_total: u64,
    /// The last connection failure, kept after recovery.
    pub last_error: Option<String>,
    /// Connections established after the first one.
    pub reconnects: u64,
}

/// Shared handle to the MQTT status.
pub type MqttStatusCell = Arc<Mutex<MqttStatus>>;

/// The MQTT status, tolerant of a poisoned lock (plain data).
pub fn lock_status(cell: &MqttStatusCell) -> MutexGuard<'_, MqttStatus> {
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `{prefix}/{gateway}/{device}/reading`.
pub fn reading_topic(prefix: &str, gateway: &str, device: &str) -> String {
    format!(
        "{prefix}/{}/{}/reading",
        topic_level(gateway),
        topic_level(device)
    )
}

/// `{prefix}/{gateway}/{device}/status`.
pub fn device_status_topic(prefix: &str, gateway: &str, device: &str) -> String {
    format!(
        "{prefix}/{}/{}/status",
        topic_level(gateway),
        topic_level(device)
    )
}

/// `{prefix}/{gateway}/status`, where the last will goes.
pub fn gateway_status_topic(prefix: &str, gateway: &str) -> String {
    format!("{prefix}/{}/status", topic_level(gateway))
}

/// `slmd-{gateway}`, with characters brokers may refuse replaced by `_`.
pub fn client_id(gateway: &str) -> String {
    let safe: String = gateway
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("slmd-{safe}")
}

/// One topic level: the characters with a meaning in topics replaced by `_`.
pub(crate) fn topic_level(s: &str) -> String {
    s.replace(['/', '+', '#', '\0'], "_")
}

/// The payload of a device's status topic.
fn status_payload(state: LinkState) -> &'static str {
    match state {
        LinkState::Connected => CONNECTED,
        LinkState::Connecting | LinkState::Down => DOWN,
    }
}

/// A broker address from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerAddr {
    /// `mqtts://`.
    pub(crate) tls: bool,
    /// Host name or IP address; an IPv6 address without brackets (rumqttc
    /// resolves `host:port` by splitting at the last colon, and the TLS
    /// server name must be the bare address).
    pub(crate) host: String,
    /// Port, defaulted by scheme.
    pub(crate) port: u16,
}

/// Parses `mqtt://host[:port][/]` or `mqtts://...` (scheme case-insensitive,
/// IPv6 in brackets).
pub(crate) fn parse_url(url: &str) -> Result<BrokerAddr, String> {
    let (scheme, rest) = url.split_once("://").ok_or("the scheme is missing")?;
    let tls = if scheme.eq_ignore_ascii_case("mqtt") {
        false
    } else if scheme.eq_ignore_ascii_case("mqtts") {
        true
    } else {
        return Err(format!("unsupported scheme {scheme:?}"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("a path is not supported".to_owned());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".to_owned());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed [ in the host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("expected :port after ]")?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    let port = match port {
        None => {
            if tls {
                MQTTS_PORT
            } else {
                MQTT_PORT
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(format!("invalid port {p:?}")),
        },
    };
    Ok(BrokerAddr {
        tls,
        host: host.to_owned(),
        port,
    })
}

/// The system's root certificates, read the way OpenSSL finds them:
/// `SSL_CERT_FILE` and `SSL_CERT_DIR` when set, else the first CA bundle
/// that exists (`/etc/ssl/certs/ca-certificates.crt` on Debian), else the
/// files in `/etc/ssl/certs`. Unreadable files and malformed certificates
/// are skipped (one bad file must not disable TLS); it is an error only
/// when no certificate at all was found.
pub fn system_roots() -> Result<RootCertStore, MqttError> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(list) = std::env::var_os("SSL_CERT_DIR") {
        dirs.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    if files.is_empty() && dirs.is_empty() {
        match CA_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
            Some(bundle) => files.push(bundle.to_owned()),
            None => dirs.push(PathBuf::from(CA_DIR)),
        }
    }
    let mut roots = RootCertStore::empty();
    let mut skipped = 0usize;
    for file in &files {
        skipped += add_pem_file(&mut roots, file);
    }
    for dir in &dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            skipped += 1;
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                skipped += add_pem_file(&mut roots, &path);
            }
        }
    }
    if skipped > 0 {
        tracing::debug!("TLS roots: skipped {skipped} unreadable file(s) or certificate(s)");
    }
    if roots.is_empty() {
        let searched: Vec<String> = files
            .iter()
            .chain(&dirs)
            .map(|p| p.display().to_string())
            .collect();
        return Err(MqttError::NoTlsRoots {
            searched: searched.join(", "),
        });
    }
    Ok(roots)
}

/// Adds the certificates of one PEM file; returns how many items failed.
pub(crate) fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> usize {
    let Ok(certs) = CertificateDer::pem_file_iter(path) else {
        return 1;
    };
    let mut failed = 0;
    for cert in certs {
        match cert {
            Ok(cert) => {
                if roots.add(cert).is_err() {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    failed
}

/// A rumqttc TLS transport trusting `roots`, with ring as the crypto
/// provider (no process-wide default needed).
fn tls_transport(roots: RootCertStore) -> Result<Transport, MqttError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(config),
    )))
}

/// Publishes records and device state to one broker; see the module doc.
pub struct MqttPublisher {
    /// The broker URL as configured, for logs and status.
    url: String,
    /// Everything rumqttc needs to connect: address, transport, client id,
    /// last will, keep-alive, clean session.
    options: MqttOptions,
    /// QoS of readings (`[mqtt].qos`).
    qos: QoS,
    /// Topic prefix, already joined with the gateway level:
    /// `{prefix}/{gateway}`.
    base: String,
    /// Configured devices, published `down` until they report otherwise.
    devices: Vec<Arc<str>>,
    /// Shared with status and metrics.
    status: MqttStatusCell,
}

impl std::fmt::Debug for MqttPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttPublisher")
            .field("url", &self.url)
            .field("client_id", &self.options.client_id())
            .field("qos", &self.qos)
            .field("base", &self.base)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl MqttPublisher {
    /// A publisher for `config`, for gateway `gateway_id`, announcing the
    /// status of `devices`. Connects lazily (in [`MqttPublisher::run`]);
    /// never blocks the caller (for `mqtts://` it reads the CA bundle).
    pub fn new(
        config: &MqttConfig,
        gateway_id: &str,
        devices: Vec<Arc<str>>,
    ) -> Result<MqttPublisher, MqttError> {
        let addr = parse_url(&config.url).map_err(|reason| MqttError::Url {
            url: config.url.clone(),
            reason,
        })?;
        let qos = match config.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            other => return Err(MqttError::Qos(other)),
        };
        let prefix = config.topic_prefix.trim_matches('/');
        let mut options = MqttOptions::new(client_id(gateway_id), addr.host.clone(), addr.port);
        options
            .set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(LastWill::new(
                gateway_status_topic(prefix, gateway_id),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        if addr.tls {
            options.set_transport(tls_transport(system_roots()?)?);
        }
        Ok(MqttPublisher {
            url: config.url.clone(),
            options,
            qos,
            base: format!("{prefix}/{}", topic_level(gateway_id)),
            devices,
            status: Arc::new(Mutex::new(MqttStatus {
                broker: config.url.clone(),
                ..MqttStatus::default()
            })),
        })
    }

    /// Trusts the certificates in the PEM file `pem_file` instead of the
    /// system's (a broker with a private CA). Only used with `mqtts://`.
    pub fn with_root_certificates(mut self, pem_file: &Path) -> Result<MqttPublisher, MqttError> {
        let error = |reason: String| MqttError::TlsRoots {
            path: pem_file.to_owned(),
            reason,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pem_file).map_err(|e| error(e.to_string()))? {
            let cert = cert.map_err(|e| error(e.to_string()))?;
            roots.add(cert).map_err(|e| error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(error("no certificate in the file".to_owned()));
        }
        if matches!(self.options.transport(), Transport::Tls(_)) {
            self.options.set_transport(tls_transport(roots)?);
        }
        Ok(self)
    }

    /// The status cell, updated while [`MqttPublisher::run`] runs.
    pub fn status(&self) -> MqttStatusCell {
        self.status.clone()
    }

    /// Runs until `shutdown` (or until the hub is gone): reads `events` (a
    /// live hub subscription) and publishes, connecting and reconnecting
    /// with backoff. On shutdown it publishes the devices `down` and the
    /// gateway `offline` and disconnects, within [`GOODBYE_TIMEOUT`].
    pub async fn run(self, mut events: broadcast::Receiver<Event>, shutdown: CancellationToken) {
        let (client, mut eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CAPACITY);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        eventloop.set_network_options(network);
        let mut session = Session::new(self, client);
        let mut backoff = new_backoff();
        loop {
            // Connecting or connected: drive the event loop until the
            // connection fails, handling hub events in between.
            let error = loop {
                let step = {
                    let poll = eventloop.poll();
                    tokio::pin!(poll);
                    loop {
                        tokio::select! {
                            biased;
                            // Shutdown wins over anything in progress.
                            () = shutdown.cancelled() => break Step::Stop,
                            // The connection made progress, or failed.
                            polled = &mut poll => break Step::Polled(polled),
                            // A record or device state: queued without waiting.
                            received = events.recv() => match received {
                                Err(RecvError::Closed) => break Step::Stop,
                                received => session.on_hub(received),
                            },
                        }
                    }
                };
                match step {
                    Step::Stop => {
                        session.goodbye(&mut eventloop).await;
                        return;
                    }
                    Step::Polled(Ok(event)) => session.on_mqtt(event),
                    Step::Polled(Err(error)) => break error,
                }
            };
            let delay = session.on_connection_error(&mut eventloop, &error, &mut backoff);
            // Backing off: keep reading the hub (records are counted as
            // dropped, device states remembered for the reconnect).
            let pause = tokio::time::sleep(delay);
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    biased;
                    // Not connected: nobody to say goodbye to.
                    () = shutdown.cancelled() => return,
                    // Time for the next attempt.
                    () = &mut pause => break,
                    // A record or device state while the broker is away.
                    received = events.recv() => match received {
                        Err(RecvError::Closed) => return,
                        received => session.on_hub(received),
                    },
                }
            }
        }
    }
}

/// How an iteration of the connected loop ended.
enum Step {
    /// Shutdown, or the hub is gone.
    Stop,
    /// rumqttc's event loop yielded.
    Polled(Result<rumqttc::Event, ConnectionError>),
}

/// Exponential backoff with jitter, never giving up.
fn new_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN)
        .with_max_delay(RETRY_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// A publish handed to rumqttc, remembered until the broker confirms it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// A reading (counted), or a status message (not counted).
    reading: bool,
    /// Its QoS, which decides what confirms it.
    qos: QoS,
}

/// The client side of rumqttc's request queue, and what is in it.
///
/// rumqttc takes requests from its queue in order and reports each publish
/// as `Outgoing::Publish(pkid)` (or `AwaitAck` on a packet-id collision,
/// then `Publish` when resolved), so the `n`-th such event is the `n`-th
/// successful `try_publish`. That is how a `PUBACK` is traced back to a
/// reading without trusting "handed to rumqttc" as delivered.
struct Outbox {
    /// rumqttc's request queue.
    client: AsyncClient,
    /// Queued, not yet taken by the event loop, oldest first.
    queued: VecDeque<Sent>,
    /// Written, waiting for `PUBACK`/`PUBCOMP`, by packet id.
    unacked: HashMap<u16, Sent>,
    /// Taken by the event loop but held back by a packet-id collision.
    collided: Option<Sent>,
}

impl Outbox {
    /// Queues a publish without waiting; false when the queue is full.
    fn send(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        reading: bool,
    ) -> bool {
        match self.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                self.queued.push_back(Sent { reading, qos });
                true
            }
            Err(_) => false,
        }
    }

    /// The event loop wrote publish `pkid`: returns it if that confirms it
    /// (QoS 0), else remembers it until acknowledged.
    fn written(&mut self, pkid: u16) -> Option<Sent> {
        let sent = self.collided.take().or_else(|| self.queued.pop_front())?;
        if sent.qos == QoS::AtMostOnce {
            return Some(sent);
        }
        self.unacked.insert(pkid, sent);
        None
    }

    /// The broker confirmed `pkid` with the final ack of `qos`.
    fn acked(&mut self, pkid: u16, qos: QoS) -> Option<Sent> {
        match self.unacked.get(&pkid) {
            Some(sent) if sent.qos == qos => self.unacked.remove(&pkid),
            _ => None,
        }
    }

    /// Nothing waits for the event loop or the broker.
    fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.unacked.is_empty() && self.collided.is_none()
    }

    /// The connection broke: everything not confirmed is lost (clean
    /// session). Returns how many readings.
    fn forget(&mut self) -> u64 {
        let lost = self
            .queued
            .drain(..)
            .chain(self.unacked.drain().map(|(_, s)| s))
            .chain(self.collided.take())
            .filter(|s| s.reading)
            .count();
        lost as u64
    }
}

/// A device's topics and last known status.
struct DeviceTopics {
    /// `{base}/{device}/reading`.
    reading: String,
    /// `{base}/{device}/level`: interval levels.
    level: String,
    /// `{base}/{device}/status`.
    status: String,
    /// The status payload to keep retained; `None` until known.
    payload: Option<&'static str>,
    /// The broker does not have `payload` yet.
    dirty: bool,
}

/// A broker outage in progress, for the "back" log line.
struct Outage {
    /// When the connection was lost (or the first attempt failed).
    since: Instant,
    /// Failed attempts so far.
    attempts: u64,
    /// `dropped_total` when it began.
    dropped_before: u64,
}

/// The running publisher's state (owned by the one task).
struct Session {
    /// Broker URL, for logs.
    url: String,
    /// QoS of readings.
    qos: QoS,
    /// `{prefix}/{gateway}`.
    base: String,
    /// `{base}/status`.
    gateway_topic: String,
    /// The gateway payload to keep retained (`online`, `offline` on stop).
    gateway_payload: &'static str,
    /// The broker does not have `gateway_payload` yet.
    gateway_dirty: bool,
    /// Some status (gateway or device) still has to be published.
    control_dirty: bool,
    /// Every device seen or configured, in id order.
    devices: BTreeMap<Arc<str>, DeviceTopics>,
    /// Retained alert topics → the active episode's latest event (empty:
    /// cleared, to be removed from the broker) and whether the broker
    /// still needs it.
    alerts: BTreeMap<String, (Vec<u8>, bool)>,
    /// rumqttc's queue and what is in flight.
    outbox: Outbox,
    /// Between `CONNACK` and the next error.
    connected: bool,
    /// When the current connection was accepted (decides the backoff reset).
    connected_at: Option<Instant>,
    /// Whether any connection was ever accepted (for `reconnects`).
    ever_connected: bool,
    /// The outage in progress, if any.
    outage: Option<Outage>,
    /// `dropped_total` when the request queue first refused a reading,
    /// while it stays full.
    queue_full_since: Option<u64>,
    /// Hub events skipped since the last lag log line.
    lag_unlogged: u64,
    /// When the last lag log line was written.
    lag_logged_at: Option<Instant>,
    /// Shared with status and metrics.
    status: MqttStatusCell,
}

impl Session {
    fn new(publisher: MqttPublisher, client: AsyncClient) -> Session {
        let mut session = Session {
            gateway_topic: format!("{}/status", publisher.base),
            url: publisher.url,
            qos: publisher.qos,
            base: publisher.base,
            gateway_payload: ONLINE,
            gateway_dirty: true,
            control_dirty: true,
            devices: BTreeMap::new(),
            alerts: BTreeMap::new(),
            outbox: Outbox {
                client,
                queued: VecDeque::new(),
                unacked: HashMap::new(),
                collided: None,
            },
            connected: false,
            connected_at: None,
            ever_connected: false,
            outage: None,
            queue_full_since: None,
            lag_unlogged: 0,
            lag_logged_at: None,
            status: publisher.status,
        };
        for device in publisher.devices {
            let entry = device_entry(&mut session.devices, &session.base, &device);
            entry.payload = Some(DOWN);
            entry.dirty = true;
        }
        session
    }

    /// A hub event (or a lag notice).
    fn on_hub(&mut self, received: Result<Event, RecvError>) {
        match received {
            Ok(Event::Record(record)) => self.on_record(&record),
            Ok(Event::DeviceState { device, state, .. }) => {
                self.set_device_status(&device, status_payload(state));
            }
            Ok(Event::Alert(alert)) => self.on_alert(&alert),
            Err(RecvError::Lagged(skipped)) => self.on_lagged(skipped),
            // The caller stops on `Closed`.
            Err(RecvError::Closed) => {}
        }
    }

    fn on_record(&mut self, record: &Record) {
        // Readings prove the link: heals a missed state change.
        self.set_device_status(&record.device, CONNECTED);
        if !self.connected {
            self.count_dropped(1);
            return;
        }
        let payload = match serde_json::to_string(record) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(device = %record.device, seq = record.seq, "record not published to MQTT: {e}");
                self.count_dropped(1);
                return;
            }
        };
        let entry = device_entry(&mut self.devices, &self.base, &record.device);
        let topic = if record.is_interval() {
            &entry.level
        } else {
            &entry.reading
        };
        if self
            .outbox
            .send(topic, payload.into_bytes(), self.qos, false, true)
        {
            if let Some(before) = self.queue_full_since.take() {
                let dropped = lock_status(&self.status).dropped_total - before;
                tracing::info!(
                    broker = %self.url,
                    "MQTT publish queue drains again; {dropped} readings were not published meanwhile (they are in the buffer)"
                );
            }
        } else {
            if self.queue_full_since.is_none() {
                self.queue_full_since = Some(lock_status(&self.status).dropped_total);
                tracing::warn!(
                    broker = %self.url,
                    "MQTT publish queue full ({REQUEST_CAPACITY}): the broker does not keep up; dropping live readings until it drains (they stay in the buffer)"
                );
            }
            self.count_dropped(1);
        }
    }

    /// An alert event: on `{base}/alerts` (not retained, dropped while the
    /// broker is away like readings), and the episode's latest event
    /// retained on `{base}/alerts/{episode}` while it is active, kept here
    /// and published again after a reconnect; a clear removes the retained
    /// message. A subscriber that connects later sees every active alert.
    fn on_alert(&mut self, alert: &serde_json::Value) {
        let payload = alert.to_string().into_bytes();
        let events = format!("{}/alerts", self.base);
        if self.connected {
            self.outbox
                .send(&events, payload.clone(), self.qos, false, false);
        }
        if let Some(episode) = alert.get("episode").and_then(|e| e.as_str()) {
            let retained = format!("{events}/{}", topic_level(episode));
            let cleared = alert.get("event").and_then(|e| e.as_str()) == Some("clear");
            let body = if cleared { Vec::new() } else { payload };
            self.alerts.insert(retained, (body, true));
            self.control_dirty = true;
            self.flush_control();
        }
    }

    fn on_lagged(&mut self, skipped: u64) {
        self.count_dropped(skipped);
        self.lag_unlogged += skipped;
        if self
            .lag_logged_at
            .is_none_or(|at| at.elapsed() >= LAG_LOG_EVERY)
        {
            tracing::warn!(
                broker = %self.url,
                "MQTT publisher fell behind the live feed: {} events skipped (readings stay in the buffer); continuing from the newest",
                self.lag_unlogged
            );
            self.lag_unlogged = 0;
            self.lag_logged_at = Some(Instant::now());
        }
    }

    /// Remembers `device`'s status payload and publishes it if it changed.
    fn set_device_status(&mut self, device: &Arc<str>, payload: &'static str) {
        let entry = device_entry(&mut self.devices, &self.base, device);
        if entry.payload != Some(payload) {
            entry.payload = Some(payload);
            entry.dirty = true;
            self.control_dirty = true;
            self.flush_control();
        }
    }

    /// Queues the status messages the broker does not have yet, as far as
    /// the request queue takes them; the rest wait for the next event.
    fn flush_control(&mut self) {
        if !self.connected || !self.control_dirty {
            return;
        }
        if self.gateway_dirty {
            let payload = self.gateway_payload.as_bytes().to_vec();
            if !self
                .outbox
                .send(&self.gateway_topic, payload, QoS::AtLeastOnce, true, false)
            {
                return;
            }
            self.gateway_dirty = false;
        }
        for entry in self.devices.values_mut().filter(|e| e.dirty) {
            if let Some(payload) = entry.payload {
                let payload = payload.as_bytes().to_vec();
                if !self
                    .outbox
                    .send(&entry.status, payload, QoS::AtLeastOnce, true, false)
                {
                    return;
                }
            }
            entry.dirty = false;
        }
        for (topic, (payload, dirty)) in self.alerts.iter_mut().filter(|(_, (_, d))| *d) {
            if !self
                .outbox
                .send(topic, payload.clone(), QoS::AtLeastOnce, true, false)
            {
                return;
            }
            *dirty = false;
        }
        // A cleared episode's empty retained message is out: forget it.
        self.alerts.retain(|_, (payload, _)| !payload.is_empty());
        self.control_dirty = false;
    }

    /// An event from rumqttc's event loop.
    fn on_mqtt(&mut self, event: rumqttc::Event) {
        match event {
            rumqttc::Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
            rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(sent) = self.outbox.written(pkid) {
                    self.confirmed(sent);
                }
            }
            rumqttc::Event::Outgoing(Outgoing::AwaitAck(_)) => {
                self.outbox.collided = self.outbox.queued.pop_front();
            }
            rumqttc::Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(sent) = self.outbox.acked(ack.pkid, QoS::AtLeastOnce) {
                    self.confirmed(sent);
                }
            }
            rumqttc::Event::Incoming(Packet::PubComp(comp)) => {
                if let Some(sent) = self.outbox.acked(comp.pkid, QoS::ExactlyOnce) {
                    self.confirmed(sent);
                }
            }
            _ => {}
        }
        self.flush_control();
    }

    fn confirmed(&mut self, sent: Sent) {
        if sent.reading {
            lock_status(&self.status).published_total += 1;
        }
    }

    /// `CONNACK`: announce the gateway and every known device status again.
    fn on_connected(&mut self) {
        self.connected = true;
        self.connected_at = Some(Instant::now());
        let reconnect = self.ever_connected;
        self.ever_connected = true;
        {
            let mut status = lock_status(&self.status);
            status.connected = true;
            if reconnect {
                status.reconnects += 1;
            }
        }
        match self.outage.take() {
            Some(outage) => {
                let dropped = lock_status(&self.status).dropped_total - outage.dropped_before;
                tracing::info!(
                    broker = %self.url,
                    "MQTT broker connected again after {:.1}s and {} failed connection attempt(s); {dropped} readings were not published meanwhile (they are in the buffer)",
                    outage.since.elapsed().as_secs_f64(),
                    outage.attempts
                );
            }
            None => tracing::info!(broker = %self.url, "MQTT broker connected"),
        }
        self.gateway_payload = ONLINE;
        self.gateway_dirty = true;
        for entry in self.devices.values_mut() {
            entry.dirty = entry.payload.is_some();
        }
        for (_, dirty) in self.alerts.values_mut() {
            *dirty = true;
        }
        self.control_dirty = true;
        self.flush_control();
    }

    /// A failed poll: account for what was lost, log on change, and return
    /// how long to wait before the next attempt.
    fn on_connection_error(
        &mut self,
        eventloop: &mut EventLoop,
        error: &ConnectionError,
        backoff: &mut ExponentialBackoff,
    ) -> Duration {
        let was_connected = self.connected;
        self.connected = false;
        // Acks that arrived before the failure are still buffered in
        // rumqttc's state: count them before declaring the rest lost.
        while let Some(event) = eventloop.state.events.pop_front() {
            self.on_mqtt(event);
        }
        // Clean session: what rumqttc kept for a retransmission is void,
        // and anything it moved there from the request queue too.
        eventloop.pending.clear();
        let lost = self.outbox.forget();
        self.queue_full_since = None;
        let reason = error.to_string();
        let dropped_total = {
            let mut status = lock_status(&self.status);
            status.connected = false;
            status.dropped_total += lost;
            status.last_error = Some(reason.clone());
            status.dropped_total
        };
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= STABLE_AFTER)
        {
            *backoff = new_backoff();
        }
        let delay = backoff.next().unwrap_or(RETRY_MAX);
        match &mut self.outage {
            Some(outage) => {
                outage.attempts += 1;
                tracing::debug!(
                    broker = %self.url,
                    "MQTT connection attempt {} failed: {reason}; retrying in {:.1}s",
                    outage.attempts,
                    delay.as_secs_f64()
                );
            }
            None => {
                self.outage = Some(Outage {
                    since: Instant::now(),
                    attempts: 1,
                    dropped_before: dropped_total - lost,
                });
                let what = if was_connected {
                    "connection to the MQTT broker lost"
                } else {
                    "cannot connect to the MQTT broker"
                };
                tracing::warn!(
                    broker = %self.url,
                    "{what}: {reason}; live MQTT publishing paused (readings stay in the buffer); retrying in {:.1}s, backing off up to {}s",
                    delay.as_secs_f64(),
                    2 * RETRY_MAX.as_secs()
                );
            }
        }
        delay
    }

    /// Clean stop: devices `down`, gateway `offline`, `DISCONNECT` (so no
    /// will), within [`GOODBYE_TIMEOUT`].
    ///
    /// The `DISCONNECT` goes out only once the broker acknowledged
    /// everything before it, and the connection is closed only after the
    /// broker closed its side: closing a socket with unread acks in it makes
    /// the kernel send a reset, and a broker that receives a reset may drop
    /// the last publishes and the `DISCONNECT` still unread in its buffer
    /// (and then publish the will).
    async fn goodbye(&mut self, eventloop: &mut EventLoop) {
        if !self.connected {
            return;
        }
        self.gateway_payload = OFFLINE;
        self.gateway_dirty = true;
        for entry in self.devices.values_mut() {
            if entry.payload.is_some() {
                entry.payload = Some(DOWN);
                entry.dirty = true;
            }
        }
        self.control_dirty = true;
        self.flush_control();
        let deadline = Instant::now() + GOODBYE_TIMEOUT;
        let mut disconnect_queued = false;
        let mut disconnect_sent = false;
        loop {
            if !disconnect_queued && !self.control_dirty && self.outbox.is_empty() {
                disconnect_queued = self.outbox.client.try_disconnect().is_ok();
            }
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Err(_) => {
                    if !disconnect_sent {
                        tracing::warn!(
                            broker = %self.url,
                            "MQTT: no clean disconnect within {}s; the broker will publish the last will \"offline\"",
                            GOODBYE_TIMEOUT.as_secs()
                        );
                    }
                    break;
                }
                // After our `DISCONNECT`, the broker closing the connection
                // is the expected end.
                Ok(Err(e)) => {
                    if !disconnect_sent {
                        tracing::debug!(broker = %self.url, "MQTT connection failed while stopping: {e}");
                    }
                    break;
                }
                Ok(Ok(rumqttc::Event::Outgoing(Outgoing::Disconnect))) => {
                    disconnect_sent = true;
                    tracing::info!(broker = %self.url, "MQTT disconnected (gateway offline)");
                }
                Ok(Ok(event)) => self.on_mqtt(event),
            }
        }
        self.connected = false;
        lock_status(&self.status).connected = false;
    }

    fn count_dropped(&self, n: u64) {
        lock_status(&self.status).dropped_total += n;
    }
}

/// The entry of `device`, created on first sight (status unknown).
fn device_entry<'a>(
    devices: &'a mut BTreeMap<Arc<str>, DeviceTopics>,
    base: &str,
    device: &Arc<str>,
) -> &'a mut DeviceTopics {
    devices.entry(device.clone()).or_insert_with(|| {
        let level = topic_level(device);
        DeviceTopics {
            reading: format!("{base}/{level}/reading"),
            level: format!("{base}/{level}/level"),
            status: format!("{base}/{level}/status"),
            payload: None,
            dirty: false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(tls: bool, host: &str, port: u16) -> BrokerAddr {
        BrokerAddr {
            tls,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884"),
            Ok(addr(false, "127.0.0.1", 1884))
        );
        assert_eq!(parse_url("mqtt://broker"), Ok(addr(false, "broker", 1883)));
        assert_eq!(parse_url("MQTTS://broker/"), Ok(addr(true, "broker", 8883)));
        assert_eq!(parse_url("mqtts://[::1]:9"), Ok(addr(true, "::1", 9)));
        assert_eq!(
            parse_url("mqtt://[2001:db8::1]"),
            Ok(addr(false, "2001:db8::1", 1883))
        );
        for bad in [
            "broker:1883",
            "tcp://broker",
            "mqtt://",
            "mqtt://:1883",
            "mqtt://broker:0",
            "mqtt://broker:+1",
            "mqtt://broker:x",
            "mqtt://broker/topic",
            "mqtt://u:p@broker",
            "mqtt://[::1",
            "mqtt://[nope]:1",
            "mqtt://[::1]x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn topics_and_client_id_are_sanitised() {
        assert_eq!(
            reading_topic("slmd", "gw-1", "north"),
            "slmd/gw-1/north/reading"
        );
        assert_eq!(device_status_topic("a/b", "gw", "n.1"), "a/b/gw/n.1/status");
        assert_eq!(gateway_status_topic("slmd", "g/w+#"), "slmd/g_w__/status");
        assert_eq!(client_id("gw-0042"), "slmd-gw-0042");
        assert_eq!(client_id("gw/ä+1"), "slmd-gw___1");
    }

    #[test]
    fn connecting_is_published_as_down() {
        assert_eq!(status_payload(LinkState::Connected), "connected");
        assert_eq!(status_payload(LinkState::Connecting), "down");
        assert_eq!(status_payload(LinkState::Down), "down");
    }

    #[test]
    fn new_rejects_a_bad_url_and_qos() {
        let config = |url: &str, qos| MqttConfig {
            url: url.to_owned(),
            topic_prefix: "slmd".to_owned(),
            qos,
        };
        assert!(matches!(
            MqttPublisher::new(&config("http://x", 1), "gw", vec![]),
            Err(MqttError::Url { .. })
        ));
        assert!(matches!(
            MqttPublisher::new(&config("mqtt://x", 3), "gw", vec![]),
            Err(MqttError::Qos(3))
        ));
        let publisher = MqttPublisher::new(&config("mqtt://x", 0), "gw", vec![]).expect("valid");
        assert_eq!(lock_status(&publisher.status()).broker, "mqtt://x");
    }

    #[test]
    fn the_system_roots_are_found() {
        // Debian (and this build machine) ship a CA bundle; a gateway
        // without one gets a clear error instead of a panic.
        match system_roots() {
            Ok(roots) => assert!(!roots.is_empty()),
            Err(e) => assert!(e.to_string().contains("no TLS root certificates"), "{e}"),
        }
    }

    #[test]
    fn the_outbox_traces_acks_back_to_readings() {
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("t", "localhost", 1), 10);
        let mut outbox = Outbox {
            client,
            queued: VecDeque::new(),
            unacked: HashMap::new(),
            collided: None,
        };
        assert!(outbox.send("t/s", b"online".to_vec(), QoS::AtLeastOnce, true, false));
        assert!(outbox.send("t/r", b"{}".to_vec(), QoS::AtLeastOnce, false, true));
        assert!(outbox.send("t/r", b"{}".to_vec(), QoS::AtMostOnce, false, true));
        assert!(outbox.send("t/r", b"{}".to_vec(), QoS::ExactlyOnce, false, true));
        assert!(outbox.written(1).is_none());
        assert!(outbox.written(2).is_none());
        assert!(outbox.written(0).is_some_and(|s| s.reading));
        assert!(
            outbox
                .acked(1, QoS::AtLeastOnce)
                .is_some_and(|s| !s.reading)
        );
        assert!(outbox.acked(2, QoS::AtLeastOnce).is_some_and(|s| s.reading));
        assert!(outbox.acked(2, QoS::AtLeastOnce).is_none());
        // The QoS 2 reading was never written: lost with the connection.
        assert_eq!(outbox.forget(), 1);
        assert!(outbox.queued.is_empty() && outbox.unacked.is_empty());
    }
}
