//! `slmd check`: the config validated, then every meter checked, so an
//! installer learns on site whether each meter is wired, powered and
//! answering, and a field tech on a running gateway learns the truth.
//!
//! A meter has one link (an NL-43 serves one TCP client; a serial port is
//! opened exclusively), and a running slmd holds it. So `check` first asks
//! the running daemon (its `/v1/status`, at the config's `[api].listen` or
//! `--api`):
//! - a meter the daemon holds (one of its devices has the same link
//!   target) is reported from the daemon's live state, never opened a
//!   second time: `connected` is usable; `down` or `connecting` is not, and
//!   the daemon's last error says why;
//! - a meter no running daemon holds is probed: its link opened exactly as
//!   the daemon would (TCP with keepalive, or the serial port exclusively),
//!   the family asked who it is and what it is doing
//!   ([`crate::device::Family::probe`]), and the link closed;
//! - the file given may not be the one the daemon runs (edited before a
//!   reload, or a new file): the report says so and lists what a reload
//!   would add, change or remove, from the settings each device shows in
//!   status ([`DeviceConfig::settings`]), so the verdict is the daemon's own
//!   (a reload restarts exactly the meters whose settings differ).
//!
//! `--probe-anyway` skips the daemon and probes every meter (a stopped
//! daemon's config, or a second opinion knowing a held meter fails).
//! Every step has a short deadline.

use crate::config::{Config, DeviceConfig, Source};
use crate::device::link;
use crate::status::{StatusError, duration, text};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest a single probe may take, link and both questions included; also
/// how long `check` waits for meters the daemon is still connecting.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the daemon's status is read again while a meter it holds is
/// still connecting.
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// What `check` was told to do beyond the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Ask the daemon here instead of at the config's `[api].listen`.
    pub api: Option<SocketAddr>,
    /// Probe every meter, whatever a running daemon holds.
    pub probe_anyway: bool,
    /// The probe deadline ([`PROBE_TIMEOUT`]).
    pub timeout: Duration,
}

/// What the running daemon said, or why it said nothing.
#[derive(Debug, Clone)]
pub enum Daemon {
    /// `--probe-anyway`: not asked.
    NotAsked,
    /// The config's `[api].listen` has port 0, so there is no address to ask.
    NoAddress,
    /// Nothing answered: no slmd runs there.
    Absent {
        /// Where it was asked.
        addr: SocketAddr,
    },
    /// Something answered but gave no status (a token refused, an error).
    Unreadable {
        /// Where it was asked.
        addr: SocketAddr,
        /// What it answered.
        error: String,
    },
    /// A daemon answered with its status.
    Running {
        /// Where it was asked.
        addr: SocketAddr,
        /// Its `/v1/status`, as read last.
        status: Value,
    },
}

impl Daemon {
    /// The daemon's devices (empty unless it answered).
    fn devices(&self) -> &[Value] {
        match self {
            Daemon::Running { status, .. } => status["devices"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
            _ => &[],
        }
    }

    /// The daemon's device whose link is `target`.
    fn holding(&self, target: &str) -> Option<&Value> {
        self.devices()
            .iter()
            .find(|d| d["target"].as_str().is_some_and(|t| same_link(t, target)))
    }
}

/// Whether two targets are one link: the same text, or two paths to one
/// serial device (`/dev/serial/by-id/…` and the `/dev/ttyUSB0` it points to).
fn same_link(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.strip_prefix("serial "), b.strip_prefix("serial ")) {
        (Some(a), Some(b)) => match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

/// How a meter was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedBy {
    /// From the running daemon's live state (its device of this id).
    Held(String),
    /// Its link opened by `check` itself.
    Probe,
}

/// One meter's line.
#[derive(Debug, Clone)]
pub struct MeterCheck {
    /// Device id in the file.
    pub device: String,
    /// Where it is reached (`tcp 192.0.2.10:2255`, `serial /dev/...`).
    pub target: String,
    /// Whether the daemon's state or a probe gave the answer.
    pub via: CheckedBy,
    /// Usable, and what it is doing; or why not.
    pub outcome: Result<String, String>,
}

/// What a reload of the checked file would do to the running daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// The file the daemon runs, as it names it.
    pub running_file: String,
    /// When the daemon loaded it (RFC 3339).
    pub loaded_at: String,
    /// The checked file is another file than the daemon's.
    pub other_file: bool,
    /// The checked file's bytes differ from those the daemon loaded.
    pub differs: bool,
    /// Meters the reload would start: id and target.
    pub added: Vec<(String, String)>,
    /// Meters it would reconnect with new settings: id and each change.
    pub changed: Vec<(String, Vec<SettingChange>)>,
    /// Meters it would stop: id and target.
    pub removed: Vec<(String, String)>,
    /// `[gateway].id` the daemon runs as, when the file names another.
    pub gateway_differs: Option<(String, String)>,
    /// Keys the daemon already has waiting for a restart.
    pub needs_restart: Vec<String>,
}

