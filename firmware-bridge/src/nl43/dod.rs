//! The `DOD?` display line: 4 channels × 16 fields, 64 in all.
//!
//! Channel `k`, field `i` sits at index `16*k + i`. Levels are 5 characters
//! wide, right-aligned, one decimal (` 58.3`); a value that is off or not yet
//! integrated is dashes (`  -.-` or ` --.-`) and means *no value*, never 0.
//! Fields 14 and 15 of each channel are the overload and under-range flags
//! (`0`/`1`; dashes when the channel is off).
//!
//! The parser is strict on purpose: a field that is neither a level nor
//! dashes rejects the whole line, so line noise can never become a reading.

use crate::nl43::{MAX_LINE, fields, trim};
use crate::{Deci, Error};
use core::fmt::Write as _;

/// Fields per channel.
pub const FIELDS_PER_CHANNEL: usize = 16;
/// Channels in a `DOD?` line.
pub const CHANNELS: usize = 4;
/// Fields in a `DOD?` line.
pub const FIELDS: usize = FIELDS_PER_CHANNEL * CHANNELS;

/// The 16 values of one channel. `None` = the meter showed dashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ChannelValues {
    /// Lp: instantaneous level.
    pub lp: Option<Deci>,
    /// Leq: equivalent continuous level.
    pub leq: Option<Deci>,
    /// LE: sound exposure level (SEL).
    pub le: Option<Deci>,
    /// Lmax.
    pub lmax: Option<Deci>,
    /// Lmin.
    pub lmin: Option<Deci>,
    /// LN1..LN5: percentile slots; their meaning (default L5, L10, L50, L90,
    /// L95) is set on the meter.
    pub ln: [Option<Deci>; 5],
    /// Lpeak.
    pub lpeak: Option<Deci>,
    /// LIeq: impulse-weighted Leq.
    pub lieq: Option<Deci>,
    /// Leq,mov: moving Leq.
    pub leq_mov: Option<Deci>,
    /// Ltm5: Taktmaximal level.
    pub ltm5: Option<Deci>,
    /// Overload during the measurement (`None` when the channel is off).
    pub overload: Option<bool>,
    /// Under-range during the measurement (`None` when the channel is off).
    pub under_range: Option<bool>,
}

impl ChannelValues {
    /// The 14 level slots in wire order (fields 0..=13).
    pub fn levels(&self) -> [Option<Deci>; 14] {
        let [n1, n2, n3, n4, n5] = self.ln;
        [
            self.lp,
            self.leq,
            self.le,
            self.lmax,
            self.lmin,
            n1,
            n2,
            n3,
            n4,
            n5,
            self.lpeak,
            self.lieq,
            self.leq_mov,
            self.ltm5,
        ]
    }

    fn from_levels(
        l: [Option<Deci>; 14],
        overload: Option<bool>,
        under_range: Option<bool>,
    ) -> Self {
        ChannelValues {
            lp: l[0],
            leq: l[1],
            le: l[2],
            lmax: l[3],
            lmin: l[4],
            ln: [l[5], l[6], l[7], l[8], l[9]],
            lpeak: l[10],
            lieq: l[11],
            leq_mov: l[12],
            ltm5: l[13],
            overload,
            under_range,
        }
    }
}

/// One parsed `DOD?` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DodReading {
    /// Channel 0 is the main display.
    pub channels: [ChannelValues; CHANNELS],
}

impl DodReading {
    /// The main display channel.
    pub fn main(&self) -> &ChannelValues {
        &self.channels[0]
    }

    /// Parses one line (without CR LF).
    pub fn parse(line: &[u8]) -> Result<DodReading, Error> {
        let mut levels = [[None; 14]; CHANNELS];
        let mut flags = [[None; 2]; CHANNELS];
        let mut count: u16 = 0;
        for (index, field) in fields(line).enumerate() {
            count = count.saturating_add(1);
            if index >= FIELDS {
                continue;
            }
            let (channel, slot) = (index / FIELDS_PER_CHANNEL, index % FIELDS_PER_CHANNEL);
            let index_u16 = index as u16; // < 64
            let text = trim(field);
            if slot < 14 {
                levels[channel][slot] =
                    parse_level(text).ok_or(Error::BadValue { index: index_u16 })?;
            } else {
                flags[channel][slot - 14] =
                    parse_flag(text).ok_or(Error::BadFlag { index: index_u16 })?;
            }
        }
        if usize::from(count) != FIELDS {
            return Err(Error::FieldCount {
                expected: FIELDS as u16,
                found: count,
            });
        }
        let mut reading = DodReading::default();
        for (k, channel) in reading.channels.iter_mut().enumerate() {
            *channel = ChannelValues::from_levels(levels[k], flags[k][0], flags[k][1]);
        }
        Ok(reading)
    }

    /// Writes the wire form, 64 fields and CR LF, into `out` (cleared first).
    pub fn encode<const N: usize>(&self, out: &mut heapless::String<N>) -> Result<(), Error> {
        out.clear();
        for (k, channel) in self.channels.iter().enumerate() {
            for (i, level) in channel.levels().iter().enumerate() {
                if k + i > 0 {
                    out.push(',').map_err(|_| Error::BufferFull)?;
                }
                match level {
                    Some(value) => write!(out, "{value:>5}"),
                    None => out.write_str("  -.-"),
                }
                .map_err(|_| Error::BufferFull)?;
            }
            for flag in [channel.overload, channel.under_range] {
                let text = match flag {
                    Some(true) => ",1",
                    Some(false) => ",0",
                    None => ",  -.-",
                };
                out.push_str(text).map_err(|_| Error::BufferFull)?;
            }
        }
        out.push_str("\r\n").map_err(|_| Error::BufferFull)
    }
}

