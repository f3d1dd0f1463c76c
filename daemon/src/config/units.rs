//! Durations and sizes as written in `slmd.toml`, and the serde glue for them.
//!
//! Durations are strings: an integer or decimal number, optionally a space,
//! then one of `ms`, `s`, `m`, `h`, `d` (`"500ms"`, `"1.5s"`, `"24h"`). A bare
//! number is rejected because `poll_interval = "5"` could mean seconds or
//! milliseconds, and a wrong guess is a silent bug on a remote gateway.
//!
//! Sizes are a whole number of bytes (`"1000"` or the TOML integer `1000`),
//! or a number followed by `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or
//! `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024). Units are matched without
//! regard to case (`"512mib"` is 512 MiB); a fractional part is allowed and
//! rounded down to whole bytes (`"1.5KiB"` is 1536 bytes).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::locate::shown;

/// The expected form of a duration, quoted in every duration error.
const DURATION_FORM: &str =
    r#"expected a number followed by ms, s, m, h or d (e.g. "500ms", "5s", "24h")"#;

/// The expected form of a size, quoted in every size error.
const SIZE_FORM: &str = r#"expected a whole number of bytes or a number followed by B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. "512MiB", "2GiB")"#;

/// Parses a duration such as `"500ms"`, `"1.5s"`, `"5m"`, `"24h"` or `"7d"`.
///
/// The error names the value and the expected form, ready to show to a user.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {}: {DURATION_FORM}", shown(text));
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!(
            "invalid duration {}: a duration cannot be negative; {DURATION_FORM}",
            shown(text)
        ));
    }
    let (number, unit) = split_number(s);
    let nanos_per_unit: u128 = match unit.trim_start() {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return Err(bad()),
    };
    let nanos = scale(number, nanos_per_unit).ok_or_else(bad)?;
    let too_large = || format!("invalid duration {}: too large", shown(text));
    let nanos = nanos.ok_or_else(too_large)?;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| too_large())?;
    // The remainder is below 10^9 and so always fits.
    let sub = u32::try_from(nanos % 1_000_000_000).map_err(|_| too_large())?;
    Ok(Duration::new(secs, sub))
}

/// Parses a size such as `"512MiB"`, `"2GiB"`, `"100KB"` or `"1000"` (bytes).
///
/// The error names the value and the expected form, ready to show to a user.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {}: {SIZE_FORM}", shown(text));
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!(
            "invalid size {}: a size cannot be negative; {SIZE_FORM}",
            shown(text)
        ));
    }
    let (number, unit) = split_number(s);
    let unit = unit.trim_start().to_ascii_lowercase();
    let multiplier: u128 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = scale(number, multiplier).ok_or_else(bad)?;
    bytes
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("invalid size {}: too large", shown(text)))
}

/// Formats a duration the way a user would write it (`"500ms"`, `"1s"`,
/// `"15m"`, `"24h"`), for messages such as "must be at least 1s".
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    let ms = d.as_millis();
    if ms % 1000 != 0 || ms == 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s % 86_400 == 0 {
        format!("{}d", s / 86_400)
    } else if s % 3_600 == 0 {
        format!("{}h", s / 3_600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// Splits `"1.5 GiB"` into `("1.5", " GiB")`.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// `number × unit`, exactly, for a decimal `number` (digits, optionally one
/// `.` with digits on both sides, `_` allowed between digits as in TOML).
///
/// `None` when `number` is not such a number; `Some(None)` on overflow.
/// Digits beyond the 18th after the point cannot change the result for our
/// units (at most 8.64e13 per unit) and are ignored, so nothing overflows.
fn scale(number: &str, unit: u128) -> Option<Option<u128>> {
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (number, None),
    };
    let digits = |part: &str| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_digit() || c == '_')
            && part.starts_with(|c: char| c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_digit())
    };
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return None;
    }
    let mut whole: u128 = 0;
    for c in int.chars().filter(char::is_ascii_digit) {
        let digit = u128::from(c.to_digit(10)?);
        whole = match whole.checked_mul(10).and_then(|w| w.checked_add(digit)) {
            Some(w) => w,
            None => return Some(None),
        };
    }
    let Some(total) = whole.checked_mul(unit) else {
        return Some(None);
    };
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for c in frac
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .take(18)
    {
        numerator = numerator * 10 + u128::from(c.to_digit(10)?);
        denominator *= 10;
    }
    Some(total.checked_add(numerator * unit / denominator))
}

