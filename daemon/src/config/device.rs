//! `[[device]]`: a meter, its family and how to reach it.
//!
//! Two forms. [`RawDevice`] is what the file says, key for key (flat, as
//! SPEC §5 writes it: `transport = "tcp"` beside `address`), with every key
//! a family may or may not allow left optional so a rule can tell "written"
//! from "default". [`DeviceConfig`] is what the rest of slmd reads: built
//! only by validation, with the link as a tagged [`LinkConfig`] (a tcp
//! meter has an address and nothing serial; a serial meter has a path and
//! its [`SerialFraming`]), the family's defaults filled in, and the keys a
//! family does not use refused with a located error. So an impossible
//! combination cannot be written.
//!
//! What each family allows and needs is declared by the family itself
//! ([`FamilyRules`], next to its driver) and enforced in one place
//! (`validate::device`).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{UtcOffset, locate, units};
use crate::device::{FAMILIES, Family};

/// One `[[device]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDevice {
    pub id: String,
    pub protocol: Protocol,
    pub transport: Transport,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub data_bits: Option<u8>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub live_mode: Option<Mode>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub live_poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub answer_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub command_gap: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub status_interval: Option<Duration>,
    #[serde(default)]
    pub utc_offset: UtcOffset,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub reconnect_min: Option<Duration>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub reconnect_max: Option<Duration>,
    #[serde(default)]
    pub keep_measuring: Option<bool>,
    #[serde(default)]
    pub no_sleep: Option<bool>,
    #[serde(default)]
    pub sync_clock: Option<SyncClock>,
}

/// One meter, validated: everything a device task and `slmd check` read.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    /// Names the meter in records, logs, the API and the fleet; 1 to 64 of
    /// `A-Z a-z 0-9 . _ -`, unique on this gateway.
    pub id: String,
    /// The meter family, and with it the driver that speaks to it.
    pub protocol: Protocol,
    /// How the meter is reached.
    pub link: LinkConfig,
    /// Polled answers or the meter's continuous output (families that have
    /// one; NL-43 `DRD?`).
    pub mode: Mode,
    /// The mode while live subscribers watch the meter (`live_mode`;
    /// default: `mode`): `"stream"` with `mode = "poll"` streams only while
    /// someone watches and polls otherwise.
    pub live_mode: Mode,
    /// How often a reading is requested (polled families), or how often
    /// the meter is expected to push one (push families).
    pub poll_interval: Duration,
    /// Whether `poll_interval` was written: a push family learns the
    /// meter's logging period from its lines when it was not.
    pub poll_interval_set: bool,
    /// A different poll interval while live subscribers watch (faster for a
    /// portal view, or slower to spare a cellular link). With
    /// `mode = "stream"` allowed, streaming while watched is the fast form.
    pub live_poll_interval: Option<Duration>,
    /// How long to wait for an answer before the meter counts as not
    /// answering.
    pub answer_timeout: Duration,
    /// Pause after an answer before the next command (some meters drop
    /// commands sent too soon).
    pub command_gap: Duration,
    /// How often the slower state queries (run state, clock, battery) go out.
    pub status_interval: Duration,
    /// The meter's clock is local time without a zone; this is its offset
    /// from UTC, used to turn `device_time` into UTC.
    pub utc_offset: UtcOffset,
    /// First reconnect delay after a lost connection.
    pub reconnect_min: Duration,
    /// Cap of the exponential reconnect delay.
    pub reconnect_max: Duration,
    /// Meter care (SPEC §4), opt-in; only what the family can do.
    pub care: MeterCare,
}

/// Meter care, each opt-in per device (SPEC §4). Validation refuses what
/// the family's protocol cannot do ([`CareRules`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MeterCare {
    /// `keep_measuring = true`: a meter found stopped (a power cut, a key
    /// press) is started again, and the journal says so once per episode.
    pub keep_measuring: bool,
    /// `no_sleep = true`: the meter's sleep mode is turned off at connect,
    /// where sleep would cut the link.
    pub no_sleep: bool,
    /// `sync_clock = "daily"`: the meter clock is set from the gateway's
    /// when they differ by more than [`crate::device::CLOCK_SYNC_THRESHOLD`]
    /// and the gateway clock is synchronised, at most once a day.
    pub sync_clock: SyncClock,
}

/// `sync_clock`: whether slmd sets the meter's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SyncClock {
    /// `"off"` (the default): the meter's clock is read, never set.
    #[default]
    Off,
    /// `"daily"`: set it when it is off, at most once a day.
    Daily,
}

