//! Semantic rules, checked after deserializing and before anything starts.
//!
//! Each rule yields a [`Problem`] with the key path it is about; the caller
//! places it in the file. Rules only look at the [`Config`], so a default
//! value can never be "missing" and a key that is absent is told apart by
//! its `Option`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use super::device::RawDevice;
use super::locate::{Problem, Seg, key, shown};
use super::units::format_duration;
use super::{
    ANSWER_TIMEOUT_RANGE, Config, DeviceConfig, FamilyRules, LinkConfig, MeterCare, Mode,
    RawConfig, SerialFraming, Support, SyncClock, Transport,
};

/// Most `[[device]]` tables per gateway: 64. A gateway serves the meters of
/// one site, usually 1 to 8; 64 leaves room for a large site behind serial
/// hubs while bounding what every meter costs (a task, a connection and so
/// a file descriptor, a status entry, a line in `slmd status`). More meters
/// belong on a second gateway.
pub const MAX_DEVICES: usize = 64;

/// Longest period of anything repeated or retried — `poll_interval`,
/// `live_poll_interval`, `status_interval`, `api.stream_max`,
/// `fleet.interval`, `fleet.token_retry`, `fleet.auth_retry`,
/// `fleet.retry_min`, `fleet.retry_max`: 1 day. Reading or pushing less
/// often than daily is no longer monitoring, and a bound this far below the
/// monotonic clock's range keeps every "now + period" deadline from
/// overflowing (`"200000000000000d"` used to pass and then panic a task).
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Longest `buffer.commit_interval`: what a `kill -9` may cost stays a
/// matter of seconds, and the watchdog's stall limit
/// ([`crate::notify::WRITER_STALL`], 60s) stays well above it.
pub const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(30);

/// Longest `fleet.timeout` (one push request, connect to last byte): 1 hour.
/// A push of the largest batch over a slow cellular link takes seconds to
/// minutes; a request still running after an hour is hung.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest `answer_timeout`: 60 s. The meter answers within a second; a
/// minute covers a slow serial-to-TCP bridge over cellular.
pub const MAX_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest reconnect delay (`reconnect_min`, `reconnect_max`): 1 hour, so
/// a meter that comes back is read again within the hour.
pub const MAX_RECONNECT: Duration = Duration::from_secs(3600);

/// Longest `command_gap`: 60 s. The meter needs 200 ms after an answer; a
/// pause of more than a minute after every answer would stretch each poll
/// cycle far past any useful `poll_interval`.
pub const MAX_COMMAND_GAP: Duration = Duration::from_secs(60);

/// Longest `gateway.id`: 64 characters, the longest Linux host name (the
/// default). It is in every push, MQTT topic and status answer.
pub const MAX_GATEWAY_ID_CHARS: usize = 64;

/// Longest path (`gateway.state_dir`, a device's `path`,
/// `fleet.token_file`): 4095 bytes, Linux's `PATH_MAX` without the final
/// NUL; a longer path cannot be opened.
pub const MAX_PATH_BYTES: usize = 4095;

/// Longest URL (`fleet.url`, `mqtt.url`): 2048 characters, about what HTTP
/// clients and proxies accept.
pub const MAX_URL_CHARS: usize = 2048;

/// Longest `mqtt.topic_prefix`: 128 characters. It starts every topic, before
/// the gateway and device ids; brokers and dashboards cut long topics.
pub const MAX_TOPIC_PREFIX_CHARS: usize = 128;

/// Longest token (API or fleet): 4096 bytes. A token travels in an
/// `Authorization` header, which servers commonly cap at 8 KiB; a long JWT
/// is 1 to 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Most `api.tokens`: 16. Each request is compared with every token (in
/// constant time); one token per client or person, rotated rather than
/// accumulated.
pub const MAX_API_TOKENS: usize = 16;

/// Longest host name (RFC 1035): 253 characters in all, 63 per label.
const MAX_HOST_CHARS: usize = 253;
/// Longest label of a host name.
const MAX_LABEL_CHARS: usize = 63;

/// Said of every secret a message is about.
const NOT_SHOWN: &str = "(value not shown: it is a secret)";

/// The validated configuration, or every problem in `raw` (in no
/// particular order; at least one).
pub(crate) fn build(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let (problems, devices) = problems(&raw);
    if !problems.is_empty() {
        return Err(problems);
    }
    // No problem means every device was built.
    let devices: Option<Vec<DeviceConfig>> = devices.into_iter().collect();
    let Some(devices) = devices else {
        return Err(vec![Problem::value(
            key(&["device"]),
            "invalid device table",
        )]);
    };
    let RawConfig {
        gateway,
        buffer,
        devices: _,
        api,
        mqtt,
        fleet,
        levels,
        channels,
        alerts,
    } = raw;
    Ok(Config {
        gateway,
        buffer,
        devices,
        api,
        mqtt,
        fleet,
        levels,
        channels,
        alerts,
    })
}

