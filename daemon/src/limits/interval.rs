//! Interval levels (SPEC §11): per device and per configured length, the
//! energy-average level over windows aligned to the gateway's local clock,
//! with Lmax, Lmin, L10, L90, the number of readings and the coverage.
//!
//! # Windows
//!
//! A length is a whole number of seconds from 1 s to 1 d that divides a day
//! ([`valid_length`]); it is given as a plain [`Duration`]. The window
//! boundaries are the instants whose *local* time of day (in the configured
//! time zone, with the offset in force at that instant) is a multiple of the
//! length since local midnight. [`window`] gives the window `[start, end)`
//! holding an instant. On the days the clock changes:
//!
//! - spring forward (Europe/Zurich, 2026-03-29, 02:00 CET → 03:00 CEST):
//!   local 02:xx does not exist, so the 1 h window starting 01:00 CET ends
//!   at 03:00 CEST, one real hour later; 15 min windows go 01:45 CET →
//!   03:00 CEST; the 1 d window is 23 h long.
//! - fall back (2026-10-25, 03:00 CEST → 02:00 CET): local 02:00–03:00
//!   happens twice and gives two distinct 1 h windows (02:00 CEST and
//!   02:00 CET); the 1 d window is 25 h long.
//!
//! Where a transition lands between boundaries (a zone shifting by 30 min
//! under 1 h windows), the window holding it is longer or shorter by the
//! shift; nothing is lost or counted twice. [`window`] accepts any length:
//! one that does not divide a day yields windows cut at local midnight.
//!
//! # The method
//!
//! Every reading stands for a span of time *ending* at the reading (its
//! gateway time `at`, taken to the millisecond):
//!
//! - it covers the time since the previous reading, when that is at most
//!   `max_span = 3 × nominal_spacing` (the device's poll interval or
//!   logging period);
//! - the first reading, and one after a longer gap (the meter was silent,
//!   or the clock stepped forward), covers `nominal_spacing`: the time
//!   before is a hole;
//! - a reading without a value (`None`, or a value that is not a finite
//!   number) covers nothing: its span is a hole;
//! - time is covered at most once: a reading at or before a time already
//!   covered (the clock stepped back, or a repeated timestamp) covers only
//!   what lies after it, usually nothing, and a reading older than the
//!   window being filled contributes nothing.
//!
//! A span crossing a window boundary is split between the windows by time.
//! Over each window, with `wᵢ` the covered time of reading `i` in it:
//!
//! - `leq = 10·log10(Σ wᵢ·10^(Lᵢ/10) / Σ wᵢ)`: the energy average over the
//!   covered time only (a hole is not averaged in as silence);
//! - `lmax`, `lmin`: the highest and lowest input level of the readings
//!   that touched the window;
//! - `l10`, `l90`: the level reached or exceeded during 10 % and 90 % of
//!   the covered time, from a time-weighted histogram of 0.1 dB bins over
//!   −20 dB ..= 160 dB (levels outside are counted at the nearest end; a
//!   level is put in the nearest bin, so meters' 0.1 dB values are exact);
//! - `readings`: the readings whose covered span touched the window (a
//!   reading split across a boundary counts in both);
//! - `coverage`: covered time / window length (0..=1), and `low_coverage`
//!   when it is below [`LevelSettings::min_coverage`].
//!
//! Both input kinds ([`InputKind`]) are weighted the same way. A per-cycle
//! Leq (`CycleLeq`) is exactly the energy over its cycle, so the interval
//! Leq is exact, except that a cycle split by a boundary is assumed to have
//! spread its energy evenly. An Lp sample (`Sample`) is taken as the level
//! over the span before it. The meter's exponential time weighting keeps
//! energy (its impulse response integrates to 1), so the sum of samples ×
//! spacing estimates the energy with the error of sampling alone: with S
//! weighting (τ = 1 s) sampled every second it is small (well under 1 dB)
//! for everything but isolated sub-second impulses, which can be over- or
//! under-counted; with F weighting (τ = 125 ms) sampled every second a
//! short impulse can fall between two samples and be missed.
//!
//! # When a window is emitted
//!
//! A window is closed and returned once no reading can fall in it any
//! more: by [`DeviceLevels::add`] when a reading is at or after its end, or
//! by [`DeviceLevels::tick`] once `now >= end + max_span`. A window is only
//! opened when a reading's span touches it, so a window no reading touched
//! (the meter was off) yields no interval record at all; one with few
//! readings is emitted with its low coverage.
//!
//! # Memory
//!
//! Fixed per accumulator (one per device and length), whatever the length:
//! the histogram is 1801 `u32` bins of covered milliseconds (7.2 KB, enough
//! for 49 days in one bin), plus a few sums.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// Seconds in a (civil) day.
const DAY: i64 = 86_400;

/// The lowest level the histogram holds, in tenths of a dB (−20 dB).
const HIST_LOW_TENTHS: f64 = -200.0;

/// Histogram bins: −20.0 dB ..= 160.0 dB in steps of 0.1 dB.
const BINS: usize = 1801;

/// How many time zone transitions [`window`] steps over before it settles
/// for the plain local floor (real zones have at most two per day).
const MAX_TRANSITION_STEPS: usize = 16;

/// Checks an interval length: a whole number of seconds, 1 s ..= 1 d, that
/// divides a day (so that the windows start at local midnight every day).
///
/// The error says why and names the nearest lengths that would do.
pub fn valid_length(length: Duration) -> Result<(), String> {
    let shown = length_suffix(length);
    if length.subsec_nanos() != 0 {
        return Err(format!(
            "{shown} is not a whole number of seconds; an interval length is 1s to 1d"
        ));
    }
    let secs = length.as_secs();
    if secs == 0 {
        return Err("an interval length must be at least 1s".to_owned());
    }
    if secs > DAY as u64 {
        return Err(format!(
            "{shown} is longer than a day; the longest interval length is 1d"
        ));
    }
    if DAY as u64 % secs != 0 {
        // Suggest lengths in the unit the length was written in (7m → 6m
        // and 8m, not 400s and 432s).
        let unit = [3_600, 60, 1]
            .into_iter()
            .find(|u| secs % u == 0)
            .unwrap_or(1);
        let fits = |d: &u64| d % unit == 0 && DAY as u64 % d == 0;
        let below = (1..secs).rev().find(fits).unwrap_or(unit);
        let above = (secs + 1..=DAY as u64).find(fits).unwrap_or(DAY as u64);
        return Err(format!(
            "{shown} does not divide a day, so its windows could not start at local midnight; \
             the nearest lengths that do are {} and {} (common ones: 1m, 5m, 10m, 15m, 30m, \
             1h, 2h, 3h, 4h, 6h, 8h, 12h, 1d)",
            length_suffix(Duration::from_secs(below)),
            length_suffix(Duration::from_secs(above)),
        ));
    }
    Ok(())
}

