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
//! Secrets never appear in an error: a value under `api.tokens`,
//! `fleet.tokens` (or any key named like a token, password or secret) is
//! described by its type only — `fleet.tokens: expected an array of strings
//! like ["token-a"], found a string (value not shown: it is a secret)`; a
//! syntax error names only the schema's keys (the line it stopped in may be
//! a pasted token); an unknown key that looks like a token rather than a
//! key is not repeated; credentials and queries in a URL are masked; and
//! every message is scrubbed of the file's secret values as a last guard.
//! Other values are quoted cut to 64 characters.
//!
//! Decisions beyond SPEC §5, so that the daemon never starts with a value
//! that would make it spin, hang, or overflow a deadline (each limit is a
//! named constant in `validate` with its reason, and the error names it):
//! - `status_interval` must be at least 1s (like `poll_interval`: the meter
//!   answers at most once a second); `reconnect_min`, `api.stream_max`,
//!   `fleet.interval`, `fleet.token_retry`, `fleet.timeout`,
//!   `fleet.retry_min`, `fleet.retry_max` and `fleet.auth_retry` must not be
//!   zero (a zero period is a busy loop, and `tokio::time::interval` panics
//!   on it), and `fleet.retry_min` must not exceed `fleet.retry_max`;
//! - every duration has a maximum: periods and retries (`poll_interval`,
//!   `live_poll_interval`, `status_interval`, `api.stream_max`,
//!   `fleet.interval`, `fleet.token_retry`, `fleet.auth_retry`,
//!   `fleet.retry_min`, `fleet.retry_max`) at most 1 day ([`MAX_PERIOD`]);
//!   `fleet.timeout` at most 1 hour ([`MAX_TIMEOUT`]); `answer_timeout` at
//!   most 60s; `command_gap` at most 60s ([`MAX_COMMAND_GAP`]);
//!   `reconnect_min` and `reconnect_max` at most 1 hour ([`MAX_RECONNECT`]).
//!   A duration far beyond these used to pass and then panic a task
//!   ("overflow when adding duration to instant");
//! - at most [`MAX_DEVICES`] (64) `[[device]]` tables; the file itself at
//!   most [`MAX_FILE_BYTES`] (1 MiB);
//! - lengths: `gateway.id` at most 64 characters, paths at most 4095 bytes
//!   and without NUL, URLs at most 2048 characters, `mqtt.topic_prefix` at
//!   most 128 characters, tokens at most 4096 bytes without control
//!   characters (they go into an HTTP header), at most 16 `api.tokens`;
//! - `buffer.max_bytes`, when set, must be at least 1 byte;
//! - tokens (API and fleet) must not be empty strings;
//! - `gateway.id` must not be empty or contain whitespace or control
//!   characters, and `gateway.state_dir` must not be empty;
//! - a host (in a device `address` or a URL) is a DNS name (labels of at
//!   most 63 characters, 253 in all), a bracketed IPv6 address, or an IPv4
//!   address; a name ending in a number must be a valid dotted-quad IPv4
//!   address (`256.0.0.1` and `10.1` are refused, because a resolver would
//!   read them as odd addresses rather than names); ports are 1 to 65535;
//! - `mqtt.url` is `mqtt://host[:port]` or `mqtts://host[:port]`: no path and
//!   no credentials in the URL; `fleet.url` may have a path but no
//!   credentials (tokens carry the authentication), no query and no
//!   fragment (the ingest path is appended to it);
//! - `baud` is checked on every device but only used on serial ones.

mod device;
mod limits;
mod locate;
pub(crate) mod units;
mod validate;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub use device::{
    ANSWER_TIMEOUT_RANGE, CareRules, DeviceConfig, FamilyRules, LevelInput, LinkConfig, MeterCare,
    Mode, Parity, Protocol, SerialFraming, Support, SyncClock, Transport,
};
pub use limits::{
    AlertConfig, ChannelConfig, ChannelKind, DAY_NAMES, LEVEL_METRICS, LevelsConfig, MAX_ALERTS,
    MAX_CHANNELS, MAX_INTERVALS, ScheduleConfig, parse_clock, split_level_metric,
};
pub use units::{parse_duration, parse_size};
pub use validate::{
    MAX_ANSWER_TIMEOUT, MAX_API_TOKENS, MAX_COMMAND_GAP, MAX_DEVICES, MAX_GATEWAY_ID_CHARS,
    MAX_PATH_BYTES, MAX_PERIOD, MAX_RECONNECT, MAX_TIMEOUT, MAX_TOKEN_BYTES,
    MAX_TOPIC_PREFIX_CHARS, MAX_URL_CHARS,
};

