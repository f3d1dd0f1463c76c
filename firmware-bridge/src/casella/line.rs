//! One pushed line: `<tag>, YYYY-MM-DD, HH:MM:SS, value[, value…]`.

use crate::ascii::{full, is_dashes, parse_u32, printable, trim};
use crate::nl43::MeterClock;
use crate::{Centi, Error, metric};
use core::fmt::{self, Write as _};

/// **\[guess\]** Broad-band tags (without the angle brackets, compared
/// case-insensitively) and the record metric each one carries. Only the
/// first five are named in the manual's text; correct this table, nothing
/// else, once a real meter shows its tags. When a meter sends two tags for
/// one metric (`LAF` and `LAS`) in one period, the later line wins.
pub const BROADBAND_TAGS: [(&str, &str); 9] = [
    ("LAeq", metric::LEQ),
    ("LAFmax", metric::LMAX),
    ("LAFmin", metric::LMIN),
    ("LAF", metric::LP),
    ("LCpeak", metric::LPEAK),
    ("LAE", metric::LE),
    ("LAS", metric::LP),
    ("LASmax", metric::LMAX),
    ("LASmin", metric::LMIN),
];

/// **\[guess\]** A tag containing this (case-insensitive) is an octave or
/// third-octave spectrum line (`<1/1 OCT LCeq>`).
pub const OCTAVE_MARK: &str = "OCT";

/// **\[guess\]** What [`encode_broadband`] writes for a blank value.
pub const NO_VALUE: &str = "-.-";

/// The meter's local timestamp on a line (no zone: apply the device's
/// `utc_offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterTime {
    /// Calendar year, 0..=9999.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31, valid for the month.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
}

impl MeterTime {
    /// `self` when it is a real calendar date and time of day
    /// ([`Error::BadTimestamp`] otherwise).
    pub fn validate(self) -> Result<MeterTime, Error> {
        self.clock()
            .validate()
            .map(|_| self)
            .map_err(|_| Error::BadTimestamp)
    }

    /// Parses a trimmed `YYYY-MM-DD` date and `HH:MM:SS` time.
    pub fn parse(date: &[u8], time: &[u8]) -> Result<MeterTime, Error> {
        let bad = Error::BadTimestamp;
        let [y, mo, d] = three(date, b'-').ok_or(bad)?;
        let [h, mi, s] = three(time, b':').ok_or(bad)?;
        let year = u16::try_from(y).map_err(|_| bad)?;
        let narrow = |v: u32| u8::try_from(v).map_err(|_| bad);
        MeterTime {
            year,
            month: narrow(mo)?,
            day: narrow(d)?,
            hour: narrow(h)?,
            minute: narrow(mi)?,
            second: narrow(s)?,
        }
        .validate()
    }

    /// Seconds since 1970-01-01T00:00:00 in the meter's local time scale
    /// (subtract the meter's UTC offset to get Unix time).
    pub fn local_epoch_seconds(self) -> i64 {
        self.clock().local_epoch_seconds()
    }

    /// The time at `seconds` since 1970-01-01 (local time scale); `None`
    /// outside years 0..=9999.
    pub fn from_local_epoch_seconds(seconds: i64) -> Option<MeterTime> {
        let c = MeterClock::from_local_epoch_seconds(seconds)?;
        Some(MeterTime {
            year: c.year,
            month: c.month,
            day: c.day,
            hour: c.hour,
            minute: c.minute,
            second: c.second,
        })
    }

    fn clock(self) -> MeterClock {
        MeterClock {
            year: self.year,
            month: self.month,
            day: self.day,
            hour: self.hour,
            minute: self.minute,
            second: self.second,
        }
    }
}

impl fmt::Display for MeterTime {
    /// The wire form of the two fields, `2010-05-07, 15:23:45`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}, {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// `2010-05-07` → [2010, 5, 7]: three groups of digits (1..=4, 1..=2, 1..=2
/// bytes are not enforced; the range checks are).
fn three(text: &[u8], sep: u8) -> Option<[u32; 3]> {
    let mut parts = text.split(|&b| b == sep);
    let mut next = || parts.next().filter(|p| p.len() <= 4).and_then(parse_u32);
    let out = [next()?, next()?, next()?];
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// What a line carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// A broad-band level of [`BROADBAND_TAGS`]; `None` for a blank or
    /// dashed value.
    Broadband {
        /// The record metric (`leq`).
        metric: &'static str,
        /// The level.
        level: Option<Centi>,
    },
    /// A spectrum line (tag containing [`OCTAVE_MARK`]): counted, not decoded.
    Octave,
    /// A tag in neither table: counted, not decoded.
    UnknownTag,
}

/// One pushed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PushedLine<'a> {
    /// The tag without its angle brackets (`LAeq`, `1/1 OCT LCeq`).
    pub tag: &'a str,
    /// The line's date and time.
    pub time: MeterTime,
    /// What it carries.
    pub kind: LineKind,
}

