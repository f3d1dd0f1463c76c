//! Delivering alert events from the buffer file to one consumer each: a
//! channel (`webhook`, `ntfy`) or the fleet (`uplink::events`).
//!
//! Every consumer is its own task with its own position in the file
//! (`event_deliveries`), so a channel that is down delays nobody else: not
//! the readings (the limits task only stores events and wakes the
//! consumers), not the other channels, not the fleet. A consumer sends in
//! `event_seq` order and retries the event at its head with exponential
//! backoff and jitter until it is delivered, so after an outage every
//! event arrives once, in order; the position moves only after a delivery
//! (a restart re-sends at most the event in flight). A failure is logged
//! when it starts and when it ends (with how many tries it took), never
//! per try; counted in status.
//!
//! A receiver that refuses an event for what it is (`400`, `404`, `410`,
//! `413`, `422`) would otherwise hold every later one back: that event is
//! skipped, logged and counted as `rejected`.

use crate::buffer::BufferSlot;
use crate::buffer::alerts::StoredEvent;
use crate::config::{ChannelConfig, ChannelKind};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Events read from the file per round.
const READ_BATCH: usize = 100;

/// While the buffer is not open yet, how often to look again.
const BUFFER_WAIT: Duration = Duration::from_secs(1);

/// How a try went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Try the same events again later (at least `retry_after`).
    Retry {
        /// For status and the journal.
        error: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The receiver refuses these events for what they are: skip them.
    Rejected {
        /// Its reason.
        error: String,
    },
}

/// One consumer of alert events.
pub trait EventSink: Send {
    /// Its name in the file and in status (`fleet`, `channel:site-office`).
    fn consumer(&self) -> String;
    /// Whether it takes `event` at all (a channel: only its rules' events).
    fn wants(&self, event: &StoredEvent) -> bool;
    /// Most events per try.
    fn batch_max(&self) -> usize;
    /// Delivers `events` (in order) or says why not.
    fn send(&mut self, events: &[StoredEvent]) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// A consumer's state for status and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryStatus {
    /// `fleet` or `channel:<id>`.
    pub consumer: String,
    /// Events delivered since start.
    pub delivered: u64,
    /// Failed tries since start.
    pub failures: u64,
    /// Events the receiver refused and that were skipped.
    pub rejected: u64,
    /// Events pruned from the file before this consumer delivered them.
    pub lost: u64,
    /// Highest `event_seq` delivered.
    pub position: u64,
    /// The failure going on, if any.
    pub last_error: Option<String>,
}

/// Shared with status.
pub type DeliveryStatusCell = Arc<Mutex<DeliveryStatus>>;

fn lock(status: &DeliveryStatusCell) -> std::sync::MutexGuard<'_, DeliveryStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Backoff between failed tries.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First wait.
    pub min: Duration,
    /// Longest wait.
    pub max: Duration,
}

