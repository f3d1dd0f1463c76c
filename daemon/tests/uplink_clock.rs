//! A wall-clock step during a run skips no record: the daemon's pipeline
//! in-process with a stepped [`WallClock`], real simulated meters over TCP,
//! a real buffer file and `fleet-sim` on loopback.

use slmd::clock::WallClock;
use slmd::printer::PrintMode;
use slmd::supervisor::{self, Options};
use slmd_hil::fleet::{FleetSim, FleetSimConfig};
use slmd_hil::{SimConfig, Simulator};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some`, or panics with `what` at the deadline.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn meter(seed: u64, stop: &CancellationToken) -> String {
    let sim = Simulator::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let stop = stop.clone();
    tokio::spawn(async move { sim.serve_tcp(listener, stop).await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_backwards_skips_no_record() {
    let stop = CancellationToken::new();
    let fleet = FleetSim::new(FleetSimConfig::new("token1"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = fleet.clone();
    let server_stop = stop.clone();
    tokio::spawn(async move { server.serve(listener, server_stop).await });
    let a = meter(500, &stop).await;
    let b = meter(501, &stop).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
[gateway]
id = "gw-clock"
state_dir = "{state}"

[api]
listen = "127.0.0.1:0"

[[device]]
id = "a"
protocol = "nl43"
transport = "tcp"
address = "{a}"

[[device]]
id = "b"
protocol = "nl43"
transport = "tcp"
address = "{b}"

[fleet]
enabled = true
url = "{url}"
tokens = ["token1"]
interval = "200ms"
retry_min = "50ms"
retry_max = "500ms"
"#,
        state = dir.path().join("state").display()
    );
    let config = slmd::config::parse(&text, Path::new("clock-test.toml")).expect("valid config");
    let clock = WallClock::system();
    let shutdown = CancellationToken::new();
    let options = Options {
        print: PrintMode::None,
        clock: clock.clone(),
        config_source: None,
    };
    let daemon = tokio::spawn(supervisor::run(config, options, shutdown.clone()));

    let before = until("records before the step", || {
        let seqs = fleet.seqs("gw-clock");
        (seqs.len() >= 6).then_some(seqs.len())
    })
    .await;
    // NTP corrects a gateway clock that ran an hour fast.
    clock.step(chrono::Duration::hours(-1));
    until("records after the step", || {
        (fleet.seqs("gw-clock").len() >= before + 6).then_some(())
    })
    .await;
    shutdown.cancel();
    daemon
        .await
        .expect("daemon task")
        .expect("daemon ran and stopped");
    stop.cancel();

    let received = fleet.received("gw-clock");
    let seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    let last = *seqs.last().expect("records");
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every seq arrives once, in order, across the step"
    );
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = received
        .iter()
        .map(|r| chrono::DateTime::parse_from_rfc3339(&r.received_at).expect("RFC 3339"))
        .collect();
    let stepped_back = times
        .windows(2)
        .filter(|w| w[1] < w[0] - chrono::Duration::minutes(30))
        .count();
    assert!(
        stepped_back >= 1,
        "received_at jumps back an hour within the pushed records"
    );

    // Every committed record the cursor passed is at the fleet.
    let buffer = rusqlite::Connection::open(dir.path().join("state/buffer.sqlite")).expect("open");
    let cursor: i64 = buffer
        .query_row("SELECT value FROM meta WHERE key = 'cursor'", [], |r| {
            r.get(0)
        })
        .expect("cursor");
    let stored: i64 = buffer
        .query_row(
            "SELECT count(*) FROM records WHERE seq <= ?1",
            [cursor],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(cursor as u64, last);
    assert_eq!(stored as u64, last);
}
