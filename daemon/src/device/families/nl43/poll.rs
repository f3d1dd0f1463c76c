//! The NL-43 driver: what to send when, and how answers become readings.
//!
//! When a link opens: `Type?`, `Serial Number?`, `System Version?` (the
//! meter's identity). Then one poll cycle: `DOD?` every `poll_interval`
//! (never sooner than 1 s after the previous `DOD?` was sent: the meter
//! answers `R+0004` otherwise), and every `status_interval` the slower
//! queries `Measure?`, `Pause?`, `Clock?` and `Battery Level?` in the gaps.
//! `DOD?` carries no time, so `device_time` is the last `Clock?` answer
//! carried forward on the gateway's monotonic clock.
//!
//! Streaming (`mode = "stream"`, or `live_mode = "stream"` while someone
//! watches): `DRD?` and then a line every 100 ms until the SUB byte; the
//! link is busy meanwhile, so the output is stopped for the status queries
//! and started again ([`super::stream`]).

use super::session::{Answer, Session};
use super::stream;
use crate::config::{DeviceConfig, Mode};
use crate::device::driver::{Identity, LinkError, Meter, MeterReading};
use crate::device::link::Link;
use crate::record::{Flag, MeterState};
use chrono::{DateTime, Utc};
use firmware_bridge::nl43::{
    BatteryLevel, Command, DodReading, Item, MeasureState, MeterClock, ResultCode,
    answer::{parse_on_off, parse_percentage},
};
use std::time::Duration;
use tokio::time::Instant;

/// The meter's clock as last read: its Unix time in ms, and when we read it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClockAnchor {
    meter_unix_ms: i64,
    at: Instant,
}

/// What one link's session has learnt so far.
pub(super) struct PollState {
    pub run_state: MeterState,
    pub clock: Option<ClockAnchor>,
    /// The meter clock's offset from the gateway's, read in this status
    /// round (taken by meter care).
    pub clock_offset_s: Option<i64>,
    /// `Sleep Mode?` as read on this link (`no_sleep` devices only).
    pub sleep_on: Option<bool>,
    /// The meter refused `Sleep Mode,Off` on this link.
    pub sleep_off_refused: bool,
}

/// The `DOD?` period: `live_poll_interval` while a live viewer watches the
/// meter, `poll_interval` otherwise, and never below the meter's 1 s.
fn dod_interval(cfg: &DeviceConfig, watched: bool) -> Duration {
    let wanted = match (watched, cfg.live_poll_interval) {
        (true, Some(live)) => live,
        _ => cfg.poll_interval,
    };
    wanted.max(Duration::from_secs(1))
}

/// Whether the meter should stream now.
pub(super) fn streaming(cfg: &DeviceConfig, watched: bool) -> bool {
    let mode = if watched { cfg.live_mode } else { cfg.mode };
    mode == Mode::Stream
}

