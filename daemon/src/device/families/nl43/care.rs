//! NL-43 meter care (SPEC §4), after each round of status queries:
//!
//! - `no_sleep`: `Sleep Mode?` once per link; when on, `Sleep Mode,Off`.
//!   The meter refuses sleep-mode changes while measuring (`R+0004`), so a
//!   refusal is retried when it is next found stopped.
//! - `sync_clock`: `Clock,YYYY/MM/DD HH:MM:SS` (meter-local time) when the
//!   `Clock?` just read is off by more than 2 s, at most once a day, and
//!   only while the meter is stopped ([`CLOCK_SET_WHILE_MEASURING`]).
//! - `keep_measuring`: `Measure,Start` when `Measure?` said `Stop`, after
//!   the two above (a meter back from a power cut gets its sleep mode and
//!   clock fixed before its measurement starts, so the measurement is not
//!   split by them).

use super::poll::{PollState, ask_setting};
use super::session::Session;
use crate::device::driver::{LinkError, Meter};
use firmware_bridge::nl43::{Item, MeasureState, MeterClock};

/// Whether the meter takes a clock setting while it measures. The notes
/// do not say; setting the clock of a meter that stores a measurement by
/// time could split it, which SPEC §4 forbids, so slmd waits for a moment
/// the meter is stopped. [guess]: one constant if hardware proves it safe.
pub const CLOCK_SET_WHILE_MEASURING: bool = false;

/// Meter care after a status round. `measuring`: what `Measure?` said
/// (`None`: no answer this round, so nothing is changed).
pub(super) async fn tend(
    meter: &Meter<'_>,
    session: &mut Session,
    state: &mut PollState,
    measuring: Option<MeasureState>,
) -> Result<(), LinkError> {
    let Some(measuring) = measuring else {
        return Ok(());
    };
    let stopped = measuring == MeasureState::Stopped;
    let care = meter.config().care;
    if care.no_sleep && state.sleep_on != Some(false) {
        turn_sleep_off(meter, session, state, stopped).await?;
    }
    if let Some(offset) = state.clock_offset_s.take() {
        let may_set = stopped || CLOCK_SET_WHILE_MEASURING;
        if meter.clock_sync_due(offset, may_set) {
            set_clock(meter, session, offset).await?;
        }
    }
    if stopped && meter.found_stopped() {
        match ask_setting(
            meter,
            session,
            Item::Measure,
            MeasureState::Measuring.word(),
        )
        .await?
        {
            Some(Ok(())) => meter.measurement_started(),
            Some(Err(code)) => meter.measurement_start_refused(&code),
            None => {}
        }
    }
    Ok(())
}

/// `Sleep Mode?` (once per link), then `Sleep Mode,Off` when it is on:
/// while measuring only once per link (the meter refuses it then), while
/// stopped at every status round until it takes.
async fn turn_sleep_off(
    meter: &Meter<'_>,
    session: &mut Session,
    state: &mut PollState,
    stopped: bool,
) -> Result<(), LinkError> {
    if state.sleep_on.is_none() {
        let Some(line) = super::poll::ask(meter, session, Item::SleepMode).await? else {
            return Ok(());
        };
        match firmware_bridge::nl43::answer::parse_on_off(&line) {
            Ok(on) => {
                meter.sleep_mode(on);
                state.sleep_on = Some(on);
            }
            Err(e) => {
                meter.bad_answer("Sleep Mode?", &e);
                return Ok(());
            }
        }
    }
    if state.sleep_on != Some(true) || (state.sleep_off_refused && !stopped) {
        return Ok(());
    }
    match ask_setting(meter, session, Item::SleepMode, "Off").await? {
        Some(Ok(())) => {
            state.sleep_on = Some(false);
            meter.sleep_turned_off();
        }
        Some(Err(code)) => {
            state.sleep_off_refused = true;
            meter.sleep_off_refused(&code);
        }
        None => {}
    }
    Ok(())
}

/// `Clock,…` with the gateway's time in the meter's zone.
async fn set_clock(meter: &Meter<'_>, session: &mut Session, offset: i64) -> Result<(), LinkError> {
    let local = meter.now().timestamp() + i64::from(meter.config().utc_offset.seconds());
    let Some(clock) = MeterClock::from_local_epoch_seconds(local) else {
        return Ok(());
    };
    let text = clock.to_string();
    match ask_setting(meter, session, Item::Clock, &text).await? {
        Some(Ok(())) => meter.clock_set(offset),
        Some(Err(code)) => meter.clock_set_refused(&code),
        None => {}
    }
    Ok(())
}
