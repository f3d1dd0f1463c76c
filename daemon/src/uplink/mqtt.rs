//! The fleet over MQTT (`[fleet] transport = "mqtt"`): the buffer pushed to
//! a broker cluster with the same promises as the HTTP push (SPEC §7):
//! every record, in `seq` order, at least once, token rotation without a
//! lost tick.
//!
//! # Topics and payloads
//!
//! | topic | payload | QoS | retained |
//! |---|---|---|---|
//! | `{prefix}/{gateway}/records` | the push body of SPEC §7 (`{"gateway", "records": [...], "skipped"?}`) | 1 | no |
//! | `{prefix}/{gateway}/heartbeat` | the heartbeat body of SPEC §7 | 1 | yes |
//! | `{prefix}/{gateway}/events` | the events body (`{"gateway", "events": [...]}`) | 1 | no |
//!
//! With `gzip = true` a payload is the gzip of that JSON (it starts with
//! the bytes `1f 8b`; JSON never does). The fleet de-duplicates records by
//! `(gateway, seq)` and events by `(gateway, event_seq)`, as over HTTP.
//!
//! # The parts
//! - [`Link`] owns the one connection (one client id: two connections
//!   would kick each other off a broker). The record push, the heartbeat
//!   and the alert events hand it publishes through a [`LinkHandle`] and
//!   are told when the broker acknowledged each (`PUBACK`), or that it
//!   was not.
//! - [`MqttUplink`] reads the buffer as consumer
//!   [`Consumer::FleetMqtt`] and publishes one batch at a time; the
//!   position moves, and is written to the file, only on the batch's
//!   `PUBACK` ([`Buffer::mark_pushed_durably`]), so a crash re-sends at
//!   most the batch in flight.
//! - [`MqttEvents`] is the fleet-over-MQTT consumer of alert events.
//!
//! # What rumqttc leaves to us, and where it is handled
//! - **Reconnect delay.** `EventLoop::poll` reconnects at once when polled
//!   after an error (rumqttc issues #472, #606): [`Link::run`] waits
//!   between rounds of failed attempts, exponential backoff with jitter
//!   from `retry_min` to `retry_max`, reset after a connection that stayed
//!   up for [`STABLE_AFTER`].
//! - **In-flight publishes across a reconnect.** With a persistent session
//!   rumqttc keeps the un-acknowledged publishes of an `EventLoop` and
//!   sends them again after the next `CONNACK`; with a clean one it drops
//!   them. Neither helps when the next connection is another broker, and
//!   both hide which publish an ack belongs to. So every lost connection
//!   drops its `EventLoop`: every publish in flight fails to its sender,
//!   which sends it again from the buffer (the buffer is the only
//!   re-send queue). The broker may have taken a batch whose `PUBACK` was
//!   lost: that batch arrives twice, which the fleet de-duplicates.
//! - **Which `PUBACK` is whose.** `AsyncClient::publish` does not return
//!   the packet id. rumqttc takes requests in order and reports each as
//!   `Outgoing::Publish(pkid)`, so the `n`-th such event is the `n`-th
//!   publish handed over ([`Outbox`]).
//! - **Failover and credentials.** rumqttc connects to one address.
//!   [`Link`] walks `urls` (from the one after a broker that dropped us),
//!   tries the tokens in preference order on each (`CONNACK` "bad user
//!   name or password" / "not authorised" is the MQTT `401`), and every
//!   `token_retry` goes back to the first broker with the preferred token
//!   when nothing is in flight (a rotation staged before the fleet knew
//!   the new token is picked up; a broker that came back is used again).
//! - **Persistent session.** Clean session off (MQTT 3.1.1's name for
//!   clean start off), client id `slmd-{gateway}`: the cluster keeps the
//!   session across reconnects and nodes.
//! - **Packet size.** rumqttc's default limit (10 KiB) is below one batch;
//!   [`MAX_PACKET`] is set both ways.

