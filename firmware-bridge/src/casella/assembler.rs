//! Lines of one logging period → one reading.
//!
//! The meter sends several lines per logging period, all with the same date
//! and time. [`Assembler`] keeps the group in progress and hands it out
//! when a line with a different time arrives (later, or earlier after a
//! clock step: either way a new period) or when the driver calls
//! [`Assembler::flush`] after a quiet gap. It holds at most one group and
//! never allocates.
//!
//! Within a group a metric sent twice keeps the last value and is counted in
//! [`Assembled::repeated`]. Spectrum and unknown lines join the group by
//! time but only add to its counters; a group may therefore carry no
//! metrics at all (the driver then makes no record).

use crate::Centi;
use crate::casella::line::{LineKind, MeterTime, PushedLine};

/// Most distinct metrics one reading holds (the tag table has fewer).
pub const MAX_METRICS: usize = 16;

/// One logging period's reading.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assembled {
    /// The period's timestamp (the meter's local time).
    pub time: MeterTime,
    /// (record metric, level) in first-arrival order; `None` for a blank value.
    pub metrics: heapless::Vec<(&'static str, Option<Centi>), MAX_METRICS>,
    /// Spectrum lines in the period (skipped; counted for status).
    pub octave_lines: u16,
    /// Lines with an unknown tag in the period, plus any metric beyond
    /// [`MAX_METRICS`] (saturating).
    pub unknown_lines: u16,
    /// Lines that repeated a metric already in the period (last one wins).
    pub repeated: u16,
}

impl Assembled {
    /// An empty group at `time`.
    pub fn new(time: MeterTime) -> Assembled {
        Assembled {
            time,
            metrics: heapless::Vec::new(),
            octave_lines: 0,
            unknown_lines: 0,
            repeated: 0,
        }
    }

    /// The level of `metric`: `None` if no line carried it, `Some(None)` for
    /// a blank value.
    pub fn get(&self, metric: &str) -> Option<Option<Centi>> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, level)| *level)
    }

    /// Adds one line's content (its time is not checked here).
    fn add(&mut self, kind: &LineKind) {
        match *kind {
            LineKind::Broadband { metric, level } => {
                if let Some(slot) = self.metrics.iter_mut().find(|(m, _)| *m == metric) {
                    slot.1 = level;
                    self.repeated = self.repeated.saturating_add(1);
                } else if self.metrics.push((metric, level)).is_err() {
                    self.unknown_lines = self.unknown_lines.saturating_add(1);
                }
            }
            LineKind::Octave => self.octave_lines = self.octave_lines.saturating_add(1),
            LineKind::UnknownTag => self.unknown_lines = self.unknown_lines.saturating_add(1),
        }
    }
}

/// Groups pushed lines by timestamp.
#[derive(Debug, Clone, Default)]
pub struct Assembler {
    /// The group in progress: every line so far with its time.
    current: Option<Assembled>,
}

impl Assembler {
    /// An assembler with no group in progress.
    pub const fn new() -> Assembler {
        Assembler { current: None }
    }

    /// Adds a line. Returns the previous group when `line` has a different
    /// time (the line then starts the next group), else `None`.
    pub fn push(&mut self, line: &PushedLine<'_>) -> Option<Assembled> {
        match &mut self.current {
            Some(group) if group.time == line.time => {
                group.add(&line.kind);
                None
            }
            _ => {
                let mut group = Assembled::new(line.time);
                group.add(&line.kind);
                self.current.replace(group)
            }
        }
    }

    /// Hands out the group in progress (after a quiet gap, or at shutdown).
    pub fn flush(&mut self) -> Option<Assembled> {
        self.current.take()
    }

    /// The group in progress, if any.
    pub fn pending(&self) -> Option<&Assembled> {
        self.current.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::casella::line::{BROADBAND_TAGS, encode_broadband};
    use crate::{Feed, LineFramer};
    use proptest::prelude::*;
    use std::vec::Vec as StdVec;

    fn parse(line: &[u8]) -> PushedLine<'_> {
        PushedLine::parse(line).expect("valid")
    }

    fn c(h: i32) -> Option<Centi> {
        Centi::from_hundredths(h)
    }

