//! A meter's repeating failures, logged as episodes instead of per try.
//!
//! A meter that cannot be reached is retried with backoff for as long as it
//! takes — hundreds of tries an hour. A field tech reading
//! `journalctl -u slmd` on a phone wants to see three things: when it
//! started failing and why, that it is still failing (now and then, with
//! how many tries since when), and when it came back. So an episode logs:
//!
//! - `meter_down` (warn) at the first failure: the reason and the next step;
//! - `meter_still_failing` (warn) at a failure once every
//!   [`SUMMARY_EVERY`] since the last line about it:
//!   `meter m1 still failing: connection refused (14 tries since 10:02); retrying in 30.0s`;
//! - `meter_recovered` (info) when it answers again:
//!   `meter m1 back after 14 tries since 10:02`.
//!
//! Every other try is logged at debug only. A meter that flaps (answers,
//! fails, answers…) stays in the same episode until it has answered without
//! a failure for [`STABLE_AFTER`]: after a logged `meter_recovered`, its
//! next failures are counted silently until a summary is due, so a flapping
//! meter costs at most about two lines per [`SUMMARY_EVERY`]. A meter that
//! answers at start logs `meter_connected` once.
//!
//! Test and tuning knob: the environment variable
//! `SLMD_FAILURE_SUMMARY_EVERY` (a duration as in the config: `"5s"`,
//! `"10m"`), read once per process, replaces [`SUMMARY_EVERY`] (and caps
//! [`STABLE_AFTER`]). [`super::DeviceTask::with_failure_summary`] sets it
//! per task.

use chrono::{DateTime, Local, Utc};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often a meter that keeps failing is summarised in the log.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5 * 60);

/// How long a meter must answer without a failure before a new failure
/// counts as a new episode (logged at once) rather than more of the last.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The environment variable that overrides [`SUMMARY_EVERY`].
pub const SUMMARY_ENV: &str = "SLMD_FAILURE_SUMMARY_EVERY";

/// The summary period for this process: `SLMD_FAILURE_SUMMARY_EVERY` if
/// set and valid (read once), else [`SUMMARY_EVERY`].
pub fn summary_every() -> Duration {
    static EVERY: OnceLock<Duration> = OnceLock::new();
    *EVERY.get_or_init(|| {
        let Some(value) = std::env::var_os(SUMMARY_ENV) else {
            return SUMMARY_EVERY;
        };
        let value = value.to_string_lossy();
        match crate::config::parse_duration(&value) {
            Ok(every) if !every.is_zero() => every,
            Ok(_) => {
                tracing::warn!("{SUMMARY_ENV}={value:?} ignored: must be above zero");
                SUMMARY_EVERY
            }
            Err(e) => {
                tracing::warn!("{SUMMARY_ENV} ignored: {e}");
                SUMMARY_EVERY
            }
        }
    })
}

/// One meter's failure episodes.
#[derive(Debug)]
pub struct FailureLog {
    /// The meter, named in every line.
    device: Arc<str>,
    /// How often a continuing episode is summarised.
    every: Duration,
    /// The meter answered at least once since the task started.
    ever_connected: bool,
    /// The episode in progress, if any.
    episode: Option<Episode>,
}

/// A run of failures, from the first to the meter answering steadily again.
#[derive(Debug)]
struct Episode {
    /// Wall-clock time of the first failure (shown as `since 10:02`).
    since: DateTime<Utc>,
    /// Monotonic time of the first failure.
    started: Instant,
    /// Failures so far (links that could not be opened or were lost).
    tries: u64,
    /// When the last line about this episode was logged.
    logged_at: Instant,
    /// The last line logged said "failing" (so an answer is news).
    reported_down: bool,
    /// Since when the meter answers again, while it does.
    up_since: Option<Instant>,
    /// Times it answered again within this episode.
    recoveries: u64,
}

impl FailureLog {
    /// No failures yet; summaries every `every`.
    pub fn new(device: Arc<str>, every: Duration) -> FailureLog {
        FailureLog {
            device,
            every: every.max(Duration::from_millis(1)),
            ever_connected: false,
            episode: None,
        }
    }

    /// Changes the summary period.
    pub fn set_summary_every(&mut self, every: Duration) {
        self.every = every.max(Duration::from_millis(1));
    }

