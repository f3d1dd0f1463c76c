//! Answers: identity, measurement state, values and the error queue.

use crate::ascii::{is_dashes, parse_i16, printable, trim};
use crate::{Centi, Error};
use core::fmt;

/// The answer to `*IDN?`: `NTiAudio,XL2,A2A-12345-E0,V4.71`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity<'a> {
    /// `NTiAudio`.
    pub manufacturer: &'a str,
    /// `XL2`.
    pub model: &'a str,
    /// `A2A-12345-E0`.
    pub serial: &'a str,
    /// `V4.71`.
    pub firmware: &'a str,
}

impl<'a> Identity<'a> {
    /// Parses four comma-separated, non-empty, printable fields (each trimmed).
    pub fn parse(line: &'a [u8]) -> Result<Identity<'a>, Error> {
        let mut fields = trim(line).split(|&b| b == b',').map(trim);
        let mut next = || {
            fields
                .next()
                .filter(|f| !f.is_empty())
                .and_then(printable)
                .ok_or(Error::BadIdentity)
        };
        let identity = Identity {
            manufacturer: next()?,
            model: next()?,
            serial: next()?,
            firmware: next()?,
        };
        if fields.next().is_some() {
            return Err(Error::BadIdentity);
        }
        Ok(identity)
    }
}

impl fmt::Display for Identity<'_> {
    /// The wire form, `NTiAudio,XL2,A2A-12345-E0,V4.71`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.manufacturer, self.model, self.serial, self.firmware
        )
    }
}

/// The answer to `INIT:STATE?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitState {
    /// `STOPPED`: not measuring.
    Stopped,
    /// `FROZEN`: stopped with the result held on screen.
    Frozen,
    /// `SETTLING`: starting, values not yet valid.
    Settling,
    /// `RUNNING`: measuring.
    Running,
    /// `PAUSED`: measuring, paused.
    Paused,
}

impl InitState {
    /// All states.
    pub const ALL: [InitState; 5] = [
        InitState::Stopped,
        InitState::Frozen,
        InitState::Settling,
        InitState::Running,
        InitState::Paused,
    ];

    /// Parses the state word (case-insensitive, trimmed).
    pub fn parse(line: &[u8]) -> Result<InitState, Error> {
        let word = trim(line);
        InitState::ALL
            .into_iter()
            .find(|s| s.word().as_bytes().eq_ignore_ascii_case(word))
            .ok_or(Error::BadAnswer)
    }

    /// The wire word (`RUNNING`).
    pub const fn word(self) -> &'static str {
        match self {
            InitState::Stopped => "STOPPED",
            InitState::Frozen => "FROZEN",
            InitState::Settling => "SETTLING",
            InitState::Running => "RUNNING",
            InitState::Paused => "PAUSED",
        }
    }
}

/// What a known non-`OK` status word means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusFlag {
    /// The record flag `overload`.
    Overload,
    /// The record flag `under_range`.
    UnderRange,
}

/// **\[guess\]** Status words (case-insensitive) that mean over- or
/// under-range. The XL2 documents only `OK`; correct this table, nothing
/// else, once a real unit shows its words. The first word of each kind is
/// what [`Status::word`] writes.
pub const STATUS_WORDS: [(&str, StatusFlag); 6] = [
    ("OVERLOAD", StatusFlag::Overload),
    ("OVL", StatusFlag::Overload),
    ("OVER", StatusFlag::Overload),
    ("UNDERRANGE", StatusFlag::UnderRange),
    ("UNDER_RANGE", StatusFlag::UnderRange),
    ("UNDER", StatusFlag::UnderRange),
];

/// The status word after a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    /// `OK`.
    Ok,
    /// A word of [`STATUS_WORDS`] meaning overload.
    Overload,
    /// A word of [`STATUS_WORDS`] meaning under-range.
    UnderRange,
    /// Any other word, as sent (printable ASCII, cut to 16 bytes, inner
    /// spaces as `_`): count it.
    Other(heapless::String<16>),
}

impl Status {
    fn parse(word: &[u8]) -> Option<Status> {
        let word = printable(word)?;
        if word.eq_ignore_ascii_case("OK") {
            return Some(Status::Ok);
        }
        if let Some((_, flag)) = STATUS_WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
        {
            return Some(match flag {
                StatusFlag::Overload => Status::Overload,
                StatusFlag::UnderRange => Status::UnderRange,
            });
        }
        let mut kept = heapless::String::new();
        // Inner spaces become `_`, so the kept word reads back as itself
        // whatever the cut (`OK  x` must not come back as `OK`).
        for c in word.chars() {
            if kept.push(if c == ' ' { '_' } else { c }).is_err() {
                break;
            }
        }
        Some(Status::Other(kept))
    }