/// Reads, parses and validates the configuration file at `path`.
///
/// A file that cannot be read is reported as `{file}: cannot read: {reason}`;
/// one larger than [`MAX_FILE_BYTES`] is not read past that size.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_source(path).map(|(config, _)| config)
}

/// Which text a configuration was built from: the file and the SHA-256 of
/// the bytes read. The running daemon shows it in `/v1/status`, so
/// `slmd check` can tell a file edited since the daemon loaded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file, made absolute.
    pub file: PathBuf,
    /// SHA-256 of the bytes read, lowercase hex.
    pub sha256: String,
}

/// [`load`], and the [`Source`] the config was built from.
pub fn load_source(path: &Path) -> Result<(Config, Source), ConfigError> {
    use sha2::Digest;
    use std::io::Read;
    let unreadable = |e: std::io::Error| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!("cannot read: {e}"),
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    let sha256 = hex(&sha2::Sha256::digest(&bytes));
    let config = from_bytes(bytes, path)?;
    let source = Source {
        // Absolute, so status names the file whatever the reader's folder.
        file: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
        sha256,
    };
    Ok((config, source))
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses and validates the bytes of a configuration file, as [`load`]
/// does once it has read them; `path` is only used in errors.
pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Config, ConfigError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_large(path));
    }
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
///
/// Never panics, whatever the text (the loader is fuzzed); text longer than
/// [`MAX_FILE_BYTES`] is refused before it is parsed.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(path));
    }
    let root = toml::de::DeTable::parse(text).map_err(|e| locate::syntax_error(text, path, &e))?;
    let doc = locate::Doc::new(text, &root);
    let secrets = locate::Secrets::collect(text, root.get_ref());
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::from(root.clone()))
        .map_err(|e| secrets.scrub(doc.deserialize_error(path, e)))?;
    validate::build(raw).map_err(|problems| {
        let first = problems
            .into_iter()
            .map(|problem| doc.error(path, problem))
            .min_by_key(|e| (e.line, e.column));
        // `build` fails only with at least one problem.
        secrets.scrub(first.unwrap_or_else(|| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: "invalid configuration".to_owned(),
        }))
    })
}

