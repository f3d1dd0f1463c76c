//! The seam between the device task and a meter family.
//!
//! A family (a folder under `device/families/`) provides a [`Family`]: its
//! configuration rules, what to do with an open link until it fails
//! ([`Family::run`]: identify, then poll or listen, turning answers into
//! readings), and a short probe for `slmd check` ([`Family::probe`]). It
//! gets a [`Meter`]: the narrow handle through which it reports readings,
//! link state, identity, health and counters. It never sees the hub, the
//! buffer, the uplink, the API or MQTT, and none of them ever names a
//! family.
//!
//! The device task ([`super::DeviceTask`]) owns what every family shares:
//! opening the link, one link at a time, reconnecting with backoff,
//! failure logging, and the `down` state when a link ends.

use super::health::HealthValue;
use super::link::Link;
use super::{
    CLOCK_SYNC_EVERY, CLOCK_SYNC_THRESHOLD, CLOCK_TOLERANCE, DeviceTask, MAX_TIMEOUTS, lock_status,
};
use crate::config::{DeviceConfig, FamilyRules, SyncClock};
use crate::fanout::LinkState;
use crate::record::{Flag, MeterState, Reading};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// A future a family returns; boxed once per link or probe, so the trait
/// stays object-safe and the families can sit in one list.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Boxes a family's loop for [`Family::run`]: it runs until its link
/// fails, so it only ever ends with the reason.
pub fn until_link_fails<'a>(
    work: impl Future<Output = Result<std::convert::Infallible, LinkError>> + Send + 'a,
) -> BoxFuture<'a, LinkError> {
    Box::pin(async move {
        match work.await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    })
}

/// A meter family's driver.
pub trait Family: Send + Sync + 'static {
    /// Name, defaults, keys and limits, for configuration.
    fn rules(&self) -> &'static FamilyRules;

    /// Talks to the meter over `link` until the link fails or must be
    /// reopened; returns why. Identity is read first, where the family has
    /// it; readings go to [`Meter::publish`].
    fn run<'a>(&'a self, link: Link, meter: &'a Meter<'a>) -> BoxFuture<'a, LinkError>;

    /// `slmd check`: asks the meter who it is and what it is doing, within
    /// a few seconds, and says so in one line (e.g. `answers, NL-43 serial
    /// 00412345, measuring`); the error says what failed.
    fn probe<'a>(
        &'a self,
        link: Link,
        config: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// Why a link ended (or an exchange on it failed). Every variant means the
/// link should be treated as suspect.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No complete answer within the answer timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A push meter sent nothing for this long.
    #[error("no data from the meter for {0:?}")]
    Silent(Duration),
    /// The link closed (the meter or the serial device went away).
    #[error("link closed by the meter")]
    Closed,
    /// Reading or writing the link failed.
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// A command could not be encoded (a bug in the caller).
    #[error("cannot encode command: {0}")]
    Encode(firmware_bridge::Error),
}

/// Who the meter is, as it says when the link opens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Model (`NL-43`, `XL2`, `SVAN 971`).
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
}

impl Identity {
    /// `NL-43 serial 00412345 firmware 1.2`, leaving out what is unknown.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(model) = &self.model {
            parts.push(model.clone());
        }
        if let Some(serial) = &self.serial {
            parts.push(format!("serial {serial}"));
        }
        if let Some(firmware) = &self.firmware {
            parts.push(format!("firmware {firmware}"));
        }
        parts.join(" ")
    }
}

/// A reading as a family reports it: the task adds the device id,
/// `received_at` and the `clock_unsynced` flag.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterReading {
    /// The meter's own time for this reading, when it reports one.
    pub device_time: Option<DateTime<Utc>>,
    /// Metric name → value in dB; `None` for blank or out-of-range fields.
    pub metrics: Vec<(&'static str, Option<f64>)>,
    /// Run state.
    pub state: MeterState,
    /// `overload`, `under_range`, `replayed` as the meter says.
    pub flags: Vec<Flag>,
}

/// Line noise seen on one link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NoiseCounters {
    /// Lines or frames skipped while looking for an answer (echo, junk).
    pub skipped_lines: u64,
    /// Lines or frames longer than the framer's capacity, dropped.
    pub overlong_lines: u64,
    /// Bytes of stale input discarded before sending a command.
    pub stale_bytes: u64,
}

