//! Configuration: the one serde tree for `/etc/slmd/slmd.toml` (SPEC §5).
//!
//! This module owns:
//! - the types every other module reads its settings from ([`Config`] and
//!   its tables), each `deny_unknown_fields`, each field documented;
//! - parsing, including the string forms of durations (`"5s"`, see
//!   [`parse_duration`]), sizes (`"512MiB"`, see [`parse_size`]) and UTC
//!   offsets (`"+01:00"`, see [`UtcOffset`]);
//! - validation of everything that can be checked without touching a device
//!   or the network, *before* anything starts ([`load`] and [`parse`] only
//!   return a `Config` that passed it);
//! - located errors: every error — TOML syntax, unknown key, wrong type, bad
//!   value, missing key, and the semantic rules checked after deserializing —
//!   is a [`ConfigError`] naming the file, the 1-based line and column and the
//!   key path (`device[1].address`), and saying what was expected:
//!
//!   ```text
//!   /etc/slmd/slmd.toml:12:17: device[0].poll_interval: invalid duration "5 parsecs": expected a number followed by ms, s, m, h or d (e.g. "500ms", "5s", "24h")
//!   ```
//!
//! Where an error points:
//! - a bad value (wrong type, bad duration, out of range, bad address): at the
//!   value;
//! - an unknown key, or a key that must not be there (`path` on a tcp
//!   device, `token_file` next to `tokens`): at the key;
//! - a missing key: at the header of the table that lacks it (`[[device]]`),
//!   or at line 1 for a table that is not in the file at all;
//! - a TOML syntax error: where the parser gave up, with the key being
//!   written there when it can be told.
//!
//! Only the first error is reported (in the order the checks run; semantic
//! rules in document order), because one exact error is what a field tech
//! can act on. Positions count characters, not bytes, so they match what an
//! editor shows.
//!
//! Decisions beyond SPEC §5, so that the daemon never starts with a value
//! that would make it spin or hang:
//! - `status_interval` must be at least 1s (like `poll_interval`: the meter
//!   answers at most once a second); `reconnect_min`, `api.stream_max`,
//!   `fleet.interval`, `fleet.token_retry`, `fleet.timeout`,
//!   `fleet.retry_min`, `fleet.retry_max` and `fleet.auth_retry` must not be
//!   zero (a zero period is a busy loop, and `tokio::time::interval` panics
//!   on it), and `fleet.retry_min` must not exceed `fleet.retry_max`;
//! - `buffer.max_bytes`, when set, must be at least 1 byte;
//! - tokens (API and fleet) must not be empty strings;
//! - `gateway.id` must not be empty or contain whitespace or control
//!   characters, and `gateway.state_dir` must not be empty;
//! - `mqtt.url` is `mqtt://host[:port]` or `mqtts://host[:port]`: no path and
//!   no credentials in the URL; `fleet.url` may have a path but no
//!   credentials (tokens carry the authentication);
//! - `baud` is checked on every device but only used on serial ones.

mod locate;
mod units;
mod validate;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub use units::{parse_duration, parse_size};

/// Reads, parses and validates the configuration file at `path`.
///
/// A file that cannot be read is reported as `{file}: cannot read: {reason}`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read: {e}"),
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, path),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            // The prefix up to `valid` is UTF-8 by definition.
            let prefix = String::from_utf8_lossy(bytes.get(..valid).unwrap_or_default());
            let (line, column) = locate::line_col(&prefix, prefix.len());
            Err(ConfigError {
                file: path.to_path_buf(),
                line: Some(line),
                column: Some(column),
                key: None,
                message: "the file is not valid UTF-8 text; save it as UTF-8".to_owned(),
            })
        }
    }
}

/// Parses and validates configuration text; `path` is only used in errors.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let root = toml::de::DeTable::parse(text).map_err(|e| locate::syntax_error(text, path, &e))?;
    let doc = locate::Doc::new(text, &root);
    let config: Config = serde_path_to_error::deserialize(toml::Deserializer::from(root.clone()))
        .map_err(|e| doc.deserialize_error(path, e))?;
    let first = validate::problems(&config)
        .into_iter()
        .map(|problem| doc.error(path, problem))
        .min_by_key(|e| (e.line, e.column));
    match first {
        Some(error) => Err(error),
        None => Ok(config),
    }
}