/// A length the way it ends a metric name: the largest of `d`, `h`, `m`,
/// `s`, `ms` that divides it exactly (`"15m"`, `"1h"`, `"1d"`, `"90s"`).
pub fn length_suffix(length: Duration) -> String {
    // The form `[levels] intervals` is written in, so a length read in a
    // record or a metric name can be pasted back into the config.
    crate::config::units::format_duration(length)
}

/// Splits an interval metric name into its metric and length:
/// `"leq_15m"` → `("leq", 15 min)`; `None` for a reading's metric (`"lp"`)
/// or anything whose last `_`-part is not a whole number and a unit
/// (`ms`, `s`, `m`, `h`, `d`).
pub fn split_metric(name: &str) -> Option<(&str, Duration)> {
    let (metric, suffix) = name.rsplit_once('_')?;
    let digits = suffix.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = suffix.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let length = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3_600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    };
    (!metric.is_empty()).then_some((metric, length))
}

/// The window `[start, end)` of `length` holding `at`, aligned to local
/// time in `tz` (see the module doc for the definition and DST days).
///
/// `length` is taken in whole seconds, at least 1 s and at most a day.
pub fn window(
    at: DateTime<Utc>,
    length: Duration,
    tz: &TimeZone,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let (start, end) = bounds(at.timestamp(), length_secs(length), tz);
    // Both are within a day of `at`, so inside chrono's range for any `at`
    // jiff can place in a zone; `at` itself is the fallback at the edges.
    (
        DateTime::from_timestamp(start, 0).unwrap_or(at),
        DateTime::from_timestamp(end, 0).unwrap_or(at),
    )
}

/// A length in whole seconds, clamped to 1 s ..= 1 d.
fn length_secs(length: Duration) -> i64 {
    i64::try_from(length.as_secs()).map_or(DAY, |s| s.clamp(1, DAY))
}

/// The window bounds, in Unix seconds, of the window holding second `t`
/// (the floor of the instant: boundaries are whole seconds, so
/// `start <= t` means `start <= at` and `end > t` means `end > at`).
fn bounds(t: i64, len: i64, tz: &TimeZone) -> (i64, i64) {
    let start = start_secs(t, len, tz).min(t);
    let end = end_secs(t, len, tz).max(t + 1);
    (start, end)
}

/// The latest boundary at or before `t`.
///
/// Within one stretch of constant offset, local time runs with real time,
/// so the local floor is the answer if it lies in that stretch. Otherwise
/// the stretch's first instant (a transition) is the answer if its local
/// time is a boundary; else the search goes on in the stretch before.
fn start_secs(t: i64, len: i64, tz: &TimeZone) -> i64 {
    let naive = {
        let off = offset_at(tz, t);
        floor_boundary(t + off, len) - off
    };
    let mut probe = t;
    for _ in 0..MAX_TRANSITION_STEPS {
        let off = offset_at(tz, probe);
        let candidate = floor_boundary(probe + off, len) - off;
        match transition_at_or_before(tz, probe) {
            Some(p) if candidate < p => {
                // `p` starts the stretch holding `probe`: its offset is `off`.
                if is_boundary(p + off, len) {
                    return p;
                }
                probe = p - 1;
            }
            _ => return candidate,
        }
    }
    naive
}

/// The earliest boundary after `t`, found like [`start_secs`] going forward.
fn end_secs(t: i64, len: i64, tz: &TimeZone) -> i64 {
    let naive = {
        let off = offset_at(tz, t);
        next_boundary(t + off, len) - off
    };
    let mut probe = t;
    for _ in 0..MAX_TRANSITION_STEPS {
        let off = offset_at(tz, probe);
        let candidate = next_boundary(probe + off, len) - off;
        match transition_after(tz, probe) {
            Some(q) if candidate >= q => {
                if is_boundary(q + offset_at(tz, q), len) {
                    return q;
                }
                // `q` is not a boundary, so the next one is after it.
                probe = q;
            }
            _ => return candidate,
        }
    }
    naive
}

/// Whether local seconds `local` fall on a boundary.
fn is_boundary(local: i64, len: i64) -> bool {
    local.rem_euclid(DAY) % len == 0
}

/// The latest boundary at or before local seconds `local`.
fn floor_boundary(local: i64, len: i64) -> i64 {
    local - local.rem_euclid(DAY) % len
}

/// The earliest boundary after local seconds `local` (local midnight at the
/// latest, also for a length that does not divide a day).
fn next_boundary(local: i64, len: i64) -> i64 {
    let time_of_day = local.rem_euclid(DAY);
    let start_of_window = time_of_day - time_of_day % len;
    local - time_of_day + (start_of_window + len).min(DAY)
}

/// The zone's offset from UTC in seconds at Unix second `secs` (0 outside
/// jiff's range, years −9999..=9999).
fn offset_at(tz: &TimeZone, secs: i64) -> i64 {
    Timestamp::from_second(secs).map_or(0, |ts| i64::from(tz.to_offset(ts).seconds()))
}

/// The latest transition at or before Unix second `secs`.
fn transition_at_or_before(tz: &TimeZone, secs: i64) -> Option<i64> {
    let after = Timestamp::from_second(secs.checked_add(1)?).ok()?;
    tz.preceding(after)
        .next()
        .map(|transition| transition.timestamp().as_second())
}