/// Largest configuration file read: 1 MiB. The bundled example is 4 KiB
/// and a gateway with [`MAX_DEVICES`] meters needs about 20 KiB, so a larger
/// file is a mistake (a log or a binary given by `--config`), and reading or
/// parsing it whole would only cost memory and time.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The error for a file over [`MAX_FILE_BYTES`].
fn too_large(path: &Path) -> ConfigError {
    ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        key: None,
        message: format!(
            "too large: a configuration file is at most {} KiB (one with {MAX_DEVICES} meters takes about 20 KiB); is this the right file?",
            MAX_FILE_BYTES / 1024
        ),
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

/// The whole of `slmd.toml`, validated. Every table may be left out; an
/// empty file is a valid configuration with no devices.
pub type Config = ConfigOf<DeviceConfig>;

/// `slmd.toml` as written, before validation built each device.
pub(crate) type RawConfig = ConfigOf<device::RawDevice>;

/// The tables of `slmd.toml`, with `D` the form a device takes: as written
/// ([`RawConfig`]) or validated ([`Config`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "D: Deserialize<'de>"))]
pub struct ConfigOf<D> {
    /// Who this gateway is and where it keeps its state.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// Limits and durability of the offline ring buffer (SPEC §8).
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The meters this gateway owns, one `[[device]]` table each.
    #[serde(default, rename = "device")]
    pub devices: Vec<D>,
    /// The local HTTP API and live feed (SPEC §6).
    #[serde(default)]
    pub api: ApiConfig,
    /// Optional fan-out to a local MQTT broker; absent means no MQTT.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Push to the fleet server (SPEC §7); off unless enabled.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Interval levels per device (SPEC §11).
    #[serde(default)]
    pub levels: LevelsConfig,
    /// Where alert events go besides the fleet and the local API.
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
    /// Noise-limit rules.
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertConfig>,
}

impl<D> Default for ConfigOf<D> {
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            buffer: BufferConfig::default(),
            devices: Vec::new(),
            api: ApiConfig::default(),
            mqtt: None,
            fleet: FleetConfig::default(),
            levels: LevelsConfig::default(),
            channels: Vec::new(),
            alerts: Vec::new(),
        }
    }
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
    /// Treat the gateway clock as right even when the kernel does not say
    /// it is synchronised (a clock kept by GPS or set by hand, no NTP).
    /// A meter clock is set (`sync_clock`) only from a synchronised or
    /// trusted gateway clock.
    pub clock_trusted: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: default_gateway_id(),
            state_dir: PathBuf::from("/var/lib/slmd"),
            clock_trusted: false,
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
    /// Longest a reading waits in memory before its commit: readings are
    /// grouped into one commit per interval (sooner when
    /// [`crate::buffer::COMMIT_AT_RECORDS`] are waiting), which is what
    /// keeps the bytes written to an SD card low. What a `kill -9` may
    /// cost. `0s`: every reading is committed at once.
    #[serde(deserialize_with = "units::duration")]
    pub commit_interval: Duration,
    /// The daemon holds the buffer file for itself while it runs (SQLite's
    /// write-ahead log index in memory: no `-shm` file to wear the card).
    /// `false` lets other programs (a `sqlite3` shell, a sidecar) read it
    /// meanwhile, at the cost of that file's writes.
    pub exclusive: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_records: 10_000_000,
            max_bytes: None,
            durability: Durability::Normal,
            commit_interval: crate::buffer::DEFAULT_COMMIT_INTERVAL,
            exclusive: true,
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

/// Names and values of the string-valued enums, in one place, so parsing,
/// error messages and `as_str` agree.
trait Keyword: Sized + Copy + 'static {
    /// What the value is called in errors ("transport").
    const WHAT: &'static str;
    /// Every accepted spelling with its value.
    const ALL: &'static [(&'static str, Self)];
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
                    "unknown {} {}; expected one of: {}",
                    T::WHAT,
                    locate::shown(v),
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

keyword_impls!(Transport, Durability, Parity, Mode, SyncClock);

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
                "invalid UTC offset {}: expected \"+HH:MM\" or \"-HH:MM\" within ±14:00 (e.g. \"+00:00\", \"+09:00\", \"-05:30\")",
                locate::shown(text)
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
                    r#"invalid listen address {}: expected an IP address and port (e.g. "127.0.0.1:8470", "0.0.0.0:8470", "[::]:8470")"#,
                    locate::shown(v)
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
    /// How often the gateway tells the fleet it is alive (SPEC §7
    /// heartbeat), also sent at start and right after a meter changes
    /// state; 1s to 1h.
    #[serde(deserialize_with = "units::duration")]
    pub heartbeat_interval: Duration,
    /// How records, heartbeats and events reach the fleet: `"http"` (the
    /// default, `url`), `"mqtt"` (a broker cluster, `urls`), or `"both"`
    /// (each uplink keeps its own position in the buffer).
    pub transport: FleetTransport,
    /// The fleet's MQTT brokers (`mqtt://` or `mqtts://`), tried in this
    /// order: the first that accepts is used, the first is come back to;
    /// 1 to 8. Required with `transport = "mqtt"` or `"both"`.
    pub urls: Vec<String>,
    /// Topics are `{topic_prefix}/{gateway}/records`, `.../heartbeat`,
    /// `.../events`.
    pub topic_prefix: String,
    /// MQTT user name; the password is the fleet token. Defaults to the
    /// gateway id.
    pub username: Option<String>,
    /// PEM file of root certificates trusted for `mqtts://` instead of the
    /// system's (a fleet with a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for `mqtts://` brokers that ask for
    /// one; with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// `[fleet].transport`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetTransport {
    /// `POST {url}/api/fleet/...` (SPEC §7).
    #[default]
    Http,
    /// QoS 1 publishes to the brokers in `urls`.
    Mqtt,
    /// Both at once (a fleet moving from one to the other).
    Both,
}

