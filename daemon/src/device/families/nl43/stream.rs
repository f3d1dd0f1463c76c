//! NL-43 continuous output: `DRD?`, then a line every 100 ms until the
//! host sends the single byte SUB (0x1A).
//!
//! While the output runs the link is busy, so it runs only until the next
//! status queries are due (or until nobody watches, with `live_mode =
//! "stream"`), then is stopped with SUB; the command gap counts from the
//! SUB, and lines still in flight are discarded as stale input before the
//! next command. Each line gives Lp, Leq, Lmax, Lmin and Lpeak of the main
//! channel (the fields after them are not confirmed and are not used).

use super::poll::{PollState, db, device_time, streaming};
use super::session::Session;
use crate::device::driver::{LinkError, Meter, MeterReading};
use firmware_bridge::nl43::{DRD_STOP, DrdLine, Item};
use tokio::time::Instant;

/// Streams until `until`, the link fails, or (with `live_mode = "stream"`)
/// the last viewer leaves; stops the output before returning `Ok`.
pub(super) async fn run_until(
    meter: &Meter<'_>,
    session: &mut Session,
    state: &mut PollState,
    until: Instant,
    watchers: &mut tokio::sync::watch::Receiver<usize>,
) -> Result<(), LinkError> {
    // `DRD?` is answered by R+0000 and no data line: the lines follow.
    match ask_started(meter, session).await? {
        true => {}
        false => {
            // Refused or missed: try again after the poll interval.
            tokio::time::sleep(meter.config().poll_interval).await;
            return Ok(());
        }
    }
    let cfg = meter.config();
    let ended = loop {
        if Instant::now() >= until || !streaming(cfg, *watchers.borrow_and_update() > 0) {
            break Ok(());
        }
        let deadline = Instant::now() + cfg.answer_timeout;
        let port = session.port();
        let line = tokio::select! {
            line = port.next_unit_until(deadline) => line,
            // Status due: stop now, not at the next line.
            () = tokio::time::sleep_until(until) => Ok(Some(Vec::new())),
            // A viewer came or went: recheck the mode.
            _ = watchers.changed() => Ok(Some(Vec::new())),
        };
        match line {
            Err(e) => break Err(e),
            Ok(None) => {
                if let Err(e) = meter.timed_out("DRD? output", cfg.answer_timeout) {
                    break Err(e);
                }
            }
            Ok(Some(line)) if line.is_empty() => {}
            Ok(Some(line)) => match DrdLine::parse(&line) {
                Ok(drd) => {
                    meter.answered();
                    meter.publish(MeterReading {
                        device_time: state.clock.and_then(device_time),
                        metrics: vec![
                            ("lp", db(drd.lp)),
                            ("leq", db(drd.leq)),
                            ("lmax", db(drd.lmax)),
                            ("lmin", db(drd.lmin)),
                            ("lpeak", db(drd.lpeak)),
                        ],
                        state: state.run_state,
                        flags: Vec::new(),
                    });
                }
                Err(e) => meter.bad_answer("DRD? line", &e),
            },
        }
    };
    let port = session.port();
    let stopped = port.write_now(&[DRD_STOP]).await;
    // The next command waits the gap from the SUB.
    port.answer_ended();
    ended.and(stopped)
}

/// Sends `DRD?`; whether the output started.
async fn ask_started(meter: &Meter<'_>, session: &mut Session) -> Result<bool, LinkError> {
    use super::session::Answer;
    use firmware_bridge::nl43::Command;
    match session.exchange(Command::Request(Item::Drd), false).await {
        Ok(Answer::Ok(_)) => {
            meter.answered();
            Ok(true)
        }
        Ok(Answer::Refused(code)) => {
            meter.answered();
            meter.refused("DRD?", &code);
            Ok(false)
        }
        Err(LinkError::Timeout(after)) => {
            meter.timed_out("DRD?", after)?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
