//! Property-ish: many generated `DOD?` answers all parse and keep the
//! meter's invariants. Runs over an in-memory stream in paused (virtual)
//! time, so 200 polls a second apart take no real time.

mod common;

use common::{Client, HOST_DOD_INTERVAL, assert_invariants};
use firmware_bridge::nl43::{DodReading, ResultCode};
use slmd_hil::{SimConfig, SimEvent, Simulator};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn poll_answers(config: SimConfig, polls: usize) -> Vec<String> {
    let sim = Simulator::new(config);
    let (host, meter) = tokio::io::duplex(4096);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (sim, shutdown) = (sim.clone(), shutdown.clone());
        async move { sim.serve_stream(meter, shutdown).await }
    });
    let mut client = Client::new(host);
    let mut lines = Vec::with_capacity(polls);
    for i in 0..polls {
        if let Some(at) = client.last_answer {
            tokio::time::sleep_until(at + HOST_DOD_INTERVAL).await;
        }
        // Now and then restart the measurement, so fresh integrations are covered.
        if i % 50 == 25 {
            assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::Ok);
            assert_eq!(client.ask("Measure,Start").await.0, ResultCode::Ok);
        }
        let (line, reading) = client.dod().await;
        assert_invariants(&reading, &line);
        lines.push(line);
    }
    shutdown.cancel();
    server.await.expect("task").expect("serve_stream");
    assert_eq!(sim.stats().dod_answers, polls as u64);
    lines
}

#[tokio::test(start_paused = true)]
async fn two_hundred_dod_answers_parse_and_keep_the_invariants() {
    for seed in [1, 2, 3] {
        let lines = poll_answers(
            SimConfig {
                seed,
                ..SimConfig::default()
            },
            200,
        )
        .await;
        assert!(
            lines.windows(2).all(|w| w[0] != w[1]),
            "consecutive answers must differ"
        );
        // All but the first poll after each (re)start show integrated values.
        let integrated = lines
            .iter()
            .filter_map(|l| DodReading::parse(l.as_bytes()).ok())
            .filter(|r| r.main().leq.is_some() && r.main().ln.iter().all(Option::is_some))
            .count();
        assert!(
            integrated >= 190,
            "only {integrated} of 200 answers integrated"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn replayed_answers_keep_the_invariants_too() {
    let config = SimConfig {
        faults: slmd_hil::Faults {
            replay: 50,
            ..Default::default()
        },
        ..SimConfig::default()
    };
    let lines = poll_answers(config, 60).await;
    assert!(lines.windows(2).all(|w| w[0] != w[1]));
}

#[tokio::test(start_paused = true)]
async fn dod_events_match_the_answers() {
    let sim = Simulator::new(SimConfig::default());
    let mut events = sim.events();
    let (host, meter) = tokio::io::duplex(4096);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn({
        let (sim, shutdown) = (sim.clone(), shutdown.clone());
        async move { sim.serve_stream(meter, shutdown).await }
    });
    let mut client = Client::new(host);
    for n in 1..=20u64 {
        if let Some(at) = client.last_answer {
            tokio::time::sleep_until(at + Duration::from_millis(1000)).await;
        }
        let (line, _) = client.dod().await;
        let event =
            common::wait_event(&mut events, "dod", |e| matches!(e, SimEvent::Dod { .. })).await;
        assert_eq!(
            event,
            SimEvent::Dod {
                n,
                line,
                replayed: false
            }
        );
    }
    drop(client);
    server.await.expect("task").expect("peer closed: Ok");
    shutdown.cancel();
}
