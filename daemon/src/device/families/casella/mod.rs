//! Casella CEL-63x online mode: the meter pushes a line per parameter at
//! its logging rate; the gateway sends nothing.
//!
//! Lines with the same date and time make one reading
//! ([`firmware_bridge::casella::Assembler`]); a reading is complete when a
//! line with another time arrives, or after a quiet gap
//! ([`QUIET_GAP`], or half the logging period when that is shorter).
//! `device_time` is the lines' own time (meter local time, turned into UTC
//! with `utc_offset`). Octave-band lines are not level records: they are
//! counted with the skipped lines and left out.
//!
//! Liveness comes from the data rate: no line for [`SILENT_PERIODS`] × the
//! expected interval means `down` and the link is reopened. The expected
//! interval is `poll_interval` when written (the meter's logging period),
//! else learned from the time between the first readings (1 s until then).
//!
//! Casella documents no identity query in online mode: the identity stays
//! unknown. A pushing meter is logging, so readings say `measuring`.

use crate::config::{
    CareRules, DeviceConfig, FamilyRules, LevelInput, Parity, SerialFraming, Support,
};
use crate::device::driver::{BoxFuture, Family, LinkError, Meter, MeterReading};
use crate::device::health::HealthRules;
use crate::device::link::Link;
use crate::device::port::Port;
use crate::record::MeterState;
use chrono::{DateTime, Utc};
use firmware_bridge::LineFramer;
use firmware_bridge::casella::{Assembled, Assembler, LineKind, MAX_LINE, PushedLine};
use std::time::Duration;
use tokio::time::Instant;

/// The Casella family.
pub struct Casella;

/// Longest pause inside one logging period's burst of lines before the
/// reading is taken as complete [design].
pub const QUIET_GAP: Duration = Duration::from_millis(500);

/// Logging periods without a line before the meter counts as silent
/// [design].
pub const SILENT_PERIODS: u32 = 3;

static RULES: FamilyRules = FamilyRules {
    name: "casella",
    title: "Casella CEL-63x",
    polled: false,
    streams: false,
    min_poll: (
        Duration::from_secs(1),
        " (the meter logs at most once a second)",
    ),
    default_poll: Duration::from_secs(1),
    min_command_gap: (Duration::ZERO, ""),
    default_command_gap: Duration::ZERO,
    default_answer_timeout: Duration::from_secs(3),
    // RS-232, 8 data bits, 2 stop bits, no parity [doc]; the baud rate is
    // the meter's setting (9600 is a guess at a common one).
    serial: SerialFraming {
        baud: 9600,
        data_bits: 8,
        stop_bits: 2,
        parity: Parity::None,
    },
    bauds: &[1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200],
    care: CareRules {
        keep_measuring: Support::No("it pushes lines and takes no commands"),
        no_sleep: Support::No("it pushes lines and takes no commands"),
        sync_clock: Support::No("it pushes lines and takes no commands"),
    },
    health: HealthRules {
        battery: false,
        sd_free: false,
        clock: true,
    },
    // online mode sends the Leq of each logging period: exact energy per period.
    level_input: LevelInput {
        metric: firmware_bridge::metric::LEQ,
        per_cycle: true,
    },
};

impl Family for Casella {
    fn rules(&self) -> &'static FamilyRules {
        &RULES
    }

    fn run<'a>(&'a self, link: Link, meter: &'a Meter<'a>) -> BoxFuture<'a, LinkError> {
        Box::pin(run(meter, link))
    }

    fn probe<'a>(
        &'a self,
        link: Link,
        config: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(probe(link, config))
    }
}

/// The logging period: as configured, else learned.
struct Period {
    /// The period in force.
    current: Duration,
    /// Whether it may still be learned.
    learning: bool,
    /// The time of the last reading, meter seconds.
    last_time: Option<i64>,
}

impl Period {
    fn new(config: &DeviceConfig) -> Period {
        Period {
            current: config.poll_interval,
            learning: !config.poll_interval_set,
            last_time: None,
        }
    }

    /// Learns from a reading's meter time (the first positive step).
    fn saw(&mut self, meter_seconds: i64) {
        if let Some(last) = self.last_time {
            let step = meter_seconds - last;
            if self.learning && (1..=86_400).contains(&step) {
                self.current = Duration::from_secs(step.unsigned_abs());
                self.learning = false;
            }
        }
        self.last_time = Some(meter_seconds);
    }

    /// How long a complete reading may wait for more lines.
    fn quiet_gap(&self) -> Duration {
        QUIET_GAP.min(self.current / 2)
    }

    /// Silence that counts as a dead meter.
    fn silent_after(&self) -> Duration {
        self.current * SILENT_PERIODS
    }
}

