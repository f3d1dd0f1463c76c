//! Heartbeat size: bytes per heartbeat and per day at the default
//! interval (60 s, 1 440 a day), for 1, 4 and 16 NL-43s with identity and
//! health read, as JSON and gzipped (the daemon gzips by default).
//!
//! `cargo bench -p slmd --bench heartbeat` (README, "The heartbeat").
//! Request bodies only: HTTP headers and TLS framing come on top.

use chrono::Utc;
use slmd::buffer::BufferSlot;
use slmd::device::health::HealthValue;
use slmd::device::{DeviceTask, Identity, lock_status};
use slmd::fanout::{Hub, LinkState};
use slmd::record::{MeterState, Reading};
use slmd::uplink::heartbeat::Sources;
use slmd::uplink::wire;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Heartbeats a day at the default interval.
const PER_DAY: usize = 24 * 3600 / 60;

fn main() {
    println!("meters  json B  gzip B  gzip per day (60 s)");
    for meters in [1usize, 4, 16] {
        let (json, gzip) = sizes(meters);
        println!(
            "{meters:>6}  {json:>6}  {gzip:>6}  {:>7.1} KiB",
            (gzip * PER_DAY) as f64 / 1024.0
        );
    }
}

/// JSON and gzipped bytes of one heartbeat with `n` meters.
fn sizes(n: usize) -> (usize, usize) {
    let hub = Hub::new(1_000_000);
    let mut cells = Vec::new();
    for i in 0..n {
        let id = format!("nl43-site-{i:02}");
        let text = format!(
            "[[device]]\nid = \"{id}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"192.0.2.{}:2255\"\n",
            10 + i
        );
        let config = match slmd::config::parse(&text, std::path::Path::new("bench.toml")) {
            Ok(mut c) => c.devices.remove(0),
            Err(e) => panic!("{e}"),
        };
        let cell = DeviceTask::new(config, hub.clone()).status;
        {
            let mut status = lock_status(&cell);
            status.state = LinkState::Connected;
            status.run_state = MeterState::Measuring;
            status.identity = Some(Identity {
                model: Some("NL-43".into()),
                serial: Some(format!("0041{i:04}")),
                firmware: Some("1.8.0".into()),
            });
            status.health.battery = HealthValue::Read("Full".into());
            status.health.sd_free_percent = HealthValue::Read(87);
            status.health.clock_offset_s = HealthValue::Read(-1);
        }
        hub.publish(Reading {
            device: Arc::from(id.as_str()),
            received_at: Utc::now(),
            device_time: None,
            metrics: vec![("lp", Some(52.1))],
            state: MeterState::Measuring,
            flags: vec![],
        });
        cells.push(cell);
    }
    let sources = Sources {
        gateway: "gw-0042".into(),
        started: std::time::Instant::now(),
        hub,
        meters: Arc::new(Mutex::new(cells)),
        buffer: BufferSlot::default(),
    };
    let body = sources.snapshot(Duration::from_secs(60));
    let json = match serde_json::to_vec(&body) {
        Ok(json) => json,
        Err(e) => panic!("{e}"),
    };
    let gzip = match wire::compress(json.clone(), true) {
        Ok(body) => body.bytes.len(),
        Err(e) => panic!("{e}"),
    };
    (json.len(), gzip)
}
