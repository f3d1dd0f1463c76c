//! One NL-43 command exchange at a time over an open link.
//!
//! Owns the protocol's timing and resync rules (protocols/nl43.md):
//! - a command goes out in one write, never sooner than `command_gap` after
//!   the previous answer ended;
//! - input left over from an earlier exchange is discarded before sending;
//! - the answer is found by its result line `R+dddd` (echoed commands, junk
//!   and prompts before it are skipped and counted); a successful request's
//!   data line follows it;
//! - the whole answer must arrive within `answer_timeout`.

use crate::device::link::Link;
use firmware_bridge::nl43::{Command, ResultCode};
use firmware_bridge::{Feed, LineFramer};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Longest line accepted from a meter; longer lines are dropped and counted.
const MAX_LINE: usize = 1024;

/// Why an exchange failed. Every variant means the link should be treated
/// as suspect.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No complete answer within the answer timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The link closed (the meter or the serial device went away).
    #[error("link closed by the meter")]
    Closed,
    /// Reading or writing the link failed.
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    /// The command could not be encoded (a bug in the caller).
    #[error("cannot encode command: {0}")]
    Encode(firmware_bridge::Error),
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `R+0000` and, for a request, its data line.
    Ok(Option<Vec<u8>>),
    /// Any other result code.
    Refused(ResultCode),
}

/// Counters of line noise seen on this link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NoiseCounters {
    /// Lines skipped while looking for the result line (echo, junk).
    pub skipped_lines: u64,
    /// Lines longer than the framer's capacity, dropped.
    pub overlong_lines: u64,
    /// Bytes of stale input discarded before sending a command.
    pub stale_bytes: u64,
}

/// A command/answer session over one link.
pub struct Session {
    link: Link,
    framer: LineFramer<MAX_LINE>,
    /// Raw bytes read but not yet framed.
    inbuf: Box<[u8; 4096]>,
    in_start: usize,
    in_end: usize,
    /// When the previous answer ended; the next command waits `command_gap`.
    last_answer_end: Option<Instant>,
    /// When the last command went out (the meter paces some commands by it).
    last_sent: Option<Instant>,
    answer_timeout: Duration,
    command_gap: Duration,
    /// Line noise seen so far.
    pub noise: NoiseCounters,
}

impl Session {
    /// A session over `link` with the meter's timing rules.
    pub fn new(link: Link, answer_timeout: Duration, command_gap: Duration) -> Session {
        Session {
            link,
            framer: LineFramer::new(),
            inbuf: Box::new([0; 4096]),
            in_start: 0,
            in_end: 0,
            last_answer_end: None,
            last_sent: None,
            answer_timeout,
            command_gap,
            noise: NoiseCounters::default(),
        }
    }

    /// Sends `command` and waits for its answer. `expects_data`: a request
    /// whose `R+0000` is followed by one data line.
    pub async fn exchange(
        &mut self,
        command: Command<'_>,
        expects_data: bool,
    ) -> Result<Answer, ExchangeError> {
        if let Some(end) = self.last_answer_end {
            tokio::time::sleep_until(end + self.command_gap).await;
        }
        self.discard_stale_input().await?;
        let mut wire = heapless::String::<256>::new();
        command.encode(&mut wire).map_err(ExchangeError::Encode)?;
        self.last_sent = Some(Instant::now());
        self.link.write_all(wire.as_bytes()).await?;
        self.link.flush().await?;

        let deadline = Instant::now() + self.answer_timeout;
        let result = tokio::time::timeout_at(deadline, self.read_answer(expects_data))
            .await
            .map_err(|_| ExchangeError::Timeout(self.answer_timeout));
        // Pace from the end of the answer, or from the give-up point.
        self.last_answer_end = Some(Instant::now());
        result?
    }

