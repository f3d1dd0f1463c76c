//! One link's conversation: framing commands, writing answers, and the
//! per-answer faults.
//!
//! A [`Session`] owns the byte stream of one connection (a TCP socket, a pty
//! master, an in-memory duplex) and nothing else: the meter's state is
//! shared, locked only for the synchronous [`crate::meter::Meter::handle`]
//! call, never across an `.await`. Every `.await` in here is a point where
//! the session may be cancelled (shutdown, the `drop_every` fault): dropping
//! the session mid-answer is what a vanishing link looks like.
//!
//! Input rules (the meter side of `protocols/nl43.md`):
//! - Lines end at LF, a trailing CR is removed, a leading `$` is kept (and
//!   makes the command unknown).
//! - A partial line whose next bytes arrive more than [`CHAR_GAP`] later is
//!   dropped, as the meter drops a command whose characters arrive > 100 ms
//!   apart.
//! - A SUB byte (0x1A) ends `DRD?` output; outside `DRD?` it is ignored.
//!   While `DRD?` runs every other byte is ignored.
//! - While the meter is silent (fault) or asleep, lines are read, counted
//!   and ignored (and `DRD?` output pauses).
//!
//! An answer is written as: echo line (if echo was on when the command
//! arrived, so `Echo,Off` is itself echoed and `Echo,On` is not), junk
//! (fault), the result line, the data line, the `$` prompt (fault); the
//! 200 ms rule counts from the moment its last byte was written. For `DRD?`
//! the prompt follows the end of the output, and the 200 ms count from the SUB.
//! Events go out once the answer is written: `Result`, then `Dod`, then
//! `Reading` (read back from the line as written: the main channel's `lp
//! leq le lmax lmin l5 l10 l50 l90 l95 lpeak`, no device time). Each `DRD?`
//! line gives a `Reading` of `lp leq lmax lmin lpeak`, with the line's own
//! clock (in UTC: minus `clock_offset_secs`) as device time for `DRD?status`.
//! A command that changes the run state (`Measure`) or sets the clock is
//! announced when the meter acts on it, before its answer is written.

use crate::Shared;
use crate::config::Family;
use crate::meter::{LinkState, Reply};
use crate::report::{Metrics, SimEvent, utc_text};
use firmware_bridge::Deci;
use firmware_bridge::nl43::answer::encode_result;
use firmware_bridge::nl43::{DRD_STOP, DodReading, DrdLine, MAX_LINE, MeterClock, ResultCode};
use firmware_bridge::{Feed, LineFramer};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior};

/// A partial command line older than this is dropped when more bytes come.
pub const CHAR_GAP: Duration = Duration::from_millis(100);
/// `DRD?` output period.
const DRD_PERIOD: Duration = Duration::from_millis(100);
/// The `DRD?` counter runs 1..=this and wraps.
const DRD_COUNTER_MAX: u16 = 600;
/// Longest junk prefix or junk line, bytes.
const MAX_JUNK: usize = 12;