impl FleetTransport {
    /// Whether the HTTP push runs.
    pub fn http(self) -> bool {
        matches!(self, FleetTransport::Http | FleetTransport::Both)
    }

    /// Whether the MQTT uplink runs.
    pub fn mqtt(self) -> bool {
        matches!(self, FleetTransport::Mqtt | FleetTransport::Both)
    }
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
            heartbeat_interval: Duration::from_secs(60),
            transport: FleetTransport::Http,
            urls: Vec::new(),
            topic_prefix: default_topic_prefix(),
            username: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
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
        assert_eq!(Protocol::named("nl43").map(Protocol::as_str), Some("nl43"));
        assert_eq!(Protocol::named("NL43"), None);
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

    /// The secret every case below hides somewhere.
    const SECRET: &str = "s3cr3t-Tok3n-9f8e7d";

    /// Asserts `text` is rejected without the secret in anything shown.
    #[track_caller]
    fn rejected_without_secret(text: &str) -> ConfigError {
        let e = err(text);
        let shown = e.to_string();
        for part in [SECRET, "s3cr3t", "9f8e7d"] {
            assert!(!shown.contains(part), "{part:?} shown: {shown}\n{text}");
        }
        assert!(e.line.is_some(), "located: {shown}");
        e
    }

    #[test]
    fn a_token_given_as_a_string_is_not_echoed() {
        for table in ["api", "fleet"] {
            let e = rejected_without_secret(&format!("[{table}]\ntokens = \"{SECRET}\"\n"));
            assert_eq!(
                e.to_string(),
                format!(
                    "t.toml:2:10: {table}.tokens: expected an array of strings like [\"token-a\"], found a string (value not shown: it is a secret)"
                )
            );
        }
    }

    #[test]
    fn a_token_of_the_wrong_type_is_not_echoed() {
        for (text, key, found) in [
            (
                "[fleet]\ntokens = [\"ok-token\", 98765432]\n",
                "fleet.tokens[1]",
                "an integer",
            ),
            ("[api]\ntokens = [98765432.5]\n", "api.tokens[0]", "a float"),
            (
                "[api]\ntokens = [1979-05-27]\n",
                "api.tokens[0]",
                "a date-time",
            ),
            ("[api]\ntokens = 98765432\n", "api.tokens", "an integer"),
            (
                "[fleet]\ntokens = { x = \"98765432\" }\n",
                "fleet.tokens",
                "a table",
            ),
        ] {
            let e = err(text);
            let shown = e.to_string();
            assert_eq!(e.key.as_deref(), Some(key), "{shown}");
            assert!(
                shown.contains(&format!("found {found} (value not shown: it is a secret)")),
                "{shown}"
            );
            assert!(!shown.contains("98765432"), "{shown}");
        }
    }

    #[test]
    fn syntax_errors_near_a_secret_do_not_quote_it() {
        for text in [
            format!("[fleet]\ntokens = [\"{SECRET}\n"),
            format!("[fleet]\ntokens = [{SECRET}]\n"),
            format!("[fleet]\ntokens = \"{SECRET}\" x\n"),
            format!("[fleet]\ntokens = [\"{SECRET}\" \"b\"]\n"),
            format!("[fleet]\ntokens = \"{SECRET}\n"),
            format!("[fleet]\ntokens = {SECRET}\n"),
            format!("[fleet]\n{SECRET}\n"),
            format!("[fleet]\nenabled = true\n{SECRET}\n"),
            format!("[api]\ntokens = [\"{SECRET}\"]\ntokens = [\"{SECRET}\"]\n"),
            format!("[{SECRET}]\n"),
            format!("[fleet]\ntokens = [\"a\\q{SECRET}\"]\n"),
            format!("[fleet]\ntokens = ['{SECRET}\n"),
            format!("[fleet]\ntokens = \"\"\"{SECRET}\n"),
            format!("{SECRET} = \"x\"\n[fleet\n"),
        ] {
            rejected_without_secret(&text);
        }
    }

