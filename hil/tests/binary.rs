//! The real `slm-sim` binary: its JSON event stream, a conversation over
//! TCP, and a clean exit with the stats line.

mod common;

use common::{Client, DEADLINE, assert_invariants};
use firmware_bridge::nl43::ResultCode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
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

fn spawn(command: &mut Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = command.spawn().expect("spawn slm-sim");
    let stdout = child.stdout.take().expect("stdout piped");
    (child, BufReader::new(stdout).lines())
}

#[tokio::test]
async fn slm_sim_serves_tcp_and_stops_on_sigterm() {
    let (mut child, mut lines) = spawn(slm_sim().args(["--listen", "127.0.0.1:0", "--seed", "42"]));
    let listening = next_json(&mut lines).await.expect("listening line");
    assert_eq!(listening["event"], "listening", "{listening}");
    let addr: std::net::SocketAddr = listening["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad addr: {listening}"));
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
    let error = next_json(&mut lines).await.expect("event");
    assert_eq!(error["code"], "R+0001", "{error}");

    let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");

    let tail = rest(&mut lines).await;
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
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    let tail = rest(&mut lines).await;
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

    let pid = Pid::from_raw(i32::try_from(child.id().expect("running")).expect("pid fits"));
    kill(pid, Signal::SIGINT).expect("SIGINT");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    let tail = rest(&mut lines).await;
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
async fn slm_sim_rejects_a_bad_command_line() {
    let status = slm_sim()
        .args(["--listen", "127.0.0.1:0", "--junk", "1.5"])
        .stdout(Stdio::null())
        .status()
        .await
        .expect("run slm-sim");
    assert_eq!(status.code(), Some(2), "clap usage error");
}
