//! CPU per reading for interval levels and alert rules (SPEC §11): 16
//! NL-43s at 10 readings a second each (live polling), `[levels]` with
//! 1m, 15m and 1h windows, 50 rules (on `lp`, `leq`, `lmax` and the
//! interval levels, a few of them breaking), beside what the daemon spends
//! per reading without limits (the hub's `publish`, which every reading
//! pays). Single thread, simulated time: 10 minutes of readings.
//!
//! `cargo bench -p slmd --bench limits` (README, "Noise limits").

use chrono::{DateTime, Utc};
use slmd::buffer::{self, BufferSlot, Settings};
use slmd::clock::WallClock;
use slmd::config::Durability;
use slmd::fanout::Hub;
use slmd::limits::engine::Engine;
use slmd::record::{MeterState, Reading};
use std::sync::Arc;
use std::time::{Duration, Instant};

const METERS: usize = 16;
const RULES: usize = 50;
/// Readings per meter per second.
const RATE: u32 = 10;
/// Simulated time.
const SECONDS: u32 = 600;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let readings = readings();
    let (base, _) = run(&dir, &readings, false);
    let (with, engine_only) = run(&dir, &readings, true);
    let n = readings.len() as f64;
    let per = |d: Duration| d.as_nanos() as f64 / n;
    let per_second = f64::from(RATE) * METERS as f64;
    println!(
        "{} readings ({METERS} meters x {RATE}/s x {SECONDS} s), {RULES} rules, windows 1m 15m 1h",
        readings.len()
    );
    println!("                         ns/reading  CPU at {per_second:.0} readings/s");
    for (name, d) in [
        ("hub publish (no limits)", base),
        ("hub publish + limits", with),
        ("limits alone", engine_only),
    ] {
        println!(
            "{name:<24} {:>10.0}  {:>6.3} %",
            per(d),
            per(d) * per_second / 1e9 * 100.0
        );
    }
}

/// 10 minutes of readings of every meter, interleaved, in time order.
fn readings() -> Vec<Reading> {
    let start: DateTime<Utc> = Utc::now();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut out = Vec::new();
    for tick in 0..(SECONDS * RATE) {
        let at = start + chrono::Duration::milliseconds(i64::from(tick) * 1000 / i64::from(RATE));
        for meter in 0..METERS {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let lp = 50.0 + (rng % 300) as f64 / 10.0;
            out.push(Reading {
                device: Arc::from(format!("nl43-{meter:02}").as_str()),
                received_at: at,
                device_time: None,
                metrics: vec![
                    ("lp", Some(lp)),
                    ("leq", Some(58.3)),
                    ("le", Some(96.4)),
                    ("lmax", Some(lp + 3.0)),
                    ("lmin", Some(48.1)),
                    ("l5", Some(66.0)),
                    ("l10", Some(63.5)),
                    ("l50", Some(58.7)),
                    ("l90", Some(52.2)),
                    ("l95", Some(50.9)),
                    ("lpeak", Some(lp + 10.0)),
                ],
                state: MeterState::Measuring,
                flags: vec![],
            });
        }
    }
    out
}

/// The config: 16 meters, the windows, 50 rules spread over metrics.
fn config(state: &std::path::Path) -> slmd::config::Config {
    let mut text = format!(
        "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n[levels]\nintervals = [\"1m\", \"15m\", \"1h\"]\ntimezone = \"Europe/Zurich\"\n",
        state.display()
    );
    for meter in 0..METERS {
        text.push_str(&format!(
            "[[device]]\nid = \"nl43-{meter:02}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"192.0.2.1:{}\"\n",
            2000 + meter
        ));
    }
    let metrics = [
        "lp", "leq", "lmax", "leq_1m", "leq_15m", "l90_1h", "lmax_1m",
    ];
    for rule in 0..RULES {
        let metric = metrics[rule % metrics.len()];
        // Most limits hold; every tenth is broken now and then.
        let above = if rule % 10 == 0 { 76.0 } else { 95.0 };
        text.push_str(&format!(
            "[[alert]]\nid = \"rule-{rule}\"\nmetric = \"{metric}\"\nabove = {above}\nfor = \"1s\"\nclear_below = {}\n\
             schedule = {{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"], from = \"00:00\", to = \"24:00\" }}\n",
            above - 3.0
        ));
    }
    match slmd::config::parse(&text, std::path::Path::new("bench.toml")) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// Publishes every reading through a hub (and, `with_limits`, hands each
/// record to the limits engine); the whole time and the engine's share.
fn run(dir: &tempfile::TempDir, readings: &[Reading], with_limits: bool) -> (Duration, Duration) {
    let state = dir
        .path()
        .join(if with_limits { "with" } else { "without" });
    let config = config(&state);
    let hub = Hub::new(1);
    let slot = BufferSlot::default();
    let (buffer, _) = buffer::open(Settings {
        path: state.join("buffer.sqlite"),
        max_records: 1_000_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 10_000,
        batch_max: 1000,
        commit_interval: Duration::from_secs(1),
        exclusive: true,
    })
    .expect("buffer");
    let _ = slot.set(buffer);
    let mut engine =
        with_limits.then(|| Engine::new(&config, hub.clone(), slot.clone(), WallClock::system()).0);
    let mut in_engine = Duration::ZERO;
    let started = Instant::now();
    for reading in readings {
        let record = hub.publish(reading.clone());
        if let Some(engine) = engine.as_mut() {
            let t = Instant::now();
            engine.on_record(&record);
            in_engine += t.elapsed();
        }
    }
    (started.elapsed(), in_engine)
}
