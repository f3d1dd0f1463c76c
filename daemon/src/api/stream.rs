//! `GET /v1/stream?device=a,b`: the live feed as Server-Sent Events.
//!
//! Each stream is a small task between the hub's live broadcast and the
//! response body:
//!
//! ```text
//! hub ──broadcast (LIVE_CAPACITY)──▶ stream task ──mpsc (STREAM_QUEUE)──▶ Sse body ──▶ hyper ──▶ socket
//!                                     filter, lag,     send_timeout(stuck_after)
//!                                     stream_max
//! ```
//!
//! The task never slows anyone else down: the broadcast does not wait for
//! it (it lags instead, see [`crate::fanout`]), and everything past it is
//! this connection's own. What it watches for:
//! - **Lag.** The broadcast says how many events it dropped; the task
//!   drains what is still queued, keeping only the newest record of each
//!   device it watches, sends `event: lagged` with the total skipped, then
//!   those newest records, and goes on live from there.
//! - **A stuck client.** When the client does not read, the socket (its
//!   send buffer kept small, [`super::STREAM_SEND_BUFFER`]), hyper's few
//!   queued frames and the `STREAM_QUEUE` events fill up and the task's
//!   `send_timeout` waits. If one event cannot be queued for `stuck_after`
//!   ([`STUCK_AFTER`] by default), the stream is counted in
//!   `stuck_disconnects` and its connection is cut through the connection's
//!   kill switch ([`super::conn`]): hyper would never notice a body that
//!   ends while the socket is full.
//! - **`stream_max`** (and server shutdown): a final `event: end` tells the
//!   client why and that it should reconnect; then the body ends.
//! - **The client leaving**: the body is dropped, the queue closes, the
//!   task ends.
//!
//! While the task runs it holds a [`WatchGuard`] for the devices it
//! watches (adaptive polling); it drops it when the stream ends, however it
//! ends.

use super::conn::ConnKill;
use super::{ApiError, ApiState};
use crate::device::lock_status;
use crate::fanout::{Event as HubEvent, LIVE_CAPACITY, LinkState, WatchGuard};
use crate::record::Record;
use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Sleep;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// How long one event may wait for room in a stream's queue before the
/// client counts as stuck and is disconnected.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// Events queued between a stream's task and its response body.
pub const STREAM_QUEUE: usize = 64;

/// Interval of keep-alive comments on an idle stream (proxies and
/// clients close silent connections).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Stream counters, shared by all streams (status and metrics).
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    /// Streams open now.
    open: AtomicU64,
    /// Streams opened since start.
    opened: AtomicU64,
    /// Records skipped because a client fell behind.
    lagged: AtomicU64,
    /// Streams cut because their client stopped reading.
    stuck: AtomicU64,
}

