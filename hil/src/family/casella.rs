//! The Casella CEL-63x in online mode, from `protocols/casella.md`.
//!
//! The meter pushes; nobody polls. Input is counted (`ignored_bytes`) and
//! otherwise ignored. While measuring, every logging period
//! (`SimConfig::log_period`) it writes one group of lines, all with the same
//! date and time (meter-local: the clock, which starts at UTC +
//! `clock_offset_secs` and drifts by `clock_drift_ppm`), each ending in
//! CR LF:
//!
//! ```text
//! <LAeq>, 2026-12-02, 15:23:45, 54.3
//! <LAFmax>, 2026-12-02, 15:23:45, 61.0
//! <LAFmin>, 2026-12-02, 15:23:45, 50.2
//! <LAF>, 2026-12-02, 15:23:45, 55.1
//! <LCpeak>, 2026-12-02, 15:23:45, 80.4
//! <1/1 OCT LCeq>, 2026-12-02, 15:23:45, 16Hz, 32.4, 31.5Hz, 35.1, …, 16kHz, 30.2
//! ```
//!
//! The broad-band values are over the period (LAeq, LAFmax, LAFmin, LCpeak)
//! or at its end (LAF), one decimal; LAFmax ≥ LAeq ≥ LAFmin and LAF lies
//! between LAFmin and LAFmax. The time is the wall-clock second at the push,
//! but always at least one second after the previous group's, so each
//! group has its own time. The periods are counted from the link's start;
//! a meter that is not measuring (`--stopped`) pushes nothing (input cannot
//! start it). The octave line is not a reading.
//!
//! A power cycle leaves it measuring and pushing from scratch (a fresh
//! integration), even after `--stopped`: it has no start command, so a
//! stopped Casella would never push again; its clock is kept.
//!
//! The serial framing (8 data bits, 2 stop bits, no parity) is not
//! simulated: a pty carries bytes, not bits.
//!
//! Reading event: one per group: `LAeq`→`leq`, `LAFmax`→`lmax`, `LAFmin`→
//! `lmin`, `LAF`→`lp`, `LCpeak`→`lpeak`, device time = the lines' time in
//! UTC (minus `clock_offset_secs`, the meter's zone as a host reads it).

use super::{Framing, Output, Personality, Reading, Walk, family_seed, junk_bytes};
use crate::config::{Family, SimConfig};
use crate::levels::Integrator;
use crate::meter::Rtc;
use crate::report::{Metrics, utc_text};
use std::time::Duration;
use tokio::time::Instant;

/// The broad-band tags, in the order written, with their record metrics.
pub const TAGS: [(&str, &str); 5] = [
    ("LAeq", "leq"),
    ("LAFmax", "lmax"),
    ("LAFmin", "lmin"),
    ("LAF", "lp"),
    ("LCpeak", "lpeak"),
];
/// Octave band names and each band's level relative to the period's LAeq
/// (tenths): a plausible traffic-noise spectrum.
const OCTAVES: [(&str, i16); 11] = [
    ("16Hz", -220),
    ("31.5Hz", -160),
    ("63Hz", -100),
    ("125Hz", -70),
    ("250Hz", -60),
    ("500Hz", -50),
    ("1kHz", -40),
    ("2kHz", -60),
    ("4kHz", -90),
    ("8kHz", -140),
    ("16kHz", -230),
];

/// The simulated CEL-63x.
#[derive(Debug)]
pub(crate) struct Casella {
    /// Levels and the measurement.
    walk: Walk,
    /// What was integrated since the last group.
    period: Integrator,
    /// The logging period.
    every: Duration,
    /// The clock the lines' times come from.
    clock: Rtc,
    /// The meter's clock minus UTC at power-up, seconds: readings' device
    /// time is the lines' time minus this.
    clock_offset: i64,
    /// Meter-local Unix seconds of the last group.
    last_time: Option<i64>,
}

/// `54.3`.
fn text(tenths: i16) -> String {
    let sign = if tenths < 0 { "-" } else { "" };
    let m = tenths.unsigned_abs();
    format!("{sign}{}.{}", m / 10, m % 10)
}

impl Casella {
    pub(crate) fn new(config: &SimConfig, now: Instant) -> Casella {
        let seed = family_seed(config.seed, Family::Casella);
        Casella {
            walk: Walk::new(seed, now, config.start_measuring, config.levels.clone()),
            period: Integrator::default(),
            every: config.log_period.max(Duration::from_millis(100)),
            clock: Rtc::new(config),
            clock_offset: config.clock_offset_secs,
            last_time: None,
        }
    }