    #[test]
    fn an_unknown_key_is_named_unless_it_looks_like_a_secret() {
        let e = rejected_without_secret(&format!("[fleet]\n{SECRET} = \"x\"\n"));
        assert_eq!(e.key.as_deref(), Some("fleet"), "{e}");
        assert!(
            e.message.starts_with("unknown key (its name is not shown"),
            "{e}"
        );
        assert!(
            e.message.contains("expected one of: enabled, url, tokens"),
            "{e}"
        );
        let e = err("[fleet]\ntoken = \"x\"\n");
        assert_eq!(e.key.as_deref(), Some("fleet.token"), "{e}");
        assert!(e.message.contains("did you mean \"tokens\"?"), "{e}");
        for name in ["adress", "poll-rate", "Id", "retry2", "sate_dir"] {
            assert!(locate::key_like(name), "{name}");
        }
        let long = "x".repeat(33);
        for name in [
            SECRET,
            "0123abcd",
            "a1b2c3d4",
            long.as_str(),
            "pass word",
            "",
        ] {
            assert!(!locate::key_like(name), "{name}");
        }
    }

    #[test]
    fn other_secret_shaped_values_are_not_echoed() {
        for text in [
            format!("[fleet]\nurl = \"https://user:{SECRET}@fleet.example.com\"\n"),
            format!("[fleet]\nurl = \"https://fleet.example.com/?key={SECRET}\"\n"),
            format!("[fleet]\nurl = \"ftp://user:{SECRET}@fleet.example.com\"\n"),
            format!("[mqtt]\nurl = \"mqtt://u:{SECRET}@broker:1883\"\n"),
            format!("[api]\ntokens = [\"{SECRET}\\n\"]\n"),
            format!(
                "[api]\ntokens = [\"{SECRET}{}\"]\n",
                "x".repeat(MAX_TOKEN_BYTES)
            ),
            format!("[fleet]\ntokens = [\"{SECRET}\", \"\"]\n"),
            format!("[fleet]\ntokens = [\"{SECRET}\"]\ntoken_file = \"/etc/slmd/fleet.token\"\n"),
            format!("[fleet]\ntokens = [\"{SECRET}\", \"b-token\", \"c-token\"]\n"),
        ] {
            rejected_without_secret(&text);
        }
    }

    #[test]
    fn the_last_guard_scrubs_secret_values_from_any_message() {
        let text = format!("[api]\ntokens = [\"{SECRET}\"]\n");
        let root = toml::de::DeTable::parse(&text).expect("toml");
        let secrets = locate::Secrets::collect(&text, root.get_ref());
        let e = secrets.scrub(ConfigError {
            file: "t.toml".into(),
            line: Some(1),
            column: Some(1),
            key: Some(format!("x.{SECRET}")),
            message: format!("something quoted {SECRET:?} here"),
        });
        assert_eq!(
            e.to_string(),
            "t.toml:1:1: x.<secret>: something quoted \"<secret>\" here"
        );
    }

    /// Every duration key, with the table it lives in.
    const DURATION_KEYS: [(&str, &str); 16] = [
        ("buffer", "commit_interval"),
        ("device", "poll_interval"),
        ("device", "live_poll_interval"),
        ("device", "answer_timeout"),
        ("device", "command_gap"),
        ("device", "status_interval"),
        ("device", "reconnect_min"),
        ("device", "reconnect_max"),
        ("api", "stream_max"),
        ("fleet", "interval"),
        ("fleet", "token_retry"),
        ("fleet", "timeout"),
        ("fleet", "retry_min"),
        ("fleet", "retry_max"),
        ("fleet", "auth_retry"),
        ("fleet", "heartbeat_interval"),
    ];

    /// A tcp device, for the device keys.
    const TCP: &str =
        "[[device]]\nid = \"a\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\n";