    /// When the last command was sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    async fn read_answer(&mut self, expects_data: bool) -> Result<Answer, ExchangeError> {
        let code = loop {
            let line = self.read_line().await?;
            match ResultCode::parse(&line) {
                Ok(code) => break code,
                Err(_) => self.noise.skipped_lines += 1,
            }
        };
        if code != ResultCode::Ok {
            return Ok(Answer::Refused(code));
        }
        if !expects_data {
            return Ok(Answer::Ok(None));
        }
        Ok(Answer::Ok(Some(self.read_line().await?)))
    }

    /// The next complete line from the link.
    async fn read_line(&mut self) -> Result<Vec<u8>, ExchangeError> {
        loop {
            if self.in_start < self.in_end {
                let input = &self.inbuf[self.in_start..self.in_end];
                let before = input.len();
                match self.framer.feed(input) {
                    Feed::Consumed => {
                        self.in_start = self.in_end;
                    }
                    Feed::Line { line, remaining } => {
                        let line = line.to_vec();
                        self.in_start += before - remaining.len();
                        return Ok(line);
                    }
                    Feed::Overlong { remaining } => {
                        self.noise.overlong_lines += 1;
                        self.in_start += before - remaining.len();
                    }
                }
                continue;
            }
            self.in_start = 0;
            self.in_end = 0;
            let n = self.link.read(&mut self.inbuf[..]).await?;
            if n == 0 {
                return Err(ExchangeError::Closed);
            }
            self.in_end = n;
        }
    }

    /// Drops whatever already waits in the link and the framer: leftovers of
    /// an earlier exchange must not be mistaken for the next answer.
    async fn discard_stale_input(&mut self) -> Result<(), ExchangeError> {
        self.noise.stale_bytes += (self.in_end - self.in_start + self.framer.pending()) as u64;
        self.in_start = 0;
        self.in_end = 0;
        self.framer.clear();
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
                Some(Ok(0)) => return Err(ExchangeError::Closed),
                Some(Ok(n)) => self.noise.stale_bytes += n as u64,
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_bridge::nl43::Item;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A session over one end of an in-memory pipe; the test plays the meter
    /// on the other end.
    fn pair() -> (Session, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4096);
        (
            Session::new(Box::pin(ours), Duration::from_millis(500), Duration::ZERO),
            theirs,
        )
    }

    #[tokio::test]
    async fn skips_echo_junk_and_prompts_then_takes_the_data_line() {
        let (mut session, meter) = pair();
        let (rd, mut wr) = tokio::io::split(meter);
        let meter = tokio::spawn(async move {
            let mut lines = BufReader::new(rd).lines();
            let cmd = lines.next_line().await.ok().flatten();
            wr.write_all(b"DOD?\r\n\x07junk\r\n$xx R+0000\r\n$ 58.3, 60.0\r\n$")
                .await
                .ok();
            cmd
        });
        let answer = session.exchange(Command::Request(Item::Dod), true).await;
        assert_eq!(answer.ok(), Some(Answer::Ok(Some(b" 58.3, 60.0".to_vec()))));
        assert_eq!(session.noise.skipped_lines, 2);
        assert_eq!(meter.await.ok().flatten().as_deref(), Some("DOD?"));
    }

    #[tokio::test]
    async fn stale_input_is_discarded_before_the_next_command() {
        let (mut session, mut meter) = pair();
        meter.write_all(b"R+0000\r\n 11.1, 11.1\r\n").await.ok();
        // Let the stale bytes land in the pipe before the command goes out.
        tokio::task::yield_now().await;
        let meter = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let _ = meter.read(&mut buf).await;
            meter.write_all(b"R+0004\r\n").await.ok();
            meter
        });
        let answer = session.exchange(Command::Request(Item::Dod), true).await;
        assert_eq!(answer.ok(), Some(Answer::Refused(ResultCode::StatusError)));
        assert!(session.noise.stale_bytes >= 20);
        drop(meter.await);
    }

    #[tokio::test]
    async fn a_silent_meter_times_out() {
        let (mut session, _meter) = pair();
        let answer = session
            .exchange(Command::Request(Item::Measure), true)
            .await;
        assert!(matches!(answer, Err(ExchangeError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_closed_link_is_reported() {
        let (mut session, meter) = pair();
        drop(meter);
        let answer = session
            .exchange(Command::Request(Item::Measure), true)
            .await;
        assert!(matches!(
            answer,
            Err(ExchangeError::Closed | ExchangeError::Io(_))
        ));
    }
}
