//! Device tasks: one per meter, the only reader of that meter's link.
//!
//! A device task owns the link (opens it, keeps it, reopens it with
//! exponential backoff and jitter after it fails) and the device's
//! [`DeviceStatus`]; what to say to the meter is its family's business
//! ([`driver::Family`], one folder per family under [`families`]), which
//! reports readings and state through a [`driver::Meter`] handle. The
//! task never names a family and never waits on a consumer: the hub's
//! publish is non-blocking.
//!
//! Link state rules:
//! - `connecting` until the first answer on a fresh link;
//! - `connected` while the meter answers;
//! - `down` as soon as an answer times out or the link fails; after
//!   [`MAX_TIMEOUTS`] timeouts in a row the link is closed and reopened
//!   with backoff (one missed answer over cellular is not worth a reconnect:
//!   the meter frees its single TCP slot slowly).
//!
//! Logging: state changes, not tries. A meter that keeps failing is logged
//! when it starts, summarised now and then, and when it is back
//! ([`failures`]).
//!
//! A task that dies never looks healthy: the loop runs as a task of its
//! own ([`crate::notify::catch_panic`]); if it panics (a bug), the status
//! says `failed` with the panic as its last error, feeds see the meter
//! `down`, one error line is logged, and the watchdog ping stops so systemd
//! restarts slmd.

pub mod driver;
pub mod failures;
pub mod families;
pub mod health;
pub mod link;
pub mod port;

pub use driver::{Family, Identity};
pub use families::FAMILIES;

use crate::clock::WallClock;
use crate::config::DeviceConfig;
use crate::fanout::{Hub, LinkState};
use crate::record::MeterState;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use driver::Meter;
use health::{CareStatus, Health};
use serde::{Serialize, Serializer};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Timeouts in a row after which the link is reopened.
pub const MAX_TIMEOUTS: u32 = 2;

/// What the gateway knows about one device right now (served by status).
///
/// Its JSON form has the fields below, except that `state` reads `failed`
/// once `task_failed` is set (and `task_failed` itself is not shown).
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// Device id.
    pub id: String,
    /// The meter family (`nl43`, `xl2`, …).
    pub protocol: &'static str,
    /// Where the meter is reached (`tcp 192.0.2.10:2255`, `serial /dev/…`):
    /// the link this task holds, so `slmd check` does not open it again.
    pub target: String,
    /// The config this task runs with ([`crate::config::DeviceConfig::settings`]),
    /// so `slmd check` can tell what a reload of an edited file would change.
    pub settings: Arc<Vec<(&'static str, String)>>,
    /// Who the meter said it is when the link last opened.
    pub identity: Option<Identity>,
    /// Link state.
    pub state: LinkState,
    /// When the link state last changed (or the task started).
    pub state_since: DateTime<Utc>,
    /// The meter's run state as last reported.
    pub run_state: MeterState,
    /// The device task's loop died (a bug): nothing reads the meter until
    /// slmd restarts. `state` is then `down` for the feeds, and status shows
    /// `failed`.
    pub task_failed: bool,
    /// Readings produced since start.
    pub readings_total: u64,
    /// When the last reading was received.
    pub last_reading_at: Option<DateTime<Utc>>,
    /// The last failure, kept after recovery so a field tech sees what happened.
    pub last_error: Option<String>,
    /// Links opened since start.
    pub connects: u64,
    /// Answers that did not parse (counted, never turned into values).
    pub bad_answers: u64,
    /// Commands the meter refused (`R+0001`..`R+0004`).
    pub refused_commands: u64,
    /// Answers that did not arrive in time.
    pub timeouts: u64,
    /// Line noise: skipped lines, over-long lines, stale bytes discarded.
    pub skipped_lines: u64,
    /// Lines longer than the framer's capacity.
    pub overlong_lines: u64,
    /// Stale bytes discarded before commands.
    pub stale_bytes: u64,
    /// Device health: battery, SD card, clock offset.
    pub health: Health,
    /// Meter care: what was done to keep the meter measuring and on time.
    pub care: CareStatus,
}

