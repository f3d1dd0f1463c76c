//! The real `slm-sim` binary: its JSON event stream, a conversation over
//! TCP, and a clean exit with the stats line.

mod common;

use common::{Client, DEADLINE, assert_invariants};
use firmware_bridge::nl43::ResultCode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn slm_sim() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_slm-sim"));
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The next stdout line as JSON.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<Value> {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line from slm-sim in time")
        .expect("read stdout")?;
    Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
}

/// Every remaining stdout line until the process closes it.
async fn rest(lines: &mut Lines<BufReader<ChildStdout>>) -> Vec<Value> {
    let mut all = Vec::new();
    while let Some(value) = next_json(lines).await {
        all.push(value);
    }
    all
}

/// The main channel's Lp of a `DOD?` line, as written.
fn reading_lp(line: &str) -> Option<f64> {
    firmware_bridge::nl43::DodReading::parse(line.as_bytes())
        .ok()
        .and_then(|r| r.main().lp)
        .map(|lp| lp.db())
}

fn spawn(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command.spawn().expect("spawn slm-sim");
    let stdout = child.stdout.take().expect("stdout piped");
    (child, BufReader::new(stdout).lines())
}

/// The address in the first stdout line, the `listening` one.
async fn listening_addr(lines: &mut Lines<BufReader<ChildStdout>>) -> SocketAddr {
    let listening = next_json(lines).await.expect("listening line");
    assert_eq!(listening["event"], "listening", "{listening}");
    listening["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad addr: {listening}"))
}

/// The process id of a running `child`.
fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"))
}

/// Waits for `child` to exit successfully in time; then every remaining
/// stdout line.
async fn exits_cleanly(child: &mut Child, lines: &mut Lines<BufReader<ChildStdout>>) -> Vec<Value> {
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    rest(lines).await
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

#[tokio::test]
async fn slm_sim_serves_tcp_and_stops_on_sigterm() {
    let (mut child, mut lines) = spawn(slm_sim().args(["--listen", "127.0.0.1:0", "--seed", "42"]));
    let addr = listening_addr(&mut lines).await;
    assert_ne!(addr.port(), 0, "the real bound port");

    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut client = Client::new(stream);
    let (line, reading) = client.dod().await;
    assert_invariants(&reading, &line);
    assert_eq!(client.ask("Nonsense?").await.0, ResultCode::CommandError);

    // Events arrive in order: connected, R+0000, the DOD line, R+0001.
    let connected = next_json(&mut lines).await.expect("event");
    assert_eq!(
        connected,
        serde_json::json!({"event": "connected", "total": 1})
    );
    let result = next_json(&mut lines).await.expect("event");
    assert_eq!(
        result,
        serde_json::json!({"event": "result", "command": "DOD?", "code": "R+0000"})
    );
    let dod = next_json(&mut lines).await.expect("event");
    assert_eq!(
        dod,
        serde_json::json!({"event": "dod", "n": 1, "line": line, "replayed": false})
    );
    // Then the family-neutral reading of the same line.
    let reading = next_json(&mut lines).await.expect("event");
    assert_eq!(reading["event"], "reading", "{reading}");
    assert_eq!(
        (
            &reading["family"],
            &reading["n"],
            &reading["replayed"],
            &reading["device_time"]
        ),
        (
            &"nl43".into(),
            &1.into(),
            &false.into(),
            &serde_json::Value::Null
        ),
        "{reading}"
    );
    let names: Vec<&str> = reading["metrics"]
        .as_object()
        .expect("metrics")
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "lp", "leq", "le", "lmax", "lmin", "l5", "l10", "l50", "l90", "l95", "lpeak",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected, "{reading}");
    let lp = reading["metrics"]["lp"].as_f64().expect("lp");
    assert_eq!(Some(lp), reading_lp(&line), "{reading} vs {line}");
    let error = next_json(&mut lines).await.expect("event");
    assert_eq!(error["code"], "R+0001", "{error}");

    kill(pid(&child), Signal::SIGTERM).expect("SIGTERM");
    let tail = exits_cleanly(&mut child, &mut lines).await;
    let stats = tail.last().expect("a stats line");
    assert_eq!(stats["event"], "stats", "{tail:?}");
    assert_eq!(stats["connections_accepted"], 1, "{stats}");
    assert_eq!(stats["dod_answers"], 1, "{stats}");
    assert_eq!(stats["commands"], 2, "{stats}");
    assert_eq!(stats["busy_answers"], 0, "{stats}");
    assert!(
        tail.iter().any(|e| e["event"] == "disconnected"),
        "{tail:?}"
    );
}