/// Every problem in `config`, in no particular order, and each device as
/// built (`None` where it has a problem).
fn problems(config: &RawConfig) -> (Vec<Problem>, Vec<Option<DeviceConfig>>) {
    let mut out = Vec::new();
    let mut built = Vec::new();
    gateway(config, &mut out);
    buffer(config, &mut out);
    if config.devices.len() > MAX_DEVICES {
        out.push(Problem::value(
            vec![Seg::Key("device".into()), Seg::Index(MAX_DEVICES)],
            format!(
                "too many meters: a gateway serves at most {MAX_DEVICES} [[device]] tables, found {}; put the others on a second gateway",
                config.devices.len()
            ),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    // Past the limit nothing more is checked: the count is the error.
    for (i, device) in config.devices.iter().enumerate().take(MAX_DEVICES) {
        let at = |name: &str| {
            vec![
                Seg::Key("device".into()),
                Seg::Index(i),
                Seg::Key(name.into()),
            ]
        };
        if let Some(first) = seen.get(device.id.as_str()) {
            out.push(Problem::value(
                at("id"),
                format!(
                    "duplicate device id {}: already used by device[{first}]; each device needs its own id",
                    shown(&device.id)
                ),
            ));
        } else {
            seen.insert(&device.id, i);
        }
        built.push(self::device(device, &at, &mut out));
    }
    api(config, &mut out);
    mqtt(config, &mut out);
    fleet(config, &mut out);
    super::limits::validate(config, &mut out);
    (out, built)
}

fn gateway(config: &RawConfig, out: &mut Vec<Problem>) {
    let id = &config.gateway.id;
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        out.push(Problem::value(
            key(&["gateway", "id"]),
            format!(
                "invalid gateway id {}: expected a non-empty name without spaces (e.g. \"gw-0042\")",
                shown(id)
            ),
        ));
    } else if id.chars().count() > MAX_GATEWAY_ID_CHARS {
        out.push(Problem::value(
            key(&["gateway", "id"]),
            format!(
                "invalid gateway id {}: at most {MAX_GATEWAY_ID_CHARS} characters (e.g. \"gw-0042\")",
                shown(id)
            ),
        ));
    }
    if config.gateway.state_dir.as_os_str().is_empty() {
        out.push(Problem::value(
            key(&["gateway", "state_dir"]),
            "must not be empty; expected a directory such as \"/var/lib/slmd\"",
        ));
    }
    path_limits(
        key(&["gateway", "state_dir"]),
        &config.gateway.state_dir,
        out,
    );
}

fn buffer(config: &RawConfig, out: &mut Vec<Problem>) {
    if config.buffer.max_records == 0 {
        out.push(Problem::value(
            key(&["buffer", "max_records"]),
            "must be at least 1, found 0",
        ));
    }
    if config.buffer.max_bytes.is_some_and(|b| b.0 == 0) {
        out.push(Problem::value(
            key(&["buffer", "max_bytes"]),
            "must be at least 1 byte; leave max_bytes out for no size cap",
        ));
    }
    at_most(
        key(&["buffer", "commit_interval"]),
        config.buffer.commit_interval,
        MAX_COMMIT_INTERVAL,
        out,
    );
}

/// Checks one `[[device]]` table against its family's rules and builds it;
/// `None` when it has a problem (each one pushed to `out`).
fn device(
    d: &RawDevice,
    at: &dyn Fn(&str) -> Vec<Seg>,
    out: &mut Vec<Problem>,
) -> Option<DeviceConfig> {
    let before = out.len();
    let rules = d.protocol.rules();
    let family = rules.name;
    let id_ok = (1..=64).contains(&d.id.chars().count())
        && d.id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        out.push(Problem::value(
            at("id"),
            format!(
                "invalid device id {}: expected 1 to 64 of the characters A-Z a-z 0-9 . _ - (e.g. \"nl43-north\")",
                shown(&d.id)
            ),
        ));
    }
    let link = self::link(d, rules, at, out);
    if !rules.polled {
        let push = "meters push their readings and are never polled";
        for (name, given) in [
            ("answer_timeout", d.answer_timeout.is_some()),
            ("command_gap", d.command_gap.is_some()),
            ("status_interval", d.status_interval.is_some()),
            ("live_poll_interval", d.live_poll_interval.is_some()),
            ("mode", d.mode.is_some()),
            ("live_mode", d.live_mode.is_some()),
        ] {
            if given {
                out.push(Problem::key(
                    at(name),
                    format!(
                        "{family} {push}, so {name} does not apply; remove it (poll_interval, when set, is the meter's logging period)"
                    ),
                ));
            }
        }
    }
    for (name, mode) in [("mode", d.mode), ("live_mode", d.live_mode)] {
        if mode == Some(Mode::Stream) && !rules.streams {
            out.push(Problem::value(
                at(name),
                format!(
                    "{family} has no continuous output: expected \"poll\" (\"stream\" is for nl43, whose DRD? sends 10 readings a second)"
                ),
            ));
        }
    }
    let (min_poll, why_poll) = rules.min_poll;
    let poll_interval = d.poll_interval.unwrap_or(rules.default_poll);
    within(
        at("poll_interval"),
        poll_interval,
        min_poll,
        why_poll,
        MAX_PERIOD,
        out,
    );
    if let Some(live) = d.live_poll_interval {
        within(
            at("live_poll_interval"),
            live,
            min_poll,
            why_poll,
            MAX_PERIOD,
            out,
        );
    }
    let answer_timeout = d.answer_timeout.unwrap_or(rules.default_answer_timeout);
    within(
        at("answer_timeout"),
        answer_timeout,
        ANSWER_TIMEOUT_RANGE.0,
        "",
        MAX_ANSWER_TIMEOUT.min(ANSWER_TIMEOUT_RANGE.1),
        out,
    );
    let (min_gap, why_gap) = rules.min_command_gap;
    let command_gap = d.command_gap.unwrap_or(rules.default_command_gap);
    within(
        at("command_gap"),
        command_gap,
        min_gap,
        why_gap,
        MAX_COMMAND_GAP,
        out,
    );
    let second = Duration::from_secs(1);
    let status_interval = d.status_interval.unwrap_or(DEFAULT_STATUS_INTERVAL);
    within(
        at("status_interval"),
        status_interval,
        second,
        "",
        MAX_PERIOD,
        out,
    );
    let reconnect_min = d.reconnect_min.unwrap_or(DEFAULT_RECONNECT_MIN);
    let reconnect_max = d.reconnect_max.unwrap_or(DEFAULT_RECONNECT_MAX);
    period(at("reconnect_min"), reconnect_min, MAX_RECONNECT, out);
    at_most(at("reconnect_max"), reconnect_max, MAX_RECONNECT, out);
    if reconnect_max < reconnect_min {
        let (min, max) = (
            format_duration(reconnect_min),
            format_duration(reconnect_max),
        );
        out.push(
            Problem::value(
                at("reconnect_max"),
                format!("must be at least reconnect_min ({min}), found {max}"),
            )
            .or_if_absent(Problem::value(
                at("reconnect_min"),
                format!(
                    "must be at most reconnect_max ({max}, the default), found {min}; raise reconnect_max too"
                ),
            )),
        );
    }
    let care = self::care(d, rules, at, out);
    if out.len() > before {
        return None;
    }
    let mode = d.mode.unwrap_or_default();
    Some(DeviceConfig {
        id: d.id.clone(),
        protocol: d.protocol,
        link: link?,
        mode,
        live_mode: d.live_mode.unwrap_or(mode),
        poll_interval,
        poll_interval_set: d.poll_interval.is_some(),
        live_poll_interval: d.live_poll_interval,
        answer_timeout,
        command_gap,
        status_interval,
        utc_offset: d.utc_offset,
        reconnect_min,
        reconnect_max,
        care,
    })
}

/// The meter-care keys: each refused, located, where the family's
/// protocol cannot do it.
fn care(
    d: &RawDevice,
    rules: &FamilyRules,
    at: &dyn Fn(&str) -> Vec<Seg>,
    out: &mut Vec<Problem>,
) -> MeterCare {
    let family = rules.name;
    let mut allowed = |name: &str, wanted: bool, support: Support| match support {
        Support::Yes => wanted,
        Support::No(why) => {
            if wanted {
                out.push(Problem::value(
                    at(name),
                    format!("{family} cannot do {name}: {why}; remove it"),
                ));
            }
            false
        }
    };
    let sync = d.sync_clock.unwrap_or_default();
    MeterCare {
        keep_measuring: allowed(
            "keep_measuring",
            d.keep_measuring == Some(true),
            rules.care.keep_measuring,
        ),
        no_sleep: allowed("no_sleep", d.no_sleep == Some(true), rules.care.no_sleep),
        sync_clock: if allowed(
            "sync_clock",
            sync == SyncClock::Daily,
            rules.care.sync_clock,
        ) {
            SyncClock::Daily
        } else {
            SyncClock::Off
        },
    }
}

/// Shortest `[fleet].heartbeat_interval`.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `[fleet].heartbeat_interval`: a fleet marks a gateway offline
/// after three missed intervals, so longer would hide a dead one for hours.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);

/// `status_interval` when not written: the run state and health every 10 s.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// `reconnect_min` when not written.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_secs(1);
/// `reconnect_max` when not written: a meter that comes back is found
/// within a minute.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(60);

/// The tagged link of one device: the transport's own keys required, the
/// other transport's refused, serial framing from the family's defaults
/// and the overrides.
fn link(
    d: &RawDevice,
    rules: &super::FamilyRules,
    at: &dyn Fn(&str) -> Vec<Seg>,
    out: &mut Vec<Problem>,
) -> Option<LinkConfig> {
    let serial_keys = [
        ("baud", d.baud.is_some()),
        ("data_bits", d.data_bits.is_some()),
        ("stop_bits", d.stop_bits.is_some()),
        ("parity", d.parity.is_some()),
    ];
    match d.transport {
        Transport::Tcp => {
            if d.path.is_some() {
                out.push(Problem::key(
                    at("path"),
                    "path is only for serial devices; a tcp device uses address = \"host:port\"",
                ));
            }
            for (name, given) in serial_keys {
                if given {
                    out.push(Problem::key(
                        at(name),
                        format!(
                            "{name} is only for serial devices; a tcp device's line settings are the bridge's or the meter's own"
                        ),
                    ));
                }
            }
            let Some(address) = &d.address else {
                out.push(Problem::value(
                    at("address"),
                    "missing: a tcp device needs address = \"host:port\"",
                ));
                return None;
            };
            if let Err(why) = host_port(address, true) {
                out.push(Problem::value(
                    at("address"),
                    format!(
                        "invalid address {}: {why}; expected \"host:port\" (e.g. \"192.0.2.10:2255\", \"meter-1.local:2255\", \"[2001:db8::10]:2255\")",
                        shown(address)
                    ),
                ));
                return None;
            }
            Some(LinkConfig::Tcp {
                address: address.clone(),
            })
        }
        Transport::Serial => {
            if d.address.is_some() {
                out.push(Problem::key(
                    at("address"),
                    "address is only for tcp devices; a serial device uses path = \"/dev/...\"",
                ));
            }
            let before = out.len();
            let framing = SerialFraming {
                baud: d.baud.unwrap_or(rules.serial.baud),
                data_bits: d.data_bits.unwrap_or(rules.serial.data_bits),
                stop_bits: d.stop_bits.unwrap_or(rules.serial.stop_bits),
                parity: d.parity.unwrap_or(rules.serial.parity),
            };
            if !rules.bauds.contains(&framing.baud) {
                let list: Vec<String> = rules.bauds.iter().map(u32::to_string).collect();
                out.push(Problem::value(
                    at("baud"),
                    format!(
                        "unsupported baud rate {}; expected one of: {} (as set on the meter)",
                        framing.baud,
                        list.join(", ")
                    ),
                ));
            }
            if !matches!(framing.data_bits, 7 | 8) {
                out.push(Problem::value(
                    at("data_bits"),
                    format!("expected 7 or 8, found {}", framing.data_bits),
                ));
            }
            if !matches!(framing.stop_bits, 1 | 2) {
                out.push(Problem::value(
                    at("stop_bits"),
                    format!("expected 1 or 2, found {}", framing.stop_bits),
                ));
            }
            let path = match &d.path {
                None => {
                    out.push(Problem::value(
                        at("path"),
                        "missing: a serial device needs path = \"/dev/...\" (e.g. \"/dev/ttyUSB0\" or a /dev/serial/by-id/ path)",
                    ));
                    return None;
                }
                Some(path) if !path.is_absolute() => {
                    out.push(Problem::value(
                        at("path"),
                        format!(
                            "expected an absolute path (e.g. \"/dev/ttyUSB0\" or a /dev/serial/by-id/ path), found {}",
                            shown(&path.display().to_string())
                        ),
                    ));
                    return None;
                }
                Some(path) => {
                    path_limits(at("path"), path, out);
                    path.clone()
                }
            };
            (out.len() == before).then_some(LinkConfig::Serial { path, framing })
        }
    }
}

fn api(config: &RawConfig, out: &mut Vec<Problem>) {
    let api = &config.api;
    if !api.listen.ip().is_loopback() && api.tokens.is_empty() {
        out.push(Problem::value(
            key(&["api", "listen"]),
            format!(
                "a non-loopback listen address requires [api].tokens; add tokens = [\"<secret>\"] or listen on 127.0.0.1:{}",
                api.listen.port()
            ),
        ));
    }
    if api.tokens.len() > MAX_API_TOKENS {
        out.push(Problem::value(
            key(&["api", "tokens"]),
            format!(
                "expected at most {MAX_API_TOKENS} tokens (one per client, rotated rather than accumulated), found {}",
                api.tokens.len()
            ),
        ));
    }
    tokens(&key(&["api", "tokens"]), &api.tokens, out);
    period(key(&["api", "stream_max"]), api.stream_max, MAX_PERIOD, out);
}

fn mqtt(config: &RawConfig, out: &mut Vec<Problem>) {
    let Some(mqtt) = &config.mqtt else {
        return;
    };
    if let Err(why) = url(&mqtt.url, &["mqtt", "mqtts"], false) {
        out.push(Problem::value(
            key(&["mqtt", "url"]),
            format!(
                "invalid URL {}: {why}; expected mqtt://host[:port] or mqtts://host[:port] (e.g. \"mqtt://127.0.0.1:1883\")",
                shown_url(&mqtt.url)
            ),
        ));
    }
    let prefix = &mqtt.topic_prefix;
    let why = if prefix.is_empty() {
        Some("must not be empty".to_owned())
    } else if prefix.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards + or #".to_owned())
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Some("must not start or end with /".to_owned())
    } else if prefix.contains('\0') {
        Some("must not contain NUL".to_owned())
    } else if prefix.chars().count() > MAX_TOPIC_PREFIX_CHARS {
        Some(format!("at most {MAX_TOPIC_PREFIX_CHARS} characters"))
    } else {
        None
    };
    if let Some(why) = why {
        out.push(Problem::value(
            key(&["mqtt", "topic_prefix"]),
            format!(
                "invalid topic prefix {}: {why} (e.g. \"slmd\" or \"site-7/slmd\")",
                shown(prefix)
            ),
        ));
    }
    if mqtt.qos > 2 {
        out.push(Problem::value(
            key(&["mqtt", "qos"]),
            format!("expected 0, 1 or 2, found {}", mqtt.qos),
        ));
    }
}