async fn run(meter: &Meter<'_>, link: Link) -> LinkError {
    let mut port = Port::new(
        link,
        LineFramer::<MAX_LINE>::new(),
        Duration::ZERO,
        Duration::ZERO,
    );
    let mut assembler = Assembler::new();
    let mut period = Period::new(meter.config());
    let mut last_line = Instant::now();
    loop {
        let silent_at = last_line + period.silent_after();
        let deadline = if assembler.pending().is_some() {
            (Instant::now() + period.quiet_gap()).min(silent_at)
        } else {
            silent_at
        };
        let line = match port.next_unit_until(deadline).await {
            Err(e) => return e,
            Ok(line) => line,
        };
        let Some(line) = line else {
            if let Some(done) = assembler.flush() {
                publish(meter, &mut period, &done);
            }
            if Instant::now() >= silent_at {
                return LinkError::Silent(period.silent_after());
            }
            continue;
        };
        match PushedLine::parse(&line) {
            Ok(pushed) => {
                last_line = Instant::now();
                meter.answered();
                // The meter sends a line when it logs it: the line's time
                // against the gateway's now is the meter clock's offset.
                let utc = pushed.time.local_epoch_seconds()
                    - i64::from(meter.config().utc_offset.seconds());
                meter.clock_skew(utc - meter.now().timestamp());
                if matches!(pushed.kind, LineKind::Octave) {
                    port.noise.skipped_lines += 1;
                }
                if let Some(done) = assembler.push(&pushed) {
                    publish(meter, &mut period, &done);
                }
            }
            Err(e) => {
                port.noise.skipped_lines += 1;
                meter.bad_answer("pushed line", &e);
            }
        }
        meter.noise(port.noise);
    }
}

/// One logging period's lines as a reading.
fn publish(meter: &Meter<'_>, period: &mut Period, done: &Assembled) {
    let local = done.time.local_epoch_seconds();
    period.saw(local);
    if done.metrics.is_empty() {
        // Only octave or unknown lines this period: nothing to store.
        return;
    }
    let utc = local - i64::from(meter.config().utc_offset.seconds());
    meter.publish(MeterReading {
        device_time: DateTime::<Utc>::from_timestamp(utc, 0),
        metrics: done
            .metrics
            .iter()
            .map(|(name, level)| (*name, level.map(|l| l.db())))
            .collect(),
        state: MeterState::Measuring,
        flags: Vec::new(),
    });
}

/// Waits for one line the meter pushes.
async fn probe(link: Link, device: &DeviceConfig) -> Result<String, String> {
    let mut port = Port::new(
        link,
        LineFramer::<MAX_LINE>::new(),
        Duration::ZERO,
        Duration::ZERO,
    );
    let wait = device.poll_interval * SILENT_PERIODS;
    let deadline = Instant::now() + wait;
    loop {
        match port.next_unit_until(deadline).await {
            Err(e) => return Err(format!("link open, but {e}")),
            Ok(None) => {
                return Err(format!(
                    "link open, but no line within {wait:?} (is the meter in online mode, at this baud rate?)"
                ));
            }
            Ok(Some(line)) => {
                if let Ok(pushed) = PushedLine::parse(&line) {
                    return Ok(format!(
                        "pushes lines ({} at {:02}:{:02}:{:02} meter time)",
                        pushed.tag, pushed.time.hour, pushed.time.minute, pushed.time.second
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(extra: &str) -> DeviceConfig {
        let text = format!(
            "[[device]]\nid = \"c\"\nprotocol = \"casella\"\ntransport = \"serial\"\npath = \"/dev/ttyS0\"\n{extra}"
        );
        match crate::config::parse(&text, std::path::Path::new("t.toml")) {
            Ok(mut c) => c.devices.remove(0),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_logging_period_is_learnt_once_when_not_configured() {
        let mut period = Period::new(&device(""));
        assert_eq!(period.current, Duration::from_secs(1));
        period.saw(1000);
        period.saw(1010);
        assert_eq!(period.current, Duration::from_secs(10));
        assert_eq!(period.silent_after(), Duration::from_secs(30));
        assert_eq!(period.quiet_gap(), QUIET_GAP);
        // Learnt once: a later gap (a meter restarted) does not change it.
        period.saw(1050);
        assert_eq!(period.current, Duration::from_secs(10));
    }

    #[test]
    fn a_configured_period_is_kept_and_a_backwards_step_teaches_nothing() {
        let mut period = Period::new(&device("poll_interval = \"5s\""));
        period.saw(1000);
        period.saw(1001);
        assert_eq!(period.current, Duration::from_secs(5));
        let mut learning = Period::new(&device(""));
        learning.saw(1000);
        learning.saw(990);
        assert!(learning.learning, "a clock step backwards is not a period");
        assert_eq!(learning.current, Duration::from_secs(1));
        assert_eq!(learning.quiet_gap(), Duration::from_millis(500));
    }
}
