//! NTi Audio XL2 (Remote Measurement option): SCPI-like lines over its
//! USB-CDC serial port, polled.
//!
//! When a link opens: `*IDN?` (identity), then one `MEAS:SLM:123? L90%`
//! to learn whether the unit has the Extended Acoustics option (a value:
//! percentiles are asked from then on; error text or silence: they are
//! not, logged once). Each poll: `MEAS:INIT` (freezes a snapshot), then
//! `MEAS:SLM:123?` with the parameters of [`LEVELS`] (and
//! [`PERCENTILES`]); the answer is one line per parameter or one line with
//! several (both are accepted), collected until every parameter has its
//! value. Every `status_interval`: `INIT:STATE?` (run state) and
//! `SYST:ERRO?` (the error queue, counted as refusals).
//!
//! The XL2 has no clock or health query in what we know (`protocols/xl2.md`):
//! records carry no `device_time`, and battery and clock skew stay unknown.

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
use firmware_bridge::LineFramer;
use firmware_bridge::xl2::{
    Command, InitState, MAX_LINE, MAX_PARAMS, Param, Status, Value, error_text, parse_error_queue,
    parse_values,
};
use std::time::Duration;
use tokio::time::Instant;

/// The XL2 family.
pub struct Xl2;

/// The levels read each poll, in the order asked.
pub const LEVELS: [Param; 5] = [
    Param::Las,
    Param::Laeq,
    Param::Lasmax,
    Param::Lasmin,
    Param::Lcpkmax,
];

/// The percentiles read each poll when the unit has the option.
pub const PERCENTILES: [Param; 5] = [
    Param::Percentile(5),
    Param::Percentile(10),
    Param::Percentile(50),
    Param::Percentile(90),
    Param::Percentile(95),
];

static RULES: FamilyRules = FamilyRules {
    name: "xl2",
    title: "NTi Audio XL2",
    polled: true,
    streams: false,
    // Public clients poll once a second; faster is not confirmed [guess].
    min_poll: (
        Duration::from_secs(1),
        " (a snapshot a second is what the XL2 is known to serve)",
    ),
    default_poll: Duration::from_secs(1),
    min_command_gap: (Duration::ZERO, ""),
    default_command_gap: Duration::from_millis(50),
    // Public client code waits 1.5 s for a reply.
    default_answer_timeout: Duration::from_millis(1500),
    // USB CDC: the baud rate is nominal.
    serial: SerialFraming {
        baud: 115_200,
        data_bits: 8,
        stop_bits: 1,
        parity: Parity::None,
    },
    bauds: &[9600, 19_200, 38_400, 57_600, 115_200],
    care: CareRules {
        keep_measuring: Support::Yes,
        no_sleep: Support::No("the XL2 has no sleep setting its remote protocol can change"),
        sync_clock: Support::No("the XL2's remote protocol has no command that sets its clock"),
    },
    health: HealthRules {
        battery: false,
        sd_free: false,
        clock: false,
    },
    // LAEQ runs since the measurement started (the :DT variants are not read): Lp is the finest level.
    level_input: LevelInput {
        metric: firmware_bridge::metric::LP,
        per_cycle: false,
    },
};

