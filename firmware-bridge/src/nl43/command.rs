//! Commands: `Name?` requests and `Name,param` settings.
//!
//! Names are case-insensitive but inner spaces count (`Battery Level`, not
//! `BatteryLevel`). A command goes out as one write ending in CR LF: the meter
//! drops a command whose bytes arrive more than 100 ms apart.

use crate::Error;
use core::fmt::Write as _;

/// The commands slmd and the simulator know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// `DOD?`: displayed values, 64 fields.
    Dod,
    /// `DLC?`: final result of the last measurement, same layout as `DOD?`.
    Dlc,
    /// `DRD?`: continuous output at 10 Hz until [`super::DRD_STOP`].
    Drd,
    /// `DRD?status`: continuous output with timestamp and health fields.
    DrdStatus,
    /// `Measure?` / `Measure,Start|Stop`.
    Measure,
    /// `Pause?` / `Pause,On|Off`.
    Pause,
    /// `Clock?` / `Clock,YYYY/MM/DD HH:MM:SS`.
    Clock,
    /// `Battery Level?`.
    BatteryLevel,
    /// `SD Card Percentage?`.
    SdCardPercentage,
    /// `SD Card Free Size?`.
    SdCardFreeSize,
    /// `Sleep Mode?` / `Sleep Mode,On|Off`.
    SleepMode,
    /// `Echo?` / `Echo,On|Off`.
    Echo,
    /// `Serial Number?`.
    SerialNumber,
    /// `Type?`.
    Type,
    /// `System Version?`.
    SystemVersion,
    /// `Frequency Weighting (Main)?`.
    FrequencyWeightingMain,
    /// `Time Weighting (Main)?`.
    TimeWeightingMain,
}

impl Item {
    /// Every known item.
    pub const ALL: [Item; 17] = [
        Item::Dod,
        Item::Dlc,
        Item::Drd,
        Item::DrdStatus,
        Item::Measure,
        Item::Pause,
        Item::Clock,
        Item::BatteryLevel,
        Item::SdCardPercentage,
        Item::SdCardFreeSize,
        Item::SleepMode,
        Item::Echo,
        Item::SerialNumber,
        Item::Type,
        Item::SystemVersion,
        Item::FrequencyWeightingMain,
        Item::TimeWeightingMain,
    ];

    /// The command name as written on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Item::Dod => "DOD",
            Item::Dlc => "DLC",
            Item::Drd | Item::DrdStatus => "DRD",
            Item::Measure => "Measure",
            Item::Pause => "Pause",
            Item::Clock => "Clock",
            Item::BatteryLevel => "Battery Level",
            Item::SdCardPercentage => "SD Card Percentage",
            Item::SdCardFreeSize => "SD Card Free Size",
            Item::SleepMode => "Sleep Mode",
            Item::Echo => "Echo",
            Item::SerialNumber => "Serial Number",
            Item::Type => "Type",
            Item::SystemVersion => "System Version",
            Item::FrequencyWeightingMain => "Frequency Weighting (Main)",
            Item::TimeWeightingMain => "Time Weighting (Main)",
        }
    }

    /// Whether `Name?` is valid.
    pub const fn can_request(self) -> bool {
        true
    }

    /// Whether `Name,param` is valid.
    pub const fn can_set(self) -> bool {
        matches!(
            self,
            Item::Measure | Item::Pause | Item::Clock | Item::SleepMode | Item::Echo
        )
    }
}

/// One command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `Name?` (and `DRD?status`).
    Request(Item),
    /// `Name,param`; the parameter is passed as written, without validation
    /// beyond "printable, no comma-free checks": the meter judges it.
    Set(Item, &'a str),
}

impl<'a> Command<'a> {
    /// Writes the command with its CR LF into `out` (cleared first).
    pub fn encode<const N: usize>(&self, out: &mut heapless::String<N>) -> Result<(), Error> {
        out.clear();
        let written = match self {
            Command::Request(Item::DrdStatus) => out.write_str("DRD?status\r\n"),
            Command::Request(item) => write!(out, "{}?\r\n", item.name()),
            Command::Set(item, param) => {
                if param.bytes().any(|b| b == b'\r' || b == b'\n') {
                    return Err(Error::BadParameter);
                }
                write!(out, "{},{}\r\n", item.name(), param)
            }
        };
        written.map_err(|_| Error::BufferFull)
    }

