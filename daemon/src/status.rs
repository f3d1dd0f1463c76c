//! `slmd status`: the running daemon's `/v1/status`, as a table a field
//! tech reads on a phone over SSH (never wider than [`WIDTH`] columns).

use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// The widest line [`render`] writes.
pub const WIDTH: usize = 60;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Nothing answered: the daemon is probably not running.
    #[error(
        "no answer from slmd at {addr} ({reason}); is it running? `systemctl status slmd` says"
    )]
    Unreachable {
        /// Where it was asked.
        addr: String,
        /// What the connection said.
        reason: String,
    },
    /// The API wants a token and did not get the right one.
    #[error(
        "slmd at {addr} refused the request (401): set [api].tokens in the config you pass with --config"
    )]
    Unauthorized {
        /// Where it was asked.
        addr: String,
    },
    /// Any other answer.
    #[error("slmd at {addr} answered {status}: {body}")]
    Answer {
        /// Where it was asked.
        addr: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// The address to ask, from `[api].listen`: a wildcard address is asked on
/// loopback.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = listen.ip();
    if ip.is_unspecified() {
        let loopback = if ip.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(loopback, listen.port())
    } else {
        listen
    }
}

/// `GET /v1/status` from the daemon at `addr`.
pub async fn fetch(addr: SocketAddr, token: Option<&str>) -> Result<Value, StatusError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shown = addr.to_string();
    let unreachable = |reason: String| StatusError::Unreachable {
        addr: shown.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let mut request = client.get(format!("http://{addr}/v1/status"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        unreachable(reason)
    })?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match status {
        200 => serde_json::from_str(&body).map_err(|e| StatusError::Answer {
            addr: shown.clone(),
            status,
            body: format!("not JSON ({e})"),
        }),
        401 => Err(StatusError::Unauthorized { addr: shown }),
        _ => Err(StatusError::Answer {
            addr: shown,
            status,
            body: body.chars().take(200).collect(),
        }),
    }
}

/// The status as a table no wider than [`WIDTH`].
pub fn render(status: &Value) -> String {
    let mut lines = Vec::new();
    lines.push(format!(
        "slmd {} · {} · up {}",
        text(&status["version"]),
        text(&status["gateway"]),
        duration(status["uptime_seconds"].as_u64().unwrap_or(0))
    ));
    lines.push(String::new());
    lines.push(format!(
        "{:<14} {:<10} {:>9} {:>8}",
        "meter", "state", "readings", "last"
    ));
    let now = chrono::Utc::now();
    for device in status["devices"].as_array().into_iter().flatten() {
        let last = device["last_reading_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or("-".to_owned(), |t| {
                let ago = (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
                format!("{} ago", duration(ago as u64))
            });
        lines.push(format!(
            "{:<14} {:<10} {:>9} {:>8}",
            clip(&text(&device["id"]), 14),
            clip(&text(&device["state"]), 10),
            device["readings_total"].as_u64().unwrap_or(0),
            clip(&last, 8)
        ));
        let identity = [
            device["identity"]["model"].as_str(),
            device["identity"]["serial"].as_str(),
        ];
        if let [Some(model), serial] = identity {
            let who = match serial {
                Some(serial) => format!("  {model} serial {serial}"),
                None => format!("  {model}"),
            };
            lines.push(clip(&who, WIDTH));
        }
        if let Some(health) = health_line(device) {
            lines.push(clip(&health, WIDTH));
        }
        if let Some(pending) = device["care"]["pending"].as_str() {
            lines.push(format!("  {}", clip(pending, WIDTH - 2)));
        }
        if device["state"] != "connected" {
            if let Some(error) = device["last_error"].as_str() {
                lines.push(format!("  {}", clip(error, WIDTH - 2)));
            }
        }
    }
    lines.push(String::new());
    let buffer = &status["buffer"];
    if buffer["open"] == false {
        lines.push(clip(
            &format!("buffer  not open: {}", text(&buffer["detail"])),
            WIDTH,
        ));
    } else {
        lines.push(format!(
            "buffer  {} of {} records",
            count(&buffer["records"]),
            count(&buffer["capacity"])
        ));
        lines.push(format!(
            "        unsent {} · evicted unsent {}",
            count(&buffer["unsent"]),
            count(&buffer["evicted_unsent"])
        ));
        if let Some(error) = buffer["write_error"].as_str() {
            lines.push(format!("        {}", clip(error, WIDTH - 8)));
        }
        let salvage = &buffer["salvage"];
        if salvage["running"] == true {
            lines.push(format!(
                "        salvaging: page {} of {} · {} saved",
                count(&salvage["pages_done"]),
                count(&salvage["pages"]),
                count(&salvage["rows_saved"])
            ));
        } else if salvage.is_object() {
            lines.push(format!(
                "        salvaged {} · doubtful {}",
                count(&salvage["rows_saved"]),
                count(&salvage["rows_doubtful"])
            ));
        }
    }
    let fleet = &status["fleet"];
    if fleet["enabled"] == true {
        fleet_lines(fleet, "fleet   ", now, &mut lines);
        if fleet["mqtt"].is_object() {
            fleet_lines(&fleet["mqtt"], "  mqtt  ", now, &mut lines);
        }
    } else {
        lines.push("fleet   off".to_owned());
    }
    let limits = &status["limits"];
    if limits.is_object() {
        let active = limits["active_alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        lines.push(format!(
            "limits  {} rule{} · {} active",
            count(&limits["rules"]),
            if limits["rules"] == 1 { "" } else { "s" },
            active.len()
        ));
        for alert in &active {
            let acked = if alert["ack"].is_object() {
                " · acked"
            } else {
                ""
            };
            let value = alert["peak"]
                .as_f64()
                .map_or_else(|| text(&alert["peak"]), |v| format!("{v:.1}"));
            lines.push(format!(
                "  ALERT {} {} {} peak {value} > {}{acked}",
                text(&alert["alert"]),
                text(&alert["device"]),
                text(&alert["metric"]),
                text(&alert["threshold"])
            ));
        }
        for delivery in limits["deliveries"].as_array().into_iter().flatten() {
            if let Some(error) = delivery["last_error"].as_str() {
                lines.push(format!(
                    "  {}: {}",
                    text(&delivery["consumer"]),
                    clip(error, WIDTH - 4)
                ));
            }
        }
    }
    lines.push(format!(
        "streams {}",
        status["subscribers"].as_u64().unwrap_or(0)
    ));
    if let Some(keys) = status["needs_restart"].as_array().filter(|k| !k.is_empty()) {
        let keys: Vec<String> = keys.iter().map(text).collect();
        lines.push(format!("restart needed for {}", keys.join(", ")));
    }
    let mut out = lines
        .iter()
        .map(|l| clip(l, WIDTH))
        .collect::<Vec<_>>()
        .join("\n");
    out.push('\n');
    out
}

