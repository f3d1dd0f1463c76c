//! [`Centi`]: a sound level in hundredths of a decibel.
//!
//! The families after the NL-43 print levels with one or two decimals
//! (`53.8` on the XL2, `64.50` on a Svantek) and some units use a decimal
//! comma (`53,8`). Hundredths as an integer hold every such value exactly.

use crate::Deci;
use crate::ascii::digit;
use core::fmt;

/// A level in hundredths of a dB, within ±9999.99 dB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centi(i32);

impl Centi {
    /// Largest magnitude in hundredths (9999.99 dB).
    pub const MAX_HUNDREDTHS: i32 = 999_999;

    /// A level from hundredths of a dB; `None` outside ±9999.99 dB.
    pub const fn from_hundredths(hundredths: i32) -> Option<Centi> {
        if hundredths > Self::MAX_HUNDREDTHS || hundredths < -Self::MAX_HUNDREDTHS {
            None
        } else {
            Some(Centi(hundredths))
        }
    }

    /// The level in hundredths of a dB.
    pub const fn hundredths(self) -> i32 {
        self.0
    }

    /// The level in dB.
    pub fn db(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Parses a trimmed level: an optional `-` or `+`, digits, and optionally
    /// a decimal point or decimal comma followed by digits (`53.8`, `64.50`,
    /// `-3.2`, `53,8`, `54`, `.5`). At least one digit is required.
    ///
    /// More than two decimals are rounded half away from zero on the third
    /// (`1.005` → `1.01`, `-1.005` → `-1.01`, `1.0049` → `1.00`); the digits
    /// after the third must still be digits. `None` for anything else and
    /// for a magnitude above 9999.99 dB after rounding.
    pub fn parse(text: &[u8]) -> Option<Centi> {
        let (negative, body) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        let (int, frac) = match body.iter().position(|&b| b == b'.' || b == b',') {
            Some(at) => {
                let (int, sep_frac) = body.split_at(at);
                (int, sep_frac.get(1..)?)
            }
            None => (body, &b""[..]),
        };
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.iter().chain(frac).all(u8::is_ascii_digit) {
            return None;
        }
        let mut magnitude: u32 = 0;
        for &d in int {
            magnitude = magnitude.checked_mul(10)?.checked_add(digit(d)?)?;
        }
        // Digits were checked above; a missing decimal counts as 0.
        let decimal = |i: usize| frac.get(i).and_then(|&d| digit(d)).unwrap_or(0);
        for i in 0..2 {
            magnitude = magnitude.checked_mul(10)?.checked_add(decimal(i))?;
        }
        if decimal(2) >= 5 {
            magnitude = magnitude.checked_add(1)?;
        }
        let magnitude = i32::try_from(magnitude).ok()?;
        Centi::from_hundredths(if negative {
            magnitude.checked_neg()?
        } else {
            magnitude
        })
    }
}

impl From<Deci> for Centi {
    fn from(level: Deci) -> Centi {
        // ±9999 tenths is ±99990 hundredths: always in range.
        Centi(i32::from(level.tenths()).saturating_mul(10))
    }
}

impl fmt::Display for Centi {
    /// `53.80`, `-3.20`: always two decimals, no padding (use a width for that).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.unsigned_abs();
        let mut text: heapless::String<12> = heapless::String::new();
        // Cannot fail: at most "-9999.99", eight bytes.
        let _ = fmt::write(
            &mut text,
            format_args!(
                "{}{}.{:02}",
                if self.0 < 0 { "-" } else { "" },
                magnitude / 100,
                magnitude % 100
            ),
        );
        f.pad(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(h: i32) -> Option<Centi> {
        Centi::from_hundredths(h)
    }

    #[test]
    fn parses_levels_in_every_house_style() {
        assert_eq!(Centi::parse(b"53.8"), c(5380));
        assert_eq!(Centi::parse(b"64.50"), c(6450));
        assert_eq!(Centi::parse(b"-3.2"), c(-320));
        assert_eq!(Centi::parse(b"53,8"), c(5380));
        assert_eq!(Centi::parse(b"54"), c(5400));
        assert_eq!(Centi::parse(b".5"), c(50));
        assert_eq!(Centi::parse(b"+1.25"), c(125));
        assert_eq!(Centi::parse(b"9999.99"), c(999_999));
        assert_eq!(Centi::parse(b"-0.00"), c(0));
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(Centi::parse(b"1.005"), c(101));
        assert_eq!(Centi::parse(b"-1.005"), c(-101));
        assert_eq!(Centi::parse(b"1.0049"), c(100));
        assert_eq!(Centi::parse(b"53.8449999"), c(5384));
        assert_eq!(Centi::parse(b"9999.994"), c(999_999));
        assert_eq!(Centi::parse(b"9999.995"), None);
    }

    #[test]
    fn rejects_what_is_not_a_level() {
        for bad in [
            &b""[..],
            b".",
            b"-",
            b"10000.00",
            b"5 3.8",
            b"53.8.1",
            b"53,8,1",
            b"-.-",
            b"--",
            b"53.8dB",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(Centi::parse(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }

    #[test]
    fn converts_and_displays() {
        let deci = Deci::from_tenths(-583).expect("in range");
        assert_eq!(Centi::from(deci), Centi(-5830));
        assert_eq!(std::format!("{}", Centi(-5830)), "-58.30");
        assert_eq!(std::format!("{:>7}", Centi(5)), "   0.05");
        assert_eq!(Centi(5380).db(), 53.8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            if let Some(level) = Centi::parse(&bytes) {
                prop_assert!(level.hundredths().abs() <= Centi::MAX_HUNDREDTHS);
            }
        }

        #[test]
        fn display_round_trips(h in -Centi::MAX_HUNDREDTHS..=Centi::MAX_HUNDREDTHS) {
            let level = Centi(h);
            prop_assert_eq!(Centi::parse(std::format!("{level}").as_bytes()), Some(level));
            let comma = std::format!("{level}").replace('.', ",");
            prop_assert_eq!(Centi::parse(comma.as_bytes()), Some(level));
        }
    }
}
