//! Requests slmd sends, and the `#1` setting replies.

use crate::Error;
use crate::ascii::{printable, trim};
use crate::svantek::{body, fields};
use core::fmt::Write as _;

/// **\[guess\]** The `#1` setting letter that reads the unit type (`#1,U?;` →
/// `#1,U971;`).
pub const UNIT_TYPE: u8 = b'U';
/// **\[guess\]** The `#1` setting letter that reads the serial number (`#1,N?;`).
pub const SERIAL_NUMBER: u8 = b'N';
/// **\[guess\]** The `#1` setting letter that reads the firmware version (`#1,W?;`).
pub const FIRMWARE: u8 = b'W';

/// Which averaging cycle a `#2` request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aver {
    /// `i`: the current (running) cycle.
    Current,
    /// `a`: the previous completed cycle.
    Previous,
}

impl Aver {
    /// The wire letter.
    pub const fn letter(self) -> u8 {
        match self {
            Aver::Current => b'i',
            Aver::Previous => b'a',
        }
    }
}

/// One request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// `#2,i;` / `#2,a;`, with `,s` (`#2,i,s;`) when `state` is set: the
    /// sound-level-meter results, answered by [`super::ResultsReply`].
    Results {
        /// Which cycle.
        aver: Aver,
        /// Ask for the RUN/PAUSE/TRIGGER state bits (newer units).
        state: bool,
    },
    /// `#1,X?;`: read the setting with letter `X` (ASCII letter), answered by
    /// `#1,X<value>;` (see [`parse_setting_reply`]).
    Setting(u8),
    /// `#1;`: dump every setting.
    Settings,
}

impl Request {
    /// Writes the frame with its `;` into `out` (cleared first).
    /// [`Error::BadParameter`] for a setting letter that is not an ASCII letter.
    pub fn encode<const N: usize>(&self, out: &mut heapless::String<N>) -> Result<(), Error> {
        out.clear();
        let written = match *self {
            Request::Results { aver, state } => write!(
                out,
                "#2,{}{};",
                char::from(aver.letter()),
                if state { ",s" } else { "" }
            ),
            Request::Setting(letter) => {
                if !letter.is_ascii_alphabetic() {
                    return Err(Error::BadParameter);
                }
                write!(out, "#1,{}?;", char::from(letter))
            }
            Request::Settings => out.write_str("#1;"),
        };
        written.map_err(|_| Error::BufferFull)
    }

    /// Parses a request frame as the meter would (with or without its `;`),
    /// for the simulator. [`Error::UnknownCommand`] for another function or
    /// form, [`Error::BadParameter`] for a bad argument.
    pub fn parse(frame: &[u8]) -> Result<Request, Error> {
        let mut parts = fields(body(frame)).map(trim);
        match parts.next() {
            Some(b"#1") => match (parts.next(), parts.next()) {
                (None, _) => Ok(Request::Settings),
                (Some([letter, b'?']), None) if letter.is_ascii_alphabetic() => {
                    Ok(Request::Setting(*letter))
                }
                _ => Err(Error::BadParameter),
            },
            Some(b"#2") => {
                let aver = match parts.next() {
                    Some(b"i") => Aver::Current,
                    Some(b"a") => Aver::Previous,
                    _ => return Err(Error::BadParameter),
                };
                match (parts.next(), parts.next()) {
                    (None, _) => Ok(Request::Results { aver, state: false }),
                    (Some(b"s"), None) => Ok(Request::Results { aver, state: true }),
                    _ => Err(Error::BadParameter),
                }
            }
            _ => Err(Error::UnknownCommand),
        }
    }
}