/// One setting of a meter that a reload would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingChange {
    /// The key, as in the file (`address`).
    pub key: String,
    /// The value the daemon runs with (`-`: the key does not apply).
    pub running: String,
    /// The file's value (`-`: the key does not apply).
    pub file: String,
}

/// Everything `check` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The daemon's answer.
    pub daemon: Daemon,
    /// One line per meter of the file, in file order.
    pub meters: Vec<MeterCheck>,
    /// What a reload would change (only when a daemon answered).
    pub pending: Option<Pending>,
}

impl Report {
    /// Every meter usable: held and connected, or probed and answering.
    pub fn usable(&self) -> bool {
        self.meters.iter().all(|m| m.outcome.is_ok())
    }
}

/// Checks every meter of `config` (loaded from `source`), asking the
/// running daemon first unless told not to.
pub async fn run(config: &Config, source: &Source, options: &Options) -> Report {
    let daemon = if options.probe_anyway {
        Daemon::NotAsked
    } else {
        let addr = options
            .api
            .or_else(|| (config.api.listen.port() != 0).then(|| local_address(config)));
        match addr {
            Some(addr) => {
                let token = config.api.tokens.first().map(String::as_str);
                settled(addr, token, config, options.timeout).await
            }
            None => Daemon::NoAddress,
        }
    };
    let mut held = Vec::new();
    let mut to_probe = Vec::new();
    for device in &config.devices {
        let target = device.target();
        match daemon.holding(&target) {
            Some(state) => held.push(MeterCheck {
                device: device.id.clone(),
                target,
                via: CheckedBy::Held(text(&state["id"])),
                outcome: held_outcome(state, Utc::now()),
            }),
            None => to_probe.push(device.clone()),
        }
    }
    let probed = probe_all(&to_probe, options.timeout).await;
    // File order, whichever way each meter was checked.
    let meters = config
        .devices
        .iter()
        .filter_map(|d| {
            held.iter()
                .chain(probed.iter())
                .find(|m| m.device == d.id)
                .cloned()
        })
        .collect();
    let pending = match &daemon {
        Daemon::Running { status, .. } => Some(pending_changes(config, source, status)),
        _ => None,
    };
    Report {
        daemon,
        meters,
        pending,
    }
}

/// `[api].listen` as a local client reaches it.
fn local_address(config: &Config) -> SocketAddr {
    crate::status::local_address(config.api.listen)
}

