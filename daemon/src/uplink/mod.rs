//! The uplink: pushes the buffer to the fleet (SPEC §7).
//!
//! One task reads unsent records from the buffer in `seq` order — the order
//! they were received, whatever the meter's own clock or the gateway's wall
//! clock says — and posts them in batches to `{url}/api/fleet/ingest`.
//!
//! # Invariants, and where they are kept
//! - **At least once, in order.** The buffer's cursor moves past a batch
//!   only after a `200` that [`wire::classify`] accepts; a crash, a timeout
//!   or a strange answer re-sends from the cursor, and the fleet
//!   de-duplicates by `(gateway, seq)`. Batches are read by `seq`, never by
//!   a timestamp, so a wall-clock step cannot skip a record.
//! - **Pace.** While a backlog exists, batches go back to back; once caught
//!   up, one push per `interval`. Failures (5xx, 429, timeouts, connection
//!   errors, a `200` that is not the contract's) back off exponentially
//!   with jitter from `retry_min` to `retry_max`, at least as long as a
//!   `Retry-After` asks; a success resets the backoff.
//! - **Batch size.** At most `batch_max` records; `413` halves the batch
//!   (and it grows back after [`GROW_AFTER`] successes); a single record
//!   that is still too large is quarantined.
//! - **Poison records.** A `400` splits the batch in halves until the bad
//!   record stands alone; it is then quarantined in the buffer (kept,
//!   flagged, counted, logged once) and the records behind it go on.
//! - **Token failover.** See [`tokens`]: a `401` retries the same batch with
//!   the other token in the same tick; every token rejected →
//!   `auth_failed`: pushing pauses (readings keep buffering) and is retried
//!   every `auth_retry`, or at once when tokens are reloaded (`SIGHUP`, or
//!   an edit of `token_file`, noticed within [`TOKEN_FILE_POLL`]).
//! - **Secrets.** Tokens appear only in the `Authorization` header;
//!   everything else names them by fingerprint.
//! - **Off means off.** With `[fleet].enabled = false` this task is never
//!   started, so nothing connects anywhere; a reload that turns it off
//!   stops the task (see `supervisor`), and the status says `disabled`.
//! - **Reload.** A `[fleet]` table whose only change is its tokens reaches
//!   the running task through [`UplinkHandle::reload`] (failover state
//!   kept); any other change (url, batch, interval, timeouts, enabled)
//!   replaces the task: the old one is stopped and awaited first, so two
//!   uplinks never push at once, and the new one starts from the buffer's
//!   cursor (a batch cut short is sent again, which the fleet de-duplicates).

pub mod events;
pub mod heartbeat;
pub mod mqtt;
pub mod tokens;
pub mod wire;

use crate::buffer::{Buffer, BufferSlot, Consumer};
use crate::config::FleetConfig;
use crate::record::Record;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokens::{Token, TokenSource};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::Answer;

/// How often the token file is checked for edits.
pub const TOKEN_FILE_POLL: Duration = Duration::from_secs(2);

/// Successful pushes at a batch size halved by `413` before it is doubled
/// again (a fleet whose limit was lowered for a while gets full batches
/// back without a restart).
pub const GROW_AFTER: u32 = 50;

/// How often a failure that goes on is summarised in the journal.
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// The path of the ingest route under `[fleet].url`.
pub const INGEST_PATH: &str = "/api/fleet/ingest";

/// How often the uplink looks again while a salvage runs.
pub const SALVAGE_POLL: Duration = Duration::from_millis(500);

/// How long a batch in flight when slmd stops may take to finish (its
/// acknowledgement then moves the cursor); past it the batch is sent again
/// at the next start, which the fleet de-duplicates.
pub const FINISH_ON_STOP: Duration = Duration::from_secs(2);

/// Uplink announcements a slow listener (the printer) may fall behind by.
pub const UPLINK_EVENTS: usize = 256;

/// What the uplink is doing, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetState {
    /// `[fleet].enabled = false`: nothing leaves the gateway.
    Disabled,
    /// Waiting for the buffer to open.
    Starting,
    /// Every record is pushed; one push per `interval`.
    Ok,
    /// A backlog is being pushed, batch after batch.
    CatchingUp,
    /// The last push failed; retrying with backoff.
    Retrying,
    /// Every token was rejected; retrying slowly until a reload.
    AuthFailed,
    /// A damaged buffer's rows are being salvaged; pushing waits for them.
    WaitingForSalvage,
    /// The uplink task's loop died (a bug): nothing is pushed until slmd
    /// restarts; the watchdog ping is withheld so systemd restarts it.
    Failed,
}