/// The earliest transition after Unix second `secs`.
fn transition_after(tz: &TimeZone, secs: i64) -> Option<i64> {
    let ts = Timestamp::from_second(secs).ok()?;
    tz.following(ts)
        .next()
        .map(|transition| transition.timestamp().as_second())
}

/// What a device's input level is; both are weighted by the time they
/// cover (see the module doc for what that means for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// An instantaneous time-weighted level (Lp), standing for the span
    /// before it.
    Sample,
    /// An Leq over the meter's cycle ending at the reading.
    CycleLeq,
}

/// What every device's interval levels share: from `[levels]`.
#[derive(Debug, Clone)]
pub struct LevelSettings {
    /// The window lengths, each checked with [`valid_length`]; a length
    /// given twice is computed once.
    pub lengths: Vec<Duration>,
    /// The zone the windows are aligned to (config, else the system's).
    pub tz: TimeZone,
    /// Intervals with a coverage below this (0..=1) are flagged
    /// `low_coverage`.
    pub min_coverage: f64,
}

/// One closed window's levels.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalLevel {
    /// The device the readings came from.
    pub device: Arc<str>,
    /// The window's first instant (a boundary).
    pub start: DateTime<Utc>,
    /// The window's end, exclusive (the next boundary); `end - start` is
    /// `length` except on the days the clock changes.
    pub end: DateTime<Utc>,
    /// The configured length this window is one of.
    pub length: Duration,
    /// Energy average over the covered time, dB; `None` when nothing was
    /// covered (not emitted in practice).
    pub leq: Option<f64>,
    /// Highest input level of the readings that touched the window.
    pub lmax: Option<f64>,
    /// Lowest input level of the readings that touched the window.
    pub lmin: Option<f64>,
    /// Level reached or exceeded 10 % of the covered time (0.1 dB steps).
    pub l10: Option<f64>,
    /// Level reached or exceeded 90 % of the covered time (0.1 dB steps).
    pub l90: Option<f64>,
    /// Readings whose covered span touched the window.
    pub readings: u32,
    /// Covered time / window length, 0..=1.
    pub coverage: f64,
    /// `coverage < min_coverage`.
    pub low_coverage: bool,
}

impl IntervalLevel {
    /// The name of one of this window's metrics: `metric_name("leq")` is
    /// `"leq_15m"` for a 15 min window.
    pub fn metric_name(&self, metric: &str) -> String {
        format!("{metric}_{}", length_suffix(self.length))
    }
}

/// One device's interval levels: one open window per configured length,
/// fed with the device's readings in order.
#[derive(Debug)]
pub struct DeviceLevels {
    /// Named in every interval emitted.
    device: Arc<str>,
    /// The zone and coverage threshold (shared by every device).
    settings: Arc<LevelSettings>,
    /// What the first reading and one after a hole cover, ms (≥ 1).
    nominal_ms: i64,
    /// The longest span a reading covers, ms: 3 × nominal.
    max_span_ms: i64,
    /// The previous reading's time, ms: the start of the next span.
    previous_ms: Option<i64>,
    /// The latest time covered or declared a hole, ms: no span reaches
    /// before it, so no time is covered twice.
    covered_to_ms: Option<i64>,
    /// One per distinct length, in configured order.
    accumulators: Vec<Accumulator>,
}

impl DeviceLevels {
    /// The levels of `device`, whose readings come every `nominal_spacing`
    /// (poll interval or logging period; taken as at least 1 ms).
    pub fn new(device: Arc<str>, settings: Arc<LevelSettings>, nominal_spacing: Duration) -> Self {
        let nominal_ms = i64::try_from(nominal_spacing.as_millis())
            .unwrap_or(i64::MAX / 4)
            .clamp(1, i64::MAX / 4);
        let mut lengths: Vec<Duration> = Vec::with_capacity(settings.lengths.len());
        for length in &settings.lengths {
            if !lengths.contains(length) {
                lengths.push(*length);
            }
        }
        let accumulators = lengths.into_iter().map(Accumulator::new).collect();
        Self {
            device,
            settings,
            nominal_ms,
            max_span_ms: nominal_ms * 3,
            previous_ms: None,
            covered_to_ms: None,
            accumulators,
        }
    }

    /// The device this is for.
    pub fn device(&self) -> &Arc<str> {
        &self.device
    }

    /// A reading of the input level at gateway time `at` (`None` = the
    /// meter sent no value: its span is a hole). Returns the windows this
    /// reading closed, by end then length.
    pub fn add(&mut self, at: DateTime<Utc>, level: Option<f64>) -> Vec<IntervalLevel> {
        let at_ms = at.timestamp_millis();
        let level = level.filter(|l| l.is_finite());
        let span = match self.previous_ms {
            Some(previous) if at_ms > previous && at_ms - previous <= self.max_span_ms => {
                at_ms - previous
            }
            _ => self.nominal_ms,
        };
        let mut from = at_ms.saturating_sub(span);
        if let Some(covered_to) = self.covered_to_ms {
            from = from.max(covered_to);
        }
        self.previous_ms = Some(at_ms);
        self.covered_to_ms = Some(self.covered_to_ms.map_or(at_ms, |c| c.max(at_ms)));

        let mut out = Vec::new();
        let context = Context {
            device: &self.device,
            settings: &self.settings,
        };
        for accumulator in &mut self.accumulators {
            if let Some(level) = level {
                accumulator.cover(from, at_ms, level, &context, &mut out);
            }
            if accumulator.open.as_ref().is_some_and(|w| w.end_ms <= at_ms) {
                accumulator.close(&context, &mut out);
            }
        }
        sort(&mut out);
        out
    }

    /// Closes the windows no reading can fall in any more
    /// (`now >= end + max_span`), for when readings stop.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<IntervalLevel> {
        let now_ms = now.timestamp_millis();
        let mut out = Vec::new();
        let context = Context {
            device: &self.device,
            settings: &self.settings,
        };
        for accumulator in &mut self.accumulators {
            if accumulator
                .open
                .as_ref()
                .is_some_and(|w| w.end_ms.saturating_add(self.max_span_ms) <= now_ms)
            {
                accumulator.close(&context, &mut out);
            }
        }
        sort(&mut out);
        out
    }

    /// When [`tick`](Self::tick) could next close a window; `None` when no
    /// window is open.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let max_span = chrono::TimeDelta::milliseconds(self.max_span_ms);
        self.accumulators
            .iter()
            .filter_map(|a| a.open.as_ref())
            .filter_map(|w| w.end.checked_add_signed(max_span))
            .min()
    }
}