#[tokio::test]
async fn slm_sim_exits_on_stdin_eof_when_asked() {
    let mut command = slm_sim();
    command
        .args(["--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
        .stdin(Stdio::piped());
    let (mut child, mut lines) = spawn(&mut command);
    assert_eq!(
        next_json(&mut lines).await.expect("listening")["event"],
        "listening"
    );
    drop(child.stdin.take());
    let tail = exits_cleanly(&mut child, &mut lines).await;
    assert_eq!(
        tail.last().map(|s| s["event"].clone()),
        Some("stats".into()),
        "{tail:?}"
    );
}

#[tokio::test]
async fn slm_sim_on_a_pty_prints_its_path_and_stops_on_sigint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let link = dir.path().join("nl43");
    let link_arg = link.to_str().expect("utf-8 temp path");
    let (mut child, mut lines) = spawn(slm_sim().args(["--pty", "--link", link_arg, "--prompts"]));
    let pty = next_json(&mut lines).await.expect("pty line");
    assert_eq!(pty["event"], "pty", "{pty}");
    assert_eq!(pty["link"], link_arg, "{pty}");
    let tty = pty["path"].as_str().expect("path").to_owned();
    assert_eq!(
        std::fs::read_link(&link).expect("link").to_str(),
        Some(tty.as_str())
    );

    let mut client = Client::new(common::PtyClient::open(&link).expect("open the link"));
    assert_eq!(client.ask("Type?").await.1.as_deref(), Some("NL-43"));

    kill(pid(&child), Signal::SIGINT).expect("SIGINT");
    let tail = exits_cleanly(&mut child, &mut lines).await;
    assert_eq!(
        tail.last().map(|s| s["event"].clone()),
        Some("stats".into()),
        "{tail:?}"
    );
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed on exit"
    );
}

#[tokio::test]
async fn slm_sim_family_svantek_prints_reading_events() {
    let (mut child, mut lines) = spawn(slm_sim().args([
        "--listen",
        "127.0.0.1:0",
        "--family",
        "svantek",
        "--seed",
        "7",
    ]));
    let addr = listening_addr(&mut lines).await;
    let mut wire =
        common::family::Wire::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    wire.send(b"#1,N?;#2,s;").await;
    assert_eq!(wire.frame().await, "#1,N00007;");
    let frame = wire.frame().await;
    assert!(frame.starts_with("#2,1,T"), "{frame}");
    let reading = next_event(&mut lines, "reading").await;
    assert_eq!(reading["family"], "svantek", "{reading}");
    assert_eq!(reading["n"], 1, "{reading}");
    let lp = frame
        .split(',')
        .find_map(|f| f.strip_prefix('S'))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(
        reading["metrics"]["lp"].as_f64(),
        lp,
        "{reading} vs {frame}"
    );

    kill(pid(&child), Signal::SIGTERM).expect("SIGTERM");
    let tail = exits_cleanly(&mut child, &mut lines).await;
    let stats = tail.last().expect("a stats line");
    assert_eq!(stats["readings"], 1, "{stats}");
    assert_eq!(stats["commands"], 2, "{stats}");
}

#[tokio::test]
async fn slm_sim_refuses_options_of_another_family() {
    let status = slm_sim()
        .args(["--listen", "127.0.0.1:0", "--family", "casella", "--echo"])
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run slm-sim");
    assert_eq!(status.code(), Some(2), "clap usage error");
}

