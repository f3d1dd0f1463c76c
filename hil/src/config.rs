//! What a simulated meter is and which faults it injects.
//!
//! [`SimConfig`] is fixed for the life of a [`crate::Simulator`]; the meter's
//! own settings (measuring, echo, clock, sleep mode) start from it and then
//! change only through commands, power cycles and key presses, as on a real
//! meter. This module also owns the text forms
//! the `slm-sim` command line accepts for durations (`500ms`, `5s`) and stalls
//! (`0.1:4s`).

use crate::levels::LevelControl;
use std::time::Duration;

/// How long an NL-43 with sleep mode On stays awake by default.
pub const DEFAULT_SLEEP_AFTER: Duration = Duration::from_secs(30);

/// Which meter family the simulator plays (its personality).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Rion NL-43 / NL-53 / NL-63 (`protocols/nl43.md`), polled.
    #[default]
    Nl43,
    /// NTi Audio XL2 with the Remote Measurement option (`protocols/xl2.md`), polled.
    Xl2,
    /// Svantek SVAN 97x / SV 200A (`protocols/svantek.md`), polled.
    Svantek,
    /// Casella CEL-63x in online mode (`protocols/casella.md`): it pushes.
    Casella,
}

impl Family {
    /// Every family, in the order the CLI lists them.
    pub const ALL: [Family; 4] = [Family::Nl43, Family::Xl2, Family::Svantek, Family::Casella];

    /// The name used on the command line, in events and in `slmd.toml`'s
    /// `protocol` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Nl43 => "nl43",
            Family::Xl2 => "xl2",
            Family::Svantek => "svantek",
            Family::Casella => "casella",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Family {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Family, ParseError> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| ParseError::Family(text.to_owned()))
    }
}

/// How the simulated meter starts, and the faults it injects.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The meter family simulated (default NL-43). The fault menu is the
    /// same for every family; the NL-43-only ones (`prompts`, `echo`,
    /// `replay`) are ignored by the others.
    pub family: Family,
    /// XL2: answer `MEAS:SLM:123?` with all parameters on one line
    /// (`53.8 dB, OK, 61.2 dB, OK`) instead of one line per parameter.
    pub xl2_one_line: bool,
    /// XL2: write levels with a decimal comma (`53,8 dB, OK`).
    pub decimal_comma: bool,
    /// Casella: the logging period, one group of lines each (default 1 s;
    /// the lines' time advances by at least one second per period).
    pub log_period: Duration,
    /// Seeds the level generator and the fault dice: the same seed gives the
    /// same sequence of random choices (the values a poll sees still depend
    /// on when it arrives, since the meter samples at 10 Hz in real time).
    pub seed: u64,
    /// The faults to inject; the default injects none.
    pub faults: Faults,
    /// Whether the meter is measuring when it powers up (default `true`), so
    /// integrated values appear one second after start without a
    /// `Measure,Start`.
    pub start_measuring: bool,
    /// The meter's clock minus real UTC at power-up, in seconds (default
    /// 0): the meter's time zone as a host reads it (`utc_offset` in
    /// `slmd.toml`), plus any error. `Clock?` answers UTC shifted by this
    /// (then by the drift); `Clock,...` sets the clock. Readings' UTC
    /// `device_time` is the meter's clock minus this, so a drifted or re-set
    /// clock shows in it as it would in a host's records.
    pub clock_offset_secs: i64,
    /// How fast the meter's clock runs, in parts per million off real time
    /// (default 0): the clock advances `1 + ppm·1e-6` seconds per real
    /// second from power-up and from each `Clock,...`, e.g. 200 000 gains
    /// 0.2 s a second, −50 loses 4.3 s a day. Values at or below
    /// −1 000 000 would run the clock backwards: the CLI refuses them
    /// ([`parse_drift_ppm`]), the library treats them as a stopped clock.
    /// Used by the families that show a clock (NL-43, Casella).
    pub clock_drift_ppm: f64,
    /// NL-43: accept `Clock,...` while measuring. By default the meter
    /// answers `R+0004` then, **a guess** (setting the clock mid-measurement
    /// would split it; Rion's guide is not at hand): this flag is the
    /// other answer.
    pub clock_set_while_measuring: bool,
    /// NL-43: sleep (eco) mode is On at first power-up (default Off). With
    /// sleep mode On the meter falls asleep [`SimConfig::sleep_after`]
    /// after it powered up, was woken, or had sleep mode turned on.
    pub sleep_mode: bool,
    /// NL-43: how long the meter stays awake with sleep mode On (default
    /// 30 s), whatever the traffic on the link: eco mode is timed from the
    /// last key press and commands are not key presses (**a guess**).
    pub sleep_after: Duration,
    /// The level walk's knobs (default: offset 0 dB, random loud events
    /// on): an offset added to every sample and calm, for every family's
    /// live levels. A handle: keep a clone to turn them while the meter runs
    /// (`slm-sim --control-stdin`); clones of this config share them.
    pub levels: LevelControl,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            family: Family::Nl43,
            xl2_one_line: false,
            decimal_comma: false,
            log_period: Duration::from_secs(1),
            seed: 0x5eed,
            faults: Faults::default(),
            start_measuring: true,
            clock_offset_secs: 0,
            clock_drift_ppm: 0.0,
            clock_set_while_measuring: false,
            sleep_mode: false,
            sleep_after: DEFAULT_SLEEP_AFTER,
            levels: LevelControl::default(),
        }
    }
}

