//! Test helpers: a host-side NL-43 client that keeps the protocol's pacing,
//! waiting on simulator events with deadlines, and a pty client.
#![allow(dead_code)] // each test file uses a different part

use firmware_bridge::nl43::{DodReading, ResultCode};
use firmware_bridge::{Deci, Feed, LineFramer};
use slmd_hil::SimEvent;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The host's quiet time after an answer (protocol: ≥ 200 ms).
pub const HOST_GAP: Duration = Duration::from_millis(250);
/// The host's time between `DOD?` polls (protocol: ≥ 1 s).
pub const HOST_DOD_INTERVAL: Duration = Duration::from_millis(1050);

/// A host talking to the meter, pacing itself as the protocol asks.
pub struct Client<S> {
    pub io: S,
    /// Host-side framing: strips `$` prompts.
    framer: LineFramer<512>,
    /// Complete lines not yet consumed.
    lines: VecDeque<Vec<u8>>,
    /// When the last complete answer was read.
    pub last_answer: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Client {
            io,
            framer: LineFramer::new(),
            lines: VecDeque::new(),
            last_answer: None,
        }
    }

    /// Waits out the quiet time after the last answer.
    pub async fn pace(&self) {
        if let Some(at) = self.last_answer {
            tokio::time::sleep_until(at + HOST_GAP).await;
        }
    }

    /// Writes raw bytes in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write to the meter");
        self.io.flush().await.expect("flush");
    }

    /// The next line (without CR LF and prompts), or `None` at end of stream.
    pub async fn try_line(&mut self, within: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(within, self.next_line())
            .await
            .expect("a line from the meter in time")
    }

    /// The next line as text; fails the test at end of stream or timeout.
    pub async fn line(&mut self) -> String {
        let line = self
            .try_line(DEADLINE)
            .await
            .expect("the meter closed the link");
        String::from_utf8_lossy(&line).into_owned()
    }

    async fn next_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Some(line);
            }
            let mut buf = [0u8; 1024];
            let n = self.io.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            let mut rest = &buf[..n];
            loop {
                match self.framer.feed(rest) {
                    Feed::Consumed => break,
                    Feed::Line { line, remaining } => {
                        self.lines.push_back(line.to_vec());
                        rest = remaining;
                    }
                    Feed::Overlong { remaining } => rest = remaining,
                }
            }
        }
    }

    /// Reads lines until a result line; returns its code and the lines
    /// skipped before it (echo, junk, leftovers).
    pub async fn result(&mut self) -> (ResultCode, Vec<String>) {
        let mut skipped = Vec::new();
        loop {
            let line = self.line().await;
            match ResultCode::parse(line.as_bytes()) {
                Ok(code) => return (code, skipped),
                Err(_) => skipped.push(line),
            }
        }
    }

    /// Sends `command` (paced), reads its result and, for a request that
    /// succeeded, its data line.
    pub async fn ask(&mut self, command: &str) -> (ResultCode, Option<String>) {
        self.pace().await;
        self.send_raw(format!("{command}\r\n").as_bytes()).await;
        let (code, _) = self.result().await;
        let data = if code == ResultCode::Ok && command.contains('?') {
            Some(self.line().await)
        } else {
            None
        };
        self.last_answer = Some(Instant::now());
        (code, data)
    }

    /// `DOD?`, expecting a data line that parses.
    pub async fn dod(&mut self) -> (String, DodReading) {
        let (code, data) = self.ask("DOD?").await;
        assert_eq!(code, ResultCode::Ok, "DOD? answered {code}");
        let line = data.expect("a data line");
        let reading = DodReading::parse(line.as_bytes())
            .unwrap_or_else(|e| panic!("DOD line does not parse ({e}): {line:?}"));
        (line, reading)
    }
}

/// Waits for the first event matching `want`, failing after [`DEADLINE`].
pub async fn wait_event(
    events: &mut broadcast::Receiver<SimEvent>,
    what: &str,
    want: impl Fn(&SimEvent) -> bool,
) -> SimEvent {
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Ok(event) if want(&event) => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("events closed before {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {what} event in time"))
}

/// Whether `event` is a fault of `kind`.
pub fn is_fault(event: &SimEvent, kind: &str) -> bool {
    matches!(event, SimEvent::Fault { kind: k } if k == kind)
}

/// Whether `io` reads end of file (or fails) within [`DEADLINE`]; data
/// read before is dropped.
pub async fn closed<S: AsyncRead + Unpin>(io: &mut S) -> bool {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    read.unwrap_or(false)
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "{what} did not happen in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Tenths of a level, or `None` for dashes.
fn t(v: Option<Deci>) -> Option<i16> {
    v.map(Deci::tenths)
}

/// Checks the meter's invariants on the main channel: Lmax ≥ Leq ≥ Lmin,
/// Lpeak > Lmax, L5 ≥ … ≥ L95 where present; channels 1..3 off.
pub fn assert_invariants(reading: &DodReading, line: &str) {
    let m = reading.main();
    assert!(m.lp.is_some(), "Lp missing: {line}");
    if let (Some(leq), Some(lmax), Some(lmin)) = (t(m.leq), t(m.lmax), t(m.lmin)) {
        assert!(
            lmax >= leq && leq >= lmin,
            "Lmax ≥ Leq ≥ Lmin broken: {line}"
        );
    }
    if let (Some(lpeak), Some(lmax)) = (t(m.lpeak), t(m.lmax)) {
        assert!(lpeak > lmax, "Lpeak > Lmax broken: {line}");
    }
    let ln: Vec<i16> = m.ln.iter().filter_map(|v| t(*v)).collect();
    assert!(
        ln.windows(2).all(|w| w[0] >= w[1]),
        "L5 ≥ … ≥ L95 broken: {line}"
    );
    assert!(
        m.overload.is_some() && m.under_range.is_some(),
        "main channel flags: {line}"
    );
    for channel in &reading.channels[1..] {
        assert!(
            channel.levels().iter().all(Option::is_none),
            "sub-channel on: {line}"
        );
    }
}

/// A host's open slave of a pty, as a tokio byte stream.
pub struct PtyClient {
    fd: AsyncFd<std::fs::File>,
}

impl PtyClient {
    /// Opens `path` read-write, without making it the controlling terminal.
    pub fn open(path: &std::path::Path) -> io::Result<PtyClient> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_NONBLOCK).bits())
            .open(path)?;
        // SAFETY: the `File` owns its descriptor for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register(file) }?;
        Ok(PtyClient { fd })
    }
}

impl AsyncRead for PtyClient {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| f.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A hung-up pty reads as EIO: the device is gone.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyClient {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A simulator serving TCP on a free loopback port.
pub struct TcpSim {
    pub sim: slmd_hil::Simulator,
    pub addr: std::net::SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub server: tokio::task::JoinHandle<io::Result<()>>,
}

impl TcpSim {
    pub async fn start(config: slmd_hil::SimConfig) -> TcpSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let sim = slmd_hil::Simulator::new(config);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let (sim, shutdown) = (sim.clone(), shutdown.clone());
            async move { sim.serve_tcp(listener, shutdown).await }
        });
        TcpSim {
            sim,
            addr,
            shutdown,
            server,
        }
    }

    pub async fn client(&self) -> Client<tokio::net::TcpStream> {
        Client::new(
            tokio::net::TcpStream::connect(self.addr)
                .await
                .expect("connect"),
        )
    }

    /// Stops the server and checks it ended cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
    }
}

pub mod family;