    /// Whether an episode is in progress (failing, or not yet stable).
    pub fn is_failing(&self) -> bool {
        self.episode.as_ref().is_some_and(|e| e.up_since.is_none())
    }

    fn stable_after(&self) -> Duration {
        STABLE_AFTER.min(self.every)
    }

    /// A failure: `error` is why, `next_step` what happens now. `new_try`:
    /// the failure ended a try (a link that could not be opened or was
    /// lost); a missed answer on a link kept open counts only when it
    /// starts an episode.
    pub fn failed(
        &mut self,
        now: Instant,
        wall: DateTime<Utc>,
        error: &str,
        next_step: &str,
        new_try: bool,
    ) {
        let stable_after = self.stable_after();
        let ended = self.episode.as_ref().is_some_and(|e| {
            e.up_since
                .is_some_and(|up| now.saturating_duration_since(up) >= stable_after)
        });
        if ended {
            self.episode = None;
        }
        let device = &*self.device;
        let Some(episode) = &mut self.episode else {
            tracing::warn!(
                device = %device,
                event = "meter_down",
                error,
                "meter {device} down: {error}; {next_step}"
            );
            self.episode = Some(Episode {
                since: wall,
                started: now,
                tries: 1,
                logged_at: now,
                reported_down: true,
                up_since: None,
                recoveries: 0,
            });
            return;
        };
        if new_try || episode.up_since.is_some() {
            episode.tries += 1;
        }
        episode.up_since = None;
        if now.saturating_duration_since(episode.logged_at) < self.every {
            tracing::debug!(
                device = %device,
                tries = episode.tries,
                "meter {device} failed again: {error}; {next_step}"
            );
            return;
        }
        let since = clock_time(episode.since);
        let tries = plural(episode.tries, "try", "tries");
        let flaps = match episode.recoveries {
            0 => String::new(),
            n => format!(", back briefly {}", plural(n, "time", "times")),
        };
        tracing::warn!(
            device = %device,
            event = "meter_still_failing",
            error,
            tries = episode.tries,
            since = %episode.since.to_rfc3339(),
            "meter {device} still failing: {error} ({tries} since {since}{flaps}); {next_step}"
        );
        episode.logged_at = now;
        episode.reported_down = true;
    }

    /// The meter answered on a fresh link (or after missed answers).
    pub fn answered(&mut self, now: Instant) {
        let device = &*self.device;
        let first = !self.ever_connected;
        self.ever_connected = true;
        let Some(episode) = &mut self.episode else {
            if first {
                tracing::info!(
                    device = %device,
                    event = "meter_connected",
                    "meter {device} connected"
                );
            }
            return;
        };
        if episode.up_since.is_some() {
            return;
        }
        episode.up_since = Some(now);
        episode.recoveries += 1;
        if !episode.reported_down {
            tracing::debug!(device, "meter {device} answering again");
            return;
        }
        let tries = plural(episode.tries, "try", "tries");
        let since = clock_time(episode.since);
        let elapsed = human(now.saturating_duration_since(episode.started));
        tracing::info!(
            device = %device,
            event = "meter_recovered",
            tries = episode.tries,
            since = %episode.since.to_rfc3339(),
            "meter {device} back after {tries} since {since} ({elapsed})"
        );
        episode.logged_at = now;
        episode.reported_down = false;
    }
}