    #[test]
    fn groups_lines_of_one_period() {
        let mut a = Assembler::new();
        for line in [
            &b"<LAeq>, 2010-05-07, 15:23:45, 54.3"[..],
            b"<LAFmax>, 2010-05-07, 15:23:45, 70.1",
            b"<1/1 OCT LCeq>, 2010-05-07, 15:23:45, 16Hz, 32.4",
            b"<LZeq>, 2010-05-07, 15:23:45, 60.0",
            b"<LAeq>, 2010-05-07, 15:23:45, 54.4",
        ] {
            assert_eq!(a.push(&parse(line)), None);
        }
        let done = a
            .push(&parse(b"<LAeq>, 2010-05-07, 15:23:46, 55.0"))
            .expect("period ended");
        assert_eq!(done.time.second, 45);
        assert_eq!(
            done.metrics.as_slice(),
            &[("leq", c(5440)), ("lmax", c(7010))]
        );
        assert_eq!(
            (done.octave_lines, done.unknown_lines, done.repeated),
            (1, 1, 1)
        );
        assert_eq!(done.get("lmax"), Some(c(7010)));
        assert_eq!(done.get("lmin"), None);
        // An earlier time (clock step) also ends a period.
        let next = a
            .push(&parse(b"<LAeq>, 2010-05-07, 15:00:00, 50.0"))
            .expect("period ended");
        assert_eq!(next.get("leq"), Some(c(5500)));
        assert_eq!(a.pending().map(|g| g.time.minute), Some(0));
        assert_eq!(a.flush().and_then(|g| g.get("leq")), Some(c(5000)));
        assert_eq!(a.flush(), None);
    }

    /// Byte stream → framer → parser → assembler; every event, flushed at the end.
    fn run(chunks: &[&[u8]]) -> StdVec<Assembled> {
        let mut framer = LineFramer::<128>::new();
        let mut assembler = Assembler::new();
        let mut out = StdVec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            loop {
                match framer.feed(rest) {
                    Feed::Consumed => break,
                    Feed::Overlong { remaining } => rest = remaining,
                    Feed::Line { line, remaining } => {
                        if let Ok(line) = PushedLine::parse(line) {
                            out.extend(assembler.push(&line));
                        }
                        rest = remaining;
                    }
                }
            }
        }
        out.extend(assembler.flush());
        out
    }

    fn stream() -> impl Strategy<Value = (StdVec<u8>, StdVec<(i64, usize)>)> {
        prop::collection::vec(
            (0i64..4, 0usize..BROADBAND_TAGS.len() + 2, any::<bool>()),
            0..40,
        )
        .prop_map(|lines| {
            let mut bytes = StdVec::new();
            let mut keys = StdVec::new();
            for (step, pick, lf_only) in lines {
                let time =
                    MeterTime::from_local_epoch_seconds(1_273_245_825 + step).expect("in range");
                let mut out = heapless::String::<128>::new();
                match BROADBAND_TAGS.get(pick) {
                    Some((tag, _)) => {
                        encode_broadband(tag, time, Centi::from_hundredths(5000), &mut out)
                            .expect("fits");
                    }
                    None if pick == BROADBAND_TAGS.len() => {
                        out.push_str(&std::format!("<1/3 OCT LZeq>, {time}, 16Hz, 30.0\r\n"))
                            .expect("fits");
                    }
                    None => {
                        out.push_str(&std::format!("<LXeq>, {time}, 1.0\r\n"))
                            .expect("fits");
                    }
                }
                let mut text = std::string::String::from(out.as_str());
                if lf_only {
                    text = text.replace("\r\n", "\n");
                }
                bytes.extend_from_slice(text.as_bytes());
                keys.push((step, pick));
            }
            (bytes, keys)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn assembly_does_not_depend_on_how_reads_split_the_stream(
            (bytes, keys) in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = run(&[&bytes]);
            let mut points: StdVec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = StdVec::new();
            let mut start = 0;
            for p in points {
                chunks.push(&bytes[start..p]);
                start = p;
            }
            chunks.push(&bytes[start..]);
            prop_assert_eq!(&whole, &run(&chunks));

            // One group per run of equal times, holding every line of the run.
            let mut runs: StdVec<StdVec<usize>> = StdVec::new();
            let mut last = None;
            for (step, pick) in keys {
                if last != Some(step) {
                    runs.push(StdVec::new());
                    last = Some(step);
                }
                runs.last_mut().expect("pushed").push(pick);
            }
            prop_assert_eq!(whole.len(), runs.len());
            for (group, picks) in whole.iter().zip(&runs) {
                let lines = group.metrics.len()
                    + usize::from(group.octave_lines)
                    + usize::from(group.unknown_lines)
                    + usize::from(group.repeated);
                prop_assert_eq!(lines, picks.len());
            }
        }

        #[test]
        fn random_lines_never_panic(lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 0..20)) {
            let mut a = Assembler::new();
            for line in &lines {
                let mut tagged = b"<LAeq>, 2010-05-07, ".to_vec();
                tagged.extend_from_slice(line);
                for candidate in [line.as_slice(), tagged.as_slice()] {
                    if let Ok(parsed) = PushedLine::parse(candidate) {
                        let _ = a.push(&parsed);
                    }
                }
            }
            let _ = a.flush();
        }
    }
}