impl Family for Xl2 {
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

/// A port that frames lines.
type Lines = Port<LineFramer<MAX_LINE>>;

/// Sends `command` (with the gap and the stale-input flush).
async fn send(port: &mut Lines, command: Command<'_>) -> Result<(), LinkError> {
    let mut wire = heapless::String::<{ MAX_LINE }>::new();
    command.encode(&mut wire).map_err(LinkError::Encode)?;
    port.send(wire.as_bytes()).await
}

/// Sends a query and returns its one reply line, `None` on timeout.
async fn query_line(port: &mut Lines, command: Command<'_>) -> Result<Option<Vec<u8>>, LinkError> {
    send(port, command).await?;
    let deadline = port.answer_deadline();
    let line = port.next_unit_until(deadline).await;
    port.answer_ended();
    line
}

/// What reading the values of one `MEAS:SLM:123?` gave.
enum Collected {
    /// A value per parameter.
    Values(Vec<Value>),
    /// The unit answered text (a missing option): what it said.
    Text(String),
    /// Not every value within the answer timeout.
    Timeout,
}

/// Sends `MEAS:SLM:123? params` and collects one value per parameter,
/// over one or several lines; lines that are not values are skipped and
/// counted.
async fn measure(port: &mut Lines, params: &[Param]) -> Result<Collected, LinkError> {
    send(port, Command::MeasSlm(params)).await?;
    let deadline = port.answer_deadline();
    let mut values: Vec<Value> = Vec::with_capacity(params.len());
    let outcome = loop {
        let Some(line) = port.next_unit_until(deadline).await? else {
            break Collected::Timeout;
        };
        match parse_values::<MAX_PARAMS>(&line) {
            Ok(items) => {
                values.extend(items);
                if values.len() >= params.len() {
                    values.truncate(params.len());
                    break Collected::Values(values);
                }
            }
            Err(firmware_bridge::Error::NotAValue) => {
                break Collected::Text(String::from_utf8_lossy(&line).trim().to_owned());
            }
            Err(_) => port.noise.skipped_lines += 1,
        }
    };
    port.answer_ended();
    Ok(outcome)
}

async fn run(meter: &Meter<'_>, link: Link) -> Result<std::convert::Infallible, LinkError> {
    let cfg = meter.config();
    let mut port = Port::new(link, LineFramer::new(), cfg.answer_timeout, cfg.command_gap);
    identify(meter, &mut port).await?;
    let mut params: Vec<Param> = LEVELS.to_vec();
    match measure(&mut port, &[Param::Percentile(90)]).await? {
        Collected::Values(_) => {
            meter.answered();
            params.extend(PERCENTILES);
        }
        Collected::Text(text) => {
            meter.answered();
            tracing::info!(device = %meter.id(), event = "percentiles_unavailable", "meter {}: no percentiles (the XL2 answered {text:?}: the Extended Acoustics option is missing)", meter.id());
        }
        Collected::Timeout => {
            tracing::info!(device = %meter.id(), event = "percentiles_unavailable", "meter {}: no percentiles (no answer to L90%: the Extended Acoustics option is missing)", meter.id());
        }
    }
    let mut run_state = MeterState::Unknown;
    let mut next_status = Instant::now();
    let mut next_poll = Instant::now();
    loop {
        if Instant::now() >= next_status {
            run_state = query_state(meter, &mut port, run_state).await?;
            next_status = Instant::now() + cfg.status_interval;
        }
        tokio::time::sleep_until(next_poll).await;
        next_poll = Instant::now() + cfg.poll_interval;
        send(&mut port, Command::MeasInit).await?;
        port.answer_ended();
        match measure(&mut port, &params).await? {
            Collected::Values(values) => {
                meter.answered();
                meter.publish(reading(meter, &params, &values, run_state));
            }
            Collected::Text(text) => {
                meter.answered();
                meter.bad_answer("MEAS:SLM:123?", &text);
            }
            Collected::Timeout => meter.timed_out("MEAS:SLM:123?", cfg.answer_timeout)?,
        }
        meter.noise(port.noise);
    }
}

/// The values as a reading: each parameter's metric, and the flags of any
/// over/under-range status word.
fn reading(
    meter: &Meter<'_>,
    params: &[Param],
    values: &[Value],
    state: MeterState,
) -> MeterReading {
    let mut metrics = Vec::with_capacity(params.len());
    let mut flags = Vec::new();
    for (param, value) in params.iter().zip(values) {
        if let Some(metric) = param.metric() {
            metrics.push((metric, value.level.map(|l| l.db())));
        }
        let flag = match &value.status {
            Status::Ok => None,
            Status::Overload => Some(Flag::Overload),
            Status::UnderRange => Some(Flag::UnderRange),
            Status::Other(word) => {
                meter.bad_answer("MEAS:SLM:123?", &format!("unknown status word {word:?}"));
                None
            }
        };
        if let Some(flag) = flag.filter(|f| !flags.contains(f)) {
            flags.push(flag);
        }
    }
    MeterReading {
        device_time: None,
        metrics,
        state,
        flags,
    }
}

/// `*IDN?`: `manufacturer,model,serial,firmware`.
async fn identify(meter: &Meter<'_>, port: &mut Lines) -> Result<(), LinkError> {
    match query_line(port, Command::Idn).await? {
        None => meter.timed_out("*IDN?", port.answer_timeout)?,
        Some(line) => {
            meter.answered();
            match firmware_bridge::xl2::Identity::parse(&line) {
                Ok(id) => meter.identity(Identity {
                    model: Some(id.model.to_owned()),
                    serial: Some(id.serial.to_owned()),
                    firmware: Some(id.firmware.to_owned()),
                }),
                Err(e) => meter.bad_answer("*IDN?", &e),
            }
        }
    }
    Ok(())
}

/// `INIT:STATE?` and `SYST:ERRO?`.
async fn query_state(
    meter: &Meter<'_>,
    port: &mut Lines,
    previous: MeterState,
) -> Result<MeterState, LinkError> {
    let state = match query_line(port, Command::InitState).await? {
        None => {
            meter.timed_out("INIT:STATE?", port.answer_timeout)?;
            previous
        }
        Some(line) => {
            meter.answered();
            match InitState::parse(&line) {
                Ok(InitState::Running | InitState::Settling | InitState::Frozen) => {
                    MeterState::Measuring
                }
                Ok(InitState::Paused) => MeterState::Paused,
                Ok(InitState::Stopped) => MeterState::Stopped,
                Err(e) => {
                    meter.bad_answer("INIT:STATE?", &e);
                    previous
                }
            }
        }
    };
    meter.run_state(state);
    // keep_measuring: `INIT START` has no answer; the error queue read
    // next says whether the meter took it.
    let starting = state == MeterState::Stopped && meter.found_stopped();
    if starting {
        send(port, Command::InitStart).await?;
        port.answer_ended();
    }
    let mut start_error = None;
    if let Some(line) = query_line(port, Command::SystErr).await? {
        meter.answered();
        match parse_error_queue(&line) {
            Ok(0) => {}
            Ok(code) if starting => start_error = Some(format!("{code} {}", error_text(code))),
            Ok(code) => meter.refused("SYST:ERRO?", &format!("{code} {}", error_text(code))),
            Err(e) => meter.bad_answer("SYST:ERRO?", &e),
        }
    }
    if starting {
        match start_error {
            None => {
                meter.measurement_started();
                return Ok(MeterState::Measuring);
            }
            Some(why) => meter.measurement_start_refused(&why),
        }
    }
    Ok(state)
}

/// `*IDN?` and `INIT:STATE?`.
async fn probe(link: Link, device: &DeviceConfig) -> Result<String, String> {
    let mut port = Port::new(
        link,
        LineFramer::new(),
        device.answer_timeout,
        device.command_gap,
    );
    let who = match query_line(&mut port, Command::Idn).await {
        Err(e) => return Err(format!("link open, but {e}")),
        Ok(None) => {
            return Err(format!(
                "link open, but no answer to *IDN? within {:?} (is the XL2 set to \"COM Port\"?)",
                device.answer_timeout
            ));
        }
        Ok(Some(line)) => match firmware_bridge::xl2::Identity::parse(&line) {
            Ok(id) => format!("{} serial {} firmware {}", id.model, id.serial, id.firmware),
            Err(e) => {
                return Err(format!(
                    "*IDN? answered {:?}: {e}",
                    String::from_utf8_lossy(&line)
                ));
            }
        },
    };
    let state = match query_line(&mut port, Command::InitState).await {
        Err(e) => return Err(format!("answered once, then {e}")),
        Ok(Some(line)) => InitState::parse(&line).map_or("state unreadable", InitState::word),
        Ok(None) => "state unknown",
    };
    Ok(format!("answers, {who}, {}", state.to_ascii_lowercase()))
}
