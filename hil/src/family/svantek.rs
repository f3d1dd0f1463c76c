//! The Svantek SVAN 97x / SV 200A remote "function" messages, from
//! `protocols/svantek.md`.
//!
//! Input: frames `#<fn>[,<arg>…];` with no line terminator; bytes between
//! frames (CR LF, junk) are ignored, a `#` restarts a frame. Answers have
//! the same shape and no terminator either.
//!
//! Functions:
//! - `#1;` dumps the settings: `#1,U971,N<serial>,W1.12.3,S<0|1>;`;
//!   `#1,X?;` queries one (several in one frame are answered in one frame:
//!   `#1,U?,N?;` → `#1,U971,N12345;`): `U` unit type `971`, `N` serial (the
//!   seed's last five digits), `W` firmware `1.12.3`, `S` measuring `0|1`.
//!   `#1,S1;` / `#1,S0;` start and stop a measurement and answer nothing:
//!   **a guess** (the note names no start/stop code).
//! - `#2[,i|a][,<profile>][,s|l|c…][,s];` reads results: `i` (default) the
//!   current cycle (a stopped meter shows its last one), `a` the previous
//!   completed one (after a stop). Any `s` argument is the state flag (the
//!   step letters `l`/`c` are accepted and ignored). The answer is
//!   `#2,1,T<elapsed s>,V<0|1>,v<0|1>,S<lp>,R<leq>,M<lmax>,N<lmin>,P<peak>,U<le>,L(10)<x>,L(90)<y>[,s<bits>];`
//!   with two decimals per level; integrated values are `?` during the
//!   first second of a measurement (`S` then has a value, `T0`); `#2,?;`
//!   when there are no results at all (never measured, or `a` before a
//!   measurement ended). `V1`/`v1` when a sample of the cycle was at the
//!   ends of the level range (`levels::OVERLOAD_TENTHS`,
//!   `UNDER_RANGE_TENTHS`). The state bits are [`STATE_RUNNING`] and
//!   [`STATE_PAUSED`] (a guess shared with the daemon's codec).
//! - Anything else (unknown function, code or argument) answers nothing.
//!
//! A power cycle leaves it stopped with no results (`#2,?;`).
//!
//! Levels: the walk is in tenths; the hundredths digit of a level is a
//! fixed function of its tenths (so ordering survives), Leq and LE are
//! rounded to hundredths from the integration, Leq kept within Lmin..=Lmax.
//!
//! Reading event: one per `#2` answer with results: `S`→`lp`, `R`→`leq`,
//! `M`→`lmax`, `N`→`lmin`, `P`→`lpeak`, `U`→`le`, `L(nn)`→`lnn`, `null`
//! for `?`; no device time.

use super::{Framing, Output, Personality, Reading, Walk, family_seed, junk_bytes};
use crate::config::{Family, SimConfig};
use crate::levels::{Integrator, SAMPLES_PER_SECOND};
use crate::report::Metrics;
use tokio::time::Instant;

/// State bit of the `s` flag: a measurement runs.
pub const STATE_RUNNING: u8 = 1;
/// State bit of the `s` flag: the measurement is paused (never set: pause is
/// not simulated).
#[allow(dead_code)] // names the bit for readers; pause is not simulated
pub const STATE_PAUSED: u8 = 2;
/// `#1,U?`: the unit type.
const UNIT_TYPE: &str = "971";
/// `#1,W?`: the firmware.
const FIRMWARE: &str = "1.12.3";
/// The percentiles in a `#2` answer.
const PERCENTILES: [u8; 2] = [10, 90];

/// The simulated SVAN 971.
#[derive(Debug)]
pub(crate) struct Svantek {
    /// Levels and the measurement.
    walk: Walk,
    /// `#1,N?`.
    serial: String,
}

/// Hundredths for a level in tenths: the extra digit is a fixed function of
/// the tenths, so a < b in tenths stays a < b.
fn hundredths(tenths: i16) -> i32 {
    let t = i32::from(tenths);
    t * 10 + (t * 7 + 3).rem_euclid(10)
}

