//! The local HTTP API (SPEC §6): status, a device's newest record, history
//! from the buffer, the live stream as Server-Sent Events, and Prometheus
//! metrics.
//!
//! # Routes
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/status` | gateway, version, uptime; each device's state, counters and health; the buffer ([`crate::buffer::BufferStatus`], or `open: false`); the fleet ([`crate::uplink::FleetStatus`]); open streams |
//! | `GET /v1/devices/{id}/live` | the device's newest record; `404 unknown device` / `404 no reading yet` |
//! | `GET /v1/devices/{id}/history?since=RFC3339&after=SEQ&limit=N` | `{"device", "since", "after", "limit", "records": [...], "truncated", "next_after"}`: records received at or after `since`, above `after`, oldest first; `limit` 1..=10000, default 1000; the next page is the same query with `after` = `next_after`; cost bounded per request (see [`crate::buffer::Buffer::history_page`]); `503` while the buffer is not open |
//! | `GET /v1/stream?device=a,b` | Server-Sent Events, below |
//! | `GET /metrics` | Prometheus text format; names in [`metrics`] |
//!
//! Every answer is JSON except the stream and the metrics. Errors are
//! `{"error": "<fixed phrase>", "detail": "<for people>"}` with the status
//! that fits (see [`ApiError`]); a bad query parameter adds
//! `"parameter": "<name>"`. Unknown routes answer `404`, other methods
//! than `GET`/`HEAD` `405`, both in the same JSON form.
//!
//! # Projection
//!
//! Records on `live`, `history` and the stream are the record of SPEC §3
//! and nothing else: `seq`, `device`, `received_at`, `device_time`,
//! `metrics`, `state`, `flags` ([`Record`](crate::record::Record) has no
//! other field). Device health (battery, SD card, clock offset, error
//! counters) is in `/v1/status` and `/metrics` (and the fleet heartbeat),
//! never in a record.
//!
//! # The stream
//!
//! `device=a,b` picks devices (comma-separated; an unknown id is a `400`);
//! without it the stream carries every configured device. Wire format:
//!
//! ```text
//! id: 1041                                     ← a record: no event line (type "message"),
//! data: {"seq":1041,"device":"nl43-north",...}    id = seq, data = the record JSON
//!
//! event: state                                 ← a device's link state
//! data: {"device":"nl43-north","state":"down","error":"no answer within 2s"}
//!
//! event: lagged                                ← the client fell behind
//! data: {"missed":1234}
//!
//! event: end                                   ← the server ends the stream; reconnect
//! data: {"reason":"stream_max"}                   ("stream_max" or "shutdown")
//!
//! :                                            ← keep-alive comment, every 15 s of silence
//! ```
//!
//! On connect the client first gets the newest record of each watched
//! device (in `seq` order), then one `state` event per watched device (its
//! state now; `error` is null while connected), then the live flow, in
//! `seq` order, with nothing missed or repeated between snapshot and flow.
//! When the client falls behind by more than
//! [`LIVE_CAPACITY`](crate::fanout::LIVE_CAPACITY) events it gets
//! `lagged` with the number of events skipped, then the newest record of
//! each watched device, and the flow from there. (`missed` counts every
//! hub event dropped while it was behind; on a stream filtered to some
//! devices the broadcast's part of that count may include other devices'
//! events, since they are gone before anyone can tell whose they were.)
//! `Last-Event-ID` is not used to replay: a reconnecting client gets the
//! snapshot again; `history` fills a gap.
//!
//! A stream ends after `[api].stream_max` with `event: end` so clients
//! reconnect, and while it is open it counts as a watcher of its devices
//! ([`Hub::watch_devices`](crate::fanout::Hub::watch_devices)), which makes
//! their tasks poll at the live rate.
//!
//! # Slow and stuck clients
//!
//! A client that reads slowly costs the device loops, the buffer writer
//! and the other clients nothing: the hub's broadcast never waits, it
//! drops events for that client, and the stream says how many (`lagged`,
//! counted in `slmd_stream_lagged_records_total`) and resumes from the
//! newest.
//! A client that stops reading altogether is disconnected: each stream is a
//! task feeding the response body through a small queue
//! ([`STREAM_QUEUE`] events); when one event cannot enter that queue for
//! [`STUCK_AFTER`] (30 s; [`ApiState::with_stuck_after`] for tests), the
//! connection is cut (see `conn` for why hyper needs help with that) and
//! counted in `slmd_stream_stuck_disconnects_total`. The queue fills once
//! the client's receive buffer, the connection's kernel send buffer (kept
//! at [`STREAM_SEND_BUFFER`] on stream connections) and hyper's few queued
//! frames are full, so a stuck client is cut after a few hundred events
//! plus `STUCK_AFTER`.
//!
//! # Security
//!
//! When `[api].tokens` is set, every route (metrics and the 404/405
//! answers included) but the field page's three files (`/`, `/page.js`,
//! `/page.css`: no data in them, see [`page`]) requires
//! `Authorization: Bearer <token>`; otherwise
//! `401` with `WWW-Authenticate: Bearer`. Only SHA-256 digests of the
//! tokens are kept, compared in constant time; tokens are never logged.
//! A non-loopback `listen` address without tokens is refused by config
//! validation (`config::validate`), before the API starts.
//!
//! # Stopping
//!
//! [`serve`] stops accepting when `shutdown` is cancelled, ends every
//! stream with `event: end` (`reason: "shutdown"`), lets answers in flight
//! finish, and after [`SHUTDOWN_GRACE`] cuts the connections still open.