    /// The group of lines for a period ending at `now` (meter-local Unix
    /// seconds `local`), if measuring and anything was sampled.
    fn group(&mut self, now: Instant, local: i64) -> Option<Output> {
        let period = &mut self.period;
        self.walk.advance(now, |sample| period.add(sample));
        let summary = std::mem::take(&mut self.period).summary()?;
        if !self.walk.running() {
            return None;
        }
        let time = self.last_time.map_or(local, |last| local.max(last + 1));
        self.last_time = Some(time);
        let stamp = chrono::DateTime::from_timestamp(time, 0)?
            .format("%Y-%m-%d, %H:%M:%S")
            .to_string();
        let leq = summary.leq_tenths();
        let lp = self.walk.latest.lp.clamp(summary.min, summary.max);
        let values = [leq, summary.max, summary.min, lp, summary.peak];
        let mut bytes = String::new();
        let mut metrics = Metrics::new();
        for ((tag, name), value) in TAGS.iter().zip(values) {
            let written = text(value);
            bytes.push_str(&format!("<{tag}>, {stamp}, {written}\r\n"));
            metrics.push_text(name, Some(&written));
        }
        bytes.push_str(&format!("<1/1 OCT LCeq>, {stamp}"));
        for (band, offset) in OCTAVES {
            bytes.push_str(&format!(", {band}, {}", text(leq + offset)));
        }
        bytes.push_str("\r\n");
        Some(Output {
            bytes: bytes.into_bytes(),
            reading: Some(Reading {
                metrics,
                device_time: utc_text(time - self.clock_offset),
            }),
        })
    }
}

impl Personality for Casella {
    fn family(&self) -> Family {
        Family::Casella
    }

    fn framing(&self) -> Framing {
        Framing::Ignore
    }

    fn answer(&mut self, _frame: &[u8], _now: Instant) -> Option<Output> {
        None
    }

    fn running(&self) -> bool {
        self.walk.running()
    }

    fn power_cycle(&mut self, now: Instant) {
        self.walk.power_up(now, true);
        self.period = Integrator::default();
    }

    fn connected(&mut self, now: Instant) {
        // The first group covers one whole period from the link's start.
        self.walk.advance(now, |_| {});
        self.period = Integrator::default();
    }

    fn push_period(&self) -> Option<Duration> {
        Some(self.every)
    }

    fn push(&mut self, now: Instant) -> Option<Output> {
        let local = self.clock.now_secs();
        self.group(now, local)
    }

    fn junk(&self, rng: &mut fastrand::Rng) -> Vec<u8> {
        // A line of junk, never looking like a tagged line.
        let mut junk = junk_bytes(rng, b"\r\n<");
        junk.extend_from_slice(b"\r\n");
        junk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_of_lines_with_one_time() {
        let t0 = Instant::now();
        let mut m = Casella::new(
            &SimConfig {
                family: Family::Casella,
                clock_offset_secs: 3600,
                ..SimConfig::default()
            },
            t0,
        );
        m.connected(t0);
        // 2026-12-02 15:23:45 meter-local.
        let local = 1_796_225_025;
        let out = m
            .group(t0 + Duration::from_secs(1), local)
            .expect("a group");
        let text = String::from_utf8(out.bytes).expect("ascii");
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 6, "{text}");
        for (line, (tag, _)) in lines.iter().zip(TAGS) {
            assert!(
                line.starts_with(&format!("<{tag}>, 2026-12-02, 15:23:45, ")),
                "{line}"
            );
        }
        assert!(lines[5].starts_with("<1/1 OCT LCeq>, 2026-12-02, 15:23:45, 16Hz, "));
        assert_eq!(lines[5].split(", ").count(), 3 + 22);
        let reading = out.reading.expect("reading");
        assert_eq!(reading.device_time.as_deref(), Some("2026-12-02T14:23:45Z"));
        let m_ = &reading.metrics;
        let (leq, max, min, lp) = (m_.get("leq"), m_.get("lmax"), m_.get("lmin"), m_.get("lp"));
        assert!(max >= leq && leq >= min && lp >= min && lp <= max, "{text}");
        // The next group, even within the same wall second, is a second later.
        let next = m
            .group(t0 + Duration::from_secs(2), local)
            .expect("a group");
        let next = String::from_utf8(next.bytes).expect("ascii");
        assert!(next.starts_with("<LAeq>, 2026-12-02, 15:23:46, "), "{next}");
    }

    #[test]
    fn a_power_cycle_measures_again_from_scratch() {
        let t0 = Instant::now();
        let mut m = Casella::new(
            &SimConfig {
                family: Family::Casella,
                start_measuring: false,
                ..SimConfig::default()
            },
            t0,
        );
        m.connected(t0);
        assert!(m.group(t0 + Duration::from_secs(1), 1_000).is_none());
        m.power_cycle(t0 + Duration::from_secs(1));
        assert!(m.running());
        assert!(m.group(t0 + Duration::from_secs(2), 1_001).is_some());
    }
}
