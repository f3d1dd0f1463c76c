//! `systemd/slmd.service` as systemd itself reads it: `systemd-analyze
//! verify` accepts it, and `systemd-analyze security` rates its sandbox at
//! an exposure of 2.5 or less. Both run offline, without systemd as PID 1.
//!
//! They need `systemd-analyze`, so they are `#[ignore]`d in a plain
//! `cargo test`; `.ci/run` installs it and runs them (`--
//! --include-ignored`). Without it they fail, naming it.

use slmd_e2e::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The highest exposure we accept (systemd's scale: 0 safe … 10 exposed).
const MAX_EXPOSURE: f64 = 2.5;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("systemd")
        .join("slmd.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_path()).expect("systemd/slmd.service")
}

/// `systemd-analyze`; the test fails when it is not installed.
fn analyze() -> PathBuf {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "this test needs systemd-analyze (package systemd; .ci/run installs it), \
                 which is not installed"
            )
        })
}

/// The unit with `ExecStart=` pointing at the freshly built binary (verify
/// checks that the program exists), in a temporary folder.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let slmd = bin("slmd");
    let text = unit_text().replace(
        "ExecStart=/usr/bin/slmd ",
        &format!("ExecStart={} ", slmd.display()),
    );
    assert!(text.contains(&format!("ExecStart={} run", slmd.display())));
    let path = dir.join("slmd.service");
    std::fs::write(&path, text).expect("write unit copy");
    path
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run installs it"]
fn systemd_analyze_verify_accepts_the_unit() {
    let tool = analyze();
    let dir = tempfile::tempdir().expect("temp dir");
    let unit = unit_with_built_binary(dir.path());
    // --man=no: the man page is installed by the package, not on this host.
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("slmd.service"))
        .collect();
    assert!(complaints.is_empty(), "verify complains: {complaints:#?}");
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run installs it"]
fn the_sandbox_exposure_is_at_most_two_and_a_half() {
    let tool = analyze();
    let out = Command::new(&tool)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for slmd.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: overall exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
    // The same limit as systemd's own gate (threshold in tenths).
    let gate = Command::new(&tool)
        .args(["security", "--offline=true", "--threshold=25", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("run systemd-analyze security --threshold");
    assert!(gate.status.success(), "--threshold=25 refused the unit");
}

#[test]
fn the_unit_keeps_what_the_daemon_and_the_package_rely_on() {
    let text = unit_text();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for wanted in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/bin/slmd run --config /etc/slmd/slmd.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "User=slmd",
        "Group=slmd",
        "SupplementaryGroups=dialout",
        "StateDirectory=slmd",
        "StateDirectoryMode=0750",
        "ConfigurationDirectory=slmd",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyS rw",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-ttyAMA rw",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "ProtectSystem=strict",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            lines.contains(&wanted),
            "systemd/slmd.service lacks {wanted}"
        );
    }
}