/// The handle a family reports through, for one link.
pub struct Meter<'a> {
    /// The task: status, hub, clock, failure log.
    task: &'a DeviceTask,
    /// Answers missed in a row on this link.
    timeouts_in_row: AtomicU32,
    /// Whether the meter has answered on this link yet.
    answered: AtomicBool,
    /// Whether this link produced a reading (the task then resets its
    /// reconnect backoff).
    produced: AtomicBool,
}

impl<'a> Meter<'a> {
    pub(super) fn new(task: &'a DeviceTask) -> Meter<'a> {
        Meter {
            task,
            timeouts_in_row: AtomicU32::new(0),
            answered: AtomicBool::new(false),
            produced: AtomicBool::new(false),
        }
    }

    /// The device's configuration.
    pub fn config(&self) -> &DeviceConfig {
        &self.task.config
    }

    /// The device id.
    pub fn id(&self) -> &Arc<str> {
        &self.task.id
    }

    /// The gateway's wall clock now.
    pub fn now(&self) -> DateTime<Utc> {
        self.task.clock.now()
    }

    /// How many live viewers watch this meter (for "faster while watched").
    pub fn watchers(&self) -> tokio::sync::watch::Receiver<usize> {
        self.task.hub.watchers(&self.task.id)
    }

    /// The meter answered: the link is `connected`, and missed answers are
    /// forgiven.
    pub fn answered(&self) {
        self.timeouts_in_row.store(0, Ordering::Relaxed);
        let first = !self.answered.swap(true, Ordering::Relaxed);
        if first || lock_status(&self.task.status).state != LinkState::Connected {
            self.task.set_state(LinkState::Connected, None, None);
        }
    }

    /// No answer to `what` within `after`: the meter is `down` at once;
    /// after [`MAX_TIMEOUTS`] in a row the link is given up (`Err`), since
    /// one missed answer over cellular is not worth a reconnect.
    pub fn timed_out(&self, what: &str, after: Duration) -> Result<(), LinkError> {
        lock_status(&self.task.status).timeouts += 1;
        let in_row = self.timeouts_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if in_row >= MAX_TIMEOUTS {
            return Err(LinkError::Timeout(after));
        }
        self.task.set_state(
            LinkState::Down,
            Some(format!(
                "no answer to {what} within {:.1}s",
                after.as_secs_f64()
            )),
            Some("retrying on the same link".into()),
        );
        Ok(())
    }

    /// The meter refused `what` (it is busy, or does not know it).
    pub fn refused(&self, what: &str, why: &dyn std::fmt::Display) {
        lock_status(&self.task.status).refused_commands += 1;
        tracing::debug!(device = %self.task.id, event = "command_refused", command = what, %why, "meter refused");
    }

    /// An answer to `what` did not parse: counted, never turned into values.
    pub fn bad_answer(&self, what: &str, why: &dyn std::fmt::Display) {
        lock_status(&self.task.status).bad_answers += 1;
        tracing::debug!(device = %self.task.id, event = "bad_answer", command = what, error = %why, "answer rejected");
    }

    /// Line noise on this link so far.
    pub fn noise(&self, noise: NoiseCounters) {
        let mut status = lock_status(&self.task.status);
        status.skipped_lines = noise.skipped_lines;
        status.overlong_lines = noise.overlong_lines;
        status.stale_bytes = noise.stale_bytes;
    }

    /// Who the meter says it is; logged when it changes.
    pub fn identity(&self, identity: Identity) {
        let changed = {
            let mut status = lock_status(&self.task.status);
            let changed = status.identity.as_ref() != Some(&identity);
            status.identity = Some(identity.clone());
            changed
        };
        if changed {
            tracing::info!(
                device = %self.task.id,
                event = "meter_identified",
                "meter {}: {} ({})",
                self.task.id,
                identity.summary(),
                self.task.config.protocol.rules().title
            );
        }
    }

    /// Device health: the battery as the meter words it.
    pub fn battery(&self, battery: String) {
        lock_status(&self.task.status).health.battery = HealthValue::Read(battery);
    }

    /// Device health: free space on the meter's SD card, percent.
    pub fn sd_free_percent(&self, percent: u8) {
        lock_status(&self.task.status).health.sd_free_percent = HealthValue::Read(percent);
    }

    /// Device health: the meter's clock minus the gateway's, seconds.
    pub fn clock_skew(&self, seconds: i64) {
        lock_status(&self.task.status).health.clock_offset_s = HealthValue::Read(seconds);
    }

    /// The run state as last reported (or set by meter care).
    pub fn current_run_state(&self) -> MeterState {
        lock_status(&self.task.status).run_state
    }

    /// The meter's run state, from a status query or a reading. A change
    /// is announced (the fleet heartbeat goes at once); `unknown` never
    /// replaces a known state.
    pub fn run_state(&self, state: MeterState) {
        if state == MeterState::Unknown {
            return;
        }
        let previous = std::mem::replace(&mut lock_status(&self.task.status).run_state, state);
        self.run_state_changed(previous, state);
    }

    /// Announces a run state that differs from `previous`, and ends a
    /// stopped episode when the meter measures again.
    fn run_state_changed(&self, previous: MeterState, state: MeterState) {
        if previous == state {
            return;
        }
        self.task.hub.meter_changed();
        if state == MeterState::Measuring {
            let mut care = self.task.care();
            if care.stopped_episode && !care.started_by_us {
                tracing::info!(
                    device = %self.task.id,
                    event = "meter_measuring",
                    "meter {}: measuring again",
                    self.task.id
                );
            }
            care.stopped_episode = false;
            care.started_by_us = false;
            care.start_refused_logged = false;
        }
    }

    /// The meter says it is not measuring. True when the family should
    /// start it now (`keep_measuring`); without it, the journal says so
    /// once per episode.
    pub fn found_stopped(&self) -> bool {
        self.run_state(MeterState::Stopped);
        if self.task.config.care.keep_measuring {
            return true;
        }
        let mut care = self.task.care();
        if !care.stopped_episode {
            care.stopped_episode = true;
            tracing::warn!(
                device = %self.task.id,
                event = "meter_stopped",
                "meter {} is not measuring: nothing is integrated until it is started on the meter (keep_measuring = true starts it again by itself)",
                self.task.id
            );
        }
        false
    }

    /// `keep_measuring`: the meter accepted the start of a measurement.
    /// The journal says so once per episode.
    pub fn measurement_started(&self) {
        {
            let mut care = self.task.care();
            if !care.stopped_episode {
                tracing::warn!(
                    device = %self.task.id,
                    event = "meter_restarted",
                    "meter {} was found stopped (a power cut or a key press); started the measurement again (keep_measuring)",
                    self.task.id
                );
            }
            care.stopped_episode = true;
            care.started_by_us = true;
        }
        lock_status(&self.task.status).care.measure_restarts += 1;
        self.run_state(MeterState::Measuring);
    }

    /// `keep_measuring`: the meter refused to start; tried again at the
    /// next status query, logged once per episode.
    pub fn measurement_start_refused(&self, why: &dyn std::fmt::Display) {
        lock_status(&self.task.status).refused_commands += 1;
        let mut care = self.task.care();
        care.stopped_episode = true;
        if !care.start_refused_logged {
            care.start_refused_logged = true;
            tracing::warn!(
                device = %self.task.id,
                event = "meter_start_refused",
                "meter {} is stopped and refused to start a measurement ({why}); trying again at every status query",
                self.task.id
            );
        }
    }

    /// `no_sleep`: the meter's sleep mode as read.
    pub fn sleep_mode(&self, on: bool) {
        lock_status(&self.task.status).care.sleep_mode_on = Some(on);
    }

    /// `no_sleep`: the meter accepted turning sleep mode off.
    pub fn sleep_turned_off(&self) {
        lock_status(&self.task.status).care.sleep_mode_on = Some(false);
        tracing::info!(
            device = %self.task.id,
            event = "meter_sleep_off",
            "meter {}: sleep mode was on, which turns its link off; turned it off (no_sleep)",
            self.task.id
        );
    }

    /// `no_sleep`: the meter refused to turn sleep mode off (busy
    /// measuring); tried again when it is stopped, logged once per link.
    pub fn sleep_off_refused(&self, why: &dyn std::fmt::Display) {
        lock_status(&self.task.status).refused_commands += 1;
        self.set_care_pending(Some(format!(
            "sleep mode is on and the meter refused to turn it off ({why}); tried again when it is not measuring"
        )));
        let mut care = self.task.care();
        if !care.sleep_refused_logged {
            care.sleep_refused_logged = true;
            tracing::warn!(
                device = %self.task.id,
                event = "meter_sleep_refused",
                "meter {} has sleep mode on and refused to turn it off ({why}); its link may drop when it sleeps; slmd tries again when it is not measuring",
                self.task.id
            );
        }
    }

    /// `sync_clock`: whether to set the meter's clock now, given its
    /// offset from the gateway's. `may_set_now`: the meter accepts a clock
    /// setting in its present state without splitting a measurement (the
    /// family knows). What waits is shown in status and logged once.
    pub fn clock_sync_due(&self, offset_s: i64, may_set_now: bool) -> bool {
        if self.task.config.care.sync_clock != SyncClock::Daily {
            return false;
        }
        if offset_s.unsigned_abs() <= CLOCK_SYNC_THRESHOLD.as_secs() {
            self.set_care_pending(None);
            return false;
        }
        let now = tokio::time::Instant::now();
        let last = self.task.care().last_clock_sync;
        if let Some(at) = last {
            let next = at + CLOCK_SYNC_EVERY;
            if now < next {
                let hours = (next - now).as_secs().div_ceil(3600);
                self.set_care_pending(Some(format!(
                    "meter clock {offset_s:+} s off; set again in about {hours} h (at most once a day)"
                )));
                return false;
            }
        }
        if !self.task.clock_trusted && !crate::clock::system_synchronised() {
            self.care_waits(
                format!(
                    "meter clock {offset_s:+} s off, but the gateway clock is not synchronised (no NTP?); the meter clock is not set from it ([gateway] clock_trusted = true trusts it)"
                ),
                "meter_clock_not_set",
            );
            return false;
        }
        if !may_set_now {
            self.care_waits(
                format!(
                    "meter clock {offset_s:+} s off; set when the meter is not measuring (setting it now would split the measurement)"
                ),
                "meter_clock_waits",
            );
            return false;
        }
        true
    }

    /// `sync_clock`: the meter accepted the new time; it was `offset_s`
    /// off. Counted, logged, and not done again for a day.
    pub fn clock_set(&self, offset_s: i64) {
        {
            let mut care = self.task.care();
            care.last_clock_sync = Some(tokio::time::Instant::now());
            care.pending_logged = None;
        }
        {
            let mut status = lock_status(&self.task.status);
            status.care.clock_syncs += 1;
            status.care.last_clock_sync_at = Some(self.now());
            status.care.pending = None;
            status.health.clock_offset_s = HealthValue::Read(0);
        }
        tracing::info!(
            device = %self.task.id,
            event = "meter_clock_set",
            offset_s,
            "meter {}: its clock was {offset_s:+} s off the gateway's; set it to the gateway's time (sync_clock; at most once a day)",
            self.task.id
        );
    }

    /// `sync_clock`: the meter refused the new time; tried again at the
    /// next status query.
    pub fn clock_set_refused(&self, why: &dyn std::fmt::Display) {
        lock_status(&self.task.status).refused_commands += 1;
        self.care_waits(
            format!(
                "the meter refused the clock setting ({why}); tried again at the next status query"
            ),
            "meter_clock_refused",
        );
    }

    /// Shows what care waits for in status.
    fn set_care_pending(&self, pending: Option<String>) {
        lock_status(&self.task.status).care.pending = pending;
    }

    /// Shows what care waits for, and logs it once (until it changes kind).
    fn care_waits(&self, what: String, event: &'static str) {
        let first = {
            let mut care = self.task.care();
            let first = care.pending_logged != Some(event);
            care.pending_logged = Some(event);
            first
        };
        if first {
            tracing::warn!(device = %self.task.id, event, "meter {}: {what}", self.task.id);
        }
        self.set_care_pending(Some(what));
    }

    /// Hands a reading to the hub (never waits) and counts it.
    pub fn publish(&self, reading: MeterReading) {
        let received_at = self.task.clock.now();
        let MeterReading {
            device_time,
            metrics,
            state,
            mut flags,
        } = reading;
        if let Some(t) = device_time {
            let skew = (t - received_at).num_milliseconds().unsigned_abs();
            if u128::from(skew) > CLOCK_TOLERANCE.as_millis() && !flags.contains(&Flag::Replayed) {
                flags.push(Flag::ClockUnsynced);
            }
        }
        self.task.hub.publish(Reading {
            device: self.task.id.clone(),
            received_at,
            device_time,
            metrics,
            state,
            flags,
        });
        // One lock per reading: the counters and the run state together.
        let previous = {
            let mut status = lock_status(&self.task.status);
            status.readings_total += 1;
            status.last_reading_at = Some(received_at);
            (state != MeterState::Unknown).then(|| std::mem::replace(&mut status.run_state, state))
        };
        if let Some(previous) = previous {
            self.run_state_changed(previous, state);
        }
        self.produced.store(true, Ordering::Relaxed);
    }

    /// Whether this link produced a reading.
    pub(super) fn produced(&self) -> bool {
        self.produced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Hub;

    fn task(care: &str) -> DeviceTask {
        let text = format!(
            "[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:2255\"\n{care}"
        );
        let config = match crate::config::parse(&text, std::path::Path::new("t.toml")) {
            Ok(mut c) => c.devices.remove(0),
            Err(e) => panic!("{e}"),
        };
        DeviceTask::new(config, Hub::new(1)).with_clock_trusted(true)
    }

    fn pending(task: &DeviceTask) -> Option<String> {
        lock_status(&task.status).care.pending.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_meter_clock_is_set_at_most_once_a_day_when_off_by_more_than_2_s() {
        let task = task("sync_clock = \"daily\"");
        let meter = Meter::new(&task);
        assert!(!meter.clock_sync_due(2, true), "2 s is within tolerance");
        assert!(!meter.clock_sync_due(-2, true));
        assert!(meter.clock_sync_due(3, true));
        assert!(meter.clock_sync_due(-30, true));
        meter.clock_set(-30);
        assert_eq!(lock_status(&task.status).care.clock_syncs, 1);
        // Drifted off again within the day: waits, and says so.
        tokio::time::advance(Duration::from_secs(23 * 3600)).await;
        assert!(!meter.clock_sync_due(-5, true));
        let waits = pending(&task).unwrap_or_default();
        assert!(waits.contains("at most once a day"), "{waits}");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(meter.clock_sync_due(-5, true), "a day later");
        // A later link of the same task remembers the last setting.
        meter.clock_set(-5);
        let next_link = Meter::new(&task);
        assert!(!next_link.clock_sync_due(-9, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_meter_clock_waits_for_a_moment_the_meter_takes_it() {
        let task = task("sync_clock = \"daily\"");
        let meter = Meter::new(&task);
        assert!(!meter.clock_sync_due(40, false));
        let waits = pending(&task).unwrap_or_default();
        assert!(waits.contains("split the measurement"), "{waits}");
        assert!(meter.clock_sync_due(40, true));
        // Back within tolerance: nothing waits.
        assert!(!meter.clock_sync_due(1, true));
        assert_eq!(pending(&task), None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_sync_clock_the_meter_clock_is_never_set() {
        let task = task("");
        let meter = Meter::new(&task);
        assert!(!meter.clock_sync_due(3600, true));
        assert_eq!(pending(&task), None);
    }

    #[test]
    fn a_start_is_asked_for_only_with_keep_measuring_and_counted() {
        let plain = task("");
        assert!(!Meter::new(&plain).found_stopped());
        assert_eq!(lock_status(&plain.status).run_state, MeterState::Stopped);
        let kept = task("keep_measuring = true");
        let meter = Meter::new(&kept);
        assert!(meter.found_stopped());
        meter.measurement_started();
        let status = lock_status(&kept.status);
        assert_eq!(status.care.measure_restarts, 1);
        assert_eq!(status.run_state, MeterState::Measuring);
    }
}