impl FleetState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetState::Disabled => "disabled",
            FleetState::Starting => "starting",
            FleetState::Ok => "ok",
            FleetState::CatchingUp => "catching_up",
            FleetState::Retrying => "retrying",
            FleetState::AuthFailed => "auth_failed",
            FleetState::WaitingForSalvage => "waiting_for_salvage",
            FleetState::Failed => "failed",
        }
    }
}

/// The fleet part of `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// Whether pushing is configured at all.
    pub enabled: bool,
    /// `http` or `mqtt`.
    pub transport: &'static str,
    /// The MQTT broker connected to (or last connected to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// What the uplink is doing.
    pub state: FleetState,
    /// Records not yet accepted by the fleet.
    pub backlog: u64,
    /// When the fleet last accepted a batch.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    pub last_push_at: Option<DateTime<Utc>>,
    /// Which token slot is in use (1 = preferred, 2 = the other).
    pub token_slot: Option<usize>,
    /// Fingerprint of the token in use.
    pub token: Option<String>,
    /// Fingerprints of the tokens held, preferred first.
    pub tokens: Vec<String>,
    /// The last failure, until a push succeeds.
    pub last_error: Option<String>,
    /// Records the fleet accepted as new since start.
    pub accepted: u64,
    /// Records the fleet already had (re-sends) since start.
    pub duplicates: u64,
    /// Records quarantined since the buffer was created.
    pub quarantined: u64,
    /// Records per request now (below `batch_max` after a `413`).
    pub batch_size: usize,
    /// The heartbeat.
    pub heartbeat: HeartbeatStatus,
    /// The MQTT uplink's own status, when both transports run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<FleetStatusCell>,
}

/// The heartbeat part of the fleet status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeartbeatStatus {
    /// Heartbeats the fleet accepted since start.
    pub sent: u64,
    /// Heartbeats that failed (each try counts).
    pub failures: u64,
    /// When the fleet last accepted one.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    pub last_at: Option<DateTime<Utc>>,
    /// Bytes of the last one on the wire.
    pub last_bytes: usize,
    /// The last failure, until one is accepted.
    pub last_error: Option<String>,
}

impl FleetStatus {
    /// The status of an uplink that is not configured.
    pub fn disabled() -> FleetStatus {
        FleetStatus {
            enabled: false,
            transport: "http",
            broker: None,
            state: FleetState::Disabled,
            backlog: 0,
            last_push_at: None,
            token_slot: None,
            token: None,
            tokens: Vec::new(),
            last_error: None,
            accepted: 0,
            duplicates: 0,
            quarantined: 0,
            batch_size: 0,
            heartbeat: HeartbeatStatus::default(),
            mqtt: None,
        }
    }
}

/// Shared fleet status.
pub type FleetStatusCell = Arc<Mutex<FleetStatus>>;

fn lock(cell: &FleetStatusCell) -> MutexGuard<'_, FleetStatus> {
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the uplink announces, for `--print` and the demo.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UplinkEvent {
    /// The fleet accepted a batch.
    Push {
        /// First `seq` of the batch.
        first_seq: u64,
        /// Last `seq` of the batch.
        last_seq: u64,
        /// Records in the batch.
        records: usize,
        /// New to the fleet.
        accepted: u64,
        /// Re-sends the fleet already had.
        duplicates: u64,
        /// Bytes of the request body on the wire.
        bytes: usize,
        /// Fingerprint of the token that worked.
        token: String,
        /// Its slot (1 = preferred).
        slot: usize,
        /// Records still unsent after this batch.
        backlog: u64,
    },
    /// The fleet rejected a token (another may still work).
    TokenRejected {
        /// Its fingerprint.
        token: String,
        /// Its slot (1 = preferred).
        slot: usize,
    },
    /// A batch could not be delivered; it is retried.
    PushFailed {
        /// First `seq` of the batch.
        first_seq: u64,
        /// What went wrong.
        error: String,
        /// When the next try is.
        retry_in_ms: u64,
    },
    /// Every token was rejected.
    AuthFailed {
        /// Fingerprints of the rejected tokens.
        tokens: Vec<String>,
        /// When the next try is.
        retry_in_ms: u64,
    },
    /// A record the fleet calls malformed was put aside.
    Quarantined {
        /// Its `seq`.
        seq: u64,
        /// The fleet's reason.
        reason: String,
    },
    /// New tokens were loaded.
    TokensReloaded {
        /// Fingerprints, preferred first.
        tokens: Vec<String>,
    },
}