    /// The word as it goes on the wire.
    pub fn word(&self) -> &str {
        let first = |kind: StatusFlag| {
            STATUS_WORDS
                .iter()
                .find(|(_, k)| *k == kind)
                .map_or("?", |(w, _)| *w)
        };
        match self {
            Status::Ok => "OK",
            Status::Overload => first(StatusFlag::Overload),
            Status::UnderRange => first(StatusFlag::UnderRange),
            Status::Other(word) => word,
        }
    }
}

/// One measured value: `53.8 dB, OK`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value {
    /// The level (or time, for `sec` values, in hundredths); `None` when the
    /// meter showed dashes (no value yet).
    pub level: Option<Centi>,
    /// The status word after the comma.
    pub status: Status,
}

impl Value {
    /// Parses exactly one `<value> <unit>, <status>` item: `53.8 dB, OK`,
    /// `53,8 dB, OK`, `-.- dB, OK` (any dashes → `level: None`),
    /// `12.0 sec, OK`. The unit (letters, `%`, `/`) may be absent.
    ///
    /// [`Error::NotAValue`] when the reply is text (`OPTION_REQUIRED`),
    /// [`Error::BadValue`] (index 0) for a malformed item,
    /// [`Error::FieldCount`] when more follows the first item.
    pub fn parse(line: &[u8]) -> Result<Value, Error> {
        let (value, rest) = parse_item(trim(line), 0)?;
        if trim(rest).is_empty() {
            Ok(value)
        } else {
            Err(Error::FieldCount {
                expected: 1,
                found: 2,
            })
        }
    }

    /// Appends the item as the meter writes it (`53.80 dB, OK`, `-.- dB, OK`),
    /// without a line end.
    pub fn write_to(&self, unit: &str, out: &mut impl fmt::Write) -> fmt::Result {
        match self.level {
            Some(level) => write!(out, "{level}")?,
            None => out.write_str("-.-")?,
        }
        if !unit.is_empty() {
            write!(out, " {unit}")?;
        }
        write!(out, ", {}", self.status.word())
    }
}

/// Parses a reply line with one or more `<value> <unit>, <status>` items.
///
/// Items are separated by `,` or `;` (with optional spaces):
/// `53.8 dB, OK, 61.2 dB, OK` and `53.8 dB, OK; 61.2 dB, OK` both give two
/// values; so does a decimal-comma `53,8 dB, OK, 61,2 dB, OK` (a comma
/// between digits belongs to the number). One item per line is the same
/// call with one item. Errors as [`Value::parse`], with the item's 0-based
/// index in [`Error::BadValue`]; [`Error::BufferFull`] for more than `N` items.
pub fn parse_values<const N: usize>(line: &[u8]) -> Result<heapless::Vec<Value, N>, Error> {
    let mut values = heapless::Vec::new();
    let mut rest = trim(line);
    let mut index: u16 = 0;
    loop {
        let (value, after) = parse_item(rest, index)?;
        values.push(value).map_err(|_| Error::BufferFull)?;
        index = index.saturating_add(1);
        rest = trim(after);
        match rest.split_first() {
            None => return Ok(values),
            Some((b',' | b';', more)) => {
                rest = trim(more);
                if rest.is_empty() {
                    return Ok(values);
                }
            }
            Some(_) => return Err(Error::BadValue { index }),
        }
    }
}

/// Parses one item at the start of `s`; returns it and the bytes after its
/// status word (starting at a separator or empty).
fn parse_item(s: &[u8], index: u16) -> Result<(Value, &[u8]), Error> {
    let bad = Error::BadValue { index };
    let s = trim(s);
    let run = s
        .iter()
        .position(|b| !matches!(b, b'0'..=b'9' | b'.' | b',' | b'-' | b'+'))
        .unwrap_or(s.len());
    let (mut number, _) = s.split_at(run);
    // A comma right after the number is the item's own separator, not a
    // decimal comma (`53.8,OK`, `-.-, OK`).
    while let Some(shorter) = number.strip_suffix(b",") {
        number = shorter;
    }
    let rest = s.get(number.len()..).unwrap_or_default();
    if number.is_empty() {
        return Err(if s.is_empty() { bad } else { Error::NotAValue });
    }
    let level = if is_dashes(number) {
        None
    } else {
        Some(Centi::parse(number).ok_or(bad)?)
    };
    let rest = trim(rest);
    let unit_len = rest
        .iter()
        .position(|b| !(b.is_ascii_alphabetic() || *b == b'%' || *b == b'/'))
        .unwrap_or(rest.len());
    let rest = match trim(rest.get(unit_len..).unwrap_or_default()).split_first() {
        Some((b',', after)) => after,
        _ => return Err(bad),
    };
    let word_len = rest
        .iter()
        .position(|&b| b == b',' || b == b';')
        .unwrap_or(rest.len());
    let (word, after) = rest.split_at(word_len);
    let word = trim(word);
    if word.is_empty() {
        return Err(bad);
    }
    let status = Status::parse(word).ok_or(bad)?;
    Ok((Value { level, status }, after))
}

