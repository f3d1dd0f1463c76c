//! What a field tech reads about a meter that keeps failing: a line when it
//! starts, a summary now and then, a line when it is back — never one per
//! try. The real `slmd` retries a meter address nobody listens on for a
//! minute with a short backoff (hundreds of tries), then a meter appears
//! there; the test counts the daemon's log lines about that meter.

use slmd_e2e::api::free_port;
use slmd_e2e::needs::{require_root, require_tools};
use slmd_e2e::{Proc, START_TIMEOUT, bin, tcp_device};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the meter keeps failing: the behaviour under test.
const FAILING_FOR: Duration = Duration::from_secs(60);

/// The summary period, shortened from minutes for the test.
const SUMMARY_EVERY_S: u64 = 5;

const DEVICE: &str = "ghost";

/// `slmd run` with debug logging and the short summary period.
fn start_daemon(config: &Path) -> Proc {
    let mut cmd = Command::new(bin("slmd"));
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "slmd=debug,info")
        .env("SLMD_FAILURE_SUMMARY_EVERY", format!("{SUMMARY_EVERY_S}s"))
        .env_remove("JOURNAL_STREAM");
    Proc::spawn(cmd)
}

/// A loopback port nobody listens on, below the ephemeral range (so no
/// outgoing connection takes it while the test waits to start a meter on
/// it there).
fn quiet_port() -> u16 {
    let start = 21_000 + (std::process::id() % 5_000) as u16;
    (start..29_000)
        .chain(21_000..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// A log line's level (`DEBUG`, `INFO`, `WARN`, `ERROR`): the word after
/// the timestamp.
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

fn about_device(line: &str) -> bool {
    line.split_whitespace()
        .any(|w| w == format!("device={DEVICE}"))
}

/// The value of `key=` in a log line's fields.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

#[test]
fn a_meter_failing_for_a_minute_is_logged_at_start_in_summaries_and_at_the_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = format!("127.0.0.1:{}", quiet_port());
    let device = tcp_device(
        DEVICE,
        &address,
        "reconnect_min = \"100ms\"\nreconnect_max = \"200ms\"",
    );
    let config = dir.path().join("slmd.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-log\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n{device}",
            dir.path().join("state").display()
        ),
    )
    .expect("write config");
    let mut daemon = start_daemon(&config);

    let (first, _) = daemon
        .stderr
        .wait_from(0, START_TIMEOUT, |l| {
            about_device(l) && l.contains("meter_down")
        })
        .unwrap_or_else(|| panic!("no meter_down line\n{}", daemon.transcript()));
    let failing_since = Instant::now();

    // Nobody listens for a minute; the daemon retries every 100–200 ms.
    // This wait is the scenario itself, not a synchronisation.
    std::thread::sleep(FAILING_FOR.saturating_sub(failing_since.elapsed()));

    // A meter appears at the address: the daemon connects and says so.
    let mut sim_cmd = Command::new(bin("slm-sim"));
    sim_cmd.args(["--listen", &address, "--seed", "9"]);
    let sim = Proc::spawn(sim_cmd);
    sim.stdout
        .wait_json(0, START_TIMEOUT, |v| v["event"] == "listening")
        .unwrap_or_else(|| panic!("simulator did not listen\n{}", sim.transcript()));
    let (back, back_line) = daemon
        .stderr
        .wait_from(first, START_TIMEOUT, |l| {
            about_device(l) && l.contains("meter_recovered")
        })
        .unwrap_or_else(|| panic!("no meter_recovered line\n{}", daemon.transcript()));
    daemon.terminate(Duration::from_secs(20));

    let lines = daemon.stderr.lines();
    let episode = &lines[first..=back];
    let visible: Vec<&String> = episode
        .iter()
        .filter(|l| about_device(l) && level(l) != "DEBUG" && level(l) != "TRACE")
        .collect();
    let count = |event: &str| visible.iter().filter(|l| l.contains(event)).count();
    let tries: u64 = field(&back_line, "tries")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tries= in {back_line}"));
    let retried = episode
        .iter()
        .filter(|l| about_device(l) && l.contains("failed again"))
        .count();
    let report = format!(
        "{tries} tries; info-and-above lines:\n{}",
        visible
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Many tries happened (each one at debug level only); how many depends
    // on the jittered backoff and the machine's load, so the bound is loose…
    assert!(tries >= 100, "{report}");
    assert_eq!(
        1 + retried + count("meter_still_failing"),
        usize::try_from(tries).expect("tries fit"),
        "every try is either the first line, a summary or a debug line; {report}"
    );
    // …and the visible log has one line when it started, one per summary
    // period, and one when it ended.
    assert_eq!(count("meter_down"), 1, "{report}");
    assert_eq!(count("meter_recovered"), 1, "{report}");
    let periods = FAILING_FOR.as_secs() / SUMMARY_EVERY_S;
    let summaries = count("meter_still_failing");
    assert!(
        summaries >= (periods / 2) as usize && summaries <= periods as usize + 2,
        "{summaries} summaries for {periods} periods; {report}"
    );
    assert_eq!(
        visible.len(),
        summaries + 2,
        "nothing else about the meter: {report}"
    );
    let summary = visible
        .iter()
        .find(|l| l.contains("meter_still_failing"))
        .expect("a summary");
    assert!(
        summary.contains(&format!("meter {DEVICE} still failing: "))
            && summary.contains(" tries since ")
            && summary.contains("retrying in "),
        "{summary}"
    );
    assert_eq!(level(summary), "WARN", "{summary}");
    assert!(
        back_line.contains(&format!("meter {DEVICE} back after {tries} tries since ")),
        "{back_line}"
    );
    assert_eq!(level(&back_line), "INFO", "{back_line}");
}

// ---------------------------------------------------------------------------
// Under systemd: the journal. The daemon runs in a private mount namespace
// whose /run/systemd/journal/socket is the test's own datagram socket, with
// JOURNAL_STREAM naming its stderr, exactly as systemd starts it.
// ---------------------------------------------------------------------------

/// Fails the test unless this process may make a private mount namespace
/// (root, with `unshare`), where the daemon gets the test's journal socket.
/// The journal tests are `#[ignore]`d in a plain `cargo test` for that.
fn require_a_private_mount_namespace() {
    require_tools(&["unshare"]);
    require_root("a private mount namespace for a fake journal socket");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "cannot make a private mount namespace even as root ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `slmd run --config <config>` as systemd would with the journal:
/// stderr is a stream whose `dev:inode` is in `JOURNAL_STREAM`, and
/// `/run/systemd/journal/socket` is `journal` (or absent when `None`).
fn start_under_journal(config: &Path, journal: Option<&Path>) -> Proc {
    let script = r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/journal
if [ -n "$1" ]; then
  touch /run/systemd/journal/socket
  mount --bind "$1" /run/systemd/journal/socket
fi
JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)
export JOURNAL_STREAM
exec "$2" run --config "$3"
"#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(journal.map_or_else(Default::default, |p| p.as_os_str().to_owned()))
    .arg(bin("slmd"))
    .arg(config)
    .env("RUST_LOG", "slmd=debug,info")
    .env("SLMD_FAILURE_SUMMARY_EVERY", "1s")
    .env_remove("JOURNAL_STREAM");
    Proc::spawn(cmd)
}

/// One journal entry in journald's native protocol: `NAME=value` lines,
/// or `NAME`, a little-endian u64 length and the raw value.
fn parse_entry(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let Some(end) = data.iter().position(|b| *b == b'\n' || *b == b'=') else {
            break;
        };
        let name = String::from_utf8_lossy(&data[..end]).into_owned();
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            fields.push((name, String::from_utf8_lossy(&rest[..stop]).into_owned()));
            data = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let rest = &data[end + 1..];
            let Some(len) = rest
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            else {
                break;
            };
            let value = rest.get(8..8 + len).unwrap_or_default();
            fields.push((name, String::from_utf8_lossy(value).into_owned()));
            data = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    fields
}

/// Journal entries, each a list of fields in the order sent.
type Entries = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// The journal: every entry received, followed on a thread.
struct FakeJournal {
    entries: Entries,
}

impl FakeJournal {
    fn bind(path: &Path) -> FakeJournal {
        let socket = std::os::unix::net::UnixDatagram::bind(path).expect("bind journal socket");
        let entries = Entries::default();
        let sink = Arc::clone(&entries);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                if n > 0 {
                    let entry = parse_entry(&buf[..n]);
                    sink.lock().expect("journal entries").push(entry);
                }
            }
        });
        FakeJournal { entries }
    }

    /// Waits for an entry with a field `name` whose value satisfies
    /// `wanted`; returns it as a map.
    fn wait_for(
        &self,
        name: &str,
        wanted: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<HashMap<String, String>> {
        slmd_e2e::poll_until(timeout, || {
            let entries = self.entries.lock().expect("journal entries");
            entries
                .iter()
                .find(|e| e.iter().any(|(n, v)| n == name && wanted(v)))
                .map(|e| e.iter().cloned().collect())
        })
    }

    fn all(&self) -> Vec<Vec<(String, String)>> {
        self.entries.lock().expect("journal entries").clone()
    }
}