use super::tokens::TokenSource;
use super::{
    FleetState, FleetStatusCell, UplinkError, UplinkEvent, blocking, human, new_backoff, wire,
};
use crate::buffer::alerts::StoredEvent;
use crate::buffer::{Buffer, BufferSlot, Consumer};
use crate::config::FleetConfig;
use crate::limits::deliver::{EventSink, Failure};
use crate::mqtt::{BrokerAddr, client_id, parse_url, system_roots, topic_level};
use backon::ExponentialBackoff;
use chrono::Utc;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, EventLoop, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest packet sent or accepted: a batch of 10 000 records (the most
/// `batch_max` allows) is about 3 MiB of JSON before gzip.
pub const MAX_PACKET: usize = 4 * 1024 * 1024;

/// Publishes the link has handed to the broker and not yet seen
/// acknowledged, at most. The record push has one batch in flight; the
/// heartbeat and events add one each.
pub const WINDOW: usize = 8;

/// MQTT keep-alive: a link that died silently is noticed within about
/// 1.5 × this.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Seconds for the TCP (and TLS) connect and the `CONNACK`.
const CONNECT_TIMEOUT_SECS: u64 = 5;

/// A connection that stayed up this long starts the backoff over when it
/// breaks.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// While the link is down, how often the push shows its backlog.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Publishes waiting for the link (the record push, heartbeat and events
/// each wait for their own, so a few are enough).
const REQUESTS: usize = 16;

/// A publish handed to the link.
struct Request {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// Told when the broker acknowledged it, or why not.
    done: oneshot::Sender<Result<(), String>>,
}

/// How the record push, heartbeat and events publish through the link.
#[derive(Clone)]
pub struct LinkHandle {
    requests: mpsc::Sender<Request>,
    connected: watch::Receiver<bool>,
    /// `{prefix}/{gateway}`.
    base: String,
}

impl LinkHandle {
    /// `{prefix}/{gateway}/{leaf}`.
    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.base)
    }

    /// Waits until the link is connected.
    pub async fn connected(&self) {
        let mut connected = self.connected.clone();
        // An error means the link is gone: nothing to wait for then.
        let _ = connected.wait_for(|up| *up).await;
    }

    /// Publishes `payload` at QoS 1 and waits for the broker's `PUBACK`,
    /// at most `timeout` (from now, so connect first).
    pub async fn publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let (done, acked) = oneshot::channel();
        let request = Request {
            topic,
            payload,
            retain,
            done,
        };
        let attempt = async {
            self.requests
                .send(request)
                .await
                .map_err(|_| "the MQTT link has stopped".to_owned())?;
            acked
                .await
                .map_err(|_| "the MQTT link has stopped".to_owned())?
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the broker did not acknowledge within {}",
                human(timeout)
            )),
        }
    }
}

/// One broker of `urls`.
#[derive(Debug, Clone)]
struct Broker {
    url: String,
    addr: BrokerAddr,
}

/// The connection to the fleet's brokers; see the module doc.
pub struct Link {
    config: FleetConfig,
    brokers: Vec<Broker>,
    client_id: String,
    username: String,
    /// The TLS setup for `mqtts://` brokers.
    tls: Option<Arc<rustls::ClientConfig>>,
    tokens: TokenSource,
    status: FleetStatusCell,
    events: broadcast::Sender<UplinkEvent>,
    reload: watch::Receiver<FleetConfig>,
    requests: mpsc::Receiver<Request>,
    connected: watch::Sender<bool>,
    backoff: ExponentialBackoff,
    /// A failure going on (logged when it starts and ends, not per try).
    failing: Option<(chrono::DateTime<Utc>, u64)>,
}

/// How a connection attempt ended.
enum Connect {
    Up {
        client: AsyncClient,
        eventloop: Box<EventLoop>,
        broker: usize,
        slot: usize,
    },
    /// Every token was refused.
    Refused,
    /// No broker could be reached; the last error.
    Down(String),
    Stop,
}

/// How a connection ended.
enum Served {
    /// It broke.
    Lost(String),
    /// Time to go back to the first broker or the preferred token.
    Prefer,
    Stop,
}