impl super::Keyword for SyncClock {
    const WHAT: &'static str = "sync_clock";
    const ALL: &'static [(&'static str, Self)] =
        &[("off", SyncClock::Off), ("daily", SyncClock::Daily)];
}

/// Whether a family's protocol can do one kind of meter care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// It can.
    Yes,
    /// It cannot, and why (shown in the config error).
    No(&'static str),
}

/// Which meter care a family's protocol allows.
#[derive(Debug, Clone, Copy)]
pub struct CareRules {
    /// Reading the run state and starting a measurement.
    pub keep_measuring: Support,
    /// Turning the meter's sleep mode off.
    pub no_sleep: Support,
    /// Setting the meter's clock.
    pub sync_clock: Support,
}

impl DeviceConfig {
    /// `tcp 192.0.2.10:2255` or `serial /dev/ttyUSB0`, for tables and logs.
    pub fn target(&self) -> String {
        match &self.link {
            LinkConfig::Tcp { address } => format!("tcp {address}"),
            LinkConfig::Serial { path, .. } => format!("serial {}", path.display()),
        }
    }

    /// The family's driver.
    pub fn family(&self) -> &'static dyn Family {
        self.protocol.family()
    }

    /// Every setting but the id, as `(key, value)` in the file's spelling
    /// (`("address", "192.0.2.10:2255")`, `("poll_interval", "1s")`), in a
    /// fixed order. Two configs of one meter are equal exactly when their
    /// settings are, so the running daemon shows these in `/v1/status` and
    /// `slmd check` tells from them what a reload would change (a reload
    /// restarts a meter whose config is not equal). A default the file did
    /// not write is marked `(default)` where writing it changes behaviour.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        // Every field named, so a new one cannot be left out here.
        let DeviceConfig {
            id: _,
            protocol,
            link,
            mode,
            live_mode,
            poll_interval,
            poll_interval_set,
            live_poll_interval,
            answer_timeout,
            command_gap,
            status_interval,
            utc_offset,
            reconnect_min,
            reconnect_max,
            care:
                MeterCare {
                    keep_measuring,
                    no_sleep,
                    sync_clock,
                },
        } = self;
        let duration = |d: &Duration| units::format_duration(*d);
        let mut settings = vec![("protocol", protocol.as_str().to_owned())];
        match link {
            LinkConfig::Tcp { address } => {
                settings.push(("transport", "tcp".to_owned()));
                settings.push(("address", address.clone()));
            }
            LinkConfig::Serial {
                path,
                framing:
                    SerialFraming {
                        baud,
                        data_bits,
                        stop_bits,
                        parity,
                    },
            } => {
                settings.push(("transport", "serial".to_owned()));
                settings.push(("path", path.display().to_string()));
                settings.push(("baud", baud.to_string()));
                settings.push(("data_bits", data_bits.to_string()));
                settings.push(("stop_bits", stop_bits.to_string()));
                settings.push(("parity", parity.as_str().to_owned()));
            }
        }
        let poll = if *poll_interval_set {
            duration(poll_interval)
        } else {
            format!("{} (default)", duration(poll_interval))
        };
        settings.extend([
            ("mode", mode.as_str().to_owned()),
            ("live_mode", live_mode.as_str().to_owned()),
            ("poll_interval", poll),
            (
                "live_poll_interval",
                live_poll_interval
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), duration),
            ),
            ("answer_timeout", duration(answer_timeout)),
            ("command_gap", duration(command_gap)),
            ("status_interval", duration(status_interval)),
            ("utc_offset", utc_offset.to_string()),
            ("reconnect_min", duration(reconnect_min)),
            ("reconnect_max", duration(reconnect_max)),
            ("keep_measuring", keep_measuring.to_string()),
            ("no_sleep", no_sleep.to_string()),
            ("sync_clock", sync_clock.as_str().to_owned()),
        ]);
        settings
    }
}

/// How a meter is reached: the transport and what only that transport has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkConfig {
    /// The meter's LAN port (or a serial-to-TCP bridge).
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// RS-232C or USB serial.
    Serial {
        /// Absolute device path (prefer `/dev/serial/by-id/…`).
        path: PathBuf,
        /// Line settings: the family's defaults unless overridden.
        framing: SerialFraming,
    },
}

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialFraming {
    /// Line speed, as set on the meter.
    pub baud: u32,
    /// Data bits: 7 or 8.
    pub data_bits: u8,
    /// Stop bits: 1 or 2.
    pub stop_bits: u8,
    /// Parity.
    pub parity: Parity,
}

impl fmt::Display for SerialFraming {
    /// `38400 8N1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} {}{parity}{}",
            self.baud, self.data_bits, self.stop_bits
        )
    }
}