/// One connection being served.
pub(crate) struct Session<'a, S> {
    /// The simulator: meter, config, recorder.
    shared: &'a Shared,
    /// The link's byte stream.
    io: S,
    /// Turns received bytes into command lines.
    framer: LineFramer<MAX_LINE>,
    /// Received bytes not yet looked at.
    input: Vec<u8>,
    /// When `input` arrived: the arrival time of every line completed in it.
    input_at: Instant,
    /// When the last bytes arrived, for the [`CHAR_GAP`] rule.
    last_bytes_at: Option<Instant>,
    /// Pacing and replay state of this link.
    link: LinkState,
    /// Dice for the faults of this link (seeded per connection).
    rng: fastrand::Rng,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> Session<'a, S> {
    pub(crate) fn new(shared: &'a Shared, io: S, connection: u64) -> Self {
        let seed = shared
            .config
            .seed
            .wrapping_add(connection.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        Session {
            shared,
            io,
            framer: LineFramer::keeping_prompts(),
            input: Vec::new(),
            input_at: Instant::now(),
            last_bytes_at: None,
            link: LinkState::new(shared.config.faults.replay),
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Serves until the peer closes the link (`Ok`) or it fails (`Err`).
    pub(crate) async fn run(&mut self) -> io::Result<()> {
        loop {
            if self.input.is_empty() && !self.fill().await? {
                return Ok(());
            }
            self.drop_stray_sub();
            let taken = match self.framer.feed(&self.input) {
                Feed::Consumed => {
                    self.input.clear();
                    continue;
                }
                Feed::Overlong { remaining } => {
                    tracing::debug!("over-long command line dropped");
                    self.input.len() - remaining.len()
                }
                Feed::Line { line, remaining } => {
                    let line = line.to_vec();
                    let taken = self.input.len() - remaining.len();
                    self.input.drain(..taken);
                    self.handle_line(&line).await?;
                    continue;
                }
            };
            self.input.drain(..taken);
        }
    }

    /// Removes SUB bytes from the next line of `input` (a meter not in
    /// `DRD?` ignores them). Only up to the first LF: a SUB after a `DRD?`
    /// line is meant to stop that output.
    fn drop_stray_sub(&mut self) {
        let end = self
            .input
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.input.len(), |lf| lf + 1);
        if self.input[..end].contains(&DRD_STOP) {
            let tail = self.input.split_off(end);
            self.input.retain(|&b| b != DRD_STOP);
            self.input.extend_from_slice(&tail);
        }
    }

    /// Reads the next chunk into `input`; `false` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 1024];
        let n = self.io.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let now = Instant::now();
        if self.framer.pending() > 0
            && self
                .last_bytes_at
                .is_some_and(|t| now.saturating_duration_since(t) > CHAR_GAP)
        {
            tracing::debug!("partial command dropped: its bytes came more than 100 ms apart");
            self.framer.clear();
        }
        self.last_bytes_at = Some(now);
        self.input_at = now;
        self.input.extend_from_slice(&buf[..n]);
        Ok(true)
    }

    async fn handle_line(&mut self, line: &[u8]) -> io::Result<()> {
        let arrival = self.input_at;
        self.shared.recorder.record(|s| {
            s.commands += 1;
            None
        });
        let command = String::from_utf8_lossy(line).into_owned();
        if self.shared.is_silent(arrival) {
            tracing::debug!(%command, "silent: command ignored");
            return Ok(());
        }
        if self.shared.asleep(arrival) {
            tracing::debug!(%command, "asleep: command ignored");
            return Ok(());
        }
        let (reply, echo, changed) = {
            let mut meter = self.shared.meter();
            let echo = meter.echo();
            let (running, sleep_due) = (meter.running(), meter.sleep_due());
            let reply = meter.handle(line, arrival, &mut self.link);
            let changed = Changed {
                running: (meter.running() != running).then(|| meter.running()),
                clock_set: meter.take_clock_set(),
                sleep_timer: meter.sleep_due() != sleep_due,
            };
            (reply, echo, changed)
        };
        if let Some(running) = changed.running {
            self.shared.recorder.measure(Family::Nl43, running);
        }
        if let Some((before, after)) = changed.clock_set {
            self.shared.recorder.clock_set(Family::Nl43, before, after);
        }
        if changed.sleep_timer {
            self.shared.sleep_timer_changed();
        }
        let code = reply.code();
        let mut out = Vec::with_capacity(600);
        if echo {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        if self.roll(self.shared.config.faults.junk) {
            self.push_junk(&mut out);
            self.shared.recorder.fault("junk");
        }
        let mut result = heapless::String::<16>::new();
        // `R+0000\r\n` is 8 bytes: it always fits.
        let _ = encode_result(code, &mut result);
        out.extend_from_slice(result.as_bytes());
        match &reply {
            Reply::Data(data) => {
                out.extend_from_slice(data.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Dod { line, .. } => {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Result(_) | Reply::Drd { .. } => {}
        }
        let drd = matches!(reply, Reply::Drd { .. });
        if self.shared.config.faults.prompts && !drd {
            out.push(b'$');
        }
        if let Some((p, delay)) = self.shared.config.faults.stall {
            if self.roll(p) {
                self.shared.recorder.fault("stall");
                tokio::time::sleep(delay).await;
            }
        }
        self.send(&out).await?;
        self.link.last_answer_end = Some(Instant::now());
        self.shared.recorder.record(|s| {
            if code == ResultCode::StatusError {
                s.busy_answers += 1;
            }
            Some(SimEvent::Result {
                command,
                code: code.to_string(),
            })
        });
        match reply {
            Reply::Dod { line, replayed } => {
                let metrics = dod_metrics(&line);
                self.shared.recorder.record(|s| {
                    s.dod_answers += 1;
                    Some(SimEvent::Dod {
                        n: s.dod_answers,
                        line,
                        replayed,
                    })
                });
                self.shared
                    .recorder
                    .reading(Family::Nl43, metrics, None, replayed);
            }
            Reply::Drd { status } => self.drd(status).await?,
            Reply::Result(_) | Reply::Data(_) => {}
        }
        Ok(())
    }

    /// Streams `DRD?` lines every 100 ms until SUB arrives (or the link ends).
    async fn drd(&mut self, status: bool) -> io::Result<()> {
        // Bytes that came with or after `DRD?` may already hold the SUB.
        let mut counter: u16 = 0;
        let mut ticks = tokio::time::interval_at(Instant::now() + DRD_PERIOD, DRD_PERIOD);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = [0u8; 1024];
        loop {
            if let Some(at) = self.input.iter().position(|&b| b == DRD_STOP) {
                // Everything before SUB was ignored; what follows is new input.
                self.input.drain(..=at);
                break;
            }
            self.input.clear();
            enum Wake {
                Read(io::Result<usize>),
                Tick,
            }
            let wake = tokio::select! {
                // Input from the host: only a SUB matters.
                read = self.io.read(&mut buf) => Wake::Read(read),
                // Time for the next line.
                _ = ticks.tick() => Wake::Tick,
            };
            match wake {
                Wake::Read(read) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    self.input_at = Instant::now();
                    self.last_bytes_at = Some(self.input_at);
                    self.input.extend_from_slice(&buf[..n]);
                }
                Wake::Tick => {
                    let now = Instant::now();
                    if self.shared.is_silent(now) || self.shared.asleep(now) {
                        continue;
                    }
                    counter = counter % DRD_COUNTER_MAX + 1;
                    let line = self.shared.meter().drd_line(now, counter, status);
                    self.send(line.as_bytes()).await?;
                    let offset = self.shared.config.clock_offset_secs;
                    let (metrics, device_time) = drd_metrics(line.trim_end(), offset);
                    self.shared
                        .recorder
                        .reading(Family::Nl43, metrics, device_time, false);
                }
            }
        }
        if self.shared.config.faults.prompts {
            self.send(b"$").await?;
        }
        self.link.last_answer_end = Some(Instant::now());
        Ok(())
    }

    /// Writes `bytes`, in random pieces with pauses under the `split` fault.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let split = self.shared.config.faults.split;
        crate::session::write_maybe_split(&mut self.io, bytes, split, &mut self.rng).await
    }

    /// `true` with probability `p`.
    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.f64() < p
    }

    /// Junk: random bytes without CR, LF, `R` or `+` (so never `R+`), either
    /// as a prefix of the next line or as a line of its own.
    fn push_junk(&mut self, out: &mut Vec<u8>) {
        let len = self.rng.usize(1..=MAX_JUNK);
        for _ in 0..len {
            let byte = loop {
                let b = self.rng.u8(..);
                if !matches!(b, b'\r' | b'\n' | b'R' | b'+') {
                    break b;
                }
            };
            out.push(byte);
        }
        if self.rng.bool() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What one command changed that the session announces.
struct Changed {
    /// The run state, if it changed.
    running: Option<bool>,
    /// The offsets before and after an accepted `Clock,...`.
    clock_set: Option<(f64, f64)>,
    /// Whether the moment the meter falls asleep moved.
    sleep_timer: bool,
}

/// Adds a level as written (`None`: dashes).
fn push_level(metrics: &mut Metrics, name: &str, level: Option<Deci>) {
    let text = level.map(|d| d.to_string());
    metrics.push_text(name, text.as_deref());
}

/// The main channel of a `DOD?` data line as written.
fn dod_metrics(line: &str) -> Metrics {
    let mut metrics = Metrics::new();
    let Ok(reading) = DodReading::parse(line.as_bytes()) else {
        return metrics;
    };
    let m = reading.main();
    for (name, level) in [
        ("lp", m.lp),
        ("leq", m.leq),
        ("le", m.le),
        ("lmax", m.lmax),
        ("lmin", m.lmin),
    ] {
        push_level(&mut metrics, name, level);
    }
    for (name, level) in ["l5", "l10", "l50", "l90", "l95"].into_iter().zip(m.ln) {
        push_level(&mut metrics, name, level);
    }
    push_level(&mut metrics, "lpeak", m.lpeak);
    metrics
}

/// A `DRD?` line's levels as written, and the UTC time of a `DRD?status`
/// line's clock (the meter's clock reads as UTC + `offset` seconds).
fn drd_metrics(line: &str, offset: i64) -> (Metrics, Option<String>) {
    let mut metrics = Metrics::new();
    let Ok(drd) = DrdLine::parse(line.as_bytes()) else {
        return (metrics, None);
    };
    for (name, level) in [
        ("lp", drd.lp),
        ("leq", drd.leq),
        ("lmax", drd.lmax),
        ("lmin", drd.lmin),
        ("lpeak", drd.lpeak),
    ] {
        push_level(&mut metrics, name, level);
    }
    // After the sixth field: three sub-channel levels, two flags, then the clock.
    let time = drd
        .rest
        .split(|&b| b == b',')
        .nth(5)
        .and_then(|clock| MeterClock::parse(clock).ok())
        .and_then(|clock| utc_text(clock.local_epoch_seconds().saturating_sub(offset)));
    (metrics, time)
}

/// Writes `bytes` to `io`: at once, or under the `split` fault in random
/// pieces of 1..=7 bytes with 0..=15 ms pauses between them.
pub(crate) async fn write_maybe_split<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    split: bool,
    rng: &mut fastrand::Rng,
) -> io::Result<()> {
    if !split {
        io.write_all(bytes).await?;
        return io.flush().await;
    }
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = rng.usize(1..=7).min(rest.len());
        let (piece, after) = rest.split_at(n);
        io.write_all(piece).await?;
        io.flush().await?;
        rest = after;
        let pause = rng.u64(0..=15);
        if !rest.is_empty() && pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    Ok(())
}
