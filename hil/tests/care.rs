//! Meter care, the simulator's side: a drifting clock and its setting,
//! power cycles of every family, the NL-43's sleep and waking, and the
//! events a test of slmd's `keep_measuring`, `no_sleep` and `sync_clock`
//! waits on.

mod common;

use common::family::{PtySim, Wire, config};
use common::{Client, DEADLINE, TcpSim, closed, eventually, wait_event};
use firmware_bridge::nl43::{DodReading, MeterClock, ResultCode};
use slmd_hil::{Family, SimConfig, SimEvent};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How long a meter that should stay quiet is listened to.
const QUIET: Duration = Duration::from_millis(1500);

/// An NL-43 configuration with the rest default.
fn nl43(change: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut config = SimConfig::default();
    change(&mut config);
    config
}

/// The meter-local Unix seconds of a `Clock?` answer.
fn clock_secs(text: Option<String>) -> i64 {
    let text = text.expect("a clock line");
    MeterClock::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .local_epoch_seconds()
}

/// `Clock,...` for meter-local Unix seconds `secs`.
fn clock_command(secs: i64) -> String {
    let clock = MeterClock::from_local_epoch_seconds(secs).expect("a showable time");
    format!("Clock,{clock}")
}

/// UTC now, Unix seconds with a fraction.
fn utc_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 * 1e-6
}

/// Whether nothing at all arrives on `io` within [`QUIET`].
async fn quiet<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(QUIET, io.read(&mut buf))
        .await
        .is_err()
}

/// Every event already queued on `events`.
fn drain(events: &mut broadcast::Receiver<SimEvent>) -> Vec<SimEvent> {
    let mut all = Vec::new();
    while let Ok(event) = events.try_recv() {
        all.push(event);
    }
    all
}

#[tokio::test]
async fn a_drifting_clock_runs_fast_by_the_configured_ratio() {
    let sim = TcpSim::start(nl43(|c| {
        c.clock_drift_ppm = 200_000.0;
        c.start_measuring = false;
    }))
    .await;
    let powered_up = utc_now();
    let mut events = sim.sim.events();
    let mut client = sim.client().await;

    // The moments the shown second changes, seen by polling `Clock?` at the
    // host's pace (one every ~250 ms): each taken as the middle between
    // the poll that saw the old second and the one that saw the new.
    let mut ticks: Vec<(f64, i64)> = Vec::new();
    let mut last: Option<(f64, i64)> = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let asked = utc_now();
        let shown = clock_secs(client.ask("Clock?").await.1);
        if let Some((previous, seen)) = last {
            if seen != shown {
                ticks.push(((previous + asked) / 2.0, shown));
            }
        }
        last = Some((utc_now(), shown));
    }
    let (&(t1, c1), &(t2, c2)) = (ticks.first().expect("ticks"), ticks.last().expect("ticks"));
    let ratio = (c2 - c1) as f64 / (t2 - t1);
    assert!(
        (1.1..=1.3).contains(&ratio),
        "the clock ran {ratio} times real time, not 1.2 ({ticks:?})"
    );

    // A setting reports the drift it corrected, and the new offset.
    let target = chrono::Utc::now().timestamp();
    assert_eq!(client.ask(&clock_command(target)).await.0, ResultCode::Ok);
    let set_at = utc_now();
    let event = wait_event(&mut events, "clock_set", |e| {
        matches!(e, SimEvent::ClockSet { .. })
    })
    .await;
    let SimEvent::ClockSet {
        family,
        offset_before_s,
        offset_after_s,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(family, Family::Nl43);
    let gained = 0.2 * (set_at - powered_up);
    assert!(
        (offset_before_s - gained).abs() < 0.5,
        "before {offset_before_s}, expected about {gained}"
    );
    assert!(
        (-1.5..=0.5).contains(&offset_after_s),
        "after {offset_after_s}"
    );
    // The drift goes on from the setting.
    let shown = clock_secs(client.ask("Clock?").await.1);
    assert!((0..=2).contains(&(shown - target)), "{shown} vs {target}");
    assert_eq!(sim.sim.stats().clock_sets, 1);
    sim.stop().await;
}

