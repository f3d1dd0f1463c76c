//! The NTi Audio XL2 (Remote Measurement option), from `protocols/xl2.md`.
//!
//! Input: ASCII lines ending in LF (CR LF accepted), case-insensitive, SCPI
//! short or long forms or anything between (`SYST:ERR?` = `SYST:ERRO?` =
//! `SYSTem:ERRor?`), an optional
//! leading `:`. A header and its parameters are separated by blanks (commas
//! are accepted too). Answers end in LF.
//!
//! Commands:
//! - `*IDN?` → `NTiAudio,XL2,A2A-<serial>-E0,V4.71` (serial: the seed's last
//!   five digits);
//! - `*RST`: clears the error queue and the snapshot, stops measuring and
//!   forgets the last result (answers nothing); `*CLS` clears the queue
//!   (a power cycle does what `*RST` does);
//! - `INITiate START` / `INITiate STOP` (a start while running and a stop
//!   while stopped are ignored); `INITiate:STATe?` → `RUNNING` / `STOPPED`
//!   (`SETTLING`, `FROZEN`, `PAUSED` are not simulated);
//! - `MEASure:INITiate` freezes a snapshot of every level;
//!   `MEASure:SLM:123? <param>…` answers from it, one line per parameter
//!   (with `xl2_one_line`: one line, items joined by `, `, e.g.
//!   `53.8 dB, OK, 61.2 dB, OK`). Before the first `MEAS:INIT` the query
//!   takes a snapshot itself. Each item is `<value> dB, OK`, one decimal
//!   (`53,8` with `decimal_comma`), `-.- dB, OK` for an integrated value
//!   before one second of measurement (or after `*RST`);
//! - `SYSTem:ERRor?` → every queued code, oldest first, comma-separated
//!   integers (`-113` or `-113,-108`), and empties the queue; `0` when empty.
//!
//! An unknown command queues `-113`; an unknown parameter queues `-108` and
//! the whole query answers nothing; a query without parameters queues
//! `-109`. The queue holds [`QUEUE_DEPTH`] codes; the last slot then turns
//! into `-350` (overflow).
//!
//! Parameters: `L{A,C,Z}{S,F}` (live), `L{A,C,Z}{S,F}{MAX,MIN}`,
//! `L{A,C,Z}EQ`, `L{A,C,Z}PK`, `L{A,C,Z}PKMAX`, `L1%` `L5%` `L10%` `L50%`
//! `L90%` `L95%` `L99%`. The walk is the A/S level; F-weighted values
//! lie within ±0.8 dB of it (max +0.8, min −0.8), C adds 2.0 dB and Z 3.0 dB to
//! every level, the C peak is the walk's peak (A −2.0, Z +1.0). So Lmax ≥
//! Leq ≥ Lmin and percentiles are ordered for every weighting.
//!
//! Reading event: one per `MEAS:SLM:123?` answer, the parameters asked that
//! map to the record (`LAS`→`lp`, `LAEQ`→`leq`, `LASMAX`→`lmax`, `LASMIN`→
//! `lmin`, `LCPKMAX`→`lpeak`, `Ln%`→`ln`), no device time.

use super::{Framing, Output, Personality, Reading, Walk, family_seed, junk_bytes};
use crate::config::{Family, SimConfig};
use crate::levels::Summary;
use crate::report::Metrics;
use std::collections::VecDeque;
use tokio::time::Instant;

/// Error codes queued for `SYST:ERRO?` (from the note's table).
pub(crate) mod code {
    /// Invalid parameter.
    pub const INVALID_PARAMETER: i32 = -108;
    /// Missing command or parameter.
    pub const MISSING_PARAMETER: i32 = -109;
    /// Invalid command.
    pub const INVALID_COMMAND: i32 = -113;
    /// Queue overflow.
    pub const QUEUE_OVERFLOW: i32 = -350;
}

/// Codes the error queue holds.
pub const QUEUE_DEPTH: usize = 10;
/// The status word after every value (others are not documented).
const STATUS_OK: &str = "OK";
/// The percentiles the meter computes.
const PERCENTILES: [u8; 7] = [1, 5, 10, 50, 90, 95, 99];
/// F-weighted extremes relative to S-weighted ones, tenths.
const FAST_SPREAD: i16 = 8;

