//! The NL-43 driver: what to send when, and how answers become readings.
//!
//! One poll cycle: `DOD?` every `poll_interval` (never sooner than 1 s after
//! the previous `DOD?` was sent: the meter answers `R+0004` otherwise), and
//! every `status_interval` the slower queries `Measure?`, `Pause?`, `Clock?`
//! and `Battery Level?` in the gaps. `DOD?` carries no time, so
//! `device_time` is the last `Clock?` answer carried forward on the
//! gateway's monotonic clock.

use super::session::{Answer, ExchangeError, Session};
use super::{CLOCK_TOLERANCE, DeviceTask, MAX_TIMEOUTS, lock_status};
use crate::fanout::LinkState;
use crate::record::{Flag, MeterState, Reading};
use backon::ExponentialBackoff;
use chrono::{DateTime, Utc};
use firmware_bridge::nl43::{
    BatteryLevel, Command, DodReading, Item, MeasureState, MeterClock, answer::parse_on_off,
};
use std::time::Duration;
use tokio::time::Instant;

/// The meter's clock as last read: its Unix time in ms, and when we read it.
#[derive(Debug, Clone, Copy)]
struct ClockAnchor {
    meter_unix_ms: i64,
    at: Instant,
}

/// What one link's session has learnt so far.
struct PollState {
    run_state: MeterState,
    clock: Option<ClockAnchor>,
    consecutive_timeouts: u32,
    answered: bool,
}

/// The `DOD?` period: `live_poll_interval` while a live viewer watches the
/// meter, `poll_interval` otherwise, and never below the meter's 1 s.
fn dod_interval(cfg: &crate::config::DeviceConfig, watched: bool) -> Duration {
    let wanted = match (watched, cfg.live_poll_interval) {
        (true, Some(live)) => live,
        _ => cfg.poll_interval,
    };
    wanted.max(Duration::from_secs(1))
}

/// Waits until the next `DOD?` is due after the one `sent`. A viewer who
/// arrives or leaves meanwhile moves the deadline at once (a portal view
/// should not wait out a slow period; an abandoned one should not keep a
/// cellular meter at the fast one).
async fn wait_for_next_dod(
    cfg: &crate::config::DeviceConfig,
    sent: Instant,
    watchers: &mut tokio::sync::watch::Receiver<usize>,
) {
    loop {
        let watched = *watchers.borrow_and_update() > 0;
        let due = sent + dod_interval(cfg, watched);
        tokio::select! {
            // Due: ask.
            () = tokio::time::sleep_until(due) => return,
            // Viewers came or went: recompute the deadline.
            changed = watchers.changed() => {
                if changed.is_err() {
                    // The hub is gone (shutting down): keep the deadline.
                    tokio::time::sleep_until(due).await;
                    return;
                }
            }
        }
    }
}

/// Polls the meter over `link` until the link fails; returns why.
pub async fn poll(
    task: &DeviceTask,
    link: super::link::Link,
    backoff: &mut ExponentialBackoff,
) -> ExchangeError {
    let cfg = &task.config;
    let mut session = Session::new(link, cfg.answer_timeout, cfg.command_gap);
    let mut state = PollState {
        run_state: MeterState::Unknown,
        clock: None,
        consecutive_timeouts: 0,
        answered: false,
    };
    let mut watchers = task.hub.watchers(&task.id);
    let mut next_status = Instant::now();
    let mut last_dod_sent: Option<Instant> = None;
    loop {
        if Instant::now() >= next_status {
            if let Err(e) = query_status(task, &mut session, &mut state).await {
                return e;
            }
            next_status = Instant::now() + cfg.status_interval;
        }
        if let Some(sent) = last_dod_sent {
            wait_for_next_dod(cfg, sent, &mut watchers).await;
        }
        let sent = Instant::now();
        let answer = ask(task, &mut session, &mut state, Item::Dod).await;
        // The session waits the command gap before sending; never earlier than `sent`.
        last_dod_sent = Some(session.last_sent().unwrap_or(sent));
        match answer {
            Err(e) => return e,
            Ok(Some(line)) => match DodReading::parse(&line) {
                Ok(dod) => {
                    let reading = to_reading(task, &state, &dod);
                    task.hub.publish(reading);
                    let mut status = lock_status(&task.status);
                    status.readings_total += 1;
                    status.last_reading_at = Some(task.clock.now());
                    drop(status);
                    task.reset_backoff(backoff);
                }
                Err(e) => {
                    lock_status(&task.status).bad_answers += 1;
                    tracing::debug!(device = %task.id, event = "bad_answer", error = %e, "DOD answer rejected");
                }
            },
            Ok(None) => {}
        }
        sync_noise(task, &session);
    }
}

