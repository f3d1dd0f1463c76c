//! The binary's edges: a broken config stops `slmd run` with a located
//! message, and `slmd demo` shows live readings with no meter attached.

use slmd_e2e::{Proc, Setup, bin, tcp_device};
use std::process::Command;
use std::time::Duration;

/// Runs `slmd run` on a config and returns (exit code, stderr).
fn run_with(config_text: &str) -> (Option<i32>, String, std::path::PathBuf) {
    let setup = Setup::new();
    let path = setup.path("slmd.toml");
    std::fs::write(&path, config_text).expect("write config");
    let out = Command::new(bin("slmd"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run slmd");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
    )
}

fn assert_located(config_text: &str, line_col: &str, key: &str, expected: &str) {
    let (code, stderr, path) = run_with(config_text);
    assert_eq!(
        code,
        Some(78),
        "config errors exit with EX_CONFIG: {stderr}"
    );
    let location = format!("{}:{line_col}", path.display());
    assert!(stderr.contains(&location), "names {location}: {stderr}");
    assert!(stderr.contains(key), "names key {key}: {stderr}");
    assert!(
        stderr.contains(expected),
        "says what was expected ({expected}): {stderr}"
    );
}

const DEVICE: &str = "[[device]]\nid = \"a\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\n";

#[test]
fn unknown_key_is_located() {
    assert_located(
        &format!("{DEVICE}address = \"127.0.0.1:2255\"\npoll_intervall = \"1s\"\n"),
        "6:1",
        "device[0].poll_intervall",
        "poll_interval",
    );
}

#[test]
fn wrong_type_is_located() {
    assert_located(
        &format!("{DEVICE}address = \"127.0.0.1:2255\"\npoll_interval = 5\n"),
        "6:17",
        "device[0].poll_interval",
        "\"5s\"",
    );
}

#[test]
fn bad_duration_is_located() {
    assert_located(
        &format!("{DEVICE}address = \"127.0.0.1:2255\"\npoll_interval = \"5 parsecs\"\n"),
        "6:17",
        "device[0].poll_interval",
        "ms, s, m, h or d",
    );
}

#[test]
fn missing_device_address_is_located() {
    assert_located(DEVICE, "1:1", "device[0].address", "host:port");
}

#[test]
fn a_good_config_passes_check_without_probing() {
    let setup = Setup::new();
    let config = setup.config(&tcp_device("a", "127.0.0.1:2255", ""));
    let out = Command::new(bin("slmd"))
        .args(["check", "--no-probe", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_shows_live_readings_from_a_meter_of_each_family() {
    let mut cmd = Command::new(bin("slmd"));
    cmd.arg("demo");
    let mut demo = Proc::spawn(cmd);
    let deadline = Duration::from_secs(60);
    for device in ["nl43-tcp", "nl43-stream", "xl2", "svantek", "casella"] {
        demo.stdout
            .wait_from(0, deadline, |l| {
                l.contains(device) && l.contains(" Lp ") && l.contains("measuring")
            })
            .unwrap_or_else(|| panic!("no reading from {device}\n{}", demo.transcript()));
    }
    demo.signal(nix::sys::signal::Signal::SIGINT);
    let status = demo.wait(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "demo exits cleanly on Ctrl-C\n{}",
        demo.transcript()
    );
}