fn backoff(retry: Retry) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(retry.min)
        .with_max_delay(retry.max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Registers `consumer` in the file when the buffer is open, starting
/// after every event stored so far (a channel added later does not get
/// the history), so no event raised after this call is missed.
pub fn register(buffer: &BufferSlot, consumer: &str) {
    if let Some(buffer) = buffer.get()
        && let Err(error) = buffer.event_delivery(consumer, true)
    {
        tracing::warn!(%error, "cannot register {consumer} for alert events");
    }
}

/// Delivers events to `sink` until `shutdown`.
pub async fn run<S: EventSink>(
    mut sink: S,
    buffer: BufferSlot,
    mut wake: watch::Receiver<u64>,
    retry: Retry,
    status: DeliveryStatusCell,
    shutdown: CancellationToken,
) {
    let consumer = sink.consumer();
    lock(&status).consumer.clone_from(&consumer);
    let buffer = loop {
        if let Some(buffer) = buffer.get() {
            break buffer.clone();
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(BUFFER_WAIT) => {}
        }
    };
    let (mut position, lost) = match buffer.event_delivery(&consumer, true) {
        Ok(found) => found,
        Err(error) => {
            tracing::error!(%error, "cannot read where {consumer} stands in the alert events; it gets none this run");
            return;
        }
    };
    {
        let mut s = lock(&status);
        s.position = position;
        s.lost = lost;
    }
    let mut backoff = backoff(retry);
    let mut failing: Option<(chrono::DateTime<chrono::Utc>, u64)> = None;
    loop {
        wake.borrow_and_update();
        let events = match buffer.alert_events_after(position, READ_BATCH) {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(%error, "cannot read alert events for {consumer}; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(retry.max) => {}
                }
                continue;
            }
        };
        let Some(last) = events.last().map(|e| e.event_seq) else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = wake.changed() => if changed.is_err() { return },
            }
            continue;
        };
        // The pruned events a slow consumer lost show up as a gap.
        let wanted: Vec<StoredEvent> = events.into_iter().filter(|e| sink.wants(e)).collect();
        let mut done_up_to = position;
        for chunk in wanted.chunks(sink.batch_max().max(1)) {
            loop {
                let result = tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = sink.send(chunk) => result,
                };
                match result {
                    Ok(()) => {
                        if let Some((since, tries)) = failing.take() {
                            tracing::info!(
                                event = "alert_delivery_recovered",
                                "alert events reach {consumer} again (after {tries} failed tries since {})",
                                since.format("%H:%M:%S")
                            );
                        }
                        backoff = self::backoff(retry);
                        let mut s = lock(&status);
                        s.delivered += chunk.len() as u64;
                        s.last_error = None;
                        break;
                    }
                    Err(Failure::Rejected { error }) => {
                        tracing::error!(
                            event = "alert_delivery_rejected",
                            "{consumer} refused alert event(s) {}..{}: {error}; skipped so the later ones go through",
                            chunk.first().map_or(0, |e| e.event_seq),
                            chunk.last().map_or(0, |e| e.event_seq),
                        );
                        lock(&status).rejected += chunk.len() as u64;
                        break;
                    }
                    Err(Failure::Retry { error, retry_after }) => {
                        let wait = backoff.next().unwrap_or(retry.max);
                        let wait = retry_after.map_or(wait, |asked| asked.max(wait));
                        match &mut failing {
                            None => {
                                tracing::warn!(
                                    event = "alert_delivery_failed",
                                    "cannot deliver alert events to {consumer}: {error}; retrying with backoff (readings, other channels and the fleet are not held up)"
                                );
                                failing = Some((chrono::Utc::now(), 1));
                            }
                            Some((_, tries)) => *tries += 1,
                        }
                        {
                            let mut s = lock(&status);
                            s.failures += 1;
                            s.last_error = Some(error);
                        }
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            let up_to = chunk.last().map_or(done_up_to, |e| e.event_seq);
            if let Err(error) = buffer.mark_events_delivered(&consumer, up_to) {
                tracing::warn!(%error, "cannot note the delivery to {consumer}; it may be repeated after a restart");
            }
            done_up_to = up_to;
            lock(&status).position = up_to;
        }
        // Events this consumer does not take are passed over.
        if last > done_up_to {
            if let Err(error) = buffer.mark_events_delivered(&consumer, last) {
                tracing::warn!(%error, "cannot note the delivery to {consumer}");
            }
            lock(&status).position = last;
        }
        position = last;
    }
}

/// A `[[channel]]` as a consumer.
pub struct Channel {
    config: ChannelConfig,
    /// Rules whose events it takes.
    rules: HashSet<String>,
    client: reqwest::Client,
}

impl Channel {
    /// The channel of `config`, taking the events of `rules`.
    pub fn new(config: ChannelConfig, rules: HashSet<String>) -> Result<Channel, String> {
        let client = crate::uplink::http_client(config.timeout)
            .map_err(|e| format!("channel {}: {e}", config.id))?;
        Ok(Channel {
            config,
            rules,
            client,
        })
    }

    /// Its backoff.
    pub fn retry(&self) -> Retry {
        Retry {
            min: self.config.retry_min,
            max: self.config.retry_max,
        }
    }

