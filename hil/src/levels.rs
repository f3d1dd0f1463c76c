//! Sound levels: the 10 Hz Lp samples and what a measurement integrates
//! from them.
//!
//! [`LevelSource`] is a seeded, mean-reverting random walk around
//! [`BASE_DB`] with occasional loud events (a truck passing), sampled every
//! [`SAMPLE_PERIOD`]. Each sample also carries a peak at least
//! [`MIN_CREST_TENTHS`] above its Lp, so Lpeak > Lmax always.
//!
//! A [`LevelControl`] steers a walk while it runs: an offset in dB added to
//! every sample from the next one on (a truck parks next to the meter: no
//! ramp, no drift), and calm (no random loud events, the background kept
//! within [`CALM_SPAN_DB`] of the base). Everything integrated from the
//! samples (Leq, Lmax, percentiles, LE) follows, and the invariants below
//! hold whatever the knobs say: Lp stays within the same limits.
//!
//! [`Integrator`] accumulates samples since `Measure,Start` and yields the
//! main channel's values with the invariants a real meter keeps:
//! Lmax ≥ Leq ≥ Lmin, Lpeak > Lmax, L5 ≥ L10 ≥ L50 ≥ L90 ≥ L95 (all within
//! Lmin..=Lmax), LE = Leq + 10·log10(T). Before one second of integration
//! every integrated value is dashes. All levels are whole tenths of a dB, so
//! what the simulator computes is exactly what goes on the wire.

use firmware_bridge::Deci;
use firmware_bridge::nl43::ChannelValues;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The meter's sampling period (10 Hz, as `DRD?` output).
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(100);
/// Samples per second.
pub const SAMPLES_PER_SECOND: u64 = 10;
/// The level the walk reverts to, dB.
pub const BASE_DB: f64 = 55.0;
/// Lpeak of a sample is at least this far above its Lp (tenths).
pub const MIN_CREST_TENTHS: i16 = 80;
/// The measurement range: above it a sample sets the overload flag...
pub const OVERLOAD_TENTHS: i16 = 1300;
/// ...and below it the under-range flag (tenths).
pub const UNDER_RANGE_TENTHS: i16 = 250;
/// Lp never leaves this band (tenths).
const LP_LIMITS: (i16, i16) = (200, 1380);
/// Histogram bins: one per tenth of a dB from 0 to this.
const HIST_TOP: usize = 1500;
/// The percentile slots' default meanings (LN1..LN5).
pub const PERCENTILES: [u8; 5] = [5, 10, 50, 90, 95];
/// A calm walk's background stays within this many dB of [`BASE_DB`]
/// (before the offset).
pub const CALM_SPAN_DB: f64 = 5.0;

/// The run-time knobs of level walks: an offset in dB added to every
/// sample, and calm (no random loud events).
///
/// A handle: clones share the knobs, so whoever keeps a clone (`slm-sim`'s
/// stdin reader) turns them for every walk built with it (the live meter of
/// any family; not the NL-43's stored records, which are old). A walk reads
/// the knobs as it generates each sample, so a change applies from the next
/// sample generated on. The default is offset 0, events on.
#[derive(Debug, Clone, Default)]
pub struct LevelControl(Arc<Knobs>);

/// What a [`LevelControl`] shares.
#[derive(Debug, Default)]
struct Knobs {
    /// The offset, dB, as `f64` bits (0 is 0.0).
    offset_bits: AtomicU64,
    /// No random loud events.
    calm: AtomicBool,
}

impl LevelControl {
    /// The largest offset magnitude accepted, dB: beyond it every sample
    /// would sit at the edge of the Lp limits anyway.
    pub const MAX_OFFSET_DB: f64 = 120.0;

    /// Knobs starting at `offset_db` (see [`LevelControl::set_offset_db`])
    /// and `calm`.
    pub fn new(offset_db: f64, calm: bool) -> LevelControl {
        let control = LevelControl::default();
        control.set_offset_db(offset_db);
        control.set_calm(calm);
        control
    }

    /// The offset added to every sample, dB.
    pub fn offset_db(&self) -> f64 {
        f64::from_bits(self.0.offset_bits.load(Ordering::Relaxed))
    }

    /// Reads an offset as written on `slm-sim`'s command line and control
    /// input: a decimal number of dB (`30`, `-12.5`, `+25`) within
    /// ±[`LevelControl::MAX_OFFSET_DB`].
    pub fn parse_offset(text: &str) -> Result<f64, String> {
        let text = text.trim();
        let db: f64 = text
            .parse()
            .map_err(|_| format!("not a number of dB: {text:?}"))?;
        if !db.is_finite() || db.abs() > LevelControl::MAX_OFFSET_DB {
            return Err(format!(
                "offset {text} dB is outside ±{} dB",
                LevelControl::MAX_OFFSET_DB
            ));
        }
        Ok(db)
    }

