//! Fan-out benchmark (the acceptance figures of the local fan-out issue).
//!
//! Run with `cargo bench -p slmd --bench fanout` (about four minutes on two
//! cores, after the build; needs `ser2net` installed). Measured:
//!
//! 1. **slmd**: one simulated NL-43 (in this process, over TCP) polled once
//!    a second by the real `slmd` binary (release build, its own process),
//!    with 1, 10 and 100 Server-Sent-Events subscribers on `/v1/stream`
//!    (in this process, each its own HTTP connection). For every record a
//!    subscriber receives, the latency is the time from the simulator
//!    writing that `DOD?` answer to the subscriber having the record
//!    (matched by the answer's Lp; consecutive answers never share one).
//!    Daemon CPU is read from `/proc/<pid>/stat` (user + system, all
//!    threads) over the window and divided by the records delivered
//!    (records × subscribers).
//! 2. **ser2net**, beside it in the same run: the same simulator model over
//!    a pseudo-terminal, `ser2net` sharing that tty with 100 TCP clients
//!    (`max-connections`), one of which also sends `DOD?` once a second.
//!    Latency from the simulator writing the answer to each client reading
//!    the data line; ser2net CPU per delivered data line.
//!
//! Targets: p99 ≤ 2 ms at 100 subscribers; slmd CPU per delivered record ≤
//! ser2net's per delivered line.
//!
//! Then the streaming case (the continuous-output issue), the same two
//! sides under the same load:
//!
//! 3. **slmd streaming**: 8 simulated NL-43s (in this process, over TCP),
//!    each `mode = "stream"` in `slmd.toml`, so the daemon sends `DRD?` and
//!    each meter writes a line every 100 ms (80 records/s in all), with 100
//!    SSE subscribers on `/v1/stream` (8000 deliveries/s). Each meter's
//!    connection is wrapped so that the time a `DRD?` line is written is
//!    taken just before the write that completes it, with the line's Lp,
//!    Leq, Lmax, Lmin and Lpeak. (The simulator's [`SimEvent::Reading`]
//!    comes after the write: on two loaded cores it was often seen after a
//!    subscriber already had the record, about 6 % of them, so it is used
//!    only on the ser2net side, whose latencies are several times longer.)
//!    A record a subscriber receives is matched to the newest line of the
//!    same meter with the same five levels written before it. Identical
//!    consecutive tuples happen (a steady level at 10 Hz, 0.1 dB steps), so
//!    the match, and with it the latency, is approximate: a record that
//!    arrives after the next line with the same levels was written is timed
//!    from that newer line (shorter by 100 ms or more); receipts with no
//!    match at all are counted as unmatched. The snapshot a stream opens with (the records before
//!    its first `event:`) is not counted. The window starts once every
//!    meter has written 10 lines; the daemon's pauses of the output for its
//!    status queries fall inside it, as in service. Daemon CPU as above,
//!    divided by records × subscribers; daemon RSS (`VmRSS`) at the end of
//!    the window and its peak (`VmHWM`, since start), `event: lagged`
//!    counts summed.
//! 4. **ser2net streaming**, the same load: 8 simulators over
//!    pseudo-terminals, `ser2net` with one port per tty and 100 TCP clients
//!    on each port (800 connections, every line delivered 100 times: 8000
//!    line deliveries/s, as for slmd); the first client of each port sends
//!    `DRD?` once to start that meter's output. Latency from the
//!    simulator's [`SimEvent::Reading`] for the line (seen a little after
//!    the write, so these latencies read slightly short, in ser2net's
//!    favour) to each client reading it, matched as above; ser2net CPU per
//!    delivered line. All 800 clients are read in this process on two
//!    worker threads, with no compromise on the load: the printed expected
//!    count shows whether they kept up.
//!
//! The measuring side (subscribers, clients, simulators) shares the two
//! cores with the process measured, so its own scheduling is part of every
//! latency. Streaming targets: p99 ≤ 2 ms, slmd CPU per delivery ≤ 0.5 ×
//! ser2net's per delivered line, daemon RSS ≤ 15 MiB (judged on the peak);
//! the verdict is printed last. The 1-minute load average at the end of
//! each window is printed beside each figure.
//!
//! Under `cargo test --benches` every window is cut to a few seconds.

