//! Harness for end-to-end tests: runs the real `slmd` and `slm-sim`
//! binaries as child processes and follows their JSON-line output.
//!
//! Nothing here sleeps to synchronise: every wait is "until this event
//! appears in the feed, or the deadline passes".
//!
//! The binaries are built by [`bin`] on first use, into the same target
//! folder as this test executable, so they always match the source.

pub mod api;
pub mod browser;
pub mod deb;
pub mod fixture;
pub mod fleet;
pub mod hook;
pub mod needs;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Path of a binary built by this workspace, freshly built.
///
/// The first call per test process runs `cargo build` for the `slmd` and
/// `slm-sim` binaries (a no-op when they are current), so a test never runs
/// a stale binary, whichever package selection started it.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps layout")
        .to_owned();
    let built = BUILT.get_or_init(|| build_binaries(&dir));
    if let Err(e) = built {
        panic!("cannot build the binaries under test: {e}");
    }
    dir.join(name)
}

fn build_binaries(profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "slmd", "-p", "slmd-hil", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let out = build.output().map_err(|e| format!("cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Everything a process printed on one stream, line by line, with a way to
/// wait for a line.
#[derive(Clone, Default)]
pub struct Feed {
    inner: Arc<(Mutex<FeedState>, Condvar)>,
}

#[derive(Default)]
struct FeedState {
    lines: Vec<String>,
    closed: bool,
}

impl Feed {
    pub fn follow(stream: impl Read + Send + 'static) -> Feed {
        let feed = Feed::default();
        let writer = feed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let (lock, cvar) = &*writer.inner;
                lock.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .lines
                    .push(line);
                cvar.notify_all();
            }
            let (lock, cvar) = &*writer.inner;
            lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            cvar.notify_all();
        });
        feed
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }

    /// All lines so far that parse as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the line at index ≥ `from` satisfies `pred`; returns its
    /// index and text, or `None` at the deadline or when the stream closed.
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut checked = from;
        loop {
            while checked < state.lines.len() {
                if pred(&state.lines[checked]) {
                    return Some((checked, state.lines[checked].clone()));
                }
                checked += 1;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the stream has ended; `false` at the deadline.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = cvar
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits for a JSON line at index ≥ `from` satisfying `pred`.
    pub fn wait_json(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<(usize, Value)> {
        self.wait_from(from, timeout, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|v| pred(&v))
        })
        .and_then(|(i, line)| serde_json::from_str(&line).ok().map(|v| (i, v)))
    }

    /// Waits until at least `n` JSON lines satisfy `pred`; returns them.
    pub fn wait_count(
        &self,
        n: usize,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Vec<Value> {
        let mut found = Vec::new();
        let mut from = 0;
        let deadline = Instant::now() + timeout;
        while found.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_json(from, left, &mut pred) {
                Some((i, v)) => {
                    found.push(v);
                    from = i + 1;
                }
                None => break,
            }
        }
        found
    }
}

/// A running child process whose stdout and stderr are followed.
pub struct Proc {
    child: Child,
    /// What it printed on stdout.
    pub stdout: Feed,
    /// What it printed on stderr.
    pub stderr: Feed,
    name: String,
}

impl Proc {
    /// Starts `command` with piped output.
    pub fn spawn(mut command: Command) -> Proc {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Feed::follow(child.stdout.take().expect("piped stdout"));
        let stderr = Feed::follow(child.stderr.take().expect("piped stderr"));
        Proc {
            child,
            stdout,
            stderr,
            name,
        }
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal);
    }

    /// Sends SIGTERM and waits for the exit status (killing it after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(timeout)
    }

    /// Waits for the process to exit by itself, up to `timeout` (then kills it).
    ///
    /// The exit is seen as the end of its stdout: the pipe closes when the
    /// process (which starts no children of its own) is gone. Its stderr is
    /// then read to the end too, so what it said last is in [`Proc::stderr`]
    /// when this returns.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        if !self.stdout.wait_closed(timeout) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return None;
        }
        let status = self.child.wait().ok();
        self.stderr
            .wait_closed(deadline.saturating_duration_since(Instant::now()));
        status
    }

    /// Everything it printed, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.stdout.lines().join("\n"),
            self.stderr.lines().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `slm-sim`.
