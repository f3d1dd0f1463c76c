//! Telling systemd how the daemon is doing (`Type=notify`, sd_notify(3)).
//!
//! - `READY=1` once the buffer is open (or known unavailable and retrying)
//!   and the API listens, and again after a reload;
//! - `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253 and newer refuse a
//!   reload notification without it) when `SIGHUP` arrives;
//! - `STATUS=` one line for `systemctl status` ([`status_line`]):
//!   `3/3 meters up · backlog 0 · fleet ok`;
//! - `WATCHDOG=1` from the supervisor's main loop, every
//!   [`Notifier::watchdog_interval`] (half of `WatchdogSec=`), and only when
//!   [`Liveness::healthy`] says the parts that could hang are alive: a hung
//!   daemon stops pinging and systemd restarts it. A timer on a task of its
//!   own would keep pinging for a daemon that is stuck everywhere else;
//! - `STOPPING=1` when shutdown begins.
//!
//! A task that dies must never look healthy. The device tasks and the
//! uplink run their loops through [`catch_panic`]: a loop that panics (a
//! bug) is reported by its task — status `failed` with the panic as the last
//! error, one error line — and [`Liveness::healthy`] then says no, so the
//! watchdog ping stops and systemd restarts the daemon (`Restart=` brings
//! back every task; nothing else could).
//!
//! Without `NOTIFY_SOCKET` (started by hand, in tests, in the demo) every
//! call is a no-op.

use crate::buffer::BufferSlot;
use crate::device::{StatusCell, lock_status};
use crate::fanout::{Hub, LinkState};
use crate::uplink::{FleetState, FleetStatusCell};
use sd_notify::NotifyState;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often `STATUS=` is refreshed when no watchdog asks for faster ticks.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How long the buffer writer may go without committing anything while new
/// readings keep arriving before the daemon counts as hung. Far above a
/// slow commit (SQLite waits at most 5 s for a lock; an fsync on a tired SD
/// card takes seconds), far below "nobody noticed for an hour".
pub const WRITER_STALL: Duration = Duration::from_secs(60);

/// Sends notifications to the service manager, when there is one.
#[derive(Debug, Clone)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set: systemd (or a test) listens.
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
    /// A send failed already (reported once, not per tick).
    warned: Arc<AtomicBool>,
}

impl Notifier {
    /// A notifier for this process, from `NOTIFY_SOCKET`, `WATCHDOG_USEC`
    /// and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let var = |name| std::env::var(name).ok();
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty()),
            watchdog: watchdog_interval(
                var("WATCHDOG_USEC").as_deref(),
                var("WATCHDOG_PID").as_deref(),
                std::process::id(),
            ),
            warned: Arc::default(),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            enabled: false,
            watchdog: None,
            warned: Arc::default(),
        }
    }

    /// Whether anything is sent at all.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `READY=1`: start-up (or a reload) is complete.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `RELOADING=1` and `MONOTONIC_USEC=` in one message; follow with
    /// [`Notifier::ready`] when the reload is done (or refused).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STATUS=line`.
    pub fn status(&self, line: &str) {
        self.send(&[NotifyState::Status(line)]);
    }

    /// `WATCHDOG=1`: call only after [`Liveness::healthy`] said yes.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// How often to send `WATCHDOG=1`: half the period systemd gave this
    /// process, `None` when the watchdog is off.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often the supervisor's loop should tick: the watchdog interval,
    /// or [`STATUS_EVERY`] if that is shorter or there is no watchdog.
    pub fn tick_interval(&self) -> Duration {
        self.watchdog
            .map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY))
            .max(Duration::from_millis(10))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(error) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                %error,
                event = "notify_failed",
                "cannot notify systemd (NOTIFY_SOCKET); readiness and watchdog pings are lost, so systemd may restart slmd"
            );
        }
    }
}

/// Half of the watchdog period from `WATCHDOG_USEC`, when it applies to the
/// process `pid`: `WATCHDOG_PID` unset or equal to it (sd_watchdog_enabled(3)).
/// `None` when unset, zero or unparseable.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => {}
        Some(Ok(p)) if p == own_pid => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec) / 2)
}