/// A frozen snapshot of every level (tenths), as `MEAS:INIT` takes it.
#[derive(Debug, Clone)]
struct Snapshot {
    /// A/S live level.
    lp: i16,
    /// A/F live level.
    lp_fast: i16,
    /// C peak of the latest sample.
    peak: i16,
    /// The measurement, once it has one second.
    integrated: Option<Integrated>,
}

/// A measurement's values in a snapshot (A/S weighting, C peak).
#[derive(Debug, Clone)]
struct Integrated {
    leq: i16,
    max: i16,
    min: i16,
    peak: i16,
    /// In the order of [`PERCENTILES`].
    percentiles: [Option<i16>; 7],
}

/// The simulated XL2.
#[derive(Debug)]
pub(crate) struct Xl2 {
    /// Levels and the measurement.
    walk: Walk,
    /// Codes for `SYST:ERRO?`, oldest first.
    errors: VecDeque<i32>,
    /// The last `MEAS:INIT` snapshot.
    snapshot: Option<Snapshot>,
    /// Dice for the F-weighted live level.
    rng: fastrand::Rng,
    /// The serial in `*IDN?`.
    serial: String,
    /// All parameters on one line.
    one_line: bool,
    /// Decimal comma.
    decimal_comma: bool,
}

impl Xl2 {
    pub(crate) fn new(config: &SimConfig, now: Instant) -> Xl2 {
        let seed = family_seed(config.seed, Family::Xl2);
        Xl2 {
            walk: Walk::new(seed, now, config.start_measuring, config.levels.clone()),
            errors: VecDeque::new(),
            snapshot: None,
            rng: fastrand::Rng::with_seed(seed ^ 0xf457),
            serial: format!("{:05}", config.seed % 100_000),
            one_line: config.xl2_one_line,
            decimal_comma: config.decimal_comma,
        }
    }

    fn queue(&mut self, code: i32) {
        if self.errors.len() >= QUEUE_DEPTH {
            if let Some(last) = self.errors.back_mut() {
                *last = code::QUEUE_OVERFLOW;
            }
            return;
        }
        self.errors.push_back(code);
    }

    fn freeze(&mut self, now: Instant) {
        self.walk.advance(now, |_| {});
        let latest = self.walk.latest;
        let lp_fast = latest.lp + self.rng.i16(-FAST_SPREAD..=FAST_SPREAD);
        let integrated = self
            .walk
            .shown_summary()
            .map(|(s, integ)| integrated(&s, integ));
        self.snapshot = Some(Snapshot {
            lp: latest.lp,
            lp_fast,
            peak: latest.peak,
            integrated,
        });
    }

    fn text(&self, tenths: Option<i16>) -> String {
        match tenths {
            None => "-.-".to_owned(),
            Some(t) => {
                let sign = if t < 0 { "-" } else { "" };
                let sep = if self.decimal_comma { ',' } else { '.' };
                let m = t.unsigned_abs();
                format!("{sign}{}{sep}{}", m / 10, m % 10)
            }
        }
    }

    /// `MEAS:SLM:123? params`.
    fn query(&mut self, params: &[String], now: Instant) -> Option<Output> {
        if params.is_empty() {
            self.queue(code::MISSING_PARAMETER);
            return None;
        }
        if self.snapshot.is_none() {
            self.freeze(now);
        }
        let snapshot = self.snapshot.clone()?;
        let mut values = Vec::with_capacity(params.len());
        for param in params {
            match value(&snapshot, param) {
                Some(v) => values.push(v),
                None => {
                    self.queue(code::INVALID_PARAMETER);
                    return None;
                }
            }
        }
        let mut metrics = Metrics::new();
        let mut items = Vec::with_capacity(values.len());
        for (param, v) in params.iter().zip(values) {
            let text = self.text(v);
            if let Some(name) = metric_name(param) {
                metrics.push_text(&name, v.map(|_| text.as_str()));
            }
            items.push(format!("{text} dB, {STATUS_OK}"));
        }
        let separator = if self.one_line { ", " } else { "\n" };
        let mut bytes = items.join(separator).into_bytes();
        bytes.push(b'\n');
        Some(Output {
            bytes,
            reading: Some(Reading {
                metrics,
                device_time: None,
            }),
        })
    }
}