/// What a family declares about itself for configuration: its name, its
/// defaults, which keys it uses, and its limits. Enforced by validation;
/// a family never parses the file itself.
#[derive(Debug)]
pub struct FamilyRules {
    /// `protocol = "…"` in the file.
    pub name: &'static str,
    /// The family as a person calls it (`Rion NL-43/NL-53/NL-63`).
    pub title: &'static str,
    /// `false`: the meter pushes its readings and nobody polls it, so the
    /// polling keys (`answer_timeout`, `command_gap`, `status_interval`,
    /// `live_poll_interval`, `mode`, `live_mode`) are refused.
    pub polled: bool,
    /// Whether `mode = "stream"` (and `live_mode = "stream"`) is possible.
    pub streams: bool,
    /// Smallest `poll_interval` (and `live_poll_interval`), and why.
    pub min_poll: (Duration, &'static str),
    /// `poll_interval` when not written.
    pub default_poll: Duration,
    /// Smallest `command_gap`, and why.
    pub min_command_gap: (Duration, &'static str),
    /// `command_gap` when not written.
    pub default_command_gap: Duration,
    /// `answer_timeout` when not written.
    pub default_answer_timeout: Duration,
    /// Serial settings when not written.
    pub serial: SerialFraming,
    /// Baud rates the meter can be set to.
    pub bauds: &'static [u32],
    /// Which meter care the protocol allows.
    pub care: CareRules,
    /// Which health values the protocol reports.
    pub health: crate::device::health::HealthRules,
    /// The level interval levels are computed from (SPEC §11).
    pub level_input: LevelInput,
}

/// The finest level a family gives, which interval levels (SPEC §11) are
/// the energy average of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelInput {
    /// The reading's metric (`lp`, `leq`).
    pub metric: &'static str,
    /// `true`: an Leq over the meter's own cycle that ends at the reading
    /// (exact energy over its span); `false`: an instantaneous level (Lp)
    /// standing for the time until the next reading.
    pub per_cycle: bool,
}

/// `answer_timeout` bounds for every family: a meter answers within a
/// second or two; a minute covers a slow serial-to-TCP bridge.
pub const ANSWER_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(60));

/// Which meter family a device is: a handle to its driver.
#[derive(Clone, Copy)]
pub struct Protocol(&'static dyn Family);

impl Protocol {
    /// The family's driver.
    pub fn family(self) -> &'static dyn Family {
        self.0
    }

    /// The family's rules.
    pub fn rules(self) -> &'static FamilyRules {
        self.0.rules()
    }

    /// The spelling used in `slmd.toml` and in status output.
    pub fn as_str(self) -> &'static str {
        self.rules().name
    }

    /// The family called `name` in the file, if there is one.
    pub fn named(name: &str) -> Option<Protocol> {
        FAMILIES
            .iter()
            .find(|f| f.rules().name == name)
            .map(|f| Protocol(*f))
    }
}

impl PartialEq for Protocol {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Protocol {}

impl Hash for Protocol {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol({})", self.as_str())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `"nl43", "xl2", …` for messages.
fn family_names() -> String {
    FAMILIES
        .iter()
        .map(|f| format!("{:?}", f.rules().name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Strings only, one of the families.
        struct V;
        impl Visitor<'_> for V {
            type Value = Protocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "one of the strings {}", family_names())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Protocol, E> {
                Protocol::named(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown protocol {}; expected one of: {}",
                        locate::shown(v),
                        family_names()
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Which transport the file names (the tag of [`LinkConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `"tcp"`: needs `address`.
    Tcp,
    /// `"serial"`: needs `path`.
    Serial,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// `"none"`.
    None,
    /// `"even"`.
    Even,
    /// `"odd"`.
    Odd,
}

/// How readings are taken from a polled meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// `"poll"`: one request per `poll_interval`.
    #[default]
    Poll,
    /// `"stream"`: the meter's continuous output (NL-43 `DRD?`, 10 a
    /// second).
    Stream,
}

impl super::Keyword for Transport {
    const WHAT: &'static str = "transport";
    const ALL: &'static [(&'static str, Self)] =
        &[("tcp", Transport::Tcp), ("serial", Transport::Serial)];
}

impl super::Keyword for Parity {
    const WHAT: &'static str = "parity";
    const ALL: &'static [(&'static str, Self)] = &[
        ("none", Parity::None),
        ("even", Parity::Even),
        ("odd", Parity::Odd),
    ];
}

impl super::Keyword for Mode {
    const WHAT: &'static str = "mode";
    const ALL: &'static [(&'static str, Self)] = &[("poll", Mode::Poll), ("stream", Mode::Stream)];
}