impl StreamStats {
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
    pub(crate) fn opened_total(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
    pub(crate) fn lagged_records(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
    pub(crate) fn stuck_disconnects(&self) -> u64 {
        self.stuck.load(Ordering::Relaxed)
    }
}

/// Counts a stream as open until dropped.
struct OpenStream(ApiState);

impl OpenStream {
    fn new(state: ApiState) -> OpenStream {
        state.inner.stats.open.fetch_add(1, Ordering::Relaxed);
        state.inner.stats.opened.fetch_add(1, Ordering::Relaxed);
        OpenStream(state)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.inner.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `data` of `event: state`.
#[derive(Debug, Serialize)]
struct StateData<'a> {
    device: &'a str,
    state: LinkState,
    error: Option<&'a str>,
}

/// `data` of `event: lagged`.
#[derive(Debug, Serialize)]
struct LaggedData {
    missed: u64,
}

/// `data` of `event: end`.
#[derive(Debug, Serialize)]
struct EndData {
    reason: &'static str,
}

/// Slots of [`RecordJson`]: many more than the records a burst of the
/// hub's broadcast holds between two streams catching up, so a stream
/// behind the others still finds the JSON the first one made.
const JSON_SLOTS: usize = 256;

/// A record's `seq` and its JSON.
type JsonSlot = (u64, Arc<str>);

/// The JSON of recent records, keyed by `seq`: each record is serialised
/// once, by the first stream that sends it, and the others copy the text
/// (with a hundred streams, serialising per stream was most of the cost of
/// a delivery).
#[derive(Debug)]
pub(crate) struct RecordJson {
    /// `seq % JSON_SLOTS` → the record's `seq` and its JSON.
    slots: Mutex<Vec<Option<JsonSlot>>>,
}

impl Default for RecordJson {
    fn default() -> Self {
        RecordJson {
            slots: Mutex::new(vec![None; JSON_SLOTS]),
        }
    }
}

impl RecordJson {
    /// The JSON of `record`, made now if no stream made it yet.
    fn of(&self, record: &Record) -> Result<Arc<str>, serde_json::Error> {
        let slot = (record.seq % JSON_SLOTS as u64) as usize;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Some((seq, json))) = slots.get(slot) {
            if *seq == record.seq {
                return Ok(json.clone());
            }
        }
        let json: Arc<str> = serde_json::to_string(record)?.into();
        if let Some(entry) = slots.get_mut(slot) {
            *entry = Some((record.seq, json.clone()));
        }
        Ok(json)
    }
}

/// A record: no `event:` line (the default `message` type), `id: <seq>`,
/// `data: <record JSON>`.
fn record_event(cache: &RecordJson, record: &Record) -> Option<Event> {
    match cache.of(record) {
        // An interval level is named, so a client listening for plain
        // `data:` lines gets readings only.
        Ok(json) if record.is_interval() => Some(
            Event::default()
                .event("level")
                .id(record.seq.to_string())
                .data(&*json),
        ),
        Ok(json) => Some(Event::default().id(record.seq.to_string()).data(&*json)),
        Err(e) => {
            tracing::warn!(seq = record.seq, error = %e, "record not streamable; skipped");
            None
        }
    }
}

/// A named event with a JSON `data` line.
fn named(name: &'static str, data: &impl Serialize) -> Event {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event(name).data(json)
}

/// `event: alert` with the event's JSON as channels get it.
fn alert_event(alert: &serde_json::Value) -> Event {
    Event::default().event("alert").data(alert.to_string())
}

fn state_event(device: &str, state: LinkState, error: Option<&str>) -> Event {
    named(
        "state",
        &StateData {
            device,
            state,
            error,
        },
    )
}

/// Why a stream's flow stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// `stream_max` passed.
    StreamMax,
    /// The server is stopping.
    Shutdown,
    /// The client went away (the body was dropped).
    ClientGone,
    /// The client did not read for `stuck_after`.
    Stuck,
}

/// The devices a `device=` parameter names (all configured ones when it is
/// absent), or a 400.
fn watched_devices(
    state: &ApiState,
    pairs: &[(String, String)],
) -> Result<Vec<Arc<str>>, ApiError> {
    let mut filter: Option<&str> = None;
    for (name, value) in pairs {
        match name.as_str() {
            "device" if filter.is_none() => filter = Some(value),
            "device" => {
                return Err(ApiError::bad_parameter(
                    "device",
                    "one device parameter with comma-separated ids (device=a,b)",
                    value,
                ));
            }
            _ => {
                return Err(ApiError::UnknownParameter {
                    param: name.clone(),
                    known: "device (comma-separated device ids)",
                });
            }
        }
    }
    let Some(filter) = filter else {
        return Ok(state.devices().into_iter().map(|(id, _)| id).collect());
    };
    let mut watched: Vec<Arc<str>> = Vec::new();
    for id in filter.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let device = state.device(id).ok_or_else(|| {
            ApiError::bad_parameter(
                "device",
                format!("configured device ids ({})", state.known_devices()),
                id,
            )
        })?;
        if !watched.contains(&device) {
            watched.push(device);
        }
    }
    if watched.is_empty() {
        return Err(ApiError::bad_parameter(
            "device",
            "comma-separated device ids (or no device parameter for all devices)",
            filter,
        ));
    }
    Ok(watched)
}

/// `GET /v1/stream`.
pub(crate) async fn stream(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    conn: Option<Extension<ConnectInfo<ConnKill>>>,
) -> Result<Response, ApiError> {
    let watched = watched_devices(&state, &super::routes::query_pairs(query)?)?;
    let hub = state.inner.hub.clone();
    // Subscription and snapshot at one instant: nothing missed or repeated.
    let (live, latest) = hub.subscribe_with_latest();
    let guard = hub.watch_devices(&watched);
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let conn = conn.map(|Extension(ConnectInfo(c))| c);
    if let Some(conn) = &conn {
        conn.streaming();
    }
    let task = StreamTask {
        deadline: Box::pin(tokio::time::sleep(state.stream_max())),
        stopping: Box::pin(state.inner.streams_end.clone().cancelled_owned()),
        open: OpenStream::new(state.clone()),
        state,
        watched,
        live,
        tx,
        conn,
        _guard: guard,
    };
    let keep_alive = task.state.keep_alive;
    tokio::spawn(task.run(latest));
    let body = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response())
}