fn integrated(summary: &Summary, integ: &crate::levels::Integrator) -> Integrated {
    let mut percentiles = [None; 7];
    for (slot, p) in percentiles.iter_mut().zip(PERCENTILES) {
        *slot = integ.exceeded(p).map(|t| t.clamp(summary.min, summary.max));
    }
    Integrated {
        leq: summary.leq_tenths(),
        max: summary.max,
        min: summary.min,
        peak: summary.peak,
        percentiles,
    }
}

/// The value of `param` (upper case) in `snapshot`: `None` for an unknown
/// parameter, `Some(None)` for dashes.
fn value(s: &Snapshot, param: &str) -> Option<Option<i16>> {
    let rest = param.strip_prefix('L')?;
    if let Some(number) = rest.strip_suffix('%') {
        let n: u8 = number.parse().ok()?;
        let at = PERCENTILES.iter().position(|&p| p == n)?;
        return Some(s.integrated.as_ref().and_then(|i| i.percentiles[at]));
    }
    let mut chars = rest.chars();
    let weighting = chars.next()?;
    let (level_offset, peak_offset) = match weighting {
        'A' => (0, -20),
        'C' => (20, 0),
        'Z' => (30, 10),
        _ => return None,
    };
    let suffix = chars.as_str();
    let integ = s.integrated.as_ref();
    let live = |v: i16| Some(Some(v + level_offset));
    let whole = |f: fn(&Integrated) -> i16, offset: i16| Some(integ.map(|i| f(i) + offset));
    match suffix {
        "S" => live(s.lp),
        "F" => live(s.lp_fast),
        "SMAX" => whole(|i| i.max, level_offset),
        "SMIN" => whole(|i| i.min, level_offset),
        "FMAX" => whole(|i| i.max + FAST_SPREAD, level_offset),
        "FMIN" => whole(|i| i.min - FAST_SPREAD, level_offset),
        "EQ" => whole(|i| i.leq, level_offset),
        "PK" => Some(Some(s.peak + peak_offset)),
        "PKMAX" => whole(|i| i.peak, peak_offset),
        _ => None,
    }
}

/// The record's metric for an XL2 parameter (upper case), if it maps.
fn metric_name(param: &str) -> Option<String> {
    match param {
        "LAS" => Some("lp".to_owned()),
        "LAEQ" => Some("leq".to_owned()),
        "LASMAX" => Some("lmax".to_owned()),
        "LASMIN" => Some("lmin".to_owned()),
        "LCPKMAX" => Some("lpeak".to_owned()),
        _ => {
            let n = param.strip_prefix('L')?.strip_suffix('%')?;
            Some(format!("l{n}"))
        }
    }
}

/// Whether `word` (any case) is the SCPI mnemonic `long`: its short form
/// (the upper-case letters), the long form, or anything in between (the
/// note writes `SYST:ERRO?` for `SYSTem:ERRor?`, whose strict short form is
/// `ERR`).
fn is(word: &str, long: &str) -> bool {
    let short = long.chars().take_while(|c| !c.is_ascii_lowercase()).count();
    word.len() >= short
        && word.len() <= long.len()
        && long
            .to_ascii_uppercase()
            .starts_with(&word.to_ascii_uppercase())
}

/// Whether `header` (without `?`) is the path `longs`, e.g. `SYST:ERRO`.
fn path_is(header: &str, longs: &[&str]) -> bool {
    let parts: Vec<&str> = header.split(':').collect();
    parts.len() == longs.len() && parts.iter().zip(longs).all(|(w, l)| is(w, l))
}

impl Personality for Xl2 {
    fn family(&self) -> Family {
        Family::Xl2
    }

    fn framing(&self) -> Framing {
        Framing::Lines
    }

    fn running(&self) -> bool {
        self.walk.running()
    }

    fn power_cycle(&mut self, now: Instant) {
        self.walk.power_up(now, false);
        self.errors.clear();
        self.snapshot = None;
    }