pub struct Sim {
    /// The process.
    pub proc: Proc,
    /// TCP address it listens on (TCP mode).
    pub address: Option<String>,
    /// Serial path to open (pty mode: the link if given, else the tty).
    pub path: Option<PathBuf>,
}

/// How long a simulator or daemon may take to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Sim {
    /// `slm-sim --listen 127.0.0.1:0 --control-stdin <extra>` (the
    /// `--control-stdin` only if `extra` lacks it).
    pub fn tcp(extra: &[&str]) -> Sim {
        let mut cmd = Command::new(bin("slm-sim"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(Sim::control_stdin(extra))
            .args(extra);
        let proc = Proc::spawn(cmd);
        let (_, listening) = proc
            .stdout
            .wait_json(0, START_TIMEOUT, |v| v["event"] == "listening")
            .unwrap_or_else(|| panic!("simulator did not listen\n{}", proc.transcript()));
        let address = listening["addr"].as_str().map(str::to_owned);
        Sim {
            proc,
            address,
            path: None,
        }
    }

    /// `slm-sim --pty --link <link> --control-stdin <extra>` (the
    /// `--control-stdin` only if `extra` lacks it).
    pub fn pty(link: &Path, extra: &[&str]) -> Sim {
        let mut cmd = Command::new(bin("slm-sim"));
        cmd.arg("--pty")
            .arg("--link")
            .arg(link)
            .args(Sim::control_stdin(extra))
            .args(extra);
        let proc = Proc::spawn(cmd);
        proc.stdout
            .wait_json(0, START_TIMEOUT, |v| v["event"] == "pty")
            .unwrap_or_else(|| panic!("simulator did not open a pty\n{}", proc.transcript()));
        Sim {
            proc,
            address: None,
            path: Some(link.to_owned()),
        }
    }

    /// Every data line the simulator sent in answer to `DOD?`, in order.
    pub fn dod_lines(&self) -> Vec<String> {
        self.proc
            .stdout
            .json()
            .iter()
            .filter(|v| v["event"] == "dod")
            .filter_map(|v| v["line"].as_str().map(str::to_owned))
            .collect()
    }

    /// Power-cycles the meter (SIGUSR1): the link drops and the meter
    /// comes back stopped (with `--power-cycle-asleep`, with sleep mode
    /// On). Wait for the `power_cycle` event to know it happened.
    pub fn power_cycle(&self) {
        self.proc.signal(nix::sys::signal::Signal::SIGUSR1);
    }

    /// Presses a key on the meter (SIGUSR2): a sleeping NL-43 wakes
    /// (`awake` event) and its sleep timer restarts.
    pub fn wake(&self) {
        self.proc.signal(nix::sys::signal::Signal::SIGUSR2);
    }

    /// `--control-stdin` unless `extra` has it already: every `Sim` reads
    /// control lines on its stdin (piped by [`Proc::spawn`] and kept open
    /// while it runs, so `--exit-on-stdin-eof` still only fires when the
    /// `Sim` is dropped), for [`Sim::set_offset`] and [`Sim::set_calm`].
    fn control_stdin(extra: &[&str]) -> &'static [&'static str] {
        if extra.contains(&"--control-stdin") {
            &[]
        } else {
            &["--control-stdin"]
        }
    }

    /// Sets the simulated meter's level offset to `db` dB (added to every
    /// sample of its level walk from the next one on: 30 makes a 55 dB
    /// meter read about 85 dB; 0 undoes it) by writing `offset <db>` on its
    /// stdin, then waits (up to [`START_TIMEOUT`]) for the simulator's
    /// `{"event":"offset","db":<db>}` line. Returns that line's index in
    /// [`Proc::stdout`]: every command the simulator receives after it is
    /// answered with the new offset (its `dod` and `reading` lines come
    /// later); an answer already in flight (at most one per link) may still
    /// be printed after it with the old level.
    /// Panics if the simulator refuses it (beyond ±120 dB) or says nothing.
    pub fn set_offset(&self, db: f64) -> usize {
        self.control(&format!("offset {db}"), |v| {
            v["event"] == "offset" && v["db"].as_f64() == Some(db)
        })
    }

    /// Turns calm on (no random loud events: with offset 0 the level stays
    /// within 5 dB of 55 dB) or off (`calm on|off` on its stdin), then
    /// waits for the `calm` event; returns its stdout line index, as
    /// [`Sim::set_offset`] does.
    pub fn set_calm(&self, on: bool) -> usize {
        let word = if on { "on" } else { "off" };
        self.control(&format!("calm {word}"), |v| {
            v["event"] == "calm" && v["on"] == on
        })
    }

    /// Writes the control `line` and waits for the event `done` accepts.
    fn control(&self, line: &str, mut done: impl FnMut(&Value) -> bool) -> usize {
        use std::io::Write as _;
        let from = self.proc.stdout.lines().len();
        let mut stdin =
            self.proc.child.stdin.as_ref().unwrap_or_else(|| {
                panic!("the simulator's stdin is gone\n{}", self.proc.transcript())
            });
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| {
                panic!(
                    "cannot write {line:?} to the simulator: {e}\n{}",
                    self.proc.transcript()
                )
            });
        let (index, event) = self
            .proc
            .stdout
            .wait_json(from, START_TIMEOUT, |v| {
                done(v) || (v["event"] == "control_error" && v["line"] == line)
            })
            .unwrap_or_else(|| {
                panic!(
                    "the simulator did not confirm {line:?}\n{}",
                    self.proc.transcript()
                )
            });
        if event["event"] == "control_error" {
            panic!("the simulator refused {line:?}: {}", event["error"]);
        }
        index
    }

    /// Stops the simulator and returns its final stats line.
    pub fn stop(&mut self) -> Value {
        self.proc.terminate(START_TIMEOUT);
        self.proc
            .stdout
            .wait_json(0, START_TIMEOUT, |v| v["event"] == "stats")
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no stats line\n{}", self.proc.transcript()))
    }
}