use firmware_bridge::nl43::{DRD_STOP, DodReading, DrdLine};
use slmd_hil::{Metrics, SimConfig, SimEvent, Simulator};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// When the simulator wrote each `DOD?` answer, and its Lp.
type Frames = Arc<Mutex<Vec<(Instant, f64)>>>;

/// When a subscriber got a record, and its Lp.
type Receipts = Arc<Mutex<Vec<(Instant, f64)>>>;

/// Follows the simulator's answers as they are written.
fn follow_frames(sim: &Simulator, frames: Frames) {
    let mut events = sim.events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(SimEvent::Dod { line, .. }) => {
                    let at = Instant::now();
                    if let Some(lp) = lp_of_line(&line) {
                        frames.lock().expect("frames").push((at, lp));
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn lp_of_line(line: &str) -> Option<f64> {
    DodReading::parse(line.trim().as_bytes())
        .ok()
        .and_then(|d| d.main().lp)
        .map(|lp| lp.db())
}

/// The `"lp":` value of a record's JSON text.
fn lp_of_record(json: &str) -> Option<f64> {
    let at = json.find("\"lp\":")? + 5;
    let rest = &json[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

/// Latencies of `receipts` against `frames`: each receipt matched to the
/// newest frame with the same Lp written before it.
fn latencies(frames: &[(Instant, f64)], receipts: &[(Instant, f64)]) -> Vec<Duration> {
    receipts
        .iter()
        .filter_map(|(at, lp)| {
            frames
                .iter()
                .rev()
                .find(|(sent, f)| sent <= at && f == lp)
                .map(|(sent, _)| *at - *sent)
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// User + system CPU of a process (all its threads), from `/proc`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 here.
    let hz = 100; // USER_HZ on Linux
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// `VmRSS` and `VmHWM` of a process in KiB, from `/proc`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

#[derive(Default)]
struct Run {
    label: String,
    deliveries: usize,
    latencies: Vec<Duration>,
    cpu: Duration,
    /// 1-minute load average at the end of the window.
    load: String,
    /// Streaming cases: what else is printed on a second line.
    detail: Option<String>,
}

impl Run {
    fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        percentile(&sorted, 0.99)
    }

    /// CPU per delivery, µs.
    fn per_delivery(&self) -> f64 {
        if self.deliveries == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / self.deliveries as f64
        }
    }

    fn print(&self) {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        println!(
            "{:<34} {:>6} deliveries  latency p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  CPU {:>6} ms = {:>6.1} µs/delivery  load {}",
            self.label,
            self.deliveries,
            percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            self.cpu.as_millis(),
            self.per_delivery(),
            self.load,
        );
        if let Some(detail) = &self.detail {
            println!("{:<34} {detail}", "");
        }
    }
}

/// The real daemon on TCP meters, its API on a free port.
struct Daemon {
    child: Child,
    api: String,
}

impl Daemon {
    /// `devices`: the `[[device]]` tables of its config.
    fn start(dir: &Path, devices: &str) -> Daemon {
        let config = dir.join("slmd.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n\n{devices}\n[api]\nlisten = \"127.0.0.1:0\"\n",
                dir.join("state").display()
            ),
        )
        .expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_slmd"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("slmd starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("API listening") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        let _ = tx.send(addr.to_owned());
                        sent = true;
                    }
                }
            }
        });
        let api = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("slmd logs where its API listens");
        Daemon { child, api }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SSE subscriber: records `(received, lp)` for every record after the
/// first (the late-joiner snapshot) until `stop`.
async fn subscriber(
    api: String,
    receipts: Receipts,
    ready: Arc<tokio::sync::Barrier>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("http://{api}/v1/stream"))
        .send()
        .await
        .expect("stream opens");
    ready.wait().await;
    let mut pending = String::new();
    let mut first = true;
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => return,
            chunk = response.chunk() => chunk,
        };
        let Ok(Some(chunk)) = chunk else { return };
        let at = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            // Only the Lp is needed: read it without parsing the record, so
            // the measuring side stays light next to 100 subscribers.
            let Some(lp) = lp_of_record(data) else {
                continue;
            };
            if std::mem::take(&mut first) {
                continue;
            }
            receipts.lock().expect("receipts").push((at, lp));
        }
    }
}