/// A config with one meter nobody listens on.
fn ghost_config(dir: &Path) -> std::path::PathBuf {
    let device = tcp_device(
        DEVICE,
        &format!("127.0.0.1:{}", free_port()),
        "reconnect_min = \"100ms\"\nreconnect_max = \"200ms\"",
    );
    let config = dir.join("slmd.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nid = \"gw-journal\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n{device}",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    config
}

#[test]
#[ignore = "needs root and unshare (a private mount namespace); .ci/run runs as root"]
fn under_systemd_entries_go_to_the_journal_with_slmd_fields_and_priorities() {
    require_a_private_mount_namespace();
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = FakeJournal::bind(&dir.path().join("journal.sock"));
    let config = ghost_config(dir.path());
    let mut daemon = start_under_journal(&config, Some(&dir.path().join("journal.sock")));

    let dump = |journal: &FakeJournal, daemon: &Proc| {
        format!("{:#?}\n{}", journal.all(), daemon.transcript())
    };
    let down = journal
        .wait_for("SLMD_EVENT", |v| v == "meter_down", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no meter_down entry\n{}", dump(&journal, &daemon)));
    let summary = journal
        .wait_for("SLMD_EVENT", |v| v == "meter_still_failing", START_TIMEOUT)
        .unwrap_or_else(|| panic!("no summary entry\n{}", dump(&journal, &daemon)));
    let started = journal
        .wait_for("MESSAGE", |v| v.starts_with("API listening"), START_TIMEOUT)
        .unwrap_or_else(|| panic!("no API entry\n{}", dump(&journal, &daemon)));
    daemon.terminate(Duration::from_secs(20));

    let get =
        |entry: &HashMap<String, String>, name: &str| entry.get(name).cloned().unwrap_or_default();
    assert_eq!(get(&down, "SLMD_DEVICE"), DEVICE, "{down:#?}");
    assert_eq!(get(&down, "PRIORITY"), "4", "warn is 4: {down:#?}");
    assert_eq!(get(&down, "SYSLOG_IDENTIFIER"), "slmd", "{down:#?}");
    assert!(
        get(&down, "MESSAGE").starts_with(&format!("meter {DEVICE} down: ")),
        "the message names the meter: {down:#?}"
    );
    assert!(get(&down, "SLMD_ERROR").contains("refused"), "{down:#?}");
    assert_eq!(get(&summary, "SLMD_DEVICE"), DEVICE, "{summary:#?}");
    assert!(
        get(&summary, "SLMD_TRIES")
            .parse::<u64>()
            .is_ok_and(|n| n > 1),
        "{summary:#?}"
    );
    assert_eq!(get(&started, "PRIORITY"), "6", "info is 6: {started:#?}");
    // Nothing twice: with the journal reachable, stderr stays quiet.
    let stderr = daemon.stderr.lines();
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("meter_down") || l.contains("API listening")),
        "log lines also went to stderr: {stderr:#?}"
    );
    // Per-try lines are debug (7), never warnings.
    let warnings_about_meter = journal
        .all()
        .iter()
        .filter(|e| {
            e.iter().any(|(n, v)| n == "SLMD_DEVICE" && v == DEVICE)
                && e.iter().any(|(n, v)| n == "PRIORITY" && v.as_str() <= "4")
        })
        .count();
    let tries = journal
        .all()
        .iter()
        .filter(|e| e.iter().any(|(n, v)| n == "SLMD_DEVICE" && v == DEVICE))
        .count();
    assert!(
        warnings_about_meter < tries,
        "{warnings_about_meter} warnings for {tries} entries"
    );
}