/// Why a configuration was rejected, and exactly where.
///
/// Displays as `{file}:{line}:{column}: {key}: {message}`, leaving out the
/// parts that are unknown (an unreadable file is `{file}: cannot read: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The configuration file, as given to [`load`] or [`parse`].
    pub file: PathBuf,
    /// 1-based line of the offending text, when the error has a place.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text.
    pub column: Option<usize>,
    /// Dotted key path with array indexes, e.g. `device[1].address`,
    /// `fleet.tokens`; for an unknown key, the unknown key's own path.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// The one-line form used by `Display`.
    fn render(&self) -> String {
        let mut out = self.file.display().to_string();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        out.push_str(": ");
        if let Some(key) = &self.key {
            out.push_str(key);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// The whole of `slmd.toml`. Every table may be left out; an empty file is a
/// valid configuration with no devices.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this gateway is and where it keeps its state.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Limits and durability of the offline ring buffer (SPEC §8).
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The meters this gateway owns, one `[[device]]` table each.
    #[serde(default, rename = "device")]
    pub devices: Vec<DeviceConfig>,
    /// The local HTTP API and live feed (SPEC §6).
    #[serde(default)]
    pub api: ApiConfig,
    /// Optional fan-out to a local MQTT broker; absent means no MQTT.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Push to the fleet server (SPEC §7); off unless enabled.
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// `[gateway]`: identity and state location.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Names this gateway to the fleet and in status output; defaults to the
    /// machine's hostname so a fresh install needs no edit.
    pub id: String,
    /// Where the buffer database lives; the package creates
    /// `/var/lib/slmd` (systemd `StateDirectory=slmd`).
    pub state_dir: PathBuf,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: default_gateway_id(),
            state_dir: PathBuf::from("/var/lib/slmd"),
        }
    }
}

/// The machine's hostname (from `/proc/sys/kernel/hostname`, else
/// `/etc/hostname`, trimmed), or `"gateway"` when neither can be read.
pub fn default_gateway_id() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

/// `[buffer]`: caps and durability of the offline ring buffer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Hard cap on stored readings; the oldest are evicted first so a gateway
    /// offline for weeks keeps the newest data instead of stopping.
    pub max_records: u64,
    /// Optional second cap on the database size, for small SD cards.
    pub max_bytes: Option<ByteSize>,
    /// How hard each write is pushed to disk: trades SD-card wear and
    /// throughput against losing the last readings on power loss.
    pub durability: Durability,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_records: 10_000_000,
            max_bytes: None,
            durability: Durability::Normal,
        }
    }
}

/// How the buffer commits writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `"normal"`: survives a crash of slmd; a power cut may lose the last
    /// moments (SQLite `synchronous=NORMAL` in WAL mode).
    #[default]
    Normal,
    /// `"full"`: every commit reaches the disk before it is acknowledged
    /// (SQLite `synchronous=FULL`).
    Full,
}

/// One `[[device]]` table: a meter and how to reach it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Names the meter in records, logs, the API and the fleet; 1 to 64 of
    /// `A-Z a-z 0-9 . _ -`, unique on this gateway.
    pub id: String,
    /// Which command protocol the meter speaks.
    pub protocol: Protocol,
    /// Whether the meter is reached over TCP or a serial line.
    pub transport: Transport,
    /// `host:port` of a TCP meter (host is a name, IPv4 or `[IPv6]`);
    /// required for tcp, not allowed for serial.
    #[serde(default)]
    pub address: Option<String>,
    /// Absolute device path of a serial meter (prefer `/dev/serial/by-id/…`,
    /// which survives re-plugging); required for serial, not allowed for tcp.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Serial line speed; must match the meter's setting (9600, 19200,
    /// 38400, 57600 or 115200). Ignored for tcp.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// How often a reading is requested; at least 1s because the meter
    /// rejects `DOD?` faster than once a second.
    #[serde(default = "secs::<1>", deserialize_with = "units::duration")]
    pub poll_interval: Duration,
    /// A different poll interval while live subscribers are watching
    /// (faster for a portal view, or slower to spare a cellular link); at
    /// least 1s. Absent: `poll_interval` always.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub live_poll_interval: Option<Duration>,
    /// How long to wait for an answer before the meter counts as not
    /// answering; 100ms to 60s.
    #[serde(default = "secs::<3>", deserialize_with = "units::duration")]
    pub answer_timeout: Duration,
    /// Pause after an answer before the next command, because the meter
    /// drops commands sent too soon; at least 200ms.
    #[serde(default = "default_command_gap", deserialize_with = "units::duration")]
    pub command_gap: Duration,
    /// How often the run state (`Measure?`) and battery are queried; at
    /// least 1s.
    #[serde(default = "secs::<10>", deserialize_with = "units::duration")]
    pub status_interval: Duration,
    /// The meter's clock is local time without a zone; this is its offset
    /// from UTC, used to turn `device_time` into UTC.
    #[serde(default)]
    pub utc_offset: UtcOffset,
    /// First reconnect delay after a lost connection; not zero.
    #[serde(default = "secs::<1>", deserialize_with = "units::duration")]
    pub reconnect_min: Duration,
    /// Cap of the exponential reconnect delay, so a meter that comes back is
    /// found within this time; at least `reconnect_min`.
    #[serde(default = "secs::<60>", deserialize_with = "units::duration")]
    pub reconnect_max: Duration,
}

