//! Frames `#…;` out of an arbitrary byte stream.
//!
//! Rules:
//! - A frame starts at `#` and ends at `;`. The frame handed out is the
//!   bytes from `#` up to, not including, the `;` (`#2,1,T3,R64.50`).
//! - Between frames, CR, LF, space and tab are ignored; any other byte is
//!   junk: dropped and counted ([`FrameSplitter::junk`]).
//! - **\[guess\]** A `#` inside a frame means the frame in progress was cut
//!   short: its bytes are dropped (counted as junk) and a new frame starts
//!   at the `#`. No value in the documented replies contains a `#`.
//! - A frame longer than the capacity `N` is reported once as
//!   [`FrameFeed::Overlong`]; its bytes up to the next `;` (or `#`) are
//!   dropped and framing resumes. Memory never grows past `N`.
//!
//! The same bytes give the same frames however reads split them.

use heapless::Vec;

/// What one call to [`FrameSplitter::feed`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameFeed<'frame, 'input> {
    /// Every input byte was taken; no frame is complete yet.
    Consumed,
    /// A complete frame, `#` included, `;` excluded. Call `feed` again with
    /// `remaining` to continue.
    Frame {
        /// The frame's bytes; valid until the next call to `feed`.
        frame: &'frame [u8],
        /// Input bytes not yet looked at.
        remaining: &'input [u8],
    },
    /// The current frame exceeded the capacity and is being dropped up to
    /// the next `;` or `#`. Call `feed` again with `remaining`.
    Overlong {
        /// Input bytes not yet looked at.
        remaining: &'input [u8],
    },
}

/// Accumulates bytes into `#…;` frames of at most `N` bytes.
#[derive(Debug, Clone, Default)]
pub struct FrameSplitter<const N: usize> {
    /// The frame under construction, starting with its `#`.
    buf: Vec<u8, N>,
    /// Inside a frame (a `#` was seen and its `;` not yet).
    in_frame: bool,
    /// Set after an over-long frame until its `;` (or a new `#`) arrives, so
    /// its tail is not taken for junk or for a frame.
    discarding: bool,
    /// A frame was handed out from `buf`; it is cleared before new bytes
    /// land (not earlier: the caller still borrows it).
    emitted: bool,
    /// Junk bytes dropped so far (saturating): lets the driver see noise.
    junk: u32,
}

impl<const N: usize> FrameSplitter<N> {
    /// An empty splitter.
    pub const fn new() -> Self {
        FrameSplitter {
            buf: Vec::new(),
            in_frame: false,
            discarding: false,
            emitted: false,
            junk: 0,
        }
    }

