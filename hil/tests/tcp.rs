//! The simulator over real TCP sockets: answers, result codes, pacing,
//! `DRD?` streaming and the one-client rule.

mod common;

use common::{Client, DEADLINE, HOST_DOD_INTERVAL, TcpSim, assert_invariants, wait_event};
use firmware_bridge::nl43::{DrdLine, MeterClock, ResultCode};
use slmd_hil::{SimConfig, SimEvent};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

#[tokio::test]
async fn dod_answer_is_a_valid_64_field_line() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;

    let (first, reading) = client.dod().await;
    assert_invariants(&reading, &first);
    assert_eq!(first.split(',').count(), 64);
    let event = wait_event(&mut events, "dod", |e| matches!(e, SimEvent::Dod { .. })).await;
    assert_eq!(
        event,
        SimEvent::Dod {
            n: 1,
            line: first.clone(),
            replayed: false
        }
    );

    // A second later the measurement has integrated a second: values appear.
    tokio::time::sleep_until(client.last_answer.expect("answered") + HOST_DOD_INTERVAL).await;
    let (second, reading) = client.dod().await;
    assert_invariants(&reading, &second);
    assert_ne!(second, first, "consecutive answers must differ");
    let main = reading.main();
    assert!(
        main.leq.is_some() && main.le.is_some() && main.lmax.is_some(),
        "{second}"
    );
    assert!(
        main.ln.iter().all(Option::is_some) && main.lpeak.is_some(),
        "{second}"
    );
    assert!(main.le >= main.leq, "{second}");
    assert_eq!(
        (main.overload, main.under_range),
        (Some(false), Some(false))
    );

    assert_eq!(sim.sim.stats().dod_answers, 2);
    sim.stop().await;
}

#[tokio::test]
async fn pacing_rules_answer_busy() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut client = sim.client().await;

    client.dod().await;
    // 250 ms later: the 200 ms gap is kept, but not the 1 s between polls.
    assert_eq!(client.ask("DOD?").await, (ResultCode::StatusError, None));
    // Right after an answer, any command is busy.
    client.send_raw(b"Type?\r\n").await;
    assert_eq!(client.result().await.0, ResultCode::StatusError);
    client.last_answer = Some(Instant::now());
    // A paced command is fine again.
    assert_eq!(
        client.ask("Type?").await,
        (ResultCode::Ok, Some("NL-43".into()))
    );

    assert_eq!(sim.sim.stats().busy_answers, 2);
    sim.stop().await;
}

#[tokio::test]
async fn errors_map_to_result_codes() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;

    assert_eq!(client.ask("Frobnicate?").await.0, ResultCode::CommandError);
    assert_eq!(
        client.ask("$Measure,Start").await.0,
        ResultCode::CommandError
    );
    assert_eq!(
        client.ask("BatteryLevel?").await.0,
        ResultCode::CommandError
    );
    assert_eq!(client.ask("Measure,Go").await.0, ResultCode::ParameterError);
    assert_eq!(
        client.ask("Clock,2025/12/24,02:10:55").await.0,
        ResultCode::ParameterError
    );
    assert_eq!(client.ask("DOD,1").await.0, ResultCode::DesignationError);
    assert_eq!(
        client.ask("Battery Level?").await,
        (ResultCode::Ok, Some("Full".into()))
    );
    assert_eq!(
        client.ask("Measure?").await,
        (ResultCode::Ok, Some("Start".into()))
    );
    assert_eq!(
        client.ask("Pause?").await,
        (ResultCode::Ok, Some("Off".into()))
    );
    assert_eq!(
        client.ask("SD Card Percentage?").await,
        (ResultCode::Ok, Some("87".into()))
    );
    assert_eq!(
        client.ask("type?").await,
        (ResultCode::Ok, Some("NL-43".into()))
    );

    let event = wait_event(
        &mut events,
        "result",
        |e| matches!(e, SimEvent::Result { command, .. } if command == "$Measure,Start"),
    )
    .await;
    assert_eq!(
        event,
        SimEvent::Result {
            command: "$Measure,Start".into(),
            code: "R+0001".into()
        }
    );
    assert_eq!(sim.sim.stats().commands, 11);
    sim.stop().await;
}

