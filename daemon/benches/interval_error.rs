//! How far slmd's interval Leq lies from the meter's own Leq over the same
//! window (README, "Noise limits"): the simulator's 10 Hz level walk
//! (`slm-sim`'s, trucks passing included) is integrated as the meter does
//! (every 100 ms sample, energy average: what an NL-43 shows as Leq after
//! `Measure,Start` at the window's start, rounded to 0.1 dB), and fed to
//! [`DeviceLevels`] as the daemon gets it:
//!
//! - **Lp** (NL-43, XL2, Svantek): the latest sample's Lp, polled once a
//!   second at a phase that is not aligned to the window;
//! - **cycle Leq** (Casella): the Leq of each 1 s cycle, in 0.1 dB.
//!
//! The error is slmd's 15 min Leq minus the meter's, over 8 hours of 20
//! seeded walks (640 windows), with loud events on and with calm levels.
//!
//! `cargo bench -p slmd --bench interval_error`

use chrono::{TimeZone as _, Utc};
use slmd::limits::interval::{DeviceLevels, IntervalLevel, LevelSettings};
use slmd_hil::levels::{Integrator, LevelControl, LevelSource, SAMPLES_PER_SECOND};
use std::sync::Arc;
use std::time::Duration;

/// Walks (seeds) per case.
const SEEDS: u64 = 20;
/// Simulated time per walk, seconds.
const SECONDS: i64 = 8 * 3_600;
/// The window length compared.
const WINDOW_SECONDS: i64 = 900;
/// Where in each second the poll lands, ms after the second: the Lp read
/// is the 100 ms sample current then.
const POLL_PHASE_MS: i64 = 437;
/// How long after its cycle ends a Casella reading is complete: the quiet
/// gap that ends a reading (`protocols/`: 500 ms).
const CYCLE_LATENCY_MS: i64 = 500;

fn main() {
    println!(
        "15 min Leq, slmd minus the meter's own, {} windows per row (dB)",
        SEEDS * (SECONDS / WINDOW_SECONDS) as u64
    );
    println!("input                 levels       mean    mean |e|  95% |e|   max |e|");
    for calm in [false, true] {
        for cycle_leq in [false, true] {
            let errors = errors(calm, cycle_leq);
            let input = if cycle_leq {
                "cycle Leq (Casella)"
            } else {
                "Lp at 1 Hz (NL-43)"
            };
            let levels = if calm { "calm" } else { "with trucks" };
            let (mean, mean_abs, p95, max) = summary(&errors);
            println!("{input:<21} {levels:<11} {mean:>+7.3} {mean_abs:>9.3} {p95:>8.3} {max:>9.3}");
        }
    }
}

/// slmd's error per whole window, over every seed.
fn errors(calm: bool, cycle_leq: bool) -> Vec<f64> {
    let settings = Arc::new(LevelSettings {
        lengths: vec![Duration::from_secs(WINDOW_SECONDS as u64)],
        tz: jiff::tz::TimeZone::UTC,
        min_coverage: 0.75,
    });
    let origin = Utc
        .with_ymd_and_hms(2026, 12, 1, 0, 0, 0)
        .single()
        .expect("a valid instant");
    let mut errors = Vec::new();
    for seed in 1..=SEEDS {
        let mut walk = LevelSource::with_control(seed, LevelControl::new(0.0, calm));
        let mut levels = DeviceLevels::new("m".into(), settings.clone(), Duration::from_secs(1));
        let mut meter = Integrator::default();
        let mut cycle = Integrator::default();
        let mut truth = Vec::new();
        let mut computed = Vec::new();
        for second in 0..SECONDS {
            if second % WINDOW_SECONDS == 0 && second > 0 {
                truth.push(rounded(meter.summary().map(|s| s.leq_db)));
                meter = Integrator::default();
            }
            let mut lp = 0;
            for index in 0..SAMPLES_PER_SECOND as i64 {
                let sample = walk.next_sample();
                meter.add(sample);
                cycle.add(sample);
                if index == POLL_PHASE_MS / 100 {
                    lp = sample.lp;
                }
            }
            let (at_ms, level) = if cycle_leq {
                let leq = cycle.summary().map(|s| f64::from(s.leq_tenths()) / 10.0);
                cycle = Integrator::default();
                ((second + 1) * 1_000 + CYCLE_LATENCY_MS, leq)
            } else {
                (second * 1_000 + POLL_PHASE_MS, Some(f64::from(lp) / 10.0))
            };
            let at = origin + chrono::Duration::milliseconds(at_ms);
            computed.extend(whole(levels.add(at, level)));
        }
        computed.extend(whole(levels.tick(origin + chrono::Duration::hours(48))));
        for (meter, slmd) in truth.iter().zip(&computed) {
            if let (Some(meter), Some(slmd)) = (meter, slmd.leq) {
                errors.push(slmd - meter);
            }
        }
    }
    errors
}

/// The windows slmd covered whole: not the sliver of the window before the
/// first reading, which the first reading's span reaches into.
fn whole(levels: Vec<IntervalLevel>) -> Vec<IntervalLevel> {
    levels.into_iter().filter(|l| l.coverage > 0.99).collect()
}

/// A level as the meter shows it: 0.1 dB.
fn rounded(leq: Option<f64>) -> Option<f64> {
    leq.map(|l| (l * 10.0).round() / 10.0)
}

/// Mean, mean absolute, 95th percentile absolute and largest absolute error.
fn summary(errors: &[f64]) -> (f64, f64, f64, f64) {
    let n = errors.len().max(1) as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let mut abs: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    abs.sort_by(f64::total_cmp);
    let mean_abs = abs.iter().sum::<f64>() / n;
    let p95 = abs
        .get(((abs.len() as f64) * 0.95) as usize)
        .or(abs.last())
        .copied()
        .unwrap_or(0.0);
    let max = abs.last().copied().unwrap_or(0.0);
    (mean, mean_abs, p95, max)
}