pub mod alerts;
mod auth;
mod conn;
mod error;
pub mod metrics;
pub mod page;
mod routes;
mod stream;

pub use conn::{
    ConnectionStats, FD_RESERVE, HEADER_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_HEAD,
    STREAM_SEND_BUFFER, connection_cap, open_files_limit,
};
pub use error::ApiError;
#[doc(hidden)]
pub use routes::fuzz_parse_history_query;
pub use routes::{HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT};
pub use stream::{KEEP_ALIVE, STREAM_QUEUE, STUCK_AFTER};

use crate::buffer::BufferSlot;
use crate::config::ApiConfig;
use crate::device::{StatusCell, lock_status};
use crate::fanout::Hub;
use crate::uplink::{FleetStatus, FleetStatusCell};
use axum::Router;
use axum::routing::get;
use chrono::{DateTime, Utc};
use std::future::IntoFuture;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long [`serve`] lets answers in flight finish after shutdown before
/// it cuts their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Everything the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The shared part.
    inner: Arc<Inner>,
    /// How long one stream event may wait for a client that does not read.
    stuck_after: Duration,
    /// Keep-alive comment interval on idle streams.
    keep_alive: Duration,
}

/// `config` in status: which file the running config was loaded from.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ConfigSource {
    /// The file as the daemon was given it.
    file: String,
    /// SHA-256 of the bytes loaded, lowercase hex.
    sha256: String,
    /// When it was loaded (start, or the last reload that applied it).
    #[serde(serialize_with = "crate::record::rfc3339_millis")]
    loaded_at: DateTime<Utc>,
}

