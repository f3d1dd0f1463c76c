//! Result lines and the answers of the simple requests.

use crate::Error;
use crate::nl43::trim;
use core::fmt::{self, Write as _};

/// The result line every command gets (`R+0000`..`R+0004`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// `R+0000`: done; a request's data line follows.
    Ok,
    /// `R+0001`: unknown command (also a command sent with a leading `$`).
    CommandError,
    /// `R+0002`: parameter count, type or format wrong.
    ParameterError,
    /// `R+0003`: setting sent to a request-only command, or the reverse.
    DesignationError,
    /// `R+0004`: not possible in the current state, or busy.
    StatusError,
}

impl ResultCode {
    /// All five codes, in code order.
    pub const ALL: [ResultCode; 5] = [
        ResultCode::Ok,
        ResultCode::CommandError,
        ResultCode::ParameterError,
        ResultCode::DesignationError,
        ResultCode::StatusError,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        match self {
            ResultCode::Ok => 0,
            ResultCode::CommandError => 1,
            ResultCode::ParameterError => 2,
            ResultCode::DesignationError => 3,
            ResultCode::StatusError => 4,
        }
    }

    /// Parses a line that *ends* in `R+dddd`.
    ///
    /// Only the end is looked at: leftover bytes from an earlier exchange or
    /// line noise in front of the result are how a host resynchronises on it.
    pub fn parse(line: &[u8]) -> Result<ResultCode, Error> {
        let line = trim(line);
        let Some(tail) = line.len().checked_sub(6).map(|at| &line[at..]) else {
            return Err(Error::NotAResultLine);
        };
        let (prefix, digits) = tail.split_at(2);
        if prefix != b"R+" || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Error::NotAResultLine);
        }
        let code = digits
            .iter()
            .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
        ResultCode::ALL
            .into_iter()
            .find(|r| r.code() == code)
            .ok_or(Error::UnknownResultCode(code))
    }
}

impl fmt::Display for ResultCode {
    /// The wire form, `R+0000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "R+{:04}", self.code())
    }
}

/// The answer to `Measure?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeasureState {
    /// `Start`: the meter is measuring.
    Measuring,
    /// `Stop`: the meter is not measuring.
    Stopped,
}

impl MeasureState {
    /// Parses `Start` / `Stop` (case-insensitive).
    pub fn parse(line: &[u8]) -> Result<MeasureState, Error> {
        let word = trim(line);
        if word.eq_ignore_ascii_case(b"Start") {
            Ok(MeasureState::Measuring)
        } else if word.eq_ignore_ascii_case(b"Stop") {
            Ok(MeasureState::Stopped)
        } else {
            Err(Error::BadAnswer)
        }
    }

    /// The wire word.
    pub const fn word(self) -> &'static str {
        match self {
            MeasureState::Measuring => "Start",
            MeasureState::Stopped => "Stop",
        }
    }
}

/// Parses an `On` / `Off` answer (e.g. `Pause?`, `Sleep Mode?`).
pub fn parse_on_off(line: &[u8]) -> Result<bool, Error> {
    let word = trim(line);
    if word.eq_ignore_ascii_case(b"On") {
        Ok(true)
    } else if word.eq_ignore_ascii_case(b"Off") {
        Ok(false)
    } else {
        Err(Error::BadAnswer)
    }
}

/// Parses a percentage answer (`SD Card Percentage?`): a whole number 0 to
/// 100, spaces around it and a trailing `%` allowed (the answer's exact
/// form is not confirmed on hardware: one parser, widened here if needed).
pub fn parse_percentage(line: &[u8]) -> Result<u8, Error> {
    let mut word = trim(line);
    if let [rest @ .., b'%'] = word {
        word = trim(rest);
    }
    if word.is_empty() || word.len() > 3 || !word.iter().all(u8::is_ascii_digit) {
        return Err(Error::BadAnswer);
    }
    let value = word.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    u8::try_from(value)
        .ok()
        .filter(|v| *v <= 100)
        .ok_or(Error::BadAnswer)
}