    fn answer(&mut self, frame: &[u8], now: Instant) -> Option<Output> {
        let text = String::from_utf8_lossy(frame);
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        let (header, params) = text
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((text, ""));
        let params: Vec<String> = params
            .split(|c: char| c.is_ascii_whitespace() || c == ',')
            .filter(|p| !p.is_empty())
            .map(str::to_ascii_uppercase)
            .collect();
        let header = header.strip_prefix(':').unwrap_or(header);
        let (path, query) = match header.strip_suffix('?') {
            Some(path) => (path, true),
            None => (header, false),
        };
        let line = |s: String| {
            Some(Output {
                bytes: format!("{s}\n").into_bytes(),
                reading: None,
            })
        };
        let no_params = params.is_empty();
        match (path.to_ascii_uppercase().as_str(), query) {
            ("*IDN", true) if no_params => {
                return line(format!("NTiAudio,XL2,A2A-{}-E0,V4.71", self.serial));
            }
            ("*RST", false) if no_params => {
                self.errors.clear();
                self.snapshot = None;
                self.walk.run = None;
                self.walk.last = None;
                return None;
            }
            ("*CLS", false) if no_params => {
                self.errors.clear();
                return None;
            }
            _ => {}
        }
        if path_is(path, &["INITiate"]) && !query {
            self.walk.advance(now, |_| {});
            match params.as_slice() {
                [p] if p == "START" => {
                    if !self.walk.running() {
                        self.walk.start();
                    }
                }
                [p] if p == "STOP" => self.walk.stop(),
                [] => self.queue(code::MISSING_PARAMETER),
                _ => self.queue(code::INVALID_PARAMETER),
            }
            return None;
        }
        if path_is(path, &["INITiate", "STATe"]) && query && no_params {
            let state = if self.walk.running() {
                "RUNNING"
            } else {
                "STOPPED"
            };
            return line(state.to_owned());
        }
        if path_is(path, &["MEASure", "INITiate"]) && !query && no_params {
            self.freeze(now);
            return None;
        }
        if path_is(path, &["MEASure", "SLM", "123"]) && query {
            return self.query(&params, now);
        }
        if path_is(path, &["SYSTem", "ERRor"]) && query && no_params {
            let codes: Vec<String> = self.errors.drain(..).map(|c| c.to_string()).collect();
            return line(if codes.is_empty() {
                "0".to_owned()
            } else {
                codes.join(",")
            });
        }
        self.queue(code::INVALID_COMMAND);
        None
    }