/// What `STATUS=` summarises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCounts {
    /// Meters answering (`connected`).
    pub up: usize,
    /// Meters configured.
    pub total: usize,
    /// Records not yet accepted by the fleet; `None` while the buffer is
    /// not open.
    pub backlog: Option<u64>,
    /// What the uplink is doing (`Disabled` when `[fleet]` is off).
    pub fleet: FleetState,
}

/// The one-line status: `3/3 meters up · backlog 0 · fleet ok`.
///
/// The backlog is shown only when pushing is on (with the fleet off every
/// record is "unsent", which says nothing); `buffer not open` replaces it
/// while the buffer is unavailable. The fleet part is `fleet off` or the
/// fleet state in words (`fleet retrying`, `fleet auth failed`).
pub fn status_line(counts: &StatusCounts) -> String {
    let mut parts = Vec::with_capacity(3);
    parts.push(if counts.total == 0 {
        "no meters configured".to_owned()
    } else {
        format!("{}/{} meters up", counts.up, counts.total)
    });
    match (counts.backlog, counts.fleet) {
        (None, _) => parts.push("buffer not open".to_owned()),
        (Some(_), FleetState::Disabled) => {}
        (Some(n), _) => parts.push(format!("backlog {n}")),
    }
    parts.push(match counts.fleet {
        FleetState::Disabled => "fleet off".to_owned(),
        state => format!("fleet {}", state.as_str().replace('_', " ")),
    });
    parts.join(" · ")
}

/// The counts behind [`status_line`], read from the running parts.
pub fn status_counts(
    devices: &[StatusCell],
    buffer: &BufferSlot,
    fleet: &FleetStatusCell,
) -> StatusCounts {
    let up = devices
        .iter()
        .filter(|d| lock_status(d).state == LinkState::Connected)
        .count();
    let fleet = fleet
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .state;
    StatusCounts {
        up,
        total: devices.len(),
        backlog: buffer.get().map(|b| b.counters().unsent),
        fleet,
    }
}

/// A task's loop that ended by panicking, with the panic's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("panicked: {0}")]
pub struct TaskPanic(pub String);

/// Runs `work` as a tokio task of its own and waits for it: `Ok` when it
/// returns (or the runtime cancelled it at shutdown), its panic message when
/// it panicked. Dropping the returned future aborts `work`, so the caller's
/// task still owns its lifetime (shutdown, a reload that stops it).
///
/// This is how a long-running loop's panic becomes a state the rest of the
/// daemon can see, instead of a task that silently vanished while its
/// status still says `connected`.
pub async fn catch_panic<F>(work: F) -> Result<(), TaskPanic>
where
    F: Future<Output = ()> + Send + 'static,
{
    /// Aborts the spawned work when the caller stops waiting for it.
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let handle = tokio::spawn(work);
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => Err(TaskPanic(panic_message(e.into_panic()))),
        // Cancelled: the runtime is shutting down.
        Err(_) => Ok(()),
    }
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a
/// `String`).
fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(
            || "a panic without a message".to_owned(),
            |s| (*s).to_owned(),
        ),
    }
}

/// Whether the daemon is alive enough to deserve a `WATCHDOG=1`.
///
/// What could die, and how it is seen: a device task or the uplink whose
/// loop panicked marks its status failed ([`catch_panic`]); either is
/// unhealthy at once and for good (only a restart brings the task back).
/// The uplink is looked at when [`Liveness::with_fleet`] gave its status.
///
/// What could hang, and how each is checked:
/// - **The runtime**: the check runs on the supervisor's loop, an async
///   task; that it runs at all shows tokio is scheduling.
/// - **The hub's publish lock** (every device publishes under it): the
///   newest record of each device is read under that lock. A lock held
///   forever blocks this call, so the loop never reaches `WATCHDOG=1` —
///   a probe that hangs is as good as one that says no.
/// - **The device status cells**: read (locked) for their ids.
/// - **The buffer writer thread**: it must have committed something (or
///   dropped it, counted) within [`WRITER_STALL`] whenever records newer
///   than the last one it had committed are waiting. An idle writer (all
///   published records committed, or nothing new published since it last
///   moved) is healthy; so is one that reports a write error (disk full:
///   it is alive, retrying, and logged; a restart would not help). The
///   counters' lock is the writer's write lock, so a commit stuck inside
///   SQLite also blocks the probe.
///
/// A buffer that is not open yet (the disk refused it at start) is not a
/// hang: its thread is retrying, and the status line says so.
#[derive(Debug)]
pub struct Liveness {
    /// The writer's progress as last seen.
    writer: WriterWatch,
    /// The last answer, to log a change once.
    was_healthy: bool,
    /// The uplink's status, when there is one to watch: a failed uplink
    /// withholds the ping like a failed device task.
    fleet: Option<FleetStatusCell>,
}