/// The meter's clock: local time with no zone, as `Clock?` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterClock {
    /// Calendar year, 2000..=2099 on these meters (wider accepted).
    pub year: u16,
    /// 1..=12
    pub month: u8,
    /// 1..=31, valid for the month.
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
    /// 0..=59
    pub second: u8,
}

impl MeterClock {
    /// Parses `2025/12/24 02:10:55`, checking it is a real date and time.
    pub fn parse(line: &[u8]) -> Result<MeterClock, Error> {
        let s = trim(line);
        // YYYY/MM/DD HH:MM:SS is exactly 19 bytes with separators at fixed places.
        if s.len() != 19 {
            return Err(Error::BadClock);
        }
        let sep_ok =
            s[4] == b'/' && s[7] == b'/' && s[10] == b' ' && s[13] == b':' && s[16] == b':';
        if !sep_ok {
            return Err(Error::BadClock);
        }
        let num = |range: core::ops::Range<usize>| -> Result<u16, Error> {
            let digits = &s[range];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(Error::BadClock);
            }
            Ok(digits
                .iter()
                .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0')))
        };
        let narrow = |v: u16| u8::try_from(v).map_err(|_| Error::BadClock);
        let clock = MeterClock {
            year: num(0..4)?,
            month: narrow(num(5..7)?)?,
            day: narrow(num(8..10)?)?,
            hour: narrow(num(11..13)?)?,
            minute: narrow(num(14..16)?)?,
            second: narrow(num(17..19)?)?,
        };
        clock.validate()
    }