/// Most `[fleet].urls` (brokers of one cluster).
pub const MAX_FLEET_BROKERS: usize = 8;

fn fleet(config: &RawConfig, out: &mut Vec<Problem>) {
    let fleet = &config.fleet;
    fleet_mqtt(fleet, out);
    match &fleet.url {
        Some(u) => {
            if let Err(why) = url(u, &["http", "https"], true) {
                out.push(Problem::value(
                    key(&["fleet", "url"]),
                    format!(
                        "invalid URL {}: {why}; expected http:// or https:// and a host (e.g. \"https://fleet.example.com\")",
                        shown_url(u)
                    ),
                ));
            }
        }
        None if fleet.enabled && fleet.transport.http() => out.push(Problem::value(
            key(&["fleet", "url"]),
            "missing: enabled = true needs url = \"https://...\" (the fleet server)",
        )),
        None => {}
    }
    if fleet.enabled && fleet.tokens.is_empty() && fleet.token_file.is_none() {
        out.push(Problem::value(
            key(&["fleet", "tokens"]),
            "missing: enabled = true needs tokens = [\"<current>\"] or token_file = \"/etc/slmd/fleet.token\"",
        ));
    }
    if !fleet.tokens.is_empty() && fleet.token_file.is_some() {
        out.push(Problem::key(
            key(&["fleet", "token_file"]),
            "set either tokens or token_file, not both",
        ));
    }
    if fleet.tokens.len() > 2 {
        out.push(Problem::value(
            key(&["fleet", "tokens"]),
            format!(
                "expected at most 2 tokens (the current one and, during a rotation, the previous one), found {}",
                fleet.tokens.len()
            ),
        ));
    }
    tokens(&key(&["fleet", "tokens"]), &fleet.tokens, out);
    if let Some(file) = &fleet.token_file {
        if file.as_os_str().is_empty() {
            out.push(Problem::value(
                key(&["fleet", "token_file"]),
                "must not be empty; expected a file path such as \"/etc/slmd/fleet.token\"",
            ));
        }
        path_limits(key(&["fleet", "token_file"]), file, out);
    }
    if !(1..=10_000).contains(&fleet.batch_max) {
        out.push(Problem::value(
            key(&["fleet", "batch_max"]),
            format!(
                "expected 1 to 10000 records per push, found {}",
                fleet.batch_max
            ),
        ));
    }
    for (name, value, max) in [
        ("interval", fleet.interval, MAX_PERIOD),
        ("token_retry", fleet.token_retry, MAX_PERIOD),
        ("timeout", fleet.timeout, MAX_TIMEOUT),
        ("retry_min", fleet.retry_min, MAX_PERIOD),
        ("retry_max", fleet.retry_max, MAX_PERIOD),
        ("auth_retry", fleet.auth_retry, MAX_PERIOD),
    ] {
        period(key(&["fleet", name]), value, max, out);
    }
    within(
        key(&["fleet", "heartbeat_interval"]),
        fleet.heartbeat_interval,
        MIN_HEARTBEAT_INTERVAL,
        "",
        MAX_HEARTBEAT_INTERVAL,
        out,
    );
    if fleet.retry_min > fleet.retry_max {
        out.push(Problem::value(
            key(&["fleet", "retry_min"]),
            format!(
                "must not exceed retry_max ({}), found {}",
                format_duration(fleet.retry_max),
                format_duration(fleet.retry_min)
            ),
        ));
    }
}