    /// Sets the offset, dB: kept within ±[`LevelControl::MAX_OFFSET_DB`]
    /// (not a number: 0).
    /// Returns the offset now in force.
    pub fn set_offset_db(&self, db: f64) -> f64 {
        let db = if db.is_nan() {
            0.0
        } else {
            db.clamp(-LevelControl::MAX_OFFSET_DB, LevelControl::MAX_OFFSET_DB)
        };
        self.0.offset_bits.store(db.to_bits(), Ordering::Relaxed);
        db
    }

    /// Whether the walks are calm (no random loud events).
    pub fn calm(&self) -> bool {
        self.0.calm.load(Ordering::Relaxed)
    }

    /// Makes the walks calm (`true`: a loud event in progress ends with the
    /// next sample, none starts, the background stays within
    /// [`CALM_SPAN_DB`] of the base) or lets random loud events happen again.
    pub fn set_calm(&self, calm: bool) {
        self.0.calm.store(calm, Ordering::Relaxed);
    }
}

/// One 100 ms sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Lp, tenths of a dB.
    pub lp: i16,
    /// The peak during the sample, tenths of a dB (> `lp`).
    pub peak: i16,
}

/// A seeded random walk of sound levels.
#[derive(Debug, Clone)]
pub struct LevelSource {
    /// All randomness of the levels comes from here.
    rng: fastrand::Rng,
    /// The background level, dB: mean-reverting around [`BASE_DB`].
    background: f64,
    /// Extra dB of a loud event in progress; decays to zero.
    event: f64,
    /// The latest Lp handed out (tenths), for [`LevelSource::nudge`].
    last: i16,
    /// The offset and calm knobs, read at every sample.
    control: LevelControl,
}

impl LevelSource {
    /// A walk seeded by `seed`, starting near [`BASE_DB`], with knobs of its
    /// own at their defaults (offset 0, events on).
    pub fn new(seed: u64) -> LevelSource {
        LevelSource::with_control(seed, LevelControl::default())
    }

    /// A walk seeded by `seed` and steered by `control`.
    pub fn with_control(seed: u64, control: LevelControl) -> LevelSource {
        let mut rng = fastrand::Rng::with_seed(seed);
        let background = BASE_DB + (rng.f64() - 0.5) * 6.0;
        LevelSource {
            rng,
            background,
            event: 0.0,
            last: to_tenths(background + control.offset_db()),
            control,
        }
    }

    /// The next 100 ms sample, with the offset and calm in force now.
    pub fn next_sample(&mut self) -> Sample {
        // Roughly normal steps (sum of three uniforms), pulled back to the base.
        let step = (self.rng.f64() + self.rng.f64() + self.rng.f64() - 1.5) * 0.8;
        self.background += step + (BASE_DB - self.background) * 0.02;
        if self.control.calm() {
            self.event = 0.0;
            self.background = self
                .background
                .clamp(BASE_DB - CALM_SPAN_DB, BASE_DB + CALM_SPAN_DB);
        } else if self.event < 0.5 && self.rng.f64() < 0.002 {
            self.event = 5.0 + self.rng.f64() * 25.0;
        }
        self.event *= 0.93;
        let level = self.background + self.event + self.control.offset_db();
        let lp = to_tenths(level).clamp(LP_LIMITS.0, LP_LIMITS.1);
        let crest = MIN_CREST_TENTHS + self.rng.i16(0..=70);
        self.last = lp;
        Sample {
            lp,
            peak: lp.saturating_add(crest),
        }
    }

    /// A level one tenth away from `avoid`, moving the walk there: used so
    /// two answers in a row never show the same Lp.
    pub fn nudge(&mut self, avoid: i16) -> i16 {
        let up = if avoid <= LP_LIMITS.0 {
            true
        } else if avoid >= LP_LIMITS.1 {
            false
        } else {
            self.rng.bool()
        };
        let lp = if up { avoid + 1 } else { avoid - 1 };
        self.background += f64::from(lp - self.last) / 10.0;
        self.last = lp;
        lp
    }
}

