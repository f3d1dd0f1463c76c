//! `[levels]`, `[[channel]]` and `[[alert]]`: noise limits at the edge
//! (SPEC §11), as written and as checked.
//!
//! The tables keep the form the file has (durations parsed, names as
//! strings); [`validate`] checks every cross-reference (a rule's device,
//! metric, interval level and channels) so the limits engine can build its
//! rules from a valid config without failing.

use super::RawConfig;
use super::locate::{Problem, Seg, key, shown};
use super::units::{self, format_duration};
use super::validate::{MAX_PERIOD, url};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Most `[[alert]]` rules: 256. Every reading is checked against each rule
/// of its device, so the count bounds the work per reading (see the
/// `limits` bench: 50 rules on 16 meters) and the state kept per rule and
/// meter.
pub const MAX_ALERTS: usize = 256;

/// Most `[[channel]]` tables: 16. Each is a task, a queue position and an
/// HTTP client.
pub const MAX_CHANNELS: usize = 16;

/// Most interval lengths in `[levels].intervals`: 8. Each is one window
/// open per meter, with its histogram (see `limits::interval`).
pub const MAX_INTERVALS: usize = 8;

/// The interval-level metrics a rule may name with a length suffix
/// (`leq_15m`, `l90_1h`, …).
pub const LEVEL_METRICS: [&str; 5] = ["leq", "lmax", "lmin", "l10", "l90"];

/// `[levels]`: interval levels per device (SPEC §11).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelsConfig {
    /// Window lengths, each dividing a day (`"1m"`, `"15m"`, `"1h"`);
    /// empty: no interval levels.
    #[serde(deserialize_with = "units::durations")]
    pub intervals: Vec<Duration>,
    /// IANA time zone the windows and alert schedules follow; absent: the
    /// system's.
    pub timezone: Option<String>,
    /// Share of a window that must be covered by readings (0 to 1); a
    /// window below it is flagged `low_coverage` and decides no alert.
    pub min_coverage: f64,
}

impl Default for LevelsConfig {
    fn default() -> Self {
        Self {
            intervals: Vec::new(),
            timezone: None,
            min_coverage: 0.75,
        }
    }
}

impl LevelsConfig {
    /// The configured time zone, or the system's (UTC when the system names
    /// none). The name was checked by [`validate`].
    pub fn time_zone(&self) -> jiff::tz::TimeZone {
        match &self.timezone {
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or(jiff::tz::TimeZone::UTC),
            None => jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC),
        }
    }
}

/// How a channel delivers an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// One JSON POST per event (SPEC §11 body).
    Webhook,
    /// A text message POSTed to an ntfy topic URL, with title, priority
    /// and tags headers.
    Ntfy,
}

impl ChannelKind {
    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Ntfy => "ntfy",
        }
    }
}

/// `[[channel]]`: where alert events go besides the fleet.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Named by rules' `channels`.
    pub id: String,
    /// `webhook` or `ntfy`.
    pub kind: ChannelKind,
    /// `http://` or `https://`: the webhook, or the ntfy topic URL.
    pub url: String,
    /// Sent as `Authorization: Bearer` when set (an ntfy access token, a
    /// webhook's shared secret).
    #[serde(default)]
    pub token: Option<String>,
    /// One delivery attempt, connect to last byte.
    #[serde(
        default = "default_channel_timeout",
        deserialize_with = "units::duration"
    )]
    pub timeout: Duration,
    /// First wait after a failed delivery; doubles with jitter.
    #[serde(default = "default_retry_min", deserialize_with = "units::duration")]
    pub retry_min: Duration,
    /// Longest wait between failed deliveries.
    #[serde(default = "default_retry_max", deserialize_with = "units::duration")]
    pub retry_max: Duration,
}

fn default_channel_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

/// `schedule = { days = [...], from = "07:00", to = "19:00" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `mon` … `sun`; absent: every day.
    #[serde(default)]
    pub days: Option<Vec<String>>,
    /// Local time the window opens, `HH:MM`; absent: `00:00`.
    #[serde(default)]
    pub from: Option<String>,
    /// Local time it closes, `HH:MM` (before `from`: the window crosses
    /// midnight and belongs to the day it opens); absent: `24:00`.
    #[serde(default)]
    pub to: Option<String>,
}

