//! The limits task: every reading in, interval levels and alert events out.
//!
//! It is a durable consumer of the hub (its own bounded queue, like the
//! buffer writer's), so a reading is never missed while the queue has room,
//! and it never holds up a device: the hub offers, never waits. For each
//! reading it feeds the device's windows ([`DeviceLevels`]) and the rules
//! on reading metrics; a window that closes becomes an interval level,
//! published through the hub (a `seq` in the readings' order: stored,
//! pushed, streamed and sent to MQTT like a reading) and then fed to the
//! rules on interval levels. Each alert event is stored in the buffer file
//! with its episode before anyone hears of it
//! ([`crate::buffer::Buffer::record_alert_event`]),
//! then announced live (SSE, MQTT) and the delivery tasks woken.
//!
//! What a stop costs: windows still open are not stored (a window is
//! stored once closed); active episodes are (they continue after a
//! restart with no second onset).

use super::interval::{DeviceLevels, IntervalLevel, LevelSettings};
use super::rules::{ActiveEpisode, AlertEvent, EventKind, Rule, Rules, Schedule};
use crate::buffer::BufferSlot;
use crate::clock::WallClock;
use crate::config::{Config, DAY_NAMES, parse_clock, split_level_metric};
use crate::fanout::Hub;
use crate::record::{Flag, Interval, MeterState, Reading, Record, format_millis};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Capacity of the limits task's queue from the hub: 4096 records, 25 s
/// of 16 meters at 10 readings a second, far more than a burst of work
/// here takes. A reading that finds it full is counted by the hub
/// (`lost_to_full_sinks`) and is a hole in the windows.
pub const LIMITS_QUEUE: usize = 4096;

/// How often time alone is checked (a schedule window closing, a window
/// whose meter went silent).
const TICK: Duration = Duration::from_secs(1);

/// Alert events held in memory while the buffer is not open yet (a disk
/// that fails at start): the first 1000; more are counted and logged.
const PENDING_EVENTS_MAX: usize = 1000;

/// What the limits part shows in status and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitsStatus {
    /// Rules configured.
    pub rules: usize,
    /// Episodes active now.
    pub active: usize,
    /// Alert events raised since start.
    pub events: u64,
    /// Interval levels published since start.
    pub intervals: u64,
    /// Events that could not be stored (buffer unavailable and the memory
    /// queue full).
    pub events_lost: u64,
}

/// Shared with status and metrics.
pub type LimitsStatusCell = Arc<Mutex<LimitsStatus>>;

/// Handles the rest of the daemon holds on the limits part.
#[derive(Debug, Clone)]
pub struct LimitsHandle {
    /// Changes after each stored event: delivery tasks wait on it.
    pub events: watch::Receiver<u64>,
    /// Counters.
    pub status: LimitsStatusCell,
}

/// Per device: its windows and which metric feeds them.
struct DeviceInput {
    levels: DeviceLevels,
    metric: &'static str,
    last_state: MeterState,
}

/// The task's state.
pub struct Engine {
    gateway: Arc<str>,
    hub: Arc<Hub>,
    buffer: BufferSlot,
    clock: WallClock,
    devices: HashMap<Arc<str>, DeviceInput>,
    rules: Rules,
    /// Metrics of rules on readings (not interval levels).
    reading_metrics: Vec<&'static str>,
    /// Rule id → its `clear_below`, for episode summaries.
    clear_levels: HashMap<Arc<str>, f64>,
    /// Events (body, episode summary, active) waiting for the buffer.
    pending: VecDeque<(AlertEvent, Value, bool)>,
    wake: watch::Sender<u64>,
    status: LimitsStatusCell,
}

fn lock(status: &LimitsStatusCell) -> std::sync::MutexGuard<'_, LimitsStatus> {
    status.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `config` asks for any limits work (interval levels or rules):
/// without, no task runs and no reading is queued for it.
pub fn wanted(config: &Config) -> bool {
    !config.levels.intervals.is_empty() || !config.alerts.is_empty()
}

