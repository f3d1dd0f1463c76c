//! Line framing over an arbitrary byte stream.
//!
//! Meters speak ASCII lines ending in CR LF, but a serial port or a TCP socket
//! hands over whatever chunk happened to arrive: half a line, three lines and
//! a bit, a lone `$` prompt. [`LineFramer`] accepts any chunking and yields
//! the same lines for the same bytes however they were split.
//!
//! Rules:
//! - A line ends at LF; a trailing CR (or several) is removed.
//! - With prompt stripping on (the host side), leading `$` bytes are removed:
//!   the meter's ready prompt is not part of any answer.
//! - Empty lines are skipped.
//! - A line longer than the capacity `N` is reported once as
//!   [`Feed::Overlong`]; its bytes up to the next LF are dropped and framing
//!   resumes after it. Memory never grows past `N`.

use heapless::Vec;

/// What one call to [`LineFramer::feed`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed<'line, 'input> {
    /// Every input byte was taken; no line is complete yet.
    Consumed,
    /// A complete, non-empty line (without CR LF). Call `feed` again with
    /// `remaining` to continue.
    Line {
        /// The line's bytes; valid until the next call to `feed`.
        line: &'line [u8],
        /// Input bytes not yet looked at.
        remaining: &'input [u8],
    },
    /// The current line exceeded the capacity and is being dropped up to the
    /// next LF. Call `feed` again with `remaining`.
    Overlong {
        /// Input bytes not yet looked at.
        remaining: &'input [u8],
    },
}

/// Accumulates bytes into lines of at most `N` bytes.
#[derive(Debug, Clone)]
pub struct LineFramer<const N: usize> {
    /// The line under construction.
    buf: Vec<u8, N>,
    /// Set after an over-long line until its LF arrives, so the tail of that
    /// line is not mistaken for a line of its own.
    discarding: bool,
    /// A line was handed out from `buf`; it is cleared before new bytes land
    /// (it cannot be cleared earlier: the caller still borrows it).
    emitted: bool,
    /// Remove leading `$` prompts (the host reading a meter); off when reading
    /// commands, where a `$` is part of what was sent.
    strip_prompt: bool,
}

impl<const N: usize> Default for LineFramer<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LineFramer<N> {
    /// A framer for the host side of a meter link: strips `$` prompts.
    pub const fn new() -> Self {
        LineFramer {
            buf: Vec::new(),
            discarding: false,
            emitted: false,
            strip_prompt: true,
        }
    }

    /// A framer that keeps leading `$` bytes (the meter side, reading commands).
    pub const fn keeping_prompts() -> Self {
        LineFramer {
            buf: Vec::new(),
            discarding: false,
            emitted: false,
            strip_prompt: false,
        }
    }

    /// Drops any partial line (e.g. stale input before a new command).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
        self.emitted = false;
    }

    /// Bytes of the line under construction.
    pub fn pending(&self) -> usize {
        if self.emitted { 0 } else { self.buf.len() }
    }

    /// Takes bytes from `input` until a line completes, a line overflows, or
    /// the input is exhausted.
    pub fn feed<'s, 'i>(&'s mut self, input: &'i [u8]) -> Feed<'s, 'i> {
        if self.emitted {
            self.buf.clear();
            self.emitted = false;
        }
        for (i, &byte) in input.iter().enumerate() {
            if byte == b'\n' {
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                let mut end = self.buf.len();
                while end > 0 && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                let mut start = 0;
                if self.strip_prompt {
                    while start < end && self.buf[start] == b'$' {
                        start += 1;
                    }
                }
                if start == end {
                    self.buf.clear();
                    continue;
                }
                self.emitted = true;
                return Feed::Line {
                    line: &self.buf[start..end],
                    remaining: &input[i + 1..],
                };
            }
            if self.discarding {
                continue;
            }
            if self.buf.push(byte).is_err() {
                self.buf.clear();
                self.discarding = true;
                return Feed::Overlong {
                    remaining: &input[i + 1..],
                };
            }
        }
        Feed::Consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as StdVec;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Event {
        Line(StdVec<u8>),
        Overlong,
    }

    /// Feeds `chunks` in order and records every event.
    fn run<const N: usize>(framer: &mut LineFramer<N>, chunks: &[&[u8]]) -> StdVec<Event> {
        let mut events = StdVec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            loop {
                match framer.feed(rest) {
                    Feed::Consumed => break,
                    Feed::Line { line, remaining } => {
                        events.push(Event::Line(line.to_vec()));
                        rest = remaining;
                    }
                    Feed::Overlong { remaining } => {
                        events.push(Event::Overlong);
                        rest = remaining;
                    }
                }
            }
        }
        events
    }

    fn line(s: &str) -> Event {
        Event::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_crlf_lines_and_strips_prompts() {
        let mut f = LineFramer::<64>::new();
        let events = run(
            &mut f,
            &[b"$R+00", b"00\r\n 58.3, 61.2\r", b"\n\r\n$$Start\r\n"],
        );
        assert_eq!(events, [line("R+0000"), line(" 58.3, 61.2"), line("Start")]);
    }

    #[test]
    fn keeps_prompts_when_reading_commands() {
        let mut f = LineFramer::<64>::keeping_prompts();
        assert_eq!(
            run(&mut f, &[b"$Measure,Start\r\n"]),
            [line("$Measure,Start")]
        );
    }

    #[test]
    fn overlong_line_is_reported_once_and_framing_resumes() {
        let mut f = LineFramer::<8>::new();
        let events = run(&mut f, &[b"0123456789abcdef\r\nR+0000\r\n"]);
        assert_eq!(events, [Event::Overlong, line("R+0000")]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn clear_drops_a_partial_line() {
        let mut f = LineFramer::<64>::new();
        assert_eq!(run(&mut f, &[b"stale par"]), []);
        f.clear();
        assert_eq!(run(&mut f, &[b"R+0001\r\n"]), [line("R+0001")]);
    }

    fn split_at_cuts(bytes: &[u8], cuts: &[usize]) -> StdVec<StdVec<u8>> {
        let mut points: StdVec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = StdVec::new();
        let mut start = 0;
        for p in points {
            chunks.push(bytes[start..p].to_vec());
            start = p;
        }
        chunks.push(bytes[start..].to_vec());
        chunks
    }

    /// Streams that look like meter traffic: lines, prompts, junk, CR/LF.
    fn meterish() -> impl Strategy<Value = StdVec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just(b"\r\n".to_vec()),
                Just(b"$".to_vec()),
                Just(b"R+0000".to_vec()),
                Just(b" 58.3,".to_vec()),
                prop::collection::vec(any::<u8>(), 0..40),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn never_panics_and_lines_are_bounded(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut f = LineFramer::<32>::new();
            for event in run(&mut f, &[&bytes]) {
                if let Event::Line(l) = event {
                    prop_assert!(!l.is_empty() && l.len() <= 32);
                    prop_assert!(!l.contains(&b'\n'));
                    prop_assert!(l[0] != b'$' && *l.last().unwrap_or(&0) != b'\r');
                }
            }
            prop_assert!(f.pending() <= 32);
        }

        #[test]
        fn framing_does_not_depend_on_how_reads_split_the_stream(
            bytes in meterish(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = run(&mut LineFramer::<48>::new(), &[&bytes]);
            let chunks = split_at_cuts(&bytes, &cuts);
            let refs: StdVec<&[u8]> = chunks.iter().map(StdVec::as_slice).collect();
            let split = run(&mut LineFramer::<48>::new(), &refs);
            prop_assert_eq!(whole, split);
        }
    }
}
