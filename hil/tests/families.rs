//! The XL2, Svantek and Casella personalities over real TCP sockets and
//! ptys: a host session per family whose values are checked against the
//! simulator's `reading` events (what a test of the daemon compares its
//! stored records with).

mod common;

use common::family::{PtySim, Wire, config, next_reading, number, probe};
use common::{DEADLINE, TcpSim, eventually};
use slmd_hil::{Family, SimConfig};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Pause between polls while waiting for a measurement to integrate.
const POLL: Duration = Duration::from_millis(200);

async fn tcp(sim: &TcpSim) -> Wire<TcpStream> {
    Wire::new(TcpStream::connect(sim.addr).await.expect("connect"))
}

/// `53.8 dB, OK` → its value text.
fn xl2_value(item: &str) -> &str {
    item.strip_suffix(" dB, OK")
        .unwrap_or_else(|| panic!("not an XL2 item: {item:?}"))
}

#[tokio::test]
async fn xl2_session_over_tcp_matches_the_reading_events() {
    let sim = TcpSim::start(config(Family::Xl2)).await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;

    wire.send(b"*IDN?\r\n").await;
    let serial = SimConfig::default().seed % 100_000;
    assert_eq!(
        wire.line().await,
        format!("NTiAudio,XL2,A2A-{serial:05}-E0,V4.71")
    );
    wire.send(b"INIT:STATE?\n").await;
    assert_eq!(wire.line().await, "RUNNING");

    // Wait (polling, with a deadline) for one second of integration.
    let started = Instant::now();
    loop {
        wire.send(b"MEAS:INIT\nMEAS:SLM:123? LAEQ\n").await;
        let item = wire.line().await;
        let (family, metrics, time) = next_reading(&mut events).await;
        assert_eq!((family, time), (Family::Xl2, None));
        assert_eq!(metrics.get("leq"), Some(number(xl2_value(&item))), "{item}");
        if item != "-.- dB, OK" {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no Leq in time");
        tokio::time::sleep(POLL).await;
    }

    let params = [
        "LAS", "LAEQ", "LASMAX", "LASMIN", "LCPKMAX", "L10%", "L90%", "LAF",
    ];
    wire.send(b"MEAS:INIT\n").await;
    wire.send(format!("MEAS:SLM:123? {}\n", params.join(" ")).as_bytes())
        .await;
    let mut values = Vec::new();
    for _ in params {
        values.push(number(xl2_value(&wire.line().await)).expect("a value"));
    }
    let (_, metrics, _) = next_reading(&mut events).await;
    let names: Vec<&str> = metrics.names().collect();
    assert_eq!(names, ["lp", "leq", "lmax", "lmin", "lpeak", "l10", "l90"]);
    for (name, value) in names.iter().zip(&values) {
        assert_eq!(metrics.get(name), Some(Some(*value)), "{name}");
    }
    let [lp, leq, lmax, lmin, lpeak, l10, l90, _] = values[..] else {
        unreachable!()
    };
    assert!(
        lmax >= leq && leq >= lmin && lmin <= lp && lp <= lmax,
        "{values:?}"
    );
    assert!(lpeak > lmax && l10 >= l90, "{values:?}");

    // The snapshot is frozen until the next MEAS:INIT.
    wire.send(b"meas:slm:123? las\n").await;
    assert_eq!(number(xl2_value(&wire.line().await)), Some(lp));
    next_reading(&mut events).await;

    // Errors answer nothing and queue codes.
    wire.send(b"BOGUS:CMD\nMEAS:SLM:123? LAEQ NOPE\nSYSTem:ERRor?\n")
        .await;
    assert_eq!(wire.line().await, "-113,-108");
    wire.send(b"SYST:ERRO?\n").await;
    assert_eq!(wire.line().await, "0");

    // Stop and start: a new measurement starts with dashes.
    wire.send(b"INIT STOP\nINIT:STAT?\n").await;
    assert_eq!(wire.line().await, "STOPPED");
    wire.send(b"INIT START\nMEAS:INIT\nMEAS:SLM:123? LAEQ LAS\n")
        .await;
    assert_eq!(wire.line().await, "-.- dB, OK");
    assert!(number(xl2_value(&wire.line().await)).is_some());
    let (_, metrics, _) = next_reading(&mut events).await;
    assert_eq!(metrics.get("leq"), Some(None));
    sim.stop().await;
}

#[tokio::test]
async fn xl2_on_a_pty_with_one_line_answers_and_a_decimal_comma() {
    let sim = PtySim::start(
        SimConfig {
            xl2_one_line: true,
            decimal_comma: true,
            ..config(Family::Xl2)
        },
        None,
    );
    let mut events = sim.sim.events();
    let mut wire = sim.open();
    let started = Instant::now();
    loop {
        wire.send(b"MEAS:INIT\r\nMEAS:SLM:123? LAS LAEQ L50%\r\n")
            .await;
        let line = wire.line().await;
        let items: Vec<&str> = line.split(", ").collect();
        assert_eq!(items.len(), 6, "{line}");
        assert!(
            items.iter().skip(1).step_by(2).all(|s| *s == "OK"),
            "{line}"
        );
        let texts: Vec<&str> = items
            .iter()
            .step_by(2)
            .map(|i| i.strip_suffix(" dB").expect("dB"))
            .collect();
        let (_, metrics, _) = next_reading(&mut events).await;
        for (name, text) in ["lp", "leq", "l50"].iter().zip(&texts) {
            assert_eq!(metrics.get(name), Some(number(text)), "{name} in {line}");
        }
        if texts[1] != "-.-" {
            assert!(
                texts.iter().all(|t| t.contains(',') && !t.contains('.')),
                "{line}"
            );
            break;
        }
        assert!(started.elapsed() < DEADLINE, "no Leq in time");
        tokio::time::sleep(POLL).await;
    }
    sim.stop().await;
}

/// The tagged values of a `#2` answer, in order: tag and text.
fn svantek_fields(frame: &str) -> Vec<(String, String)> {
    let body = frame
        .strip_prefix("#2,1,")
        .and_then(|b| b.strip_suffix(';'))
        .unwrap_or_else(|| panic!("not a #2 answer: {frame}"));
    body.split(',')
        .map(|field| {
            let split = if field.starts_with("L(") {
                field.find(')').expect("L(nn)") + 1
            } else {
                1
            };
            (field[..split].to_owned(), field[split..].to_owned())
        })
        .collect()
}

/// The record metric of a Svantek tag (none for T, V, v, s).
fn svantek_metric(tag: &str) -> Option<String> {
    Some(match tag {
        "S" => "lp".into(),
        "R" => "leq".into(),
        "M" => "lmax".into(),
        "N" => "lmin".into(),
        "P" => "lpeak".into(),
        "U" => "le".into(),
        _ => format!("l{}", tag.strip_prefix("L(")?.strip_suffix(')')?),
    })
}

#[tokio::test]
async fn svantek_session_over_tcp_matches_the_reading_events() {
    let sim = TcpSim::start(config(Family::Svantek)).await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;

    wire.send(b"#1,U?;").await;
    assert_eq!(wire.frame().await, "#1,U971;");
    // CR LF between frames is tolerated.
    wire.send(b"#1,N?;\r\n#1,W?;\r\n").await;
    let serial = SimConfig::default().seed % 100_000;
    assert_eq!(wire.frame().await, format!("#1,N{serial:05};"));
    assert_eq!(wire.frame().await, "#1,W1.12.3;");

    let started = Instant::now();
    let fields = loop {
        wire.send(b"#2,s;").await;
        let frame = wire.frame().await;
        let fields = svantek_fields(&frame);
        let (family, metrics, time) = next_reading(&mut events).await;
        assert_eq!((family, time), (Family::Svantek, None));
        let mut names = Vec::new();
        for (tag, text) in &fields {
            let Some(name) = svantek_metric(tag) else {
                continue;
            };
            if text != "?" {
                assert_eq!(text.split('.').nth(1).map(str::len), Some(2), "{frame}");
            }
            assert_eq!(metrics.get(&name), Some(number(text)), "{tag} in {frame}");
            names.push(name);
        }
        assert_eq!(
            names,
            ["lp", "leq", "lmax", "lmin", "lpeak", "le", "l10", "l90"]
        );
        assert_eq!(
            fields.last().map(|(t, v)| (t.as_str(), v.as_str())),
            Some(("s", "1"))
        );
        if fields.iter().any(|(t, v)| t == "R" && v != "?") {
            break fields;
        }
        assert!(started.elapsed() < DEADLINE, "no Leq in time");
        tokio::time::sleep(POLL).await;
    };
    let get = |tag: &str| {
        fields
            .iter()
            .find(|(t, _)| t == tag)
            .and_then(|(_, v)| number(v))
            .unwrap_or_else(|| panic!("{tag}"))
    };
    assert!(get("M") >= get("R") && get("R") >= get("N") && get("P") > get("M"));
    assert!(get("L(10)") >= get("L(90)") && get("U") >= get("R"));
    assert_eq!(
        (get("V"), get("v")),
        (0.0, 0.0),
        "no overload in a quiet walk"
    );
    sim.stop().await;
}

#[tokio::test]
async fn svantek_on_a_pty_starts_from_no_results() {
    let sim = PtySim::start(
        SimConfig {
            start_measuring: false,
            ..config(Family::Svantek)
        },
        None,
    );
    let mut events = sim.sim.events();
    let mut wire = sim.open();
    let serial = SimConfig::default().seed % 100_000;
    wire.send(b"#1;").await;
    assert_eq!(
        wire.frame().await,
        format!("#1,U971,N{serial:05},W1.12.3,S0;")
    );
    wire.send(b"#2;").await;
    assert_eq!(wire.frame().await, "#2,?;");
    // Start (guessed code), then at once: values not available yet.
    wire.send(b"#1,S1;#2,i,s;").await;
    let frame = wire.frame().await;
    assert!(frame.starts_with("#2,1,T0,V0,v0,S"), "{frame}");
    assert!(
        frame.ends_with(",R?,M?,N?,P?,U?,L(10)?,L(90)?,s1;"),
        "{frame}"
    );
    let (_, metrics, _) = next_reading(&mut events).await;
    assert!(metrics.get("lp").is_some_and(|v| v.is_some()));
    assert_eq!(metrics.get("leq"), Some(None));
    // `#2,?;` is not a reading: the stats count exactly one.
    assert_eq!(sim.sim.stats().readings, 1);
    sim.stop().await;
}

/// A Casella group: `(tag, date, time, value)` per broad-band line, and the
/// octave line.
fn casella_group(text: &str) -> (Vec<(String, String, String, String)>, String) {
    assert!(text.ends_with("\r\n"), "{text:?}");
    let mut lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let octave = lines.pop().expect("octave line").to_owned();
    let broad = lines
        .iter()
        .map(|line| {
            let parts: Vec<&str> = line.split(", ").collect();
            assert_eq!(parts.len(), 4, "{line}");
            let tag = parts[0]
                .strip_prefix('<')
                .and_then(|t| t.strip_suffix('>'))
                .expect("<tag>");
            (
                tag.to_owned(),
                parts[1].to_owned(),
                parts[2].to_owned(),
                parts[3].to_owned(),
            )
        })
        .collect();
    (broad, octave)
}

/// Checks a group against its reading event; returns the lines' time.
fn check_casella(
    text: &str,
    metrics: &slmd_hil::Metrics,
    device_time: Option<&str>,
    offset: i64,
) -> i64 {
    let (broad, octave) = casella_group(text);
    let tags: Vec<&str> = broad.iter().map(|(t, ..)| t.as_str()).collect();
    assert_eq!(tags, ["LAeq", "LAFmax", "LAFmin", "LAF", "LCpeak"]);
    let (date, time) = (&broad[0].1, &broad[0].2);
    assert!(
        broad.iter().all(|(_, d, t, _)| d == date && t == time),
        "{text}"
    );
    assert!(
        octave.starts_with(&format!("<1/1 OCT LCeq>, {date}, {time}, 16Hz, ")),
        "{octave}"
    );
    for ((_, _, _, value), name) in broad.iter().zip(["leq", "lmax", "lmin", "lp", "lpeak"]) {
        assert_eq!(metrics.get(name), Some(number(value)), "{name} in {text}");
        assert!(
            value.split('.').nth(1).is_some_and(|d| d.len() == 1),
            "{value}"
        );
    }
    let v = |name| metrics.get(name).flatten().expect("value");
    assert!(v("lmax") >= v("leq") && v("leq") >= v("lmin") && v("lpeak") > v("lmax"));
    let local =
        chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S")
            .expect("date and time")
            .and_utc()
            .timestamp();
    let utc = chrono::DateTime::from_timestamp(local - offset, 0).expect("time");
    assert_eq!(
        device_time,
        Some(utc.format("%Y-%m-%dT%H:%M:%SZ").to_string().as_str())
    );
    local
}

#[tokio::test]
async fn casella_pushes_groups_over_tcp_and_ignores_input() {
    let offset = 3600;
    let sim = TcpSim::start(SimConfig {
        clock_offset_secs: offset,
        ..config(Family::Casella)
    })
    .await;
    let mut events = sim.sim.events();
    let mut wire = tcp(&sim).await;
    wire.send(b"*IDN?\r\nhello\r\n").await;
    let mut times = Vec::new();
    for _ in 0..2 {
        let (before, text) = probe(&mut wire, Family::Casella).await;
        assert!(before.is_empty(), "{before:?}");
        let (family, metrics, time) = next_reading(&mut events).await;
        assert_eq!(family, Family::Casella);
        times.push(check_casella(&text, &metrics, time.as_deref(), offset));
    }
    assert!(times[1] > times[0], "{times:?}");
    let now_local = chrono::Utc::now().timestamp() + offset;
    assert!((now_local - times[1]).abs() <= 2, "meter-local time");
    eventually("input counted", || sim.sim.stats().ignored_bytes == 14).await;
    assert_eq!(sim.sim.stats().commands, 0);
    sim.stop().await;
}

#[tokio::test]
async fn casella_on_a_pty_every_period() {
    let sim = PtySim::start(
        SimConfig {
            log_period: Duration::from_secs(2),
            ..config(Family::Casella)
        },
        None,
    );
    let mut events = sim.sim.events();
    let mut wire = sim.open();
    let (_, first) = probe(&mut wire, Family::Casella).await;
    let (_, m1, t1) = next_reading(&mut events).await;
    let a = check_casella(&first, &m1, t1.as_deref(), 0);
    let at = Instant::now();
    let (_, second) = probe(&mut wire, Family::Casella).await;
    let gap = at.elapsed();
    let (_, m2, t2) = next_reading(&mut events).await;
    let b = check_casella(&second, &m2, t2.as_deref(), 0);
    assert!(b - a >= 1, "{a} {b}");
    assert!(gap >= Duration::from_millis(1500), "{gap:?}");
    sim.stop().await;
}