impl<'a> PushedLine<'a> {
    /// Parses one line (without its line end; trailing CR and spaces are
    /// ignored).
    ///
    /// [`Error::NoLineTag`] when it does not start with a printable `<tag>`,
    /// [`Error::FieldCount`] without date and time (or, for a broad-band
    /// tag, without exactly one value), [`Error::BadTimestamp`] for a bad
    /// date or time, [`Error::BadValue`] (index 3) for a broad-band value
    /// that is neither a level, blank, nor dashes. Spectrum and unknown
    /// lines need only a valid tag, date and time.
    pub fn parse(line: &'a [u8]) -> Result<PushedLine<'a>, Error> {
        let line = trim(line);
        let inner = line.strip_prefix(b"<").ok_or(Error::NoLineTag)?;
        let close = inner
            .iter()
            .position(|&b| b == b'>')
            .ok_or(Error::NoLineTag)?;
        let (tag, rest) = inner.split_at(close);
        let tag = printable(trim(tag))
            .filter(|t| !t.is_empty())
            .ok_or(Error::NoLineTag)?;
        let rest = rest.get(1..).unwrap_or_default();
        // Field 0 is the tag (and anything between `>` and the first comma,
        // which must be blank).
        let mut fields = rest.split(|&b| b == b',').map(trim);
        if fields.next().is_some_and(|f| !f.is_empty()) {
            return Err(Error::NoLineTag);
        }
        let count = |found: usize, expected: u16| Error::FieldCount {
            expected,
            found: u16::try_from(found).unwrap_or(u16::MAX),
        };
        let (Some(date), Some(time)) = (fields.next(), fields.next()) else {
            return Err(count(rest.split(|&b| b == b',').count(), 3));
        };
        let time = MeterTime::parse(date, time)?;
        let kind = if contains_ignore_case(tag.as_bytes(), OCTAVE_MARK.as_bytes()) {
            LineKind::Octave
        } else if let Some((_, metric)) = BROADBAND_TAGS
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(tag))
        {
            let (Some(value), None) = (fields.next(), fields.next()) else {
                return Err(count(rest.split(|&b| b == b',').count(), 4));
            };
            let level = if value.is_empty() || is_dashes(value) {
                None
            } else {
                Some(Centi::parse(value).ok_or(Error::BadValue { index: 3 })?)
            };
            LineKind::Broadband { metric, level }
        } else {
            LineKind::UnknownTag
        };
        Ok(PushedLine { tag, time, kind })
    }
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len().max(1))
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The tag a metric goes out under (the first entry of [`BROADBAND_TAGS`]
/// for it), for the simulator.
pub fn tag_for_metric(metric: &str) -> Option<&'static str> {
    BROADBAND_TAGS
        .iter()
        .find(|(_, m)| *m == metric)
        .map(|(tag, _)| *tag)
}