    /// `self` when it is a real calendar date and time of day.
    pub fn validate(self) -> Result<MeterClock, Error> {
        let ok = (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60
            && self.year <= 9999;
        if ok { Ok(self) } else { Err(Error::BadClock) }
    }

    /// Seconds since 1970-01-01T00:00:00 in the meter's local time scale
    /// (subtract the meter's UTC offset to get Unix time).
    pub fn local_epoch_seconds(self) -> i64 {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// The clock at `seconds` since 1970-01-01 (local time scale); `None`
    /// outside years 0..=9999.
    pub fn from_local_epoch_seconds(seconds: i64) -> Option<MeterClock> {
        let days = seconds.div_euclid(86_400);
        let secs = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        let clock = MeterClock {
            year: u16::try_from(year).ok()?,
            month,
            day,
            hour: u8::try_from(secs / 3600).ok()?,
            minute: u8::try_from(secs / 60 % 60).ok()?,
            second: u8::try_from(secs % 60).ok()?,
        };
        clock.validate().ok()
    }
}

impl fmt::Display for MeterClock {
    /// The wire form, `2025/12/24 02:10:55`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

fn is_leap(year: u16) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The answer to `Battery Level?`: a word such as `Full`, not a percentage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatteryLevel(heapless::String<16>);

impl BatteryLevel {
    /// Parses a battery word: 1..=16 printable ASCII bytes after trimming.
    pub fn parse(line: &[u8]) -> Result<BatteryLevel, Error> {
        let word = trim(line);
        if word.is_empty() || !word.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(Error::BadAnswer);
        }
        let mut text = heapless::String::new();
        for &b in word {
            text.push(char::from(b)).map_err(|_| Error::BadAnswer)?;
        }
        Ok(BatteryLevel(text))
    }

    /// The word as the meter sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatteryLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Writes a result line (`R+0000\r\n`) into `out` (cleared first, like
/// every encoder in this crate).
pub fn encode_result<const N: usize>(
    code: ResultCode,
    out: &mut heapless::String<N>,
) -> Result<(), Error> {
    out.clear();
    write!(out, "{code}\r\n").map_err(|_| Error::BufferFull)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn result_codes_parse_and_resync_on_the_tail() {
        assert_eq!(ResultCode::parse(b"R+0000"), Ok(ResultCode::Ok));
        assert_eq!(ResultCode::parse(b"R+0004 "), Ok(ResultCode::StatusError));
        assert_eq!(
            ResultCode::parse(b"\x00junk#R+0001"),
            Ok(ResultCode::CommandError)
        );
        assert_eq!(
            ResultCode::parse(b"R+0009"),
            Err(Error::UnknownResultCode(9))
        );
        assert_eq!(ResultCode::parse(b"DOD?"), Err(Error::NotAResultLine));
        assert_eq!(
            ResultCode::parse(b" 58.3, 61.2"),
            Err(Error::NotAResultLine)
        );
    }

    #[test]
    fn clock_parses_real_dates_only() {
        let c = MeterClock::parse(b"2025/12/24 02:10:55").expect("valid");
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2025, 12, 24, 2, 10, 55)
        );
        assert_eq!(
            MeterClock::parse(b"2024/02/29 00:00:00").map(|c| c.day),
            Ok(29)
        );
        for bad in [
            &b"2025/02/29 00:00:00"[..],
            b"2025/12/24,02:10:55",
            b"2025/13/01 00:00:00",
            b"2025/12/24 24:00:00",
            b"25/12/24 02:10:55",
            b"2025/12/24 02:10:5x",
        ] {
            assert_eq!(MeterClock::parse(bad), Err(Error::BadClock));
        }
    }

    #[test]
    fn clock_epoch_matches_known_instant() {
        let c = MeterClock::parse(
            b"2026-11-22 14:15:16"
                .map(|b| if b == b'-' { b'/' } else { b })
                .as_slice(),
        )
        .expect("valid");
        // 2026-11-22T14:15:16Z
        assert_eq!(c.local_epoch_seconds(), 1_795_356_916);
        assert_eq!(MeterClock::from_local_epoch_seconds(1_795_356_916), Some(c));
    }

    #[test]
    fn answers_parse() {
        assert_eq!(MeasureState::parse(b"Start"), Ok(MeasureState::Measuring));
        assert_eq!(MeasureState::parse(b"stop "), Ok(MeasureState::Stopped));
        assert_eq!(MeasureState::parse(b"Run"), Err(Error::BadAnswer));
        assert_eq!(parse_on_off(b"On"), Ok(true));
        assert_eq!(
            BatteryLevel::parse(b"Full").map(|b| b.as_str() == "Full"),
            Ok(true)
        );
        assert_eq!(BatteryLevel::parse(b"  "), Err(Error::BadAnswer));
        assert_eq!(BatteryLevel::parse(b"\x01"), Err(Error::BadAnswer));
    }

    #[test]
    fn percentages_are_whole_numbers_up_to_100() {
        assert_eq!(parse_percentage(b"87"), Ok(87));
        assert_eq!(parse_percentage(b"  0 "), Ok(0));
        assert_eq!(parse_percentage(b"100%"), Ok(100));
        assert_eq!(parse_percentage(b" 42 %"), Ok(42));
        for bad in [&b"101"[..], b"", b"%", b"-1", b"4.5", b"1000", b"Full"] {
            assert_eq!(parse_percentage(bad), Err(Error::BadAnswer), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn answer_parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let _ = ResultCode::parse(&bytes);
            let _ = MeterClock::parse(&bytes);
            let _ = MeasureState::parse(&bytes);
            let _ = BatteryLevel::parse(&bytes);
            let _ = parse_on_off(&bytes);
            let _ = parse_percentage(&bytes);
        }

        #[test]
        fn clock_round_trips(seconds in 946_684_800i64..4_102_444_800) {
            let clock = MeterClock::from_local_epoch_seconds(seconds).expect("in range");
            let text = std::format!("{clock}");
            prop_assert_eq!(MeterClock::parse(text.as_bytes()), Ok(clock));
            prop_assert_eq!(clock.local_epoch_seconds(), seconds);
        }
    }
}