#[tokio::test]
async fn measure_start_and_stop_follow_the_state() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut client = sim.client().await;

    assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::Ok);
    assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::StatusError);
    assert_eq!(client.ask("Measure?").await.1.as_deref(), Some("Stop"));
    assert_eq!(client.ask("Measure,Start").await.0, ResultCode::Ok);
    assert_eq!(client.ask("Measure,Start").await.0, ResultCode::StatusError);
    assert_eq!(client.ask("Measure?").await.1.as_deref(), Some("Start"));
    // Right after Start nothing is integrated yet: dashes.
    let (line, reading) = client.dod().await;
    assert!(
        reading.main().leq.is_none() && reading.main().lp.is_some(),
        "{line}"
    );

    assert_eq!(sim.sim.stats().busy_answers, 2);
    sim.stop().await;
}

#[tokio::test]
async fn never_started_meter_shows_dashes() {
    let sim = TcpSim::start(SimConfig {
        start_measuring: false,
        ..SimConfig::default()
    })
    .await;
    let mut client = sim.client().await;
    assert_eq!(client.ask("Measure?").await.1.as_deref(), Some("Stop"));
    let (line, reading) = client.dod().await;
    let main = reading.main();
    assert!(main.lp.is_some(), "{line}");
    assert!(
        main.leq.is_none() && main.lmax.is_none() && main.ln.iter().all(Option::is_none),
        "{line}"
    );
    assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::StatusError);
    sim.stop().await;
}

#[tokio::test]
async fn drd_streams_lines_until_sub() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut client = sim.client().await;

    client.pace().await;
    client.send_raw(b"DRD?\r\n").await;
    assert_eq!(client.result().await.0, ResultCode::Ok);
    let mut last = 0;
    let started = Instant::now();
    for expected in 1..=5u16 {
        let line = client.line().await;
        let drd = DrdLine::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(drd.counter, expected, "{line}");
        assert!(drd.lp.is_some(), "{line}");
        assert!(drd.rest.ends_with(b",0,0"), "{line}");
        last = drd.counter;
    }
    // Five lines at 10 Hz take about half a second.
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );

    // Commands are ignored while DRD runs.
    client.send_raw(b"Type?\r\n").await;
    client.send_raw(&[0x1a]).await;
    // Lines already on their way may still come; then nothing but the next answer.
    client.last_answer = Some(Instant::now());
    client.pace().await;
    client.send_raw(b"Measure?\r\n").await;
    loop {
        let line = client.line().await;
        if let Ok(code) = ResultCode::parse(line.as_bytes()) {
            assert_eq!(code, ResultCode::Ok);
            break;
        }
        let drd = DrdLine::parse(line.as_bytes()).expect("only DRD lines before the answer");
        assert!(drd.counter > last && drd.counter <= last + 3, "{line}");
        last = drd.counter;
    }
    assert_eq!(client.line().await, "Start");
    // The stream has stopped: nothing more arrives.
    let quiet =
        tokio::time::timeout(Duration::from_millis(400), client.io.read(&mut [0u8; 64])).await;
    assert!(quiet.is_err(), "output after SUB: {quiet:?}");
    // `Type?` sent during DRD was never answered.
    let stats = sim.sim.stats();
    assert_eq!(stats.commands, 2, "{stats:?}");
    sim.stop().await;
}