/// The daemon's status, read again while a meter of the file that it holds
/// is still `connecting` (just started or reloaded), up to `wait`.
async fn settled(addr: SocketAddr, token: Option<&str>, config: &Config, wait: Duration) -> Daemon {
    let deadline = Instant::now() + wait;
    loop {
        let daemon = ask(addr, token).await;
        let connecting = config.devices.iter().any(|d| {
            daemon
                .holding(&d.target())
                .is_some_and(|s| s["state"] == "connecting")
        });
        if !connecting || Instant::now() + SETTLE_POLL > deadline {
            return daemon;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// One `/v1/status` request.
async fn ask(addr: SocketAddr, token: Option<&str>) -> Daemon {
    match crate::status::fetch(addr, token).await {
        Ok(status) if status["gateway"].is_string() && status["devices"].is_array() => {
            Daemon::Running { addr, status }
        }
        Ok(_) => Daemon::Unreadable {
            addr,
            error: "its /v1/status is not slmd's".to_owned(),
        },
        Err(StatusError::Unreachable { .. }) => Daemon::Absent { addr },
        Err(e) => Daemon::Unreadable {
            addr,
            error: e.to_string(),
        },
    }
}

/// A held meter's line from the daemon's view of it (one entry of
/// `/v1/status` `devices`).
pub fn held_outcome(device: &Value, now: DateTime<Utc>) -> Result<String, String> {
    let age = |key: &str| {
        device[key]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| duration((now - t.with_timezone(&Utc)).num_seconds().max(0) as u64))
    };
    let state = device["state"].as_str().unwrap_or("unknown");
    let error = device["last_error"].as_str();
    match state {
        "connected" => {
            let mut parts = vec!["held by the running slmd: connected".to_owned()];
            parts.push(match age("last_reading_at") {
                Some(ago) => format!("last reading {ago} ago"),
                None => "no reading yet".to_owned(),
            });
            let identity = &device["identity"];
            match (identity["model"].as_str(), identity["serial"].as_str()) {
                (Some(model), Some(serial)) => parts.push(format!("{model} serial {serial}")),
                (Some(model), None) => parts.push(model.to_owned()),
                (None, Some(serial)) => parts.push(format!("serial {serial}")),
                (None, None) => {}
            }
            if let Some(run) = device["run_state"]
                .as_str()
                .filter(|r| !matches!(*r, "unknown" | "measuring"))
            {
                parts.push(format!("meter {run}"));
            }
            Ok(parts.join(", "))
        }
        "failed" => Err(format!(
            "held by the running slmd, but {}",
            error.unwrap_or("its device task stopped")
        )),
        _ => {
            let since = age("state_since").map_or_else(String::new, |s| format!(" for {s}"));
            let why = error.unwrap_or("no answer yet");
            Err(format!("held by the running slmd: {state}{since}: {why}"))
        }
    }
}

/// Probes `devices` at the same time (a field tech should not wait the full
/// deadline once per dead meter), in their order.
pub async fn probe_all(devices: &[DeviceConfig], timeout: Duration) -> Vec<MeterCheck> {
    let handles: Vec<_> = devices
        .iter()
        .cloned()
        .map(|device| {
            tokio::spawn(async move {
                let outcome = match tokio::time::timeout(timeout, probe(&device)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                };
                MeterCheck {
                    target: device.target(),
                    device: device.id,
                    via: CheckedBy::Probe,
                    outcome,
                }
            })
        })
        .collect();
    let mut probes = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(probe) = handle.await {
            probes.push(probe);
        }
    }
    probes
}

/// Opens the link as the daemon would and hands it to the family's probe.
async fn probe(device: &DeviceConfig) -> Result<String, String> {
    let link = link::open(device).await.map_err(|e| e.to_string())?;
    device.family().probe(link, device).await
}

/// What a reload of the file would change in the daemon whose `status`
/// this is.
pub fn pending_changes(config: &Config, source: &Source, status: &Value) -> Pending {
    let running = &status["config"];
    let running_file = running["file"].as_str().unwrap_or("").to_owned();
    let same_path = |a: &str, b: &std::path::Path| {
        let a = std::path::Path::new(a);
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        }
    };
    let devices: &[Value] = status["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut pending = Pending {
        other_file: !same_path(&running_file, &source.file),
        differs: running["sha256"].as_str() != Some(source.sha256.as_str()),
        loaded_at: text(&running["loaded_at"]),
        running_file,
        needs_restart: status["needs_restart"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect(),
        ..Pending::default()
    };
    let gateway = text(&status["gateway"]);
    if gateway != config.gateway.id {
        pending.gateway_differs = Some((gateway, config.gateway.id.clone()));
    }
    for device in &config.devices {
        let Some(now) = devices.iter().find(|d| d["id"] == device.id.as_str()) else {
            pending.added.push((device.id.clone(), device.target()));
            continue;
        };
        if !now["settings"].is_object() {
            // An older slmd does not show its settings: nothing to compare.
            continue;
        }
        let changes = setting_changes(&now["settings"], &device.settings());
        if !changes.is_empty() {
            pending.changed.push((device.id.clone(), changes));
        }
    }
    for now in devices {
        if !config.devices.iter().any(|d| now["id"] == d.id.as_str()) {
            pending
                .removed
                .push((text(&now["id"]), text(&now["target"])));
        }
    }
    pending
}

/// Each setting that differs; a key only one side has shows `-` on the
/// other (a meter moved from TCP to serial).
fn setting_changes(running: &Value, file: &[(&'static str, String)]) -> Vec<SettingChange> {
    let empty = serde_json::Map::new();
    let running = running.as_object().unwrap_or(&empty);
    let mut changes = Vec::new();
    for (key, value) in file {
        let was = running.get(*key).map_or_else(|| "-".to_owned(), text);
        if was != *value {
            changes.push(SettingChange {
                key: (*key).to_owned(),
                running: was,
                file: value.clone(),
            });
        }
    }
    for (key, value) in running {
        if !file.iter().any(|(k, _)| k == key) {
            changes.push(SettingChange {
                key: key.clone(),
                running: text(value),
                file: "-".to_owned(),
            });
        }
    }
    changes
}

/// The next step for a meter that is not usable, from its error (the
/// daemon's or the probe's) and its link.
pub fn next_step(error: &str, target: &str) -> &'static str {
    let serial = target.starts_with("serial");
    let has = |s: &str| error.to_ascii_lowercase().contains(&s.to_ascii_lowercase());
    if has("internal error") || has("task stopped") {
        "restart slmd (systemctl restart slmd) and keep the journal lines (journalctl -u slmd)"
    } else if has("no such file") || has("no such device") {
        "the port is not there: check the USB cable and the path (ls /dev/serial/by-id/)"
    } else if has("permission denied") {
        "no access to the port: the slmd user needs the dialout group"
    } else if has("busy") || has("locked") {
        "another program holds the port: find it with fuser on the path"
    } else if has("refused") {
        "nothing accepts at that address: check the address and port, and the meter's LAN setting (TCP control on, web app off); a meter that refuses for hours needs a power cycle"
    } else if has("lookup") || has("resolve") {
        "the address does not resolve: check the host name"
    } else if has("no route") || has("unreachable") || has("timed out") {
        "no way to the meter: check the network cable and the address; sleep mode turns the meter's LAN off"
    } else if has("reset") || has("closed") {
        "the meter dropped the link: another client may hold its one TCP connection, or it is restarting"
    } else if has("no answer") || has("no data") || has("no line") {
        if serial {
            "the meter is silent: check the cable and the baud rate on both ends, and that it is awake (sleep mode off)"
        } else {
            "the meter is silent: check that it is awake (sleep mode off) and that no other client holds it"
        }
    } else if serial {
        "check the cable and the meter's serial settings"
    } else {
        "check the cable, the address and the meter's LAN setting"
    }
}

/// The report as text that fits a phone screen: a line on the daemon, one
/// per meter, the pending changes, and a last line with the verdict and
/// the next step for each meter that needs attention.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    match &report.daemon {
        Daemon::NotAsked => {
            out.push_str("--probe-anyway: every meter probed, a running slmd's too\n");
        }
        Daemon::NoAddress => out.push_str(
            "[api].listen has port 0: no running slmd to ask (pass --api ADDR); every meter probed\n",
        ),
        Daemon::Absent { addr } => {
            out.push_str(&format!("no slmd answers at {addr}: every meter probed\n"));
        }
        Daemon::Unreadable { addr, error } => out.push_str(&format!(
            "something answers at {addr} but gave no status ({error}); every meter probed, so a meter it holds may look busy\n"
        )),
        Daemon::Running { addr, status } => out.push_str(&format!(
            "slmd {} runs at {addr} as {}: meters it holds are reported from its live state, not opened again\n",
            text(&status["version"]),
            text(&status["gateway"])
        )),
    }
    let id_width = report
        .meters
        .iter()
        .map(|m| m.device.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out.push_str(&format!("{:<id_width$}  {:<4}  result\n", "meter", "ok"));
    for meter in &report.meters {
        let (mark, text) = match &meter.outcome {
            Ok(text) => ("ok", text.as_str()),
            Err(text) => ("FAIL", text.as_str()),
        };
        let renamed = match &meter.via {
            CheckedBy::Held(id) if *id != meter.device => format!(" (as {id})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<id_width$}  {mark:<4}  {}: {text}{renamed}\n",
            meter.device, meter.target
        ));
    }
    if let Some(pending) = &report.pending {
        out.push_str(&render_pending(pending));
    }
    out.push_str(&verdict(report));
    out.push('\n');
    out
}

/// The pending-changes section (empty lines omitted).
fn render_pending(pending: &Pending) -> String {
    let mut out = String::new();
    let loaded = pending
        .loaded_at
        .get(..19)
        .map_or(pending.loaded_at.clone(), |t| {
            format!("{} UTC", t.replace('T', " "))
        });
    let nothing =
        pending.added.is_empty() && pending.changed.is_empty() && pending.removed.is_empty();
    if pending.running_file.is_empty() {
        out.push_str(
            "config: the running slmd does not say which file it runs (an older version)\n",
        );
    } else if !pending.differs && !pending.other_file {
        out.push_str(&format!(
            "config: the one slmd runs (loaded {loaded}); no pending changes\n"
        ));
    } else {
        let (head, how) = if pending.other_file {
            (
                format!(
                    "config: not the file slmd runs ({}, loaded {loaded})",
                    pending.running_file
                ),
                format!(
                    "installed as {} and reloaded (systemctl reload slmd), it",
                    pending.running_file
                ),
            )
        } else {
            (
                format!("config: edited since slmd loaded it ({loaded})"),
                "a reload (systemctl reload slmd)".to_owned(),
            )
        };
        if !pending.differs {
            out.push_str(&format!("{head}, but the same text\n"));
        } else if nothing {
            out.push_str(&format!(
                "{head}; {how} would change no meter (the edit is elsewhere: other settings or comments)\n"
            ));
        } else {
            out.push_str(&format!("{head}; {how} would:\n"));
        }
        if pending.differs {
            let width = pending
                .added
                .iter()
                .map(|(id, _)| id.len())
                .chain(pending.changed.iter().map(|(id, _)| id.len()))
                .chain(pending.removed.iter().map(|(id, _)| id.len()))
                .max()
                .unwrap_or(0);
            for (id, target) in &pending.added {
                out.push_str(&format!("  add     {id:<width$}  {target}\n"));
            }
            for (id, keys) in &pending.changed {
                let keys: Vec<String> = keys
                    .iter()
                    .map(|c| format!("{} {} → {}", c.key, c.running, c.file))
                    .collect();
                out.push_str(&format!(
                    "  change  {id:<width$}  {} (reconnects)\n",
                    keys.join(", ")
                ));
            }
            for (id, target) in &pending.removed {
                out.push_str(&format!("  remove  {id:<width$}  {target}\n"));
            }
        }
    }
    if let Some((running, file)) = &pending.gateway_differs {
        out.push_str(&format!(
            "  gateway.id {running} → {file} waits for a restart (systemctl restart slmd)\n"
        ));
    }
    if !pending.needs_restart.is_empty() {
        out.push_str(&format!(
            "  slmd already waits for a restart to apply {}\n",
            pending.needs_restart.join(", ")
        ));
    }
    out
}

/// The last line: all usable, or which meters need attention and the next
/// step for each.
fn verdict(report: &Report) -> String {
    let failed: Vec<&MeterCheck> = report
        .meters
        .iter()
        .filter(|m| m.outcome.is_err())
        .collect();
    let total = report.meters.len();
    if failed.is_empty() {
        return match total {
            0 => "no meters configured".to_owned(),
            1 => "the meter is usable".to_owned(),
            n => format!("all {n} meters usable"),
        };
    }
    let steps: Vec<String> = failed
        .iter()
        .map(|m| {
            let error = m.outcome.as_ref().err().map_or("", String::as_str);
            format!("{}: {}", m.device, next_step(error, &m.target))
        })
        .collect();
    format!(
        "{} of {total} meters need attention: {}",
        failed.len(),
        steps.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn config(devices: &str) -> Config {
        let text = format!("[gateway]\nid = \"gw\"\nstate_dir = \"/tmp/s\"\n{devices}");
        crate::config::parse(&text, Path::new("t.toml")).expect("valid")
    }

    fn tcp(id: &str, address: &str) -> String {
        format!(
            "\n[[device]]\nid = \"{id}\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"{address}\"\n"
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T10:00:10Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_connected_meter_is_usable_and_says_who_it_is() {
        let device = json!({
            "id": "north", "state": "connected", "state_since": "2026-12-03T09:00:00Z",
            "last_reading_at": "2026-12-03T10:00:09Z", "run_state": "measuring",
            "identity": {"model": "NL-43", "serial": "00412345"}, "last_error": null,
        });
        assert_eq!(
            held_outcome(&device, now()),
            Ok(
                "held by the running slmd: connected, last reading 1s ago, NL-43 serial 00412345"
                    .to_owned()
            )
        );
        let stopped = json!({"state": "connected", "run_state": "stopped", "identity": null});
        assert_eq!(
            held_outcome(&stopped, now()),
            Ok("held by the running slmd: connected, no reading yet, meter stopped".to_owned())
        );
    }

    #[test]
    fn a_down_meter_gives_the_daemons_error_and_how_long() {
        let device = json!({
            "state": "down", "state_since": "2026-12-03T09:58:10Z",
            "last_error": "connect to 127.0.0.1:9: Connection refused (os error 111)",
        });
        assert_eq!(
            held_outcome(&device, now()),
            Err("held by the running slmd: down for 2m: connect to 127.0.0.1:9: Connection refused (os error 111)".to_owned())
        );
        let failed = json!({"state": "failed", "last_error": "the device task stopped on an internal error (boom)"});
        let text = held_outcome(&failed, now()).expect_err("not usable");
        assert!(text.contains("internal error (boom)"), "{text}");
        assert!(next_step(&text, "tcp x").contains("systemctl restart slmd"));
    }

    #[test]
    fn each_failure_gets_its_own_next_step() {
        let step = |e, t| next_step(e, t);
        assert!(
            step(
                "connect to 10.0.0.5:2255: Connection refused (os error 111)",
                "tcp 10.0.0.5:2255"
            )
            .contains("LAN setting")
        );
        assert!(
            step(
                "connect to 10.0.0.5:2255: timed out after 5s",
                "tcp 10.0.0.5:2255"
            )
            .contains("sleep mode")
        );
        assert!(
            step(
                "connect to 10.0.0.5:2255: No route to host (os error 113)",
                "tcp x"
            )
            .contains("network cable")
        );
        assert!(
            step(
                "open /dev/ttyUSB0: No such file or directory",
                "serial /dev/ttyUSB0"
            )
            .contains("USB cable")
        );
        assert!(
            step(
                "open /dev/ttyUSB0: Permission denied (os error 13)",
                "serial x"
            )
            .contains("dialout")
        );
        assert!(
            step("link open, but no answer within 2s", "serial /dev/ttyUSB0").contains("baud rate")
        );
        assert!(step("link open, but no answer within 2s", "tcp x").contains("awake"));
        assert!(
            step(
                "link open, but link I/O error: Connection reset by peer (os error 104)",
                "tcp x"
            )
            .contains("another client")
        );
    }

    #[test]
    fn pending_changes_name_what_a_reload_adds_changes_and_removes() {
        let file = config(&format!(
            "{}{}",
            tcp("north", "127.0.0.1:2255"),
            tcp("east", "127.0.0.1:2257")
        ));
        let running = config(&format!(
            "{}{}",
            tcp("north", "127.0.0.1:2256"),
            tcp("west", "127.0.0.1:2258")
        ));
        let view = |d: &DeviceConfig| {
            let settings: serde_json::Map<String, Value> = d
                .settings()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            json!({"id": d.id, "target": d.target(), "settings": settings})
        };
        let status = json!({
            "gateway": "gw",
            "config": {"file": "/etc/slmd/slmd.toml", "sha256": "00", "loaded_at": "2026-12-03T09:00:00.000Z"},
            "devices": running.devices.iter().map(view).collect::<Vec<_>>(),
            "needs_restart": ["buffer.max_records"],
        });
        let source = Source {
            file: "/etc/slmd/slmd.toml".into(),
            sha256: "11".into(),
        };
        let pending = pending_changes(&file, &source, &status);
        assert!(pending.differs && !pending.other_file);
        assert_eq!(
            pending.added,
            [("east".to_owned(), "tcp 127.0.0.1:2257".to_owned())]
        );
        assert_eq!(
            pending.changed,
            [(
                "north".to_owned(),
                vec![SettingChange {
                    key: "address".to_owned(),
                    running: "127.0.0.1:2256".to_owned(),
                    file: "127.0.0.1:2255".to_owned()
                }]
            )]
        );
        assert_eq!(
            pending.removed,
            [("west".to_owned(), "tcp 127.0.0.1:2258".to_owned())]
        );
        let text = render_pending(&pending);
        assert!(text.starts_with("config: edited since slmd loaded it (2026-12-03 09:00:00 UTC); a reload (systemctl reload slmd) would:\n"), "{text}");
        assert!(
            text.contains(
                "  change  north  address 127.0.0.1:2256 → 127.0.0.1:2255 (reconnects)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  add     east   tcp 127.0.0.1:2257\n"),
            "{text}"
        );
        assert!(
            text.contains("  remove  west   tcp 127.0.0.1:2258\n"),
            "{text}"
        );
        assert!(
            text.contains("waits for a restart to apply buffer.max_records"),
            "{text}"
        );

        // The same text: nothing pending.
        let same = Source {
            sha256: "00".into(),
            ..source
        };
        let unchanged = pending_changes(&running, &same, &status);
        assert!(!unchanged.differs && unchanged.changed.is_empty() && unchanged.added.is_empty());
        assert!(render_pending(&unchanged).starts_with("config: the one slmd runs"));
    }

    #[test]
    fn settings_differ_exactly_when_a_reload_would_restart_the_meter() {
        let base = config(&tcp("m", "127.0.0.1:2255")).devices.remove(0);
        for (edit, key) in [
            ("poll_interval = \"2s\"\n", "poll_interval"),
            ("utc_offset = \"+01:00\"\n", "utc_offset"),
            ("keep_measuring = true\n", "keep_measuring"),
            ("reconnect_max = \"10m\"\n", "reconnect_max"),
        ] {
            let edited = config(&format!("{}{edit}", tcp("m", "127.0.0.1:2255")))
                .devices
                .remove(0);
            assert_ne!(base, edited, "{edit}");
            let changed: Vec<&str> = base
                .settings()
                .iter()
                .zip(edited.settings().iter())
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0)
                .collect();
            assert_eq!(changed, [key], "{edit}");
        }
        // Writing the default explicitly is a change the daemon sees too
        // (a push family learns its period only when none is written).
        let written = config(&format!(
            "{}poll_interval = \"1s\"\n",
            tcp("m", "127.0.0.1:2255")
        ))
        .devices
        .remove(0);
        assert_eq!(base == written, base.settings() == written.settings());
    }

    #[test]
    fn a_serial_meter_named_by_another_path_is_the_same_link() {
        let dir = tempfile::tempdir().expect("dir");
        let port = dir.path().join("ttyUSB0");
        std::fs::write(&port, b"").expect("port");
        let by_id = dir.path().join("usb-RION_NL-43");
        std::os::unix::fs::symlink(&port, &by_id).expect("link");
        let (port, by_id) = (port.display(), by_id.display());
        assert!(same_link(
            &format!("serial {by_id}"),
            &format!("serial {port}")
        ));
        assert!(!same_link(
            &format!("serial {by_id}"),
            "serial /dev/ttyUSB7"
        ));
        assert!(!same_link("tcp 127.0.0.1:2255", "tcp 127.0.0.1:2256"));
        assert!(same_link("tcp 127.0.0.1:2255", "tcp 127.0.0.1:2255"));
    }

    #[test]
    fn the_last_line_names_the_meters_that_need_attention() {
        let report = Report {
            daemon: Daemon::NotAsked,
            meters: vec![
                MeterCheck {
                    device: "north".into(),
                    target: "tcp 192.0.2.10:2255".into(),
                    via: CheckedBy::Probe,
                    outcome: Ok("answers, NL-43 serial 00412345, measuring".into()),
                },
                MeterCheck {
                    device: "south-long-name".into(),
                    target: "serial /dev/ttyUSB0".into(),
                    via: CheckedBy::Probe,
                    outcome: Err("no answer within 5s".into()),
                },
            ],
            pending: None,
        };
        assert!(!report.usable());
        let table = render(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[1], "meter            ok    result");
        assert_eq!(
            lines[2],
            "north            ok    tcp 192.0.2.10:2255: answers, NL-43 serial 00412345, measuring"
        );
        assert_eq!(
            lines[3],
            "south-long-name  FAIL  serial /dev/ttyUSB0: no answer within 5s"
        );
        assert_eq!(
            lines[4],
            "1 of 2 meters need attention: south-long-name: the meter is silent: check the cable and the baud rate on both ends, and that it is awake (sleep mode off)"
        );
    }
}