impl Link {
    /// A link for `config` (its `urls`, tokens and TLS files), and its
    /// handle. Reads the CA and client certificate files now, so a
    /// missing file stops the start with its name.
    pub fn new(
        config: &FleetConfig,
        gateway: &str,
        status: FleetStatusCell,
        events: broadcast::Sender<UplinkEvent>,
        reload: watch::Receiver<FleetConfig>,
    ) -> Result<(Link, LinkHandle), UplinkError> {
        let brokers = config
            .urls
            .iter()
            .map(|url| {
                parse_url(url)
                    .map(|addr| Broker {
                        url: url.clone(),
                        addr,
                    })
                    .map_err(|why| UplinkError::Mqtt(format!("invalid broker URL {url:?}: {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if brokers.is_empty() {
            return Err(UplinkError::Mqtt("[fleet].urls is empty".to_owned()));
        }
        let tls = if brokers.iter().any(|b| b.addr.tls) {
            Some(tls_config(config)?)
        } else {
            None
        };
        let (tokens, error) = TokenSource::new(config);
        if let Some(e) = error {
            tracing::error!(
                "no fleet token: {e}; the MQTT uplink waits for a token, readings keep buffering"
            );
        }
        let prefix = config.topic_prefix.trim_matches('/');
        let (requests_tx, requests) = mpsc::channel(REQUESTS);
        let (connected, connected_rx) = watch::channel(false);
        let link = Link {
            brokers,
            client_id: client_id(gateway),
            username: config
                .username
                .clone()
                .unwrap_or_else(|| gateway.to_owned()),
            tls,
            tokens,
            status,
            events,
            reload,
            requests,
            connected,
            backoff: new_backoff(config),
            failing: None,
            config: config.clone(),
        };
        let handle = LinkHandle {
            requests: requests_tx,
            connected: connected_rx,
            base: format!("{prefix}/{}", topic_level(gateway)),
        };
        Ok((link, handle))
    }

    /// Connects, serves publishes, fails over and reconnects until
    /// `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Where the next connect starts: the first broker, or the one after
        // a broker that dropped us.
        let mut start = 0;
        loop {
            self.set_state(FleetState::Starting, None);
            match self.connect(start, &shutdown).await {
                Connect::Stop => return,
                Connect::Up {
                    client,
                    eventloop,
                    broker,
                    slot,
                } => {
                    let since = Instant::now();
                    self.on_connected(broker, slot);
                    let served = self.serve(client, eventloop, broker, slot, &shutdown).await;
                    self.connected.send_replace(false);
                    match served {
                        Served::Stop => return,
                        Served::Prefer => {
                            start = 0;
                            continue;
                        }
                        Served::Lost(error) => {
                            let url = self.brokers[broker].url.clone();
                            self.note_failure(&format!("lost the connection to {url}: {error}"));
                            // The next broker first (the same one when
                            // there is one): at once after a connection
                            // that had been up a while, after the backoff
                            // when it broke soon after it was made (a
                            // broker that takes us and drops us must not
                            // make a loop).
                            start = (broker + 1) % self.brokers.len();
                            if since.elapsed() >= STABLE_AFTER {
                                self.backoff = new_backoff(&self.config);
                                continue;
                            }
                        }
                    }
                }
                Connect::Refused => {
                    self.auth_failed();
                    if !self.wait(self.config.auth_retry, true, &shutdown).await {
                        return;
                    }
                    start = 0;
                    continue;
                }
                Connect::Down(error) => {
                    self.note_failure(&error);
                    start = 0;
                }
            }
            let wait = self.backoff.next().unwrap_or(self.config.retry_max);
            if !self.wait(wait, false, &shutdown).await {
                return;
            }
        }
    }

    /// Tries the brokers from `start` round the list, each with the tokens
    /// in preference order, until one accepts.
    async fn connect(&mut self, start: usize, shutdown: &CancellationToken) -> Connect {
        self.take_reloaded_tokens();
        let mut last_error = String::from("no broker configured");
        let count = self.brokers.len();
        for i in 0..count {
            let broker = (start + i) % count;
            let mut refused = 0;
            let order = self.tokens.ring.order(Instant::now());
            if order.is_empty() {
                return Connect::Refused;
            }
            for slot in order {
                let Some(token) = self.tokens.ring.get(slot).cloned() else {
                    continue;
                };
                let options = self.options(broker, token.secret());
                let (client, mut eventloop) = AsyncClient::new(options, WINDOW + 2);
                let mut network = rumqttc::NetworkOptions::new();
                network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
                eventloop.set_network_options(network);
                let first = tokio::select! {
                    () = shutdown.cancelled() => return Connect::Stop,
                    first = eventloop.poll() => first,
                };
                match first {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                        if self.tokens.ring.accepted(slot, Instant::now()) && slot != 0 {
                            tracing::info!(
                                token = token.fingerprint(),
                                slot = slot + 1,
                                "publishing to the fleet with token {} (slot 2); the preferred token is tried again every {}",
                                token.fingerprint(),
                                human(self.config.token_retry)
                            );
                        }
                        return Connect::Up {
                            client,
                            eventloop: Box::new(eventloop),
                            broker,
                            slot,
                        };
                    }
                    Ok(other) => {
                        last_error = format!(
                            "{} answered {other:?} instead of CONNACK",
                            self.brokers[broker].url
                        );
                        break;
                    }
                    Err(ConnectionError::ConnectionRefused(
                        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    )) => {
                        refused += 1;
                        super::token_rejected(
                            &self.events,
                            &format!("the fleet's broker {}", self.brokers[broker].url),
                            &token,
                            slot,
                            self.tokens.ring.tokens().len() > 1,
                        );
                    }
                    Err(e) => {
                        last_error = format!(
                            "cannot connect to {}: {}",
                            self.brokers[broker].url,
                            describe(&e)
                        );
                        break;
                    }
                }
            }
            // Credentials are the cluster's: every token refused by one
            // broker is refused by all.
            if refused >= self.tokens.ring.tokens().len() {
                return Connect::Refused;
            }
        }
        Connect::Down(last_error)
    }

    /// rumqttc's options for `broker` with `password`.
    fn options(&self, broker: usize, password: &str) -> MqttOptions {
        let addr = &self.brokers[broker].addr;
        let mut options = MqttOptions::new(self.client_id.clone(), addr.host.clone(), addr.port);
        options
            .set_clean_session(false)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(u16::try_from(WINDOW).unwrap_or(8))
            .set_credentials(self.username.clone(), password.to_owned());
        if addr.tls
            && let Some(tls) = &self.tls
        {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }

    /// Hands publishes to the connection and their acks back, until it
    /// breaks, it is time to prefer another, or `shutdown`.
    async fn serve(
        &mut self,
        client: AsyncClient,
        mut eventloop: Box<EventLoop>,
        broker: usize,
        slot: usize,
        shutdown: &CancellationToken,
    ) -> Served {
        let mut outbox = Outbox::default();
        let preferred = broker == 0 && slot == 0;
        let prefer_at = tokio::time::sleep(self.config.token_retry);
        tokio::pin!(prefer_at);
        let served = loop {
            let step = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break Step::Stop,
                        polled = &mut poll => break Step::Polled(polled),
                        Some(request) = self.requests.recv(), if outbox.len() < WINDOW => {
                            if request.done.is_closed() {
                                // Its sender gave up waiting.
                                continue;
                            }
                            match client.try_publish(request.topic, QoS::AtLeastOnce, request.retain, request.payload) {
                                Ok(()) => outbox.queued.push_back(request.done),
                                Err(e) => {
                                    let _ = request.done.send(Err(format!("cannot queue the publish: {e}")));
                                }
                            }
                        }
                        () = &mut prefer_at, if !preferred && outbox.len() == 0 => break Step::Prefer,
                        Ok(()) = self.reload.changed() => {
                            if self.reload_tokens() {
                                break Step::Prefer;
                            }
                        }
                    }
                }
            };
            match step {
                Step::Stop => break Served::Stop,
                Step::Prefer => break Served::Prefer,
                Step::Polled(Ok(rumqttc::Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    outbox.written(pkid);
                }
                Step::Polled(Ok(rumqttc::Event::Incoming(Packet::PubAck(ack)))) => {
                    outbox.acked(ack.pkid);
                }
                Step::Polled(Ok(_)) => {}
                Step::Polled(Err(e)) => break Served::Lost(describe(&e)),
            }
        };
        let why = match &served {
            Served::Lost(e) => format!("the connection broke ({e}); sent again"),
            Served::Prefer => "the link is moving to the preferred broker or token".to_owned(),
            Served::Stop => "slmd is stopping".to_owned(),
        };
        outbox.fail(&why);
        if !matches!(served, Served::Lost(_)) {
            // A clean DISCONNECT; the broker keeps the session.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
        }
        served
    }

    fn on_connected(&mut self, broker: usize, slot: usize) {
        let url = self.brokers[broker].url.clone();
        match self.failing.take() {
            Some((since, tries)) => tracing::info!(
                broker = %url,
                "connected to the fleet's broker {url} after {tries} failed {} since {}",
                if tries == 1 { "try" } else { "tries" },
                since.format("%H:%M:%S")
            ),
            None => tracing::info!(broker = %url, "connected to the fleet's broker {url}"),
        }
        let token = self
            .tokens
            .ring
            .get(slot)
            .map(|t| t.fingerprint().to_owned());
        {
            let mut status = super::lock(&self.status);
            status.broker = Some(url);
            status.token_slot = Some(slot + 1);
            status.token = token;
            status.tokens = self.tokens.ring.fingerprints();
            if matches!(status.state, FleetState::Starting | FleetState::AuthFailed) {
                status.state = FleetState::Ok;
            }
        }
        self.connected.send_replace(true);
    }

    fn note_failure(&mut self, error: &str) {
        match &mut self.failing {
            None => {
                tracing::warn!(
                    "fleet MQTT uplink: {error}; trying the brokers again with backoff, readings keep buffering"
                );
                self.failing = Some((Utc::now(), 1));
            }
            Some((_, tries)) => {
                *tries += 1;
                tracing::debug!(tries = *tries, "fleet MQTT uplink: {error}");
            }
        }
        self.set_state(FleetState::Retrying, Some(error.to_owned()));
    }

    fn auth_failed(&mut self) {
        let fingerprints = self.tokens.ring.fingerprints();
        let error = if fingerprints.is_empty() {
            "no fleet token loaded".to_owned()
        } else {
            format!("every token refused ({})", fingerprints.join(", "))
        };
        if super::lock(&self.status).state != FleetState::AuthFailed {
            tracing::error!(
                tokens = fingerprints.join(","),
                "the fleet's brokers refused every token ({}); publishing is paused and readings keep buffering. \
                 Install a valid token in the config or token file and reload (systemctl reload slmd); retrying every {}",
                fingerprints.join(", "),
                human(self.config.auth_retry)
            );
            let _ = self.events.send(UplinkEvent::AuthFailed {
                tokens: fingerprints,
                retry_in_ms: u64::try_from(self.config.auth_retry.as_millis()).unwrap_or(u64::MAX),
            });
        }
        self.set_state(FleetState::AuthFailed, Some(error));
    }

    /// Waits `wait`, or less when tokens are reloaded (`on_tokens`); false
    /// on shutdown.
    async fn wait(
        &mut self,
        wait: Duration,
        on_tokens: bool,
        shutdown: &CancellationToken,
    ) -> bool {
        let until = Instant::now() + wait;
        let mut poll = tokio::time::interval(super::TOKEN_FILE_POLL);
        poll.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                Ok(()) = self.reload.changed() => {
                    if self.reload_tokens() && on_tokens {
                        return true;
                    }
                }
                _ = poll.tick() => {
                    if self.token_file_changed() && on_tokens {
                        return true;
                    }
                }
            }
        }
    }

    /// Takes reloaded tokens, if a reload brought any, and an edited
    /// token file; true when the tokens changed.
    fn take_reloaded_tokens(&mut self) -> bool {
        let reloaded = self.reload.has_changed().unwrap_or(false) && self.reload_tokens();
        reloaded | self.token_file_changed()
    }

    /// Applies the reloaded `[fleet]` table's tokens; true when they
    /// changed.
    fn reload_tokens(&mut self) -> bool {
        let config = self.reload.borrow_and_update().clone();
        let reloaded = self.tokens.reload(&config);
        self.tokens_changed(reloaded)
    }

    fn token_file_changed(&mut self) -> bool {
        let changed = self.tokens.reread_file();
        self.tokens_changed(changed)
    }

    fn tokens_changed(&mut self, changed: Result<bool, super::tokens::TokenError>) -> bool {
        match changed {
            Ok(true) => {
                let fingerprints = self.tokens.ring.fingerprints();
                tracing::info!(
                    tokens = fingerprints.join(","),
                    "fleet tokens reloaded for the MQTT uplink: {}",
                    fingerprints.join(", ")
                );
                super::lock(&self.status).tokens.clone_from(&fingerprints);
                let _ = self.events.send(UplinkEvent::TokensReloaded {
                    tokens: fingerprints,
                });
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!("fleet tokens not reloaded: {e}; keeping the ones in use");
                false
            }
        }
    }

    fn set_state(&self, state: FleetState, error: Option<String>) {
        let mut status = super::lock(&self.status);
        // An auth failure stays until a connection succeeds.
        if status.state == FleetState::AuthFailed && state == FleetState::Starting {
            return;
        }
        status.state = state;
        if error.is_some() {
            status.last_error = error;
        }
    }
}