    /// Drops any partial frame (e.g. stale input before a new request). The
    /// junk count is kept.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.in_frame = false;
        self.discarding = false;
        self.emitted = false;
    }

    /// Bytes of the frame under construction.
    pub fn pending(&self) -> usize {
        if self.emitted { 0 } else { self.buf.len() }
    }

    /// Junk bytes dropped outside frames and from cut-short frames
    /// (saturating at `u32::MAX`).
    pub fn junk(&self) -> u32 {
        self.junk
    }

    /// Takes bytes from `input` until a frame completes, a frame overflows,
    /// or the input is exhausted.
    pub fn feed<'s, 'i>(&'s mut self, input: &'i [u8]) -> FrameFeed<'s, 'i> {
        if self.emitted {
            self.buf.clear();
            self.emitted = false;
        }
        let mut rest = input;
        while let Some((&byte, after)) = rest.split_first() {
            rest = after;
            if byte == b'#' {
                if self.in_frame && !self.discarding {
                    self.add_junk(self.buf.len());
                }
                self.buf.clear();
                self.discarding = false;
                self.in_frame = true;
                // Cannot fail for N >= 1; for N == 0 every frame is over-long.
                if self.buf.push(byte).is_err() {
                    self.discarding = true;
                    return FrameFeed::Overlong { remaining: rest };
                }
                continue;
            }
            if !self.in_frame {
                if !matches!(byte, b'\r' | b'\n' | b' ' | b'\t') {
                    self.add_junk(1);
                }
                continue;
            }
            if byte == b';' {
                self.in_frame = false;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                self.emitted = true;
                return FrameFeed::Frame {
                    frame: self.buf.as_slice(),
                    remaining: rest,
                };
            }
            if self.discarding {
                continue;
            }
            if self.buf.push(byte).is_err() {
                self.buf.clear();
                self.discarding = true;
                return FrameFeed::Overlong { remaining: rest };
            }
        }
        FrameFeed::Consumed
    }

    fn add_junk(&mut self, bytes: usize) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.junk = self.junk.saturating_add(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec as StdVec;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Event {
        Frame(StdVec<u8>),
        Overlong,
    }

    fn run<const N: usize>(s: &mut FrameSplitter<N>, chunks: &[&[u8]]) -> StdVec<Event> {
        let mut events = StdVec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            loop {
                match s.feed(rest) {
                    FrameFeed::Consumed => break,
                    FrameFeed::Frame { frame, remaining } => {
                        events.push(Event::Frame(frame.to_vec()));
                        rest = remaining;
                    }
                    FrameFeed::Overlong { remaining } => {
                        events.push(Event::Overlong);
                        rest = remaining;
                    }
                }
            }
        }
        events
    }

    fn frame(s: &str) -> Event {
        Event::Frame(s.as_bytes().to_vec())
    }

    #[test]
    fn splits_frames_and_counts_junk() {
        let mut s = FrameSplitter::<64>::new();
        let events = run(
            &mut s,
            &[b"xx#2,1,T3,V0,P76", b".92,R64.50;\r\n#2,?;", b"  #1,U971;"],
        );
        assert_eq!(
            events,
            [
                frame("#2,1,T3,V0,P76.92,R64.50"),
                frame("#2,?"),
                frame("#1,U971")
            ]
        );
        assert_eq!(s.junk(), 2);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn a_new_hash_restarts_a_cut_frame() {
        let mut s = FrameSplitter::<64>::new();
        assert_eq!(run(&mut s, &[b"#2,1,T3#2,?;"]), [frame("#2,?")]);
        assert_eq!(s.junk(), 7);
    }

    #[test]
    fn overlong_frame_is_reported_once_and_framing_resumes() {
        let mut s = FrameSplitter::<8>::new();
        let events = run(&mut s, &[b"#2,1,T3,V0,P76.92;#2,?;"]);
        assert_eq!(events, [Event::Overlong, frame("#2,?")]);
        let mut s = FrameSplitter::<8>::new();
        let events = run(&mut s, &[b"#2,1,T3,V0,P76.92#2,?;"]);
        assert_eq!(events, [Event::Overlong, frame("#2,?")]);
    }

    #[test]
    fn clear_drops_a_partial_frame() {
        let mut s = FrameSplitter::<64>::new();
        assert_eq!(run(&mut s, &[b"#2,1,T"]), []);
        assert_eq!(s.pending(), 6);
        s.clear();
        assert_eq!(run(&mut s, &[b"3;#2,?;"]), [frame("#2,?")]);
        assert_eq!(s.junk(), 2);
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

    fn svantekish() -> impl Strategy<Value = StdVec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just(b"#2,1,".to_vec()),
                Just(b"R64.50,".to_vec()),
                Just(b";".to_vec()),
                Just(b"#".to_vec()),
                Just(b"\r\n".to_vec()),
                prop::collection::vec(any::<u8>(), 0..30),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn never_panics_and_frames_are_bounded(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut s = FrameSplitter::<32>::new();
            for event in run(&mut s, &[&bytes]) {
                if let Event::Frame(f) = event {
                    prop_assert!(f.len() <= 32);
                    prop_assert_eq!(f.first(), Some(&b'#'));
                    prop_assert!(!f.contains(&b';') && !f[1..].contains(&b'#'));
                }
            }
            prop_assert!(s.pending() <= 32);
        }

        #[test]
        fn framing_does_not_depend_on_how_reads_split_the_stream(
            bytes in svantekish(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut whole_s = FrameSplitter::<48>::new();
            let whole = run(&mut whole_s, &[&bytes]);
            let chunks = split_at_cuts(&bytes, &cuts);
            let refs: StdVec<&[u8]> = chunks.iter().map(StdVec::as_slice).collect();
            let mut split_s = FrameSplitter::<48>::new();
            let split = run(&mut split_s, &refs);
            prop_assert_eq!(whole, split);
            prop_assert_eq!(whole_s.junk(), split_s.junk());
        }
    }
}