/// How the rest of the daemon talks to a running uplink.
#[derive(Debug, Clone)]
pub struct UplinkHandle {
    /// Status for the API and `STATUS=`.
    pub status: FleetStatusCell,
    /// Announcements (pushes, failures, token changes).
    pub events: broadcast::Sender<UplinkEvent>,
    /// A reloaded `[fleet]` table whose only change is its tokens (any other
    /// change replaces the uplink).
    pub reload: watch::Sender<FleetConfig>,
}

/// Why the uplink could not start.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The HTTP client could not be built.
    #[error("cannot build the fleet HTTP client: {0}")]
    Client(String),
    /// `[fleet].url` is missing (validation prevents this).
    #[error("[fleet].url is not set")]
    NoUrl,
    /// The MQTT uplink could not be set up (a broker URL, a TLS file).
    #[error("fleet MQTT uplink: {0}")]
    Mqtt(String),
}

/// The durable consumers of records `config` runs.
pub fn consumers(config: &FleetConfig) -> Vec<Consumer> {
    let mut consumers = Vec::new();
    if config.transport.http() {
        consumers.push(Consumer::FleetHttp);
    }
    if config.transport.mqtt() {
        consumers.push(Consumer::FleetMqtt);
    }
    consumers
}

/// The HTTP client: rustls with the system's CA store (certificate
/// verification always on), one connection kept alive between pushes.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, UplinkError> {
    // reqwest is built without a bundled crypto provider; ring is the one
    // this build links. Installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("slmd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| UplinkError::Client(e.to_string()))
}

/// The uplink task's state.
pub struct Uplink {
    /// `[fleet]` as loaded (tokens may since have been reloaded).
    config: FleetConfig,
    /// Gateway id sent with every batch.
    gateway: String,
    /// `{url}/api/fleet/ingest`.
    endpoint: String,
    /// The HTTP client.
    client: reqwest::Client,
    /// Tokens, which one works, and where they come from.
    tokens: TokenSource,
    /// Where the buffer appears once open.
    buffer: BufferSlot,
    /// Shared status.
    status: FleetStatusCell,
    /// Announcements.
    events: broadcast::Sender<UplinkEvent>,
    /// Reloaded config.
    reload: watch::Receiver<FleetConfig>,
    /// Records per request now.
    batch_size: usize,
    /// Successes since the batch was halved by a `413`.
    grown_successes: u32,
    /// While isolating a poison record: the last `seq` of the batch the
    /// fleet rejected, and the batch size to go back to past it.
    isolating: Option<(u64, usize)>,
    /// Backoff between failed pushes.
    backoff: ExponentialBackoff,
    /// The failure going on: since when, how many tries, and when it was
    /// last summarised.
    failing: Option<Failing>,
}

/// A run of failed pushes, for logging on change rather than per try.
#[derive(Debug, Clone)]
struct Failing {
    since: DateTime<Utc>,
    tries: u64,
    summarised_at: Instant,
    error: String,
}

/// How one push round ended.
enum Round {
    /// Nothing left to push.
    CaughtUp,
    /// A failure: wait this long.
    Failed(Duration),
    /// Every token rejected.
    AuthFailed,
    /// The buffer could not be read or updated.
    BufferError(Duration),
}

impl Uplink {
    /// An uplink for `config` pushing from `buffer`, and its handle.
    pub fn new(
        config: FleetConfig,
        gateway: String,
        buffer: BufferSlot,
    ) -> Result<(Uplink, UplinkHandle), UplinkError> {
        let status = Arc::new(Mutex::new(FleetStatus::disabled()));
        let (events, _) = broadcast::channel(UPLINK_EVENTS);
        Uplink::with_shared(config, gateway, buffer, status, events)
    }

