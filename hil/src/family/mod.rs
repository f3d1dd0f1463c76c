//! Simulator personalities for the meter families after the NL-43: NTi XL2
//! ([`xl2`]), Svantek SVAN 97x ([`svantek`]) and Casella CEL-63x
//! ([`casella`]).
//!
//! Each personality is written from its protocol note in
//! `shared/protocols/`, independently of the daemon's codecs in
//! `firmware-bridge` (those are checked against these simulators). Only the
//! family-neutral pieces are shared: the level walk and its integration
//! (`levels.rs`) and the line framer.
//!
//! The seam is the [`Personality`] trait: how input is framed, what one
//! frame answers, what is pushed on a timer. One generic [`FamilySession`]
//! serves every personality on any byte stream and applies the faults
//! around each answer or push, the same menu as the NL-43's:
//! - junk (probability per answer or push): the personality's own junk
//!   form, written before the answer;
//! - split: the answer written in 1–7-byte pieces with 0–15 ms pauses;
//! - stall (probability per answer or push): the answer delayed;
//! - silence: frames are read, counted and ignored, pushes are skipped;
//! - `drop_every`: applied by whoever serves the link, as for the NL-43.
//!
//! The meter's state (measurement, error queue, snapshot, logging clock)
//! lives in the personality, shared by every connection, locked only for
//! synchronous work. A command that changes the run state is announced
//! (`measure`) by the session, which compares [`Personality::running`]
//! before and after the answer; a power cycle
//! ([`Personality::power_cycle`]) is the simulator's to announce.

pub(crate) mod casella;
pub(crate) mod svantek;
pub(crate) mod xl2;

use crate::Shared;
use crate::config::{Family, SimConfig};
use crate::levels::{Integrator, LevelControl, LevelSource, SAMPLE_PERIOD, Sample, Summary};
use crate::report::Metrics;
use firmware_bridge::{Feed, LineFramer};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, MissedTickBehavior};

/// The longest gap for which samples are generated one by one; a longer
/// idle meter resumes sampling from the last day.
const MAX_CATCH_UP: Duration = Duration::from_secs(24 * 3600);
/// Longest line (XL2) or frame (Svantek) taken; longer ones are dropped.
const MAX_FRAME: usize = 512;
/// Longest junk, bytes.
const MAX_JUNK: usize = 12;

/// How a personality's input is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Lines ending in LF (a CR before it is removed).
    Lines,
    /// `#…;` frames; bytes outside a frame are ignored.
    Hash,
    /// Nothing is read as a command: input is counted and ignored.
    Ignore,
}

/// What a personality writes, and the reading it carries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Output {
    /// The bytes, terminators included.
    pub bytes: Vec<u8>,
    /// The reading these bytes carry, if any.
    pub reading: Option<Reading>,
}

/// A reading as written.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    /// Metric names of SPEC §3 and the values written.
    pub metrics: Metrics,
    /// The meter's time carried on the wire, as UTC text.
    pub device_time: Option<String>,
}

/// A meter family's behaviour, without I/O.
pub(crate) trait Personality: Send {
    /// Which family it is.
    fn family(&self) -> Family;
    /// How input is framed.
    fn framing(&self) -> Framing;
    /// The answer to one frame (a line without its terminator, or a whole
    /// `#…;` frame) that arrived at `now`; `None` answers nothing.
    fn answer(&mut self, frame: &[u8], now: Instant) -> Option<Output>;
    /// Whether a measurement runs.
    fn running(&self) -> bool;
    /// The meter loses power and comes back at `now`: stopped (except a
    /// meter that has no start command), nothing integrated, volatile state
    /// (error queue, snapshot) gone; its clock and counters are kept.
    fn power_cycle(&mut self, now: Instant);
    /// A new link starts being served at `now`.
    fn connected(&mut self, _now: Instant) {}
    /// How often [`Personality::push`] is called while a link is served.
    fn push_period(&self) -> Option<Duration> {
        None
    }
    /// What the meter sends on its own at `now`.
    fn push(&mut self, _now: Instant) -> Option<Output> {
        None
    }
    /// Junk in this family's form, written before an answer or a push.
    fn junk(&self, rng: &mut fastrand::Rng) -> Vec<u8>;
}

/// The personality for `config.family` (`None` for the NL-43, which has its
/// own meter and session).
pub(crate) fn personality(config: &SimConfig, now: Instant) -> Option<Box<dyn Personality>> {
    match config.family {
        Family::Nl43 => None,
        Family::Xl2 => Some(Box::new(xl2::Xl2::new(config, now))),
        Family::Svantek => Some(Box::new(svantek::Svantek::new(config, now))),
        Family::Casella => Some(Box::new(casella::Casella::new(config, now))),
    }
}

/// A meter's sound levels: the 10 Hz walk and the measurement, sampled
/// lazily up to the moment something asks.
#[derive(Debug)]
pub(crate) struct Walk {
    /// The live levels.
    source: LevelSource,
    /// When the next sample is due.
    next_sample: Instant,
    /// The latest sample.
    pub latest: Sample,
    /// The measurement in progress, if measuring.
    pub run: Option<Integrator>,
    /// The last finished measurement (what a stopped meter still shows).
    pub last: Option<Integrator>,
}

