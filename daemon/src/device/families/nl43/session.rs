//! One NL-43 command exchange at a time over an open [`Port`].
//!
//! Owns the protocol's timing and resync rules (protocols/nl43.md):
//! - a command goes out in one write, never sooner than `command_gap` after
//!   the previous answer ended;
//! - input left over from an earlier exchange is discarded before sending;
//! - the answer is found by its result line `R+dddd` (echoed commands, junk
//!   and prompts before it are skipped and counted); a successful request's
//!   data line follows it;
//! - the whole answer must arrive within `answer_timeout`.

use crate::device::driver::{LinkError, NoiseCounters};
use crate::device::link::Link;
use crate::device::port::Port;
use firmware_bridge::LineFramer;
use firmware_bridge::nl43::{Command, ResultCode};
use std::time::Duration;
use tokio::time::Instant;

/// Longest line accepted from a meter; longer lines are dropped and counted.
const MAX_LINE: usize = 1024;

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `R+0000` and, for a request, its data line.
    Ok(Option<Vec<u8>>),
    /// Any other result code.
    Refused(ResultCode),
}

/// A command/answer session over one link.
pub struct Session {
    port: Port<LineFramer<MAX_LINE>>,
}

impl Session {
    /// A session over `link` with the meter's timing rules.
    pub fn new(link: Link, answer_timeout: Duration, command_gap: Duration) -> Session {
        Session {
            port: Port::new(link, LineFramer::new(), answer_timeout, command_gap),
        }
    }

    /// Sends `command` and waits for its answer. `expects_data`: a request
    /// whose `R+0000` is followed by one data line.
    pub async fn exchange(
        &mut self,
        command: Command<'_>,
        expects_data: bool,
    ) -> Result<Answer, LinkError> {
        let mut wire = heapless::String::<256>::new();
        command.encode(&mut wire).map_err(LinkError::Encode)?;
        self.port.send(wire.as_bytes()).await?;
        let deadline = self.port.answer_deadline();
        let result = tokio::time::timeout_at(deadline, self.read_answer(expects_data))
            .await
            .map_err(|_| LinkError::Timeout(self.port.answer_timeout));
        // Pace from the end of the answer, or from the give-up point.
        self.port.answer_ended();
        result?
    }

    /// When the last command was sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.port.last_sent()
    }

    /// Line noise seen so far.
    pub fn noise(&self) -> NoiseCounters {
        self.port.noise
    }

    /// The port, for continuous output (`DRD?`).
    pub fn port(&mut self) -> &mut Port<LineFramer<MAX_LINE>> {
        &mut self.port
    }

    async fn read_answer(&mut self, expects_data: bool) -> Result<Answer, LinkError> {
        let code = loop {
            let line = self.port.next_unit().await?;
            match ResultCode::parse(&line) {
                Ok(code) => break code,
                Err(_) => self.port.noise.skipped_lines += 1,
            }
        };
        if code != ResultCode::Ok {
            return Ok(Answer::Refused(code));
        }
        if !expects_data {
            return Ok(Answer::Ok(None));
        }
        Ok(Answer::Ok(Some(self.port.next_unit().await?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware_bridge::nl43::Item;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

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
        assert_eq!(session.noise().skipped_lines, 2);
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
        assert!(session.noise().stale_bytes >= 20);
        drop(meter.await);
    }

    #[tokio::test]
    async fn a_silent_meter_times_out() {
        let (mut session, _meter) = pair();
        let answer = session
            .exchange(Command::Request(Item::Measure), true)
            .await;
        assert!(matches!(answer, Err(LinkError::Timeout(_))));
    }

    #[tokio::test]
    async fn a_closed_link_is_reported() {
        let (mut session, meter) = pair();
        drop(meter);
        let answer = session
            .exchange(Command::Request(Item::Measure), true)
            .await;
        assert!(matches!(answer, Err(LinkError::Closed | LinkError::Io(_))));
    }
}