/// The values integrated since `Measure,Start`.
#[derive(Debug, Clone)]
pub struct Integrator {
    /// Samples integrated (10 a second of measuring).
    count: u64,
    /// Sum of 10^(L/10) over the samples: Leq is its mean, in dB.
    energy: f64,
    /// Highest sample Lp (tenths).
    max: i16,
    /// Lowest sample Lp (tenths).
    min: i16,
    /// Highest sample peak (tenths).
    peak: i16,
    /// Samples per tenth of a dB, for the percentiles.
    hist: Vec<u32>,
    /// A sample was above the range.
    overload: bool,
    /// A sample was below the range.
    under_range: bool,
}

impl Default for Integrator {
    fn default() -> Self {
        Integrator {
            count: 0,
            energy: 0.0,
            max: i16::MIN,
            min: i16::MAX,
            peak: i16::MIN,
            hist: vec![0; HIST_TOP + 1],
            overload: false,
            under_range: false,
        }
    }
}

impl Integrator {
    /// Adds one sample.
    pub fn add(&mut self, sample: Sample) {
        self.count += 1;
        self.energy += 10f64.powf(f64::from(sample.lp) / 100.0);
        self.max = self.max.max(sample.lp);
        self.min = self.min.min(sample.lp);
        self.peak = self.peak.max(sample.peak);
        let bin = usize::try_from(sample.lp.max(0)).unwrap_or(0).min(HIST_TOP);
        if let Some(slot) = self.hist.get_mut(bin) {
            *slot = slot.saturating_add(1);
        }
        self.overload |= sample.lp >= OVERLOAD_TENTHS;
        self.under_range |= sample.lp < UNDER_RANGE_TENTHS;
    }

    /// Samples integrated so far.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// What has been integrated, whatever its length (`None` before the
    /// first sample): for the personalities that write their own forms.
    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let leq_db = 10.0 * (self.energy / self.count as f64).log10();
        Some(Summary {
            count: self.count,
            leq_db,
            max: self.max,
            min: self.min,
            peak: self.peak,
            overload: self.overload,
            under_range: self.under_range,
        })
    }

    /// The main channel's values with `lp` as the instantaneous level;
    /// integrated values are dashes before one second of integration.
    pub fn values(&self, lp: Option<Deci>) -> ChannelValues {
        let mut values = ChannelValues {
            lp,
            overload: Some(self.overload),
            under_range: Some(self.under_range),
            ..ChannelValues::default()
        };
        if self.count < SAMPLES_PER_SECOND {
            return values;
        }
        // Precision: the mean of the energies lies between those of min and
        // max; the clamp only guards against float rounding at the edges.
        let leq_db = 10.0 * (self.energy / self.count as f64).log10();
        let leq = to_tenths(leq_db).clamp(self.min, self.max);
        let seconds = self.count as f64 / SAMPLES_PER_SECOND as f64;
        let le = to_tenths(f64::from(leq) / 10.0 + 10.0 * seconds.log10());
        values.leq = Deci::from_tenths(leq);
        values.le = Deci::from_tenths(le);
        values.lmax = Deci::from_tenths(self.max);
        values.lmin = Deci::from_tenths(self.min);
        values.lpeak = Deci::from_tenths(self.peak);
        for (slot, percent) in values.ln.iter_mut().zip(PERCENTILES) {
            *slot = self.exceeded(percent).and_then(Deci::from_tenths);
        }
        values
    }

    /// The level exceeded `percent` % of the time: walking down from the
    /// top, the first tenth at which that share of the samples is reached.
    /// Monotone in `percent`, so L5 ≥ L10 ≥ … ≥ L95.
    pub fn exceeded(&self, percent: u8) -> Option<i16> {
        let needed = (self.count * u64::from(percent)).div_ceil(100).max(1);
        let mut seen = 0u64;
        for (bin, &n) in self.hist.iter().enumerate().rev() {
            seen += u64::from(n);
            if seen >= needed {
                return i16::try_from(bin).ok();
            }
        }
        None
    }
}

/// A measurement's integrated values in raw form (tenths, and Leq in dB as
/// computed), for families whose wire forms differ from the NL-43's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Samples integrated (10 a second).
    pub count: u64,
    /// Leq in dB, unrounded (within `min..=max` up to float rounding).
    pub leq_db: f64,
    /// Highest sample Lp (tenths).
    pub max: i16,
    /// Lowest sample Lp (tenths).
    pub min: i16,
    /// Highest sample peak (tenths), above `max`.
    pub peak: i16,
    /// A sample was above the range.
    pub overload: bool,
    /// A sample was below the range.
    pub under_range: bool,
}

impl Summary {
    /// Integrated seconds.
    pub fn seconds(&self) -> f64 {
        self.count as f64 / SAMPLES_PER_SECOND as f64
    }