/// `transport`, `urls`, `topic_prefix`, `username` and the TLS files of
/// the MQTT uplink.
fn fleet_mqtt(fleet: &crate::config::FleetConfig, out: &mut Vec<Problem>) {
    if fleet.enabled && fleet.transport.mqtt() && fleet.urls.is_empty() {
        out.push(Problem::value(
            key(&["fleet", "urls"]),
            "missing: transport = \"mqtt\" needs urls = [\"mqtts://broker-a:8883\", ...] (the fleet's brokers)",
        ));
    }
    if fleet.urls.len() > MAX_FLEET_BROKERS {
        out.push(Problem::value(
            key(&["fleet", "urls"]),
            format!(
                "expected at most {MAX_FLEET_BROKERS} broker addresses, found {}",
                fleet.urls.len()
            ),
        ));
    }
    for (i, u) in fleet.urls.iter().enumerate() {
        if let Err(why) = url(u, &["mqtt", "mqtts"], false) {
            let mut at = key(&["fleet", "urls"]);
            at.push(Seg::Index(i));
            out.push(Problem::value(
                at,
                format!(
                    "invalid URL {}: {why}; expected mqtt://host[:port] or mqtts://host[:port] (e.g. \"mqtts://broker-a.example.com:8883\")",
                    shown_url(u)
                ),
            ));
        }
    }
    let prefix = &fleet.topic_prefix;
    if prefix.is_empty()
        || prefix.contains(['+', '#', '\0'])
        || prefix.starts_with('/')
        || prefix.ends_with('/')
        || prefix.chars().count() > MAX_TOPIC_PREFIX_CHARS
    {
        out.push(Problem::value(
            key(&["fleet", "topic_prefix"]),
            format!(
                "invalid topic prefix {}: 1 to {MAX_TOPIC_PREFIX_CHARS} characters, no + # or NUL, not starting or ending with / (e.g. \"fleet\")",
                shown(prefix)
            ),
        ));
    }
    if let Some(name) = &fleet.username
        && (name.is_empty() || name.len() > 256 || name.chars().any(char::is_control))
    {
        out.push(Problem::value(
            key(&["fleet", "username"]),
            "expected 1 to 256 bytes without control characters (default: the gateway id)",
        ));
    }
    if fleet.client_cert.is_some() != fleet.client_key.is_some() {
        let missing = if fleet.client_cert.is_some() {
            "client_key"
        } else {
            "client_cert"
        };
        out.push(Problem::key(
            key(&["fleet", missing]),
            "missing: client_cert and client_key go together (a PEM certificate and its private key)",
        ));
    }
    for (name, file) in [
        ("ca_file", &fleet.ca_file),
        ("client_cert", &fleet.client_cert),
        ("client_key", &fleet.client_key),
    ] {
        if let Some(file) = file {
            path_limits(key(&["fleet", name]), file, out);
        }
    }
}