#[test]
#[ignore = "needs root and unshare (a private mount namespace); .ci/run runs as root"]
fn under_systemd_without_a_journal_socket_lines_carry_their_priority_on_stderr() {
    require_a_private_mount_namespace();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ghost_config(dir.path());
    let mut daemon = start_under_journal(&config, None);
    let (_, down) = daemon
        .stderr
        .wait_from(0, START_TIMEOUT, |l| l.contains("meter_down"))
        .unwrap_or_else(|| panic!("no meter_down line\n{}", daemon.transcript()));
    let (_, unavailable) = daemon
        .stderr
        .wait_from(0, START_TIMEOUT, |l| l.contains("journal_unavailable"))
        .unwrap_or_else(|| panic!("no journal_unavailable line\n{}", daemon.transcript()));
    daemon.terminate(Duration::from_secs(20));
    // `<4>`: journald files the line as a warning; no timestamp (the
    // journal adds its own).
    assert!(down.starts_with("<4>"), "{down}");
    assert!(down.contains(&format!("meter {DEVICE} down: ")), "{down}");
    assert!(
        !down.split_whitespace().any(is_timestamp),
        "no timestamp: {down}"
    );
    assert!(unavailable.starts_with("<4>"), "{unavailable}");
}

/// `2026-11-23T12:45:51.015332Z`: what the text format starts lines with.
fn is_timestamp(word: &str) -> bool {
    let b = word.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && word.ends_with('Z')
}