/// Emission order: by end, then by length (a 15 min window before the
/// hour that ends with it).
fn sort(out: &mut [IntervalLevel]) {
    out.sort_by(|a, b| a.end.cmp(&b.end).then(a.length.cmp(&b.length)));
}

/// What closing a window needs from its device.
struct Context<'a> {
    device: &'a Arc<str>,
    settings: &'a LevelSettings,
}

/// The windows of one length for one device: the open one, if any.
#[derive(Debug)]
struct Accumulator {
    /// The configured length, reported with each window.
    length: Duration,
    /// The length in whole seconds, for the window arithmetic.
    length_secs: i64,
    /// The window being filled; `None` until a reading touches one.
    open: Option<Window>,
    /// Covered milliseconds per 0.1 dB bin of the open window; allocated
    /// once and cleared on close, so memory stays fixed.
    histogram: Box<[u32]>,
    /// The end of the last closed window, ms: nothing is added before it.
    closed_to_ms: Option<i64>,
}

/// The sums of an open window.
#[derive(Debug)]
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    start_ms: i64,
    end_ms: i64,
    /// Σ covered ms × 10^(L/10).
    energy: f64,
    /// Σ covered ms.
    covered_ms: u64,
    readings: u32,
    max: f64,
    min: f64,
}

impl Accumulator {
    fn new(length: Duration) -> Self {
        Self {
            length,
            length_secs: length_secs(length),
            open: None,
            histogram: vec![0; BINS].into_boxed_slice(),
            closed_to_ms: None,
        }
    }

    /// Adds `level` over `[from, to)` ms, splitting it at window ends and
    /// closing each window it leaves.
    fn cover(
        &mut self,
        from: i64,
        to: i64,
        level: f64,
        context: &Context<'_>,
        out: &mut Vec<IntervalLevel>,
    ) {
        let mut x = from.max(self.closed_to_ms.unwrap_or(i64::MIN));
        while x < to {
            if self.open.as_ref().is_some_and(|w| x >= w.end_ms) {
                self.close(context, out);
            }
            if self.open.is_none() {
                let Some(window) = self.window_at(x, &context.settings.tz) else {
                    return;
                };
                self.open = Some(window);
            }
            let Some(window) = self.open.as_mut() else {
                return;
            };
            let x_in = x.max(window.start_ms);
            let y = to.min(window.end_ms);
            if y <= x_in {
                return;
            }
            let covered = u64::try_from(y - x_in).unwrap_or(0);
            window.energy += covered as f64 * 10f64.powf(level / 10.0);
            window.covered_ms += covered;
            window.readings = window.readings.saturating_add(1);
            window.max = window.max.max(level);
            window.min = window.min.min(level);
            let bin = &mut self.histogram[bin(level)];
            *bin = bin.saturating_add(u32::try_from(covered).unwrap_or(u32::MAX));
            x = y;
        }
    }

    /// The (empty) window holding millisecond `x`.
    fn window_at(&self, x: i64, tz: &TimeZone) -> Option<Window> {
        let (start, end) = bounds(x.div_euclid(1000), self.length_secs, tz);
        Some(Window {
            start: DateTime::from_timestamp(start, 0)?,
            end: DateTime::from_timestamp(end, 0)?,
            start_ms: start.checked_mul(1000)?,
            end_ms: end.checked_mul(1000)?,
            energy: 0.0,
            covered_ms: 0,
            readings: 0,
            max: f64::NEG_INFINITY,
            min: f64::INFINITY,
        })
    }

    /// Emits the open window (if a reading touched it) and clears the sums.
    fn close(&mut self, context: &Context<'_>, out: &mut Vec<IntervalLevel>) {
        let Some(window) = self.open.take() else {
            return;
        };
        self.closed_to_ms = Some(window.end_ms);
        let total: u64 = self.histogram.iter().map(|&w| u64::from(w)).sum();
        let l10 = exceeded(&self.histogram, total, 10);
        let l90 = exceeded(&self.histogram, total, 90);
        self.histogram.fill(0);
        if window.readings == 0 || window.covered_ms == 0 {
            return;
        }
        let span_ms = (window.end_ms - window.start_ms).max(1) as f64;
        let coverage = (window.covered_ms as f64 / span_ms).clamp(0.0, 1.0);
        out.push(IntervalLevel {
            device: Arc::clone(context.device),
            start: window.start,
            end: window.end,
            length: self.length,
            leq: Some(10.0 * (window.energy / window.covered_ms as f64).log10()),
            lmax: Some(window.max),
            lmin: Some(window.min),
            l10,
            l90,
            readings: window.readings,
            coverage,
            low_coverage: coverage < context.settings.min_coverage,
        });
    }
}

/// The histogram bin of a (finite) level: the nearest 0.1 dB, clamped.
fn bin(level: f64) -> usize {
    let tenths = (level * 10.0).round() - HIST_LOW_TENTHS;
    tenths.clamp(0.0, (BINS - 1) as f64) as usize
}

/// The level of bin `i`.
fn bin_level(i: usize) -> f64 {
    (i as f64 + HIST_LOW_TENTHS) / 10.0
}

