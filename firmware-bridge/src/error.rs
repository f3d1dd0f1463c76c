use core::fmt;

/// Everything a codec in this crate can reject.
///
/// Plain data, no allocation: the decode path returns it for every malformed
/// input instead of panicking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The line does not end in a result code `R+dddd`.
    NotAResultLine,
    /// A result line with a code outside `R+0000`..`R+0004`.
    UnknownResultCode(u16),
    /// A data line with the wrong number of comma-separated fields.
    FieldCount {
        /// Fields the format requires (at least this many for open formats).
        expected: u16,
        /// Fields found (saturating).
        found: u16,
    },
    /// Field `index` (0-based) is neither a level like ` 58.3` nor dashes.
    BadValue {
        /// 0-based field index in the line.
        index: u16,
    },
    /// Field `index` (0-based) should be a `0`/`1` flag.
    BadFlag {
        /// 0-based field index in the line.
        index: u16,
    },
    /// A `DRD?` counter that is not a number.
    BadCounter,
    /// A `Clock?` answer that is not `YYYY/MM/DD HH:MM:SS` or not a real date.
    BadClock,
    /// An answer word that is not one of the expected ones.
    BadAnswer,
    /// A command line whose name is not a known command.
    UnknownCommand,
    /// A setting sent to a request-only command, or a request to a setting-only one.
    Designation,
    /// A command parameter that does not fit the command.
    BadParameter,
    /// The output buffer is too small for the encoded form.
    BufferFull,
    /// An XL2 reply that is text where a value was expected (e.g.
    /// `OPTION_REQUIRED` when a licence is missing).
    NotAValue,
    /// An XL2 `*IDN?` answer that is not `manufacturer,model,serial,firmware`.
    BadIdentity,
    /// An XL2 `SYST:ERRO?` answer that does not start with an integer code.
    BadErrorQueue,
    /// A Svantek frame that does not start with `#<function>` as expected
    /// (e.g. a `#1` frame where `#2` results were awaited).
    BadFrame,
    /// A Svantek value for a known tag that is neither `?` nor the tag's
    /// form (a level, a count, a `0`/`1` flag, `L(nn)`).
    BadTag {
        /// The tag letter (`R`, `V`, `L`, …).
        tag: u8,
    },
    /// A Svantek `#1` reply that does not carry the setting asked for.
    MissingSetting {
        /// The setting letter asked for.
        letter: u8,
    },
    /// A Casella line that does not start with a `<tag>`.
    NoLineTag,
    /// A date or time that is not `YYYY-MM-DD` / `HH:MM:SS` or not a real one.
    BadTimestamp,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotAResultLine => f.write_str("not a result line (expected R+dddd)"),
            Error::UnknownResultCode(code) => write!(f, "unknown result code R+{code:04}"),
            Error::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            Error::BadValue { index } => {
                write!(f, "field {index} is neither a level (e.g. 58.3) nor dashes")
            }
            Error::BadFlag { index } => write!(f, "field {index} is not a 0/1 flag"),
            Error::BadCounter => f.write_str("DRD counter is not a number"),
            Error::BadClock => f.write_str("clock is not a valid YYYY/MM/DD HH:MM:SS"),
            Error::BadAnswer => f.write_str("unexpected answer word"),
            Error::UnknownCommand => f.write_str("unknown command"),
            Error::Designation => f.write_str("setting/request designation does not fit"),
            Error::BadParameter => f.write_str("bad command parameter"),
            Error::BufferFull => f.write_str("output buffer too small"),
            Error::NotAValue => {
                f.write_str("the meter answered text where a value was expected (missing option?)")
            }
            Error::BadIdentity => f.write_str(
                "identity answer is not manufacturer,model,serial,firmware (four fields)",
            ),
            Error::BadErrorQueue => {
                f.write_str("error queue answer does not start with an integer code")
            }
            Error::BadFrame => {
                f.write_str("frame does not start with the expected #<function> header")
            }
            Error::BadTag { tag } => write!(
                f,
                "value of tag {:?} is neither ? nor the form the tag takes",
                char::from(*tag)
            ),
            Error::MissingSetting { letter } => {
                write!(f, "reply does not carry setting {:?}", char::from(*letter))
            }
            Error::NoLineTag => f.write_str("line does not start with a <tag>"),
            Error::BadTimestamp => f.write_str("date or time is not a valid YYYY-MM-DD / HH:MM:SS"),
        }
    }
}

impl core::error::Error for Error {}
