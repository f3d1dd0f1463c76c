//! The fault menu on the XL2, Svantek and Casella personalities, over real
//! TCP sockets and ptys: junk, split writes, stalls, silence, and a pty that
//! vanishes and comes back (`drop_every`). Each fault is run once per
//! family (tests `<fault>::<family>`).

mod common;

use common::family::{PtySim, Wire, config, find, open_pty, probe};
use common::{TcpSim, is_fault, wait_event};
use slmd_hil::{Family, Faults, SimConfig, SimEvent};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

fn with(family: Family, faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..config(family)
    }
}

async fn tcp(sim: &TcpSim) -> Wire<TcpStream> {
    Wire::new(TcpStream::connect(sim.addr).await.expect("connect"))
}

/// Checks that `answer` is a complete, correct probe answer.
fn assert_answer(family: Family, answer: &str) {
    match family {
        Family::Xl2 => assert!(
            answer.starts_with("NTiAudio,XL2,A2A-") && answer.ends_with("-E0,V4.71\n"),
            "{answer:?}"
        ),
        Family::Svantek => assert!(
            answer.starts_with("#1,U971,N") && answer.ends_with(",W1.12.3,S1;"),
            "{answer:?}"
        ),
        Family::Casella => {
            assert!(answer.starts_with("<LAeq>, "), "{answer:?}");
            assert_eq!(answer.matches("\r\n").count(), 6, "{answer:?}");
            assert!(answer.ends_with("\r\n"), "{answer:?}");
        }
        Family::Nl43 => unreachable!(),
    }
}

/// Runs `$check(family)` once per new family, as `$check::<family>`.
macro_rules! per_family {
    ($check:ident) => {
        mod $check {
            use super::*;

            #[tokio::test]
            async fn xl2() {
                super::$check(Family::Xl2).await;
            }

            #[tokio::test]
            async fn svantek() {
                super::$check(Family::Svantek).await;
            }

            #[tokio::test]
            async fn casella() {
                super::$check(Family::Casella).await;
            }
        }
    };
}

per_family!(junk);
per_family!(split);
per_family!(stall);
per_family!(silence);
per_family!(pty_drop);

async fn junk(family: Family) {
    let sim = TcpSim::start(with(
        family,
        Faults {
            junk: 1.0,
            ..Faults::default()
        },
    ))
    .await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;
    for _ in 0..3 {
        let (junk, answer) = probe(&mut wire, family).await;
        assert_answer(family, &answer);
        assert!(!junk.is_empty(), "junk expected with probability 1");
        let forbidden: &[u8] = match family {
            // A prefix of the answer line, or a line of its own.
            Family::Xl2 => b"\r",
            // Noise between frames, never a delimiter.
            Family::Svantek => b"#;",
            // Whole lines, never a tagged one.
            _ => b"<",
        };
        assert!(!junk.iter().any(|b| forbidden.contains(b)), "{junk:?}");
        if family == Family::Casella {
            assert!(junk.ends_with(b"\r\n"), "a junk line: {junk:?}");
        }
        wait_event(&mut events, "junk fault", |e| is_fault(e, "junk")).await;
    }
    sim.stop().await;
}

async fn split(family: Family) {
    let sim = TcpSim::start(with(
        family,
        Faults {
            split: true,
            ..Faults::default()
        },
    ))
    .await;
    let mut wire = tcp(&sim).await;
    let (before, answer) = probe(&mut wire, family).await;
    assert!(before.is_empty());
    assert_answer(family, &answer);
    // Pieces of at most 7 bytes with pauses: many reads for one answer.
    let least = answer.len().div_ceil(7) / 2;
    assert!(
        wire.reads >= least.max(2),
        "{} reads for {} bytes",
        wire.reads,
        answer.len()
    );
    sim.stop().await;
}