/// Writes a broad-band line as the meter pushes it, CR LF included, into
/// `out` (cleared first): `<LAeq>, 2010-05-07, 15:23:45, 54.30\r\n`; a
/// `None` level as [`NO_VALUE`]. [`Error::BadParameter`] for a tag that is
/// empty or holds `<`, `>`, `,` or a control byte.
pub fn encode_broadband<const N: usize>(
    tag: &str,
    time: MeterTime,
    level: Option<Centi>,
    out: &mut heapless::String<N>,
) -> Result<(), Error> {
    out.clear();
    if tag.is_empty()
        || tag
            .bytes()
            .any(|b| matches!(b, b'<' | b'>' | b',') || !(b == b' ' || b.is_ascii_graphic()))
    {
        return Err(Error::BadParameter);
    }
    write!(out, "<{tag}>, {time}, ").map_err(full)?;
    match level {
        Some(l) => write!(out, "{l}"),
        None => out.write_str(NO_VALUE),
    }
    .map_err(full)?;
    out.push_str("\r\n").map_err(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> MeterTime {
        MeterTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    #[test]
    fn parses_a_broadband_line() {
        let line = PushedLine::parse(b"<LAeq>, 2010-05-07, 15:23:45, 54.3\r").expect("valid");
        assert_eq!(
            line,
            PushedLine {
                tag: "LAeq",
                time: t(2010, 5, 7, 15, 23, 45),
                kind: LineKind::Broadband {
                    metric: "leq",
                    level: Centi::from_hundredths(5430)
                }
            }
        );
        for (text, metric) in [
            (&b"<LAFmax>, 2010-05-07, 15:23:45, 70.1"[..], "lmax"),
            (b"<LAFmin>,2010-05-07,15:23:45,30.0", "lmin"),
            (b"<LAF>, 2010-05-07, 15:23:45, 50.0", "lp"),
            (b"<LCpeak>, 2010-05-07, 15:23:45, 99.0", "lpeak"),
            (b"<LAE>, 2010-05-07, 15:23:45, 88.0", "le"),
            (b"<laeq>, 2010-05-07, 15:23:45, 54.3", "leq"),
        ] {
            let kind = PushedLine::parse(text).expect("valid").kind;
            assert!(matches!(kind, LineKind::Broadband { metric: m, .. } if m == metric));
        }
        for blank in [
            &b"<LAeq>, 2010-05-07, 15:23:45, "[..],
            b"<LAeq>, 2010-05-07, 15:23:45, --.-",
        ] {
            assert_eq!(
                PushedLine::parse(blank).map(|l| l.kind),
                Ok(LineKind::Broadband {
                    metric: "leq",
                    level: None
                })
            );
        }
    }

    #[test]
    fn octave_and_unknown_lines() {
        let line = PushedLine::parse(
            b"<1/1 OCT LCeq>, 2010-05-07, 15:23:45, 16Hz, 32.4, 31.5Hz, 35.1, 63Hz, 40.2",
        )
        .expect("valid");
        assert_eq!((line.tag, line.kind), ("1/1 OCT LCeq", LineKind::Octave));
        let line = PushedLine::parse(b"<LZeq>, 2010-05-07, 15:23:45, 60.0").expect("valid");
        assert_eq!(line.kind, LineKind::UnknownTag);
    }

    #[test]
    fn rejects_malformed_lines() {
        for (bad, err) in [
            (&b"LAeq, 2010-05-07, 15:23:45, 54.3"[..], Error::NoLineTag),
            (b"<LAeq, 2010-05-07, 15:23:45, 54.3", Error::NoLineTag),
            (b"<>, 2010-05-07, 15:23:45, 54.3", Error::NoLineTag),
            (b"<LAeq> x, 2010-05-07, 15:23:45, 54.3", Error::NoLineTag),
            (
                b"<LAeq>, 2010-05-07",
                Error::FieldCount {
                    expected: 3,
                    found: 2,
                },
            ),
            (
                b"<LAeq>, 2010-05-07, 15:23:45",
                Error::FieldCount {
                    expected: 4,
                    found: 3,
                },
            ),
            (
                b"<LAeq>, 2010-05-07, 15:23:45, 1, 2",
                Error::FieldCount {
                    expected: 4,
                    found: 5,
                },
            ),
            (b"<LAeq>, 2010-02-30, 15:23:45, 54.3", Error::BadTimestamp),
            (b"<LAeq>, 2010-05-07, 24:00:00, 54.3", Error::BadTimestamp),
            (b"<LAeq>, 2010/05/07, 15:23:45, 54.3", Error::BadTimestamp),
            (
                b"<LAeq>, 2010-05-07, 15:23:45, loud",
                Error::BadValue { index: 3 },
            ),
        ] {
            assert_eq!(
                PushedLine::parse(bad),
                Err(err),
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }

    #[test]
    fn time_epoch_matches_known_instant() {
        let time = t(2026, 11, 22, 14, 15, 16);
        assert_eq!(time.local_epoch_seconds(), 1_795_356_916);
        assert_eq!(
            MeterTime::from_local_epoch_seconds(1_795_356_916),
            Some(time)
        );
        assert_eq!(t(2025, 2, 29, 0, 0, 0).validate(), Err(Error::BadTimestamp));
    }

    #[test]
    fn encodes_for_the_simulator() {
        let mut out = heapless::String::<64>::new();
        encode_broadband(
            "LAeq",
            t(2010, 5, 7, 15, 23, 45),
            Centi::from_hundredths(5430),
            &mut out,
        )
        .expect("fits");
        assert_eq!(out.as_str(), "<LAeq>, 2010-05-07, 15:23:45, 54.30\r\n");
        assert_eq!(tag_for_metric("lp"), Some("LAF"));
        assert_eq!(tag_for_metric("l90"), None);
        assert_eq!(
            encode_broadband("LA>eq", t(2010, 5, 7, 15, 23, 45), None, &mut out),
            Err(Error::BadParameter)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = PushedLine::parse(&bytes);
            let mut tagged = b"<LAeq>, ".to_vec();
            tagged.extend_from_slice(&bytes);
            let _ = PushedLine::parse(&tagged);
        }

        #[test]
        fn broadband_lines_round_trip(
            seconds in 0i64..253_402_300_800,
            entry in prop::sample::select(BROADBAND_TAGS.to_vec()),
            level in prop::option::of(-Centi::MAX_HUNDREDTHS..=Centi::MAX_HUNDREDTHS),
        ) {
            let time = MeterTime::from_local_epoch_seconds(seconds).expect("in range");
            prop_assert_eq!(time.local_epoch_seconds(), seconds);
            let level = level.and_then(Centi::from_hundredths);
            let mut out = heapless::String::<64>::new();
            encode_broadband(entry.0, time, level, &mut out).expect("fits");
            let line = PushedLine::parse(out.as_bytes()).expect("parses");
            prop_assert_eq!(line, PushedLine {
                tag: entry.0,
                time,
                kind: LineKind::Broadband { metric: entry.1, level },
            });
        }
    }
}