/// Every token is a non-empty string of at most [`MAX_TOKEN_BYTES`] that
/// fits in an HTTP header. Messages never include the token.
fn tokens(path: &[Seg], tokens: &[String], out: &mut Vec<Problem>) {
    for (i, token) in tokens.iter().enumerate() {
        let mut at = path.to_vec();
        at.push(Seg::Index(i));
        let why = if token.trim().is_empty() {
            "a token must not be empty".to_owned()
        } else if token.len() > MAX_TOKEN_BYTES {
            format!(
                "a token is at most {MAX_TOKEN_BYTES} bytes, found {} bytes {NOT_SHOWN}",
                token.len()
            )
        } else if token.chars().any(char::is_control) {
            format!(
                "a token must not contain control characters or line breaks (it is sent in an HTTP header) {NOT_SHOWN}"
            )
        } else {
            continue;
        };
        out.push(Problem::value(at, why));
    }
}

/// A path is at most [`MAX_PATH_BYTES`] long and holds no NUL byte (the
/// operating system cannot open either).
fn path_limits(at: Vec<Seg>, path: &Path, out: &mut Vec<Problem>) {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() > MAX_PATH_BYTES {
        out.push(Problem::value(
            at,
            format!(
                "a path is at most {MAX_PATH_BYTES} bytes, found {} bytes",
                bytes.len()
            ),
        ));
    } else if bytes.contains(&0) {
        out.push(Problem::value(
            at,
            "a path must not contain a NUL character",
        ));
    }
}

