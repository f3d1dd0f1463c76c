//! The simulator on a real pseudo-terminal, opened by the host as a serial
//! device would be.

mod common;

use common::{Client, DEADLINE, PtyClient, assert_invariants, eventually, is_fault, wait_event};
use firmware_bridge::nl43::ResultCode;
use slmd_hil::{Faults, SimConfig, SimEvent, Simulator};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn dod_over_the_slave_tty() {
    let sim = Simulator::new(SimConfig::default());
    let meter = sim.open_pty(None).expect("pty");
    let path = meter.path().to_owned();
    assert!(
        path.starts_with("/dev/pts") || path.starts_with("/dev/pty"),
        "{path:?}"
    );
    assert_eq!(meter.tty_path(), path);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(meter.serve(shutdown.clone()));

    let mut client = Client::new(PtyClient::open(&path).expect("open the slave"));
    let (line, reading) = client.dod().await;
    assert_invariants(&reading, &line);
    assert_eq!(
        client.ask("Type?").await,
        (ResultCode::Ok, Some("NL-43".into()))
    );

    // The host closing its side does not end the meter: the next host is served.
    // (The serial line is one link: the 200 ms after the last answer still count.)
    let last_answer = client.last_answer;
    drop(client);
    let mut next = Client::new(PtyClient::open(&path).expect("open again"));
    next.last_answer = last_answer;
    assert_eq!(
        next.ask("Battery Level?").await,
        (ResultCode::Ok, Some("Full".into()))
    );

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve");
    let stats = sim.stats();
    assert_eq!(
        (stats.connections_accepted, stats.dod_answers),
        (1, 1),
        "{stats:?}"
    );
}

#[tokio::test]
async fn drop_every_brings_the_link_back_on_a_new_pty() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link: PathBuf = dir.path().join("usb-RION_NL-43");
    let sim = Simulator::new(SimConfig {
        faults: Faults {
            drop_every: Some(Duration::from_millis(1500)),
            ..Faults::default()
        },
        ..SimConfig::default()
    });
    let mut events = sim.events();
    let meter = sim.open_pty(Some(link.clone())).expect("pty");
    assert_eq!(meter.path(), link);
    let first_tty = std::fs::read_link(&link).expect("link is a symlink");
    assert_eq!(first_tty, meter.tty_path());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(meter.serve(shutdown.clone()));

    let mut client = Client::new(PtyClient::open(&link).expect("open via the link"));
    assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));

    wait_event(&mut events, "drop fault", |e| is_fault(e, "drop")).await;
    wait_event(&mut events, "reconnect", |e| {
        matches!(e, SimEvent::Connected { total: 2 })
    })
    .await;
    // The old device is gone: the host's open descriptor hangs up.
    let read = tokio::time::timeout(DEADLINE, client.io.read(&mut [0u8; 16]))
        .await
        .expect("hang-up in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(client);

    // The link now points at a new pty, which answers.
    let second_tty = std::fs::read_link(&link).expect("link is back");
    assert_ne!(second_tty, first_tty, "a new pty");
    let mut client = Client::new(PtyClient::open(&link).expect("reopen via the link"));
    let (line, reading) = client.dod().await;
    assert_invariants(&reading, &line);

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("stops")
        .expect("task")
        .expect("serve");
    assert!(
        !link.exists() && std::fs::symlink_metadata(&link).is_err(),
        "link removed on shutdown"
    );
    let stats = sim.stats();
    assert!(
        stats.links_dropped >= 1 && stats.connections_accepted >= 2,
        "{stats:?}"
    );
    // No temporary link names are left behind.
    eventually("temp links gone", || {
        std::fs::read_dir(dir.path())
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    })
    .await;
}

#[tokio::test]
async fn dropping_an_unserved_pty_meter_removes_its_link() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("meter");
    let sim = Simulator::new(SimConfig::default());
    let meter = sim.open_pty(Some(link.clone())).expect("pty");
    assert!(std::fs::symlink_metadata(&link).is_ok());
    drop(meter);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link left behind"
    );
}