impl Serialize for DeviceStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// `state` as status shows it: the link state, or `failed`.
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Shown {
            Link(LinkState),
            Failed(&'static str),
        }
        /// The JSON form, field for field.
        #[derive(Serialize)]
        struct Json<'a> {
            id: &'a str,
            protocol: &'a str,
            target: &'a str,
            settings: Settings<'a>,
            identity: &'a Option<Identity>,
            state: Shown,
            #[serde(serialize_with = "crate::record::rfc3339_millis")]
            state_since: DateTime<Utc>,
            run_state: &'a str,
            readings_total: u64,
            #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
            last_reading_at: Option<DateTime<Utc>>,
            last_error: &'a Option<String>,
            connects: u64,
            bad_answers: u64,
            refused_commands: u64,
            timeouts: u64,
            skipped_lines: u64,
            overlong_lines: u64,
            stale_bytes: u64,
            health: &'a Health,
            care: &'a CareStatus,
        }
        // Every field named, so a new one cannot be forgotten here.
        let DeviceStatus {
            id,
            protocol,
            target,
            settings,
            identity,
            state,
            state_since,
            run_state,
            task_failed,
            readings_total,
            last_reading_at,
            last_error,
            connects,
            bad_answers,
            refused_commands,
            timeouts,
            skipped_lines,
            overlong_lines,
            stale_bytes,
            health,
            care,
        } = self;
        Json {
            id,
            protocol,
            target,
            settings: Settings(settings),
            identity,
            state: if *task_failed {
                Shown::Failed("failed")
            } else {
                Shown::Link(*state)
            },
            state_since: *state_since,
            run_state: run_state.as_str(),
            readings_total: *readings_total,
            last_reading_at: *last_reading_at,
            last_error,
            connects: *connects,
            bad_answers: *bad_answers,
            refused_commands: *refused_commands,
            timeouts: *timeouts,
            skipped_lines: *skipped_lines,
            overlong_lines: *overlong_lines,
            stale_bytes: *stale_bytes,
            health,
            care,
        }
        .serialize(serializer)
    }
}

