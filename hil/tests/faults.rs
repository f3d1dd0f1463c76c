//! Fault injection over real TCP sockets: each fault does what it says and
//! reports itself as an event.

mod common;

use common::{HOST_DOD_INTERVAL, TcpSim, assert_invariants, is_fault, wait_event};
use firmware_bridge::nl43::MeterClock;
use slmd_hil::{Faults, SimConfig, SimEvent};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

fn with(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..SimConfig::default()
    }
}

/// Reads raw bytes until `done` holds for what was read (or the deadline).
async fn read_until(io: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(common::DEADLINE, async {
        let mut buf = [0u8; 1024];
        while !done(&all) {
            let n = io.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed early after {:?}",
                String::from_utf8_lossy(&all)
            );
            all.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answer in time");
    all
}

#[tokio::test]
async fn echo_prompts_and_junk_wrap_the_answer() {
    let sim = TcpSim::start(with(Faults {
        echo: true,
        prompts: true,
        junk: 1.0,
        ..Faults::default()
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;

    for _ in 0..6 {
        client.pace().await;
        client.send_raw(b"Type?\r\n").await;
        // Raw bytes: echo, junk, R+0000, data, then the prompt.
        let raw = read_until(&mut client.io, |b| b.ends_with(b"NL-43\r\n$")).await;
        client.last_answer = Some(Instant::now());
        assert!(raw.starts_with(b"Type?\r\n"), "no echo first: {raw:?}");
        let after_echo = &raw[b"Type?\r\n".len()..];
        let at = after_echo
            .windows(2)
            .position(|w| w == b"R+")
            .expect("result line");
        assert_eq!(&after_echo[at..], b"R+0000\r\nNL-43\r\n$", "{raw:?}");
        let junk = &after_echo[..at];
        assert!(
            !junk.is_empty(),
            "junk expected with probability 1: {raw:?}"
        );
        let junk_body = junk.strip_suffix(b"\r\n").unwrap_or(junk);
        assert!(
            !junk_body
                .iter()
                .any(|b| matches!(b, b'\r' | b'\n' | b'R' | b'+')),
            "{raw:?}"
        );
        wait_event(&mut events, "junk fault", |e| is_fault(e, "junk")).await;
    }

    // Echo,Off turns echo off, as on the meter (the command itself is echoed).
    client.pace().await;
    client.send_raw(b"Echo,Off\r\n").await;
    let raw = read_until(&mut client.io, |b| b.ends_with(b"R+0000\r\n$")).await;
    client.last_answer = Some(Instant::now());
    assert!(raw.starts_with(b"Echo,Off\r\n"), "{raw:?}");
    client.pace().await;
    client.send_raw(b"Type?\r\n").await;
    let raw = read_until(&mut client.io, |b| b.ends_with(b"NL-43\r\n$")).await;
    assert!(!raw.starts_with(b"Type?"), "still echoing: {raw:?}");
    sim.stop().await;
}

#[tokio::test]
async fn host_framing_recovers_the_answer_through_all_wrappers() {
    let faults = Faults {
        echo: true,
        prompts: true,
        junk: 0.5,
        split: true,
        ..Faults::default()
    };
    let sim = TcpSim::start(with(faults)).await;
    let mut client = sim.client().await;
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep_until(client.last_answer.expect("answered") + HOST_DOD_INTERVAL)
                .await;
        }
        // `Client::ask` skips echo and junk lines up to the R+ line.
        let (line, reading) = client.dod().await;
        assert_invariants(&reading, &line);
    }
    sim.stop().await;
}

#[tokio::test]
async fn split_writes_the_answer_in_small_pieces() {
    let sim = TcpSim::start(with(Faults {
        split: true,
        ..Faults::default()
    }))
    .await;
    let mut client = sim.client().await;
    client.send_raw(b"DOD?\r\n").await;
    let mut reads = 0;
    let mut all = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    while !all.ends_with(b"\r\n") || all.len() < 10 {
        let n = client.io.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        reads += 1;
        all.extend_from_slice(&buf[..n]);
        assert!(started.elapsed() < common::DEADLINE);
    }
    let text = String::from_utf8_lossy(&all);
    let (result, line) = text.split_once("\r\n").expect("result line");
    assert_eq!(result, "R+0000");
    assert_eq!(line.trim_end().split(',').count(), 64, "{text}");
    assert!(reads >= 20, "only {reads} reads for {} bytes", all.len());
    sim.stop().await;
}

#[tokio::test]
async fn stall_delays_the_answer() {
    let delay = Duration::from_millis(600);
    let sim = TcpSim::start(with(Faults {
        stall: Some((1.0, delay)),
        ..Faults::default()
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    let asked = Instant::now();
    assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));
    assert!(
        asked.elapsed() >= delay,
        "answered after {:?}",
        asked.elapsed()
    );
    wait_event(&mut events, "stall fault", |e| is_fault(e, "stall")).await;
    sim.stop().await;
}

#[tokio::test]
async fn silence_ignores_commands_then_answers_again() {
    let faults = Faults {
        silent_after: Some(Duration::from_millis(300)),
        silent_for: Duration::from_millis(1200),
        ..Faults::default()
    };
    let sim = TcpSim::start(with(faults)).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    wait_event(&mut events, "silent_start", |e| is_fault(e, "silent_start")).await;

    client.send_raw(b"Type?\r\n").await;
    // Nothing comes back while silent; the link stays open.
    let quiet =
        tokio::time::timeout(Duration::from_millis(500), client.io.read(&mut [0u8; 64])).await;
    assert!(quiet.is_err(), "answer while silent: {quiet:?}");

    wait_event(&mut events, "silent_end", |e| is_fault(e, "silent_end")).await;
    assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));
    let stats = sim.sim.stats();
    assert_eq!(
        stats.commands, 2,
        "the ignored command is still counted: {stats:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn replay_serves_old_records_first_on_every_connection() {
    let sim = TcpSim::start(with(Faults {
        replay: 2,
        ..Faults::default()
    }))
    .await;
    let mut events = sim.sim.events();
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    let clock = |text: Option<String>| {
        let text = text.expect("clock line");
        MeterClock::parse(text.as_bytes())
            .expect("clock parses")
            .local_epoch_seconds()
    };

    let mut previous_time = i64::MIN;
    // The 1 s between polls is the meter's rule, across connections too.
    let mut last_dod: Option<Instant> = None;
    for connection in 0..2 {
        let mut client = sim.client().await;
        let mut lines = Vec::new();
        for i in 0..3 {
            if let Some(at) = last_dod {
                tokio::time::sleep_until(at + HOST_DOD_INTERVAL).await;
            }
            let (line, reading) = client.dod().await;
            last_dod = client.last_answer;
            assert_invariants(&reading, &line);
            let event = wait_event(&mut events, "dod", |e| matches!(e, SimEvent::Dod { .. })).await;
            let SimEvent::Dod {
                line: sent,
                replayed,
                ..
            } = event
            else {
                unreachable!()
            };
            assert_eq!(sent, line);
            assert_eq!(replayed, i < 2, "connection {connection}, answer {i}");
            let time = clock(client.ask("Clock?").await.1);
            if i < 2 {
                // Stored records: about an hour old, one second apart, never repeated.
                assert!((time - hour_ago).abs() <= 10, "{time} vs {hour_ago}");
                assert!(time > previous_time, "record times must advance");
                previous_time = time;
                // Old records carry a finished integration.
                assert!(reading.main().leq.is_some(), "{line}");
            } else {
                assert!(
                    (time - chrono::Utc::now().timestamp()).abs() <= 2,
                    "live clock"
                );
            }
            lines.push(line);
        }
        assert!(lines.windows(2).all(|w| w[0] != w[1]));
    }
    sim.stop().await;
}

#[tokio::test]
async fn drop_every_closes_the_client_socket() {
    let every = Duration::from_millis(700);
    let sim = TcpSim::start(with(Faults {
        drop_every: Some(every),
        ..Faults::default()
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    let connected = Instant::now();
    assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));

    wait_event(&mut events, "drop fault", |e| is_fault(e, "drop")).await;
    let read = tokio::time::timeout(common::DEADLINE, client.io.read(&mut [0u8; 16]))
        .await
        .expect("closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(connected.elapsed() >= every - Duration::from_millis(50));

    // The meter takes the next connection.
    let mut again = sim.client().await;
    assert_eq!(again.ask("Type?").await.1.as_deref(), Some("NL-43"));
    let stats = sim.sim.stats();
    assert!(
        stats.links_dropped >= 1 && stats.connections_accepted >= 2,
        "{stats:?}"
    );
    sim.stop().await;
}
