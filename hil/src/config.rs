//! What a simulated meter is and which faults it injects.
//!
//! [`SimConfig`] is fixed for the life of a [`crate::Simulator`]; the meter's
//! own settings (measuring, echo, clock) start from it and then change only
//! through commands, as on a real meter. This module also owns the text forms
//! the `slm-sim` command line accepts for durations (`500ms`, `5s`) and stalls
//! (`0.1:4s`).

use std::time::Duration;

/// How the simulated meter starts, and the faults it injects.
#[derive(Clone, Debug)]
pub struct SimConfig {
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
    /// The meter's clock minus real UTC, in seconds (default 0). `Clock?`
    /// answers UTC shifted by this; `Clock,...` changes it.
    pub clock_offset_secs: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0x5eed,
            faults: Faults::default(),
            start_measuring: true,
            clock_offset_secs: 0,
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
    /// goes inside a data line. Event kind `junk`.
    pub junk: f64,
    /// Send a `$` prompt after each answer, so the next line the host reads
    /// starts with it.
    pub prompts: bool,
    /// Start with echo on: each received command line is echoed (with CR LF)
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
    /// The meter has stored records with old times: the first N `DOD?`
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
    fn stalls_and_probabilities() {
        assert_eq!(parse_stall("0.1:4s"), Ok((0.1, Duration::from_secs(4))));
        assert!(parse_stall("2:4s").is_err());
        assert!(parse_stall("0.1").is_err());
        assert_eq!(parse_probability("0.3"), Ok(0.3));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("NaN").is_err());
    }
}