impl Walk {
    /// A walk seeded by `seed` and steered by `control` (offset, calm),
    /// measuring from `now` if `measuring`.
    pub fn new(seed: u64, now: Instant, measuring: bool, control: LevelControl) -> Walk {
        let mut source = LevelSource::with_control(seed, control);
        let latest = source.next_sample();
        Walk {
            source,
            next_sample: now + SAMPLE_PERIOD,
            latest,
            run: measuring.then(Integrator::default),
            last: None,
        }
    }

    /// Generates the samples due up to `now`; each also goes to `also`.
    pub fn advance(&mut self, now: Instant, mut also: impl FnMut(Sample)) {
        if now.saturating_duration_since(self.next_sample) > MAX_CATCH_UP {
            self.next_sample = now - MAX_CATCH_UP;
        }
        while self.next_sample <= now {
            let sample = self.source.next_sample();
            self.latest = sample;
            if let Some(run) = self.run.as_mut() {
                run.add(sample);
            }
            also(sample);
            self.next_sample += SAMPLE_PERIOD;
        }
    }

    /// Starts a new measurement (the previous result is kept until it ends).
    pub fn start(&mut self) {
        self.run = Some(Integrator::default());
    }

    /// Powers up again at `now`: measuring from then if `measuring`, with
    /// no previous result (the walk itself goes on).
    pub fn power_up(&mut self, now: Instant, measuring: bool) {
        self.advance(now, |_| {});
        self.run = measuring.then(Integrator::default);
        self.last = None;
    }

    /// Ends the measurement; its result stays shown.
    pub fn stop(&mut self) {
        if let Some(run) = self.run.take() {
            self.last = Some(run);
        }
    }

    /// Whether a measurement runs.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// What the display shows: the running measurement, else the last one.
    pub fn shown(&self) -> Option<&Integrator> {
        self.run.as_ref().or(self.last.as_ref())
    }

    /// The shown measurement's summary, once it has integrated one second.
    pub fn shown_summary(&self) -> Option<(Summary, &Integrator)> {
        let shown = self.shown()?;
        let summary = shown.summary()?;
        (summary.count >= crate::levels::SAMPLES_PER_SECOND).then_some((summary, shown))
    }
}