#[derive(Debug)]
struct Inner {
    /// `[gateway].id`, shown in status.
    gateway_id: String,
    /// For `uptime_seconds` (monotonic: a clock step does not change it).
    started: Instant,
    /// For `started_at` in status.
    started_at: DateTime<Utc>,
    /// Newest records, the live flow and watcher counts.
    hub: Arc<Hub>,
    /// The buffer, once open (history, status, metrics).
    buffer: BufferSlot,
    /// Configured devices in config order: id and status. The ids are the
    /// only ones the device routes and the stream filter accept; replaced
    /// when a reload changes the device list.
    devices: std::sync::RwLock<Vec<(Arc<str>, StatusCell)>>,
    /// The uplink's status.
    fleet: FleetStatusCell,
    /// Digests of `[api].tokens` (a reload replaces them).
    tokens: std::sync::RwLock<Arc<auth::TokenDigests>>,
    /// `[api].stream_max` (a reload changes it for streams opened after).
    stream_max: std::sync::RwLock<Duration>,
    /// Changed config keys that wait for a restart, as `section.key`.
    needs_restart: std::sync::RwLock<Vec<String>>,
    /// The file the running config was loaded from, and when.
    config_source: std::sync::RwLock<Option<ConfigSource>>,
    /// Stream counters.
    stats: stream::StreamStats,
    /// Recent records' JSON, made once and shared by every stream.
    json: stream::RecordJson,
    /// Cancelled by [`serve`] at shutdown: every stream sends `end` and ends.
    streams_end: CancellationToken,
    /// Open connections (the cap and the timeouts; see `conn`).
    connections: Arc<conn::Registry>,
    /// The limits part, when configured.
    limits: std::sync::OnceLock<alerts::LimitsApi>,
}

impl ApiState {
    /// The API's state: `devices` are the configured devices' status cells
    /// (in config order). Keeps only SHA-256 digests of `config.tokens`.
    /// Uptime counts from here.
    pub fn new(
        config: &ApiConfig,
        gateway_id: String,
        hub: Arc<Hub>,
        buffer: BufferSlot,
        devices: Vec<StatusCell>,
        fleet: FleetStatusCell,
    ) -> ApiState {
        let devices = std::sync::RwLock::new(with_ids(devices));
        ApiState {
            inner: Arc::new(Inner {
                gateway_id,
                started: Instant::now(),
                started_at: Utc::now(),
                hub,
                buffer,
                devices,
                fleet,
                tokens: std::sync::RwLock::new(Arc::new(auth::TokenDigests::new(&config.tokens))),
                stream_max: std::sync::RwLock::new(config.stream_max),
                needs_restart: std::sync::RwLock::new(Vec::new()),
                config_source: std::sync::RwLock::new(None),
                stats: stream::StreamStats::default(),
                json: stream::RecordJson::default(),
                streams_end: CancellationToken::new(),
                connections: Arc::new(conn::Registry::new(connection_cap(open_files_limit()))),
                limits: std::sync::OnceLock::new(),
            }),
            stuck_after: STUCK_AFTER,
            keep_alive: KEEP_ALIVE,
        }
    }

    /// Tells the API about the limits part (interval lengths, counters).
    pub fn set_limits(&self, limits: alerts::LimitsApi) {
        let _ = self.inner.limits.set(limits);
    }

    /// The same state with another stuck-client bound (tests use a short one).
    pub fn with_stuck_after(mut self, bound: Duration) -> Self {
        self.stuck_after = bound;
        self
    }

    /// The same state with another keep-alive interval.
    pub fn with_keep_alive(mut self, interval: Duration) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Replaces the device list (a reload added or removed meters). Open
    /// streams keep the devices they watch.
    pub fn set_devices(&self, devices: Vec<StatusCell>) {
        let devices = with_ids(devices);
        *write(&self.inner.devices) = devices;
    }

    /// Applies a reloaded `[api]` table: its tokens take effect for the next
    /// request, `stream_max` for streams opened after. (`listen` needs a
    /// restart; the caller reports it.)
    pub fn apply(&self, config: &ApiConfig) {
        *write(&self.inner.tokens) = Arc::new(auth::TokenDigests::new(&config.tokens));
        *write(&self.inner.stream_max) = config.stream_max;
    }

    /// Sets the config keys shown as `needs_restart` in status.
    pub fn set_needs_restart(&self, keys: Vec<String>) {
        *write(&self.inner.needs_restart) = keys;
    }

    /// Sets the file the running config came from (at start and after each
    /// reload that loaded it), shown as `config` in status.
    pub fn set_config_source(&self, source: crate::config::Source) {
        *write(&self.inner.config_source) = Some(ConfigSource {
            file: source.file.display().to_string(),
            sha256: source.sha256,
            loaded_at: Utc::now(),
        });
    }