/// A device's settings as one JSON object, in their order.
struct Settings<'a>(&'a [(&'static str, String)]);

impl Serialize for Settings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Shared handle to a device's status.
pub type StatusCell = Arc<Mutex<DeviceStatus>>;

/// The meters configured now, in config order (a reload replaces the list).
pub type MeterList = Arc<Mutex<Vec<StatusCell>>>;

/// A device's status cell, tolerant of a poisoned lock (plain data).
pub fn lock_status(cell: &StatusCell) -> std::sync::MutexGuard<'_, DeviceStatus> {
    cell.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything a device task needs.
pub struct DeviceTask {
    /// The device's configuration.
    pub config: DeviceConfig,
    /// The id, shared with every record it produces.
    pub id: Arc<str>,
    /// Where readings go.
    pub hub: Arc<Hub>,
    /// Where its status is published.
    pub status: StatusCell,
    /// Where `received_at` comes from.
    pub clock: WallClock,
    /// Its failure episodes, so a meter that keeps failing is logged when
    /// it starts, now and then, and when it ends — not per try.
    failures: Mutex<failures::FailureLog>,
    /// Meter care's memory across links (episodes logged, the last clock
    /// setting).
    care: Mutex<CareMemory>,
    /// `[gateway].clock_trusted`: set meter clocks from this gateway's
    /// clock even when the kernel does not call it synchronised.
    clock_trusted: bool,
}

/// What meter care remembers across links, so a reconnect neither logs an
/// episode twice nor sets a clock twice in a day.
#[derive(Debug, Default)]
pub(crate) struct CareMemory {
    /// The meter was found stopped and that was logged; ends when it
    /// measures again.
    pub stopped_episode: bool,
    /// The measurement running now was started by `keep_measuring`.
    pub started_by_us: bool,
    /// A refused start was logged in this episode.
    pub start_refused_logged: bool,
    /// A refused sleep-mode change was logged.
    pub sleep_refused_logged: bool,
    /// The kind of wait last logged (`meter_clock_waits`, …), so it is
    /// logged once.
    pub pending_logged: Option<&'static str>,
    /// When the meter clock was last set (monotonic).
    pub last_clock_sync: Option<tokio::time::Instant>,
}

impl DeviceTask {
    /// A task for `config` publishing to `hub`.
    pub fn new(config: DeviceConfig, hub: Arc<Hub>) -> DeviceTask {
        let id: Arc<str> = Arc::from(config.id.as_str());
        let status = Arc::new(Mutex::new(DeviceStatus {
            id: config.id.clone(),
            protocol: config.protocol.as_str(),
            target: config.target(),
            settings: Arc::new(config.settings()),
            identity: None,
            state: LinkState::Connecting,
            state_since: Utc::now(),
            run_state: MeterState::Unknown,
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
            health: Health::initial(&config.protocol.rules().health),
            care: CareStatus::default(),
        }));
        let failures = failures::FailureLog::new(id.clone(), failures::summary_every());
        DeviceTask {
            config,
            id,
            hub,
            status,
            clock: WallClock::system(),
            failures: Mutex::new(failures),
            care: Mutex::new(CareMemory::default()),
            clock_trusted: false,
        }
    }

    /// The same task, trusting the gateway clock for `sync_clock` even when
    /// the kernel does not call it synchronised (`[gateway].clock_trusted`).
    pub fn with_clock_trusted(mut self, trusted: bool) -> DeviceTask {
        self.clock_trusted = trusted;
        self
    }

    /// Meter care's memory.
    pub(crate) fn care(&self) -> std::sync::MutexGuard<'_, CareMemory> {
        self.care.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The same task, timestamping readings with `clock`.
    pub fn with_clock(mut self, clock: WallClock) -> DeviceTask {
        self.clock = clock;
        self
    }

    /// The same task, summarising a meter that keeps failing every `every`
    /// (default [`failures::summary_every`]).
    pub fn with_failure_summary(self, every: Duration) -> DeviceTask {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_summary_every(every);
        self
    }

    /// Runs until `shutdown`: open, poll, and reopen with backoff, forever.
    ///
    /// The loop runs as a task of its own, so a bug that panics it cannot
    /// leave the meter looking healthy: status then says `failed` with the
    /// panic as its last error, feeds see it `down`, one error line is
    /// logged, and [`crate::notify::Liveness`] withholds the watchdog ping.
    pub async fn run(self, shutdown: CancellationToken) {
        self.supervise(move |task| task.poll_forever(shutdown))
            .await;
    }

    /// Runs `work` (the loop, given this task) and reports it failed if it
    /// panics.
    async fn supervise<F, Fut>(self, work: F)
    where
        F: FnOnce(DeviceTask) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (id, hub, status) = (self.id.clone(), self.hub.clone(), self.status.clone());
        let Err(panic) = crate::notify::catch_panic(work(self)).await else {
            return;
        };
        let error = format!(
            "the device task stopped on an internal error ({}); this meter is not read until slmd restarts",
            panic.0
        );
        tracing::error!(
            device = %id,
            event = "device_task_failed",
            "meter {id}: {error}; the watchdog ping is withheld so systemd restarts slmd"
        );
        {
            let mut status = lock_status(&status);
            status.task_failed = true;
            status.state = LinkState::Down;
            status.last_error = Some(error.clone());
        }
        hub.device_state(id, LinkState::Down, Some(error));
    }

    /// Open, poll, and reopen with backoff, until `shutdown`.
    async fn poll_forever(self, shutdown: CancellationToken) {
        let mut backoff = self.new_backoff();
        self.hub
            .device_state(self.id.clone(), LinkState::Connecting, None);
        loop {
            let opened = tokio::select! {
                // Shutdown wins over a connect in progress.
                () = shutdown.cancelled() => return,
                opened = link::open(&self.config) => opened,
            };
            let failure = match opened {
                Ok(link) => {
                    lock_status(&self.status).connects += 1;
                    tracing::debug!(device = %self.id, event = "link_open", "link open");
                    let meter = Meter::new(&self);
                    let ended = tokio::select! {
                        () = shutdown.cancelled() => return,
                        ended = self.config.family().run(link, &meter) => ended.to_string(),
                    };
                    if meter.produced() {
                        // A link that gave readings was good: the next
                        // reconnect starts from the shortest delay.
                        self.reset_backoff(&mut backoff);
                    }
                    ended
                }
                Err(e) => e.to_string(),
            };
            let delay = backoff.next().unwrap_or(self.config.reconnect_max);
            self.change_state(
                LinkState::Down,
                Some(failure),
                Some(format!("retrying in {:.1}s", delay.as_secs_f64())),
                true,
            );
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Exponential backoff with jitter, capped, never giving up (backon stops
    /// after 3 tries unless told otherwise).
    fn new_backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.config.reconnect_min)
            .with_max_delay(self.config.reconnect_max.max(self.config.reconnect_min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Records a state change; announces it only when it changes. A
    /// failure reported here (a missed answer on a link that is kept) is
    /// not counted as a try.
    pub(crate) fn set_state(
        &self,
        state: LinkState,
        error: Option<String>,
        next_step: Option<String>,
    ) {
        self.change_state(state, error, next_step, false);
    }

    /// Records the state; announces it when it changes; hands failures and
    /// recoveries to the failure log, which decides what is worth a line
    /// (a field tech wants transitions and summaries, not one line per
    /// try). `new_try`: a failure that ended a try at the link.
    fn change_state(
        &self,
        state: LinkState,
        error: Option<String>,
        next_step: Option<String>,
        new_try: bool,
    ) {
        let changed = {
            let mut status = lock_status(&self.status);
            let changed = status.state != state;
            status.state = state;
            if changed {
                status.state_since = self.clock.now();
            }
            if error.is_some() {
                status.last_error.clone_from(&error);
            }
            changed
        };
        {
            let mut log = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            match (state, &error) {
                (LinkState::Connected, _) if changed => log.answered(now),
                (LinkState::Down, Some(reason)) => log.failed(
                    now,
                    self.clock.now(),
                    reason,
                    next_step.as_deref().unwrap_or("retrying"),
                    new_try,
                ),
                _ => {}
            }
        }
        if changed {
            self.hub.device_state(self.id.clone(), state, error);
        }
    }

    fn reset_backoff(&self, backoff: &mut ExponentialBackoff) {
        *backoff = self.new_backoff();
    }
}

/// `sync_clock`: the meter clock is set only when it is off by more than
/// this (SPEC §4).
pub const CLOCK_SYNC_THRESHOLD: Duration = Duration::from_secs(2);

/// `sync_clock = "daily"`: at most one clock setting per this period.
pub const CLOCK_SYNC_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Tolerance between the meter's clock and the gateway's before a reading
/// is flagged `clock_unsynced` (the meter's clock has 1 s resolution and is
/// read over a link with its own delay).
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(3);