/// One stream's task.
struct StreamTask {
    /// Config, hub, counters, shutdown.
    state: ApiState,
    /// Counts the stream as open while the task lives.
    open: OpenStream,
    /// The devices this stream carries.
    watched: Vec<Arc<str>>,
    /// The hub's live flow.
    live: broadcast::Receiver<HubEvent>,
    /// Into the response body.
    tx: mpsc::Sender<Event>,
    /// The connection's kill switch (absent when the router is served
    /// without [`super::serve`]).
    conn: Option<ConnKill>,
    /// Fires when `stream_max` has passed.
    deadline: Pin<Box<Sleep>>,
    /// Fires when the server stops.
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Keeps the watched devices counted as watched.
    _guard: WatchGuard,
}

impl StreamTask {
    async fn run(mut self, latest: Vec<Arc<Record>>) {
        let ended = match self.flow(latest).await {
            Ok(()) => Ended::Shutdown,
            Err(ended) => ended,
        };
        let reason = match ended {
            Ended::StreamMax => Some("stream_max"),
            Ended::Shutdown => Some("shutdown"),
            Ended::ClientGone | Ended::Stuck => None,
        };
        let mut stuck = ended == Ended::Stuck;
        if let Some(reason) = reason {
            // Bounded like any event: a client too slow to take this one is stuck.
            let end = named("end", &EndData { reason });
            if let Err(mpsc::error::SendTimeoutError::Timeout(_)) =
                self.tx.send_timeout(end, self.state.stuck_after).await
            {
                stuck = true;
            }
        }
        if stuck {
            self.state.inner.stats.stuck.fetch_add(1, Ordering::Relaxed);
            let peer = self.conn.as_ref().map(|c| c.peer.to_string());
            tracing::warn!(
                peer = peer.as_deref().unwrap_or("?"),
                "live stream client stopped reading for {:.1}s: disconnected (it can reconnect)",
                self.state.stuck_after.as_secs_f64()
            );
            if let Some(conn) = &self.conn {
                conn.cut();
            }
        } else {
            tracing::debug!(?ended, "live stream ended");
        }
        drop(self.open);
    }

    fn wants(&self, device: &str) -> bool {
        self.watched.iter().any(|d| &**d == device)
    }

    /// An alert about a watched device.
    fn wants_alert(&self, alert: &serde_json::Value) -> bool {
        alert
            .get("device")
            .and_then(|d| d.as_str())
            .is_some_and(|d| self.wants(d))
    }