    #[test]
    fn every_duration_key_has_a_maximum() {
        // A duration key added to the schema without a limit fails here:
        // the list above must name every one of them.
        let source = [include_str!("mod.rs"), include_str!("device.rs")].concat();
        let fields = source
            .matches("deserialize_with = \"units::duration\"")
            .count()
            + source
                .matches("deserialize_with = \"units::opt_duration\"")
                .count();
        let listed: std::collections::BTreeSet<_> = DURATION_KEYS.iter().collect();
        assert_eq!(
            listed.len(),
            fields,
            "DURATION_KEYS must list every duration key"
        );
        for (table, key) in listed {
            let text = if *table == "device" {
                format!("{TCP}{key} = \"200000000000000d\"\n")
            } else {
                format!("[{table}]\n{key} = \"200000000000000d\"\n")
            };
            let e = err(&text);
            let path = if *table == "device" {
                format!("device[0].{key}")
            } else {
                format!("{table}.{key}")
            };
            assert_eq!(e.key.as_deref(), Some(path.as_str()), "{e}");
            assert!(e.message.starts_with("must be at most "), "{e}");
            assert!(e.message.contains("found 200000000000000d"), "{e}");
            assert_eq!(e.column, Some(key.len() + 4), "{e}");
        }
    }

    #[test]
    fn duration_limits_are_the_stated_ones() {
        let e = err("[fleet]\ninterval = \"25h\"\n");
        assert_eq!(
            e.message,
            "must be at most 1d, found 25h (the longest slmd accepts here)"
        );
        let c = ok(
            "[fleet]\ninterval = \"24h\"\nauth_retry = \"1d\"\nretry_max = \"1d\"\ntimeout = \"1h\"\n",
        );
        assert_eq!(c.fleet.interval, MAX_PERIOD);
        assert_eq!(c.fleet.timeout, MAX_TIMEOUT);
        assert!(
            err("[fleet]\ntimeout = \"61m\"\n")
                .message
                .contains("at most 1h")
        );
        assert!(
            err(&format!("{TCP}command_gap = \"61s\"\n"))
                .message
                .contains("at most 60s")
        );
        assert!(
            err(&format!("{TCP}reconnect_max = \"2h\"\n"))
                .message
                .contains("at most 1h")
        );
        let c = ok(&format!(
            "{TCP}reconnect_max = \"1h\"\npoll_interval = \"1d\"\n"
        ));
        assert_eq!(c.devices[0].reconnect_max, MAX_RECONNECT);
    }

    /// `n` tcp devices `m0`, `m1`, ….
    fn devices(n: usize) -> String {
        (0..n)
            .map(|i| format!("[[device]]\nid = \"m{i}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"192.0.2.1:{}\"\n", 2000 + i))
            .collect()
    }