async fn measure_slmd(dir: &Path, subscribers: usize, window: Duration) -> Run {
    let stop = CancellationToken::new();
    let sim = Simulator::new(SimConfig {
        seed: 4343,
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let meter = listener.local_addr().expect("addr").to_string();
    let frames: Frames = Arc::default();
    follow_frames(&sim, frames.clone());
    let sim_stop = stop.clone();
    tokio::spawn(async move { sim.serve_tcp(listener, sim_stop).await });

    let run_dir = dir.join(format!("slmd-{subscribers}"));
    std::fs::create_dir_all(&run_dir).expect("dir");
    let daemon = Daemon::start(
        &run_dir,
        &format!(
            "[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{meter}\"\n"
        ),
    );
    let receipts: Receipts = Arc::default();
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    for _ in 0..subscribers {
        tokio::spawn(subscriber(
            daemon.api.clone(),
            receipts.clone(),
            ready.clone(),
            stop.clone(),
        ));
    }
    ready.wait().await;
    let cpu_before = cpu_time(daemon.child.id());
    tokio::time::sleep(window).await;
    let cpu = cpu_time(daemon.child.id()).saturating_sub(cpu_before);
    stop.cancel();
    drop(daemon);
    let frames = frames.lock().expect("frames").clone();
    let receipts = receipts.lock().expect("receipts").clone();
    Run {
        label: format!("slmd SSE, {subscribers:>3} subscribers"),
        deliveries: receipts.len(),
        latencies: latencies(&frames, &receipts),
        cpu,
        load: load_average(),
        detail: None,
    }
}

async fn measure_ser2net(dir: &Path, clients: usize, window: Duration) -> Option<Run> {
    let stop = CancellationToken::new();
    let sim = Simulator::new(SimConfig {
        seed: 4343,
        ..SimConfig::default()
    });
    let frames: Frames = Arc::default();
    follow_frames(&sim, frames.clone());
    let pty = sim.open_pty(Some(dir.join("ttyBENCH"))).expect("pty");
    let tty = pty.path().to_owned();
    let pty_stop = stop.clone();
    tokio::spawn(async move { pty.serve(pty_stop).await });

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = dir.join("ser2net.yaml");
    std::fs::write(
        &config,
        format!(
            "connection: &bench\n  accepter: tcp,127.0.0.1,{port}\n  connector: serialdev,{},38400n81,local\n  options:\n    max-connections: {}\n",
            tty.display(),
            clients + 1
        ),
    )
    .expect("write ser2net config");
    let mut child = match Command::new("ser2net")
        .arg("-n")
        .arg("-c")
        .arg(&config)
        .arg("-P")
        .arg(dir.join("ser2net.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("ser2net not run ({e}); install the Debian package ser2net");
            return None;
        }
    };
    let addr = format!("127.0.0.1:{port}");
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while streams.len() < clients {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => streams.push(s),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("ser2net does not accept connections: {e}"),
        }
    }
    let receipts: Receipts = Arc::default();
    // Every write half is kept: dropping one half-closes its connection,
    // and ser2net drops a client that did.
    let mut writers = Vec::new();
    for stream in streams {
        let (read, write) = stream.into_split();
        writers.push(write);
        let receipts = receipts.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(read).lines();
            loop {
                let line = tokio::select! {
                    () = stop.cancelled() => return,
                    line = lines.next_line() => line,
                };
                let Ok(Some(line)) = line else { return };
                let at = Instant::now();
                if let Some(lp) = lp_of_line(&line) {
                    receipts.lock().expect("receipts").push((at, lp));
                }
            }
        });
    }
    let poller = writers.first_mut().expect("one client polls");
    let cpu_before = cpu_time(child.id());
    let started = Instant::now();
    while started.elapsed() < window {
        // The meter answers DOD? at most once a second.
        let _ = poller.write_all(b"DOD?\r\n").await;
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    let cpu = cpu_time(child.id()).saturating_sub(cpu_before);
    stop.cancel();
    let _ = child.kill();
    let _ = child.wait();
    let frames = frames.lock().expect("frames").clone();
    let receipts = receipts.lock().expect("receipts").clone();
    Some(Run {
        label: format!("ser2net pty→TCP, {clients:>3} clients"),
        deliveries: receipts.len(),
        latencies: latencies(&frames, &receipts),
        cpu,
        load: load_average(),
        detail: None,
    })
}