/// Parses a `SYST:ERRO?` answer: the first integer (`0` = queue empty),
/// e.g. `-113, "Undefined header"` → -113.
pub fn parse_error_queue(line: &[u8]) -> Result<i16, Error> {
    let first = trim(line)
        .split(|&b| b == b',' || b == b' ')
        .next()
        .unwrap_or_default();
    parse_i16(first).ok_or(Error::BadErrorQueue)
}

/// Error queue codes and their meaning (from the vendor's manual).
const ERROR_CODES: [(i16, &str); 16] = [
    (0, "no error"),
    (-108, "invalid parameter"),
    (-109, "missing command or parameter"),
    (-112, "too many characters"),
    (-113, "invalid command"),
    (-115, "too many parameters"),
    (-350, "error queue overflow"),
    (1, "line too long"),
    (2, "unexpected PID"),
    (3, "DSP timeout"),
    (4, "ASD microphone blocks sensitivity change"),
    (5, "licence missing"),
    (6, "no dt value for this parameter"),
    (7, "not available in this function"),
    (8, "DSP error"),
    (9, "not valid while measuring"),
];

/// What an error queue code means (`unknown error code` for any other).
pub fn error_text(code: i16) -> &'static str {
    ERROR_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("unknown error code", |(_, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(h: i32) -> Option<Centi> {
        Centi::from_hundredths(h)
    }

    fn ok(level: Option<Centi>) -> Value {
        Value {
            level,
            status: Status::Ok,
        }
    }

    #[test]
    fn identity_parses() {
        let id = Identity::parse(b"NTiAudio,XL2,A2A-12345-E0,V4.71\r").expect("valid");
        assert_eq!(
            id,
            Identity {
                manufacturer: "NTiAudio",
                model: "XL2",
                serial: "A2A-12345-E0",
                firmware: "V4.71"
            }
        );
        assert_eq!(std::format!("{id}"), "NTiAudio,XL2,A2A-12345-E0,V4.71");
        for bad in [
            &b""[..],
            b"NTiAudio,XL2,A2A",
            b"NTiAudio,XL2,,V4.71",
            b"a,b,c,d,e",
            b"a,b,c,\x01",
        ] {
            assert_eq!(Identity::parse(bad), Err(Error::BadIdentity));
        }
    }

    #[test]
    fn init_state_parses() {
        assert_eq!(InitState::parse(b"RUNNING"), Ok(InitState::Running));
        assert_eq!(InitState::parse(b" stopped\r"), Ok(InitState::Stopped));
        assert_eq!(InitState::parse(b"Frozen"), Ok(InitState::Frozen));
        assert_eq!(InitState::parse(b"SETTLING"), Ok(InitState::Settling));
        assert_eq!(InitState::parse(b"PAUSED"), Ok(InitState::Paused));
        assert_eq!(InitState::parse(b"RUN"), Err(Error::BadAnswer));
    }

    #[test]
    fn values_parse() {
        assert_eq!(Value::parse(b"53.8 dB, OK"), Ok(ok(c(5380))));
        assert_eq!(Value::parse(b"-.- dB, OK"), Ok(ok(None)));
        assert_eq!(Value::parse(b"--.- dB, OK"), Ok(ok(None)));
        assert_eq!(Value::parse(b"53,8 dB, OK"), Ok(ok(c(5380))));
        assert_eq!(Value::parse(b"12.0 sec, OK"), Ok(ok(c(1200))));
        assert_eq!(Value::parse(b"-3.2 dB,OK\r"), Ok(ok(c(-320))));
        assert_eq!(Value::parse(b"53.8, OK"), Ok(ok(c(5380))));
        assert_eq!(
            Value::parse(b"99.9 dB, OVERLOAD"),
            Ok(Value {
                level: c(9990),
                status: Status::Overload
            })
        );
        assert_eq!(
            Value::parse(b"12.1 dB, under"),
            Ok(Value {
                level: c(1210),
                status: Status::UnderRange
            })
        );
        let odd = Value::parse(b"50.0 dB, SOMETHING_VERY_LONG_WORD").expect("kept");
        assert_eq!(odd.status.word(), "SOMETHING_VERY_L");
        let spaced = Value::parse(b"50.0 dB, OK      x").expect("kept");
        assert_eq!(spaced.status.word(), "OK______x");
    }

    #[test]
    fn text_and_garbage_are_errors() {
        assert_eq!(Value::parse(b"OPTION_REQUIRED"), Err(Error::NotAValue));
        assert_eq!(Value::parse(b"ERROR"), Err(Error::NotAValue));
        assert_eq!(Value::parse(b""), Err(Error::BadValue { index: 0 }));
        assert_eq!(Value::parse(b"53.8 dB"), Err(Error::BadValue { index: 0 }));
        assert_eq!(
            Value::parse(b"53.8 dB, "),
            Err(Error::BadValue { index: 0 })
        );
        assert_eq!(
            Value::parse(b"5-3 dB, OK"),
            Err(Error::BadValue { index: 0 })
        );
        assert_eq!(
            Value::parse(b"53.8 dB, OK, 1.0 dB, OK"),
            Err(Error::FieldCount {
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn several_values_on_one_line() {
        let want = [ok(c(5380)), ok(c(6120)), ok(None)];
        for line in [
            &b"53.8 dB, OK, 61.2 dB, OK, -.- dB, OK"[..],
            b"53.8 dB, OK; 61.2 dB, OK; -.- dB, OK",
            b"53,8 dB, OK, 61,2 dB, OK, -.- dB, OK\r",
            b"53.8 dB,OK,61.2 dB,OK,-.- dB,OK,",
        ] {
            let values = parse_values::<4>(line).expect("parses");
            assert_eq!(values.as_slice(), &want, "{:?}", core::str::from_utf8(line));
        }
        assert_eq!(
            parse_values::<2>(b"53.8 dB, OK, 61.2 dB, OK, -.- dB, OK"),
            Err(Error::BufferFull)
        );
        assert_eq!(
            parse_values::<4>(b"53.8 dB, OK, OPTION_REQUIRED"),
            Err(Error::NotAValue)
        );
        assert_eq!(
            parse_values::<4>(b"53.8 dB, OK, 7x dB, OK"),
            Err(Error::BadValue { index: 1 })
        );
    }

    #[test]
    fn error_queue() {
        assert_eq!(parse_error_queue(b"0"), Ok(0));
        assert_eq!(parse_error_queue(b"0,\"No error\""), Ok(0));
        assert_eq!(parse_error_queue(b"-113, \"Undefined header\""), Ok(-113));
        assert_eq!(parse_error_queue(b"5,-108"), Ok(5));
        assert_eq!(parse_error_queue(b"none"), Err(Error::BadErrorQueue));
        assert_eq!(error_text(0), "no error");
        assert_eq!(error_text(-113), "invalid command");
        assert_eq!(error_text(5), "licence missing");
        assert_eq!(error_text(9), "not valid while measuring");
        assert_eq!(error_text(42), "unknown error code");
    }

    fn any_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Ok),
            Just(Status::Overload),
            Just(Status::UnderRange),
            "[A-Z_]{1,16}".prop_filter_map("not a known word", |w| {
                let s = Status::parse(w.as_bytes())?;
                matches!(s, Status::Other(_)).then_some(s)
            }),
        ]
    }

    fn any_value() -> impl Strategy<Value = Value> {
        (
            prop::option::of(-Centi::MAX_HUNDREDTHS..=Centi::MAX_HUNDREDTHS),
            any_status(),
        )
            .prop_map(|(level, status)| Value {
                level: level.and_then(Centi::from_hundredths),
                status,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Identity::parse(&bytes);
            let _ = InitState::parse(&bytes);
            let _ = Value::parse(&bytes);
            let _ = parse_values::<4>(&bytes);
            let _ = parse_error_queue(&bytes);
        }

        #[test]
        fn values_round_trip(
            values in prop::collection::vec(any_value(), 1..6),
            unit in prop::sample::select(vec!["dB", "sec", ""]),
            sep in prop::sample::select(vec![", ", "; ", ","]),
        ) {
            let mut line = std::string::String::new();
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    line.push_str(sep);
                }
                v.write_to(unit, &mut line).expect("write");
            }
            let back = parse_values::<8>(line.as_bytes()).expect("parses");
            prop_assert_eq!(back.as_slice(), values.as_slice());
            if values.len() == 1 {
                prop_assert_eq!(Ok(values[0].clone()), Value::parse(line.as_bytes()));
            }
        }

        #[test]
        fn identity_round_trips(fields in prop::collection::vec("[!-+\\--~]{1,12}", 4)) {
            let line = fields.join(",");
            let id = Identity::parse(line.as_bytes()).expect("parses");
            prop_assert_eq!(std::format!("{id}"), line);
        }
    }
}