/// The highest level reached or exceeded during at least `percent` % of
/// the histogram's time.
fn exceeded(histogram: &[u32], total: u64, percent: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let mut at_or_above: u64 = 0;
    for (i, &w) in histogram.iter().enumerate().rev() {
        at_or_above += u64::from(w);
        if w > 0 && at_or_above * 100 >= total * percent {
            return Some(bin_level(i));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid time")
    }

    fn zurich() -> TimeZone {
        TimeZone::get("Europe/Zurich").expect("zone")
    }

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    fn settings(lengths: &[Duration], tz: TimeZone, min_coverage: f64) -> Arc<LevelSettings> {
        Arc::new(LevelSettings {
            lengths: lengths.to_vec(),
            tz,
            min_coverage,
        })
    }

    fn levels(lengths: &[Duration], spacing_s: u64, min_coverage: f64) -> DeviceLevels {
        DeviceLevels::new(
            Arc::from("nl43-north"),
            settings(lengths, TimeZone::UTC, min_coverage),
            Duration::from_secs(spacing_s),
        )
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    // ---- lengths and names ----

    #[test]
    fn valid_lengths_divide_a_day() {
        for ok in [1, 30, 60, 900, 3_600, 28_800, 86_400] {
            assert_eq!(valid_length(Duration::from_secs(ok)), Ok(()), "{ok}");
        }
        let err = valid_length(mins(7)).expect_err("7m");
        assert!(err.starts_with("7m does not divide a day"), "{err}");
        assert!(err.contains("6m and 8m"), "{err}");
        assert!(valid_length(Duration::ZERO).is_err());
        assert!(valid_length(Duration::from_secs(2 * 86_400)).is_err());
        assert!(valid_length(Duration::from_millis(1_500)).is_err());
    }

    #[test]
    fn suffixes_use_the_largest_exact_unit() {
        assert_eq!(length_suffix(Duration::from_secs(30)), "30s");
        assert_eq!(length_suffix(Duration::from_secs(90)), "90s");
        assert_eq!(length_suffix(mins(15)), "15m");
        assert_eq!(length_suffix(mins(60)), "1h");
        assert_eq!(length_suffix(mins(120)), "2h");
        assert_eq!(length_suffix(mins(1_440)), "1d");
        assert_eq!(length_suffix(Duration::from_millis(1_500)), "1500ms");
        assert_eq!(split_metric("leq_15m"), Some(("leq", mins(15))));
        assert_eq!(split_metric("l_a_eq_1d"), Some(("l_a_eq", mins(1_440))));
        assert_eq!(split_metric("lp"), None);
        assert_eq!(split_metric("lp_max"), None);
        assert_eq!(split_metric("_1h"), None);
    }

    // ---- windows ----

    fn win(at: DateTime<Utc>, length: Duration, tz: &TimeZone) -> (DateTime<Utc>, DateTime<Utc>) {
        let (start, end) = window(at, length, tz);
        assert!(start <= at && at < end, "{at} not in [{start}, {end})");
        (start, end)
    }

    #[test]
    fn utc_windows() {
        let at = utc(2026, 12, 2, 10, 17, 3) + chrono::TimeDelta::milliseconds(250);
        assert_eq!(
            win(at, mins(15), &TimeZone::UTC),
            (utc(2026, 12, 2, 10, 15, 0), utc(2026, 12, 2, 10, 30, 0))
        );
        assert_eq!(
            win(utc(2026, 12, 2, 10, 15, 0), mins(15), &TimeZone::UTC),
            (utc(2026, 12, 2, 10, 15, 0), utc(2026, 12, 2, 10, 30, 0))
        );
        assert_eq!(
            win(at, mins(1_440), &TimeZone::UTC),
            (utc(2026, 12, 2, 0, 0, 0), utc(2026, 12, 3, 0, 0, 0))
        );
    }

    #[test]
    fn zurich_winter_windows_start_at_local_boundaries() {
        // CET = UTC+1: local 11:17 is 10:17 UTC; the local day starts 23:00 UTC.
        let tz = zurich();
        let at = utc(2026, 12, 2, 10, 17, 0);
        assert_eq!(
            win(at, mins(60), &tz),
            (utc(2026, 12, 2, 10, 0, 0), utc(2026, 12, 2, 11, 0, 0))
        );
        assert_eq!(
            win(at, mins(1_440), &tz),
            (utc(2026, 12, 1, 23, 0, 0), utc(2026, 12, 2, 23, 0, 0))
        );
    }

    #[test]
    fn spring_forward_in_zurich() {
        // 2026-03-29 01:00 UTC: 02:00 CET becomes 03:00 CEST.
        let tz = zurich();
        // 1h: 01:00 CET (00:00 UTC) → 03:00 CEST (01:00 UTC), one real hour.
        assert_eq!(
            win(utc(2026, 3, 29, 0, 30, 0), mins(60), &tz),
            (utc(2026, 3, 29, 0, 0, 0), utc(2026, 3, 29, 1, 0, 0))
        );
        // 03:00 CEST → 04:00 CEST.
        assert_eq!(
            win(utc(2026, 3, 29, 1, 0, 0), mins(60), &tz),
            (utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 29, 2, 0, 0))
        );
        // 15m: 01:45 CET → 03:00 CEST, then 03:00 → 03:15 CEST.
        assert_eq!(
            win(utc(2026, 3, 29, 0, 59, 59), mins(15), &tz),
            (utc(2026, 3, 29, 0, 45, 0), utc(2026, 3, 29, 1, 0, 0))
        );
        assert_eq!(
            win(utc(2026, 3, 29, 1, 5, 0), mins(15), &tz),
            (utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 29, 1, 15, 0))
        );
        // 1d: 00:00 CET (23:00 UTC the day before) → 00:00 CEST (22:00 UTC): 23 h.
        let (start, end) = win(utc(2026, 3, 29, 12, 0, 0), mins(1_440), &tz);
        assert_eq!(
            (start, end),
            (utc(2026, 3, 28, 23, 0, 0), utc(2026, 3, 29, 22, 0, 0))
        );
        assert_eq!(end - start, chrono::TimeDelta::hours(23));
        // Just before the change, the same day window.
        assert_eq!(
            win(utc(2026, 3, 29, 0, 59, 59), mins(1_440), &tz),
            (start, end)
        );
    }

    #[test]
    fn fall_back_in_zurich() {
        // 2026-10-25 01:00 UTC: 03:00 CEST becomes 02:00 CET.
        let tz = zurich();
        // 1h: 02:00 CEST (00:00 UTC) and 02:00 CET (01:00 UTC) are two windows.
        assert_eq!(
            win(utc(2026, 10, 25, 0, 30, 0), mins(60), &tz),
            (utc(2026, 10, 25, 0, 0, 0), utc(2026, 10, 25, 1, 0, 0))
        );
        assert_eq!(
            win(utc(2026, 10, 25, 1, 30, 0), mins(60), &tz),
            (utc(2026, 10, 25, 1, 0, 0), utc(2026, 10, 25, 2, 0, 0))
        );
        // 15m: 02:45 CEST → 02:00 CET (the end of the first 02:xx hour).
        assert_eq!(
            win(utc(2026, 10, 25, 0, 50, 0), mins(15), &tz),
            (utc(2026, 10, 25, 0, 45, 0), utc(2026, 10, 25, 1, 0, 0))
        );
        assert_eq!(
            win(utc(2026, 10, 25, 1, 0, 0), mins(15), &tz),
            (utc(2026, 10, 25, 1, 0, 0), utc(2026, 10, 25, 1, 15, 0))
        );
        // 1d: 00:00 CEST (22:00 UTC) → 00:00 CET (23:00 UTC the next day): 25 h.
        for at in [
            utc(2026, 10, 24, 22, 0, 0),
            utc(2026, 10, 25, 0, 59, 59),
            utc(2026, 10, 25, 12, 0, 0),
            utc(2026, 10, 25, 22, 59, 59),
        ] {
            let (start, end) = win(at, mins(1_440), &tz);
            assert_eq!(
                (start, end),
                (utc(2026, 10, 24, 22, 0, 0), utc(2026, 10, 25, 23, 0, 0)),
                "{at}"
            );
            assert_eq!(end - start, chrono::TimeDelta::hours(25));
        }
    }

    #[test]
    fn half_hour_zone() {
        // Asia/Kolkata, UTC+05:30: local 05:40 is 00:10 UTC; the local hour
        // 05:00–06:00 is 23:30–00:30 UTC.
        let tz = TimeZone::get("Asia/Kolkata").expect("zone");
        assert_eq!(
            win(utc(2026, 12, 2, 0, 10, 0), mins(60), &tz),
            (utc(2026, 12, 1, 23, 30, 0), utc(2026, 12, 2, 0, 30, 0))
        );
        assert_eq!(
            win(utc(2026, 12, 2, 0, 10, 0), mins(1_440), &tz),
            (utc(2026, 12, 1, 18, 30, 0), utc(2026, 12, 2, 18, 30, 0))
        );
    }

    #[test]
    fn half_hour_dst_shift() {
        // Australia/Lord_Howe moves by 30 min (+10:30 / +11:00): the 1 h
        // window holding the change is 1.5 h long either way.
        let tz = TimeZone::get("Australia/Lord_Howe").expect("zone");
        // 2026-04-05 02:00 +11 → 01:30 +10:30: 01:00 +11 → 02:00 +10:30.
        assert_eq!(
            win(utc(2026, 4, 4, 15, 10, 0), mins(60), &tz),
            (utc(2026, 4, 4, 14, 0, 0), utc(2026, 4, 4, 15, 30, 0))
        );
        // 2026-10-04 02:00 +10:30 → 02:30 +11: 01:00 +10:30 → 03:00 +11.
        assert_eq!(
            win(utc(2026, 10, 3, 15, 40, 0), mins(60), &tz),
            (utc(2026, 10, 3, 14, 30, 0), utc(2026, 10, 3, 16, 0, 0))
        );
    }

    #[test]
    fn windows_tile_across_dst_days() {
        // Consecutive windows touch: the end of one is the start of the next,
        // and every one holds the instant it was asked for.
        let tz = zurich();
        let lord_howe = TimeZone::get("Australia/Lord_Howe").expect("zone");
        let cases = [
            (mins(15), &tz),
            (mins(60), &tz),
            (mins(1_440), &tz),
            (mins(7), &tz),
            (mins(60), &lord_howe),
            (mins(1_440), &lord_howe),
        ];
        for (length, tz) in cases {
            for day in [utc(2026, 3, 28, 0, 0, 0), utc(2026, 10, 2, 0, 0, 0)] {
                let mut at = day;
                let mut windows = 0;
                while at < day + chrono::TimeDelta::days(4) {
                    let (_, end) = win(at, length, tz);
                    let (next_start, _) = win(end, length, tz);
                    assert_eq!(next_start, end, "{length:?} at {at}");
                    // A window a second before its end is the same window.
                    let (start, same_end) = win(end - chrono::TimeDelta::seconds(1), length, tz);
                    assert_eq!(same_end, end);
                    assert!(start <= at);
                    at = end;
                    windows += 1;
                }
                assert!(windows > 0);
            }
        }
    }

    // ---- levels ----

    /// Feeds `(second offset, level)` readings and collects what closes.
    fn feed(
        device: &mut DeviceLevels,
        t0: DateTime<Utc>,
        readings: impl IntoIterator<Item = (i64, Option<f64>)>,
    ) -> Vec<IntervalLevel> {
        let mut out = Vec::new();
        for (s, level) in readings {
            out.extend(device.add(t0 + chrono::TimeDelta::seconds(s), level));
        }
        out
    }

    #[test]
    fn constant_level_over_a_full_window() {
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        // Samples at 10:00:01 ..= 10:15:00: each covers the second before it.
        let out = feed(&mut device, t0, (1..=900).map(|s| (s, Some(60.0))));
        assert_eq!(out.len(), 1);
        let level = &out[0];
        assert_eq!((level.start, level.end), (t0, utc(2026, 12, 2, 10, 15, 0)));
        assert!(close(level.leq.expect("leq"), 60.0));
        assert_eq!((level.lmax, level.lmin), (Some(60.0), Some(60.0)));
        assert_eq!((level.l10, level.l90), (Some(60.0), Some(60.0)));
        assert_eq!(level.readings, 900);
        assert!(close(level.coverage, 1.0));
        assert!(!level.low_coverage);
        assert_eq!(level.metric_name("leq"), "leq_15m");
        assert_eq!(&*level.device, "nl43-north");
    }

    #[test]
    fn half_at_50_half_at_70() {
        // Leq = 10·log10((10^5 + 10^7) / 2) = 10·log10(5 050 000)
        //     = 10 × 6.703291378… = 67.0329 dB.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=900).map(|s| (s, Some(if s <= 450 { 50.0 } else { 70.0 }))),
        );
        let leq = out[0].leq.expect("leq");
        assert!((leq - 67.032_913_78).abs() < 1e-6, "{leq}");
        assert_eq!((out[0].lmax, out[0].lmin), (Some(70.0), Some(50.0)));
    }

    #[test]
    fn a_gap_is_not_averaged_in() {
        // 10:00–10:05 at 60 dB, nothing 10:05–10:10, 10:10–10:15 at 70 dB:
        // 600 s of 900 covered; Leq over the covered part only:
        // 10·log10((10^6 + 10^7) / 2) = 10·log10(5 500 000) = 67.4036 dB.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=300)
                .map(|s| (s, Some(60.0)))
                .chain((601..=900).map(|s| (s, Some(70.0)))),
        );
        assert_eq!(out.len(), 1);
        let level = &out[0];
        assert!(close(level.coverage, 2.0 / 3.0), "{}", level.coverage);
        assert!(level.low_coverage);
        assert_eq!(level.readings, 600);
        let leq = level.leq.expect("leq");
        assert!((leq - 67.403_626_89).abs() < 1e-6, "{leq}");
        // The same with min_coverage 0.5 is not flagged.
        let mut device = levels(&[mins(15)], 1, 0.5);
        let out = feed(
            &mut device,
            t0,
            (1..=300).chain(601..=900).map(|s| (s, Some(60.0))),
        );
        assert!(!out[0].low_coverage);
    }

    #[test]
    fn none_levels_are_holes() {
        // Every other second has no value: half the window is covered.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=900).map(|s| (s, (s % 2 == 0).then_some(60.0))),
        );
        assert!(close(out[0].coverage, 0.5));
        assert_eq!(out[0].readings, 450);
        assert!(close(out[0].leq.expect("leq"), 60.0));
        // Not-a-number is a hole too.
        let mut device = levels(&[mins(15)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=900).map(|s| (s, Some(if s % 2 == 0 { 60.0 } else { f64::NAN }))),
        );
        assert!(close(out[0].coverage, 0.5));
        assert_eq!(out[0].lmin, Some(60.0));
    }

    #[test]
    fn cycle_leq_every_minute() {
        // A Casella-like meter logging a 60 s Leq each minute, 10:01 ..= 10:15:
        // 14 cycles at 60 dB and one at 70 dB.
        // Leq = 10·log10((14 × 10^6 + 10^7) / 15) = 10·log10(1 600 000) = 62.0412 dB.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 60, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=15).map(|m| (m * 60, Some(if m == 8 { 70.0 } else { 60.0 }))),
        );
        assert_eq!(out.len(), 1);
        let level = &out[0];
        let leq = level.leq.expect("leq");
        assert!((leq - 62.041_199_83).abs() < 1e-6, "{leq}");
        assert_eq!(level.readings, 15);
        assert!(close(level.coverage, 1.0));
        // 1 min of 15 at 70 dB (6.7 %) does not reach L10.
        assert_eq!((level.l10, level.l90), (Some(60.0), Some(60.0)));
        assert_eq!(level.lmax, Some(70.0));
    }

    #[test]
    fn a_span_crossing_a_boundary_is_split() {
        // 60 s cycles ending 10:14:30 and 10:15:30: the second is split 30 s
        // into each window. Readings 10:00:30 ..= 10:14:30 at 60 dB cover
        // 10:00:30–10:14:30 (the first covers its nominal 60 s from 09:59:30,
        // 30 s of which go to the 09:45 window), then 70 dB over
        // 10:14:30–10:15:30.
        let t0 = utc(2026, 12, 2, 10, 0, 30);
        let mut device = levels(&[mins(15)], 60, 0.0);
        let mut out = feed(&mut device, t0, (0..=14).map(|m| (m * 60, Some(60.0))));
        assert_eq!(out.len(), 1, "the 09:45 window closes at 10:00:30");
        assert_eq!(out[0].start, utc(2026, 12, 2, 9, 45, 0));
        assert!(close(out[0].coverage, 30.0 / 900.0));
        out = device.add(utc(2026, 12, 2, 10, 15, 30), Some(70.0));
        assert_eq!(out.len(), 1);
        let level = &out[0];
        assert_eq!(level.start, utc(2026, 12, 2, 10, 0, 0));
        assert_eq!(level.readings, 16);
        assert!(close(level.coverage, 1.0));
        // 870 s at 60 dB, 30 s at 70 dB:
        // 10·log10((870 × 10^6 + 30 × 10^7) / 900) = 10·log10(1 300 000) = 61.1394 dB.
        let leq = level.leq.expect("leq");
        assert!((leq - 61.139_433_52).abs() < 1e-6, "{leq}");
        // The next window already holds 30 s of the 70 dB cycle.
        out = device.tick(utc(2026, 12, 2, 10, 33, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, utc(2026, 12, 2, 10, 15, 0));
        assert!(close(out[0].coverage, 30.0 / 900.0));
        assert_eq!(out[0].readings, 1);
    }

    #[test]
    fn l10_and_l90_from_a_known_distribution() {
        // 900 one-second samples, 40.0, 40.1, … 129.9 dB, each once.
        // L10: the 90 loudest seconds are 121.0 ..= 129.9 → 121.0.
        // L90: the 810 loudest are 49.0 ..= 129.9 → 49.0.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=900).map(|s| (s, Some(40.0 + (s - 1) as f64 * 0.1))),
        );
        let level = &out[0];
        assert_eq!(level.l10, Some(121.0));
        assert_eq!(level.l90, Some(49.0));
        assert!(close(level.lmax.expect("lmax"), 129.9));
        assert_eq!(level.lmin, Some(40.0));
        // Outside the histogram's range: counted at its ends.
        let mut device = levels(&[mins(1)], 1, 0.75);
        let out = feed(
            &mut device,
            t0,
            (1..=60).map(|s| (s, Some(if s <= 30 { -40.0 } else { 200.0 }))),
        );
        assert_eq!((out[0].l10, out[0].l90), (Some(160.0), Some(-20.0)));
        assert_eq!((out[0].lmax, out[0].lmin), (Some(200.0), Some(-40.0)));
    }

    #[test]
    fn several_lengths_close_in_order() {
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(60), mins(15), mins(15)], 1, 0.75);
        let out = feed(&mut device, t0, (1..=3_600).map(|s| (s, Some(60.0))));
        let names: Vec<_> = out
            .iter()
            .map(|l| (l.start, l.metric_name("leq")))
            .collect();
        assert_eq!(out.len(), 5, "{names:?}");
        assert_eq!(out[3].length, mins(15));
        assert_eq!(out[4].length, mins(60));
        assert_eq!(out[4].readings, 3_600);
    }

    #[test]
    fn tick_closes_a_window_when_readings_stop() {
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        assert_eq!(device.next_deadline(), None);
        let out = feed(&mut device, t0, (1..=870).map(|s| (s, Some(60.0))));
        assert!(out.is_empty());
        // A reading up to 3 s after the end could still reach back into it.
        let deadline = utc(2026, 12, 2, 10, 15, 3);
        assert_eq!(device.next_deadline(), Some(deadline));
        assert!(
            device
                .tick(deadline - chrono::TimeDelta::milliseconds(1))
                .is_empty()
        );
        let out = device.tick(deadline);
        assert_eq!(out.len(), 1);
        assert!(close(out[0].coverage, 870.0 / 900.0));
        assert_eq!(device.next_deadline(), None);
        assert!(device.tick(deadline).is_empty());
        // A late reading cannot reach back into the closed window.
        let out = feed(&mut device, t0, [(902, Some(60.0))]);
        assert!(out.is_empty());
        let out = device.tick(utc(2026, 12, 2, 10, 31, 0));
        assert_eq!(out[0].start, utc(2026, 12, 2, 10, 15, 0));
        assert_eq!(out[0].readings, 1);
        assert!(close(out[0].coverage, 1.0 / 900.0));
    }

    #[test]
    fn a_silent_window_yields_no_record() {
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.75);
        feed(&mut device, t0, (1..=900).map(|s| (s, Some(60.0))));
        // Nothing 10:15–10:45; the next reading is at 10:45:01.
        let out = feed(&mut device, t0, [(2_701, Some(60.0))]);
        assert!(out.is_empty(), "{out:?}");
        let out = device.tick(utc(2026, 12, 2, 11, 0, 3));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, utc(2026, 12, 2, 10, 45, 0));
    }

    #[test]
    fn clock_step_back_covers_nothing_twice() {
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.0);
        let mut out = feed(&mut device, t0, (1..=600).map(|s| (s, Some(60.0))));
        // The clock steps back 100 s: 10:08:21 ..= 10:10:00 is covered again
        // by the gateway's count, but those readings add nothing; from
        // 10:10:01 on they count again.
        out.extend(feed(&mut device, t0, (501..=900).map(|s| (s, Some(80.0)))));
        assert_eq!(out.len(), 1);
        let level = &out[0];
        assert!(close(level.coverage, 1.0));
        assert_eq!(level.readings, 900);
        // Back before the window's start: nothing, and no window reopens.
        let mut device = levels(&[mins(15)], 1, 0.0);
        feed(&mut device, t0, (1..=1_000).map(|s| (s, Some(60.0))));
        let out = feed(&mut device, t0, (-5..=0).map(|s| (s, Some(90.0))));
        assert!(out.is_empty());
        let out = device.tick(utc(2026, 12, 2, 11, 0, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lmax, Some(60.0));
    }

    #[test]
    fn clock_step_forward_is_a_hole() {
        // At 10:05 the clock jumps 2 min forward: the reading after covers
        // its nominal second; the 2 min are a hole.
        let t0 = utc(2026, 12, 2, 10, 0, 0);
        let mut device = levels(&[mins(15)], 1, 0.0);
        let mut out = feed(&mut device, t0, (1..=300).map(|s| (s, Some(60.0))));
        out.extend(feed(&mut device, t0, (421..=900).map(|s| (s, Some(60.0)))));
        assert!(close(out[0].coverage, 780.0 / 900.0));
    }

    #[test]
    fn hour_windows_across_fall_back() {
        // 1 s samples from 01:30 CEST to 02:30 CET on 2026-10-25 (two real
        // hours, 23:30–01:30 UTC): the windows 01:00 CEST (half covered),
        // 02:00 CEST (full) and 02:00 CET (half, closed by tick).
        let tz = zurich();
        let mut device = DeviceLevels::new(
            Arc::from("d"),
            settings(&[mins(60)], tz, 0.75),
            Duration::from_secs(1),
        );
        let t0 = utc(2026, 10, 24, 23, 30, 0);
        let mut out = feed(&mut device, t0, (1..=7_200).map(|s| (s, Some(60.0))));
        out.extend(device.tick(utc(2026, 10, 25, 3, 0, 0)));
        let got: Vec<_> = out.iter().map(|l| (l.start, l.end, l.readings)).collect();
        assert_eq!(
            got,
            vec![
                (
                    utc(2026, 10, 24, 23, 0, 0),
                    utc(2026, 10, 25, 0, 0, 0),
                    1_800
                ),
                (
                    utc(2026, 10, 25, 0, 0, 0),
                    utc(2026, 10, 25, 1, 0, 0),
                    3_600
                ),
                (
                    utc(2026, 10, 25, 1, 0, 0),
                    utc(2026, 10, 25, 2, 0, 0),
                    1_800
                ),
            ]
        );
        assert!(close(out[1].coverage, 1.0));
    }

    #[test]
    fn day_window_on_spring_forward_is_23_hours() {
        let tz = zurich();
        let mut device = DeviceLevels::new(
            Arc::from("d"),
            settings(&[mins(1_440)], tz, 0.99),
            Duration::from_secs(60),
        );
        // One 60 s Leq per minute over the whole local day (23 h = 1380 min).
        let t0 = utc(2026, 3, 28, 23, 0, 0);
        let out = feed(&mut device, t0, (1..=1_380).map(|m| (m * 60, Some(55.0))));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end - out[0].start, chrono::TimeDelta::hours(23));
        assert_eq!(out[0].readings, 1_380);
        assert!(close(out[0].coverage, 1.0));
        assert!(!out[0].low_coverage);
        assert_eq!(out[0].metric_name("leq"), "leq_1d");
    }
}