/// The baud rate of a meter left at its factory setting.
fn default_baud() -> u32 {
    38_400
}

/// Default `command_gap`.
fn default_command_gap() -> Duration {
    Duration::from_millis(200)
}

/// A whole-seconds default, for `#[serde(default = "secs::<N>")]`.
fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// Which command protocol a meter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `"nl43"`: Rion NL-43/NL-53/NL-63 command protocol.
    Nl43,
}

/// How a meter is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `"tcp"`: the meter's LAN port (or a serial-to-TCP bridge); needs
    /// `address`.
    Tcp,
    /// `"serial"`: RS-232C or USB serial; needs `path`.
    Serial,
}

/// Names and values of the string-valued enums, in one place, so parsing,
/// error messages and `as_str` agree.
trait Keyword: Sized + Copy + 'static {
    /// What the value is called in errors ("transport").
    const WHAT: &'static str;
    /// Every accepted spelling with its value.
    const ALL: &'static [(&'static str, Self)];
}

impl Keyword for Protocol {
    const WHAT: &'static str = "protocol";
    const ALL: &'static [(&'static str, Self)] = &[("nl43", Protocol::Nl43)];
}

impl Keyword for Transport {
    const WHAT: &'static str = "transport";
    const ALL: &'static [(&'static str, Self)] =
        &[("tcp", Transport::Tcp), ("serial", Transport::Serial)];
}

impl Keyword for Durability {
    const WHAT: &'static str = "durability";
    const ALL: &'static [(&'static str, Self)] =
        &[("normal", Durability::Normal), ("full", Durability::Full)];
}

/// Serde visitor for a [`Keyword`] enum: strings only, unknown values named.
struct KeywordVisitor<T>(std::marker::PhantomData<T>);

impl<T: Keyword + PartialEq> KeywordVisitor<T> {
    /// `"tcp", "serial"` for messages.
    fn names() -> String {
        T::ALL
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The spelling of `value` in the config file.
    fn name_of(value: T) -> &'static str {
        T::ALL
            .iter()
            .find(|(_, v)| *v == value)
            .map_or("?", |(name, _)| name)
    }
}

impl<T: Keyword + PartialEq> Visitor<'_> for KeywordVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if T::ALL.len() == 1 {
            write!(f, "the string {}", Self::names())
        } else {
            write!(f, "one of the strings {}", Self::names())
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::ALL
            .iter()
            .find(|(name, _)| *name == v)
            .map(|(_, value)| *value)
            .ok_or_else(|| {
                E::custom(format!(
                    "unknown {} {v:?}; expected one of: {}",
                    T::WHAT,
                    Self::names()
                ))
            })
    }
}