/// How an iteration of the connected loop ended.
enum Step {
    Stop,
    Prefer,
    Polled(Result<rumqttc::Event, ConnectionError>),
}

/// Publishes handed to rumqttc, until their `PUBACK`; see the module doc.
#[derive(Default)]
struct Outbox {
    /// Handed over, not yet written, oldest first.
    queued: VecDeque<oneshot::Sender<Result<(), String>>>,
    /// Written, waiting for `PUBACK`, by packet id.
    unacked: HashMap<u16, oneshot::Sender<Result<(), String>>>,
}

impl Outbox {
    fn len(&self) -> usize {
        self.queued.len() + self.unacked.len()
    }

    /// The event loop wrote publish `pkid`.
    fn written(&mut self, pkid: u16) {
        if let Some(done) = self.queued.pop_front() {
            self.unacked.insert(pkid, done);
        }
    }

    /// The broker acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) {
        if let Some(done) = self.unacked.remove(&pkid) {
            let _ = done.send(Ok(()));
        }
    }

    /// Tells every sender its publish was not acknowledged.
    fn fail(&mut self, why: &str) {
        for done in self
            .queued
            .drain(..)
            .chain(self.unacked.drain().map(|(_, d)| d))
        {
            let _ = done.send(Err(why.to_owned()));
        }
    }
}