    /// Like [`Uplink::new`], reporting into `status` and `events`, which
    /// outlive it: a reload that replaces the uplink keeps the API's status
    /// cell and the printer's subscription.
    pub fn with_shared(
        config: FleetConfig,
        gateway: String,
        buffer: BufferSlot,
        status: FleetStatusCell,
        events: broadcast::Sender<UplinkEvent>,
    ) -> Result<(Uplink, UplinkHandle), UplinkError> {
        let url = config.url.clone().ok_or(UplinkError::NoUrl)?;
        let endpoint = format!("{}{INGEST_PATH}", url.trim_end_matches('/'));
        let client = http_client(config.timeout)?;
        // A token file that is missing or broken at start does not stop the
        // daemon: readings buffer, and the file is read again when it changes.
        let (tokens, error) = TokenSource::new(&config);
        if let Some(e) = error {
            tracing::error!(
                "no fleet token: {e}; pushing waits for a token, readings keep buffering"
            );
        }
        let batch_size = config.batch_max.max(1) as usize;
        *status.lock().unwrap_or_else(PoisonError::into_inner) = FleetStatus {
            enabled: true,
            state: FleetState::Starting,
            tokens: tokens.ring.fingerprints(),
            batch_size,
            ..FleetStatus::disabled()
        };
        let (reload_tx, reload) = watch::channel(config.clone());
        let backoff = new_backoff(&config);
        let uplink = Uplink {
            config,
            gateway,
            endpoint,
            client,
            tokens,
            buffer,
            status: status.clone(),
            events: events.clone(),
            reload,
            batch_size,
            grown_successes: 0,
            isolating: None,
            backoff,
            failing: None,
        };
        let handle = UplinkHandle {
            status,
            events,
            reload: reload_tx,
        };
        Ok((uplink, handle))
    }

    /// Pushes until `shutdown`.
    ///
    /// The push loop runs as a task of its own, so a bug that panics it
    /// cannot leave the fleet looking healthy: status then says `failed`
    /// with the panic as its last error, one error line is logged, and
    /// [`crate::notify::Liveness`] withholds the watchdog ping.
    pub async fn run(self, shutdown: CancellationToken) {
        let status = self.status.clone();
        if let Err(panic) = crate::notify::catch_panic(self.push_forever(shutdown)).await {
            let error = format!(
                "the uplink task stopped on an internal error ({}); nothing is pushed until slmd restarts, readings keep buffering",
                panic.0
            );
            tracing::error!(
                event = "uplink_task_failed",
                "{error}; the watchdog ping is withheld so systemd restarts slmd"
            );
            let mut status = lock(&status);
            status.state = FleetState::Failed;
            status.last_error = Some(error);
        }
    }

