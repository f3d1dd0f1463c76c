//! The `#2` sound-level-meter results reply: `#2,1,T3,V0,P76.92,R64.50;`.
//!
//! After `#2`, every field is a tag letter and its value:
//!
//! | tag | field | value |
//! |---|---|---|
//! | `S` | [`Results::lp`] | level |
//! | `R` | [`Results::leq`] | level |
//! | `M` | [`Results::lmax`] | level |
//! | `N` | [`Results::lmin`] | level |
//! | `P` | [`Results::lpeak`] | level |
//! | `U` | [`Results::le`] | level |
//! | `T` | [`Results::elapsed_s`] | whole seconds |
//! | `V` | [`Results::overload`] | `0`/`1` |
//! | `v` | [`Results::under_range`] | `0`/`1` |
//! | `x`, `t` | start date and time | not decoded |
//! | `L(nn)` | [`Results::percentiles`] | level, `nn` in 1..=99 |
//! | `s` **\[guess\]** | [`Results::run`] | see [`RUN_STATE_TAG`] |
//!
//! Tags are case-sensitive (`V` overload, `v` under-range). A value `?`
//! means "not available" → `None`. Fields that are only digits (the
//! averaging / profile number, the `1` in `#2,1,T3,…`) are skipped. An
//! unknown tag (or an empty field) is counted in [`Results::unknown_tags`],
//! not an error; a malformed value for a known tag is
//! [`Error::BadTag`]. A tag given twice: the last one wins.

use crate::ascii::{full, parse_u32, trim};
use crate::svantek::{body, fields};
use crate::{Centi, Error, metric};
use core::fmt::Write as _;

/// **\[guess\]** The tag the `s` request flag adds to a reply. Its value is a
/// number whose bit [`RUN_BIT`] means running and bit [`PAUSE_BIT`] means
/// paused. A value that is not a number leaves [`Results::run`] `None`
/// (not an error: the form itself is the guess).
pub const RUN_STATE_TAG: u8 = b's';
/// **\[guess\]** Bit of the [`RUN_STATE_TAG`] value that means "running".
pub const RUN_BIT: u32 = 1 << 0;
/// **\[guess\]** Bit of the [`RUN_STATE_TAG`] value that means "paused".
pub const PAUSE_BIT: u32 = 1 << 1;

/// Most percentiles one reply keeps.
pub const MAX_PERCENTILES: usize = 8;

/// The measurement state from the [`RUN_STATE_TAG`] bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Neither bit set.
    Stopped,
    /// [`RUN_BIT`] set, [`PAUSE_BIT`] clear.
    Running,
    /// [`PAUSE_BIT`] set (a paused measurement is still a measurement).
    Paused,
}

impl RunState {
    /// The state of a bit set.
    pub const fn from_bits(bits: u32) -> RunState {
        if bits & PAUSE_BIT != 0 {
            RunState::Paused
        } else if bits & RUN_BIT != 0 {
            RunState::Running
        } else {
            RunState::Stopped
        }
    }

    /// The bits the meter would send.
    pub const fn bits(self) -> u32 {
        match self {
            RunState::Stopped => 0,
            RunState::Running => RUN_BIT,
            RunState::Paused => RUN_BIT | PAUSE_BIT,
        }
    }
}

/// One `#2` results reply. `None` = the tag was absent or `?`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Results {
    /// `S`: Lp.
    pub lp: Option<Centi>,
    /// `R`: Leq.
    pub leq: Option<Centi>,
    /// `M`: Lmax.
    pub lmax: Option<Centi>,
    /// `N`: Lmin.
    pub lmin: Option<Centi>,
    /// `P`: peak.
    pub lpeak: Option<Centi>,
    /// `U`: LE (SEL).
    pub le: Option<Centi>,
    /// `T`: elapsed measurement time in seconds.
    pub elapsed_s: Option<u32>,
    /// `V`: overload during the cycle.
    pub overload: Option<bool>,
    /// `v`: under-range during the cycle.
    pub under_range: Option<bool>,
    /// `L(nn)`: (nn, level) in reply order, at most [`MAX_PERCENTILES`]
    /// (further ones are counted in `unknown_tags`).
    pub percentiles: heapless::Vec<(u8, Option<Centi>), MAX_PERCENTILES>,
    /// [`RUN_STATE_TAG`]: the measurement state, when the unit sends it.
    pub run: Option<RunState>,
    /// Fields with a tag this codec does not know (saturating): count, log.
    pub unknown_tags: u8,
}