#[tokio::test]
async fn slm_sim_rejects_a_bad_command_line() {
    let status = slm_sim()
        .args(["--listen", "127.0.0.1:0", "--junk", "1.5"])
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run slm-sim");
    assert_eq!(status.code(), Some(2), "clap usage error");
}

#[tokio::test]
async fn slm_sim_power_cycles_on_sigusr1_and_wakes_on_sigusr2() {
    let (mut child, mut lines) = spawn(slm_sim().args([
        "--listen",
        "127.0.0.1:0",
        "--power-cycle-asleep",
        "--sleep-after",
        "1s",
    ]));
    let addr = listening_addr(&mut lines).await;
    let pid = pid(&child);

    let mut client = Client::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    assert_eq!(
        client.ask("Measure?").await,
        (ResultCode::Ok, Some("Start".into()))
    );

    kill(pid, Signal::SIGUSR1).expect("SIGUSR1");
    assert_eq!(
        next_event(&mut lines, "power_cycle").await,
        serde_json::json!({"event": "power_cycle", "family": "nl43", "asleep": true})
    );
    assert_eq!(
        client.try_line(DEADLINE).await,
        None,
        "the link was dropped"
    );
    // Back with sleep mode On: asleep a second after the power came back.
    next_event(&mut lines, "asleep").await;
    kill(pid, Signal::SIGUSR2).expect("SIGUSR2");
    next_event(&mut lines, "awake").await;

    // Within a second of the wake, sleep mode off (stopped: allowed).
    let mut client = Client::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    assert_eq!(client.ask("Sleep Mode,Off").await.0, ResultCode::Ok);
    assert_eq!(
        client.ask("Measure?").await,
        (ResultCode::Ok, Some("Stop".into()))
    );
    assert_eq!(client.ask("Measure,Start").await.0, ResultCode::Ok);
    assert_eq!(
        next_event(&mut lines, "measure").await,
        serde_json::json!({"event": "measure", "family": "nl43", "running": true})
    );

    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let tail = exits_cleanly(&mut child, &mut lines).await;
    let stats = tail.last().expect("a stats line");
    assert_eq!(stats["event"], "stats", "{tail:?}");
    assert_eq!(
        (&stats["power_cycles"], &stats["clock_sets"]),
        (&1.into(), &0.into()),
        "{stats}"
    );
}

#[tokio::test]
async fn slm_sim_prints_clock_sets_with_the_drift_they_corrected() {
    let (mut child, mut lines) = spawn(slm_sim().args([
        "--listen",
        "127.0.0.1:0",
        "--stopped",
        "--clock-offset",
        "-30",
        "--clock-drift-ppm",
        "200000",
    ]));
    let addr = listening_addr(&mut lines).await;
    let mut client = Client::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let now = chrono::Utc::now().timestamp();
    let clock = firmware_bridge::nl43::MeterClock::from_local_epoch_seconds(now).expect("clock");
    assert_eq!(
        client.ask(&format!("Clock,{clock}")).await.0,
        ResultCode::Ok
    );
    let set = next_event(&mut lines, "clock_set").await;
    assert_eq!(set["family"], "nl43", "{set}");
    let before = set["offset_before_s"].as_f64().expect("a number");
    let after = set["offset_after_s"].as_f64().expect("a number");
    // 30 s behind at power-up, gaining since (a fraction of a second here).
    assert!((-30.0..-27.0).contains(&before), "{set}");
    assert!((-1.5..=0.5).contains(&after), "{set}");

    kill(pid(&child), Signal::SIGTERM).expect("SIGTERM");
    let tail = exits_cleanly(&mut child, &mut lines).await;
    let stats = tail.last().expect("a stats line");
    assert_eq!(
        (&stats["power_cycles"], &stats["clock_sets"]),
        (&0.into(), &1.into()),
        "{stats}"
    );
}