/// A duration field: `#[serde(deserialize_with = "units::duration")]`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

/// An optional duration field:
/// `#[serde(default, deserialize_with = "units::opt_duration")]`.
pub(crate) fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    /// Lets `Option` drive the duration visitor.
    struct Wrapped(Duration);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(DurationVisitor).map(Wrapped)
        }
    }
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

/// A list of durations: `#[serde(deserialize_with = "units::durations")]`.
pub(crate) fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    /// Lets `Vec` drive the duration visitor.
    struct Wrapped(Duration);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(DurationVisitor).map(Wrapped)
        }
    }
    Ok(Vec::<Wrapped>::deserialize(d)?
        .into_iter()
        .map(|w| w.0)
        .collect())
}

/// Accepts only strings, so `poll_interval = 5` says what was expected.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a string like "5s""#)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

/// Accepts a size string or a non-negative integer number of bytes.
pub(crate) struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a size like "512MiB" or a whole number of bytes"#)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("invalid size {v}: a size cannot be negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("5s"), Ok(ms(5_000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1_500)));
        assert_eq!(parse_duration("15m"), Ok(ms(900_000)));
        assert_eq!(parse_duration("24h"), Ok(ms(86_400_000)));
        assert_eq!(parse_duration("7d"), Ok(ms(7 * 86_400_000)));
        assert_eq!(parse_duration("0.25h"), Ok(ms(900_000)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2 s "), Ok(ms(2_000)));
        assert_eq!(parse_duration("1_000ms"), Ok(ms(1_000)));
        assert_eq!(
            parse_duration("1.000000001s"),
            Ok(Duration::new(1, 1)),
            "nanosecond precision, no float rounding"
        );
    }

    #[test]
    fn durations_rejected_with_value_and_expected_form() {
        for bad in [
            "5",
            "5 parsecs",
            "s",
            "",
            "1.s",
            ".5s",
            "1..5s",
            "5S",
            "5 sec",
            "5us",
            "1e3s",
            "_5s",
            "5_s",
            "1.5.2s",
        ] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("ms, s, m, h or d"), "{err}");
        }
        let err = parse_duration("-5s").expect_err("negative");
        assert!(err.contains("negative"), "{err}");
        let err = parse_duration("99999999999999999999999d").expect_err("huge");
        assert!(err.contains("too large"), "{err}");
        let err = parse_duration("999999999999999999999999999999999999999999999d")
            .expect_err("beyond u128");
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn the_documented_example_message() {
        assert_eq!(
            parse_duration("5 parsecs").expect_err("unit"),
            r#"invalid duration "5 parsecs": expected a number followed by ms, s, m, h or d (e.g. "500ms", "5s", "24h")"#
        );
    }

    #[test]
    fn sizes_in_every_unit() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("1000B"), Ok(1000));
        assert_eq!(parse_size("100KB"), Ok(100_000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("512 mib"), Ok(512 << 20));
        assert_eq!(parse_size("0.5B"), Ok(0), "rounded down to whole bytes");
    }

    #[test]
    fn sizes_rejected_with_value_and_expected_form() {
        for bad in ["", "MiB", "12 parsecs", "1.5.5GB", "1e9", "2 GiBs", "0x10"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("KiB, MiB, GiB or TiB"), "{err}");
        }
        assert!(parse_size("-1MiB").expect_err("neg").contains("negative"));
        assert!(
            parse_size("20000000TiB")
                .expect_err("overflow")
                .contains("too large")
        );
    }

    #[test]
    fn durations_formatted_as_written() {
        assert_eq!(format_duration(ms(200)), "200ms");
        assert_eq!(format_duration(ms(1_500)), "1500ms");
        assert_eq!(format_duration(ms(1_000)), "1s");
        assert_eq!(format_duration(ms(90_000)), "90s");
        assert_eq!(format_duration(ms(900_000)), "15m");
        assert_eq!(format_duration(ms(3_600_000)), "1h");
        assert_eq!(format_duration(ms(86_400_000)), "1d");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
