//! [`Deci`]: a sound level in tenths of a decibel.
//!
//! Meters print levels with exactly one decimal (` 58.3`), so tenths as an
//! integer represent every value exactly: parsing and re-encoding never
//! rounds, and no float is needed on a microcontroller.

use core::fmt;

/// A level in tenths of a dB, within ±999.9 dB (what fits the meter's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deci(i16);

impl Deci {
    /// Largest magnitude in tenths (999.9 dB).
    pub const MAX_TENTHS: i16 = 9999;

    /// A level from tenths of a dB; `None` outside ±999.9 dB.
    pub const fn from_tenths(tenths: i16) -> Option<Deci> {
        if tenths > Self::MAX_TENTHS || tenths < -Self::MAX_TENTHS {
            None
        } else {
            Some(Deci(tenths))
        }
    }

    /// The level in tenths of a dB.
    pub const fn tenths(self) -> i16 {
        self.0
    }

    /// The level in dB.
    pub fn db(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    /// Parses a trimmed level such as `58.3`, `-2.0` or `120.0`: an optional
    /// minus, one to three digits, a point and exactly one digit.
    pub fn parse(text: &[u8]) -> Option<Deci> {
        let (negative, body) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let dot = body.iter().position(|&b| b == b'.')?;
        let (int, frac) = (&body[..dot], &body[dot + 1..]);
        if int.is_empty() || int.len() > 3 || frac.len() != 1 {
            return None;
        }
        let mut tenths: i16 = 0;
        for &b in int.iter().chain(frac) {
            if !b.is_ascii_digit() {
                return None;
            }
            // At most four digits: 9999 fits an i16, so this cannot overflow.
            tenths = tenths * 10 + i16::from(b - b'0');
        }
        Deci::from_tenths(if negative { -tenths } else { tenths })
    }
}

impl fmt::Display for Deci {
    /// `58.3`, `-2.0`: no padding (use a width, e.g. `{:>5}`, for the wire form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.unsigned_abs();
        let mut text: heapless::String<8> = heapless::String::new();
        // Cannot fail: at most "-999.9", six bytes.
        let _ = fmt::write(
            &mut text,
            format_args!(
                "{}{}.{}",
                if self.0 < 0 { "-" } else { "" },
                magnitude / 10,
                magnitude % 10
            ),
        );
        f.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meter_levels() {
        assert_eq!(Deci::parse(b"58.3"), Deci::from_tenths(583));
        assert_eq!(Deci::parse(b"120.0"), Deci::from_tenths(1200));
        assert_eq!(Deci::parse(b"-2.5"), Deci::from_tenths(-25));
        assert_eq!(Deci::parse(b"0.0"), Deci::from_tenths(0));
    }

    #[test]
    fn rejects_what_is_not_a_level() {
        for bad in [
            &b""[..],
            b"58",
            b"58.",
            b".3",
            b"58.33",
            b"1058.3",
            b"5 8.3",
            b"-",
            b"--.-",
            b"58,3",
            b"+58.3",
        ] {
            assert_eq!(Deci::parse(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn displays_with_one_decimal() {
        let mut s = std::string::String::new();
        use core::fmt::Write;
        let level = Deci::from_tenths(-5).expect("in range");
        write!(s, "[{level:>5}]").expect("write");
        assert_eq!(s, "[ -0.5]");
    }
}