    fn junk(&self, rng: &mut fastrand::Rng) -> Vec<u8> {
        // Leftover bytes before the answer, or a line of their own.
        let mut junk = junk_bytes(rng, b"\r\n");
        if rng.bool() {
            junk.push(b'\n');
        }
        junk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn xl2(config: SimConfig) -> (Xl2, Instant) {
        let now = Instant::now();
        (Xl2::new(&config, now), now)
    }

    fn ask(m: &mut Xl2, line: &str, at: Instant) -> Option<String> {
        m.answer(line.as_bytes(), at)
            .map(|o| String::from_utf8(o.bytes).expect("ascii"))
    }

    #[test]
    fn identity_state_and_short_forms() {
        let (mut m, t0) = xl2(SimConfig {
            seed: 1_234_567,
            ..SimConfig::default()
        });
        assert_eq!(
            ask(&mut m, "*idn?", t0).as_deref(),
            Some("NTiAudio,XL2,A2A-34567-E0,V4.71\n")
        );
        assert_eq!(ask(&mut m, "INIT:STATE?", t0).as_deref(), Some("RUNNING\n"));
        assert_eq!(ask(&mut m, "initiate stop", t0), None);
        assert_eq!(
            ask(&mut m, ":INITiate:STATe?", t0).as_deref(),
            Some("STOPPED\n")
        );
        assert_eq!(ask(&mut m, "SYSTem:ERRor?", t0).as_deref(), Some("0\n"));
    }

    #[test]
    fn errors_queue_and_pop() {
        let (mut m, t0) = xl2(SimConfig::default());
        assert_eq!(ask(&mut m, "FOO?", t0), None);
        assert_eq!(ask(&mut m, "MEAS:SLM:123? LAEQ LXYZ", t0), None);
        assert_eq!(ask(&mut m, "MEAS:SLM:123?", t0), None);
        assert_eq!(
            ask(&mut m, "SYST:ERRO?", t0).as_deref(),
            Some("-113,-108,-109\n")
        );
        assert_eq!(ask(&mut m, "SYST:ERRO?", t0).as_deref(), Some("0\n"));
        for _ in 0..QUEUE_DEPTH + 3 {
            ask(&mut m, "NOPE", t0);
        }
        let all = ask(&mut m, "SYST:ERRO?", t0).expect("answer");
        assert!(all.trim_end().ends_with(",-350"), "{all}");
        assert_eq!(all.split(',').count(), QUEUE_DEPTH);
    }

    #[test]
    fn dashes_then_ordered_values_from_the_snapshot() {
        let (mut m, t0) = xl2(SimConfig::default());
        let params = "LAS LAEQ LASMAX LASMIN LCPKMAX LCPK LCEQ LAF LAFMAX LAFMIN L1% L5% L10% L50% L90% L95% L99%";
        let early = ask(&mut m, &format!("MEAS:SLM:123? {params}"), t0).expect("answer");
        let lines: Vec<&str> = early.lines().collect();
        assert_eq!(lines.len(), 17, "{early}");
        assert!(
            lines[0] != "-.- dB, OK" && lines[1] == "-.- dB, OK",
            "{early}"
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(ask(&mut m, "MEAS:INIT", t1), None);
        let a = ask(&mut m, &format!("MEAS:SLM:123? {params}"), t1).expect("answer");
        // Frozen: the same answer later.
        let b = ask(
            &mut m,
            &format!("meas:slm:123? {params}"),
            t1 + Duration::from_secs(5),
        );
        assert_eq!(Some(a.clone()), b);
        let v: Vec<f64> = a
            .lines()
            .map(|l| {
                let n = l.strip_suffix(" dB, OK").expect("item");
                n.parse::<f64>().expect("number")
            })
            .collect();
        let (lp, leq, max, min, pkmax) = (v[0], v[1], v[2], v[3], v[4]);
        assert!(max >= leq && leq >= min && min <= lp && lp <= max, "{a}");
        assert!(pkmax > max && v[8] >= max && v[9] <= min, "{a}");
        assert!(v[10..].windows(2).all(|w| w[0] >= w[1]), "{a}");
    }

    #[test]
    fn one_line_and_decimal_comma() {
        let (mut m, t0) = xl2(SimConfig {
            xl2_one_line: true,
            decimal_comma: true,
            ..SimConfig::default()
        });
        let t1 = t0 + Duration::from_secs(3);
        let a = ask(&mut m, "MEAS:SLM:123? LAEQ LAS", t1).expect("answer");
        let items: Vec<&str> = a.trim_end().split(", ").collect();
        assert_eq!(items.len(), 4, "{a}");
        assert!(items[0].ends_with(" dB") && items[0].contains(','), "{a}");
        assert_eq!(items[1], "OK");
        assert_eq!(a.matches('\n').count(), 1);
    }

    #[test]
    fn a_power_cycle_stops_and_forgets() {
        let (mut m, t0) = xl2(SimConfig::default());
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(ask(&mut m, "BAD", t1), None);
        assert_eq!(ask(&mut m, "MEAS:INIT", t1), None);
        m.power_cycle(t1);
        assert!(!m.running());
        assert_eq!(ask(&mut m, "SYST:ERRO?", t1).as_deref(), Some("0\n"));
        assert_eq!(ask(&mut m, "INIT:STATE?", t1).as_deref(), Some("STOPPED\n"));
        assert_eq!(
            ask(&mut m, "MEAS:SLM:123? LAEQ", t1).as_deref(),
            Some("-.- dB, OK\n")
        );
    }

    #[test]
    fn reset_stops_and_forgets() {
        let (mut m, t0) = xl2(SimConfig::default());
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(ask(&mut m, "BAD", t1), None);
        assert_eq!(ask(&mut m, "*RST", t1), None);
        assert_eq!(ask(&mut m, "SYST:ERRO?", t1).as_deref(), Some("0\n"));
        assert_eq!(ask(&mut m, "INIT:STAT?", t1).as_deref(), Some("STOPPED\n"));
        assert_eq!(
            ask(&mut m, "MEAS:SLM:123? LAEQ", t1).as_deref(),
            Some("-.- dB, OK\n")
        );
    }
}