/// `  measuring · battery Full · SD 87% · clock +2s`: the run state and
/// what the meter says of its health (unknown values left out); `None`
/// when nothing is known.
fn health_line(device: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(run) = device["run_state"].as_str().filter(|r| *r != "unknown") {
        parts.push(run.to_owned());
    }
    let health = &device["health"];
    if let Some(battery) = health["battery"].as_str().filter(|b| *b != "unknown") {
        parts.push(format!("battery {battery}"));
    }
    if let Some(sd) = health["sd_free_percent"].as_u64() {
        parts.push(format!("SD {sd}% free"));
    }
    if let Some(offset) = health["clock_offset_s"].as_i64() {
        parts.push(format!("clock {offset:+}s"));
    }
    (!parts.is_empty()).then(|| format!("  {}", parts.join(" · ")))
}

/// A JSON value as text (`-` for null).
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// A count with thin grouping: 10 000 000.
fn count(v: &Value) -> String {
    let n = v.as_u64().unwrap_or(0).to_string();
    let mut out = String::new();
    for (i, c) in n.chars().enumerate() {
        if i > 0 && (n.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `42s`, `5m`, `2h 5m`, `3d 4h`: an age or a span, short.
pub(crate) fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// At most `width` characters, with `…` when cut.
fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The lines of one fleet uplink: state, backlog, token, the MQTT broker
/// in use, the last error and the heartbeat.
fn fleet_lines(
    fleet: &Value,
    head: &str,
    now: chrono::DateTime<chrono::Utc>,
    lines: &mut Vec<String>,
) {
    let slot = fleet["token_slot"]
        .as_u64()
        .map_or(String::new(), |s| format!(" · token {s}"));
    lines.push(format!(
        "{head}{} · backlog {}{slot}",
        text(&fleet["state"]),
        count(&fleet["backlog"])
    ));
    if let Some(broker) = fleet["broker"].as_str() {
        lines.push(format!("        via {}", clip(broker, WIDTH - 12)));
    }
    if let Some(error) = fleet["last_error"].as_str() {
        lines.push(format!("        {}", clip(error, WIDTH - 8)));
    }
    let beat = &fleet["heartbeat"];
    if let Some(error) = beat["last_error"].as_str() {
        lines.push(format!("        heartbeat: {}", clip(error, WIDTH - 19)));
    } else if let Some(at) = beat["last_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        let ago = (now - at.with_timezone(&chrono::Utc)).num_seconds().max(0);
        lines.push(format!("        heartbeat {} ago", duration(ago as u64)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_busy_status_fits_sixty_columns() {
        let status = json!({
            "gateway": "gw-0042-with-a-rather-long-name-for-a-gateway",
            "version": "0.1.0",
            "uptime_seconds": 11_520,
            "devices": [
                {"id": "nl43-north", "state": "connected", "readings_total": 12345,
                 "identity": {"model": "NL-43", "serial": "00412345", "firmware": "1.8.0"},
                 "run_state": "stopped",
                 "health": {"battery": "Full", "sd_free_percent": 87, "clock_offset_s": -3},
                 "care": {"pending": "meter clock -3 s off; set when the meter is not measuring (setting it now would split the measurement)"},
                 "last_reading_at": chrono::Utc::now().to_rfc3339(), "last_error": null},
                {"id": "nl43-south-east-corner", "state": "down", "readings_total": 0,
                 "last_reading_at": null,
                 "last_error": "connect to 192.0.2.10:2255: Connection refused (os error 111) and more words"}
            ],
            "buffer": {"open": true, "records": 1234, "capacity": 10_000_000, "unsent": 0,
                       "evicted_unsent": 0, "write_error": null,
                       "salvage": {"running": true, "pages_done": 1200, "pages": 16101,
                                   "rows_saved": 73004, "rows_doubtful": 0}},
            "fleet": {"enabled": true, "state": "ok", "backlog": 0, "token_slot": 1, "last_error": null,
                      "heartbeat": {"last_at": chrono::Utc::now().to_rfc3339(), "last_error": null}},
            "subscribers": 2
        });
        let table = render(&status);
        for line in table.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{line:?} is wider than {WIDTH}"
            );
        }
        assert!(
            table.contains("nl43-north     connected      12345"),
            "{table}"
        );
        assert!(table.contains("\n  NL-43 serial 00412345\n"), "{table}");
        assert!(
            table.contains("\n  stopped · battery Full · SD 87% free · clock -3s\n"),
            "{table}"
        );
        assert!(
            table.contains("\n  meter clock -3 s off; set when"),
            "{table}"
        );
        assert!(table.contains("\n        heartbeat 0s ago\n"), "{table}");
        assert!(table.contains("nl43-south-ea…"), "{table}");
        assert!(table.contains("  connect to 192.0.2.10:2255"), "{table}");
        assert!(
            table.contains("buffer  1 234 of 10 000 000 records"),
            "{table}"
        );
        assert!(
            table.contains("salvaging: page 1 200 of 16 101 · 73 004 saved"),
            "{table}"
        );
        assert!(
            table.contains("fleet   ok · backlog 0 · token 1"),
            "{table}"
        );
        assert!(table.starts_with("slmd 0.1.0 · gw-0042"), "{table}");
    }

    #[test]
    fn both_fleet_uplinks_are_shown_with_the_broker_in_use() {
        let status = serde_json::json!({
            "gateway": "gw-0042", "version": "0.1.0", "uptime_s": 5,
            "devices": [],
            "buffer": {"open": true, "records": 10, "capacity": 100, "unsent": 3,
                       "evicted_unsent": 0, "write_error": null},
            "fleet": {"enabled": true, "transport": "http", "state": "ok", "backlog": 0,
                      "token_slot": 1, "last_error": null, "heartbeat": {},
                      "mqtt": {"enabled": true, "transport": "mqtt", "state": "retrying",
                               "backlog": 3, "token_slot": 2,
                               "broker": "mqtts://broker-b.example.com:8883",
                               "last_error": "lost the connection to mqtts://broker-a.example.com:8883",
                               "heartbeat": {}}},
        });
        let table = render(&status);
        assert!(
            table.contains("fleet   ok · backlog 0 · token 1\n"),
            "{table}"
        );
        assert!(
            table.contains("  mqtt  retrying · backlog 3 · token 2\n        via mqtts://broker-b.example.com:8883\n        lost the connection"),
            "{table}"
        );
    }

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        let any: SocketAddr = "0.0.0.0:8470".parse().expect("addr");
        assert_eq!(local_address(any).to_string(), "127.0.0.1:8470");
        let v6: SocketAddr = "[::]:8470".parse().expect("addr");
        assert_eq!(local_address(v6).to_string(), "[::1]:8470");
        let fixed: SocketAddr = "192.0.2.1:9000".parse().expect("addr");
        assert_eq!(local_address(fixed), fixed);
    }
}