#[tokio::test]
async fn every_dod_and_drd_line_is_a_reading_event() {
    let offset = -30;
    let sim = TcpSim::start(SimConfig {
        clock_offset_secs: offset,
        ..SimConfig::default()
    })
    .await;
    let mut events = sim.sim.events();
    let mut client = sim.client().await;

    let (line, reading) = client.dod().await;
    let event = wait_event(&mut events, "reading", |e| {
        matches!(e, SimEvent::Reading { .. })
    })
    .await;
    let SimEvent::Reading {
        family,
        n,
        metrics,
        device_time,
        replayed,
    } = event
    else {
        unreachable!()
    };
    assert_eq!(
        (family, n, device_time, replayed),
        (slmd_hil::Family::Nl43, 1, None, false)
    );
    let names: Vec<&str> = metrics.names().collect();
    assert_eq!(
        names,
        [
            "lp", "leq", "le", "lmax", "lmin", "l5", "l10", "l50", "l90", "l95", "lpeak"
        ]
    );
    let m = reading.main();
    assert_eq!(metrics.get("lp"), Some(m.lp.map(|d| d.db())), "{line}");
    assert_eq!(metrics.get("leq"), Some(m.leq.map(|d| d.db())), "{line}");
    assert_eq!(metrics.get("l95"), Some(m.ln[4].map(|d| d.db())), "{line}");

    client.pace().await;
    client.send_raw(b"DRD?status\r\n").await;
    assert_eq!(client.result().await.0, ResultCode::Ok);
    for _ in 0..3 {
        let line = client.line().await;
        let drd = DrdLine::parse(line.as_bytes()).expect("DRD line");
        let event = wait_event(&mut events, "reading", |e| {
            matches!(e, SimEvent::Reading { .. })
        })
        .await;
        let SimEvent::Reading {
            metrics,
            device_time,
            ..
        } = event
        else {
            unreachable!()
        };
        let names: Vec<&str> = metrics.names().collect();
        assert_eq!(names, ["lp", "leq", "lmax", "lmin", "lpeak"]);
        assert_eq!(metrics.get("lp"), Some(drd.lp.map(|d| d.db())), "{line}");
        assert_eq!(
            metrics.get("lpeak"),
            Some(drd.lpeak.map(|d| d.db())),
            "{line}"
        );
        // The line's clock is meter-local; the event's time is UTC.
        let clock = String::from_utf8_lossy(drd.rest)
            .split(',')
            .nth(5)
            .map(str::to_owned)
            .expect("clock field");
        let local = MeterClock::parse(clock.as_bytes())
            .expect("clock")
            .local_epoch_seconds();
        let utc = chrono::DateTime::from_timestamp(local - offset, 0).expect("time");
        assert_eq!(
            device_time,
            Some(utc.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
            "{line}"
        );
    }
    client.send_raw(&[0x1a]).await;
    sim.stop().await;
}

#[tokio::test]
async fn a_second_client_is_refused() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut events = sim.sim.events();
    let mut first = sim.client().await;
    wait_event(&mut events, "connected", |e| {
        matches!(e, SimEvent::Connected { total: 1 })
    })
    .await;

    let mut second = sim.client().await;
    wait_event(&mut events, "refused", |e| {
        matches!(e, SimEvent::Refused { total: 1 })
    })
    .await;
    // The refused client sees its connection closed.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, second.io.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The first one is still served.
    first.dod().await;
    let stats = sim.sim.stats();
    assert_eq!(
        (stats.connections_accepted, stats.connections_refused),
        (1, 1),
        "{stats:?}"
    );

    // After the first leaves, a new client is taken.
    drop(first);
    wait_event(&mut events, "disconnected", |e| {
        matches!(e, SimEvent::Disconnected)
    })
    .await;
    let mut third = sim.client().await;
    assert_eq!(third.ask("Type?").await.1.as_deref(), Some("NL-43"));
    assert_eq!(sim.sim.stats().connections_accepted, 2);
    sim.stop().await;
}

#[tokio::test]
async fn a_client_reconnecting_at_once_is_not_refused() {
    let sim = TcpSim::start(SimConfig::default()).await;
    for _ in 0..5 {
        let mut client = sim.client().await;
        assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));
    }
    let stats = sim.sim.stats();
    assert_eq!(
        (stats.connections_accepted, stats.connections_refused),
        (5, 0),
        "{stats:?}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn clock_follows_the_offset_and_can_be_set() {
    let sim = TcpSim::start(SimConfig {
        clock_offset_secs: -7200,
        ..SimConfig::default()
    })
    .await;
    let mut client = sim.client().await;
    let read_clock = |text: Option<String>| {
        let text = text.expect("a clock line");
        MeterClock::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}: {text}"))
            .local_epoch_seconds()
    };
    let utc = chrono::Utc::now().timestamp();
    let meter = read_clock(client.ask("Clock?").await.1);
    assert!(
        (meter - (utc - 7200)).abs() <= 2,
        "meter {meter} vs utc {utc}"
    );

    // Not while measuring (the simulator's guess): stopped, it is taken.
    assert_eq!(
        client.ask("Clock,2030/01/02 03:04:05").await.0,
        ResultCode::StatusError
    );
    assert_eq!(client.ask("Measure,Stop").await.0, ResultCode::Ok);
    assert_eq!(
        client.ask("Clock,2030/01/02 03:04:05").await.0,
        ResultCode::Ok
    );
    let set = MeterClock::parse(b"2030/01/02 03:04:05")
        .expect("valid")
        .local_epoch_seconds();
    let meter = read_clock(client.ask("Clock?").await.1);
    assert!(
        (0..=2).contains(&(meter - set)),
        "meter {meter} vs set {set}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn a_command_split_over_slow_writes_is_dropped() {
    let sim = TcpSim::start(SimConfig::default()).await;
    let mut client: Client<_> = sim.client().await;
    client.send_raw(b"Ty").await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the gap under test
    client.send_raw(b"pe?\r\n").await;
    // "pe?" alone is an unknown command: the first half was dropped.
    assert_eq!(client.result().await.0, ResultCode::CommandError);
    sim.stop().await;
}
