//! Sound levels: the 10 Hz Lp samples and what a measurement integrates
//! from them.
//!
//! [`LevelSource`] is a seeded, mean-reverting random walk around
//! [`BASE_DB`] with occasional loud events (a truck passing), sampled every
//! [`SAMPLE_PERIOD`]. Each sample also carries a peak at least
//! [`MIN_CREST_TENTHS`] above its Lp, so Lpeak > Lmax always.
//!
//! [`Integrator`] accumulates samples since `Measure,Start` and yields the
//! main channel's values with the invariants a real meter keeps:
//! Lmax ≥ Leq ≥ Lmin, Lpeak > Lmax, L5 ≥ L10 ≥ L50 ≥ L90 ≥ L95 (all within
//! Lmin..=Lmax), LE = Leq + 10·log10(T). Before one second of integration
//! every integrated value is dashes. All levels are whole tenths of a dB, so
//! what the simulator computes is exactly what goes on the wire.

use firmware_bridge::Deci;
use firmware_bridge::nl43::ChannelValues;
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
}

impl LevelSource {
    /// A walk seeded by `seed`, starting near [`BASE_DB`].
    pub fn new(seed: u64) -> LevelSource {
        let mut rng = fastrand::Rng::with_seed(seed);
        let background = BASE_DB + (rng.f64() - 0.5) * 6.0;
        LevelSource {
            rng,
            background,
            event: 0.0,
            last: to_tenths(background),
        }
    }

    /// The next 100 ms sample.
    pub fn next_sample(&mut self) -> Sample {
        // Roughly normal steps (sum of three uniforms), pulled back to the base.
        let step = (self.rng.f64() + self.rng.f64() + self.rng.f64() - 1.5) * 0.8;
        self.background += step + (BASE_DB - self.background) * 0.02;
        if self.event < 0.5 && self.rng.f64() < 0.002 {
            self.event = 5.0 + self.rng.f64() * 25.0;
        }
        self.event *= 0.93;
        let lp = to_tenths(self.background + self.event).clamp(LP_LIMITS.0, LP_LIMITS.1);
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