/// The rules of `config` (validated: every reference resolves).
pub fn rules_of(config: &Config) -> Vec<Rule> {
    config
        .alerts
        .iter()
        .map(|alert| Rule {
            id: Arc::from(alert.id.as_str()),
            devices: alert
                .devices
                .as_ref()
                .map(|list| list.iter().map(|d| Arc::from(d.as_str())).collect()),
            metric: Arc::from(alert.metric.as_str()),
            above: alert.above,
            hold: alert.hold,
            clear_below: alert.clear_level(),
            schedule: alert.schedule.as_ref().map(|s| {
                let mut days = [s.days.is_none(); 7];
                for day in s.days.iter().flatten() {
                    if let Some(i) = DAY_NAMES.iter().position(|d| d == day) {
                        days[i] = true;
                    }
                }
                Schedule {
                    days,
                    from: s
                        .from
                        .as_deref()
                        .and_then(|t| parse_clock(t).ok())
                        .unwrap_or(0),
                    to: s
                        .to
                        .as_deref()
                        .and_then(|t| parse_clock(t).ok())
                        .unwrap_or(24 * 60),
                }
            }),
            cooldown: alert.cooldown,
            peak_every: alert.peak_every,
            channels: alert
                .channels
                .iter()
                .map(|c| Arc::from(c.as_str()))
                .collect(),
        })
        .collect()
}

impl Engine {
    /// The engine for `config`; the handle for delivery, status and the API.
    pub fn new(
        config: &Config,
        hub: Arc<Hub>,
        buffer: BufferSlot,
        clock: WallClock,
    ) -> (Engine, LimitsHandle) {
        let tz = config.levels.time_zone();
        let settings = Arc::new(LevelSettings {
            lengths: config.levels.intervals.clone(),
            tz: tz.clone(),
            min_coverage: config.levels.min_coverage,
        });
        let devices = config
            .devices
            .iter()
            .map(|device| {
                let id: Arc<str> = Arc::from(device.id.as_str());
                // A per-cycle Leq and an Lp sample are weighted alike, by
                // the span each covers (see `interval`).
                let input = device.protocol.rules().level_input;
                (
                    id.clone(),
                    DeviceInput {
                        levels: DeviceLevels::new(id, settings.clone(), device.poll_interval),
                        metric: input.metric,
                        last_state: MeterState::Unknown,
                    },
                )
            })
            .collect();
        let rules = rules_of(config);
        let mut reading_metrics: Vec<&'static str> = rules
            .iter()
            .filter(|r| split_level_metric(&r.metric).is_none())
            .map(|r| crate::record::intern(&r.metric))
            .collect();
        reading_metrics.sort_unstable();
        reading_metrics.dedup();
        let clear_levels = rules
            .iter()
            .map(|r| (r.id.clone(), r.clear_below))
            .collect();
        let status: LimitsStatusCell = Arc::new(Mutex::new(LimitsStatus {
            rules: rules.len(),
            ..LimitsStatus::default()
        }));
        let (wake, events) = watch::channel(0);
        let engine = Engine {
            gateway: Arc::from(config.gateway.id.as_str()),
            hub,
            buffer,
            clock,
            devices,
            rules: Rules::new(rules, tz),
            reading_metrics,
            clear_levels,
            pending: VecDeque::new(),
            wake,
            status: status.clone(),
        };
        (engine, LimitsHandle { events, status })
    }