    #[test]
    fn at_most_64_devices() {
        assert_eq!(ok(&devices(MAX_DEVICES)).devices.len(), MAX_DEVICES);
        let e = err(&devices(MAX_DEVICES + 1));
        // At the 65th [[device]] header: 5 lines per device.
        assert_eq!(
            (e.line, e.column),
            (Some(5 * MAX_DEVICES + 1), Some(1)),
            "{e}"
        );
        assert_eq!(e.key.as_deref(), Some("device[64]"));
        assert!(
            e.message.contains("at most 64 [[device]] tables, found 65"),
            "{e}"
        );
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_before_parsing() {
        let text = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        let e = err(&text);
        assert_eq!((e.line, e.key.as_deref()), (None, None));
        assert!(
            e.to_string()
                .starts_with("t.toml: too large: a configuration file is at most 1024 KiB"),
            "{e}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.toml");
        std::fs::write(&path, &text).expect("write");
        assert!(
            load(&path)
                .expect_err("too large")
                .message
                .starts_with("too large")
        );
    }

    #[test]
    fn addresses_must_be_real_ipv4_or_names() {
        for bad in [
            "256.0.0.1:80",
            "10.1:80",
            "1.2.3.4.5:80",
            "01.2.3.4:80",
            "1.2.3.999:80",
        ] {
            let e = err(&TCP.replace("h:1", bad));
            assert_eq!(e.key.as_deref(), Some("device[0].address"), "{bad}: {e}");
            assert!(
                e.message.contains("is not a valid IPv4 address"),
                "{bad}: {e}"
            );
        }
        let long_label = format!("{}.example:80", "a".repeat(64));
        let e = err(&TCP.replace("h:1", &long_label));
        assert!(e.message.contains("at most 63 characters"), "{e}");
        for good in [
            "192.0.2.10:80",
            "0.0.0.0:1",
            "255.255.255.255:65535",
            "meter-1.local:2255",
            "1meter.site7:2255",
        ] {
            ok(&TCP.replace("h:1", good));
        }
        let e = err("[fleet]\nurl = \"https://256.1.1.1/x\"\n");
        assert!(e.message.contains("is not a valid IPv4 address"), "{e}");
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let id = "é".repeat(100_000);
        let e = err(&format!("[gateway]\nid = \"{id} x\"\n"));
        assert!(e.to_string().chars().count() < 400, "{e}");
        assert!(e.message.contains("… (100002 characters)"), "{e}");
        let e = err(&format!(
            "[gateway]\nstate_dir = 1\nid = \"{}\"\n",
            "x".repeat(70)
        ));
        assert!(e.message.contains("found integer 1"), "{e}");
        let e = err(&format!(
            "[buffer]\ndurability = \"{}\"\n",
            "x".repeat(10_000)
        ));
        assert!(e.to_string().chars().count() < 400, "{e}");
        let e = err(&format!("[fleet]\nenabled = \"{}\"\n", "y".repeat(10_000)));
        assert!(e.to_string().chars().count() < 400, "{e}");
    }

    #[test]
    fn strings_have_limits() {
        let e = err(&format!("[gateway]\nid = \"{}\"\n", "g".repeat(65)));
        assert!(e.message.contains("at most 64 characters"), "{e}");
        ok(&format!("[gateway]\nid = \"{}\"\n", "g".repeat(64)));
        let e = err(&format!(
            "[gateway]\nstate_dir = \"/{}\"\n",
            "d".repeat(MAX_PATH_BYTES)
        ));
        assert!(e.message.contains("at most 4095 bytes"), "{e}");
        let e = err("[gateway]\nstate_dir = \"/var/\\u0000lib\"\n");
        assert!(e.message.contains("NUL"), "{e}");
        let e = err(&format!(
            "[mqtt]\nurl = \"mqtt://b\"\ntopic_prefix = \"{}\"\n",
            "t".repeat(129)
        ));
        assert!(e.message.contains("at most 128 characters"), "{e}");
        let e = err(&format!(
            "[fleet]\nurl = \"https://f/{}\"\n",
            "p".repeat(MAX_URL_CHARS)
        ));
        assert!(e.message.contains("at most 2048 characters"), "{e}");
        let tokens: Vec<String> = (0..=MAX_API_TOKENS)
            .map(|i| format!("\"token-{i}\""))
            .collect();
        let e = err(&format!("[api]\ntokens = [{}]\n", tokens.join(", ")));
        assert!(e.message.contains("at most 16 tokens"), "{e}");
        assert!(e.message.contains("found 17"), "{e}");
    }

    #[test]
    fn the_schema_keys_are_all_known_to_the_syntax_error_reporter() {
        for table in [
            "",
            "[gateway]\n",
            "[buffer]\n",
            "[[device]]\n",
            "[api]\n",
            "[mqtt]\n",
            "[fleet]\n",
            "[levels]\n",
            "[[channel]]\n",
            "[[alert]]\n",
        ] {
            let e = err(&format!("{table}zzzz_unknown = 1\n"));
            let expected = e
                .message
                .split_once("expected one of: ")
                .map(|(_, list)| list.split(" (").next().unwrap_or(list))
                .unwrap_or_else(|| panic!("{e}"));
            for key in expected.split(", ") {
                assert!(locate::KEYS.contains(&key), "{key} missing from KEYS");
            }
        }
    }
}