    /// Parses a command line as the meter would (without CR LF).
    ///
    /// Errors map to the meter's result codes: [`Error::UnknownCommand`] →
    /// `R+0001`, [`Error::BadParameter`] → `R+0002`, [`Error::Designation`]
    /// → `R+0003`. A leading `$` makes the
    /// command unknown, as on the real meter.
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, Error> {
        let line = core::str::from_utf8(line).map_err(|_| Error::UnknownCommand)?;
        let line = line.trim_end_matches(['\r', ' ']);
        if let Some((name, param)) = line.split_once(',') {
            let item = lookup(name)?;
            if !item.can_set() {
                return Err(Error::Designation);
            }
            return Ok(Command::Set(item, param));
        }
        if let Some((name, suffix)) = line.split_once('?') {
            let item = lookup(name)?;
            return match (item, suffix) {
                (Item::Drd, s) if s.eq_ignore_ascii_case("status") => {
                    Ok(Command::Request(Item::DrdStatus))
                }
                (_, "") => Ok(Command::Request(item)),
                _ => Err(Error::BadParameter),
            };
        }
        // A bare name is a setting without its parameter.
        let item = lookup(line)?;
        Err(if item.can_set() {
            Error::BadParameter
        } else {
            Error::Designation
        })
    }
}

fn lookup(name: &str) -> Result<Item, Error> {
    Item::ALL
        .into_iter()
        .filter(|item| *item != Item::DrdStatus)
        .find(|item| item.name().eq_ignore_ascii_case(name))
        .ok_or(Error::UnknownCommand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(cmd: Command<'_>) -> std::string::String {
        let mut out = heapless::String::<64>::new();
        cmd.encode(&mut out).expect("fits");
        std::string::String::from(out.as_str())
    }

    #[test]
    fn encodes_requests_and_settings() {
        assert_eq!(encoded(Command::Request(Item::Dod)), "DOD?\r\n");
        assert_eq!(
            encoded(Command::Request(Item::BatteryLevel)),
            "Battery Level?\r\n"
        );
        assert_eq!(encoded(Command::Request(Item::DrdStatus)), "DRD?status\r\n");
        assert_eq!(
            encoded(Command::Set(Item::Measure, "Start")),
            "Measure,Start\r\n"
        );
    }

    #[test]
    fn parses_like_the_meter() {
        assert_eq!(Command::parse(b"dod?"), Ok(Command::Request(Item::Dod)));
        assert_eq!(
            Command::parse(b"BATTERY LEVEL?"),
            Ok(Command::Request(Item::BatteryLevel))
        );
        assert_eq!(Command::parse(b"BatteryLevel?"), Err(Error::UnknownCommand));
        assert_eq!(
            Command::parse(b"$Measure,Start"),
            Err(Error::UnknownCommand)
        );
        assert_eq!(
            Command::parse(b"Measure,Start"),
            Ok(Command::Set(Item::Measure, "Start"))
        );
        assert_eq!(Command::parse(b"DOD,1"), Err(Error::Designation));
        assert_eq!(
            Command::parse(b"DRD?status"),
            Ok(Command::Request(Item::DrdStatus))
        );
        assert_eq!(
            Command::parse(b"Clock,2025/12/24 02:10:55"),
            Ok(Command::Set(Item::Clock, "2025/12/24 02:10:55"))
        );
    }

    #[test]
    fn every_item_round_trips() {
        for item in Item::ALL {
            let text = encoded(Command::Request(item));
            let line = text.trim_end_matches("\r\n");
            assert_eq!(
                Command::parse(line.as_bytes()),
                Ok(Command::Request(item)),
                "{line}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Command::parse(&bytes);
        }
    }
}