#[tokio::test]
async fn the_clock_is_set_only_while_stopped_and_runs_are_announced() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    let target = MeterClock::parse(b"2030/01/02 03:04:05")
        .expect("valid")
        .local_epoch_seconds();

    assert_eq!(
        client.ask("Clock,2030/01/02 03:04:05").await.0,
        ResultCode::StatusError,
        "not while measuring"
    );
    assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::Ok);
    assert_eq!(
        client.ask("Measure,Stop").await.0,
        ResultCode::StatusError,
        "already stopped: no change, no event"
    );
    assert_eq!(
        client.ask("Clock,2030/01/02 03:04:05").await.0,
        ResultCode::Ok
    );
    let expected_after = (target - chrono::Utc::now().timestamp()) as f64;
    assert_eq!(client.ask("Measure,Start").await.0, ResultCode::Ok);
    let shown = clock_secs(client.ask("Clock?").await.1);
    assert!((0..=2).contains(&(shown - target)), "{shown} vs {target}");

    let care: Vec<SimEvent> = {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = wait_event(&mut events, "care event", |e| {
                matches!(e, SimEvent::Measure { .. } | SimEvent::ClockSet { .. })
            })
            .await;
            seen.push(event);
        }
        seen
    };
    assert_eq!(
        care[0],
        SimEvent::Measure {
            family: Family::Nl43,
            running: false
        }
    );
    let SimEvent::ClockSet {
        family,
        offset_before_s,
        offset_after_s,
    } = care[1]
    else {
        panic!("{care:?}")
    };
    assert_eq!(family, Family::Nl43);
    assert!(offset_before_s.abs() < 1.5, "{offset_before_s}");
    assert!(
        (offset_after_s - expected_after).abs() < 2.0,
        "{offset_after_s} vs {expected_after}"
    );
    assert_eq!(
        care[2],
        SimEvent::Measure {
            family: Family::Nl43,
            running: true
        }
    );
    assert!(
        !drain(&mut events)
            .iter()
            .any(|e| matches!(e, SimEvent::Measure { .. } | SimEvent::ClockSet { .. })),
        "one event per change"
    );
    assert_eq!(sim.sim.stats().clock_sets, 1);
    sim.stop().await;

    // The other guess: taken while measuring.
    let sim = TcpSim::start(nl43(|c| c.clock_set_while_measuring = true)).await;
    let mut client = sim.client().await;
    assert_eq!(
        client.ask("Clock,2030/01/02 03:04:05").await.0,
        ResultCode::Ok
    );
    assert_eq!(
        client.ask("Measure?").await,
        (ResultCode::Ok, Some("Start".into()))
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_power_cycle_drops_the_tcp_link_and_the_nl43_comes_back_stopped() {
    let sim = TcpSim::start(nl43(|c| c.clock_offset_secs = -3600)).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    assert_eq!(
        client.ask("Measure?").await,
        (ResultCode::Ok, Some("Start".into()))
    );
    assert_eq!(client.ask("Echo,On").await.0, ResultCode::Ok);

    sim.sim.power_cycle(false);
    assert!(closed(&mut client.io).await, "the link was dropped");
    assert_eq!(
        wait_event(&mut events, "power_cycle", |e| matches!(
            e,
            SimEvent::PowerCycle { .. }
        ))
        .await,
        SimEvent::PowerCycle {
            family: Family::Nl43,
            asleep: false
        }
    );
    wait_event(&mut events, "disconnected", |e| {
        matches!(e, SimEvent::Disconnected)
    })
    .await;

    let mut client = sim.client().await;
    let (code, skipped) = {
        client.send_raw(b"Measure?\r\n").await;
        client.result().await
    };
    assert_eq!(code, ResultCode::Ok);
    assert_eq!(skipped, ["Measure?"], "echo, a setting, survives");
    assert_eq!(client.line().await, "Stop");
    client.last_answer = Some(Instant::now());
    assert_eq!(client.ask("Echo,Off").await.0, ResultCode::Ok);
    // Nothing integrated since the power came back: dashes.
    let (line, reading) = client.dod().await;
    let main = reading.main();
    assert!(main.lp.is_some() && main.leq.is_none(), "{line}");
    // The clock (an RTC) kept its offset.
    let shown = clock_secs(client.ask("Clock?").await.1);
    let utc = chrono::Utc::now().timestamp();
    assert!((shown - (utc - 3600)).abs() <= 2, "{shown} vs {utc} - 3600");
    // keep_measuring's answer: start it again.
    assert_eq!(client.ask("Measure,Start").await.0, ResultCode::Ok);
    wait_event(&mut events, "measure", |e| {
        *e == SimEvent::Measure {
            family: Family::Nl43,
            running: true,
        }
    })
    .await;

    let stats = sim.sim.stats();
    assert_eq!(
        (
            stats.power_cycles,
            stats.connections_accepted,
            stats.links_dropped
        ),
        (1, 2, 0),
        "{stats:?}"
    );
    sim.stop().await;
}

/// A TCP link to a family simulator.
async fn wire(sim: &TcpSim) -> Wire<TcpStream> {
    Wire::new(TcpStream::connect(sim.addr).await.expect("connect"))
}

#[tokio::test]
async fn a_power_cycle_stops_an_xl2_and_empties_its_error_queue() {
    let sim = TcpSim::start(config(Family::Xl2)).await;
    let mut events = sim.sim.events();
    let mut link = wire(&sim).await;
    link.send(b"INIT:STATE?\n").await;
    assert_eq!(link.line().await, "RUNNING");
    // An error queued (the answer after it shows it was read).
    link.send(b"NONSENSE\n*IDN?\n").await;
    assert!(link.line().await.starts_with("NTiAudio,XL2,"));

    sim.sim.power_cycle(true);
    assert!(link.closed().await, "the link was dropped");
    assert_eq!(
        wait_event(&mut events, "power_cycle", |e| matches!(
            e,
            SimEvent::PowerCycle { .. }
        ))
        .await,
        SimEvent::PowerCycle {
            family: Family::Xl2,
            asleep: false
        },
        "no sleep mode outside the NL-43"
    );

    let mut link = wire(&sim).await;
    link.send(b"INIT:STATE?\nSYST:ERRO?\n").await;
    assert_eq!(link.line().await, "STOPPED");
    assert_eq!(link.line().await, "0");
    link.send(b"MEAS:SLM:123? LAEQ\n").await;
    assert_eq!(link.line().await, "-.- dB, OK");
    link.send(b"INIT START\nINIT START\n").await;
    assert_eq!(
        wait_event(&mut events, "measure", |e| matches!(
            e,
            SimEvent::Measure { .. }
        ))
        .await,
        SimEvent::Measure {
            family: Family::Xl2,
            running: true
        }
    );
    link.send(b"INIT:STATE?\n").await;
    assert_eq!(link.line().await, "RUNNING");
    assert!(
        !drain(&mut events)
            .iter()
            .any(|e| matches!(e, SimEvent::Measure { .. })),
        "a start while running changes nothing"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_power_cycle_stops_a_svantek() {
    let sim = TcpSim::start(config(Family::Svantek)).await;
    let mut events = sim.sim.events();
    let mut link = wire(&sim).await;
    link.send(b"#1,S?;").await;
    assert_eq!(link.frame().await, "#1,S1;");

    sim.sim.power_cycle(false);
    assert!(link.closed().await, "the link was dropped");

    let mut link = wire(&sim).await;
    link.send(b"#1,S?;#2;").await;
    assert_eq!(link.frame().await, "#1,S0;");
    assert_eq!(link.frame().await, "#2,?;", "no results after power-up");
    link.send(b"#1,S1;#1,S?;").await;
    assert_eq!(link.frame().await, "#1,S1;");
    let measure = wait_event(&mut events, "measure", |e| {
        matches!(e, SimEvent::Measure { .. })
    })
    .await;
    assert_eq!(
        measure,
        SimEvent::Measure {
            family: Family::Svantek,
            running: true
        }
    );
    link.send(b"#1,S0;#1,S?;").await;
    assert_eq!(link.frame().await, "#1,S0;");
    assert_eq!(
        wait_event(&mut events, "measure", |e| matches!(
            e,
            SimEvent::Measure { .. }
        ))
        .await,
        SimEvent::Measure {
            family: Family::Svantek,
            running: false
        }
    );
    assert_eq!(sim.sim.stats().power_cycles, 1);
    sim.stop().await;
}

#[tokio::test]
async fn a_power_cycled_casella_pushes_again() {
    // Powered up stopped, it pushes nothing; it has no start command, so a
    // power cycle brings it back measuring.
    let sim = TcpSim::start(SimConfig {
        start_measuring: false,
        ..config(Family::Casella)
    })
    .await;
    let mut events = sim.sim.events();
    let mut link = wire(&sim).await;
    assert!(link.quiet(QUIET).await, "a stopped Casella pushes nothing");

    sim.sim.power_cycle(false);
    assert!(link.closed().await, "the link was dropped");
    let mut link = wire(&sim).await;
    link.take_through(b"<LAeq>").await;
    link.take_through(b"<1/1 OCT LCeq>").await;
    common::family::next_reading(&mut events).await;
    sim.stop().await;
}

#[tokio::test]
async fn a_power_cycle_re_creates_the_pty_behind_its_link() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("nl43");
    let sim = PtySim::start(SimConfig::default(), Some(link.clone()));
    let tty = std::fs::read_link(&link).expect("link");
    let mut host = Client::new(common::PtyClient::open(&link).expect("open"));
    assert_eq!(
        host.ask("Measure?").await,
        (ResultCode::Ok, Some("Start".into()))
    );

    sim.sim.power_cycle(false);
    assert_eq!(host.try_line(DEADLINE).await, None, "the old pty is gone");
    eventually("the link points at a new pty", || {
        std::fs::read_link(&link).is_ok_and(|now| now != tty)
    })
    .await;
    let mut host = Client::new(common::PtyClient::open(&link).expect("open"));
    assert_eq!(
        host.ask("Measure?").await,
        (ResultCode::Ok, Some("Stop".into()))
    );
    assert_eq!(sim.sim.stats().power_cycles, 1);
    sim.stop().await;
}

#[tokio::test]
async fn asleep_the_nl43_closes_tcp_and_answers_nothing_until_woken() {
    let sim = TcpSim::start(nl43(|c| {
        c.sleep_mode = true;
        c.sleep_after = Duration::from_secs(1);
        c.start_measuring = false;
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    assert_eq!(
        client.ask("Sleep Mode?").await,
        (ResultCode::Ok, Some("On".into()))
    );

    // Commands are not key presses: it falls asleep on time, mid-link.
    wait_event(&mut events, "asleep", |e| matches!(e, SimEvent::Asleep)).await;
    assert!(closed(&mut client.io).await, "sleep turned the LAN off");

    // A new connection is accepted and never answered.
    let mut client = sim.client().await;
    client.send_raw(b"Type?\r\n").await;
    assert!(quiet(&mut client.io).await, "asleep, yet it answered");

    // A key press: the same connection is answered again; no_sleep's
    // answer (within sleep-after of the wake) keeps it so.
    sim.sim.wake();
    assert_eq!(client.ask("Sleep Mode,Off").await.0, ResultCode::Ok);
    wait_event(&mut events, "awake", |e| matches!(e, SimEvent::Awake)).await;
    assert_eq!(
        client.ask("Sleep Mode?").await,
        (ResultCode::Ok, Some("Off".into()))
    );
    sim.stop().await;
}

#[tokio::test]
async fn sleep_mode_off_in_time_keeps_the_nl43_awake() {
    let sleep_after = Duration::from_secs(1);
    let sim = TcpSim::start(nl43(|c| {
        c.sleep_mode = true;
        c.sleep_after = sleep_after;
        c.start_measuring = false;
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    let start = Instant::now();
    assert_eq!(client.ask("Sleep Mode,Off").await.0, ResultCode::Ok);
    assert!(start.elapsed() < sleep_after, "too slow to test anything");
    // Answered well past sleep-after.
    while start.elapsed() < sleep_after * 2 {
        assert_eq!(
            client.ask("Type?").await,
            (ResultCode::Ok, Some("NL-43".into()))
        );
    }
    assert!(
        !drain(&mut events)
            .iter()
            .any(|e| matches!(e, SimEvent::Asleep)),
        "it fell asleep"
    );
    sim.stop().await;

    // While measuring the setting is refused, so it falls asleep anyway.
    let sim = TcpSim::start(nl43(|c| {
        c.sleep_mode = true;
        c.sleep_after = sleep_after;
    }))
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    assert_eq!(
        client.ask("Sleep Mode,Off").await.0,
        ResultCode::StatusError
    );
    wait_event(&mut events, "asleep", |e| matches!(e, SimEvent::Asleep)).await;
    sim.stop().await;
}

#[tokio::test]
async fn asleep_on_a_pty_the_nl43_reads_and_ignores() {
    let sim = PtySim::start(
        nl43(|c| {
            c.sleep_mode = true;
            c.sleep_after = Duration::from_millis(500);
        }),
        None,
    );
    let mut events = sim.sim.events();
    let mut host = Client::new(common::PtyClient::open(&sim.path).expect("open"));
    wait_event(&mut events, "asleep", |e| matches!(e, SimEvent::Asleep)).await;
    host.send_raw(b"Type?\r\n").await;
    assert!(quiet(&mut host.io).await, "asleep, yet it answered");

    sim.sim.wake();
    assert_eq!(
        host.ask("Type?").await,
        (ResultCode::Ok, Some("NL-43".into()))
    );
    let stats = sim.sim.stats();
    assert_eq!(
        (stats.connections_accepted, stats.commands),
        (1, 2),
        "the same pty, both commands read: {stats:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_power_cycle_asleep_brings_sleep_mode_back_and_wakes_a_sleeper() {
    let sim = TcpSim::start(nl43(|c| c.sleep_after = Duration::from_millis(500))).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;
    assert_eq!(
        client.ask("Sleep Mode?").await,
        (ResultCode::Ok, Some("Off".into()))
    );

    sim.sim.power_cycle(true);
    assert!(closed(&mut client.io).await);
    wait_event(&mut events, "power_cycle", |e| {
        *e == SimEvent::PowerCycle {
            family: Family::Nl43,
            asleep: true,
        }
    })
    .await;
    // Powered up with sleep mode On: asleep half a second later.
    wait_event(&mut events, "asleep", |e| matches!(e, SimEvent::Asleep)).await;

    // Cycled while asleep: it comes back awake (and says so).
    sim.sim.power_cycle(false);
    let mut seen = Vec::new();
    while !seen.contains(&SimEvent::Awake) {
        seen.push(
            wait_event(&mut events, "power_cycle, awake", |e| {
                matches!(e, SimEvent::PowerCycle { .. } | SimEvent::Awake)
            })
            .await,
        );
    }
    assert!(matches!(
        seen[0],
        SimEvent::PowerCycle { asleep: false, .. }
    ));
    // Sleep mode, a setting, was kept: asleep again on time.
    wait_event(&mut events, "asleep", |e| matches!(e, SimEvent::Asleep)).await;
    assert_eq!(sim.sim.stats().power_cycles, 2);
    sim.stop().await;
}

#[tokio::test]
async fn sd_card_percentage_is_a_plain_integer() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut client = sim.client().await;
    let (code, data) = client.ask("SD Card Percentage?").await;
    assert_eq!(code, ResultCode::Ok);
    let data = data.expect("a data line");
    let percent: u8 = data.parse().unwrap_or_else(|e| panic!("{e}: {data:?}"));
    assert!(percent <= 100, "{data}");
    assert_eq!(
        client.ask("Battery Level?").await,
        (ResultCode::Ok, Some("Full".into()))
    );
    // The DOD line parses as usual on a cared-for meter.
    let (line, _) = client.dod().await;
    assert!(DodReading::parse(line.as_bytes()).is_ok());
    sim.stop().await;
}