/// `min <= value <= max`, with a reason for the minimum appended.
fn within(
    path: Vec<Seg>,
    value: Duration,
    min: Duration,
    why: &str,
    max: Duration,
    out: &mut Vec<Problem>,
) {
    if value < min {
        out.push(Problem::value(
            path,
            format!(
                "must be at least {}, found {}{why}",
                format_duration(min),
                format_duration(value)
            ),
        ));
    } else {
        at_most(path, value, max, out);
    }
}

/// A period that must not be zero (it would be a busy loop) nor above `max`.
fn period(path: Vec<Seg>, value: Duration, max: Duration, out: &mut Vec<Problem>) {
    if value.is_zero() {
        out.push(Problem::value(path, "must be greater than 0s"));
    } else {
        at_most(path, value, max, out);
    }
}

/// `value <= max`; the message names the limit.
fn at_most(path: Vec<Seg>, value: Duration, max: Duration, out: &mut Vec<Problem>) {
    if value > max {
        out.push(Problem::value(
            path,
            format!(
                "must be at most {}, found {} (the longest slmd accepts here)",
                limit_text(max),
                format_duration(value)
            ),
        ));
    }
}

/// A limit as the key's documentation writes it: `60s` rather than `1m`.
fn limit_text(max: Duration) -> String {
    if max <= Duration::from_secs(60) && max.subsec_nanos() == 0 {
        format!("{}s", max.as_secs())
    } else {
        format_duration(max)
    }
}