/// `Deserialize`, `as_str` and `Display` for the keyword enums.
macro_rules! keyword_impls {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(KeywordVisitor::<$ty>(std::marker::PhantomData))
            }
        }

        impl $ty {
            /// The spelling used in `slmd.toml` (and in status output).
            pub fn as_str(self) -> &'static str {
                KeywordVisitor::<$ty>::name_of(self)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

keyword_impls!(Protocol, Transport, Durability);

/// A meter clock's offset from UTC, written `"+HH:MM"` or `"-HH:MM"`
/// within ±14:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UtcOffset(i32);

impl UtcOffset {
    /// UTC itself.
    pub const UTC: UtcOffset = UtcOffset(0);

    /// An offset of `seconds` east of UTC, if within ±14:00.
    pub fn from_seconds(seconds: i32) -> Option<Self> {
        (seconds.abs() <= 14 * 3600).then_some(Self(seconds))
    }

    /// Seconds east of UTC (`"+01:00"` is 3600, `"-05:30"` is -19800).
    pub fn seconds(self) -> i32 {
        self.0
    }

    /// The same offset as a `chrono` offset, for converting meter times.
    pub fn to_fixed_offset(self) -> chrono::FixedOffset {
        use chrono::Offset;
        chrono::FixedOffset::east_opt(self.0).unwrap_or_else(|| chrono::Utc.fix())
    }

    /// Parses `"+HH:MM"` / `"-HH:MM"`; the error names the value and the form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid UTC offset {text:?}: expected \"+HH:MM\" or \"-HH:MM\" within ±14:00 (e.g. \"+00:00\", \"+09:00\", \"-05:30\")"
            )
        };
        let b = text.as_bytes();
        let sign = match b.first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        if b.len() != 6 || b[3] != b':' {
            return Err(bad());
        }
        let two = |s: &[u8]| -> Option<i32> {
            match s {
                [a @ b'0'..=b'9', b @ b'0'..=b'9'] => {
                    Some(i32::from(a - b'0') * 10 + i32::from(b - b'0'))
                }
                _ => None,
            }
        };
        let (Some(hours), Some(minutes)) = (two(&b[1..3]), two(&b[4..6])) else {
            return Err(bad());
        };
        if minutes >= 60 {
            return Err(bad());
        }
        Self::from_seconds(sign * (hours * 3600 + minutes * 60)).ok_or_else(bad)
    }
}

impl fmt::Display for UtcOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { '-' } else { '+' };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
    }
}

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Strings only.
        struct V;
        impl Visitor<'_> for V {
            type Value = UtcOffset;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string like "+01:00""#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UtcOffset, E> {
                UtcOffset::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A number of bytes, written `"512MiB"`, `"2GiB"`, `"100KB"`, `"1000"` or as
/// a TOML integer (bytes). See [`parse_size`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(units::SizeVisitor).map(ByteSize)
    }
}

/// `[api]`: the local HTTP API and live feed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the API listens on; loopback by default so nothing is
    /// exposed until tokens are configured.
    #[serde(deserialize_with = "listen_addr")]
    pub listen: SocketAddr,
    /// Bearer tokens accepted by the API; required when `listen` is not a
    /// loopback address.
    pub tokens: Vec<String>,
    /// Longest a single live stream stays open, so forgotten clients do not
    /// hold resources forever; they reconnect.
    #[serde(deserialize_with = "units::duration")]
    pub stream_max: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8470)),
            tokens: Vec::new(),
            stream_max: Duration::from_secs(15 * 60),
        }
    }
}

/// `api.listen`: an `ip:port` socket address with a message that shows the form.
fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    /// Strings only.
    struct V;
    impl Visitor<'_> for V {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(r#"a string like "127.0.0.1:8470""#)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            v.parse().map_err(|_| {
                E::custom(format!(
                    r#"invalid listen address {v:?}: expected an IP address and port (e.g. "127.0.0.1:8470", "0.0.0.0:8470", "[::]:8470")"#
                ))
            })
        }
    }
    d.deserialize_str(V)
}

/// `[mqtt]`: optional fan-out of readings to a local broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host[:port]` or `mqtts://host[:port]` (TLS).
    pub url: String,
    /// First topic level(s) before `/{device}/…`, so several gateways or
    /// apps can share a broker; no `+`, `#`, or leading/trailing `/`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT quality of service for published readings (0, 1 or 2).
    #[serde(default = "default_qos")]
    pub qos: u8,
}

/// Default `mqtt.topic_prefix`.
fn default_topic_prefix() -> String {
    "slmd".to_owned()
}

/// Default `mqtt.qos`: at least once.
fn default_qos() -> u8 {
    1
}