    /// The running config's file, when it came from one.
    fn config_source(&self) -> Option<ConfigSource> {
        read(&self.inner.config_source).clone()
    }

    /// The tokens now (a reference count, not a copy, per request).
    fn tokens(&self) -> Arc<auth::TokenDigests> {
        read(&self.inner.tokens).clone()
    }

    /// `stream_max` now.
    fn stream_max(&self) -> Duration {
        *read(&self.inner.stream_max)
    }

    /// Open connections and what the limits did.
    pub fn connections(&self) -> ConnectionStats {
        self.inner.connections.stats()
    }

    /// Keys waiting for a restart.
    fn needs_restart(&self) -> Vec<String> {
        read(&self.inner.needs_restart).clone()
    }

    /// The configured devices now: id and status cell, in config order.
    fn devices(&self) -> Vec<(Arc<str>, StatusCell)> {
        read(&self.inner.devices).clone()
    }

    /// The configured device `id`.
    fn device(&self, id: &str) -> Option<Arc<str>> {
        self.devices()
            .into_iter()
            .find(|(d, _)| &**d == id)
            .map(|(d, _)| d)
    }

    /// The configured ids, comma-separated.
    fn known_devices(&self) -> String {
        let devices = self.devices();
        let ids: Vec<&str> = devices.iter().map(|(d, _)| &**d).collect();
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    }

    fn unknown_device(&self, id: &str) -> ApiError {
        ApiError::UnknownDevice {
            id: id.to_owned(),
            known: self.known_devices(),
        }
    }
}

// Plain values: valid after a panic elsewhere.
fn read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Each status cell with its device id.
fn with_ids(devices: Vec<StatusCell>) -> Vec<(Arc<str>, StatusCell)> {
    devices
        .into_iter()
        .map(|cell| {
            let id: Arc<str> = Arc::from(lock_status(&cell).id.as_str());
            (id, cell)
        })
        .collect()
}

fn lock_fleet(cell: &FleetStatusCell) -> MutexGuard<'_, FleetStatus> {
    // Plain data, valid after a panic elsewhere.
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The API's routes, with token checking when tokens are configured.
///
/// Served by anything but [`serve`], streams still end on `stream_max` and
/// on a stuck client, but a stuck client's connection is only closed by
/// the OS (there is no kill switch), and streams do not end at shutdown.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/page.js", get(page::script))
        .route("/page.css", get(page::style))
        .route("/v1/status", get(routes::status))
        .route("/v1/devices/{id}/live", get(routes::live))
        .route("/v1/devices/{id}/history", get(routes::history))
        .route("/v1/devices/{id}/levels", get(alerts::levels))
        .route("/v1/alerts", get(alerts::alerts))
        .route("/v1/alerts/{episode}/ack", axum::routing::post(alerts::ack))
        .route("/v1/stream", get(stream::stream))
        .route("/metrics", get(metrics::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::middleware::from_fn(conn::track_requests))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`; logs
/// `API listening addr=…` once it accepts. On shutdown: no new
/// connections, every stream ends with `event: end`, answers in flight
/// finish, and connections still open after [`SHUTDOWN_GRACE`] are cut.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    // Parent of every connection's kill switch.
    let connections = CancellationToken::new();
    let registry = state.inner.connections.clone();
    let listener = conn::Conns::new(listener, registry.clone(), connections.clone());
    // The request-head and idle timeouts.
    let sweeping = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(conn::SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = sweeping.cancelled() => return,
                _ = tick.tick() => registry.sweep(),
            }
        }
    });
    let app = router(state.clone()).into_make_service_with_connect_info::<conn::ConnKill>();
    let streams_end = state.inner.streams_end.clone();
    let stopping = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stopping.cancelled().await;
            streams_end.cancel();
        })
        .into_future();
    tracing::info!(%addr, "API listening on {addr}");
    tokio::pin!(server);
    tokio::select! {
        // Every connection finished after shutdown.
        served = &mut server => served,
        // Shutdown, and some connection still open after the grace period.
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            connections.cancel();
            server.await
        }
    }
}