/// Why the watchdog ping is withheld.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unhealthy {
    /// A device task's loop died (its id).
    DeviceTask(String),
    /// The uplink task's loop died.
    Uplink,
    /// The buffer writer has not moved while readings arrive.
    WriterStalled,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness::new()
    }
}

impl Liveness {
    /// A fresh check (the writer counts as having just made progress).
    pub fn new() -> Liveness {
        Liveness {
            writer: WriterWatch::new(Instant::now()),
            was_healthy: true,
            fleet: None,
        }
    }

    /// The same check, also withholding the ping once the uplink whose
    /// status is `fleet` has failed.
    pub fn with_fleet(mut self, fleet: FleetStatusCell) -> Liveness {
        self.fleet = Some(fleet);
        self
    }

    /// True when `WATCHDOG=1` may be sent. Logs when the answer changes.
    pub fn healthy(&mut self, hub: &Hub, devices: &[StatusCell], buffer: &BufferSlot) -> bool {
        let now = Instant::now();
        let mut failed_device = None;
        let newest = devices
            .iter()
            .filter_map(|cell| {
                let (id, failed) = {
                    let status = lock_status(cell);
                    (status.id.clone(), status.task_failed)
                };
                if failed && failed_device.is_none() {
                    failed_device = Some(id.clone());
                }
                hub.latest(&id).map(|record| record.seq)
            })
            .max();
        let uplink_failed = self.fleet.as_ref().is_some_and(|fleet| {
            fleet
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .state
                == FleetState::Failed
        });
        let writer_ok = match buffer.get() {
            None => {
                self.writer = WriterWatch::new(now);
                true
            }
            Some(buffer) => {
                let counters = buffer.counters();
                self.writer.observe(
                    now,
                    newest,
                    counters.next_seq,
                    counters.written.wrapping_add(counters.lost),
                    || buffer.status().write_error.is_some(),
                )
            }
        };
        let problem = match (failed_device, uplink_failed, writer_ok) {
            (Some(id), _, _) => Some(Unhealthy::DeviceTask(id)),
            (None, true, _) => Some(Unhealthy::Uplink),
            (None, false, false) => Some(Unhealthy::WriterStalled),
            (None, false, true) => None,
        };
        let healthy = problem.is_none();
        if healthy != self.was_healthy {
            match problem {
                None => tracing::warn!(
                    event = "watchdog_resumed",
                    "the buffer writer is committing again; watchdog pings resumed"
                ),
                Some(Unhealthy::DeviceTask(id)) => tracing::error!(
                    event = "watchdog_withheld",
                    device = %id,
                    "the task of meter {id} has failed; withholding the watchdog ping so systemd restarts slmd"
                ),
                Some(Unhealthy::Uplink) => tracing::error!(
                    event = "watchdog_withheld",
                    "the fleet uplink task has failed; withholding the watchdog ping so systemd restarts slmd"
                ),
                Some(Unhealthy::WriterStalled) => tracing::error!(
                    event = "watchdog_withheld",
                    stalled_s = self.writer.stalled_for(now).as_secs(),
                    "the buffer writer has committed nothing for {}s while readings arrive; \
                     withholding the watchdog ping so systemd restarts slmd",
                    self.writer.stalled_for(now).as_secs()
                ),
            }
            self.was_healthy = healthy;
        }
        healthy
    }
}