/// Checks `host:port` (or `host` when `!need_port`): host is a DNS name, an
/// IPv4 address or a bracketed IPv6 address; port is 1 to 65535.
fn host_port(s: &str, need_port: bool) -> Result<(), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs a closing ]")?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("{} is not an IPv6 address", shown(inside)))?;
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("unexpected {} after ]", shown(after))),
            },
        }
    } else {
        if s.matches(':').count() > 1 {
            return Err("an IPv6 address must be in brackets".to_owned());
        }
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        (Some(host), port)
    };
    if let Some(host) = host {
        host_name(host)?;
    }
    match port {
        None if need_port => Err("the port is missing".to_owned()),
        None => Ok(()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 1 && p.chars().all(|c| c.is_ascii_digit()) => Ok(()),
            _ => Err(format!("port {} is not a number from 1 to 65535", shown(p))),
        },
    }
}

/// A DNS name (labels of letters, digits, `-` and `_`, at most 63
/// characters each and 253 in all) or an IPv4 address. A name whose last
/// label is a number is what resolvers read as an IPv4 address, so it must
/// be a valid one: `256.0.0.1` and `10.1` are refused rather than looked up.
fn host_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    let numeric_tail = host
        .rsplit('.')
        .next()
        .is_some_and(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_digit()));
    if numeric_tail {
        return host.parse::<Ipv4Addr>().map(|_| ()).map_err(|_| {
            format!(
                "{} is not a valid IPv4 address: expected four numbers from 0 to 255 separated by dots, without leading zeros (e.g. 192.0.2.10)",
                shown(host)
            )
        });
    }
    if host.chars().count() > MAX_HOST_CHARS {
        return Err(format!(
            "the host name is longer than {MAX_HOST_CHARS} characters"
        ));
    }
    let name_ok = host.split('.').all(|label| {
        (1..=MAX_LABEL_CHARS).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !name_ok {
        return Err(format!(
            "{} is not a host name or IP address (a name is made of dot-separated labels of letters, digits, - and _, each at most {MAX_LABEL_CHARS} characters, not starting or ending with -)",
            shown(host)
        ));
    }
    Ok(())
}

/// Checks `scheme://host[:port]`, with a path only when `allow_path`; never
/// a query, a fragment or credentials.
pub(crate) fn url(u: &str, schemes: &[&str], allow_path: bool) -> Result<(), String> {
    if u.chars().count() > MAX_URL_CHARS {
        return Err(format!("a URL is at most {MAX_URL_CHARS} characters"));
    }
    let (scheme, rest) = u.split_once("://").ok_or("the scheme is missing")?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(format!("unsupported scheme {}", shown(scheme)));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(
            "credentials in the URL are not supported (tokens carry the authentication)".to_owned(),
        );
    }
    if tail.contains(['?', '#']) {
        return Err("a query (?) or fragment (#) is not supported".to_owned());
    }
    if !allow_path && !tail.is_empty() && tail != "/" {
        return Err(format!("unexpected path {}", shown(tail)));
    }
    host_port(authority, false)
}

