//! Svantek SVAN 971 / 971A / 973 / 958A / 979 and SV 200A: `#<fn>,…;`
//! frames over USB, RS-232 or Bluetooth serial, polled.
//!
//! When a link opens: `#1,U?;`, `#1,N?;` and `#1,W?;` (unit type, serial
//! number, firmware: the letters are a guess, one constant each in the
//! codec) for the identity; a setting the unit does not answer stays
//! unknown. Each poll: `#2,i,s;` (results of the current cycle with the
//! run-state flag); `#2,?;` (no results yet) answers without a reading.
//! Frames are cut on `;`: no line terminator is sent or expected.
//!
//! No clock or health query is known for these units
//! (`protocols/svantek.md`): records carry no `device_time`.

use crate::config::{
    CareRules, DeviceConfig, FamilyRules, LevelInput, Parity, SerialFraming, Support,
};
use crate::device::driver::{
    BoxFuture, Family, Identity, LinkError, Meter, MeterReading, until_link_fails,
};
use crate::device::health::HealthRules;
use crate::device::link::Link;
use crate::device::port::Port;
use crate::record::{Flag, MeterState};
use firmware_bridge::svantek::{
    Aver, FrameSplitter, MAX_FRAME, Request, Results, ResultsReply, RunState, parse_setting_reply,
    request::{FIRMWARE, SERIAL_NUMBER, UNIT_TYPE},
};
use std::time::Duration;
use tokio::time::Instant;

/// The Svantek family.
pub struct Svantek;

/// The results request of every poll.
const POLL: Request = Request::Results {
    aver: Aver::Current,
    state: true,
};

static RULES: FamilyRules = FamilyRules {
    name: "svantek",
    title: "Svantek SVAN 97x / SV 200A",
    polled: true,
    streams: false,
    min_poll: (
        Duration::from_secs(1),
        " (faster is not confirmed on these units)",
    ),
    default_poll: Duration::from_secs(1),
    min_command_gap: (Duration::ZERO, ""),
    default_command_gap: Duration::from_millis(50),
    default_answer_timeout: Duration::from_secs(2),
    serial: SerialFraming {
        baud: 115_200,
        data_bits: 8,
        stop_bits: 1,
        parity: Parity::None,
    },
    bauds: &[9600, 19_200, 38_400, 57_600, 115_200],
    care: CareRules {
        keep_measuring: Support::No(
            "the notes give no start command (writing a guessed control code could change another setting); its run state is still shown",
        ),
        no_sleep: Support::No("its remote protocol has no sleep setting we know of"),
        sync_clock: Support::No("its remote protocol has no clock setting we know of"),
    },
    health: HealthRules {
        battery: false,
        sd_free: false,
        clock: false,
    },
    // `#2`'s Leq runs over the meter's own integration cycle, which does not match the poll: Lp is the finest level.
    level_input: LevelInput {
        metric: firmware_bridge::metric::LP,
        per_cycle: false,
    },
};

impl Family for Svantek {
    fn rules(&self) -> &'static FamilyRules {
        &RULES
    }

    fn run<'a>(&'a self, link: Link, meter: &'a Meter<'a>) -> BoxFuture<'a, LinkError> {
        until_link_fails(run(meter, link))
    }

    fn probe<'a>(
        &'a self,
        link: Link,
        config: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(probe(link, config))
    }
}

/// A port that cuts `;` frames.
type Frames = Port<FrameSplitter<MAX_FRAME>>;

/// Sends `request` and returns the first reply frame of the same function
/// (`#1` or `#2`), skipping and counting others; `None` on timeout.
async fn ask(port: &mut Frames, request: Request) -> Result<Option<Vec<u8>>, LinkError> {
    let mut wire = heapless::String::<32>::new();
    request.encode(&mut wire).map_err(LinkError::Encode)?;
    port.send(wire.as_bytes()).await?;
    let function: &[u8] = match request {
        Request::Results { .. } => b"#2",
        Request::Setting(_) | Request::Settings => b"#1",
    };
    let deadline = port.answer_deadline();
    let frame = loop {
        match port.next_unit_until(deadline).await? {
            None => break None,
            Some(frame)
                if frame.starts_with(function)
                    && matches!(frame.get(function.len()), None | Some(b',' | b';')) =>
            {
                break Some(frame);
            }
            Some(_) => port.noise.skipped_lines += 1,
        }
    };
    port.answer_ended();
    Ok(frame)
}