/// A full `DOD?` line always fits this.
pub type DodLine = heapless::String<MAX_LINE>;

/// `Some(None)` for dashes, `Some(Some(level))` for a level, `None` for anything else.
pub(crate) fn parse_level(text: &[u8]) -> Option<Option<Deci>> {
    if is_dashes(text) {
        return Some(None);
    }
    Deci::parse(text).map(Some)
}

fn parse_flag(text: &[u8]) -> Option<Option<bool>> {
    match text {
        b"0" => Some(Some(false)),
        b"1" => Some(Some(true)),
        t if is_dashes(t) => Some(None),
        _ => None,
    }
}

/// A trimmed field made only of `-` and `.`, with at least one `-`.
fn is_dashes(text: &[u8]) -> bool {
    text.contains(&b'-') && text.iter().all(|&b| b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(t: i16) -> Option<Deci> {
        Deci::from_tenths(t)
    }

    fn sample_line() -> std::string::String {
        let mut f: std::vec::Vec<std::string::String> = std::vec::Vec::new();
        for k in 0..4 {
            if k == 0 {
                for v in [
                    " 58.3", " 61.2", " 96.4", " 74.9", " 48.1", " 66.0", " 63.5", " 58.7",
                    " 52.2", " 50.9", " 88.1", "  -.-", " --.-", "  -.-",
                ] {
                    f.push(v.into());
                }
                f.push("0".into());
                f.push("1".into());
            } else {
                for _ in 0..16 {
                    f.push("  -.-".into());
                }
            }
        }
        f.join(",")
    }

    #[test]
    fn parses_the_documented_layout() {
        let r = DodReading::parse(sample_line().as_bytes()).expect("valid line");
        let m = r.main();
        assert_eq!(m.lp, d(583));
        assert_eq!(m.leq, d(612));
        assert_eq!(m.le, d(964));
        assert_eq!(m.lmax, d(749));
        assert_eq!(m.lmin, d(481));
        assert_eq!(m.ln, [d(660), d(635), d(587), d(522), d(509)]);
        assert_eq!(m.lpeak, d(881));
        assert_eq!((m.lieq, m.leq_mov, m.ltm5), (None, None, None));
        assert_eq!((m.overload, m.under_range), (Some(false), Some(true)));
        assert_eq!(r.channels[3], ChannelValues::default());
    }

    #[test]
    fn rejects_noise_instead_of_guessing() {
        let good = sample_line();
        assert_eq!(
            DodReading::parse(std::format!("7{good}").as_bytes()),
            Err(Error::BadValue { index: 0 })
        );
        assert_eq!(
            DodReading::parse(good.replacen(" 61.2", " 6x.2", 1).as_bytes()),
            Err(Error::BadValue { index: 1 })
        );
        assert_eq!(
            DodReading::parse(
                good.rsplit_once(',')
                    .map(|(a, _)| a)
                    .unwrap_or("")
                    .as_bytes()
            ),
            Err(Error::FieldCount {
                expected: 64,
                found: 63
            })
        );
        assert_eq!(
            DodReading::parse(std::format!("{good},0").as_bytes()),
            Err(Error::FieldCount {
                expected: 64,
                found: 65
            })
        );
        assert_eq!(
            DodReading::parse(good.replacen(",0,1,", ",2,1,", 1).as_bytes()),
            Err(Error::BadFlag { index: 14 })
        );
    }

    #[test]
    fn encodes_in_the_meter_format() {
        let r = DodReading::parse(sample_line().as_bytes()).expect("valid");
        let mut out = DodLine::new();
        r.encode(&mut out).expect("fits");
        assert!(out.starts_with(" 58.3, 61.2, 96.4,"), "{out}");
        assert!(out.ends_with("\r\n"));
        assert_eq!(out.split(',').count(), 64);
        assert_eq!(DodReading::parse(out.trim_end().as_bytes()), Ok(r));
    }

    fn level() -> impl Strategy<Value = Option<Deci>> {
        prop_oneof![
            1 => Just(None),
            4 => (-Deci::MAX_TENTHS..=Deci::MAX_TENTHS).prop_map(Deci::from_tenths),
        ]
    }

    fn channel() -> impl Strategy<Value = ChannelValues> {
        (
            prop::array::uniform14(level()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(l, o, u)| ChannelValues::from_levels(l, o, u))
    }

    /// Text made of the bytes a DOD line is made of, so parsing gets deep.
    fn dodish() -> impl Strategy<Value = std::vec::Vec<u8>> {
        prop::collection::vec(prop::sample::select(&b" -.,0123456789\r$x"[..]), 0..450)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn encode_then_parse_round_trips(channels in prop::array::uniform4(channel())) {
            let reading = DodReading { channels };
            let mut out = DodLine::new();
            reading.encode(&mut out).expect("a DOD line fits MAX_LINE");
            let line = out.strip_suffix("\r\n").expect("CR LF");
            prop_assert_eq!(DodReading::parse(line.as_bytes()), Ok(reading));
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = DodReading::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_misses(bytes in dodish()) {
            let _ = DodReading::parse(&bytes);
        }
    }
}