/// Streaming case: meters, each writing a `DRD?` line every 100 ms.
const STREAM_METERS: usize = 8;

/// Streaming case: SSE subscribers, and TCP clients per ser2net port.
const STREAM_FANOUT: usize = 100;

/// The levels a streamed reading carries, in tenths of a dB (`None` for
/// dashes or null): Lp, Leq, Lmax, Lmin, Lpeak.
type Levels = [Option<i32>; 5];

/// The metric names of [`Levels`], in order.
const LEVEL_NAMES: [&str; 5] = ["lp", "leq", "lmax", "lmin", "lpeak"];

/// When one meter wrote each reading, and its levels.
type Sent = Arc<Mutex<Vec<(Instant, Levels)>>>;

/// When a reading was received, from which meter (index), and its levels.
type Got = Arc<Mutex<Vec<(Instant, usize, Levels)>>>;

fn tenths(db: f64) -> i32 {
    (db * 10.0).round() as i32
}

/// Follows one simulator's readings (`DOD?` and `DRD?` lines alike) as
/// they are written. On a thread of its own, blocked on the event channel,
/// so the timestamp does not wait for a worker busy with subscribers.
fn follow_readings(sim: &Simulator, sent: Sent) {
    let mut events = sim.events();
    std::thread::spawn(move || {
        loop {
            match events.blocking_recv() {
                Ok(SimEvent::Reading { metrics, .. }) => {
                    let at = Instant::now();
                    let levels = levels_of_metrics(&metrics);
                    sent.lock().expect("sent").push((at, levels));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!("bench fell {n} simulator events behind");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn levels_of_metrics(metrics: &Metrics) -> Levels {
    LEVEL_NAMES.map(|name| metrics.get(name).flatten().map(tenths))
}

/// The levels of a `DRD?` line as a ser2net client reads it.
fn levels_of_drd(line: &str) -> Option<Levels> {
    let drd = DrdLine::parse(line.trim().as_bytes()).ok()?;
    Some([drd.lp, drd.leq, drd.lmax, drd.lmin, drd.lpeak].map(|l| l.map(|d| tenths(d.db()))))
}

/// The meter index (device `s<i>`) and levels of a record's JSON text,
/// read without parsing the whole record.
fn levels_of_record(json: &str) -> Option<(usize, Levels)> {
    let at = json.find("\"device\":\"s")? + 11;
    let rest = &json[at..];
    let meter = rest[..rest.find('"')?].parse().ok()?;
    let metrics = &json[json.find("\"metrics\":{")? + 11..];
    let metrics = &metrics[..metrics.find('}')?];
    let mut levels = [None; 5];
    for (level, name) in levels.iter_mut().zip(LEVEL_NAMES) {
        let key = format!("\"{name}\":");
        let at = metrics.find(&key)? + key.len();
        let rest = &metrics[at..];
        let value = rest[..rest.find(',').unwrap_or(rest.len())].trim();
        *level = match value {
            "null" => None,
            v => Some(tenths(v.parse().ok()?)),
        };
    }
    Some((meter, levels))
}

/// Latencies of `got` against what each meter `sent`: each receipt matched
/// to the newest reading of its meter with the same levels written before
/// it. Also how many found no match.
fn stream_latencies(
    sent: &[Vec<(Instant, Levels)>],
    got: &[(Instant, usize, Levels)],
) -> (Vec<Duration>, usize) {
    let mut unmatched = 0;
    let latencies = got
        .iter()
        .filter_map(|(at, meter, levels)| {
            let sent = sent.get(*meter)?;
            let before = sent.partition_point(|(written, _)| written <= at);
            let found = sent[..before]
                .iter()
                .rev()
                .find(|(_, l)| l == levels)
                .map(|(written, _)| *at - *written);
            if found.is_none() {
                unmatched += 1;
            }
            found
        })
        .collect();
    (latencies, unmatched)
}

/// Streaming meter number `i`.
fn stream_simulator(i: usize) -> Simulator {
    Simulator::new(SimConfig {
        seed: 4343 + i as u64,
        ..SimConfig::default()
    })
}

/// The simulator's end of a meter connection, noting when each `DRD?` line
/// is written: the time is taken just before the write that completes the
/// line, so no reader can have the line earlier.
struct Timed<S> {
    io: S,
    sent: Sent,
    line: Vec<u8>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let at = Instant::now();
        let this = &mut *self;
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            for &byte in &buf[..n] {
                if byte != b'\n' {
                    this.line.push(byte);
                    continue;
                }
                if let Some(levels) = levels_of_drd(&String::from_utf8_lossy(&this.line)) {
                    this.sent.lock().expect("sent").push((at, levels));
                }
                this.line.clear();
            }
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `sim` to the clients of `listener`, one after the other, each
/// connection [`Timed`] into `sent`.
async fn serve_timed(
    sim: Simulator,
    listener: tokio::net::TcpListener,
    sent: Sent,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((socket, _)) = accepted else { return };
        let _ = socket.set_nodelay(true);
        let io = Timed {
            io: socket,
            sent: sent.clone(),
            line: Vec::new(),
        };
        let _ = sim.serve_stream(io, stop.clone()).await;
    }
}

/// Waits until every meter has written `n` readings (at most 30 s).
async fn until_streaming(sent: &[Sent], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.iter().any(|s| s.lock().expect("sent").len() < n) {
        assert!(Instant::now() < deadline, "the meters never streamed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One SSE subscriber of the streaming case: records `(received, meter,
/// levels)` for every record after the opening snapshot (the records
/// before the first `event:`) until `stop`; adds the `missed` counts of
/// `event: lagged` to `lagged`.
async fn stream_subscriber(
    api: String,
    got: Got,
    lagged: Arc<AtomicU64>,
    ready: Arc<tokio::sync::Barrier>,
    stop: CancellationToken,
) {
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("http://{api}/v1/stream"))
        .send()
        .await
        .expect("stream opens");
    ready.wait().await;
    let mut pending = String::new();
    let mut snapshot = true;
    // The `event:` name of the event being read, if any.
    let mut event: Option<String> = None;
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => return,
            chunk = response.chunk() => chunk,
        };
        let Ok(Some(chunk)) = chunk else { return };
        let at = Instant::now();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim_end();
            if line.is_empty() {
                event = None;
            } else if let Some(name) = line.strip_prefix("event:") {
                snapshot = false;
                event = Some(name.trim().to_owned());
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_deref() {
                    None if !snapshot => {
                        if let Some((meter, levels)) = levels_of_record(data) {
                            got.lock().expect("got").push((at, meter, levels));
                        }
                    }
                    Some("lagged") => {
                        let missed = data
                            .split_once("\"missed\":")
                            .and_then(|(_, n)| n.trim_end_matches('}').trim().parse().ok())
                            .unwrap_or(0);
                        lagged.fetch_add(missed, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A streaming run's result from its window.
fn stream_run(
    label: String,
    sent: &[Sent],
    got: &[(Instant, usize, Levels)],
    cpu: Duration,
    fanout: usize,
    window: Duration,
) -> Run {
    let sent: Vec<_> = sent
        .iter()
        .map(|s| s.lock().expect("sent").clone())
        .collect();
    let (latencies, unmatched) = stream_latencies(&sent, got);
    let detail = format!(
        "{unmatched} unmatched; {} deliveries expected ({STREAM_METERS} meters × 10/s × {fanout} × window)",
        STREAM_METERS * 10 * fanout * window.as_secs() as usize
    );
    Run {
        label,
        deliveries: got.len(),
        latencies,
        cpu,
        load: load_average(),
        detail: Some(detail),
    }
}

async fn measure_slmd_stream(dir: &Path, subscribers: usize, window: Duration) -> (Run, u64) {
    let stop = CancellationToken::new();
    let mut devices = String::new();
    let mut sent = Vec::new();
    for i in 0..STREAM_METERS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let meter = listener.local_addr().expect("addr");
        let _ = write!(
            devices,
            "[[device]]\nid = \"s{i}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{meter}\"\nmode = \"stream\"\n\n"
        );
        let s: Sent = Arc::default();
        tokio::spawn(serve_timed(
            stream_simulator(i),
            listener,
            s.clone(),
            stop.clone(),
        ));
        sent.push(s);
    }
    let run_dir = dir.join(format!("slmd-stream-{subscribers}"));
    std::fs::create_dir_all(&run_dir).expect("dir");
    let daemon = Daemon::start(&run_dir, &devices);
    let got: Got = Arc::default();
    let lagged = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    for _ in 0..subscribers {
        tokio::spawn(stream_subscriber(
            daemon.api.clone(),
            got.clone(),
            lagged.clone(),
            ready.clone(),
            stop.clone(),
        ));
    }
    ready.wait().await;
    until_streaming(&sent, 10).await;
    let pid = daemon.child.id();
    got.lock().expect("got").clear();
    let lagged_before = lagged.load(Ordering::Relaxed);
    let cpu_before = cpu_time(pid);
    tokio::time::sleep(window).await;
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    let got = std::mem::take(&mut *got.lock().expect("got"));
    let (rss, hwm) = memory_kib(pid);
    let lagged = lagged.load(Ordering::Relaxed) - lagged_before;
    stop.cancel();
    drop(daemon);
    let mut run = stream_run(
        format!("slmd SSE stream, {subscribers:>3} subscribers"),
        &sent,
        &got,
        cpu,
        subscribers,
        window,
    );
    if let Some(detail) = &mut run.detail {
        let _ = write!(
            detail,
            "; {lagged} missed (lagged); daemon RSS {:.1} MiB at end, peak {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    (run, hwm.max(rss))
}

async fn measure_ser2net_stream(dir: &Path, clients: usize, window: Duration) -> Option<Run> {
    let stop = CancellationToken::new();
    let mut config = String::new();
    let mut sent = Vec::new();
    // All ports taken at once, so no two are the same.
    let listeners: Vec<_> = (0..STREAM_METERS)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    drop(listeners);
    for (i, port) in ports.iter().enumerate() {
        let sim = stream_simulator(i);
        let s: Sent = Arc::default();
        follow_readings(&sim, s.clone());
        let pty = sim
            .open_pty(Some(dir.join(format!("ttySTREAM{i}"))))
            .expect("pty");
        let _ = write!(
            config,
            "connection: &s{i}\n  accepter: tcp,127.0.0.1,{}\n  connector: serialdev,{},38400n81,local\n  options:\n    max-connections: {}\n",
            port,
            pty.path().display(),
            clients + 1
        );
        let pty_stop = stop.clone();
        tokio::spawn(async move { pty.serve(pty_stop).await });
        sent.push(s);
    }
    let config_path = dir.join("ser2net-stream.yaml");
    std::fs::write(&config_path, config).expect("write ser2net config");
    let mut child = match Command::new("ser2net")
        .arg("-n")
        .arg("-c")
        .arg(&config_path)
        .arg("-P")
        .arg(dir.join("ser2net-stream.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("ser2net not run ({e}); install the Debian package ser2net");
            return None;
        }
    };
    let got: Got = Arc::default();
    // Every write half is kept: dropping one half-closes its connection,
    // and ser2net drops a client that did. The first of each port starts
    // its meter's output.
    let mut starters = Vec::new();
    let mut writers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (meter, port) in ports.iter().enumerate() {
        let addr = format!("127.0.0.1:{port}");
        for client in 0..clients {
            let stream = loop {
                match tokio::net::TcpStream::connect(&addr).await {
                    Ok(s) => break s,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("ser2net does not accept connections: {e}"),
                }
            };
            let (read, write) = stream.into_split();
            if client == 0 {
                starters.push(write);
            } else {
                writers.push(write);
            }
            let got = got.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(read).lines();
                loop {
                    let line = tokio::select! {
                        () = stop.cancelled() => return,
                        line = lines.next_line() => line,
                    };
                    let Ok(Some(line)) = line else { return };
                    let at = Instant::now();
                    if let Some(levels) = levels_of_drd(&line) {
                        got.lock().expect("got").push((at, meter, levels));
                    }
                }
            });
        }
    }
    for starter in &mut starters {
        let _ = starter.write_all(b"DRD?\r\n").await;
    }
    until_streaming(&sent, 10).await;
    got.lock().expect("got").clear();
    let cpu_before = cpu_time(child.id());
    tokio::time::sleep(window).await;
    let cpu = cpu_time(child.id()).saturating_sub(cpu_before);
    let got = std::mem::take(&mut *got.lock().expect("got"));
    for starter in &mut starters {
        let _ = starter.write_all(&[DRD_STOP]).await;
    }
    stop.cancel();
    let _ = child.kill();
    let _ = child.wait();
    Some(stream_run(
        format!("ser2net stream, {clients:>3} clients/port"),
        &sent,
        &got,
        cpu,
        clients,
        window,
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let window = if full {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut runs = Vec::new();
        for subscribers in [1, 10, 100] {
            runs.push(measure_slmd(dir.path(), subscribers, window).await);
        }
        if let Some(run) = measure_ser2net(dir.path(), 100, window).await {
            runs.push(run);
        }
        let (slmd, peak_kib) = measure_slmd_stream(dir.path(), STREAM_FANOUT, window).await;
        let ser2net = measure_ser2net_stream(dir.path(), STREAM_FANOUT, window).await;
        println!(
            "window {} s per run, one meter at 1 reading/s",
            window.as_secs()
        );
        for run in &runs {
            run.print();
        }
        println!(
            "window {} s per run, {STREAM_METERS} meters streaming at 10 Hz",
            window.as_secs()
        );
        slmd.print();
        if let Some(ser2net) = &ser2net {
            ser2net.print();
        }
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let p99 = slmd.p99();
        println!(
            "streaming targets: p99 {:.3} ms ≤ 2 ms: {}",
            p99.as_secs_f64() * 1e3,
            verdict(p99 <= Duration::from_millis(2))
        );
        if let Some(ser2net) = &ser2net {
            let ratio = slmd.per_delivery() / ser2net.per_delivery().max(f64::MIN_POSITIVE);
            println!(
                "                   CPU per delivery {:.2} × ser2net's ≤ 0.5: {}",
                ratio,
                verdict(ratio <= 0.5)
            );
        }
        println!(
            "                   daemon RSS peak {:.1} MiB ≤ 15 MiB: {}",
            peak_kib as f64 / 1024.0,
            verdict(peak_kib <= 15 * 1024)
        );
    });
}