    /// Queues `event`, waiting at most `stuck_after` for room.
    async fn send(&mut self, event: Event) -> Result<(), Ended> {
        // Room in the queue: the usual case, no timer needed.
        let event = match self.tx.try_send(event) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Ended::ClientGone),
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        tokio::select! {
            biased;
            // The server is stopping.
            () = &mut self.stopping => Err(Ended::Shutdown),
            // stream_max passed while waiting for a slow client.
            () = &mut self.deadline => Err(Ended::StreamMax),
            // Room, or stuck_after without room, or the client left.
            sent = self.tx.send_timeout(event, self.state.stuck_after) => match sent {
                Ok(()) => Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Ended::Stuck),
                Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Ended::ClientGone),
            },
        }
    }

    async fn send_record(&mut self, record: &Record) -> Result<(), Ended> {
        match record_event(&self.state.inner.json, record) {
            Some(event) => self.send(event).await,
            None => Ok(()),
        }
    }

    /// The snapshot, the current states, then the live flow, until the
    /// stream ends.
    async fn flow(&mut self, latest: Vec<Arc<Record>>) -> Result<(), Ended> {
        for record in &latest {
            if self.wants(&record.device) {
                self.send_record(record).await?;
            }
        }
        // The state of each watched device now; a change after the
        // subscription also arrives live, so the last word is never stale.
        let states: Vec<(Arc<str>, LinkState, Option<String>)> = self
            .state
            .devices()
            .into_iter()
            .filter(|(id, _)| self.wants(id))
            .map(|(id, cell)| {
                let status = lock_status(&cell);
                let error = (status.state != LinkState::Connected)
                    .then(|| status.last_error.clone())
                    .flatten();
                (id, status.state, error)
            })
            .collect();
        for (device, state, error) in &states {
            self.send(state_event(device, *state, error.as_deref()))
                .await?;
        }
        loop {
            let received = tokio::select! {
                biased;
                // The server is stopping.
                () = &mut self.stopping => return Err(Ended::Shutdown),
                // The stream has been open for stream_max.
                () = &mut self.deadline => return Err(Ended::StreamMax),
                // The client went away while nothing was flowing.
                () = self.tx.closed() => return Err(Ended::ClientGone),
                // The next event of the hub, or how many we missed.
                received = self.live.recv() => received,
            };
            match received {
                Ok(HubEvent::Record(record)) if self.wants(&record.device) => {
                    self.send_record(&record).await?;
                }
                Ok(HubEvent::DeviceState {
                    device,
                    state,
                    error,
                }) if self.wants(&device) => {
                    self.send(state_event(&device, state, error.as_deref()))
                        .await?;
                }
                Ok(HubEvent::Alert(alert)) if self.wants_alert(&alert) => {
                    self.send(alert_event(&alert)).await?;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => self.catch_up(missed).await?,
                // The hub is gone: the daemon is stopping.
                Err(RecvError::Closed) => return Ok(()),
            }
        }
    }

    /// After the broadcast dropped `missed` events for us: skip what is
    /// still queued except the newest record (and state) of each watched
    /// device, tell the client how many it missed, send those, go on.
    async fn catch_up(&mut self, missed: u64) -> Result<(), Ended> {
        let mut missed = missed;
        let mut newest: Vec<Arc<Record>> = Vec::new();
        let mut states: Vec<(Arc<str>, LinkState, Option<String>)> = Vec::new();
        // Interval levels and alerts are rare and each one matters: kept,
        // not collapsed to the newest.
        let mut kept: Vec<Event> = Vec::new();
        // Bounded: the queue holds at most LIVE_CAPACITY, and a publisher
        // faster than this loop must not keep it here forever.
        for _ in 0..2 * LIVE_CAPACITY {
            match self.live.try_recv() {
                Ok(HubEvent::Record(record))
                    if record.is_interval() && self.wants(&record.device) =>
                {
                    kept.extend(record_event(&self.state.inner.json, &record));
                }
                Ok(HubEvent::Alert(alert)) if self.wants_alert(&alert) => {
                    kept.push(alert_event(&alert));
                }
                Ok(HubEvent::Record(record)) if self.wants(&record.device) => {
                    match newest.iter_mut().find(|r| r.device == record.device) {
                        Some(slot) => {
                            *slot = record;
                            missed += 1;
                        }
                        None => newest.push(record),
                    }
                }
                Ok(HubEvent::DeviceState {
                    device,
                    state,
                    error,
                }) if self.wants(&device) => {
                    match states.iter_mut().find(|(d, _, _)| *d == device) {
                        Some(slot) => *slot = (device, state, error),
                        None => states.push((device, state, error)),
                    }
                }
                Ok(_) => {}
                Err(TryRecvError::Lagged(more)) => missed += more,
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        self.state
            .inner
            .stats
            .lagged
            .fetch_add(missed, Ordering::Relaxed);
        tracing::debug!(
            missed,
            "live stream client fell behind; resuming from the newest"
        );
        self.send(named("lagged", &LaggedData { missed })).await?;
        for (device, state, error) in &states {
            self.send(state_event(device, *state, error.as_deref()))
                .await?;
        }
        for event in kept {
            self.send(event).await?;
        }
        newest.sort_by_key(|r| r.seq);
        for record in &newest {
            self.send_record(record).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{MeterState, Reading};

    fn record(seq: u64, lp: f64) -> Record {
        Record::new(
            seq,
            Reading {
                device: Arc::from("m"),
                received_at: chrono::DateTime::UNIX_EPOCH,
                device_time: None,
                metrics: vec![("lp", Some(lp))],
                state: MeterState::Measuring,
                flags: Vec::new(),
            },
        )
    }

    #[test]
    fn a_record_is_serialised_once_and_a_reused_slot_holds_the_newer_one() {
        let cache = RecordJson::default();
        let first = cache.of(&record(7, 50.0)).expect("json");
        let again = cache.of(&record(7, 50.0)).expect("json");
        assert!(Arc::ptr_eq(&first, &again), "made once, shared");
        let later = record(7 + JSON_SLOTS as u64, 61.5);
        let json = cache.of(&later).expect("json");
        assert!(json.contains("61.5") && json.contains(&format!("\"seq\":{}", later.seq)));
        assert_eq!(&*json, serde_json::to_string(&later).expect("json"));
    }
}
