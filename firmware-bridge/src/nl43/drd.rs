//! The `DRD?` continuous-output line (10 Hz while it runs).
//!
//! Each line starts with a counter (1..=600, wrapping), then Lp, Leq, Lmax,
//! Lmin and Lpeak of the main channel. What follows (sub-channel values,
//! over/under flags) is not confirmed field by field, so it is kept raw.

use crate::nl43::dod::parse_level;
use crate::nl43::trim;
use crate::{Deci, Error};

/// The first six fields of a `DRD?` line, and the rest as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrdLine<'a> {
    /// Line counter, 1..=600 on the meter (wraps).
    pub counter: u16,
    /// Lp (main channel).
    pub lp: Option<Deci>,
    /// Leq (main channel).
    pub leq: Option<Deci>,
    /// Lmax (main channel).
    pub lmax: Option<Deci>,
    /// Lmin (main channel).
    pub lmin: Option<Deci>,
    /// Lpeak (main channel).
    pub lpeak: Option<Deci>,
    /// Everything after the sixth field, without its leading comma.
    pub rest: &'a [u8],
}

impl<'a> DrdLine<'a> {
    /// Parses one line (without CR LF); at least six fields.
    pub fn parse(line: &'a [u8]) -> Result<DrdLine<'a>, Error> {
        let mut parts = line.splitn(7, |&b| b == b',');
        let mut next = |found: u16| parts.next().ok_or(Error::FieldCount { expected: 6, found });
        let counter_text = trim(next(0)?);
        if counter_text.is_empty()
            || counter_text.len() > 4
            || !counter_text.iter().all(u8::is_ascii_digit)
        {
            return Err(Error::BadCounter);
        }
        let counter = counter_text
            .iter()
            .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
        let mut levels = [None; 5];
        for (i, slot) in levels.iter_mut().enumerate() {
            let index = i as u16 + 1; // 1..=5
            let text = trim(next(index)?);
            *slot = parse_level(text).ok_or(Error::BadValue { index })?;
        }
        let rest = parts.next().unwrap_or(&[]);
        let [lp, leq, lmax, lmin, lpeak] = levels;
        Ok(DrdLine {
            counter,
            lp,
            leq,
            lmax,
            lmin,
            lpeak,
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_first_six_and_keeps_the_rest() {
        let l = DrdLine::parse(b"  12, 58.3, 61.2, 74.9, 48.1, 88.1,  -.-,0,0").expect("valid");
        assert_eq!(l.counter, 12);
        assert_eq!(l.lp, Deci::from_tenths(583));
        assert_eq!(l.lpeak, Deci::from_tenths(881));
        assert_eq!(l.rest, b"  -.-,0,0");
        let short = DrdLine::parse(b"600, 58.3,  -.-, 74.9, 48.1, 88.1").expect("six fields");
        assert_eq!(
            (short.counter, short.leq, short.rest),
            (600, None, &b""[..])
        );
    }

    #[test]
    fn rejects_short_or_noisy_lines() {
        assert_eq!(
            DrdLine::parse(b"1, 58.3"),
            Err(Error::FieldCount {
                expected: 6,
                found: 2
            })
        );
        assert_eq!(
            DrdLine::parse(b"x1, 58.3, 1.0, 1.0, 1.0, 1.0"),
            Err(Error::BadCounter)
        );
        assert_eq!(
            DrdLine::parse(b"1, 58.3, 1.0, 1x0, 1.0, 1.0"),
            Err(Error::BadValue { index: 3 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = DrdLine::parse(&bytes);
        }
    }
}
