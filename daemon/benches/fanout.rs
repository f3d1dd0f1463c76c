//! Fan-out benchmark (the acceptance figures of the local fan-out issue).
//!
//! Run with `cargo bench -p slmd --bench fanout` (about two minutes on two
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
//! Under `cargo test --benches` every window is cut to a few seconds.

use firmware_bridge::nl43::DodReading;
use slmd_hil::{SimConfig, SimEvent, Simulator};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
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

struct Run {
    label: String,
    deliveries: usize,
    latencies: Vec<Duration>,
    cpu: Duration,
}

impl Run {
    fn print(&self) {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let per = if self.deliveries == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / self.deliveries as f64
        };
        println!(
            "{:<34} {:>6} deliveries  latency p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms  CPU {:>6} ms = {:>6.1} µs/delivery",
            self.label,
            self.deliveries,
            percentile(&sorted, 0.5).as_secs_f64() * 1e3,
            percentile(&sorted, 0.99).as_secs_f64() * 1e3,
            sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            self.cpu.as_millis(),
            per
        );
    }
}

/// The real daemon on one TCP meter, its API on a free port.
struct Daemon {
    child: Child,
    api: String,
}

impl Daemon {
    fn start(dir: &Path, meter: &str) -> Daemon {
        let config = dir.join("slmd.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"bench\"\nstate_dir = \"{}\"\n\n[[device]]\nid = \"m\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{meter}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
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
    let daemon = Daemon::start(&run_dir, &meter);
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
    })
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
        println!(
            "window {} s per run, one meter at 1 reading/s",
            window.as_secs()
        );
        for run in &runs {
            run.print();
        }
    });
}