/// What a `#2` request got back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResultsReply {
    /// Values (any of which may be `None`).
    Results(Results),
    /// `#2,?;`: no results yet.
    NoResults,
}

impl Results {
    /// Parses a `#2` frame (as [`super::FrameSplitter`] hands it out, with or
    /// without its `;`). [`Error::BadFrame`] when it is not a `#2` frame.
    pub fn parse(frame: &[u8]) -> Result<ResultsReply, Error> {
        let mut parts = fields(body(frame)).map(trim);
        if parts.next() != Some(b"#2") {
            return Err(Error::BadFrame);
        }
        let mut parts = parts.peekable();
        if parts.peek() == Some(&&b"?"[..]) {
            parts.next();
            if parts.next().is_none() {
                return Ok(ResultsReply::NoResults);
            }
            return Err(Error::BadFrame);
        }
        let mut r = Results::default();
        for field in parts {
            if !field.is_empty() && field.iter().all(u8::is_ascii_digit) {
                continue;
            }
            let Some((&tag, value)) = field.split_first() else {
                r.unknown_tags = r.unknown_tags.saturating_add(1);
                continue;
            };
            let value = trim(value);
            match tag {
                b'S' => r.lp = level(tag, value)?,
                b'R' => r.leq = level(tag, value)?,
                b'M' => r.lmax = level(tag, value)?,
                b'N' => r.lmin = level(tag, value)?,
                b'P' => r.lpeak = level(tag, value)?,
                b'U' => r.le = level(tag, value)?,
                b'T' => {
                    r.elapsed_s = match value {
                        b"?" => None,
                        v => Some(parse_u32(v).ok_or(Error::BadTag { tag })?),
                    }
                }
                b'V' => r.overload = flag(tag, value)?,
                b'v' => r.under_range = flag(tag, value)?,
                b'x' | b't' => {}
                b'L' => {
                    let (n, level) = percentile(value).ok_or(Error::BadTag { tag })?;
                    if let Some(slot) = r.percentiles.iter_mut().find(|(m, _)| *m == n) {
                        slot.1 = level;
                    } else if r.percentiles.push((n, level)).is_err() {
                        r.unknown_tags = r.unknown_tags.saturating_add(1);
                    }
                }
                RUN_STATE_TAG => r.run = parse_u32(value).map(RunState::from_bits),
                _ => r.unknown_tags = r.unknown_tags.saturating_add(1),
            }
        }
        Ok(ResultsReply::Results(r))
    }