/// `[[alert]]`: a noise-limit rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Names the rule in events and in `GET /v1/alerts`.
    pub id: String,
    /// Devices it applies to; absent: every device.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// A reading's metric (`lp`) or an interval level (`leq_15m`).
    pub metric: String,
    /// The limit: a value above it (held `for`) starts an episode.
    pub above: f64,
    /// How long the value must stay above before the onset.
    #[serde(default, rename = "for", deserialize_with = "units::duration")]
    pub hold: Duration,
    /// The episode clears when a value falls below this (hysteresis);
    /// absent: `above`.
    #[serde(default)]
    pub clear_below: Option<f64>,
    /// When the rule applies; absent: always.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// After a clear, how long before the same rule and device may start
    /// a new episode.
    #[serde(default, deserialize_with = "units::duration")]
    pub cooldown: Duration,
    /// Least time between two `peak` events of one episode.
    #[serde(default = "default_peak_every", deserialize_with = "units::duration")]
    pub peak_every: Duration,
    /// Channels (by id) that get this rule's events; the fleet and the
    /// local API get every event.
    #[serde(default)]
    pub channels: Vec<String>,
}

fn default_peak_every() -> Duration {
    Duration::from_secs(60)
}

/// The rule's `clear_below`, defaulting to `above`.
impl AlertConfig {
    /// The value below which an episode clears.
    pub fn clear_level(&self) -> f64 {
        self.clear_below.unwrap_or(self.above)
    }
}

/// Day names of a schedule, Monday first.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `HH:MM` → minutes after midnight (`24:00` allowed, as 1440).
pub fn parse_clock(text: &str) -> Result<u32, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("expected HH:MM (e.g. \"07:00\"), found {}", shown(text)))?;
    let number = |s: &str| -> Option<u32> {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (number(h), number(m)) {
        (Some(h), Some(m)) if (h < 24 && m < 60) || (h == 24 && m == 0) => Ok(h * 60 + m),
        _ => Err(format!(
            "expected HH:MM from 00:00 to 24:00 (e.g. \"07:00\"), found {}",
            shown(text)
        )),
    }
}

/// Splits an interval-level metric name (`leq_15m`) into the metric and
/// the length; `None` for a reading's metric.
pub fn split_level_metric(name: &str) -> Option<(&str, Duration)> {
    crate::limits::interval::split_metric(name).filter(|(metric, _)| LEVEL_METRICS.contains(metric))
}

/// A reading's metric name as the codecs write them (`lp`, `leq`, `le`,
/// `lmax`, `lmin`, `lpeak`, `l1` … `l99`).
fn reading_metric(name: &str) -> bool {
    use firmware_bridge::metric;
    [
        metric::LP,
        metric::LEQ,
        metric::LE,
        metric::LMAX,
        metric::LMIN,
        metric::LPEAK,
    ]
    .contains(&name)
        || metric::percentile_number(name).is_some()
}

/// Ids of rules and channels: like device ids, 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn id_ok(id: &str) -> bool {
    (1..=64).contains(&id.chars().count())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Every problem in `[levels]`, `[[channel]]` and `[[alert]]`.
pub(crate) fn validate(config: &RawConfig, out: &mut Vec<Problem>) {
    levels(config, out);
    let channels = channels(config, out);
    alerts(config, &channels, out);
}