/// Sends one request and returns its data line. `Ok(None)`: refused or
/// timed out but the link is still worth keeping. `Err`: reopen the link.
async fn ask(
    task: &DeviceTask,
    session: &mut Session,
    state: &mut PollState,
    item: Item,
) -> Result<Option<Vec<u8>>, ExchangeError> {
    match session.exchange(Command::Request(item), true).await {
        Ok(answer) => {
            state.consecutive_timeouts = 0;
            if !state.answered || lock_status(&task.status).state != LinkState::Connected {
                state.answered = true;
                task.set_state(LinkState::Connected, None, None);
            }
            match answer {
                Answer::Ok(line) => Ok(line),
                Answer::Refused(code) => {
                    lock_status(&task.status).refused_commands += 1;
                    tracing::debug!(device = %task.id, event = "command_refused", command = item.name(), %code, "meter refused");
                    Ok(None)
                }
            }
        }
        Err(ExchangeError::Timeout(after)) => {
            state.consecutive_timeouts += 1;
            lock_status(&task.status).timeouts += 1;
            let error = format!(
                "no answer to {}? within {:.1}s",
                item.name(),
                after.as_secs_f64()
            );
            if state.consecutive_timeouts >= MAX_TIMEOUTS {
                return Err(ExchangeError::Timeout(after));
            }
            task.set_state(
                LinkState::Down,
                Some(error),
                Some("retrying on the same link".into()),
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn query_status(
    task: &DeviceTask,
    session: &mut Session,
    state: &mut PollState,
) -> Result<(), ExchangeError> {
    let measuring = match ask(task, session, state, Item::Measure).await? {
        Some(line) => match MeasureState::parse(&line) {
            Ok(m) => Some(m),
            Err(_) => {
                lock_status(&task.status).bad_answers += 1;
                None
            }
        },
        None => None,
    };
    let paused = match measuring {
        Some(MeasureState::Measuring) => ask(task, session, state, Item::Pause)
            .await?
            .and_then(|line| parse_on_off(&line).ok()),
        _ => None,
    };
    state.run_state = match (measuring, paused) {
        (Some(MeasureState::Measuring), Some(true)) => MeterState::Paused,
        (Some(MeasureState::Measuring), _) => MeterState::Measuring,
        (Some(MeasureState::Stopped), _) => MeterState::Stopped,
        (None, _) => state.run_state,
    };
    if let Some(line) = ask(task, session, state, Item::Clock).await? {
        match MeterClock::parse(&line) {
            Ok(clock) => {
                let offset = i64::from(task.config.utc_offset.seconds());
                let meter_unix_ms = (clock.local_epoch_seconds() - offset) * 1000;
                state.clock = Some(ClockAnchor {
                    meter_unix_ms,
                    at: Instant::now(),
                });
                let skew = (meter_unix_ms - task.clock.now().timestamp_millis()) / 1000;
                lock_status(&task.status).clock_skew_seconds = Some(skew);
            }
            Err(_) => lock_status(&task.status).bad_answers += 1,
        }
    }
    if let Some(line) = ask(task, session, state, Item::BatteryLevel).await? {
        match BatteryLevel::parse(&line) {
            Ok(level) => lock_status(&task.status).battery = Some(level.as_str().to_owned()),
            Err(_) => lock_status(&task.status).bad_answers += 1,
        }
    }
    Ok(())
}

fn sync_noise(task: &DeviceTask, session: &Session) {
    let mut status = lock_status(&task.status);
    status.skipped_lines = session.noise.skipped_lines;
    status.overlong_lines = session.noise.overlong_lines;
    status.stale_bytes = session.noise.stale_bytes;
}

/// Metric names of the main channel, in the meter's field order. The LN
/// slots carry the meter's default percentiles (L5, L10, L50, L90, L95).
const LN_NAMES: [&str; 5] = ["l5", "l10", "l50", "l90", "l95"];

fn to_reading(task: &DeviceTask, state: &PollState, dod: &DodReading) -> Reading {
    let received_at = task.clock.now();
    let main = dod.main();
    let db = |v: Option<firmware_bridge::Deci>| v.map(|d| d.db());
    let mut metrics = vec![
        ("lp", db(main.lp)),
        ("leq", db(main.leq)),
        ("le", db(main.le)),
        ("lmax", db(main.lmax)),
        ("lmin", db(main.lmin)),
    ];
    metrics.extend(LN_NAMES.iter().zip(main.ln).map(|(n, v)| (*n, db(v))));
    metrics.push(("lpeak", db(main.lpeak)));
    let mut flags = Vec::new();
    if main.overload == Some(true) {
        flags.push(Flag::Overload);
    }
    if main.under_range == Some(true) {
        flags.push(Flag::UnderRange);
    }
    let device_time = state.clock.map(|anchor| device_time(anchor, received_at));
    if let Some(t) = device_time {
        let skew = (t - received_at).num_milliseconds().unsigned_abs();
        if u128::from(skew) > CLOCK_TOLERANCE.as_millis() {
            flags.push(Flag::ClockUnsynced);
        }
    }
    Reading {
        device: task.id.clone(),
        received_at,
        device_time,
        metrics,
        state: state.run_state,
        flags,
    }
}

/// The meter's time now, from its last `Clock?` answer, in whole seconds.
fn device_time(anchor: ClockAnchor, received_at: DateTime<Utc>) -> DateTime<Utc> {
    let elapsed = i64::try_from(anchor.at.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
    let meter_ms = anchor.meter_unix_ms.saturating_add(elapsed);
    let whole_seconds = meter_ms.div_euclid(1000) * 1000;
    let base = DateTime::<Utc>::from_timestamp_millis(whole_seconds);
    base.unwrap_or(received_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(extra: &str) -> crate::config::DeviceConfig {
        let text = format!(
            "[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:2255\"\n{extra}"
        );
        match crate::config::parse(&text, std::path::Path::new("t.toml")) {
            Ok(mut c) => c.devices.remove(0),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_live_interval_applies_only_while_watched_and_never_below_a_second() {
        let cfg = device("poll_interval = \"60s\"\nlive_poll_interval = \"1s\"");
        assert_eq!(dod_interval(&cfg, false), Duration::from_secs(60));
        assert_eq!(dod_interval(&cfg, true), Duration::from_secs(1));
        let plain = device("poll_interval = \"5s\"");
        assert_eq!(dod_interval(&plain, true), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_viewer_arriving_mid_wait_brings_the_next_poll_forward() {
        let cfg = device("poll_interval = \"60s\"\nlive_poll_interval = \"1s\"");
        let (viewers, mut watchers) = tokio::sync::watch::channel(0usize);
        let sent = Instant::now();
        let wait = tokio::spawn(async move {
            wait_for_next_dod(&cfg, sent, &mut watchers).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!wait.is_finished(), "unwatched: waits the full minute");
        viewers.send_replace(1);
        let done = wait.await.expect("wait task");
        assert_eq!(
            done - sent,
            Duration::from_secs(10),
            "due at once: 1 s had passed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_viewer_leaving_mid_wait_restores_the_slow_period() {
        let cfg = device("poll_interval = \"30s\"\nlive_poll_interval = \"5s\"");
        let (viewers, mut watchers) = tokio::sync::watch::channel(1usize);
        let sent = Instant::now();
        let wait = tokio::spawn(async move {
            wait_for_next_dod(&cfg, sent, &mut watchers).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        viewers.send_replace(0);
        let done = wait.await.expect("wait task");
        assert_eq!(done - sent, Duration::from_secs(30));
    }
}
