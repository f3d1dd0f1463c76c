//! Hostile and careless config files through the real binary: secrets never
//! appear in what `slmd check`, `slmd run` or a reload print; values that
//! would overflow a deadline, too many meters and addresses that are not
//! addresses are refused with a located error and exit 78, instead of
//! starting a daemon whose tasks then die.

use slmd_e2e::{Daemon, START_TIMEOUT, Setup, bin, tcp_device};
use std::process::Command;

/// The secret each case hides somewhere.
const SECRET: &str = "fleet-S3cr3t-7a9b2c4d";

/// EX_CONFIG.
const EXIT_CONFIG: i32 = 78;

/// What one run of the binary printed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn all(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// `slmd <args> --config <file with text>`.
fn slmd(args: &[&str], text: &str) -> (Outcome, std::path::PathBuf, Setup) {
    let setup = Setup::new();
    let path = setup.path("slmd.toml");
    std::fs::write(&path, text).expect("write config");
    let out = Command::new(bin("slmd"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run slmd");
    let outcome = Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (outcome, path, setup)
}

/// Asserts `slmd check --no-probe` and `slmd run` both refuse `text` with
/// exit 78 and a located error containing each of `words`; returns the
/// `check` message.
#[track_caller]
fn refused(text: &str, words: &[&str]) -> String {
    let mut message = String::new();
    for args in [&["check", "--no-probe"][..], &["run"][..]] {
        let (out, path, _setup) = slmd(args, text);
        assert_eq!(
            out.code,
            Some(EXIT_CONFIG),
            "slmd {args:?} exits 78 on\n{text}\n{}",
            out.all()
        );
        let located = format!("{}:", path.display());
        assert!(
            out.stderr.contains(&located) && out.stderr.contains("slmd: invalid configuration: "),
            "slmd {args:?} names the file: {}",
            out.all()
        );
        for word in words {
            assert!(out.stderr.contains(word), "says {word:?}: {}", out.all());
        }
        assert!(!out.stderr.contains("panicked"), "{}", out.all());
        if message.is_empty() {
            message = out.stderr.clone();
        }
    }
    message
}

/// Asserts the secret (or a telling piece of it) is nowhere in `text`.
#[track_caller]
fn assert_no_secret(text: &str, context: &str) {
    for part in [SECRET, "S3cr3t", "7a9b2c4d"] {
        assert!(
            !text.contains(part),
            "{part:?} shown for\n{context}\n{text}"
        );
    }
}

#[test]
fn secrets_never_appear_in_check_or_run() {
    let cases = [
        // The case: a string where a list belongs, both tables.
        format!("[api]\ntokens = \"{SECRET}\"\n"),
        format!("[fleet]\nenabled = true\nurl = \"https://f.example\"\ntokens = \"{SECRET}\"\n"),
        // Other wrong shapes.
        format!("[fleet]\ntokens = [\"ok-token\", {{ t = \"{SECRET}\" }}]\n"),
        // TOML syntax errors on the secret's line.
        format!("[fleet]\ntokens = [\"{SECRET}\"\n"),
        format!("[fleet]\ntokens = [\"{SECRET}\n"),
        format!("[fleet]\ntokens = {SECRET}\n"),
        format!("[fleet]\ntokens = [\"{SECRET}\" \"b\"]\n"),
        format!("[fleet]\nenabled = false\n{SECRET}\n"),
        format!("[api]\ntokens = [\"{SECRET}\"]\ntokens = [\"{SECRET}\"]\n"),
        // A pasted token where a key belongs.
        format!("[fleet]\n{SECRET} = true\n"),
        format!("[{SECRET}]\n"),
        // Semantic rules about tokens.
        format!("[api]\ntokens = [\"{SECRET}\\u0007\"]\n"),
        format!("[fleet]\ntokens = [\"{SECRET}\", \"b-token\", \"c-token\"]\n"),
        format!("[fleet]\ntokens = [\"{SECRET}\"]\ntoken_file = \"/etc/slmd/fleet.token\"\n"),
        // Credentials or a key in the fleet URL.
        format!("[fleet]\nurl = \"https://gw:{SECRET}@fleet.example.com\"\n"),
        format!("[fleet]\nurl = \"https://fleet.example.com/?key={SECRET}\"\n"),
    ];
    for text in &cases {
        for args in [&["check", "--no-probe"][..], &["run"][..]] {
            let (out, path, _setup) = slmd(args, text);
            assert_eq!(out.code, Some(EXIT_CONFIG), "{text}\n{}", out.all());
            assert!(
                out.stderr.contains(&format!("{}:", path.display())),
                "located: {}",
                out.all()
            );
            assert_no_secret(&out.all(), text);
        }
    }
    // The message still says what is wrong.
    let shown = refused(&format!("[fleet]\ntokens = \"{SECRET}\"\n"), &[]);
    assert!(
        shown.contains(
            "slmd.toml:2:10: fleet.tokens: expected an array of strings like [\"token-a\"], found a string (value not shown: it is a secret)"
        ),
        "{shown}"
    );
}

#[test]
fn a_reload_keeps_secrets_out_of_the_log() {
    let setup = Setup::new();
    let config = setup.config("");
    let mut daemon = Daemon::start(&config);
    daemon
        .proc
        .stderr
        .wait_from(0, START_TIMEOUT, |l| l.contains("slmd running"))
        .unwrap_or_else(|| panic!("daemon did not start\n{}", daemon.proc.transcript()));
    let good = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, format!("{good}\n[fleet]\ntokens = \"{SECRET}\"\n"))
        .expect("write config");
    let from = daemon.proc.stderr.lines().len();
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    let (_, line) = daemon
        .proc
        .stderr
        .wait_from(from, START_TIMEOUT, |l| l.contains("not reloaded"))
        .unwrap_or_else(|| panic!("no reload error\n{}", daemon.proc.transcript()));
    assert!(
        line.contains("fleet.tokens") && line.contains("value not shown: it is a secret"),
        "{line}"
    );
    let status = daemon.proc.terminate(START_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        daemon.proc.transcript()
    );
    assert_no_secret(&daemon.proc.transcript(), "the reload");
}

/// `key = value` in `table` of an otherwise valid file with one tcp meter.
fn with(table: &str, line: &str) -> String {
    let device = tcp_device(
        "north",
        "127.0.0.1:2255",
        if table == "device" { line } else { "" },
    );
    match table {
        "device" => device,
        _ => format!("{device}\n[{table}]\n{line}\n"),
    }
}

#[test]
fn huge_durations_are_refused_before_anything_starts() {
    let keys = [
        ("device", "poll_interval", "1d"),
        ("device", "live_poll_interval", "1d"),
        ("device", "answer_timeout", "60s"),
        ("device", "command_gap", "60s"),
        ("device", "status_interval", "1d"),
        ("device", "reconnect_min", "1h"),
        ("device", "reconnect_max", "1h"),
        ("api", "stream_max", "1d"),
        ("fleet", "interval", "1d"),
        ("fleet", "token_retry", "1d"),
        ("fleet", "timeout", "1h"),
        ("fleet", "retry_min", "1d"),
        ("fleet", "retry_max", "1d"),
        ("fleet", "auth_retry", "1d"),
    ];
    for (table, key, limit) in keys {
        let text = with(table, &format!("{key} = \"200000000000000d\""));
        let shown = refused(
            &text,
            &[
                key,
                &format!("must be at most {limit}, found 200000000000000d"),
            ],
        );
        assert!(!shown.contains("overflow"), "{shown}");
    }
}

/// `n` tcp meters.
fn meters(n: usize) -> String {
    (0..n)
        .map(|i| {
            tcp_device(
                &format!("m{i}"),
                &format!("192.0.2.1:{}", 1000 + i % 60000),
                "",
            )
        })
        .collect()
}

#[test]
fn too_many_meters_are_refused() {
    let (out, _, _setup) = slmd(&["check", "--no-probe"], &meters(64));
    assert_eq!(out.code, Some(0), "64 meters are fine\n{}", out.all());
    assert!(out.stdout.contains("valid (64 meters)"), "{}", out.all());
    refused(
        &meters(65),
        &[
            "device[64]: too many meters",
            "at most 64 [[device]] tables, found 65",
        ],
    );
    // The 100 002 meters: refused by size before being parsed.
    refused(&meters(100_002), &["too large", "at most 1024 KiB"]);
}

#[test]
fn addresses_that_are_not_addresses_are_refused() {
    for (address, word) in [
        ("256.0.0.1:80", "\"256.0.0.1\" is not a valid IPv4 address"),
        ("10.1:80", "\"10.1\" is not a valid IPv4 address"),
        ("192.0.2.10:0", "1 to 65535"),
        ("192.0.2.10:65536", "1 to 65535"),
        ("-meter.local:2255", "is not a host name or IP address"),
    ] {
        let text = meters(1).replace("192.0.2.1:1000", address);
        refused(&text, &["device[0].address", word]);
    }
    let ok = meters(1).replace("192.0.2.1:1000", "meter-7.site.local:2255");
    let (out, _, _setup) = slmd(&["check", "--no-probe"], &ok);
    assert_eq!(
        out.code,
        Some(0),
        "a host name stays allowed\n{}",
        out.all()
    );
}

#[test]
fn a_config_of_random_bytes_is_refused_cleanly() {
    // What the fuzz target does at scale, once through the binary: garbage
    // is exit 78 with a message, never a panic or a hang.
    const ALPHABET: &[u8] = b"[]{}=\"',.\n #abc19_-";
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20 {
        let text: String = (0..400)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                char::from(ALPHABET[(rng % ALPHABET.len() as u64) as usize])
            })
            .collect();
        let (out, _, _setup) = slmd(&["check", "--no-probe"], &text);
        assert!(
            matches!(out.code, Some(0 | EXIT_CONFIG)),
            "{text}\n{}",
            out.all()
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.all());
    }
}
