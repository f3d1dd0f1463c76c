//! Semantic rules, checked after deserializing and before anything starts.
//!
//! Each rule yields a [`Problem`] with the key path it is about; the caller
//! places it in the file. Rules only look at the [`Config`], so a default
//! value can never be "missing" and a key that is absent is told apart by
//! its `Option`.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use super::locate::{Problem, Seg, key};
use super::units::format_duration;
use super::{Config, DeviceConfig, Transport};

/// Baud rates the supported meters can be set to.
const BAUDS: [u32; 5] = [9600, 19_200, 38_400, 57_600, 115_200];

/// Every problem in `config`, in no particular order.
pub(crate) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    gateway(config, &mut out);
    buffer(config, &mut out);
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, device) in config.devices.iter().enumerate() {
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
                format!("duplicate device id {:?}: already used by device[{first}]; each device needs its own id", device.id),
            ));
        } else {
            seen.insert(&device.id, i);
        }
        self::device(device, &at, &mut out);
    }
    api(config, &mut out);
    mqtt(config, &mut out);
    fleet(config, &mut out);
    out
}

fn gateway(config: &Config, out: &mut Vec<Problem>) {
    let id = &config.gateway.id;
    if id.is_empty() || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        out.push(Problem::value(
            key(&["gateway", "id"]),
            format!("invalid gateway id {id:?}: expected a non-empty name without spaces (e.g. \"gw-0042\")"),
        ));
    }
    if config.gateway.state_dir.as_os_str().is_empty() {
        out.push(Problem::value(
            key(&["gateway", "state_dir"]),
            "must not be empty; expected a directory such as \"/var/lib/slmd\"",
        ));
    }
}

fn buffer(config: &Config, out: &mut Vec<Problem>) {
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
}