/// One setting's text (`U971` → `971` for letter `U`), if answered.
async fn setting(
    meter: &Meter<'_>,
    port: &mut Frames,
    letter: u8,
) -> Result<Option<String>, LinkError> {
    match ask(port, Request::Setting(letter)).await? {
        None => {
            meter.timed_out(&format!("#1,{}?;", char::from(letter)), port.answer_timeout)?;
            Ok(None)
        }
        Some(frame) => {
            meter.answered();
            match parse_setting_reply(&frame, letter) {
                Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
                Ok(_) => Ok(None),
                Err(e) => {
                    meter.bad_answer("#1", &e);
                    Ok(None)
                }
            }
        }
    }
}

async fn run(meter: &Meter<'_>, link: Link) -> Result<std::convert::Infallible, LinkError> {
    let cfg = meter.config();
    let mut port = Port::new(
        link,
        FrameSplitter::new(),
        cfg.answer_timeout,
        cfg.command_gap,
    );
    let model = setting(meter, &mut port, UNIT_TYPE).await?;
    let serial = setting(meter, &mut port, SERIAL_NUMBER).await?;
    let firmware = setting(meter, &mut port, FIRMWARE).await?;
    meter.identity(Identity {
        model: model.map(|unit| format!("SVAN {unit}")),
        serial,
        firmware,
    });
    let mut next_poll = Instant::now();
    loop {
        tokio::time::sleep_until(next_poll).await;
        next_poll = Instant::now() + cfg.poll_interval;
        match ask(&mut port, POLL).await? {
            None => meter.timed_out("#2", cfg.answer_timeout)?,
            Some(frame) => {
                meter.answered();
                match Results::parse(&frame) {
                    Ok(ResultsReply::Results(results)) => {
                        let reading = reading(&results);
                        if reading.state == MeterState::Stopped {
                            // Said once per episode; no start command is
                            // known, so keep_measuring is refused for it.
                            meter.found_stopped();
                        }
                        meter.publish(reading);
                    }
                    Ok(ResultsReply::NoResults) => {}
                    Err(e) => meter.bad_answer("#2", &e),
                }
            }
        }
        meter.noise(port.noise);
    }
}

/// The results as a reading.
fn reading(results: &Results) -> MeterReading {
    let metrics = results
        .metrics()
        .map(|(name, level)| (name, level.map(|l| l.db())))
        .collect();
    let mut flags = Vec::new();
    if results.overload == Some(true) {
        flags.push(Flag::Overload);
    }
    if results.under_range == Some(true) {
        flags.push(Flag::UnderRange);
    }
    let state = match results.run {
        Some(RunState::Running) => MeterState::Measuring,
        Some(RunState::Paused) => MeterState::Paused,
        Some(RunState::Stopped) => MeterState::Stopped,
        None => MeterState::Unknown,
    };
    MeterReading {
        device_time: None,
        metrics,
        state,
        flags,
    }
}

/// The unit type and a results request.
async fn probe(link: Link, device: &DeviceConfig) -> Result<String, String> {
    let mut port = Port::new(
        link,
        FrameSplitter::new(),
        device.answer_timeout,
        device.command_gap,
    );
    let unit = match ask(&mut port, Request::Setting(UNIT_TYPE)).await {
        Err(e) => return Err(format!("link open, but {e}")),
        Ok(None) => {
            return Err(format!(
                "link open, but no answer to #1,U?; within {:?}",
                device.answer_timeout
            ));
        }
        Ok(Some(frame)) => parse_setting_reply(&frame, UNIT_TYPE)
            .map(|u| format!("SVAN {}", u.trim()))
            .unwrap_or_else(|_| "unit type unreadable".into()),
    };
    let state = match ask(&mut port, POLL).await {
        Err(e) => return Err(format!("answered once, then {e}")),
        Ok(None) => "no results answer",
        Ok(Some(frame)) => match Results::parse(&frame) {
            Ok(ResultsReply::NoResults) => "no results yet",
            Ok(ResultsReply::Results(r)) => match r.run {
                Some(RunState::Running) => "measuring",
                Some(RunState::Paused) => "paused",
                Some(RunState::Stopped) => "stopped",
                None => "results readable",
            },
            Err(_) => "results unreadable",
        },
    };
    Ok(format!("answers, {unit}, {state}"))
}