    /// The push loop of [`Uplink::run`].
    async fn push_forever(mut self, shutdown: CancellationToken) {
        let buffer = tokio::select! {
            () = shutdown.cancelled() => return,
            buffer = wait_for_buffer(&self.buffer) => buffer,
        };
        let consumers = consumers(&self.config);
        if let Err(e) = blocking(&buffer, move |b| b.use_consumers(&consumers)).await {
            tracing::error!("cannot record the fleet push's position in the buffer: {e}");
        }
        let mut next_round = Instant::now();
        let mut token_file_poll = tokio::time::interval(TOKEN_FILE_POLL);
        token_file_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Stop.
                () = shutdown.cancelled() => return,
                // SIGHUP brought a new [fleet] table.
                Ok(()) = self.reload.changed() => {
                    let config = self.reload.borrow_and_update().clone();
                    if self.reload_tokens(&config) && self.state() == FleetState::AuthFailed {
                        next_round = Instant::now();
                    }
                    continue;
                }
                // Someone may have edited the token file.
                _ = token_file_poll.tick() => {
                    if self.token_file_changed() && self.state() == FleetState::AuthFailed {
                        next_round = Instant::now();
                    }
                    continue;
                }
                // Time for the next push round.
                () = tokio::time::sleep_until(next_round) => {}
            }
            let round = {
                let round = self.push_round(&buffer, &shutdown);
                tokio::pin!(round);
                tokio::select! {
                    round = &mut round => round,
                    // The fleet may already have taken the batch in flight:
                    // let it finish (bounded) so the cursor says so, rather
                    // than send it again at the next start.
                    () = shutdown.cancelled() => {
                        match tokio::time::timeout(FINISH_ON_STOP, round).await {
                            Ok(round) => round,
                            Err(_) => return,
                        }
                    }
                }
            };
            if shutdown.is_cancelled() {
                return;
            }
            let wait = match round {
                Round::CaughtUp => {
                    self.set_state(FleetState::Ok);
                    self.config.interval
                }
                Round::Failed(wait) | Round::BufferError(wait) => wait,
                Round::AuthFailed => self.config.auth_retry,
            };
            next_round = Instant::now() + wait;
        }
    }

    /// Pushes batches back to back until caught up or something fails.
    async fn push_round(&mut self, buffer: &Buffer, shutdown: &CancellationToken) -> Round {
        loop {
            // Stopping: no new batch (the one in flight has finished).
            if shutdown.is_cancelled() {
                return Round::CaughtUp;
            }
            if buffer.salvage_pending() {
                // Salvaged rows have lower seqs than new ones: the cursor
                // must not pass them before they are in.
                self.set_state(FleetState::WaitingForSalvage);
                return Round::Failed(SALVAGE_POLL);
            }
            let limit = self.batch_size;
            let next =
                match blocking(buffer, move |b| b.next_batch(Consumer::FleetHttp, limit)).await {
                    Ok(next) => next,
                    Err(error) => return self.buffer_failed(&error),
                };
            self.update_backlog(buffer);
            let batch = next.records;
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
                return Round::CaughtUp;
            };
            let (first_seq, last_seq) = (first.seq, last.seq);
            let body = match wire::encode(
                &self.gateway,
                next.epoch,
                &batch,
                &next.skipped,
                self.config.gzip,
            ) {
                Ok(body) => body,
                Err(e) => {
                    return self.failed(first_seq, format!("cannot encode a batch: {e}"), None);
                }
            };
            match self.send_with_failover(&body, batch.len()).await {
                Sent::Accepted {
                    accepted,
                    duplicates,
                    slot,
                } => {
                    if let Err(error) = blocking(buffer, move |b| {
                        b.mark_pushed(Consumer::FleetHttp, last_seq)
                    })
                    .await
                    {
                        return self.buffer_failed(&error);
                    }
                    self.delivered(buffer, &batch, &body, accepted, duplicates, slot);
                    if batch.len() < limit {
                        return Round::CaughtUp;
                    }
                    self.set_state(FleetState::CatchingUp);
                }
                Sent::TooLarge => {
                    if batch.len() == 1 {
                        let reason = "the fleet answered 413 (too large) to this record alone";
                        if let Err(error) = self.quarantine(buffer, first_seq, reason).await {
                            return self.buffer_failed(&error);
                        }
                    } else {
                        self.batch_size = (batch.len() / 2).max(1);
                        self.grown_successes = 0;
                        tracing::warn!(
                            batch_size = self.batch_size,
                            "the fleet answered 413 (too large) to {} records; sending {} per request",
                            batch.len(),
                            self.batch_size
                        );
                        self.lock_status().batch_size = self.batch_size;
                    }
                }
                Sent::Malformed { detail } => {
                    if batch.len() == 1 {
                        let reason = format!("the fleet answered 400: {detail}");
                        if let Err(error) = self.quarantine(buffer, first_seq, &reason).await {
                            return self.buffer_failed(&error);
                        }
                    } else {
                        // Halve until the bad record stands alone; the
                        // good halves are delivered on the way.
                        let restore = self.isolating.map_or(self.batch_size, |(_, size)| size);
                        let until = self.isolating.map_or(last_seq, |(u, _)| u.max(last_seq));
                        self.isolating = Some((until, restore));
                        self.batch_size = (batch.len() / 2).max(1);
                        tracing::debug!(
                            first_seq,
                            last_seq,
                            batch_size = self.batch_size,
                            "the fleet answered 400 to a batch; splitting it to find the bad record"
                        );
                    }
                }
                Sent::AuthFailed => return self.auth_failed(),
                Sent::Retry { error, retry_after } => {
                    return self.failed(first_seq, error, retry_after);
                }
            }
        }
    }

    /// Posts one body, failing over between tokens on `401`.
    async fn send_with_failover(&mut self, body: &wire::Body, records: usize) -> Sent {
        let order = self.tokens.ring.order(Instant::now());
        for slot in order {
            let Some(token) = self.tokens.ring.get(slot).cloned() else {
                continue;
            };
            match self.post(body, &token, records).await {
                Answer::Unauthorized => {
                    token_rejected(
                        &self.events,
                        "the fleet",
                        &token,
                        slot,
                        self.tokens.ring.tokens().len() > 1,
                    );
                }
                Answer::Accepted {
                    accepted,
                    duplicates,
                } => {
                    if self.tokens.ring.accepted(slot, Instant::now()) {
                        tracing::info!(
                            token = token.fingerprint(),
                            slot = slot + 1,
                            "pushing with token {} (slot {}){}",
                            token.fingerprint(),
                            slot + 1,
                            if slot == 0 {
                                String::new()
                            } else {
                                format!(
                                    "; the preferred token is tried again every {}s",
                                    self.config.token_retry.as_secs()
                                )
                            }
                        );
                    }
                    return Sent::Accepted {
                        accepted,
                        duplicates,
                        slot,
                    };
                }
                Answer::TooLarge => return Sent::TooLarge,
                Answer::Malformed { detail } => return Sent::Malformed { detail },
                Answer::Retry { error, retry_after } => return Sent::Retry { error, retry_after },
            }
        }
        Sent::AuthFailed
    }

    /// One request.
    async fn post(&self, body: &wire::Body, token: &Token, records: usize) -> Answer {
        let response = match post_json(&self.client, &self.endpoint, body, token).await {
            Ok(r) => r,
            Err(e) => {
                return Answer::Retry {
                    error: describe(&e),
                    retry_after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after(&response);
        match response.bytes().await {
            Ok(bytes) => wire::classify(status, retry_after.as_deref(), &bytes, records),
            Err(e) => Answer::Retry {
                error: format!(
                    "fleet answered {status} but the body broke off: {}",
                    describe(&e)
                ),
                retry_after: None,
            },
        }
    }

    fn delivered(
        &mut self,
        buffer: &Buffer,
        batch: &[Record],
        body: &wire::Body,
        accepted: u64,
        duplicates: u64,
        slot: usize,
    ) {
        let (first_seq, last_seq) = (
            batch.first().map_or(0, |r| r.seq),
            batch.last().map_or(0, |r| r.seq),
        );
        if let Some(failing) = self.failing.take() {
            tracing::info!(
                tries = failing.tries,
                "fleet push recovered after {} failed {} since {}",
                failing.tries,
                if failing.tries == 1 { "try" } else { "tries" },
                failing.since.format("%H:%M:%S")
            );
        }
        self.backoff = new_backoff(&self.config);
        if let Some((until, restore)) = self.isolating
            && last_seq >= until
        {
            self.isolating = None;
            self.batch_size = restore;
        }
        if self.isolating.is_none() && self.batch_size < self.config.batch_max as usize {
            self.grown_successes += 1;
            if self.grown_successes >= GROW_AFTER {
                self.grown_successes = 0;
                self.batch_size = (self.batch_size * 2).min(self.config.batch_max as usize);
            }
        }
        let backlog = buffer
            .backlog(Consumer::FleetHttp)
            .unwrap_or_else(|_| buffer.counters().unsent);
        let token = self
            .tokens
            .ring
            .get(slot)
            .map(|t| t.fingerprint().to_owned())
            .unwrap_or_default();
        {
            let mut status = self.lock_status();
            status.last_push_at = Some(Utc::now());
            status.last_error = None;
            status.accepted += accepted;
            status.duplicates += duplicates;
            status.backlog = backlog;
            status.token_slot = Some(slot + 1);
            status.token = Some(token.clone());
            status.batch_size = self.batch_size;
        }
        tracing::debug!(
            first_seq,
            last_seq,
            accepted,
            duplicates,
            bytes = body.bytes.len(),
            "batch pushed"
        );
        let _ = self.events.send(UplinkEvent::Push {
            first_seq,
            last_seq,
            records: batch.len(),
            accepted,
            duplicates,
            bytes: body.bytes.len(),
            token,
            slot: slot + 1,
            backlog,
        });
    }

    async fn quarantine(
        &mut self,
        buffer: &Buffer,
        seq: u64,
        reason: &str,
    ) -> Result<(), crate::buffer::BufferError> {
        let why = reason.to_owned();
        blocking(buffer, move |b| {
            b.quarantine(Consumer::FleetHttp, seq, &why)
        })
        .await?;
        tracing::warn!(
            seq,
            "record {seq} quarantined: {reason}; it stays in the buffer's quarantine and the records behind it are pushed"
        );
        self.lock_status().quarantined = buffer.counters().quarantined;
        let _ = self.events.send(UplinkEvent::Quarantined {
            seq,
            reason: reason.to_owned(),
        });
        if let Some((until, restore)) = self.isolating
            && seq >= until
        {
            self.isolating = None;
            self.batch_size = restore;
        }
        Ok(())
    }

    /// A failed push: back off, log on change.
    fn failed(&mut self, first_seq: u64, error: String, retry_after: Option<Duration>) -> Round {
        let backoff = self.backoff.next().unwrap_or(self.config.retry_max);
        let wait = retry_after.map_or(backoff, |r| r.max(backoff));
        self.note_failure(&error, wait);
        self.set_state(FleetState::Retrying);
        self.lock_status().last_error = Some(error.clone());
        let _ = self.events.send(UplinkEvent::PushFailed {
            first_seq,
            error,
            retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        Round::Failed(wait)
    }

    fn buffer_failed(&mut self, error: &crate::buffer::BufferError) -> Round {
        let wait = self.backoff.next().unwrap_or(self.config.retry_max);
        let error = format!("cannot read the buffer: {error}");
        self.note_failure(&error, wait);
        self.lock_status().last_error = Some(error);
        Round::BufferError(wait)
    }

    fn auth_failed(&mut self) -> Round {
        let fingerprints = self.tokens.ring.fingerprints();
        let wait = self.config.auth_retry;
        if fingerprints.is_empty() {
            self.set_state(FleetState::AuthFailed);
            self.lock_status().last_error = Some("no fleet token loaded".to_owned());
            return Round::AuthFailed;
        }
        if self.state() != FleetState::AuthFailed {
            tracing::error!(
                tokens = fingerprints.join(","),
                "the fleet rejected every token ({}); pushing is paused and readings keep buffering. \
                 Install a valid token in the config or token file and reload (systemctl reload slmd); \
                 retrying every {}",
                fingerprints.join(", "),
                human(wait)
            );
        }
        self.set_state(FleetState::AuthFailed);
        self.lock_status().last_error = Some(format!(
            "every token rejected ({})",
            fingerprints.join(", ")
        ));
        let _ = self.events.send(UplinkEvent::AuthFailed {
            tokens: fingerprints,
            retry_in_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        });
        Round::AuthFailed
    }

    /// Logs a failure when it starts, a summary now and then, never per try.
    fn note_failure(&mut self, error: &str, wait: Duration) {
        let now = Instant::now();
        match &mut self.failing {
            None => {
                tracing::warn!(
                    "fleet push failed: {error}; retrying in {}, readings keep buffering",
                    human(wait)
                );
                self.failing = Some(Failing {
                    since: Utc::now(),
                    tries: 1,
                    summarised_at: now,
                    error: error.to_owned(),
                });
            }
            Some(failing) => {
                failing.tries += 1;
                if now.saturating_duration_since(failing.summarised_at) >= FAILURE_SUMMARY_EVERY
                    || failing.error != error
                {
                    tracing::warn!(
                        tries = failing.tries,
                        "fleet push still failing: {error} ({} tries since {}); next try in {}",
                        failing.tries,
                        failing.since.format("%H:%M:%S"),
                        human(wait)
                    );
                    failing.summarised_at = now;
                    error.clone_into(&mut failing.error);
                } else {
                    tracing::debug!(tries = failing.tries, "fleet push failed again: {error}");
                }
            }
        }
    }

    /// Applies reloaded tokens; true when they changed.
    fn reload_tokens(&mut self, config: &FleetConfig) -> bool {
        let changed = self.tokens.reload(config);
        self.tokens_changed(changed, "reload")
    }

    /// Re-reads the token file if it changed; true when the tokens changed.
    fn token_file_changed(&mut self) -> bool {
        let changed = self.tokens.reread_file();
        self.tokens_changed(changed, "token file changed")
    }

    /// Says so when new tokens are in use; true then.
    fn tokens_changed(&mut self, changed: Result<bool, tokens::TokenError>, why: &str) -> bool {
        match changed {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::error!("fleet tokens not reloaded: {e}; keeping the ones in use");
                return false;
            }
        }
        let fingerprints = self.tokens.ring.fingerprints();
        tracing::info!(
            tokens = fingerprints.join(","),
            "fleet tokens reloaded ({why}): {}",
            fingerprints.join(", ")
        );
        self.lock_status().tokens.clone_from(&fingerprints);
        let _ = self.events.send(UplinkEvent::TokensReloaded {
            tokens: fingerprints,
        });
        true
    }

    fn update_backlog(&self, buffer: &Buffer) {
        let counters = buffer.counters();
        let backlog = buffer
            .backlog(Consumer::FleetHttp)
            .unwrap_or(counters.unsent);
        let mut status = self.lock_status();
        status.backlog = backlog;
        status.quarantined = counters.quarantined;
    }

    fn state(&self) -> FleetState {
        self.lock_status().state
    }

    fn set_state(&self, state: FleetState) {
        self.lock_status().state = state;
    }

    fn lock_status(&self) -> MutexGuard<'_, FleetStatus> {
        lock(&self.status)
    }
}

/// How one batch fared across the tokens.
enum Sent {
    Accepted {
        accepted: u64,
        duplicates: u64,
        slot: usize,
    },
    TooLarge,
    Malformed {
        detail: String,
    },
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
    AuthFailed,
}

/// The push's retry delays (HTTP and MQTT alike): `retry_min` doubling
/// to `retry_max`, with jitter, never giving up.
pub(super) fn new_backoff(config: &FleetConfig) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(config.retry_min)
        .with_max_delay(config.retry_max.max(config.retry_min))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Waits until the buffer is open (at once, unless the disk refused it at
/// start).
async fn wait_for_buffer(slot: &BufferSlot) -> Buffer {
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        if let Some(buffer) = slot.get() {
            return buffer.clone();
        }
        poll.tick().await;
    }
}

/// Runs a buffer call off the async threads (SQLite blocks).
async fn blocking<T: Send + 'static>(
    buffer: &Buffer,
    f: impl FnOnce(&Buffer) -> Result<T, crate::buffer::BufferError> + Send + 'static,
) -> Result<T, crate::buffer::BufferError> {
    let buffer = buffer.clone();
    match tokio::task::spawn_blocking(move || f(&buffer)).await {
        Ok(result) => result,
        Err(join) => Err(crate::buffer::BufferError::Io {
            path: std::path::PathBuf::from("(buffer task)"),
            source: std::io::Error::other(join.to_string()),
        }),
    }
}

/// POSTs a JSON body (gzipped or not) to the fleet with `token`: the push
/// and the heartbeat send the same way.
async fn post_json(
    client: &reqwest::Client,
    endpoint: &str,
    body: &wire::Body,
    token: &Token,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = client
        .post(endpoint)
        .bearer_auth(token.secret())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.bytes.clone());
    if body.gzip {
        request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
    }
    request.send().await
}

/// The answer's `Retry-After` header, as text.
fn retry_after(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A reqwest error in words a field tech can act on (its `Display` alone
/// is often just "error sending request").
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "fleet did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the fleet"
    } else {
        "fleet request failed"
    };
    let mut causes = Vec::new();
    let mut source = e.source();
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    causes.dedup();
    match causes.last() {
        Some(root) => format!("{what}: {root}"),
        None => format!("{what}: {e}"),
    }
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m", d.as_secs() / 60)
    }
}

/// Logs and announces that `by` (the fleet, or one of its brokers)
/// refused the token in `slot`; with `other` the next token is tried at
/// once for the same batch.
pub(crate) fn token_rejected(
    events: &broadcast::Sender<UplinkEvent>,
    by: &str,
    token: &Token,
    slot: usize,
    other: bool,
) {
    tracing::info!(
        token = token.fingerprint(),
        slot = slot + 1,
        "{by} rejected token {} (slot {}){}",
        token.fingerprint(),
        slot + 1,
        if other {
            "; trying the other one for the same batch"
        } else {
            ""
        }
    );
    let _ = events.send(UplinkEvent::TokenRejected {
        token: token.fingerprint().to_owned(),
        slot: slot + 1,
    });
}