    /// Runs until `shutdown` or until the hub closes the queue.
    pub async fn run(
        mut self,
        mut records: mpsc::Receiver<Arc<Record>>,
        shutdown: CancellationToken,
    ) {
        self.restore();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                record = records.recv() => match record {
                    Some(record) => self.on_record(&record),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(self.clock.now()),
            }
        }
        self.flush_pending();
    }

    /// Episodes active at the last stop continue.
    fn restore(&mut self) {
        let Some(buffer) = self.buffer.get() else {
            return;
        };
        let active = match buffer.episodes(0) {
            Ok((active, _)) => active,
            Err(error) => {
                tracing::error!(%error, "cannot read the active alert episodes back; an episode active before the restart may start again");
                return;
            }
        };
        let episodes: Vec<ActiveEpisode> = active
            .iter()
            .filter_map(|summary| serde_json::from_value(summary.get("state")?.clone()).ok())
            .collect();
        if !episodes.is_empty() {
            tracing::info!(
                "{} alert episode(s) still active from before the restart: {}",
                episodes.len(),
                episodes
                    .iter()
                    .map(|e| format!("{} on {}", e.rule, e.device))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let now = self.clock.now();
        let events = self.rules.restore(episodes, now);
        self.emit(events);
    }

    /// One record from the hub: the reading feeds its device's windows and
    /// the rules on reading metrics (the task calls it for each record;
    /// public for the `limits` bench).
    pub fn on_record(&mut self, record: &Record) {
        if record.is_interval() {
            // Our own, back from the hub.
            return;
        }
        let mut closed = Vec::new();
        if let Some(input) = self.devices.get_mut(&record.device) {
            input.last_state = record.state;
            // A reading replayed from the meter's memory is from another
            // time: it is not part of the window it arrives in.
            if !record.flags.contains(&Flag::Replayed) {
                let level = record.metric(input.metric);
                closed = input.levels.add(record.received_at, level);
            }
        }
        let mut events = Vec::new();
        for metric in &self.reading_metrics {
            if let Some(value) = record.metric(metric) {
                events.extend(self.rules.on_value(
                    &record.device,
                    metric,
                    value,
                    record.received_at,
                ));
            }
        }
        self.emit(events);
        for level in closed {
            self.publish_level(level);
        }
    }

    fn on_tick(&mut self, now: DateTime<Utc>) {
        let mut closed = Vec::new();
        for input in self.devices.values_mut() {
            closed.extend(input.levels.tick(now));
        }
        for level in closed {
            self.publish_level(level);
        }
        let events = self.rules.tick(now);
        self.emit(events);
        self.flush_pending();
    }

    /// Publishes a closed window and feeds it to the rules on levels.
    fn publish_level(&mut self, level: IntervalLevel) {
        let state = self
            .devices
            .get(&level.device)
            .map_or(MeterState::Unknown, |d| d.last_state);
        let values = [
            ("leq", level.leq),
            ("lmax", level.lmax),
            ("lmin", level.lmin),
            ("l10", level.l10),
            ("l90", level.l90),
        ];
        let reading = Reading {
            device: level.device.clone(),
            received_at: self.clock.now(),
            device_time: None,
            metrics: values.to_vec(),
            state,
            flags: if level.low_coverage {
                vec![Flag::LowCoverage]
            } else {
                Vec::new()
            },
        };
        self.hub.publish_interval(
            reading,
            Interval {
                start: level.start,
                length: level.length,
                readings: level.readings,
                coverage: level.coverage,
            },
        );
        lock(&self.status).intervals += 1;
        // A window mostly without readings decides nothing: its level
        // describes only the covered part.
        if level.low_coverage {
            return;
        }
        let mut events = Vec::new();
        for (metric, value) in values {
            if let Some(value) = value {
                let name = level.metric_name(metric);
                events.extend(self.rules.on_interval(
                    &level.device,
                    &name,
                    value,
                    level.start,
                    level.end,
                ));
            }
        }
        self.emit(events);
    }

    /// Stores each event with its episode, then tells everyone.
    fn emit(&mut self, events: Vec<AlertEvent>) {
        if events.is_empty() {
            return;
        }
        let active = self.rules.active();
        lock(&self.status).active = active.len();
        for event in events {
            let state = active.iter().find(|e| e.episode == event.episode).cloned();
            let is_active = state.is_some() && event.kind != EventKind::Clear;
            let summary = self.summary(&event, state);
            self.log(&event);
            lock(&self.status).events += 1;
            if self.pending.len() >= PENDING_EVENTS_MAX {
                lock(&self.status).events_lost += 1;
                tracing::error!(
                    alert = %event.rule,
                    device = %event.device,
                    "alert event not stored: the buffer is unavailable and {PENDING_EVENTS_MAX} events already wait for it"
                );
                continue;
            }
            self.pending.push_back((event, summary, is_active));
        }
        self.flush_pending();
    }

    /// Writes waiting events to the buffer, in order; each is announced
    /// once stored.
    fn flush_pending(&mut self) {
        let Some(buffer) = self.buffer.get().cloned() else {
            return;
        };
        while let Some((event, summary, active)) = self.pending.front() {
            let body = event_body(&self.gateway, event);
            match buffer.record_alert_event(&event.episode, &event.rule, &body, summary, *active) {
                Ok(event_seq) => {
                    let mut body = body;
                    if let Some(map) = body.as_object_mut() {
                        map.insert("event_seq".into(), event_seq.into());
                    }
                    self.hub.alert(Arc::new(body));
                    self.wake.send_modify(|n| *n = event_seq);
                    self.pending.pop_front();
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot store an alert event yet; it waits in memory");
                    return;
                }
            }
        }
    }

    /// The episode's summary after `event`: what `GET /v1/alerts` shows,
    /// kept with the ack the API may have added.
    fn summary(&self, event: &AlertEvent, state: Option<ActiveEpisode>) -> Value {
        let stored = self
            .buffer
            .get()
            .and_then(|b| b.episode(&event.episode).ok().flatten())
            .map(|(body, _)| body);
        let mut summary = stored.unwrap_or_else(|| {
            json!({
                "episode": &*event.episode,
                "alert": &*event.rule,
                "device": &*event.device,
                "metric": &*event.metric,
                "threshold": event.threshold,
                "clear_below": self.clear_levels.get(&event.rule).copied(),
                "onset_at": format_millis(&event.at),
                "onset_value": event.value,
                "peak": event.value,
                "peak_at": format_millis(&event.at),
                "cleared_at": Value::Null,
                "clear_value": Value::Null,
                "ack": Value::Null,
            })
        });
        let Some(map) = summary.as_object_mut() else {
            return summary;
        };
        map.insert("last_event".into(), event.kind.as_str().into());
        map.insert("last_value".into(), event.value.into());
        map.insert("last_at".into(), format_millis(&event.at).into());
        match event.kind {
            EventKind::Onset => {}
            EventKind::Peak => {
                map.insert("peak".into(), event.value.into());
                map.insert("peak_at".into(), format_millis(&event.at).into());
            }
            EventKind::Clear => {
                map.insert("cleared_at".into(), format_millis(&event.at).into());
                map.insert("clear_value".into(), event.value.into());
            }
        }
        if let Some(state) = &state {
            map.insert("peak".into(), state.peak.into());
            map.insert("peak_at".into(), format_millis(&state.peak_at).into());
        }
        let active = state.is_some() && event.kind != EventKind::Clear;
        map.insert("active".into(), active.into());
        map.insert(
            "state".into(),
            state
                .filter(|_| active)
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null),
        );
        summary
    }

    fn log(&self, event: &AlertEvent) {
        let what = format!(
            "{} {} on {}: {} {:.1} dB (limit {:.1} dB), episode {}",
            event.rule,
            event.kind.as_str(),
            event.device,
            event.metric,
            event.value,
            event.threshold,
            event.episode
        );
        match event.kind {
            EventKind::Onset => tracing::warn!(
                event = "alert_onset",
                device = %event.device,
                alert = %event.rule,
                "noise limit {what}"
            ),
            EventKind::Peak => tracing::info!(
                event = "alert_peak",
                device = %event.device,
                alert = %event.rule,
                "noise limit {what}"
            ),
            EventKind::Clear => tracing::info!(
                event = "alert_clear",
                device = %event.device,
                alert = %event.rule,
                "noise limit {what}"
            ),
        }
    }
}

/// The event as every consumer gets it (SPEC §11's webhook body; the
/// buffer adds `event_seq`).
pub fn event_body(gateway: &str, event: &AlertEvent) -> Value {
    json!({
        "gateway": gateway,
        "alert": &*event.rule,
        "event": event.kind.as_str(),
        "device": &*event.device,
        "metric": &*event.metric,
        "value": event.value,
        "threshold": event.threshold,
        "at": format_millis(&event.at),
        "episode": &*event.episode,
    })
}