async fn stall(family: Family) {
    let delay = Duration::from_millis(600);
    let sim = TcpSim::start(with(
        family,
        Faults {
            stall: Some((1.0, delay)),
            ..Faults::default()
        },
    ))
    .await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;
    let asked = Instant::now();
    let (_, answer) = probe(&mut wire, family).await;
    assert_answer(family, &answer);
    // A pushed group comes one period plus the stall after the connection.
    let least = if family == Family::Casella {
        delay + Duration::from_millis(900)
    } else {
        delay
    };
    assert!(
        asked.elapsed() >= least,
        "answered after {:?}",
        asked.elapsed()
    );
    wait_event(&mut events, "stall fault", |e| is_fault(e, "stall")).await;
    sim.stop().await;
}

async fn silence(family: Family) {
    let sim = TcpSim::start(with(
        family,
        Faults {
            silent_after: Some(Duration::from_millis(300)),
            silent_for: Duration::from_millis(1700),
            ..Faults::default()
        },
    ))
    .await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;
    wait_event(&mut events, "silent_start", |e| is_fault(e, "silent_start")).await;
    match family {
        Family::Xl2 => wire.send(b"*IDN?\n").await,
        Family::Svantek => wire.send(b"#1;").await,
        _ => {}
    }
    // Nothing comes back (or is pushed: a period passes) while silent; the
    // link stays open.
    assert!(
        wire.quiet(Duration::from_millis(1200)).await,
        "{:?}",
        wire.pending
    );
    wait_event(&mut events, "silent_end", |e| is_fault(e, "silent_end")).await;
    let (before, answer) = probe(&mut wire, family).await;
    assert!(before.is_empty(), "{before:?}");
    assert_answer(family, &answer);
    if family != Family::Casella {
        let stats = sim.sim.stats();
        assert_eq!(stats.commands, 2, "the ignored one is counted: {stats:?}");
    }
    sim.stop().await;
}

async fn pty_drop(family: Family) {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join(format!("usb-{family}"));
    let sim = PtySim::start(
        with(
            family,
            Faults {
                drop_every: Some(Duration::from_millis(2500)),
                ..Faults::default()
            },
        ),
        Some(link.clone()),
    );
    let mut events = sim.sim.events();
    let first_tty = std::fs::read_link(&link).expect("link is a symlink");
    let mut wire = sim.open();
    let (_, before) = probe(&mut wire, family).await;
    assert_answer(family, &before);
    // Meter state that must outlive the link.
    match family {
        Family::Xl2 => wire.send(b"NOT:A:COMMAND\n").await,
        Family::Svantek => {
            wire.send(b"#2;").await;
            wire.frame().await;
        }
        _ => {}
    }

    wait_event(&mut events, "drop fault", |e| is_fault(e, "drop")).await;
    wait_event(&mut events, "reconnect", |e| {
        matches!(e, SimEvent::Connected { total: 2 })
    })
    .await;
    assert!(wire.closed().await, "the old pty hangs up");
    drop(wire);
    let second_tty = std::fs::read_link(&link).expect("link is back");
    assert_ne!(second_tty, first_tty, "a new pty");

    let mut wire = open_pty(&link);
    let (_, after) = probe(&mut wire, family).await;
    assert_answer(family, &after);
    match family {
        Family::Xl2 => {
            wire.send(b"SYST:ERRO?\n").await;
            assert_eq!(wire.line().await, "-113", "the error queue survived");
        }
        Family::Svantek => {
            wire.send(b"#2;").await;
            let frame = wire.frame().await;
            let elapsed: u64 = frame
                .split(',')
                .find_map(|f| f.strip_prefix('T'))
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("{frame}"));
            assert!(elapsed >= 2, "the measurement went on: {frame}");
        }
        _ => {
            let time = |text: &str| {
                let at = find(text.as_bytes(), b", ").expect("fields") + 2;
                text[at..at + 20].to_owned()
            };
            assert!(time(&after) > time(&before), "{before:?} then {after:?}");
        }
    }
    sim.stop().await;
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed on shutdown"
    );
}