fn levels(config: &RawConfig, out: &mut Vec<Problem>) {
    let levels = &config.levels;
    if levels.intervals.len() > MAX_INTERVALS {
        out.push(Problem::value(
            key(&["levels", "intervals"]),
            format!(
                "at most {MAX_INTERVALS} interval lengths, found {}",
                levels.intervals.len()
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, length) in levels.intervals.iter().enumerate() {
        let at = vec![
            Seg::Key("levels".into()),
            Seg::Key("intervals".into()),
            Seg::Index(i),
        ];
        if let Err(why) = crate::limits::interval::valid_length(*length) {
            out.push(Problem::value(at, why));
        } else if !seen.insert(*length) {
            out.push(Problem::value(
                at,
                format!("{} is listed twice", format_duration(*length)),
            ));
        }
    }
    if let Some(name) = &levels.timezone
        && jiff::tz::TimeZone::get(name).is_err()
    {
        out.push(Problem::value(
            key(&["levels", "timezone"]),
            format!(
                "unknown time zone {}: expected an IANA name such as \"Europe/Zurich\" or \"UTC\" (leave it out for the system's)",
                shown(name)
            ),
        ));
    }
    if !(0.0..=1.0).contains(&levels.min_coverage) {
        out.push(Problem::value(
            key(&["levels", "min_coverage"]),
            format!(
                "expected a share from 0 to 1 (e.g. 0.75), found {}",
                levels.min_coverage
            ),
        ));
    }
}

/// Checks the channels; returns the valid ids.
fn channels<'c>(config: &'c RawConfig, out: &mut Vec<Problem>) -> HashSet<&'c str> {
    let mut ids = HashSet::new();
    if config.channels.len() > MAX_CHANNELS {
        out.push(Problem::value(
            vec![Seg::Key("channel".into()), Seg::Index(MAX_CHANNELS)],
            format!(
                "at most {MAX_CHANNELS} [[channel]] tables, found {}",
                config.channels.len()
            ),
        ));
    }
    for (i, channel) in config.channels.iter().enumerate() {
        let at = |name: &str| {
            vec![
                Seg::Key("channel".into()),
                Seg::Index(i),
                Seg::Key(name.into()),
            ]
        };
        if !id_ok(&channel.id) {
            out.push(Problem::value(
                at("id"),
                format!(
                    "invalid channel id {}: expected 1 to 64 of the characters A-Z a-z 0-9 . _ - (e.g. \"site-office\")",
                    shown(&channel.id)
                ),
            ));
        } else if !ids.insert(channel.id.as_str()) {
            out.push(Problem::value(
                at("id"),
                format!("duplicate channel id {}", shown(&channel.id)),
            ));
        }
        if let Err(why) = url(&channel.url, &["http", "https"], true) {
            let example = match channel.kind {
                ChannelKind::Webhook => "\"http://192.0.2.5:8080/noise\"",
                ChannelKind::Ntfy => "\"https://ntfy.sh/site-7-noise\"",
            };
            out.push(Problem::value(
                at("url"),
                format!("invalid URL: {why}; expected http:// or https:// (e.g. {example})"),
            ));
        }
        if let Some(token) = &channel.token
            && (token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            out.push(Problem::value(
                at("token"),
                "a token must not be empty nor contain spaces or control characters",
            ));
        }
        for (name, value) in [
            ("timeout", channel.timeout),
            ("retry_min", channel.retry_min),
            ("retry_max", channel.retry_max),
        ] {
            if value.is_zero() || value > MAX_PERIOD {
                out.push(Problem::value(
                    at(name),
                    format!(
                        "expected more than 0s and at most 1d, found {}",
                        format_duration(value)
                    ),
                ));
            }
        }
        if channel.retry_min > channel.retry_max {
            out.push(Problem::value(
                at("retry_min"),
                format!(
                    "must not exceed retry_max ({})",
                    format_duration(channel.retry_max)
                ),
            ));
        }
    }
    ids
}

fn alerts(config: &RawConfig, channels: &HashSet<&str>, out: &mut Vec<Problem>) {
    if config.alerts.len() > MAX_ALERTS {
        out.push(Problem::value(
            vec![Seg::Key("alert".into()), Seg::Index(MAX_ALERTS)],
            format!(
                "at most {MAX_ALERTS} [[alert]] rules, found {}",
                config.alerts.len()
            ),
        ));
    }
    let devices: HashSet<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, alert) in config.alerts.iter().enumerate().take(MAX_ALERTS) {
        let at = |name: &str| {
            vec![
                Seg::Key("alert".into()),
                Seg::Index(i),
                Seg::Key(name.into()),
            ]
        };
        if !id_ok(&alert.id) {
            out.push(Problem::value(
                at("id"),
                format!(
                    "invalid alert id {}: expected 1 to 64 of the characters A-Z a-z 0-9 . _ - (e.g. \"day-limit\")",
                    shown(&alert.id)
                ),
            ));
        } else if let Some(first) = ids.insert(&alert.id, i) {
            out.push(Problem::value(
                at("id"),
                format!(
                    "duplicate alert id {}: already used by alert[{first}]",
                    shown(&alert.id)
                ),
            ));
        }
        if let Some(list) = &alert.devices {
            if list.is_empty() {
                out.push(Problem::value(
                    at("devices"),
                    "an empty list matches no device; leave devices out for every device",
                ));
            }
            for (j, device) in list.iter().enumerate() {
                if !devices.contains(device.as_str()) {
                    let mut path = at("devices");
                    path.push(Seg::Index(j));
                    out.push(Problem::value(
                        path,
                        format!(
                            "unknown device {}: no [[device]] has this id",
                            shown(device)
                        ),
                    ));
                }
            }
        }
        metric(config, alert, &at("metric"), out);
        if !alert.above.is_finite() {
            out.push(Problem::value(at("above"), "expected a level in dB"));
        }
        if let Some(clear) = alert.clear_below
            && !(clear.is_finite() && clear <= alert.above)
        {
            out.push(Problem::value(
                at("clear_below"),
                format!(
                    "must not be above the limit (above = {}), found {clear}: the episode clears when the level falls below it",
                    alert.above
                ),
            ));
        }
        for (name, value) in [("for", alert.hold), ("cooldown", alert.cooldown)] {
            if value > MAX_PERIOD {
                out.push(Problem::value(
                    at(name),
                    format!("must be at most 1d, found {}", format_duration(value)),
                ));
            }
        }
        if alert.peak_every > MAX_PERIOD {
            out.push(Problem::value(
                at("peak_every"),
                format!(
                    "must be at most 1d, found {}",
                    format_duration(alert.peak_every)
                ),
            ));
        }
        if let Some(schedule) = &alert.schedule {
            let at_schedule = |name: &str| {
                let mut path = at("schedule");
                path.push(Seg::Key(name.into()));
                path
            };
            if let Some(days) = &schedule.days {
                if days.is_empty() {
                    out.push(Problem::value(
                        at_schedule("days"),
                        "an empty list never applies; leave days out for every day",
                    ));
                }
                for (j, day) in days.iter().enumerate() {
                    if !DAY_NAMES.contains(&day.as_str()) {
                        let mut path = at_schedule("days");
                        path.push(Seg::Index(j));
                        out.push(Problem::value(
                            path,
                            format!(
                                "unknown day {}: expected one of mon, tue, wed, thu, fri, sat, sun",
                                shown(day)
                            ),
                        ));
                    }
                }
            }
            for (name, value) in [("from", &schedule.from), ("to", &schedule.to)] {
                if let Some(text) = value
                    && let Err(why) = parse_clock(text)
                {
                    out.push(Problem::value(at_schedule(name), why));
                }
            }
        }
        for (j, channel) in alert.channels.iter().enumerate() {
            if !channels.contains(channel.as_str()) {
                let mut path = at("channels");
                path.push(Seg::Index(j));
                out.push(Problem::value(
                    path,
                    format!(
                        "unknown channel {}: no [[channel]] has this id",
                        shown(channel)
                    ),
                ));
            }
        }
    }
}