/// `76.92`, `-1.05`.
fn text(hundredths: i32) -> String {
    let sign = if hundredths < 0 { "-" } else { "" };
    let m = hundredths.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

impl Svantek {
    pub(crate) fn new(config: &SimConfig, now: Instant) -> Svantek {
        let seed = family_seed(config.seed, Family::Svantek);
        Svantek {
            walk: Walk::new(seed, now, config.start_measuring, config.levels.clone()),
            serial: format!("{:05}", config.seed % 100_000),
        }
    }

    fn setting(&self, code: &str) -> Option<String> {
        let value = match code {
            "U" => UNIT_TYPE.to_owned(),
            "N" => self.serial.clone(),
            "W" => FIRMWARE.to_owned(),
            "S" => u8::from(self.walk.running()).to_string(),
            _ => return None,
        };
        Some(format!("{code}{value}"))
    }

    fn function1(&mut self, args: &[&str], now: Instant) -> Option<Output> {
        if args.is_empty() {
            let all: Option<Vec<String>> = ["U", "N", "W", "S"]
                .iter()
                .map(|c| self.setting(c))
                .collect();
            return Some(frame(&format!("#1,{}", all?.join(","))));
        }
        if let [set] = args {
            match *set {
                "S1" => {
                    self.walk.advance(now, |_| {});
                    if !self.walk.running() {
                        self.walk.start();
                    }
                    return None;
                }
                "S0" => {
                    self.walk.advance(now, |_| {});
                    self.walk.stop();
                    return None;
                }
                _ => {}
            }
        }
        let mut answers = Vec::with_capacity(args.len());
        for arg in args {
            answers.push(self.setting(arg.strip_suffix('?')?)?);
        }
        Some(frame(&format!("#1,{}", answers.join(","))))
    }

    fn function2(&mut self, args: &[&str], now: Instant) -> Option<Output> {
        let mut previous = false;
        let mut state = false;
        for arg in args {
            match *arg {
                "i" => previous = false,
                "a" => previous = true,
                "s" => state = true,
                "l" | "c" => {}
                profile if !profile.is_empty() && profile.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => return None,
            }
        }
        self.walk.advance(now, |_| {});
        let cycle: Option<&Integrator> = if previous {
            self.walk.last.as_ref()
        } else {
            self.walk.shown()
        };
        let Some(cycle) = cycle else {
            return Some(frame("#2,?"));
        };
        let summary = cycle.summary();
        let seconds = summary.map_or(0, |s| s.count / SAMPLES_PER_SECOND);
        let full = summary.filter(|s| s.count >= SAMPLES_PER_SECOND);
        let (over, under) = summary.map_or((false, false), |s| (s.overload, s.under_range));
        let lp = (!previous).then(|| hundredths(self.walk.latest.lp));
        let mut fields: Vec<(&str, String, Option<i32>)> = Vec::new();
        fields.push(("S", "lp".into(), lp));
        let (leq, max, min, peak, le) = match full {
            Some(s) => {
                let (max, min) = (hundredths(s.max), hundredths(s.min));
                let leq = ((s.leq_db * 100.0).round() as i32).clamp(min, max);
                let le = leq + (1000.0 * s.seconds().log10()).round() as i32;
                (
                    Some(leq),
                    Some(max),
                    Some(min),
                    Some(hundredths(s.peak)),
                    Some(le),
                )
            }
            None => (None, None, None, None, None),
        };
        fields.push(("R", "leq".into(), leq));
        fields.push(("M", "lmax".into(), max));
        fields.push(("N", "lmin".into(), min));
        fields.push(("P", "lpeak".into(), peak));
        fields.push(("U", "le".into(), le));
        for p in PERCENTILES {
            let value =
                full.and_then(|s| cycle.exceeded(p).map(|t| hundredths(t.clamp(s.min, s.max))));
            fields.push((
                if p == 10 { "L(10)" } else { "L(90)" },
                format!("l{p}"),
                value,
            ));
        }
        let mut out = format!("#2,1,T{seconds},V{},v{}", u8::from(over), u8::from(under));
        let mut metrics = Metrics::new();
        for (tag, name, value) in fields {
            let written = value.map_or_else(|| "?".to_owned(), text);
            out.push_str(&format!(",{tag}{written}"));
            metrics.push_text(&name, value.map(|_| written.as_str()));
        }
        if state {
            let mut bits = 0;
            if self.walk.running() {
                bits |= STATE_RUNNING;
            }
            out.push_str(&format!(",s{bits}"));
        }
        let mut output = frame(&out);
        output.reading = Some(Reading {
            metrics,
            device_time: None,
        });
        Some(output)
    }
}

/// `body` closed by `;`, no reading.
fn frame(body: &str) -> Output {
    Output {
        bytes: format!("{body};").into_bytes(),
        reading: None,
    }
}

impl Personality for Svantek {
    fn family(&self) -> Family {
        Family::Svantek
    }

    fn framing(&self) -> Framing {
        Framing::Hash
    }

    fn running(&self) -> bool {
        self.walk.running()
    }

    fn power_cycle(&mut self, now: Instant) {
        self.walk.power_up(now, false);
    }

    fn answer(&mut self, frame: &[u8], now: Instant) -> Option<Output> {
        let text = std::str::from_utf8(frame).ok()?;
        let body = text.strip_prefix('#')?.strip_suffix(';')?;
        let mut parts = body.split(',').map(str::trim);
        let function = parts.next()?;
        let args: Vec<&str> = parts.collect();
        match function {
            "1" => self.function1(&args, now),
            "2" => self.function2(&args, now),
            _ => None,
        }
    }

    fn junk(&self, rng: &mut fastrand::Rng) -> Vec<u8> {
        // Noise between frames: never a frame delimiter.
        junk_bytes(rng, b"#;")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ask(m: &mut Svantek, frame: &str, at: Instant) -> Option<String> {
        m.answer(frame.as_bytes(), at)
            .map(|o| String::from_utf8(o.bytes).expect("ascii"))
    }

    #[test]
    fn settings() {
        let now = Instant::now();
        let mut m = Svantek::new(
            &SimConfig {
                seed: 42,
                ..SimConfig::default()
            },
            now,
        );
        assert_eq!(ask(&mut m, "#1,U?;", now).as_deref(), Some("#1,U971;"));
        assert_eq!(ask(&mut m, "#1,N?;", now).as_deref(), Some("#1,N00042;"));
        assert_eq!(ask(&mut m, "#1,W?;", now).as_deref(), Some("#1,W1.12.3;"));
        assert_eq!(
            ask(&mut m, "#1;", now).as_deref(),
            Some("#1,U971,N00042,W1.12.3,S1;")
        );
        assert_eq!(ask(&mut m, "#1,Q?;", now), None);
        assert_eq!(ask(&mut m, "#9;", now), None);
    }

    #[test]
    fn results_from_question_marks_to_values() {
        let t0 = Instant::now();
        let mut m = Svantek::new(&SimConfig::default(), t0);
        let early = ask(&mut m, "#2,s;", t0).expect("answer");
        assert!(early.starts_with("#2,1,T0,V0,v0,S"), "{early}");
        assert!(
            early.contains(",R?,M?,N?,P?,U?,L(10)?,L(90)?,s1;"),
            "{early}"
        );
        assert_eq!(ask(&mut m, "#2,a;", t0).as_deref(), Some("#2,?;"));
        let t1 = t0 + Duration::from_secs(20);
        let a = ask(&mut m, "#2,i,1;", t1).expect("answer");
        let get = |tag: &str| -> f64 {
            let field = a
                .trim_end_matches(';')
                .split(',')
                .find_map(|f| f.strip_prefix(tag))
                .unwrap_or_else(|| panic!("{tag} in {a}"));
            assert_eq!(field.split('.').nth(1).map(str::len), Some(2), "{a}");
            field.parse().expect("number")
        };
        let (r, mx, mn, p, u) = (get("R"), get("M"), get("N"), get("P"), get("U"));
        assert!(mx >= r && r >= mn && p > mx && u > r, "{a}");
        assert!(get("L(10)") >= get("L(90)"), "{a}");
        assert!(a.starts_with("#2,1,T20,"), "{a}");
        assert_eq!(ask(&mut m, "#1,S0;", t1), None);
        assert!(
            ask(&mut m, "#2,a,s;", t1)
                .expect("answer")
                .ends_with(",s0;")
        );
    }

    #[test]
    fn never_measured_has_no_results() {
        let t0 = Instant::now();
        let mut m = Svantek::new(
            &SimConfig {
                start_measuring: false,
                ..SimConfig::default()
            },
            t0,
        );
        assert_eq!(ask(&mut m, "#2;", t0).as_deref(), Some("#2,?;"));
    }

    #[test]
    fn a_power_cycle_stops_and_forgets_the_results() {
        let t0 = Instant::now();
        let mut m = Svantek::new(&SimConfig::default(), t0);
        let t1 = t0 + Duration::from_secs(3);
        m.power_cycle(t1);
        assert!(!m.running());
        assert_eq!(ask(&mut m, "#1,S?;", t1).as_deref(), Some("#1,S0;"));
        assert_eq!(ask(&mut m, "#2;", t1).as_deref(), Some("#2,?;"));
    }

    #[test]
    fn hundredths_keep_order() {
        for t in -20..2000i16 {
            assert!(hundredths(t) < hundredths(t + 1));
            assert_eq!(hundredths(t).div_euclid(10), i32::from(t));
        }
        assert_eq!(text(7692), "76.92");
        assert_eq!(text(-105), "-1.05");
    }
}
