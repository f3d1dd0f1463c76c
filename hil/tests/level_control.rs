//! Driving the simulated meter loud and quiet while it runs: the real
//! `slm-sim` binary steered on standard input (`--control-stdin`,
//! `offset <dB>`, `calm on|off`), and a pushing family steered through
//! [`slmd_hil::LevelControl`].

mod common;

use common::family::{Wire, config, next_reading, probe};
use common::{Client, DEADLINE, HOST_DOD_INTERVAL, TcpSim, assert_invariants};
use serde_json::Value;
use slmd_hil::{Family, LevelControl, SimConfig};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The next stdout line as JSON (`None` at end of file).
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<Value> {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line from slm-sim in time")
        .expect("read stdout")?;
    Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
}

/// The next stdout event named `name` (others are skipped).
async fn next_event(lines: &mut Lines<BufReader<ChildStdout>>, name: &str) -> Value {
    loop {
        let event = next_json(lines)
            .await
            .unwrap_or_else(|| panic!("stdout closed before a {name} event"));
        if event["event"] == name {
            return event;
        }
    }
}

/// Writes one control line.
async fn control(stdin: &mut ChildStdin, line: &str) {
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .expect("write a control line");
    stdin.flush().await.expect("flush stdin");
}

/// `n` `DOD?` answers: their Lp and Lmax (dashes in the first second of
/// the measurement), dB.
async fn dod_levels<S>(client: &mut Client<S>, n: usize) -> Vec<(f64, Option<f64>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut levels = Vec::new();
    for _ in 0..n {
        // The protocol's 1 s between polls (the client asks nothing else).
        if let Some(at) = client.last_answer {
            tokio::time::sleep_until(at + HOST_DOD_INTERVAL).await;
        }
        let (line, reading) = client.dod().await;
        assert_invariants(&reading, &line);
        let main = reading.main();
        let lp = main.lp.map(|d| d.db()).expect(&line);
        levels.push((lp, main.lmax.map(|d| d.db())));
    }
    levels
}

fn spawn(args: &[&str]) -> (Child, ChildStdin, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slm-sim"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn slm-sim");
    let stdin = child.stdin.take().expect("stdin piped");
    let stdout = child.stdout.take().expect("stdout piped");
    (child, stdin, BufReader::new(stdout).lines())
}

#[tokio::test]
async fn offset_on_stdin_drives_dod_levels_loud_and_quiet_again() {
    let (mut child, mut stdin, mut lines) = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "3",
        "--calm",
        "--control-stdin",
        "--exit-on-stdin-eof",
    ]);
    let listening = next_json(&mut lines).await.expect("listening line");
    assert_eq!(listening["event"], "listening", "{listening}");
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    let mut client = Client::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));

    // Calm at offset 0: near 55 dB.
    for (lp, _) in dod_levels(&mut client, 2).await {
        assert!(lp < 62.0, "quiet Lp {lp}");
    }

    // A truck parks next to the meter: every answer after the event is loud.
    control(&mut stdin, "offset 30").await;
    let event = next_event(&mut lines, "offset").await;
    assert_eq!(event, serde_json::json!({"event": "offset", "db": 30.0}));
    for (lp, lmax) in dod_levels(&mut client, 3).await {
        assert!(lp >= 75.0, "loud Lp {lp}");
        assert!(lmax.is_some_and(|max| max >= lp), "Lmax {lmax:?}, Lp {lp}");
    }

    // It leaves: quiet again from the next answer on.
    control(&mut stdin, "offset 0").await;
    let event = next_event(&mut lines, "offset").await;
    assert_eq!(event, serde_json::json!({"event": "offset", "db": 0.0}));
    for (lp, _) in dod_levels(&mut client, 3).await {
        assert!(lp < 65.0, "quiet again Lp {lp}");
    }

    // Bad lines are announced and change nothing; calm can be turned off.
    control(&mut stdin, "offset loud").await;
    let error = next_event(&mut lines, "control_error").await;
    assert_eq!(error["line"], "offset loud", "{error}");
    assert!(
        error["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{error}"
    );
    control(&mut stdin, "calm off").await;
    let calm = next_event(&mut lines, "calm").await;
    assert_eq!(calm, serde_json::json!({"event": "calm", "on": false}));

    // With --exit-on-stdin-eof too, the end of stdin still stops it cleanly.
    drop(stdin);
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    let mut last = None;
    while let Some(value) = next_json(&mut lines).await {
        last = Some(value);
    }
    assert_eq!(last.map(|v| v["event"].clone()), Some("stats".into()));
}

#[tokio::test]
async fn a_start_offset_and_a_run_time_one_reach_a_pushing_family() {
    let levels = LevelControl::new(30.0, true);
    let sim = TcpSim::start(SimConfig {
        levels: levels.clone(),
        ..config(Family::Casella)
    })
    .await;
    let mut events = sim.sim.events();
    let mut wire = Wire::new(
        tokio::net::TcpStream::connect(sim.addr)
            .await
            .expect("connect"),
    );
    let metric = |m: &slmd_hil::Metrics, name: &str| m.get(name).flatten().expect(name);
    for _ in 0..2 {
        probe(&mut wire, Family::Casella).await;
        let (_, metrics, _) = next_reading(&mut events).await;
        let leq = metric(&metrics, "leq");
        assert!(leq >= 75.0, "loud from the start: {leq}");
    }
    levels.set_offset_db(0.0);
    // A group pushed just before the change may still be on its way: skip
    // one. Every group logged after the change is quiet throughout (its
    // samples are generated when it is pushed).
    probe(&mut wire, Family::Casella).await;
    next_reading(&mut events).await;
    for _ in 0..2 {
        probe(&mut wire, Family::Casella).await;
        let (_, metrics, _) = next_reading(&mut events).await;
        let (leq, lmax) = (metric(&metrics, "leq"), metric(&metrics, "lmax"));
        assert!(leq < 62.0 && lmax < 62.0, "quiet: Leq {leq}, Lmax {lmax}");
    }
    sim.stop().await;
}