/// Faults the simulator injects. Every one is reported as a
/// [`crate::SimEvent::Fault`] when it happens.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close the link every N: a TCP client socket is closed N after it was
    /// accepted; a pty is torn down N after it was created and a new one takes
    /// its place (the link path, when given, is re-pointed), like a USB serial
    /// device vanishing and coming back. Event kind `drop`.
    pub drop_every: Option<Duration>,
    /// Probability per answer of junk before the result line: either random
    /// bytes with no CR/LF (they prefix the result line, as leftovers do) or a
    /// whole junk line ending in CR LF. Junk never contains `R+` and never
    /// goes inside a data line. Other families: XL2 the same with LF,
    /// Svantek bytes without `#` or `;` before the frame, Casella a junk
    /// line before a pushed group (probability per group). Event kind `junk`.
    pub junk: f64,
    /// NL-43 only. Send a `$` prompt after each answer, so the next line the host reads
    /// starts with it.
    pub prompts: bool,
    /// NL-43 only. Start with echo on: each received command line is echoed (with CR LF)
    /// before its result line. `Echo,On|Off` changes it, as on the meter.
    pub echo: bool,
    /// Write answers in random pieces of 1..=7 bytes with 0..=15 ms pauses
    /// between them (a 64-field `DOD?` answer then takes about 0.7 s).
    pub split: bool,
    /// With probability `p`, delay an answer by `d`. Event kind `stall`.
    pub stall: Option<(f64, Duration)>,
    /// The meter stops answering (the link stays open, commands are read and
    /// ignored, `DRD?` output pauses) from this long after the simulator was
    /// created, for [`Faults::silent_for`]. Event kinds `silent_start` and
    /// `silent_end`.
    pub silent_after: Option<Duration>,
    /// How long the silence of [`Faults::silent_after`] lasts.
    pub silent_for: Duration,
    /// NL-43 only. The meter has stored records with old times: the first N `DOD?`
    /// answers of every connection come from them (values of about an hour
    /// ago, one second apart, advancing: no record is served twice), and
    /// while they are being served `Clock?` answers the record's old time.
    pub replay: u32,
}

/// A text form that is not a duration or a stall.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not `<number><unit>` with a unit of `ms`, `s`, `m` or `h`.
    #[error("`{0}` is not a duration: expected a number and a unit, e.g. 500ms, 5s, 2m, 1h")]
    Duration(String),
    /// Not `<probability>:<duration>` with a probability in 0..=1.
    #[error("`{0}` is not a stall: expected PROBABILITY:DURATION, e.g. 0.1:4s")]
    Stall(String),
    /// A probability outside 0..=1.
    #[error("`{0}` is not a probability: expected a number from 0 to 1, e.g. 0.3")]
    Probability(String),
    /// Not a clock drift the meter can have.
    #[error(
        "`{0}` is not a clock drift: expected parts per million above -1000000, e.g. 200000 or -50"
    )]
    Drift(String),
    /// Not a meter family.
    #[error("`{0}` is not a meter family: expected nl43, xl2, svantek or casella")]
    Family(String),
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let bad = || ParseError::Duration(text.to_owned());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(bad)?;
    let (number, unit) = trimmed.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// Parses a probability in 0..=1.
pub fn parse_probability(text: &str) -> Result<f64, ParseError> {
    match text.trim().parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(ParseError::Probability(text.to_owned())),
    }
}

/// Parses a clock drift in parts per million: a finite number above
/// −1 000 000 (at −1 000 000 the clock would stand still).
pub fn parse_drift_ppm(text: &str) -> Result<f64, ParseError> {
    match text.trim().parse::<f64>() {
        Ok(ppm) if ppm.is_finite() && ppm > -1_000_000.0 => Ok(ppm),
        _ => Err(ParseError::Drift(text.to_owned())),
    }
}

/// Parses a stall `0.1:4s`: probability, colon, duration.
pub fn parse_stall(text: &str) -> Result<(f64, Duration), ParseError> {
    let bad = || ParseError::Stall(text.to_owned());
    let (p, d) = text.split_once(':').ok_or_else(bad)?;
    let p = parse_probability(p).map_err(|_| bad())?;
    let d = parse_duration(d).map_err(|_| bad())?;
    Ok((p, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5x", "-5s", "5 s", "1e3s", "5sec"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn families() {
        for family in Family::ALL {
            assert_eq!(family.as_str().parse::<Family>(), Ok(family));
        }
        assert_eq!("XL2".parse::<Family>(), Ok(Family::Xl2));
        assert!("nl52".parse::<Family>().is_err());
    }

    #[test]
    fn stalls_and_probabilities() {
        assert_eq!(parse_stall("0.1:4s"), Ok((0.1, Duration::from_secs(4))));
        assert!(parse_stall("2:4s").is_err());
        assert!(parse_stall("0.1").is_err());
        assert_eq!(parse_probability("0.3"), Ok(0.3));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("NaN").is_err());
    }

    #[test]
    fn drifts() {
        assert_eq!(parse_drift_ppm("200000"), Ok(200_000.0));
        assert_eq!(parse_drift_ppm("-50"), Ok(-50.0));
        assert_eq!(parse_drift_ppm("1.5"), Ok(1.5));
        for bad in ["", "x", "-1000000", "-2e6", "inf", "NaN"] {
            assert!(parse_drift_ppm(bad).is_err(), "{bad}");
        }
    }
}