    /// Leq in tenths, kept within Lmin..=Lmax.
    pub fn leq_tenths(&self) -> i16 {
        to_tenths(self.leq_db).clamp(self.min, self.max)
    }
}

/// Dashes everywhere on the main channel except `lp`; flags 0 (the
/// channel is on, nothing integrated yet).
pub fn not_integrated(lp: Option<Deci>) -> ChannelValues {
    ChannelValues {
        lp,
        overload: Some(false),
        under_range: Some(false),
        ..ChannelValues::default()
    }
}

/// dB to whole tenths, saturating at the wire's ±999.9.
pub fn to_tenths(db: f64) -> i16 {
    let tenths = (db * 10.0).round();
    if tenths.is_nan() {
        0
    } else {
        tenths.clamp(-f64::from(Deci::MAX_TENTHS), f64::from(Deci::MAX_TENTHS)) as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Option<Deci>) -> i16 {
        v.map(Deci::tenths).unwrap_or(i16::MIN)
    }

    #[test]
    fn dashes_before_one_second() {
        let mut source = LevelSource::new(1);
        let mut integ = Integrator::default();
        for _ in 0..9 {
            integ.add(source.next_sample());
        }
        let v = integ.values(Deci::from_tenths(550));
        assert!(v.leq.is_none() && v.lmax.is_none() && v.ln.iter().all(Option::is_none));
        integ.add(source.next_sample());
        assert!(integ.values(None).leq.is_some());
    }

    #[test]
    fn invariants_hold_over_long_runs() {
        for seed in 0..20 {
            let mut source = LevelSource::new(seed);
            let mut integ = Integrator::default();
            for i in 0..5_000 {
                integ.add(source.next_sample());
                if i % 97 != 0 || integ.count() < SAMPLES_PER_SECOND {
                    continue;
                }
                let v = integ.values(None);
                let (leq, lmax, lmin, lpeak) = (t(v.leq), t(v.lmax), t(v.lmin), t(v.lpeak));
                assert!(lmax >= leq && leq >= lmin, "{v:?}");
                assert!(lpeak > lmax, "{v:?}");
                assert!(t(v.le) >= leq, "{v:?}");
                let ln: Vec<i16> = v.ln.iter().map(|x| t(*x)).collect();
                assert!(ln.windows(2).all(|w| w[0] >= w[1]), "{ln:?}");
                assert!(ln[0] <= lmax && ln[4] >= lmin, "{ln:?}");
            }
        }
    }

    /// The mean Lp (dB) of `n` samples.
    fn mean_db(source: &mut LevelSource, n: usize) -> f64 {
        let sum: f64 = (0..n).map(|_| f64::from(source.next_sample().lp)).sum();
        sum / n as f64 / 10.0
    }

    #[test]
    fn an_offset_of_30_with_calm_centres_the_walk_on_85() {
        for seed in 0..8 {
            let mut source = LevelSource::with_control(seed, LevelControl::new(30.0, true));
            let mean = mean_db(&mut source, 600);
            assert!((mean - (BASE_DB + 30.0)).abs() < 3.0, "seed {seed}: {mean}");
        }
    }

    #[test]
    fn a_calm_walk_stays_within_a_few_db_of_the_base() {
        for seed in [0, 1, 2, 7, 42, 1234, u64::MAX] {
            let mut source = LevelSource::with_control(seed, LevelControl::new(0.0, true));
            for i in 0..10_000 {
                let lp = source.next_sample().lp;
                assert!(
                    (480..=620).contains(&lp),
                    "seed {seed}, sample {i}: Lp {lp}"
                );
                if i % 101 == 0 {
                    // Nudges (two equal DOD? answers) never carry it out either.
                    let nudged = source.nudge(lp);
                    assert!((479..=621).contains(&nudged), "seed {seed}: {nudged}");
                }
            }
        }
    }

    #[test]
    fn the_offset_applies_from_the_next_sample() {
        for calm in [false, true] {
            let control = LevelControl::new(0.0, calm);
            let mut steered = LevelSource::with_control(5, control.clone());
            let mut twin = LevelSource::with_control(5, LevelControl::new(0.0, calm));
            for _ in 0..50 {
                assert_eq!(steered.next_sample(), twin.next_sample());
            }
            assert_eq!(control.set_offset_db(30.0), 30.0);
            for _ in 0..50 {
                let (a, b) = (steered.next_sample(), twin.next_sample());
                assert_eq!(a.lp, b.lp + 300, "calm {calm}");
                assert!(a.peak > a.lp);
            }
            control.set_offset_db(-12.5);
            let (a, b) = (steered.next_sample(), twin.next_sample());
            assert_eq!(a.lp, b.lp - 125, "calm {calm}");
            control.set_offset_db(0.0);
            assert_eq!(steered.next_sample(), twin.next_sample());
        }
    }

    #[test]
    fn offsets_are_kept_within_bounds() {
        const MAX_OFFSET_DB: f64 = LevelControl::MAX_OFFSET_DB;
        assert_eq!(LevelControl::parse_offset(" 30 "), Ok(30.0));
        assert_eq!(LevelControl::parse_offset("+25"), Ok(25.0));
        assert_eq!(LevelControl::parse_offset("-12.5"), Ok(-12.5));
        for bad in ["", "loud", "1e3", "-121", "inf", "NaN", "30dB", "+-1"] {
            assert!(LevelControl::parse_offset(bad).is_err(), "{bad:?}");
        }
        let control = LevelControl::default();
        assert_eq!((control.offset_db(), control.calm()), (0.0, false));
        assert_eq!(control.set_offset_db(500.0), MAX_OFFSET_DB);
        assert_eq!(control.set_offset_db(f64::NEG_INFINITY), -MAX_OFFSET_DB);
        assert_eq!(control.set_offset_db(f64::NAN), 0.0);
        let mut source = LevelSource::with_control(1, LevelControl::new(MAX_OFFSET_DB, false));
        for _ in 0..100 {
            let s = source.next_sample();
            assert!(s.lp == LP_LIMITS.1 && s.peak > s.lp, "{s:?}");
        }
        control.set_offset_db(-MAX_OFFSET_DB);
        let mut source = LevelSource::with_control(1, control);
        assert_eq!(source.next_sample().lp, LP_LIMITS.0);
    }

    #[test]
    fn calm_ends_a_loud_event_at_once_and_events_come_back_after() {
        let control = LevelControl::default();
        let mut source = LevelSource::with_control(11, control.clone());
        let mut samples = 0;
        while source.event < 10.0 {
            source.next_sample();
            samples += 1;
            assert!(samples < 1_000_000, "no loud event");
        }
        control.set_calm(true);
        let lp = source.next_sample().lp;
        assert!(lp <= to_tenths(BASE_DB + CALM_SPAN_DB), "{lp}");
        assert_eq!(source.event, 0.0);
        control.set_calm(false);
        while source.event < 5.0 {
            source.next_sample();
            samples += 1;
            assert!(samples < 2_000_000, "no loud event after calm");
        }
    }

    #[test]
    fn invariants_hold_with_offsets() {
        for offset in [-40.0, -10.0, 25.0, 30.0, 90.0] {
            for calm in [false, true] {
                let mut source = LevelSource::with_control(3, LevelControl::new(offset, calm));
                let mut integ = Integrator::default();
                for _ in 0..3_000 {
                    integ.add(source.next_sample());
                }
                let v = integ.values(None);
                let (leq, lmax, lmin, lpeak) = (t(v.leq), t(v.lmax), t(v.lmin), t(v.lpeak));
                assert!(lmax >= leq && leq >= lmin, "{offset} {v:?}");
                assert!(lpeak > lmax, "{offset} {v:?}");
                assert!(lmin >= LP_LIMITS.0 && lmax <= LP_LIMITS.1, "{offset} {v:?}");
                let ln: Vec<i16> = v.ln.iter().map(|x| t(*x)).collect();
                assert!(ln.windows(2).all(|w| w[0] >= w[1]), "{ln:?}");
                assert!(ln[0] <= lmax && ln[4] >= lmin, "{ln:?}");
                let centre = to_tenths(BASE_DB + offset);
                if calm && (LP_LIMITS.0 + 50..=LP_LIMITS.1 - 50).contains(&centre) {
                    assert!((leq - centre).abs() <= 50, "{offset}: Leq {leq}");
                }
            }
        }
    }

    #[test]
    fn nudge_moves_by_one_tenth() {
        let mut source = LevelSource::new(3);
        let lp = source.next_sample().lp;
        let moved = source.nudge(lp);
        assert_eq!((moved - lp).abs(), 1);
    }

    #[test]
    fn le_adds_ten_log_duration() {
        let mut integ = Integrator::default();
        for _ in 0..100 {
            integ.add(Sample { lp: 600, peak: 700 });
        }
        // 10 s at 60.0 dB: LE = 60 + 10 = 70.0.
        let v = integ.values(None);
        assert_eq!((t(v.leq), t(v.le), t(v.ln[2])), (600, 700, 600));
    }
}