/// rustls for `mqtts://`: `ca_file` or the system's roots, and the client
/// certificate when configured.
fn tls_config(config: &FleetConfig) -> Result<Arc<rustls::ClientConfig>, UplinkError> {
    let roots = match &config.ca_file {
        Some(file) => {
            let mut roots = RootCertStore::empty();
            let failed = crate::mqtt::add_pem_file(&mut roots, file);
            if roots.is_empty() {
                return Err(UplinkError::Mqtt(format!(
                    "no usable certificate in ca_file {} ({failed} unreadable)",
                    file.display()
                )));
            }
            roots
        }
        None => system_roots().map_err(|e| UplinkError::Mqtt(e.to_string()))?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Mqtt(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                UplinkError::Mqtt(format!("cannot read client_key {}: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| UplinkError::Mqtt(format!("client certificate refused: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let error =
        |e: String| UplinkError::Mqtt(format!("cannot read client_cert {}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if chain.is_empty() {
        return Err(error("no certificate in the file".to_owned()));
    }
    Ok(chain)
}

/// A rumqttc error in words a field tech can act on.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        ConnectionError::NetworkTimeout => "no answer in time".to_owned(),
        ConnectionError::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// The record push over MQTT: the buffer as [`Consumer::FleetMqtt`], one
/// batch in flight, the position written on its `PUBACK`.
pub struct MqttUplink {
    config: FleetConfig,
    gateway: String,
    link: LinkHandle,
    buffer: BufferSlot,
    status: FleetStatusCell,
    events: broadcast::Sender<UplinkEvent>,
    /// Which consumers the buffer should keep positions for.
    consumers: Vec<Consumer>,
    backoff: ExponentialBackoff,
    failing: Option<(chrono::DateTime<Utc>, u64)>,
}

impl MqttUplink {
    /// The push for `config` through `link`.
    pub fn new(
        config: &FleetConfig,
        gateway: String,
        link: LinkHandle,
        buffer: BufferSlot,
        status: FleetStatusCell,
        events: broadcast::Sender<UplinkEvent>,
    ) -> MqttUplink {
        {
            let mut status = super::lock(&status);
            status.enabled = true;
            status.transport = "mqtt";
            status.batch_size = config.batch_max.max(1) as usize;
        }
        MqttUplink {
            consumers: super::consumers(config),
            backoff: new_backoff(config),
            config: config.clone(),
            gateway,
            link,
            buffer,
            status,
            events,
            failing: None,
        }
    }

    /// Pushes until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let buffer = tokio::select! {
            () = shutdown.cancelled() => return,
            buffer = super::wait_for_buffer(&self.buffer) => buffer,
        };
        let consumers = self.consumers.clone();
        if let Err(e) = blocking(&buffer, move |b| b.use_consumers(&consumers)).await {
            tracing::error!("cannot record the MQTT uplink's position in the buffer: {e}");
        }
        loop {
            let wait = tokio::select! {
                () = shutdown.cancelled() => return,
                wait = self.round(&buffer) => wait,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Publishes batches back to back until caught up or a failure; how
    /// long to wait before the next round.
    async fn round(&mut self, buffer: &Buffer) -> Duration {
        let limit = self.config.batch_max.max(1) as usize;
        let topic = self.link.topic("records");
        loop {
            if buffer.salvage_pending() {
                return super::SALVAGE_POLL;
            }
            let next =
                match blocking(buffer, move |b| b.next_batch(Consumer::FleetMqtt, limit)).await {
                    Ok(next) => next,
                    Err(e) => return self.failed(0, format!("cannot read the buffer: {e}")),
                };
            let (Some(first), Some(last)) = (next.records.first(), next.records.last()) else {
                self.caught_up(buffer);
                return self.config.interval;
            };
            let (first_seq, last_seq, count) = (first.seq, last.seq, next.records.len());
            let body = match wire::encode(
                &self.gateway,
                next.epoch,
                &next.records,
                &next.skipped,
                self.config.gzip,
            ) {
                Ok(body) => body,
                Err(e) => return self.failed(first_seq, format!("cannot encode a batch: {e}")),
            };
            let bytes = body.bytes.len();
            // While the link is down the backlog still shows what waits.
            while tokio::time::timeout(BACKLOG_EVERY, self.link.connected())
                .await
                .is_err()
            {
                self.show_backlog(buffer);
            }
            if let Err(e) = self
                .link
                .publish(topic.clone(), body.bytes, false, self.config.timeout)
                .await
            {
                return self.failed(
                    first_seq,
                    format!("batch {first_seq}..{last_seq} not acknowledged: {e}"),
                );
            }
            if let Err(e) = blocking(buffer, move |b| {
                b.mark_pushed_durably(Consumer::FleetMqtt, last_seq)
            })
            .await
            {
                return self.failed(
                    first_seq,
                    format!("cannot record the batch as delivered: {e}"),
                );
            }
            self.delivered(buffer, first_seq, last_seq, count, bytes);
            if count < limit {
                self.caught_up(buffer);
                return self.config.interval;
            }
            super::lock(&self.status).state = FleetState::CatchingUp;
        }
    }

    fn delivered(
        &mut self,
        buffer: &Buffer,
        first_seq: u64,
        last_seq: u64,
        records: usize,
        bytes: usize,
    ) {
        if let Some((since, tries)) = self.failing.take() {
            tracing::info!(
                "fleet MQTT push recovered after {tries} failed {} since {}",
                if tries == 1 { "try" } else { "tries" },
                since.format("%H:%M:%S")
            );
        }
        self.backoff = new_backoff(&self.config);
        let backlog = buffer.backlog(Consumer::FleetMqtt).unwrap_or(0);
        let (token, slot) = {
            let mut status = super::lock(&self.status);
            status.last_push_at = Some(Utc::now());
            status.last_error = None;
            status.accepted += records as u64;
            status.backlog = backlog;
            (
                status.token.clone().unwrap_or_default(),
                status.token_slot.unwrap_or(1),
            )
        };
        tracing::debug!(first_seq, last_seq, bytes, "batch published");
        let _ = self.events.send(UplinkEvent::Push {
            first_seq,
            last_seq,
            records,
            accepted: records as u64,
            duplicates: 0,
            bytes,
            token,
            slot,
            backlog,
        });
    }

    fn show_backlog(&self, buffer: &Buffer) {
        let backlog = buffer.backlog(Consumer::FleetMqtt).unwrap_or(0);
        let quarantined = buffer.counters().quarantined;
        let mut status = super::lock(&self.status);
        status.backlog = backlog;
        status.quarantined = quarantined;
    }

    fn caught_up(&self, buffer: &Buffer) {
        self.show_backlog(buffer);
        let mut status = super::lock(&self.status);
        if matches!(status.state, FleetState::CatchingUp | FleetState::Retrying)
            && status.broker.is_some()
        {
            status.state = FleetState::Ok;
        }
    }

    /// Logs a failure when it starts; the backoff.
    fn failed(&mut self, first_seq: u64, error: String) -> Duration {
        let wait = self.backoff.next().unwrap_or(self.config.retry_max);
        let _ = self.events.send(UplinkEvent::PushFailed {
            first_seq,
            error: error.clone(),
            retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        match &mut self.failing {
            None => {
                tracing::warn!(
                    "fleet MQTT push failed: {error}; retrying in {}, readings keep buffering",
                    human(wait)
                );
                self.failing = Some((Utc::now(), 1));
            }
            Some((_, tries)) => {
                *tries += 1;
                tracing::debug!(tries = *tries, "fleet MQTT push failed again: {error}");
            }
        }
        let mut status = super::lock(&self.status);
        if status.state != FleetState::AuthFailed {
            status.state = FleetState::Retrying;
            status.last_error = Some(error);
        }
        wait
    }
}

/// Alert events to the fleet over MQTT: consumer `fleet-mqtt` of
/// [`crate::limits::deliver`], `{prefix}/{gateway}/events`.
pub struct MqttEvents {
    gateway: String,
    link: LinkHandle,
    gzip: bool,
    timeout: Duration,
}

impl MqttEvents {
    /// For `config` through `link`.
    pub fn new(config: &FleetConfig, gateway: String, link: LinkHandle) -> MqttEvents {
        MqttEvents {
            gateway,
            link,
            gzip: config.gzip,
            timeout: config.timeout,
        }
    }
}

impl EventSink for MqttEvents {
    fn consumer(&self) -> String {
        "fleet-mqtt".to_owned()
    }

    fn wants(&self, _: &StoredEvent) -> bool {
        true
    }

    fn batch_max(&self) -> usize {
        super::events::EVENTS_BATCH
    }

    async fn send(&mut self, events: &[StoredEvent]) -> Result<(), Failure> {
        let body = serde_json::json!({
            "gateway": self.gateway,
            "events": events.iter().map(|e| &e.body).collect::<Vec<_>>(),
        });
        let encoded = serde_json::to_vec(&body)
            .map_err(std::io::Error::other)
            .and_then(|json| wire::compress(json, self.gzip))
            .map_err(|e| Failure::Retry {
                error: format!("cannot encode alert events: {e}"),
                retry_after: None,
            })?;
        self.link.connected().await;
        self.link
            .publish(
                self.link.topic("events"),
                encoded.bytes,
                false,
                self.timeout,
            )
            .await
            .map_err(|error| Failure::Retry {
                error: format!("events: {error}"),
                retry_after: None,
            })
    }
}