/// The value of setting `letter` in a `#1` reply (`#1,U971;` with `U` →
/// `971`), trimmed. The reply may carry several settings (`#1,U971,N12345;`):
/// the first field starting with `letter` (case-sensitive) is taken.
///
/// [`Error::BadFrame`] when the frame is not a `#1` reply,
/// [`Error::MissingSetting`] when it does not carry the letter or its value
/// is not printable ASCII.
pub fn parse_setting_reply(frame: &[u8], letter: u8) -> Result<&str, Error> {
    let mut parts = fields(body(frame));
    if parts.next().map(trim) != Some(b"#1") {
        return Err(Error::BadFrame);
    }
    parts
        .map(trim)
        .find_map(|field| match field.split_first() {
            Some((&l, value)) if l == letter => Some(value),
            _ => None,
        })
        .map(trim)
        .and_then(printable)
        .ok_or(Error::MissingSetting { letter })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(r: Request) -> std::string::String {
        let mut out = heapless::String::<32>::new();
        r.encode(&mut out).expect("fits");
        std::string::String::from(out.as_str())
    }

    #[test]
    fn encodes_requests() {
        assert_eq!(
            encoded(Request::Results {
                aver: Aver::Current,
                state: true
            }),
            "#2,i,s;"
        );
        assert_eq!(
            encoded(Request::Results {
                aver: Aver::Previous,
                state: false
            }),
            "#2,a;"
        );
        assert_eq!(encoded(Request::Setting(UNIT_TYPE)), "#1,U?;");
        assert_eq!(encoded(Request::Setting(SERIAL_NUMBER)), "#1,N?;");
        assert_eq!(encoded(Request::Setting(FIRMWARE)), "#1,W?;");
        assert_eq!(encoded(Request::Settings), "#1;");
        let mut out = heapless::String::<32>::new();
        assert_eq!(
            Request::Setting(b'?').encode(&mut out),
            Err(Error::BadParameter)
        );
    }

    #[test]
    fn setting_replies() {
        assert_eq!(parse_setting_reply(b"#1,U971", UNIT_TYPE), Ok("971"));
        assert_eq!(parse_setting_reply(b"#1,U971;\r\n", UNIT_TYPE), Ok("971"));
        assert_eq!(
            parse_setting_reply(b"#1,U971,N12345", SERIAL_NUMBER),
            Ok("12345")
        );
        assert_eq!(
            parse_setting_reply(b"#1,U971", SERIAL_NUMBER),
            Err(Error::MissingSetting { letter: b'N' })
        );
        assert_eq!(
            parse_setting_reply(b"#2,U971", UNIT_TYPE),
            Err(Error::BadFrame)
        );
        assert_eq!(
            parse_setting_reply(b"#1,u971", UNIT_TYPE),
            Err(Error::MissingSetting { letter: b'U' })
        );
    }

    #[test]
    fn parses_requests_like_the_meter() {
        assert_eq!(Request::parse(b"#1;"), Ok(Request::Settings));
        assert_eq!(Request::parse(b"#1,N?"), Ok(Request::Setting(b'N')));
        assert_eq!(
            Request::parse(b"#2,a,s;"),
            Ok(Request::Results {
                aver: Aver::Previous,
                state: true
            })
        );
        assert_eq!(Request::parse(b"#3,i;"), Err(Error::UnknownCommand));
        assert_eq!(Request::parse(b"#2,x;"), Err(Error::BadParameter));
        assert_eq!(Request::parse(b"#1,N;"), Err(Error::BadParameter));
    }

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(prev, state)| Request::Results {
                aver: if prev { Aver::Previous } else { Aver::Current },
                state
            }),
            prop::char::range('A', 'z')
                .prop_filter("letter", char::is_ascii_alphabetic)
                .prop_map(|c| Request::Setting(c as u8)),
            Just(Request::Settings),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..48), letter in any::<u8>()) {
            let _ = Request::parse(&bytes);
            let _ = parse_setting_reply(&bytes, letter);
        }

        #[test]
        fn requests_round_trip(request in any_request()) {
            prop_assert_eq!(Request::parse(encoded(request).as_bytes()), Ok(request));
        }

        #[test]
        fn setting_reply_round_trips(letter in prop::char::range('A', 'Z'), value in "[!-+\\--:<-~][ -+\\--:<-~]{0,10}[!-+\\--:<-~]") {
            let frame = std::format!("#1,{letter}{value};");
            prop_assert_eq!(parse_setting_reply(frame.as_bytes(), letter as u8), Ok(value.as_str()));
        }
    }
}