fn device(d: &DeviceConfig, at: &dyn Fn(&str) -> Vec<Seg>, out: &mut Vec<Problem>) {
    let id_ok = (1..=64).contains(&d.id.chars().count())
        && d.id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !id_ok {
        out.push(Problem::value(
            at("id"),
            format!(
                "invalid device id {:?}: expected 1 to 64 of the characters A-Z a-z 0-9 . _ - (e.g. \"nl43-north\")",
                d.id
            ),
        ));
    }
    match d.transport {
        Transport::Tcp => {
            match &d.address {
                None => out.push(Problem::value(
                    at("address"),
                    "missing: a tcp device needs address = \"host:port\"",
                )),
                Some(address) => {
                    if let Err(why) = host_port(address, true) {
                        out.push(Problem::value(
                            at("address"),
                            format!(
                                "invalid address {address:?}: {why}; expected \"host:port\" (e.g. \"192.0.2.10:2255\", \"meter-1.local:2255\", \"[2001:db8::10]:2255\")"
                            ),
                        ));
                    }
                }
            }
            if d.path.is_some() {
                out.push(Problem::key(
                    at("path"),
                    "path is only for serial devices; a tcp device uses address = \"host:port\"",
                ));
            }
        }
        Transport::Serial => {
            match &d.path {
                None => out.push(Problem::value(
                    at("path"),
                    "missing: a serial device needs path = \"/dev/...\" (e.g. \"/dev/ttyUSB0\" or a /dev/serial/by-id/ path)",
                )),
                Some(path) if !path.is_absolute() => out.push(Problem::value(
                    at("path"),
                    format!(
                        "expected an absolute path (e.g. \"/dev/ttyUSB0\" or a /dev/serial/by-id/ path), found {:?}",
                        path.display().to_string()
                    ),
                )),
                Some(_) => {}
            }
            if d.address.is_some() {
                out.push(Problem::key(
                    at("address"),
                    "address is only for tcp devices; a serial device uses path = \"/dev/...\"",
                ));
            }
        }
    }
    if !BAUDS.contains(&d.baud) {
        out.push(Problem::value(
            at("baud"),
            format!(
                "unsupported baud rate {}; expected one of: 9600, 19200, 38400, 57600, 115200 (as set on the meter)",
                d.baud
            ),
        ));
    }
    let second = Duration::from_secs(1);
    at_least(
        at("poll_interval"),
        d.poll_interval,
        second,
        " (the meter rejects DOD? faster than once a second)",
        out,
    );
    if let Some(live) = d.live_poll_interval {
        at_least(
            at("live_poll_interval"),
            live,
            second,
            " (the meter rejects DOD? faster than once a second)",
            out,
        );
    }
    at_least(
        at("answer_timeout"),
        d.answer_timeout,
        Duration::from_millis(100),
        "",
        out,
    );
    if d.answer_timeout > Duration::from_secs(60) {
        out.push(Problem::value(
            at("answer_timeout"),
            format!(
                "must be at most 60s, found {}",
                format_duration(d.answer_timeout)
            ),
        ));
    }
    at_least(
        at("command_gap"),
        d.command_gap,
        Duration::from_millis(200),
        " (the meter drops commands sent sooner after an answer)",
        out,
    );
    at_least(at("status_interval"), d.status_interval, second, "", out);
    not_zero(at("reconnect_min"), d.reconnect_min, out);
    if d.reconnect_max < d.reconnect_min {
        let (min, max) = (
            format_duration(d.reconnect_min),
            format_duration(d.reconnect_max),
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
}

fn api(config: &Config, out: &mut Vec<Problem>) {
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
    tokens(&key(&["api", "tokens"]), &api.tokens, out);
    not_zero(key(&["api", "stream_max"]), api.stream_max, out);
}

fn mqtt(config: &Config, out: &mut Vec<Problem>) {
    let Some(mqtt) = &config.mqtt else {
        return;
    };
    if let Err(why) = url(&mqtt.url, &["mqtt", "mqtts"], false) {
        out.push(Problem::value(
            key(&["mqtt", "url"]),
            format!(
                "invalid URL {:?}: {why}; expected mqtt://host[:port] or mqtts://host[:port] (e.g. \"mqtt://127.0.0.1:1883\")",
                mqtt.url
            ),
        ));
    }
    let prefix = &mqtt.topic_prefix;
    let why = if prefix.is_empty() {
        Some("must not be empty")
    } else if prefix.contains(['+', '#']) {
        Some("must not contain the MQTT wildcards + or #")
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Some("must not start or end with /")
    } else if prefix.contains('\0') {
        Some("must not contain NUL")
    } else {
        None
    };
    if let Some(why) = why {
        out.push(Problem::value(
            key(&["mqtt", "topic_prefix"]),
            format!("invalid topic prefix {prefix:?}: {why} (e.g. \"slmd\" or \"site-7/slmd\")"),
        ));
    }
    if mqtt.qos > 2 {
        out.push(Problem::value(
            key(&["mqtt", "qos"]),
            format!("expected 0, 1 or 2, found {}", mqtt.qos),
        ));
    }
}

fn fleet(config: &Config, out: &mut Vec<Problem>) {
    let fleet = &config.fleet;
    match &fleet.url {
        Some(u) => {
            if let Err(why) = url(u, &["http", "https"], true) {
                out.push(Problem::value(
                    key(&["fleet", "url"]),
                    format!(
                        "invalid URL {u:?}: {why}; expected http:// or https:// and a host (e.g. \"https://fleet.example.com\")"
                    ),
                ));
            }
        }
        None if fleet.enabled => out.push(Problem::value(
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
    if fleet
        .token_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        out.push(Problem::value(
            key(&["fleet", "token_file"]),
            "must not be empty; expected a file path such as \"/etc/slmd/fleet.token\"",
        ));
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
    not_zero(key(&["fleet", "interval"]), fleet.interval, out);
    not_zero(key(&["fleet", "token_retry"]), fleet.token_retry, out);
    not_zero(key(&["fleet", "timeout"]), fleet.timeout, out);
    not_zero(key(&["fleet", "retry_min"]), fleet.retry_min, out);
    not_zero(key(&["fleet", "retry_max"]), fleet.retry_max, out);
    not_zero(key(&["fleet", "auth_retry"]), fleet.auth_retry, out);
    if fleet.retry_min > fleet.retry_max {
        out.push(Problem::value(
            key(&["fleet", "retry_min"]),
            format!(
                "must not exceed retry_max ({:?}), found {:?}",
                fleet.retry_max, fleet.retry_min
            ),
        ));
    }
}

/// Every token is a non-empty string.
fn tokens(path: &[Seg], tokens: &[String], out: &mut Vec<Problem>) {
    for (i, token) in tokens.iter().enumerate() {
        if token.trim().is_empty() {
            let mut at = path.to_vec();
            at.push(Seg::Index(i));
            out.push(Problem::value(at, "a token must not be empty"));
        }
    }
}

/// `value >= min`, with an optional reason appended.
fn at_least(path: Vec<Seg>, value: Duration, min: Duration, why: &str, out: &mut Vec<Problem>) {
    if value < min {
        out.push(Problem::value(
            path,
            format!(
                "must be at least {}, found {}{why}",
                format_duration(min),
                format_duration(value)
            ),
        ));
    }
}

/// A period that must not be zero (it would be a busy loop).
fn not_zero(path: Vec<Seg>, value: Duration, out: &mut Vec<Problem>) {
    if value.is_zero() {
        out.push(Problem::value(path, "must be greater than 0s"));
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
            .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err(format!("unexpected {after:?} after ]")),
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
        if host.is_empty() {
            return Err("the host is missing".to_owned());
        }
        let name_ok = host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
        if !name_ok {
            return Err(format!("{host:?} is not a host name or IP address"));
        }
    }
    match port {
        None if need_port => Err("the port is missing".to_owned()),
        None => Ok(()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n >= 1 && p.chars().all(|c| c.is_ascii_digit()) => Ok(()),
            _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    }
}

/// Checks `scheme://host[:port]`, with a path only when `allow_path`.
fn url(u: &str, schemes: &[&str], allow_path: bool) -> Result<(), String> {
    let (scheme, rest) = u.split_once("://").ok_or("the scheme is missing")?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(format!("unsupported scheme {scheme:?}"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".to_owned());
    }
    if !allow_path && !tail.is_empty() && tail != "/" {
        return Err(format!("unexpected path {tail:?}"));
    }
    host_port(authority, false)
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
        ] {
            assert!(host_port(bad, true).is_err(), "{bad}");
        }
        assert_eq!(host_port("broker", false), Ok(()));
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