/// The buffer writer's progress between two checks.
#[derive(Debug, Clone)]
struct WriterWatch {
    /// Records the writer has dealt with (committed + counted lost), as last seen.
    accounted: Option<u64>,
    /// When it last moved (or was last seen idle).
    progressed_at: Instant,
    /// The newest published `seq` at that moment.
    newest_then: Option<u64>,
}

impl WriterWatch {
    fn new(now: Instant) -> WriterWatch {
        WriterWatch {
            accounted: None,
            progressed_at: now,
            newest_then: None,
        }
    }

    fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.progressed_at)
    }

    /// False when the writer has not moved for [`WRITER_STALL`] although
    /// records newer than any it has committed were published since it
    /// last moved, and it reports no write error.
    fn observe(
        &mut self,
        now: Instant,
        newest_published: Option<u64>,
        committed_next_seq: u64,
        accounted: u64,
        write_failing: impl FnOnce() -> bool,
    ) -> bool {
        let behind = newest_published.is_some_and(|seq| seq >= committed_next_seq);
        if self.accounted != Some(accounted) || !behind {
            // Moved, or nothing waits: either way it is not stuck.
            self.accounted = Some(accounted);
            self.progressed_at = now;
            self.newest_then = newest_published;
            return true;
        }
        // Nothing new since it last moved (e.g. the last record was lost to
        // a full queue and the meters went quiet): idle, not stuck.
        let new_since = newest_published > self.newest_then;
        if !new_since || self.stalled_for(now) < WRITER_STALL {
            return true;
        }
        write_failing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(up: usize, total: usize, backlog: Option<u64>, fleet: FleetState) -> String {
        status_line(&StatusCounts {
            up,
            total,
            backlog,
            fleet,
        })
    }

    #[test]
    fn the_status_line_reads_like_the_spec() {
        assert_eq!(
            counts(3, 3, Some(0), FleetState::Ok),
            "3/3 meters up · backlog 0 · fleet ok"
        );
        assert_eq!(
            counts(1, 3, Some(1234), FleetState::CatchingUp),
            "1/3 meters up · backlog 1234 · fleet catching up"
        );
        assert_eq!(
            counts(2, 2, Some(7), FleetState::AuthFailed),
            "2/2 meters up · backlog 7 · fleet auth failed"
        );
    }

    #[test]
    fn the_status_line_leaves_out_the_backlog_when_the_fleet_is_off() {
        assert_eq!(
            counts(1, 1, Some(5000), FleetState::Disabled),
            "1/1 meters up · fleet off"
        );
    }

    #[test]
    fn the_status_line_says_when_the_buffer_is_not_open() {
        assert_eq!(
            counts(0, 2, None, FleetState::Retrying),
            "0/2 meters up · buffer not open · fleet retrying"
        );
        assert_eq!(
            counts(0, 2, None, FleetState::Disabled),
            "0/2 meters up · buffer not open · fleet off"
        );
        assert_eq!(
            counts(0, 0, Some(0), FleetState::Disabled),
            "no meters configured · fleet off"
        );
    }

    #[test]
    fn the_watchdog_interval_is_half_the_period_for_this_process() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 42), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("42"), 42), half);
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 42),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn the_watchdog_is_off_when_unset_zero_garbled_or_meant_for_another_process() {
        assert_eq!(watchdog_interval(None, None, 42), None);
        assert_eq!(watchdog_interval(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval(Some("30s"), None, 42), None);
        assert_eq!(watchdog_interval(Some("-5"), None, 42), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("41"), 42), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), 42), None);
    }

    #[test]
    fn ticks_follow_the_watchdog_but_status_is_refreshed_anyway() {
        let mut n = Notifier::disabled();
        assert_eq!(n.tick_interval(), STATUS_EVERY);
        n.watchdog = Some(Duration::from_secs(1));
        assert_eq!(n.tick_interval(), Duration::from_secs(1));
        n.watchdog = Some(Duration::from_secs(15));
        assert_eq!(n.tick_interval(), STATUS_EVERY);
    }

    #[test]
    fn a_disabled_notifier_sends_nothing_and_never_pings() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready();
        n.reloading();
        n.status("x");
        n.watchdog();
        n.stopping();
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn a_writer_that_keeps_committing_is_healthy() {
        let t0 = Instant::now();
        let mut w = WriterWatch::new(t0);
        // 10 published, 5 committed: behind, but it moves every check.
        for (i, at) in (0..10u64).zip((0..).map(|s| t0 + Duration::from_secs(s * 30))) {
            assert!(w.observe(at, Some(10 + i), 6 + i, 5 + i, || false));
        }
    }

    #[test]
    fn a_writer_that_stops_while_readings_arrive_is_stuck_after_the_stall_limit() {
        let t0 = Instant::now();
        let mut w = WriterWatch::new(t0);
        assert!(w.observe(t0, Some(100), 101, 100, || false), "idle");
        // Readings keep arriving; nothing is committed any more.
        let later = t0 + WRITER_STALL / 2;
        assert!(w.observe(later, Some(130), 101, 100, || false), "not yet");
        let late = t0 + WRITER_STALL + Duration::from_secs(1);
        assert!(!w.observe(late, Some(160), 101, 100, || false), "stuck");
        // A writer that reports a write error is alive (disk full), not hung.
        assert!(w.observe(late, Some(160), 101, 100, || true));
        // Once it commits again, healthy at once.
        assert!(w.observe(late, Some(161), 150, 149, || false));
    }

    #[test]
    fn an_idle_writer_is_healthy_however_long_it_waits() {
        let t0 = Instant::now();
        let mut w = WriterWatch::new(t0);
        // Everything committed; meters silent for an hour.
        assert!(w.observe(t0, Some(50), 51, 50, || false));
        let hour = t0 + Duration::from_secs(3600);
        assert!(w.observe(hour, Some(50), 51, 50, || false));
        // No record at all yet.
        assert!(w.observe(hour, None, 1, 0, || false));
    }

    #[test]
    fn a_last_record_lost_to_a_full_queue_is_not_mistaken_for_a_hang() {
        let t0 = Instant::now();
        let mut w = WriterWatch::new(t0);
        // seq 80 was lost to a full sink: the writer committed up to 79 and
        // the meters went quiet. The gap never closes, but nothing new waits.
        assert!(w.observe(t0, Some(80), 80, 79, || false));
        let hour = t0 + Duration::from_secs(3600);
        assert!(w.observe(hour, Some(80), 80, 79, || false));
    }

    #[tokio::test]
    async fn liveness_with_no_buffer_is_healthy() {
        let hub = Hub::new(1);
        let slot = BufferSlot::default();
        let mut live = Liveness::new();
        assert!(live.healthy(&hub, &[], &slot));
    }

    #[tokio::test]
    async fn catch_panic_returns_the_panic_message() {
        assert_eq!(catch_panic(async {}).await, Ok(()));
        let e = catch_panic(async { panic!("boom {}", 42) }).await;
        assert_eq!(e, Err(TaskPanic("boom 42".to_owned())));
        let e = catch_panic(async { panic!("static") }).await;
        assert_eq!(e, Err(TaskPanic("static".to_owned())));
        let e = catch_panic(async { std::panic::panic_any(7u8) }).await;
        assert_eq!(e, Err(TaskPanic("a panic without a message".to_owned())));
    }

    #[tokio::test]
    async fn dropping_catch_panic_stops_the_work() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = catch_panic(async move {
            // Holds the sender until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        // Started and then dropped: the spawned work must end with it.
        let mut waiting = Box::pin(waiting);
        assert!(futures_poll_once(waiting.as_mut()).await.is_none());
        drop(waiting);
        assert!(rx.await.is_err(), "the sender was dropped by the abort");
    }

    /// Polls `fut` once; `Some` when it was ready.
    async fn futures_poll_once<F: Future + Unpin>(mut fut: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    /// A tcp meter that accepts connections and never answers.
    async fn silent_meter() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        address
    }

    #[tokio::test]
    async fn a_device_task_that_panics_reads_failed_and_stops_the_watchdog() {
        let address = silent_meter().await;
        let text = format!(
            "[[device]]\nid = \"north\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{address}\"\n"
        );
        let mut config = crate::config::parse(&text, std::path::Path::new("t.toml"))
            .expect("config")
            .devices
            .remove(0);
        // What validation now refuses: the first command's deadline
        // overflows the clock, as "200000000000000d" once did.
        config.answer_timeout = Duration::MAX;
        let hub = Hub::new(1);
        let mut feed = hub.subscribe();
        let task = crate::device::DeviceTask::new(config, hub.clone());
        let cell = task.status.clone();
        let slot = BufferSlot::default();
        let mut live = Liveness::new();
        assert!(live.healthy(&hub, std::slice::from_ref(&cell), &slot));

        // Returns once the loop has died.
        task.run(tokio_util::sync::CancellationToken::new()).await;

        let json = serde_json::to_value(&*lock_status(&cell)).expect("json");
        assert_eq!(json["state"], "failed", "{json}");
        let error = json["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("overflow"),
            "the panic is the last error: {error}"
        );
        assert!(error.contains("not read until slmd restarts"), "{error}");
        assert!(json.get("task_failed").is_none(), "{json}");
        // `slmd status` shows it.
        let table = crate::status::render(&serde_json::json!({"devices": [json]}));
        assert!(table.contains("north          failed"), "{table}");
        assert!(
            table.contains("the device task stopped on an internal error"),
            "{table}"
        );
        // Feeds see the meter down, with the reason.
        let mut saw_down = false;
        while let Ok(event) = feed.try_recv() {
            if let crate::fanout::Event::DeviceState { state, error, .. } = event {
                saw_down =
                    state == LinkState::Down && error.is_some_and(|e| e.contains("internal error"));
            }
        }
        assert!(saw_down, "the last state event says down");
        // And systemd is no longer told all is well.
        assert!(!live.healthy(&hub, std::slice::from_ref(&cell), &slot));
        assert!(
            !live.healthy(&hub, std::slice::from_ref(&cell), &slot),
            "for good"
        );
    }

    #[tokio::test]
    async fn an_uplink_that_panics_reads_failed_and_stops_the_watchdog() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = crate::config::Config::default();
        config.gateway.state_dir = dir.path().to_owned();
        let (buffer, _) =
            crate::buffer::open(crate::buffer::Settings::from_config(&config)).expect("buffer");
        let slot = BufferSlot::default();
        assert!(slot.set(buffer).is_ok());
        let fleet = crate::config::FleetConfig {
            enabled: true,
            url: Some("http://127.0.0.1:9".to_owned()),
            tokens: vec!["token-1".to_owned()],
            // Caught up at once (the buffer is empty); the next tick is
            // "now + interval", which overflows: the crash of issue 12.
            interval: Duration::MAX,
            ..crate::config::FleetConfig::default()
        };
        let (uplink, handle) =
            crate::uplink::Uplink::new(fleet, "gw".to_owned(), slot.clone()).expect("uplink");
        let hub = Hub::new(1);
        let mut live = Liveness::new().with_fleet(handle.status.clone());
        assert!(live.healthy(&hub, &[], &slot));

        uplink.run(tokio_util::sync::CancellationToken::new()).await;

        let json = serde_json::to_value(
            &*handle
                .status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .expect("json");
        assert_eq!(json["state"], "failed", "{json}");
        let error = json["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("overflow"), "{error}");
        assert!(
            error.contains("nothing is pushed until slmd restarts"),
            "{error}"
        );
        let table = crate::status::render(&serde_json::json!({"fleet": json}));
        assert!(table.contains("fleet   failed"), "{table}");
        let counts = status_counts(&[], &slot, &handle.status);
        assert_eq!(
            status_line(&counts),
            "no meters configured · backlog 0 · fleet failed"
        );
        assert!(!live.healthy(&hub, &[], &slot));
        // Without the fleet's status the same check cannot see it.
        assert!(Liveness::new().healthy(&hub, &[], &slot));
    }
}