/// Waits until the next `DOD?` is due after the one `sent`, or until the
/// mode should change. A viewer who arrives or leaves meanwhile moves the
/// deadline at once (a portal view should not wait out a slow period; an
/// abandoned one should not keep a cellular meter at the fast one).
async fn wait_for_next_dod(
    cfg: &DeviceConfig,
    sent: Instant,
    watchers: &mut tokio::sync::watch::Receiver<usize>,
) {
    loop {
        let watched = *watchers.borrow_and_update() > 0;
        if streaming(cfg, watched) {
            return;
        }
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

/// Talks to the meter over `link` until the link fails; returns why.
pub(super) async fn run(
    meter: &Meter<'_>,
    link: Link,
) -> Result<std::convert::Infallible, LinkError> {
    let cfg = meter.config();
    let mut session = Session::new(link, cfg.answer_timeout, cfg.command_gap);
    let session = &mut session;
    let mut state = PollState {
        run_state: MeterState::Unknown,
        clock: None,
        clock_offset_s: None,
        sleep_on: None,
        sleep_off_refused: false,
    };
    identify(meter, session).await?;
    let mut watchers = meter.watchers();
    let mut next_status = Instant::now();
    let mut last_dod_sent: Option<Instant> = None;
    loop {
        if Instant::now() >= next_status {
            query_status(meter, session, &mut state).await?;
            next_status = Instant::now() + cfg.status_interval;
        }
        let watched = *watchers.borrow_and_update() > 0;
        if streaming(cfg, watched) {
            stream::run_until(meter, session, &mut state, next_status, &mut watchers).await?;
            meter.noise(session.noise());
            continue;
        }
        if let Some(sent) = last_dod_sent {
            wait_for_next_dod(cfg, sent, &mut watchers).await;
            if streaming(cfg, *watchers.borrow() > 0) {
                continue;
            }
        }
        let sent = Instant::now();
        let answer = ask(meter, session, Item::Dod).await;
        // The session waits the command gap before sending; never earlier than `sent`.
        last_dod_sent = Some(session.last_sent().unwrap_or(sent));
        if let Some(line) = answer? {
            match DodReading::parse(&line) {
                Ok(dod) => meter.publish(dod_reading(&state, &dod)),
                Err(e) => meter.bad_answer("DOD?", &e),
            }
        }
        meter.noise(session.noise());
    }
}

/// Sends one request and returns its data line. `Ok(None)`: refused or
/// timed out but the link is still worth keeping. `Err`: reopen the link.
pub(super) async fn ask(
    meter: &Meter<'_>,
    session: &mut Session,
    item: Item,
) -> Result<Option<Vec<u8>>, LinkError> {
    match session.exchange(Command::Request(item), true).await {
        Ok(answer) => {
            meter.answered();
            match answer {
                Answer::Ok(line) => Ok(line),
                Answer::Refused(code) => {
                    meter.refused(item.name(), &code);
                    Ok(None)
                }
            }
        }
        Err(LinkError::Timeout(after)) => {
            meter.timed_out(&format!("{}?", item.name()), after)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The data line of `item`, trimmed, as text; `None` when refused or blank.
async fn ask_text(
    meter: &Meter<'_>,
    session: &mut Session,
    item: Item,
) -> Result<Option<String>, LinkError> {
    Ok(ask(meter, session, item).await?.and_then(|line| {
        let text = String::from_utf8_lossy(&line)
            .trim()
            .trim_start_matches('$')
            .trim()
            .to_owned();
        (!text.is_empty()).then_some(text)
    }))
}

/// `Type?`, `Serial Number?`, `System Version?`: who the meter is.
async fn identify(meter: &Meter<'_>, session: &mut Session) -> Result<(), LinkError> {
    let identity = Identity {
        model: ask_text(meter, session, Item::Type).await?,
        serial: ask_text(meter, session, Item::SerialNumber).await?,
        firmware: ask_text(meter, session, Item::SystemVersion).await?,
    };
    meter.identity(identity);
    Ok(())
}

pub(super) async fn query_status(
    meter: &Meter<'_>,
    session: &mut Session,
    state: &mut PollState,
) -> Result<(), LinkError> {
    let measuring = match ask(meter, session, Item::Measure).await? {
        Some(line) => match MeasureState::parse(&line) {
            Ok(m) => Some(m),
            Err(e) => {
                meter.bad_answer("Measure?", &e);
                None
            }
        },
        None => None,
    };
    let paused = match measuring {
        Some(MeasureState::Measuring) => ask(meter, session, Item::Pause)
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
    meter.run_state(state.run_state);
    if let Some(line) = ask(meter, session, Item::Clock).await? {
        match MeterClock::parse(&line) {
            Ok(clock) => {
                let offset = i64::from(meter.config().utc_offset.seconds());
                let meter_unix_ms = (clock.local_epoch_seconds() - offset) * 1000;
                state.clock = Some(ClockAnchor {
                    meter_unix_ms,
                    at: Instant::now(),
                });
                let offset = (meter_unix_ms - meter.now().timestamp_millis()) / 1000;
                meter.clock_skew(offset);
                state.clock_offset_s = Some(offset);
            }
            Err(e) => meter.bad_answer("Clock?", &e),
        }
    }
    if let Some(line) = ask(meter, session, Item::BatteryLevel).await? {
        match BatteryLevel::parse(&line) {
            Ok(level) => meter.battery(level.as_str().to_owned()),
            Err(e) => meter.bad_answer("Battery Level?", &e),
        }
    }
    if let Some(line) = ask(meter, session, Item::SdCardPercentage).await? {
        match parse_percentage(&line) {
            Ok(percent) => meter.sd_free_percent(percent),
            Err(e) => meter.bad_answer("SD Card Percentage?", &e),
        }
    }
    super::care::tend(meter, session, state, measuring).await?;
    if state.run_state == MeterState::Stopped {
        // Meter care may have started the measurement.
        state.run_state = meter.current_run_state();
    }
    Ok(())
}

/// Sends a setting (`Name,param`): `Some(Ok)` accepted, `Some(Err)`
/// refused with its result code, `None` no answer in time (the link is
/// still worth keeping). `Err`: reopen the link.
pub(super) async fn ask_setting(
    meter: &Meter<'_>,
    session: &mut Session,
    item: Item,
    param: &str,
) -> Result<Option<Result<(), ResultCode>>, LinkError> {
    match session.exchange(Command::Set(item, param), false).await {
        Ok(answer) => {
            meter.answered();
            Ok(Some(match answer {
                Answer::Ok(_) => Ok(()),
                Answer::Refused(code) => Err(code),
            }))
        }
        Err(LinkError::Timeout(after)) => {
            meter.timed_out(&format!("{},{param}", item.name()), after)?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Metric names of the main channel, in the meter's field order. The LN
/// slots carry the meter's default percentiles (L5, L10, L50, L90, L95).
const LN_NAMES: [&str; 5] = ["l5", "l10", "l50", "l90", "l95"];

/// A `Deci` as dB.
pub(super) fn db(v: Option<firmware_bridge::Deci>) -> Option<f64> {
    v.map(|d| d.db())
}

fn dod_reading(state: &PollState, dod: &DodReading) -> MeterReading {
    let main = dod.main();
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
    MeterReading {
        device_time: state.clock.and_then(device_time),
        metrics,
        state: state.run_state,
        flags,
    }
}

/// The meter's time now, from its last `Clock?` answer, in whole seconds.
pub(super) fn device_time(anchor: ClockAnchor) -> Option<DateTime<Utc>> {
    let elapsed = i64::try_from(anchor.at.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
    let meter_ms = anchor.meter_unix_ms.saturating_add(elapsed);
    let whole_seconds = meter_ms.div_euclid(1000) * 1000;
    DateTime::<Utc>::from_timestamp_millis(whole_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(extra: &str) -> DeviceConfig {
        let text = format!(
            "[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:2255\"\n{extra}"
        );
        match crate::config::parse(&text, std::path::Path::new("t.toml")) {
            Ok(mut c) => c.devices.remove(0),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn streaming_follows_mode_and_live_mode() {
        let always = device("mode = \"stream\"");
        assert!(streaming(&always, false) && streaming(&always, true));
        let watched = device("live_mode = \"stream\"");
        assert!(!streaming(&watched, false) && streaming(&watched, true));
        let never = device("");
        assert!(!streaming(&never, false) && !streaming(&never, true));
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