/// A running `slmd run --print jsonl`.
pub struct Daemon {
    /// The process.
    pub proc: Proc,
}

impl Daemon {
    /// Starts the daemon on `config`.
    pub fn start(config: &Path) -> Daemon {
        let mut cmd = Command::new(bin("slmd"));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .args(["--print", "jsonl"])
            .env("RUST_LOG", "slmd=debug,info");
        Daemon {
            proc: Proc::spawn(cmd),
        }
    }

    /// Starts the daemon on `config` allowed at most `fd_limit` open files
    /// (as systemd's `LimitNOFILE` would), printing `print`.
    pub fn start_with_fd_limit(config: &Path, fd_limit: u64, print: &str) -> Daemon {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {fd_limit} && exec \"$0\" \"$@\""))
            .arg(bin("slmd"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--print", print])
            .env("RUST_LOG", "slmd=info");
        Daemon {
            proc: Proc::spawn(cmd),
        }
    }

    /// The `seq` of every record it printed so far.
    pub fn printed_seqs(&self) -> std::collections::BTreeSet<u64> {
        self.printed_records()
            .iter()
            .filter_map(|r| r["seq"].as_u64())
            .collect()
    }

    /// Every record it printed so far.
    pub fn printed_records(&self) -> Vec<Value> {
        self.printed("record")
    }

    /// Every line of one `type` it printed so far (`record`, `push`,
    /// `push_failed`, `token_rejected`, …).
    pub fn printed(&self, kind: &str) -> Vec<Value> {
        self.proc
            .stdout
            .json()
            .into_iter()
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// How many lines of its log (stderr) so far contain `text`.
    pub fn log_lines(&self, text: &str) -> usize {
        self.proc
            .stderr
            .lines()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Waits for `n` records of `device` at or after line `from`.
    pub fn records(&self, device: &str, n: usize, timeout: Duration) -> Vec<Value> {
        self.proc.stdout.wait_count(n, timeout, |v| {
            v["type"] == "record" && v["device"] == device
        })
    }
}

/// `[buffer].commit_interval` of the configs [`Setup`] writes: short, so
/// a test that waits for a commit (fleet push, history, the file) waits a
/// moment rather than the default 10 s, yet every test runs the grouped
/// commit path. The tests about the commit window set their own.
pub const TEST_COMMIT_INTERVAL: &str = "250ms";

/// `[buffer]` line for tests that read the buffer file while the daemon
/// runs, as a sidecar would: by default the daemon holds it for itself.
pub const SHARED_BUFFER: &str = "exclusive = false";

/// A temporary folder with a config file for one or more devices.
pub struct Setup {
    /// The folder (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// A fresh folder.
    pub fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Writes `slmd.toml` with the given `[[device]]` (and other) tables, a
    /// state dir inside the folder and the API on a free loopback port;
    /// returns its path.
    pub fn config(&self, devices: &str) -> PathBuf {
        self.config_with_api(devices, "")
    }

    /// Like [`Setup::config`], with `api` lines added to `[api]`.
    pub fn config_with_api(&self, devices: &str, api: &str) -> PathBuf {
        self.write_config(devices, api, "")
    }

    /// Like [`Setup::config`], with `buffer` lines added to `[buffer]`
    /// (a `commit_interval` there replaces [`TEST_COMMIT_INTERVAL`]).
    pub fn config_with_buffer(&self, devices: &str, buffer: &str) -> PathBuf {
        self.write_config(devices, "", buffer)
    }

    fn write_config(&self, devices: &str, api: &str, buffer: &str) -> PathBuf {
        let path = self.dir.path().join("slmd.toml");
        let interval = if buffer.contains("commit_interval") {
            String::new()
        } else {
            format!("commit_interval = \"{TEST_COMMIT_INTERVAL}\"\n")
        };
        let text = format!(
            "[gateway]\nid = \"gw-test\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n{api}\n\n\
             [buffer]\n{interval}{buffer}\n\n{devices}",
            self.dir.path().join("state").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// A path inside the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// A `[[device]]` table for a TCP meter.
pub fn tcp_device(id: &str, address: &str, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{address}\"\n{extra}\n"
    )
}

/// A `[[device]]` table for a serial meter.
pub fn serial_device(id: &str, path: &Path, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nprotocol = \"nl43\"\ntransport = \"serial\"\npath = \"{}\"\n{extra}\n",
        path.display()
    )
}

/// Metric names of the main channel, in `DOD?` field order (default LN slots).
pub const MAIN_METRICS: [&str; 11] = [
    "lp", "leq", "le", "lmax", "lmin", "l5", "l10", "l50", "l90", "l95", "lpeak",
];

/// The main-channel metrics a `DOD?` line carries, by the record's names,
/// parsed independently of the daemon's codec: `None` for dashes.
pub fn dod_metrics(line: &str) -> Vec<(&'static str, Option<f64>)> {
    let fields: Vec<&str> = line.split(',').collect();
    MAIN_METRICS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let text = fields.get(i).map(|f| f.trim()).unwrap_or("");
            (*name, text.parse::<f64>().ok())
        })
        .collect()
}

/// The same metrics taken from a record's JSON.
pub fn record_metrics(record: &Value) -> Vec<(&'static str, Option<f64>)> {
    MAIN_METRICS
        .iter()
        .map(|name| (*name, record["metrics"][*name].as_f64()))
        .collect()
}

/// Asserts that every record's values equal those of one of the simulator's
/// answers, in the order the simulator sent them (a subsequence: answers
/// lost with a dropped link are allowed, wrong or reordered values are not).
pub fn assert_records_match_answers(records: &[Value], answers: &[String]) {
    let mut next = 0;
    for record in records {
        let wanted = record_metrics(record);
        match answers[next..]
            .iter()
            .position(|line| dod_metrics(line) == wanted)
        {
            Some(offset) => next += offset + 1,
            None => panic!(
                "record seq {} has values the simulator never sent (after answer {next}): {wanted:?}\nanswers: {answers:#?}",
                record["seq"]
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// The buffer file, read directly (crash, corruption and disk-full tests).
// ---------------------------------------------------------------------------

/// `n` TCP simulators with seeds `first_seed`, `first_seed + 1`, ….
pub fn tcp_sims(n: usize, first_seed: u64) -> Vec<Sim> {
    (0..n)
        .map(|i| Sim::tcp(&["--seed", &(first_seed + i as u64).to_string()]))
        .collect()
}

/// One `[[device]]` table per simulator, with ids `m0`, `m1`, ….
pub fn tcp_devices(sims: &[Sim]) -> String {
    sims.iter()
        .enumerate()
        .map(|(i, s)| {
            tcp_device(
                &format!("m{i}"),
                s.address.as_deref().expect("tcp simulator address"),
                "",
            )
        })
        .collect()
}

/// The buffer file of a [`Setup::config`] config.
pub fn buffer_file(setup: &Setup) -> PathBuf {
    setup.path("state").join("buffer.sqlite")
}

/// One row of the buffer's `records` table, exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferRow {
    /// `seq`.
    pub seq: i64,
    /// Device name id.
    pub device: i64,
    /// Unix ms.
    pub received_at: i64,
    /// Seconds relative to `received_at`, if any.
    pub device_time: Option<i64>,
    /// State code.
    pub state: i64,
    /// Flag bits.
    pub flags: i64,
    /// The encoded metrics.
    pub metrics: Vec<u8>,
}

/// Opens the buffer for reading only, as a separate connection next to a
/// running daemon (WAL: it sees exactly the committed records and never
/// blocks the writer). Needs the daemon's `-shm` file, i.e. a daemon that
/// has the file open; use [`open_buffer_rw`] on a stopped daemon's file.
pub fn open_buffer_ro(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// The `seq` of every record the buffer holds up to `up_to`, in order.
pub fn stored_seqs_up_to(conn: &rusqlite::Connection, up_to: u64) -> Vec<u64> {
    conn.prepare("SELECT seq FROM records WHERE seq <= ?1 ORDER BY seq")
        .and_then(|mut s| {
            s.query_map([i64::try_from(up_to).unwrap_or(i64::MAX)], |r| {
                r.get::<_, i64>(0)
            })?
            .map(|r| r.map(|v| v as u64))
            .collect()
        })
        .expect("stored seqs")
}

/// Opens the buffer read-write (for a stopped daemon's file).
pub fn open_buffer_rw(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-write: {e}", path.display()));
    conn.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    conn
}

/// Every row of `records`, by `seq`.
pub fn buffer_rows(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<std::collections::BTreeMap<i64, BufferRow>> {
    let mut stmt = conn.prepare(
        "SELECT seq, device, received_at, device_time, state, flags, metrics FROM records",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(BufferRow {
            seq: r.get(0)?,
            device: r.get(1)?,
            received_at: r.get(2)?,
            device_time: r.get(3)?,
            state: r.get(4)?,
            flags: r.get(5)?,
            metrics: r.get(6)?,
        })
    })?;
    rows.map(|row| row.map(|row| (row.seq, row)))
        .collect::<rusqlite::Result<_>>()
}

/// The `meta` counters, by key.
pub fn buffer_meta(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<std::collections::BTreeMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT key, value FROM meta")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// `None` when `meta` keeps the buffer's accounting
/// (`written = stored + evicted_pushed + evicted_unsent`, `stored` = rows in
/// `records`, `next_seq` above every stored `seq`), else what is wrong.
pub fn buffer_accounting_error(conn: &rusqlite::Connection) -> Option<String> {
    // One read transaction, so the counters and the rows come from the same
    // snapshot even while a running daemon commits between the two reads.
    let snapshot = match conn.unchecked_transaction() {
        Ok(t) => t,
        Err(e) => return Some(format!("cannot open a read transaction: {e}")),
    };
    let error = accounting_error_in(&snapshot);
    drop(snapshot);
    error
}

fn accounting_error_in(conn: &rusqlite::Connection) -> Option<String> {
    let meta = match buffer_meta(conn) {
        Ok(m) => m,
        Err(e) => return Some(format!("meta unreadable: {e}")),
    };
    let (count, max): (i64, Option<i64>) =
        match conn.query_row("SELECT count(*), max(seq) FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        }) {
            Ok(v) => v,
            Err(e) => return Some(format!("records unreadable: {e}")),
        };
    let get = |k: &str| meta.get(k).copied();
    let (Some(written), Some(stored), Some(pushed), Some(unsent), Some(next_seq)) = (
        get("written"),
        get("stored"),
        get("evicted_pushed"),
        get("evicted_unsent"),
        get("next_seq"),
    ) else {
        return Some(format!("meta lacks a counter: {meta:?}"));
    };
    if written != stored + pushed + unsent {
        return Some(format!(
            "written {written} != stored {stored} + evicted_pushed {pushed} + evicted_unsent {unsent}: {meta:?}"
        ));
    }
    if stored != count {
        return Some(format!(
            "meta.stored {stored} but records holds {count} rows: {meta:?}"
        ));
    }
    if max.is_some_and(|m| next_seq <= m) {
        return Some(format!(
            "meta.next_seq {next_seq} is not above the highest stored seq {max:?}: {meta:?}"
        ));
    }
    None
}

/// `PRAGMA quick_check` lines (`["ok"]` for a sound file).
pub fn quick_check(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("PRAGMA quick_check")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .unwrap_or_else(|e| vec![format!("quick_check failed: {e}")])
}

/// A printed record's `received_at` as Unix ms.
pub fn received_at_ms(record: &Value) -> Option<i64> {
    record["received_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// Waits for `n` more `record` lines at or after stdout line `from`; returns
/// them and the line index after the last one (fewer at the deadline).
pub fn records_after(proc: &Proc, from: usize, n: usize, timeout: Duration) -> (Vec<Value>, usize) {
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    let mut next = from;
    while found.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match proc.stdout.wait_json(next, left, |v| v["type"] == "record") {
            Some((i, v)) => {
                found.push(v);
                next = i + 1;
            }
            None => break,
        }
    }
    (found, next)
}

/// Resident memory of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Descriptors process `pid` holds open.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's open-file soft limit towards `wanted` (up to the
/// hard limit); returns the soft limit now.
pub fn raise_fd_limit(wanted: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < wanted {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, wanted.min(hard), hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft)
}

/// Polls `check` every 50 ms until it returns `Some`, or the deadline passes.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling interval of a deadline-bounded wait, not a synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Files next to `db` named `<db file name>.corrupt-*` (not their
/// `-wal`/`-shm`).
pub fn moved_aside(db: &Path) -> Vec<PathBuf> {
    let prefix = format!(
        "{}.corrupt-",
        db.file_name().expect("file name").to_string_lossy()
    );
    let mut found: Vec<PathBuf> = std::fs::read_dir(db.parent().expect("state dir"))
        .expect("read state dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&prefix) && !n.ends_with("-wal") && !n.ends_with("-shm")
            })
        })
        .collect();
    found.sort();
    found
}