    async fn post(&self, event: &StoredEvent) -> Result<(), Failure> {
        let mut request = self.client.post(&self.config.url);
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token);
        }
        request = match self.config.kind {
            ChannelKind::Webhook => request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(event.body.to_string()),
            ChannelKind::Ntfy => {
                let ntfy = ntfy_message(&event.body);
                request
                    .header("Title", ntfy.title)
                    .header("Priority", ntfy.priority)
                    .header("Tags", ntfy.tags)
                    .body(ntfy.message)
            }
        };
        let response = request.send().await.map_err(|e| Failure::Retry {
            error: describe(&e),
            retry_after: None,
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::uplink::wire::parse_retry_after);
        match status {
            200..=299 => Ok(()),
            400 | 404 | 410 | 413 | 422 => Err(Failure::Rejected {
                error: format!("{} answered {status}", self.config.kind.as_str()),
            }),
            _ => Err(Failure::Retry {
                error: format!("{} answered {status}", self.config.kind.as_str()),
                retry_after,
            }),
        }
    }
}

impl EventSink for Channel {
    fn consumer(&self) -> String {
        format!("channel:{}", self.config.id)
    }

    fn wants(&self, event: &StoredEvent) -> bool {
        self.rules.contains(&event.rule)
    }

    fn batch_max(&self) -> usize {
        1
    }

    async fn send(&mut self, events: &[StoredEvent]) -> Result<(), Failure> {
        for event in events {
            self.post(event).await?;
        }
        Ok(())
    }
}

/// What an ntfy notification carries.
#[derive(Debug, Clone, PartialEq)]
pub struct NtfyMessage {
    /// `Title` header.
    pub title: String,
    /// `Priority` header: `high` for an onset, `default` for a peak,
    /// `low` for a clear.
    pub priority: &'static str,
    /// `Tags` header (emoji short codes ntfy shows).
    pub tags: &'static str,
    /// The body.
    pub message: String,
}

/// An event in the words a phone notification needs.
pub fn ntfy_message(body: &serde_json::Value) -> NtfyMessage {
    let text = |name: &str| {
        body.get(name)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    let number = |name: &str| body.get(name).and_then(serde_json::Value::as_f64);
    let event = text("event");
    let (priority, tags, verb) = match event.as_str() {
        "onset" => ("high", "loud_sound,warning", "above"),
        "peak" => (
            "default",
            "loud_sound,chart_with_upwards_trend",
            "peaked at",
        ),
        _ => ("low", "white_check_mark", "back below"),
    };
    let value = number("value").map_or_else(|| text("value"), |v| format!("{v:.1}"));
    let threshold = number("threshold").map_or_else(|| text("threshold"), |v| format!("{v:.1}"));
    NtfyMessage {
        title: format!("{}: {} on {}", text("alert"), event, text("device")),
        priority,
        tags,
        message: format!(
            "{} {} {value} dB (limit {threshold} dB) at {} — gateway {}, episode {}",
            text("metric"),
            verb,
            text("at"),
            text("gateway"),
            text("episode")
        ),
    }
}

/// A reqwest error with its root cause.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let what = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut root = e.source();
    let mut last = None;
    while let Some(cause) = root {
        last = Some(cause.to_string());
        root = cause.source();
    }
    match last {
        Some(cause) => format!("{what}: {cause}"),
        None => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfy_messages_say_what_happened_in_a_line() {
        let body = serde_json::json!({
            "gateway": "gw-1", "alert": "day-limit", "event": "onset",
            "device": "nl43-north", "metric": "leq_15m", "value": 67.34,
            "threshold": 65.0, "at": "2026-12-02T10:15:00.000Z",
            "episode": "20261202T101500000-day-limit-nl43-north", "event_seq": 3
        });
        let m = ntfy_message(&body);
        assert_eq!(m.title, "day-limit: onset on nl43-north");
        assert_eq!(m.priority, "high");
        assert!(
            m.message
                .starts_with("leq_15m above 67.3 dB (limit 65.0 dB)"),
            "{}",
            m.message
        );
        let clear = ntfy_message(&serde_json::json!({"event": "clear", "value": 60.0}));
        assert_eq!(clear.priority, "low");
    }
}