/// `1 try`, `14 tries`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `10:02` today, `2025-03-01 10:02` on another day, in local time (as
/// `journalctl` shows its timestamps).
fn clock_time(at: DateTime<Utc>) -> String {
    let local = at.with_timezone(&Local);
    if local.date_naive() == Local::now().date_naive() {
        local.format("%H:%M").to_string()
    } else {
        local.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// `42s`, `3m 20s`, `2h 5m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// Captures what the log says, as text lines, for one test thread.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("capture").clone();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    fn logged(run: impl FnOnce()) -> Vec<String> {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, run);
        capture.lines()
    }

    const EVERY: Duration = Duration::from_secs(300);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_meter_failing_for_an_hour_logs_start_summaries_and_end() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let lines = logged(|| {
            let mut log = FailureLog::new(Arc::from("m1"), EVERY);
            log.answered(t0);
            // One try every 2 s for an hour: 1800 tries.
            for i in 0..1800 {
                log.failed(
                    at(t0, 2 * i),
                    wall,
                    "connection refused",
                    "retrying in 2.0s",
                    true,
                );
            }
            log.answered(at(t0, 3600));
        });
        let count = |event: &str| lines.iter().filter(|l| l.contains(event)).count();
        assert_eq!(count("meter_connected"), 1, "{lines:#?}");
        assert_eq!(count("meter_down"), 1, "{lines:#?}");
        // A summary at most every 5 minutes: 11 in the hour after the first.
        assert_eq!(count("meter_still_failing"), 11, "{lines:#?}");
        assert_eq!(count("meter_recovered"), 1, "{lines:#?}");
        assert_eq!(lines.len(), 14, "{lines:#?}");
        let last = lines.last().expect("a line");
        assert!(
            last.contains("meter m1 back after 1800 tries since"),
            "{last}"
        );
        let summary = lines
            .iter()
            .find(|l| l.contains("still failing"))
            .expect("a summary");
        assert!(summary.contains("meter m1 still failing: connection refused ("));
        assert!(summary.contains(" tries since "), "{summary}");
        assert!(summary.contains("retrying in 2.0s"), "{summary}");
        assert!(summary.contains("m1"), "{summary}");
    }

    #[test]
    fn a_flapping_meter_costs_about_two_lines_per_period() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let lines = logged(|| {
            let mut log = FailureLog::new(Arc::from("m2"), EVERY);
            // Answers for 5 s, fails, for an hour (every 10 s).
            for cycle in 0..360 {
                log.answered(at(t0, cycle * 10));
                log.failed(
                    at(t0, cycle * 10 + 5),
                    wall,
                    "link lost",
                    "retrying in 1.0s",
                    true,
                );
            }
        });
        let count = |event: &str| lines.iter().filter(|l| l.contains(event)).count();
        assert_eq!(count("meter_down"), 1, "{lines:#?}");
        assert!(count("meter_recovered") <= 13, "{lines:#?}");
        assert!(count("meter_still_failing") <= 12, "{lines:#?}");
        assert!(
            lines.len() <= 2 * 12 + 2,
            "{} lines: {lines:#?}",
            lines.len()
        );
        assert!(
            lines.iter().any(|l| l.contains("back briefly")),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_failure_after_a_stable_spell_is_a_new_episode_logged_at_once() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let lines = logged(|| {
            let mut log = FailureLog::new(Arc::from("m3"), EVERY);
            log.failed(t0, wall, "timeout", "retrying", true);
            log.answered(at(t0, 10));
            // Up for two minutes (beyond STABLE_AFTER), then down again.
            log.failed(at(t0, 130), wall, "refused", "retrying", true);
            log.answered(at(t0, 140));
        });
        let events: Vec<&str> = lines
            .iter()
            .map(|l| {
                if l.contains("meter_down") {
                    "down"
                } else if l.contains("meter_recovered") {
                    "back"
                } else {
                    "other"
                }
            })
            .collect();
        assert_eq!(events, ["down", "back", "down", "back"], "{lines:#?}");
        assert!(lines[1].contains("back after 1 try since"), "{}", lines[1]);
    }

    #[test]
    fn a_missed_answer_on_a_kept_link_starts_an_episode_but_is_not_a_try() {
        let t0 = Instant::now();
        let wall = Utc::now();
        let mut log = FailureLog::new(Arc::from("m4"), EVERY);
        log.failed(t0, wall, "no answer", "retrying on the same link", false);
        assert!(log.is_failing());
        log.failed(
            at(t0, 5),
            wall,
            "no answer",
            "retrying on the same link",
            false,
        );
        log.failed(at(t0, 10), wall, "no answer", "reopening", true);
        assert_eq!(log.episode.as_ref().map(|e| e.tries), Some(2));
        log.answered(at(t0, 20));
        assert!(!log.is_failing());
    }

    #[test]
    fn durations_and_counts_read_naturally() {
        assert_eq!(plural(1, "try", "tries"), "1 try");
        assert_eq!(plural(14, "try", "tries"), "14 tries");
        assert_eq!(human(Duration::from_secs(42)), "42s");
        assert_eq!(human(Duration::from_secs(200)), "3m 20s");
        assert_eq!(human(Duration::from_secs(7500)), "2h 5m");
    }
}