    /// The levels as (record metric, value), for every level tag present
    /// in the record's terms (absent and `?` both give `None`).
    pub fn metrics(&self) -> impl Iterator<Item = (&'static str, Option<Centi>)> + '_ {
        [
            (metric::LP, self.lp),
            (metric::LEQ, self.leq),
            (metric::LMAX, self.lmax),
            (metric::LMIN, self.lmin),
            (metric::LPEAK, self.lpeak),
            (metric::LE, self.le),
        ]
        .into_iter()
        .chain(
            self.percentiles
                .iter()
                .filter_map(|&(n, level)| Some((metric::percentile(n)?, level))),
        )
    }
}

impl ResultsReply {
    /// Writes the reply frame with its `;` into `out` (cleared first), as a
    /// meter would: `#2,?;`, or `#2,T..,V..,v..,S..,R..,M..,N..,P..,U..,L(nn)..,s..;`
    /// with `?` for every `None` (`s` only when `run` is set). `unknown_tags`
    /// is not written.
    pub fn encode<const N: usize>(&self, out: &mut heapless::String<N>) -> Result<(), Error> {
        out.clear();
        let r = match self {
            ResultsReply::NoResults => return out.push_str("#2,?;").map_err(|_| Error::BufferFull),
            ResultsReply::Results(r) => r,
        };
        out.push_str("#2").map_err(full)?;
        match r.elapsed_s {
            Some(t) => write!(out, ",T{t}"),
            None => out.write_str(",T?"),
        }
        .map_err(full)?;
        for (tag, flag) in [('V', r.overload), ('v', r.under_range)] {
            match flag {
                Some(f) => write!(out, ",{tag}{}", u8::from(f)),
                None => write!(out, ",{tag}?"),
            }
            .map_err(full)?;
        }
        for (tag, level) in [
            ('S', r.lp),
            ('R', r.leq),
            ('M', r.lmax),
            ('N', r.lmin),
            ('P', r.lpeak),
            ('U', r.le),
        ] {
            write_level(out, |o| write!(o, ",{tag}"), level)?;
        }
        for &(n, level) in &r.percentiles {
            if !(1..=99).contains(&n) {
                return Err(Error::BadParameter);
            }
            write_level(out, |o| write!(o, ",L({n})"), level)?;
        }
        if let Some(run) = r.run {
            write!(out, ",{}{}", char::from(RUN_STATE_TAG), run.bits()).map_err(full)?;
        }
        out.push(';').map_err(full)
    }
}

fn write_level<const N: usize>(
    out: &mut heapless::String<N>,
    tag: impl FnOnce(&mut heapless::String<N>) -> core::fmt::Result,
    level: Option<Centi>,
) -> Result<(), Error> {
    tag(out).map_err(|_| Error::BufferFull)?;
    match level {
        Some(l) => write!(out, "{l}"),
        None => out.write_str("?"),
    }
    .map_err(|_| Error::BufferFull)
}

fn level(tag: u8, value: &[u8]) -> Result<Option<Centi>, Error> {
    match value {
        b"?" => Ok(None),
        v => Centi::parse(v).map(Some).ok_or(Error::BadTag { tag }),
    }
}

fn flag(tag: u8, value: &[u8]) -> Result<Option<bool>, Error> {
    match value {
        b"?" => Ok(None),
        b"0" => Ok(Some(false)),
        b"1" => Ok(Some(true)),
        _ => Err(Error::BadTag { tag }),
    }
}

/// `(10)45.60` → (10, 45.60); `(10)?` → (10, None).
fn percentile(value: &[u8]) -> Option<(u8, Option<Centi>)> {
    let inner = value.strip_prefix(b"(")?;
    let close = inner.iter().position(|&b| b == b')')?;
    let (digits, rest) = inner.split_at(close);
    let n = u8::try_from(parse_u32(digits)?).ok()?;
    if !(1..=99).contains(&n) {
        return None;
    }
    let level = level(b'L', rest.get(1..)?).ok()?;
    Some((n, level))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(h: i32) -> Option<Centi> {
        Centi::from_hundredths(h)
    }

    fn results(frame: &[u8]) -> Results {
        match Results::parse(frame) {
            Ok(ResultsReply::Results(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_the_documented_reply() {
        let r = results(b"#2,1,T3,V0,P76.92,R64.50;");
        assert_eq!(r.elapsed_s, Some(3));
        assert_eq!(r.overload, Some(false));
        assert_eq!(r.lpeak, c(7692));
        assert_eq!(r.leq, c(6450));
        assert_eq!(r.lp, None);
        assert_eq!(r.run, None);
        assert_eq!(r.unknown_tags, 0);
    }

    #[test]
    fn parses_every_tag() {
        let r = results(b"#2,1,2,S55.1,R?,M70.2,N40.0,P80.5,U99.99,T12,V1,v1,x2024-01-02,t10:11:12,L(10)45.60,L(90)?,s1");
        assert_eq!(
            (r.lp, r.leq, r.lmax, r.lmin, r.lpeak, r.le),
            (c(5510), None, c(7020), c(4000), c(8050), c(9999))
        );
        assert_eq!(
            (r.elapsed_s, r.overload, r.under_range),
            (Some(12), Some(true), Some(true))
        );
        assert_eq!(r.percentiles.as_slice(), &[(10, c(4560)), (90, None)]);
        assert_eq!(r.run, Some(RunState::Running));
        assert_eq!(r.unknown_tags, 0);
        let metrics: std::vec::Vec<_> = r.metrics().collect();
        assert!(metrics.contains(&("l10", c(4560))));
        assert!(metrics.contains(&("le", c(9999))));
        assert_eq!(results(b"#2,s3").run, Some(RunState::Paused));
        assert_eq!(results(b"#2,s0").run, Some(RunState::Stopped));
        assert_eq!(results(b"#2,sX").run, None);
    }

    #[test]
    fn no_results_unknown_tags_and_errors() {
        assert_eq!(Results::parse(b"#2,?;"), Ok(ResultsReply::NoResults));
        assert_eq!(Results::parse(b"#2,?"), Ok(ResultsReply::NoResults));
        let r = results(b"#2,1,Q5,Z?,,R60.0");
        assert_eq!((r.unknown_tags, r.leq), (3, c(6000)));
        assert_eq!(results(b"#2,R60.0,R61.0").leq, c(6100));
        assert_eq!(results(b"#2 , R 60.0 ;").leq, c(6000));
        assert_eq!(Results::parse(b"#1,U971"), Err(Error::BadFrame));
        assert_eq!(Results::parse(b"#2,?,R1.0"), Err(Error::BadFrame));
        assert_eq!(Results::parse(b"#2,Rxx"), Err(Error::BadTag { tag: b'R' }));
        assert_eq!(Results::parse(b"#2,V2"), Err(Error::BadTag { tag: b'V' }));
        assert_eq!(Results::parse(b"#2,T-1"), Err(Error::BadTag { tag: b'T' }));
        assert_eq!(
            Results::parse(b"#2,L(100)40.0"),
            Err(Error::BadTag { tag: b'L' })
        );
        assert_eq!(
            Results::parse(b"#2,L10)40.0"),
            Err(Error::BadTag { tag: b'L' })
        );
        let many = b"#2,L(1)1,L(2)2,L(3)3,L(4)4,L(5)5,L(6)6,L(7)7,L(8)8,L(9)9,L(1)1.5";
        let r = results(many);
        assert_eq!(r.percentiles.len(), 8);
        assert_eq!(r.percentiles.first(), Some(&(1, c(150))));
        assert_eq!(r.unknown_tags, 1);
    }

    fn level() -> impl Strategy<Value = Option<Centi>> {
        prop::option::of(-Centi::MAX_HUNDREDTHS..=Centi::MAX_HUNDREDTHS)
            .prop_map(|h| h.and_then(Centi::from_hundredths))
    }

    fn any_results() -> impl Strategy<Value = Results> {
        (
            prop::collection::vec(level(), 6),
            prop::option::of(0u32..1_000_000_000),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::collection::btree_map(1u8..=99, level(), 0..=8),
            prop::option::of(prop::sample::select(vec![
                RunState::Stopped,
                RunState::Running,
                RunState::Paused,
            ])),
        )
            .prop_map(|(l, elapsed_s, overload, under_range, pct, run)| Results {
                lp: l[0],
                leq: l[1],
                lmax: l[2],
                lmin: l[3],
                lpeak: l[4],
                le: l[5],
                elapsed_s,
                overload,
                under_range,
                percentiles: pct.into_iter().collect(),
                run,
                unknown_tags: 0,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = Results::parse(&bytes);
            let mut tagged = b"#2,".to_vec();
            tagged.extend_from_slice(&bytes);
            let _ = Results::parse(&tagged);
        }

        #[test]
        fn encode_parse_round_trips(r in any_results()) {
            let reply = ResultsReply::Results(r);
            let mut out = heapless::String::<256>::new();
            reply.encode(&mut out).expect("fits");
            prop_assert_eq!(Results::parse(out.as_bytes()), Ok(reply));
        }
    }
}
