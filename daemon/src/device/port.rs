//! A link with the timing rules every command/answer meter shares.
//!
//! A [`Port`] owns the byte link, a bounded read buffer and a deframer
//! (lines for NL-43, XL2 and Casella; `;`-frames for Svantek), and keeps:
//! - a command goes out in one write, never sooner than `command_gap`
//!   after the previous answer ended;
//! - input left over from an earlier exchange is discarded before sending
//!   (counted as stale bytes);
//! - over-long units are dropped and counted, never buffered without bound.
//!
//! What an answer looks like (result lines, one line per parameter, a
//! frame) is the family's business; it reads units with
//! [`Port::next_unit`] under its own deadline and calls
//! [`Port::answer_ended`].

use super::driver::{LinkError, NoiseCounters};
use super::link::Link;
use firmware_bridge::svantek::{FrameFeed, FrameSplitter};
use firmware_bridge::{Feed, LineFramer};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes read from the link at a time.
const READ_CHUNK: usize = 4096;

/// One step of cutting input into units.
pub enum Step {
    /// All input taken; no unit complete yet.
    Consumed,
    /// A complete unit, and how many input bytes it used.
    Unit {
        /// The line or frame, without its terminator.
        unit: Vec<u8>,
        /// Input bytes taken.
        used: usize,
    },
    /// A unit over the capacity was dropped; input bytes taken.
    Overlong {
        /// Input bytes taken.
        used: usize,
    },
}

/// Cuts a byte stream into units (lines, frames).
pub trait Deframer: Send {
    /// Takes input; see [`Step`].
    fn step(&mut self, input: &[u8]) -> Step;
    /// Forgets a partial unit.
    fn clear(&mut self);
    /// Bytes of a partial unit held.
    fn pending(&self) -> usize;
}

impl<const N: usize> Deframer for LineFramer<N> {
    fn step(&mut self, input: &[u8]) -> Step {
        let before = input.len();
        match self.feed(input) {
            Feed::Consumed => Step::Consumed,
            Feed::Line { line, remaining } => Step::Unit {
                unit: line.to_vec(),
                used: before - remaining.len(),
            },
            Feed::Overlong { remaining } => Step::Overlong {
                used: before - remaining.len(),
            },
        }
    }
    fn clear(&mut self) {
        LineFramer::clear(self);
    }
    fn pending(&self) -> usize {
        LineFramer::pending(self)
    }
}

impl<const N: usize> Deframer for FrameSplitter<N> {
    fn step(&mut self, input: &[u8]) -> Step {
        let before = input.len();
        match self.feed(input) {
            FrameFeed::Consumed => Step::Consumed,
            FrameFeed::Frame { frame, remaining } => Step::Unit {
                unit: frame.to_vec(),
                used: before - remaining.len(),
            },
            FrameFeed::Overlong { remaining } => Step::Overlong {
                used: before - remaining.len(),
            },
        }
    }
    fn clear(&mut self) {
        FrameSplitter::clear(self);
    }
    fn pending(&self) -> usize {
        FrameSplitter::pending(self)
    }
}

/// A link, its deframer and its pacing.
pub struct Port<D> {
    link: Link,
    deframer: D,
    /// Raw bytes read but not yet deframed.
    inbuf: Box<[u8; READ_CHUNK]>,
    in_start: usize,
    in_end: usize,
    /// When the previous answer ended; the next command waits `command_gap`.
    last_answer_end: Option<Instant>,
    /// When the last command went out (some meters pace by it).
    last_sent: Option<Instant>,
    /// How long an answer may take.
    pub answer_timeout: Duration,
    command_gap: Duration,
    /// Line noise seen so far.
    pub noise: NoiseCounters,
}

impl<D: Deframer> Port<D> {
    /// A port over `link`.
    pub fn new(link: Link, deframer: D, answer_timeout: Duration, command_gap: Duration) -> Self {
        Port {
            link,
            deframer,
            inbuf: Box::new([0; READ_CHUNK]),
            in_start: 0,
            in_end: 0,
            last_answer_end: None,
            last_sent: None,
            answer_timeout,
            command_gap,
            noise: NoiseCounters::default(),
        }
    }

    /// Waits the command gap, discards stale input, and writes `bytes` in
    /// one write.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        if let Some(end) = self.last_answer_end {
            tokio::time::sleep_until(end + self.command_gap).await;
        }
        self.discard_stale_input().await?;
        self.last_sent = Some(Instant::now());
        self.write_now(bytes).await
    }

    /// Writes `bytes` at once: no gap, nothing discarded (a stop byte in
    /// the middle of continuous output).
    pub async fn write_now(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.link.write_all(bytes).await?;
        self.link.flush().await?;
        Ok(())
    }

    /// The answer (or the wait for it) ended now: the next command waits
    /// the gap from here.
    pub fn answer_ended(&mut self) {
        self.last_answer_end = Some(Instant::now());
    }

    /// When the last command was sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// The deadline of an answer to a command sent now.
    pub fn answer_deadline(&self) -> Instant {
        Instant::now() + self.answer_timeout
    }

    /// The next complete unit from the link (no deadline: the caller sets
    /// one).
    pub async fn next_unit(&mut self) -> Result<Vec<u8>, LinkError> {
        loop {
            if self.in_start < self.in_end {
                let input = &self.inbuf[self.in_start..self.in_end];
                match self.deframer.step(input) {
                    Step::Consumed => self.in_start = self.in_end,
                    Step::Unit { unit, used } => {
                        self.in_start += used;
                        return Ok(unit);
                    }
                    Step::Overlong { used } => {
                        self.noise.overlong_lines += 1;
                        self.in_start += used;
                    }
                }
                continue;
            }
            self.in_start = 0;
            self.in_end = 0;
            let n = self.link.read(&mut self.inbuf[..]).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.in_end = n;
        }
    }

    /// The next unit before `deadline`, or `None` when it passed.
    pub async fn next_unit_until(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, LinkError> {
        match tokio::time::timeout_at(deadline, self.next_unit()).await {
            Ok(unit) => unit.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Drops whatever already waits in the link and the deframer:
    /// leftovers of an earlier exchange must not be mistaken for the next
    /// answer.
    pub async fn discard_stale_input(&mut self) -> Result<(), LinkError> {
        self.noise.stale_bytes += (self.in_end - self.in_start + self.deframer.pending()) as u64;
        self.in_start = 0;
        self.in_end = 0;
        self.deframer.clear();
        loop {
            let ready = tokio::select! {
                // Polled first: takes bytes that are already there...
                biased;
                read = self.link.read(&mut self.inbuf[..]) => Some(read),
                // ...and stops as soon as none are.
                () = std::future::ready(()) => None,
            };
            match ready {
                None => return Ok(()),
                Some(Ok(0)) => return Err(LinkError::Closed),
                Some(Ok(n)) => self.noise.stale_bytes += n as u64,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}