fn metric(config: &RawConfig, alert: &AlertConfig, at: &[Seg], out: &mut Vec<Problem>) {
    let name = alert.metric.as_str();
    if reading_metric(name) {
        return;
    }
    match split_level_metric(name) {
        Some((_, length)) if config.levels.intervals.contains(&length) => {}
        Some((_, length)) => out.push(Problem::value(
            at.to_vec(),
            format!(
                "{} is an interval level of {}, but [levels] intervals has no {}: add \"{}\" to it",
                shown(name),
                format_duration(length),
                format_duration(length),
                format_duration(length)
            ),
        )),
        None => out.push(Problem::value(
            at.to_vec(),
            format!(
                "unknown metric {}: expected a reading's metric (lp, leq, le, lmax, lmin, lpeak, l1 … l99) or an interval level such as \"leq_15m\" ({} with a length from [levels] intervals)",
                shown(name),
                LEVEL_METRICS.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, parse};
    use std::path::Path;
    use std::time::Duration;

    const DEVICE: &str =
        "[[device]]\nid = \"north\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\n";

    fn err(text: &str) -> ConfigError {
        match parse(&format!("{DEVICE}{text}"), Path::new("t.toml")) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    /// The error's line, key and whether its message has `words`.
    fn located(text: &str, line: usize, key: &str, words: &str) {
        let e = err(text);
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(line + 5), Some(key)),
            "{e}"
        );
        assert!(e.message.contains(words), "{e}");
    }

    #[test]
    fn the_spec_example_is_accepted() {
        let text = format!(
            "{DEVICE}[levels]\nintervals = [\"1m\", \"15m\", \"1h\"]\ntimezone = \"Europe/Zurich\"\n\n\
             [[channel]]\nid = \"site-office\"\nkind = \"webhook\"\nurl = \"http://192.0.2.5:8080/noise\"\n\n\
             [[alert]]\nid = \"day-limit\"\ndevices = [\"north\"]\nmetric = \"leq_15m\"\nabove = 65.0\nfor = \"30s\"\n\
             clear_below = 63.0\nschedule = {{ days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"], from = \"07:00\", to = \"19:00\" }}\n\
             cooldown = \"10m\"\nchannels = [\"site-office\"]\n"
        );
        let config = match parse(&text, Path::new("t.toml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            config.levels.intervals,
            [60, 900, 3600].map(Duration::from_secs)
        );
        assert_eq!(config.alerts[0].hold, Duration::from_secs(30));
        assert_eq!(config.alerts[0].clear_level(), 63.0);
        assert_eq!(config.channels[0].id, "site-office");
    }

    #[test]
    fn rule_mistakes_are_located() {
        let rule = |extra: &str| {
            format!(
                "[levels]\nintervals = [\"15m\"]\n[[channel]]\nid = \"office\"\nkind = \"ntfy\"\nurl = \"https://ntfy.sh/x\"\n[[alert]]\nid = \"r\"\nabove = 65.0\n{extra}"
            )
        };
        // Line numbers count from the rule's first line after DEVICE.
        located(
            &rule("metric = \"lp\"\ndevices = [\"south\"]\n"),
            11,
            "alert[0].devices[0]",
            "unknown device \"south\"",
        );
        located(
            &rule("metric = \"loudness\"\n"),
            10,
            "alert[0].metric",
            "unknown metric \"loudness\"",
        );
        located(
            &rule("metric = \"leq_5m\"\n"),
            10,
            "alert[0].metric",
            "[levels] intervals has no 5m",
        );
        located(
            &rule("metric = \"lp\"\nchannels = [\"site\"]\n"),
            11,
            "alert[0].channels[0]",
            "unknown channel \"site\"",
        );
        located(
            &rule("metric = \"lp\"\nclear_below = 70.0\n"),
            11,
            "alert[0].clear_below",
            "must not be above the limit",
        );
        located(
            &rule("metric = \"lp\"\nschedule = { days = [\"monday\"] }\n"),
            11,
            "alert[0].schedule.days[0]",
            "unknown day \"monday\"",
        );
        located(
            &rule("metric = \"lp\"\nschedule = { from = \"7:00\" }\n"),
            11,
            "alert[0].schedule.from",
            "HH:MM",
        );
    }

    #[test]
    fn level_and_channel_mistakes_are_located() {
        located(
            "[levels]\nintervals = [\"7m\"]\n",
            2,
            "levels.intervals[0]",
            "7m",
        );
        located(
            "[levels]\ntimezone = \"Mars/Olympus\"\n",
            2,
            "levels.timezone",
            "unknown time zone",
        );
        located(
            "[[channel]]\nid = \"a\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
            4,
            "channel[0].url",
            "invalid URL",
        );
        let e = err("[[channel]]\nid = \"a\"\nkind = \"email\"\nurl = \"http://x\"\n");
        assert_eq!(e.key.as_deref(), Some("channel[0].kind"), "{e}");
        let e = err("[[alert]]\nid = \"a\"\nmetric = \"lp\"\n");
        assert!(e.message.contains("above"), "{e}");
    }

    #[test]
    fn clocks_and_level_metrics_parse() {
        assert_eq!(super::parse_clock("07:30"), Ok(450));
        assert_eq!(super::parse_clock("24:00"), Ok(1440));
        assert!(super::parse_clock("24:01").is_err());
        assert!(super::parse_clock("7:30").is_err());
        assert_eq!(
            super::split_level_metric("l90_1h"),
            Some(("l90", Duration::from_secs(3600)))
        );
        assert_eq!(super::split_level_metric("lp"), None);
        assert_eq!(super::split_level_metric("lpeak_1h"), None);
    }
}