/// `[fleet]`: push of the buffer to the fleet server (SPEC §7).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Opt-in: while false no data leaves the gateway.
    pub enabled: bool,
    /// Base URL of the fleet server (`http://` or `https://`); required
    /// when enabled.
    pub url: Option<String>,
    /// The current token and, during a rotation, the previous one (at most
    /// two); the uplink fails over between them.
    pub tokens: Vec<String>,
    /// A file holding the tokens instead of `tokens`, so the config can be
    /// world-readable while the secret is not; not together with `tokens`.
    pub token_file: Option<PathBuf>,
    /// Most records per push request, bounding request size on a cellular
    /// link; 1 to 10000.
    pub batch_max: u32,
    /// Push tick when the backlog is caught up.
    #[serde(deserialize_with = "units::duration")]
    pub interval: Duration,
    /// After failing over to the other token, how often the preferred
    /// (first) token is tried again.
    #[serde(deserialize_with = "units::duration")]
    pub token_retry: Duration,
    /// Gzip request bodies (JSON records compress about tenfold, which is
    /// what a cellular data plan pays for).
    pub gzip: bool,
    /// How long one push request may take, connect to last byte, before it
    /// counts as failed and is retried.
    #[serde(deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// First wait after a failed push (5xx, timeout, connection error);
    /// doubles with jitter on every further failure.
    #[serde(deserialize_with = "units::duration")]
    pub retry_min: Duration,
    /// Longest wait between failed pushes.
    #[serde(deserialize_with = "units::duration")]
    pub retry_max: Duration,
    /// While every token is rejected, how often pushing is tried again (a
    /// reload with a good token retries at once).
    #[serde(deserialize_with = "units::duration")]
    pub auth_retry: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            url: None,
            tokens: Vec::new(),
            token_file: None,
            batch_max: 500,
            interval: Duration::from_secs(5),
            token_retry: Duration::from_secs(5 * 60),
            gzip: true,
            timeout: Duration::from_secs(30),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(5 * 60),
            auth_retry: Duration::from_secs(5 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        match parse(text, Path::new("t.toml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, Path::new("t.toml")) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn display_leaves_out_unknown_parts() {
        let mut e = ConfigError {
            file: "/etc/slmd/slmd.toml".into(),
            line: Some(12),
            column: Some(11),
            key: Some("device[0].poll_interval".into()),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/slmd/slmd.toml:12:11: device[0].poll_interval: bad"
        );
        e.key = None;
        assert_eq!(e.to_string(), "/etc/slmd/slmd.toml:12:11: bad");
        e.column = None;
        assert_eq!(e.to_string(), "/etc/slmd/slmd.toml:12: bad");
        e.line = None;
        e.message = "cannot read: No such file".into();
        assert_eq!(
            e.to_string(),
            "/etc/slmd/slmd.toml: cannot read: No such file"
        );
    }

    #[test]
    fn utc_offsets() {
        for (text, secs) in [
            ("+00:00", 0),
            ("+09:00", 32_400),
            ("-05:30", -19_800),
            ("+14:00", 50_400),
            ("-14:00", -50_400),
        ] {
            let offset = UtcOffset::parse(text).expect(text);
            assert_eq!(offset.seconds(), secs);
            assert_eq!(offset.to_string(), text);
            assert_eq!(offset.to_fixed_offset().local_minus_utc(), secs);
        }
        for bad in [
            "", "Z", "UTC", "+9:00", "+09", "09:00", "+0900", "+14:01", "+15:00", "+09:60",
            "+09:0x", "+٠٩:00",
        ] {
            let e = UtcOffset::parse(bad).expect_err(bad);
            assert!(e.contains("+HH:MM"), "{e}");
        }
    }

    #[test]
    fn utc_offset_in_a_device() {
        let c = ok(
            "[[device]]\nid = \"a\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\nutc_offset = \"-03:30\"\n",
        );
        assert_eq!(c.devices[0].utc_offset.seconds(), -12_600);
        let e = err(
            "[[device]]\nid = \"a\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\nutc_offset = \"CET\"\n",
        );
        assert_eq!(
            (e.line, e.column, e.key.as_deref()),
            (Some(6), Some(14), Some("device[0].utc_offset"))
        );
    }

    #[test]
    fn keyword_enums_spell_as_in_the_file() {
        assert_eq!(Transport::Serial.to_string(), "serial");
        assert_eq!(Protocol::Nl43.as_str(), "nl43");
        assert_eq!(Durability::Full.as_str(), "full");
    }

    #[test]
    fn byte_size_from_integer_or_string() {
        assert_eq!(
            ok("[buffer]\nmax_bytes = 4096\n").buffer.max_bytes,
            Some(ByteSize(4096))
        );
        assert_eq!(
            ok("[buffer]\nmax_bytes = \"2GiB\"\n").buffer.max_bytes,
            Some(ByteSize(2 << 30))
        );
        let e = err("[buffer]\nmax_bytes = -1\n");
        assert!(e.message.contains("negative"), "{e}");
        let e = err("[buffer]\nmax_bytes = 1.5\n");
        assert!(e.message.contains("found float 1.5"), "{e}");
    }

    #[test]
    fn default_config_is_what_an_empty_file_gives() {
        assert_eq!(ok(""), Config::default());
    }
}
