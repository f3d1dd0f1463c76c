//! Small byte-slice helpers the newer codecs share (no indexing, no panics).

/// Removes ASCII whitespace (space, tab, CR, LF) at both ends.
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// An unsigned decimal number of 1..=9 digits (no sign, no spaces).
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &d| acc.checked_mul(10)?.checked_add(digit(d)?))
}

/// The value of an ASCII decimal digit.
pub(crate) fn digit(byte: u8) -> Option<u32> {
    char::from(byte).to_digit(10)
}

/// A signed decimal number with an optional `+`/`-`, within `i16`.
pub(crate) fn parse_i16(text: &[u8]) -> Option<i16> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let magnitude = i32::try_from(parse_u32(digits)?).ok()?;
    i16::try_from(if negative {
        magnitude.checked_neg()?
    } else {
        magnitude
    })
    .ok()
}

/// A trimmed field made only of `-`, `.` and `,`, with at least one `-`:
/// the meters' way of showing "no value".
pub(crate) fn is_dashes(text: &[u8]) -> bool {
    text.contains(&b'-') && text.iter().all(|&b| matches!(b, b'-' | b'.' | b','))
}

/// The bytes as `&str` when they are printable ASCII (space allowed).
pub(crate) fn printable(bytes: &[u8]) -> Option<&str> {
    if bytes.iter().all(|&b| b == b' ' || b.is_ascii_graphic()) {
        core::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// Any write failure into a fixed-capacity buffer is [`Error::BufferFull`]
/// (`map_err(full)` for both `fmt::Error` and `CapacityError`).
pub(crate) fn full<E>(_: E) -> crate::Error {
    crate::Error::BufferFull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(trim(b" \r\nab c\t\r\n"), b"ab c");
        assert_eq!(parse_u32(b"0042"), Some(42));
        assert_eq!(parse_u32(b"999999999"), Some(999_999_999));
        assert_eq!(parse_u32(b"1234567890"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_i16(b"-113"), Some(-113));
        assert_eq!(parse_i16(b"+5"), Some(5));
        assert_eq!(parse_i16(b"40000"), None);
        assert!(is_dashes(b"-.-") && is_dashes(b"---") && !is_dashes(b"..") && !is_dashes(b"-1"));
    }
}
