//! `Type=notify` as systemd sees it: the test plays the service manager.
//! It binds a `NOTIFY_SOCKET` of its own, starts the real `slmd run` with
//! that socket and a watchdog in its environment, and reads what arrives:
//! `READY=1` only once the buffer is open and the API answers, `WATCHDOG=1`
//! every half period from the main loop, a `STATUS=` line saying how many
//! meters are up, `RELOADING=1` … `READY=1` around `SIGHUP`, and
//! `STOPPING=1` on `SIGTERM`.

use nix::sys::signal::Signal;
use slmd_e2e::api::free_port;
use slmd_e2e::fleet::http;
use slmd_e2e::{Feed, Proc, START_TIMEOUT, Sim, bin, tcp_devices};
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `WATCHDOG_USEC` given to the daemon: 2 s, so a ping every second.
const WATCHDOG_USEC: &str = "2000000";

/// Reads datagrams as a byte stream: every notification ends in `\n`, so
/// [`Feed`] sees one line per assignment (`READY=1`, `STATUS=…`).
struct Datagrams(UnixDatagram);

impl Read for Datagrams {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.recv(buf)?;
        if n == 0 {
            // An empty datagram is not the end of the stream.
            return self.read(buf);
        }
        Ok(n)
    }
}

/// A notification socket in `dir`, followed line by line.
fn notify_socket(dir: &Path) -> (std::path::PathBuf, Feed) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    (path, Feed::follow(Datagrams(socket)))
}

/// `slmd run` on `config`, told to notify `socket` and to ping a 2 s
/// watchdog (no `WATCHDOG_PID`: the variable applies to the process that
/// reads it, as sd_watchdog_enabled(3) says).
fn start_daemon(config: &Path, socket: &Path) -> Proc {
    let mut cmd = Command::new(bin("slmd"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "slmd=debug,info")
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM");
    Proc::spawn(cmd)
}

/// A config with the API on a port known before start, so the test can
/// ask it the moment `READY=1` arrives (not after reading the log).
fn write_config(dir: &Path, api_port: u16, devices: &str) -> std::path::PathBuf {
    let path = dir.join("slmd.toml");
    let text = format!(
        "[gateway]\nid = \"gw-notify\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n{devices}",
        dir.join("state").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn wait_line(feed: &Feed, from: usize, timeout: Duration, what: &str, daemon: &Proc) -> usize {
    match feed.wait_from(from, timeout, |l| l.starts_with(what)) {
        Some((i, _)) => i,
        None => panic!(
            "no {what} after notification {from} within {timeout:?}; got {:?}\n{}",
            feed.lines(),
            daemon.transcript()
        ),
    }
}

#[test]
fn systemd_sees_ready_after_the_api_answers_then_watchdog_status_reload_and_stop() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, notes) = notify_socket(dir.path());
    let sim = Sim::tcp(&["--seed", "5"]);
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let config = write_config(dir.path(), port, &tcp_devices(std::slice::from_ref(&sim)));
    let mut daemon = start_daemon(&config, &socket);

    // READY=1, and at that moment the buffer exists and the API answers.
    let ready = wait_line(&notes, 0, START_TIMEOUT, "READY=1", &daemon);
    let asked = Instant::now();
    let status = http(&api, "GET", "/v1/status", &[], b"")
        .unwrap_or_else(|e| panic!("the API does not answer right after READY=1: {e}"));
    assert_eq!(status.status, 200, "{}", status.body);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "answered at once, not after a wait: {:?}",
        asked.elapsed()
    );
    assert!(
        dir.path().join("state").join("buffer.sqlite").exists(),
        "READY=1 only once the buffer is open"
    );
    assert!(
        !notes.lines()[..ready]
            .iter()
            .any(|l| l.starts_with("WATCHDOG=1")),
        "no watchdog ping before READY=1: {:?}",
        notes.lines()
    );

    // Watchdog pings every ~1 s (half of 2 s): at least three in 10 s.
    let start = Instant::now();
    let mut from = ready + 1;
    for n in 0..3 {
        let i = wait_line(&notes, from, Duration::from_secs(10), "WATCHDOG=1", &daemon);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ping {n} too late: {:?}",
            start.elapsed()
        );
        from = i + 1;
    }

    // STATUS= says the meter is up once it answers.
    let (_, line) = notes
        .wait_from(ready, Duration::from_secs(60), |l| {
            l.starts_with("STATUS=1/1 meters up")
        })
        .unwrap_or_else(|| {
            panic!(
                "no STATUS=1/1 meters up: {:?}\n{}",
                notes.lines(),
                daemon.transcript()
            )
        });
    assert_eq!(line, "STATUS=1/1 meters up · fleet off", "{line}");

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    let before = notes.lines().len();
    daemon.signal(Signal::SIGHUP);
    let reloading = wait_line(&notes, before, START_TIMEOUT, "RELOADING=1", &daemon);
    // The message's next line may reach the feed a moment after this one.
    let _ = notes.wait_from(reloading + 1, START_TIMEOUT, |_| true);
    let lines = notes.lines();
    let usec = lines
        .get(reloading + 1)
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        usec.is_some_and(|u| u > 0),
        "MONOTONIC_USEC= follows RELOADING=1 in the same message: {lines:?}"
    );
    wait_line(&notes, reloading + 1, START_TIMEOUT, "READY=1", &daemon);
    // Pings go on after a reload.
    let after = notes.lines().len();
    wait_line(&notes, after, Duration::from_secs(5), "WATCHDOG=1", &daemon);

    // SIGTERM: STOPPING=1, and a clean exit.
    let before = notes.lines().len();
    daemon.signal(Signal::SIGTERM);
    let stopping = wait_line(&notes, before, START_TIMEOUT, "STOPPING=1", &daemon);
    let exit = daemon.wait(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "clean exit: {exit:?}\n{}",
        daemon.transcript()
    );
    let lines = notes.lines();
    assert!(
        !lines[stopping..].iter().any(|l| l == "WATCHDOG=1"),
        "no pings after STOPPING=1: {lines:?}"
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (socket, notes) = notify_socket(dir.path());
    let config = write_config(dir.path(), free_port(), "");
    let mut cmd = Command::new(bin("slmd"));
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", WATCHDOG_USEC)
        // PID 1 is never this daemon.
        .env("WATCHDOG_PID", "1")
        .env_remove("JOURNAL_STREAM");
    let mut daemon = Proc::spawn(cmd);
    let ready = wait_line(&notes, 0, START_TIMEOUT, "READY=1", &daemon);
    // The status line arrives on the first tick, with or without a watchdog.
    let (_, status) = notes
        .wait_from(ready, START_TIMEOUT, |l| l.starts_with("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS=: {:?}", notes.lines()));
    assert_eq!(status, "STATUS=no meters configured · fleet off");
    daemon.signal(Signal::SIGTERM);
    wait_line(&notes, ready, START_TIMEOUT, "STOPPING=1", &daemon);
    daemon.wait(Duration::from_secs(20));
    assert!(
        !notes.lines().iter().any(|l| l == "WATCHDOG=1"),
        "{:?}",
        notes.lines()
    );
}