/// Derives a per-family seed so the families' walks differ from the NL-43's
/// for the same `--seed`.
pub(crate) fn family_seed(seed: u64, family: Family) -> u64 {
    seed ^ (family as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Random junk bytes, none of them in `forbidden`.
pub(crate) fn junk_bytes(rng: &mut fastrand::Rng, forbidden: &[u8]) -> Vec<u8> {
    let len = rng.usize(1..=MAX_JUNK);
    (0..len)
        .map(|_| {
            loop {
                let b = rng.u8(..);
                if !forbidden.contains(&b) {
                    break b;
                }
            }
        })
        .collect()
}

/// Cuts input into frames as a personality's [`Framing`] says.
enum Framer {
    /// LF-terminated lines.
    Lines(Box<LineFramer<MAX_FRAME>>),
    /// `#…;` frames: the frame under construction, if one started.
    Hash(Option<Vec<u8>>),
    /// Input is not read as commands.
    Ignore,
}

impl Framer {
    fn new(framing: Framing) -> Framer {
        match framing {
            Framing::Lines => Framer::Lines(Box::new(LineFramer::keeping_prompts())),
            Framing::Hash => Framer::Hash(None),
            Framing::Ignore => Framer::Ignore,
        }
    }

    /// The frames completed by `input`.
    fn feed(&mut self, mut input: &[u8]) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        match self {
            Framer::Lines(framer) => loop {
                match framer.feed(input) {
                    Feed::Consumed => break,
                    Feed::Line { line, remaining } => {
                        frames.push(line.to_vec());
                        input = remaining;
                    }
                    Feed::Overlong { remaining } => {
                        tracing::debug!("over-long command line dropped");
                        input = remaining;
                    }
                }
            },
            Framer::Hash(partial) => {
                for &b in input {
                    match (b, partial.as_mut()) {
                        // A `#` always starts a frame (an unfinished one is dropped).
                        (b'#', _) => *partial = Some(vec![b'#']),
                        (_, None) => {}
                        (b';', Some(frame)) => {
                            frame.push(b';');
                            frames.extend(partial.take());
                        }
                        (_, Some(frame)) if frame.len() >= MAX_FRAME => {
                            tracing::debug!("over-long frame dropped");
                            *partial = None;
                        }
                        (_, Some(frame)) => frame.push(b),
                    }
                }
            }
            Framer::Ignore => {}
        }
        frames
    }
}

/// One connection of a family personality being served.
pub(crate) struct FamilySession<'a, S> {
    /// The simulator: config, recorder, silence window.
    shared: &'a Shared,
    /// The meter (shared by every link).
    meter: &'a Mutex<Box<dyn Personality>>,
    /// The link's byte stream.
    io: S,
    /// Dice for the faults of this link (seeded per connection).
    rng: fastrand::Rng,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> FamilySession<'a, S> {
    pub(crate) fn new(
        shared: &'a Shared,
        meter: &'a Mutex<Box<dyn Personality>>,
        io: S,
        connection: u64,
    ) -> Self {
        let seed = shared
            .config
            .seed
            .wrapping_add(connection.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        FamilySession {
            shared,
            meter,
            io,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The meter, tolerant of a poisoned lock; never held across `.await`.
    fn personality(&self) -> MutexGuard<'a, Box<dyn Personality>> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serves until the peer closes the link (`Ok`) or it fails (`Err`).
    pub(crate) async fn run(&mut self) -> io::Result<()> {
        let (framing, period) = {
            let mut p = self.personality();
            p.connected(Instant::now());
            (p.framing(), p.push_period())
        };
        let mut framer = Framer::new(framing);
        let mut ticks = period.map(|period| {
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        let mut buf = [0u8; 1024];
        loop {
            enum Wake {
                Read(io::Result<usize>),
                Tick,
            }
            let tick = async {
                match ticks.as_mut() {
                    Some(ticks) => {
                        ticks.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let wake = tokio::select! {
                // Input from the host.
                read = self.io.read(&mut buf) => Wake::Read(read),
                // The meter's own output is due.
                () = tick => Wake::Tick,
            };
            match wake {
                Wake::Read(read) => {
                    let n = read?;
                    if n == 0 {
                        return Ok(());
                    }
                    let arrival = Instant::now();
                    if framing == Framing::Ignore {
                        self.shared.recorder.record(|s| {
                            s.ignored_bytes += n as u64;
                            None
                        });
                        continue;
                    }
                    for frame in framer.feed(&buf[..n]) {
                        self.handle_frame(&frame, arrival).await?;
                    }
                }
                Wake::Tick => {
                    let now = Instant::now();
                    if self.shared.is_silent(now) {
                        continue;
                    }
                    let output = self.personality().push(now);
                    if let Some(output) = output {
                        self.deliver(output).await?;
                    }
                }
            }
        }
    }

    async fn handle_frame(&mut self, frame: &[u8], arrival: Instant) -> io::Result<()> {
        self.shared.recorder.record(|s| {
            s.commands += 1;
            None
        });
        if self.shared.is_silent(arrival) {
            tracing::debug!(command = %String::from_utf8_lossy(frame), "silent: command ignored");
            return Ok(());
        }
        let (output, family, changed) = {
            let mut p = self.personality();
            let running = p.running();
            let output = p.answer(frame, arrival);
            let changed = (p.running() != running).then(|| p.running());
            (output, p.family(), changed)
        };
        if let Some(running) = changed {
            self.shared.recorder.measure(family, running);
        }
        match output {
            Some(output) => self.deliver(output).await,
            None => Ok(()),
        }
    }

    /// Writes `output` with the faults around it, then reports its reading.
    async fn deliver(&mut self, output: Output) -> io::Result<()> {
        let shared = self.shared;
        let faults = &shared.config.faults;
        let mut bytes = Vec::with_capacity(output.bytes.len() + MAX_JUNK + 2);
        if roll(&mut self.rng, faults.junk) {
            bytes.extend(self.personality().junk(&mut self.rng));
            self.shared.recorder.fault("junk");
        }
        bytes.extend_from_slice(&output.bytes);
        if let Some((p, delay)) = faults.stall {
            if roll(&mut self.rng, p) {
                self.shared.recorder.fault("stall");
                tokio::time::sleep(delay).await;
            }
        }
        self.send(&bytes).await?;
        if let Some(reading) = output.reading {
            let family = self.personality().family();
            self.shared
                .recorder
                .reading(family, reading.metrics, reading.device_time, false);
        }
        Ok(())
    }

    /// Writes `bytes`, in random pieces with pauses under the `split` fault.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let split = self.shared.config.faults.split;
        crate::session::write_maybe_split(&mut self.io, bytes, split, &mut self.rng).await
    }
}

/// `true` with probability `p`.
fn roll(rng: &mut fastrand::Rng, p: f64) -> bool {
    p > 0.0 && rng.f64() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_framing_skips_noise_and_restarts_on_hash() {
        let mut framer = Framer::new(Framing::Hash);
        assert!(framer.feed(b"xx#2,").is_empty());
        assert_eq!(
            framer.feed(b"s;\r\n#1,U?;"),
            vec![b"#2,s;".to_vec(), b"#1,U?;".to_vec()]
        );
        assert_eq!(framer.feed(b"#2#1;"), vec![b"#1;".to_vec()]);
    }

    #[test]
    fn line_framing_takes_lf_and_crlf() {
        let mut framer = Framer::new(Framing::Lines);
        assert_eq!(
            framer.feed(b"*IDN?\nINIT START\r\nMEAS"),
            vec![b"*IDN?".to_vec(), b"INIT START".to_vec()]
        );
        assert_eq!(framer.feed(b":INIT\n"), vec![b"MEAS:INIT".to_vec()]);
    }
}