/// A URL as quoted in a message: anything before an `@` (credentials) and
/// after a `?` or `#` (a query may hold a key) is left out, the rest cut
/// like any value.
fn shown_url(u: &str) -> String {
    let (scheme, rest) = match u.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), u),
    };
    let rest = match rest.rfind('@') {
        Some(at) => format!("***@{}", &rest[at + 1..]),
        None => rest.to_owned(),
    };
    let rest = match rest.find(['?', '#']) {
        Some(cut) => format!("{}{}…", &rest[..cut], &rest[cut..=cut]),
        None => rest,
    };
    shown(&format!("{scheme}{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        for ok in [
            "192.0.2.10:2255",
            "meter-1.local:1",
            "[2001:db8::10]:65535",
            "localhost:80",
        ] {
            assert_eq!(host_port(ok, true), Ok(()), "{ok}");
        }
        for bad in [
            "192.0.2.10",
            ":2255",
            "host:0",
            "host:65536",
            "host:+80",
            "host:",
            "2001:db8::10:2255",
            "[2001:db8::10",
            "[nope]:1",
            "a b:1",
            "host..x:1",
            "[::1]x",
            "256.0.0.1:80",
            "1.2.3:80",
            "10.1:80",
            "1.2.3.4.5:80",
            "010.0.0.1:80",
            "4294967295:80",
            "a.-1:80",
        ] {
            assert!(host_port(bad, true).is_err(), "{bad}");
        }
        assert_eq!(host_port("broker", false), Ok(()));
        assert_eq!(host_port("0.0.0.0:1", true), Ok(()));
        assert_eq!(host_port("2fast.example:1", true), Ok(()));
        let label = "a".repeat(MAX_LABEL_CHARS);
        assert_eq!(host_port(&format!("{label}.b:1"), true), Ok(()));
        assert!(host_port(&format!("{label}a.b:1"), true).is_err());
        let name = vec!["abcdefghi"; 26].join(".");
        assert!(name.len() > MAX_HOST_CHARS);
        assert!(host_port(&format!("{name}:1"), true).is_err());
    }

    #[test]
    fn the_ipv4_message_says_what_a_valid_one_is() {
        assert_eq!(
            host_port("256.0.0.1:80", true),
            Err("\"256.0.0.1\" is not a valid IPv4 address: expected four numbers from 0 to 255 separated by dots, without leading zeros (e.g. 192.0.2.10)".to_owned())
        );
    }

    #[test]
    fn urls_are_quoted_without_credentials_or_query() {
        assert_eq!(
            shown_url("https://user:pw@fleet.example.com/x"),
            "\"https://***@fleet.example.com/x\""
        );
        assert_eq!(
            shown_url("https://fleet.example.com/x?key=abc#frag"),
            "\"https://fleet.example.com/x?…\""
        );
        assert_eq!(shown_url("u:p@h"), "\"***@h\"");
        assert!(url("https://fleet/x?y", &["http", "https"], true).is_err());
        assert!(url("https://fleet/x#y", &["http", "https"], true).is_err());
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            url("mqtt://127.0.0.1:1883", &["mqtt", "mqtts"], false),
            Ok(())
        );
        assert_eq!(url("mqtts://broker/", &["mqtt", "mqtts"], false), Ok(()));
        assert!(url("mqtt://broker/topic", &["mqtt", "mqtts"], false).is_err());
        assert!(url("tcp://broker", &["mqtt", "mqtts"], false).is_err());
        assert!(url("broker:1883", &["mqtt", "mqtts"], false).is_err());
        assert!(url("mqtt://u:p@broker", &["mqtt", "mqtts"], false).is_err());
        assert!(url("mqtt://", &["mqtt", "mqtts"], false).is_err());
        assert_eq!(
            url(
                "https://fleet.example.com/ingest/v1",
                &["http", "https"],
                true
            ),
            Ok(())
        );
        assert_eq!(url("http://[::1]:8080", &["http", "https"], true), Ok(()));
        assert!(url("ftp://fleet.example.com", &["http", "https"], true).is_err());
    }
}
