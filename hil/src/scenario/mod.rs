//! The scenario runner (`slm-hil run`): a rig describes a test in a TOML
//! file (which meters, which fleet, the slmd config, a timeline of actions
//! and the checks), runs it against simulators or real equipment, and gets
//! a line per check, an exit code and JUnit XML.
//!
//! - this module: the scenario file's format ([`Scenario`]) and its
//!   loading, every key checked with a message naming it;
//! - `run`: running one scenario (the processes, the timeline, the checks);
//! - `procs`: the child processes (slmd, `slm-sim`, `fleet-sim`) and the
//!   lines they print;
//! - `http`: the small HTTP/1.1 client for slmd's API and `fleet-sim`'s
//!   admin routes (loopback or a lab network, plain HTTP);
//! - `junit`: the JUnit XML report.
//!
//! The format with every key is documented in `hil/README.md`
//! ("Scenarios"); the shipped scenarios are in `hil/scenarios/`.

mod http;
mod junit;
mod procs;
mod run;

pub use junit::junit_xml;
pub use run::{CheckResult, Outcome, RunOptions, ScenarioReport, run_scenario};

use crate::config::parse_duration;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole run's bound when a scenario gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// A `wait` step's bound when it gives none.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(60);
/// The gateway id when a scenario gives none.
pub const DEFAULT_GATEWAY: &str = "gw-hil";
/// The token of a simulated fleet when a scenario gives none.
pub const DEFAULT_TOKEN: &str = "hil-token-1";
/// At most this many meters in one scenario (a gateway's fan-in).
pub const MAX_METERS: usize = 16;

/// A scenario file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name: the JUnit test suite and the prefix of every line.
    pub name: String,
    /// What the scenario proves, one or two sentences.
    #[serde(default)]
    pub about: String,
    /// Bound on the whole run, timeline and final drain.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// The slmd under test and its config.
    #[serde(default)]
    pub slmd: SlmdSpec,
    /// The meters, simulated or real.
    #[serde(rename = "meter")]
    pub meters: Vec<MeterSpec>,
    /// The fleet, simulated or real.
    pub fleet: FleetSpec,
    /// The timeline, in order.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// What is checked once the timeline is done and the meters stopped.
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
}

/// `[slmd]`: the config the runner writes for the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlmdSpec {
    /// `[gateway].id`.
    #[serde(default = "default_gateway")]
    pub gateway: String,
    /// Lines added to `[fleet]` (e.g. `interval = "1s"`).
    #[serde(default)]
    pub fleet: String,
    /// Tables added after the generated ones (`[buffer]`, `[levels]`,
    /// `[[alert]]`, …).
    #[serde(default)]
    pub config: String,
}

impl Default for SlmdSpec {
    fn default() -> Self {
        SlmdSpec {
            gateway: default_gateway(),
            fleet: String::new(),
            config: String::new(),
        }
    }
}

/// `[[meter]]`: one meter, simulated (`sim`) or real (`address`, `path`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSpec {
    /// The `[[device]].id`.
    pub id: String,
    /// The family (`nl43`, `xl2`, `svantek`, `casella`).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Simulated: `slm-sim` with these extra arguments (`--family` comes
    /// from `protocol`; `--pty` serves a pseudo-terminal instead of TCP).
    pub sim: Option<Vec<String>>,
    /// A real meter on TCP, `host:port`.
    pub address: Option<String>,
    /// A real meter on a serial port.
    pub path: Option<PathBuf>,
    /// Lines added to the meter's `[[device]]` table (`poll_interval`,
    /// `keep_measuring`, …; a real serial meter's `baud`).
    #[serde(default)]
    pub device: String,
}

impl MeterSpec {
    /// Whether `slm-sim` plays this meter (so its own report is there).
    pub fn simulated(&self) -> bool {
        self.sim.is_some()
    }
}

/// `[fleet]`: `fleet-sim` (`sim`) or a real fleet (`url`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSpec {
    /// Simulated: `fleet-sim` with these extra arguments (its tokens come
    /// from `tokens`).
    pub sim: Option<Vec<String>>,
    /// A real fleet's base URL.
    pub url: Option<String>,
    /// The tokens slmd is given, preferred first (the first is
    /// `fleet-sim`'s current token, a second its previous one).
    #[serde(default = "default_tokens")]
    pub tokens: Vec<String>,
}

impl FleetSpec {
    /// Whether `fleet-sim` plays the fleet (so what it received can be read).
    pub fn simulated(&self) -> bool {
        self.sim.is_some()
    }
}

/// One action of the timeline (`[[step]]`, `do = "..."`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Start slmd (again, after a stop or a kill).
    Start {},
    /// Stop slmd with SIGTERM and wait for it to end.
    Stop {},
    /// `kill -9` slmd.
    Kill9 {},
    /// SIGHUP, after writing the config again (with `config` replacing
    /// `[slmd].config` when given).
    Reload {
        /// The new `[slmd].config`.
        config: Option<String>,
    },
    /// Wait until a condition holds, at most `within`; with `check`, a
    /// line of the report (failing it fails the scenario either way).
    Wait {
        /// The condition.
        until: Condition,
        /// The bound.
        #[serde(default = "default_within", deserialize_with = "duration")]
        within: Duration,
        /// The report line's name.
        check: Option<String>,
    },
    /// Let time pass (traffic flows meanwhile).
    Sleep {
        /// How long.
        #[serde(rename = "for", deserialize_with = "duration")]
        duration: Duration,
    },
    /// The meter stops answering (its simulator is frozen, SIGSTOP).
    MeterSilent {
        /// The meter.
        meter: String,
    },
    /// The meter answers again (SIGCONT).
    MeterBack {
        /// The meter.
        meter: String,
    },
    /// The meter is switched off and on (its simulator's SIGUSR1).
    PowerCycle {
        /// The meter.
        meter: String,
    },
    /// The meter's level is offset by `db` (0: back to normal).
    Level {
        /// The meter.
        meter: String,
        /// The offset in dB.
        db: f64,
    },
    /// The fleet answers 503 to everything, for `for` or until `fleet_up`.
    FleetDown {
        /// How long; without it, until a `fleet_up` step.
        #[serde(default, rename = "for", deserialize_with = "optional_duration")]
        duration: Option<Duration>,
    },
    /// The fleet answers again.
    FleetUp {},
    /// The fleet rotates to `token` (the old one honoured for `grace`);
    /// with `reload` (the default) the installer's half follows: slmd's
    /// token file becomes `[token, old]` and slmd is reloaded.
    RotateToken {
        /// The new token.
        token: String,
        /// The old token's grace (`fleet-sim`'s form: `60s`, `24h`).
        grace: Option<String>,
        /// Whether slmd is given the new token at once.
        #[serde(default = "yes")]
        reload: bool,
    },
    /// The previous token's grace ends now.
    ExpirePrevious {},
}

impl Step {
    /// A short description for the timeline's lines.
    pub fn describe(&self) -> String {
        match self {
            Step::Start {} => "start slmd".to_owned(),
            Step::Stop {} => "stop slmd (SIGTERM)".to_owned(),
            Step::Kill9 {} => "kill -9 slmd".to_owned(),
            Step::Reload { config } => format!(
                "reload slmd (SIGHUP{})",
                if config.is_some() { ", new config" } else { "" }
            ),
            Step::Wait { until, within, .. } => {
                format!("wait until {} (within {})", until.describe(), secs(*within))
            }
            Step::Sleep { duration } => format!("sleep {}", secs(*duration)),
            Step::MeterSilent { meter } => format!("meter {meter} goes silent"),
            Step::MeterBack { meter } => format!("meter {meter} answers again"),
            Step::PowerCycle { meter } => format!("power cycle meter {meter}"),
            Step::Level { meter, db } => format!("meter {meter} level offset {db} dB"),
            Step::FleetDown { duration } => match duration {
                Some(d) => format!("fleet answers 503 for {}", secs(*d)),
                None => "fleet answers 503".to_owned(),
            },
            Step::FleetUp {} => "fleet answers again".to_owned(),
            Step::RotateToken { token, .. } => format!("fleet rotates to token {token:?}"),
            Step::ExpirePrevious {} => "fleet expires the previous token".to_owned(),
        }
    }
}

/// A `wait` step's condition: exactly one of its forms.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// At least this many readings of this scenario's meters at the fleet
    /// (`fleet-sim`), counted from the step's start when `new` is set.
    pub fleet_records: Option<u64>,
    /// With `fleet_records`: count only records that arrived after the
    /// step started.
    #[serde(default)]
    pub new: bool,
    /// With `state`, `run_state` or `readings`: the meter (slmd's status).
    pub meter: Option<String>,
    /// The meter's link state (`connected`, `connecting`, `down`).
    pub state: Option<String>,
    /// The meter's run state (`measuring`, `stopped`, …).
    pub run_state: Option<String>,
    /// The meter's readings since slmd started, at least.
    pub readings: Option<u64>,
    /// slmd's unsent records, at most (`0`: caught up).
    pub backlog: Option<u64>,
    /// slmd's unsent records, at least (readings pile up in the buffer).
    pub backlog_at_least: Option<u64>,
    /// slmd's fleet state (`ok`, `retrying`, `auth_failed`, …).
    pub fleet_state: Option<String>,
    /// An alert event of this kind (`onset`, `clear`) at the fleet
    /// (`fleet-sim`).
    pub alert: Option<String>,
}

impl Condition {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.fleet_records {
            parts.push(format!(
                "{n} {}readings at the fleet",
                if self.new { "new " } else { "" }
            ));
        }
        let meter = self.meter.as_deref().unwrap_or("?");
        if let Some(s) = &self.state {
            parts.push(format!("meter {meter} {s}"));
        }
        if let Some(s) = &self.run_state {
            parts.push(format!("meter {meter} {s}"));
        }
        if let Some(n) = self.readings {
            parts.push(format!("meter {meter} has {n} readings"));
        }
        if let Some(n) = self.backlog {
            parts.push(format!("backlog ≤ {n}"));
        }
        if let Some(n) = self.backlog_at_least {
            parts.push(format!("backlog ≥ {n}"));
        }
        if let Some(s) = &self.fleet_state {
            parts.push(format!("fleet {s}"));
        }
        if let Some(k) = &self.alert {
            parts.push(format!("an alert {k} at the fleet"));
        }
        parts.join(" and ")
    }

    fn forms(&self) -> usize {
        [
            self.fleet_records.is_some(),
            self.state.is_some(),
            self.run_state.is_some(),
            self.readings.is_some(),
            self.backlog.is_some(),
            self.backlog_at_least.is_some(),
            self.fleet_state.is_some(),
            self.alert.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// One check of the report (`[[check]]`, `is = "..."`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "is", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// Every reading each simulated meter sent reached the fleet, in
    /// order, with its values; at most `max_missing` per meter missing,
    /// and with `lost_within_skips` as many more as the gateway declared
    /// skipped (an unclean stop).
    ReadingsAtFleet {
        /// Readings a meter may lose (a noisy line's garbled answers).
        #[serde(default)]
        max_missing: u64,
        /// Whether numbers the gateway declared skipped excuse as many lost
        /// readings.
        #[serde(default)]
        lost_within_skips: bool,
    },
    /// No hole in the gateway's numbering that it did not declare, and no
    /// number reused (`fleet-sim`'s audit).
    NoUndeclaredHoles,
    /// Records arrived in `seq` order (none below one already stored).
    InOrder,
    /// No simulated meter ever saw a second connection at once.
    OneConnectionPerMeter,
    /// The fleet never refused a token (a rotation cost no push).
    NoTokenRefused,
    /// The fleet got a heartbeat and holds the gateway online.
    HeartbeatAtFleet,
}

impl Check {
    /// The report line's name.
    pub fn title(&self) -> String {
        match self {
            Check::ReadingsAtFleet { .. } => {
                "every reading the meters sent reached the fleet, in order".to_owned()
            }
            Check::NoUndeclaredHoles => "no undeclared hole in the numbering".to_owned(),
            Check::InOrder => "records arrived in seq order".to_owned(),
            Check::OneConnectionPerMeter => "at most one connection per meter".to_owned(),
            Check::NoTokenRefused => "the fleet never refused a token".to_owned(),
            Check::HeartbeatAtFleet => "the fleet holds the gateway online".to_owned(),
        }
    }
}

/// A scenario file that cannot be run, with what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable file.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or a key unknown or of the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, key).
        message: String,
    },
    /// Well-formed, but not runnable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and checks a scenario's text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', "\n  "),
    })?;
    validate(&scenario).map_err(|message| ScenarioError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok(scenario)
}

fn validate(s: &Scenario) -> Result<(), String> {
    if s.name.trim().is_empty() {
        return Err("name: must not be empty".to_owned());
    }
    if s.meters.is_empty() {
        return Err("[[meter]]: at least one meter".to_owned());
    }
    if s.meters.len() > MAX_METERS {
        return Err(format!(
            "[[meter]]: at most {MAX_METERS} meters, found {}",
            s.meters.len()
        ));
    }
    for (i, m) in s.meters.iter().enumerate() {
        let kinds = [m.sim.is_some(), m.address.is_some(), m.path.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if kinds != 1 {
            return Err(format!(
                "meter[{i}] ({}): exactly one of sim = [...] (simulated), address = \"host:port\" or path = \"/dev/...\" (a real meter), found {kinds}",
                m.id
            ));
        }
        if !["nl43", "xl2", "svantek", "casella"].contains(&m.protocol.as_str()) {
            return Err(format!(
                "meter[{i}].protocol: unknown family {:?}; expected nl43, xl2, svantek or casella",
                m.protocol
            ));
        }
        if s.meters[..i].iter().any(|o| o.id == m.id) {
            return Err(format!("meter[{i}].id: {:?} is used twice", m.id));
        }
    }
    match (&s.fleet.sim, &s.fleet.url) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return Err(
                "[fleet]: exactly one of sim = [...] (fleet-sim) or url = \"https://...\" (a real fleet)"
                    .to_owned(),
            );
        }
    }
    if s.fleet.tokens.is_empty() || s.fleet.tokens.len() > 2 {
        return Err(format!(
            "fleet.tokens: one or two tokens (preferred first), found {}",
            s.fleet.tokens.len()
        ));
    }
    let meter = |name: &str, at: String| {
        if s.meters.iter().any(|m| m.id == name) {
            Ok(())
        } else {
            Err(format!("{at}: no meter {name:?} in this scenario"))
        }
    };
    for (i, step) in s.steps.iter().enumerate() {
        let at = format!("step[{i}]");
        match step {
            Step::MeterSilent { meter: m }
            | Step::MeterBack { meter: m }
            | Step::PowerCycle { meter: m }
            | Step::Level { meter: m, .. } => meter(m, format!("{at}.meter"))?,
            Step::Wait { until, .. } => {
                if until.forms() != 1 {
                    return Err(format!(
                        "{at}.until: exactly one of fleet_records, state, run_state, readings, backlog, backlog_at_least, fleet_state, alert; found {}",
                        until.forms()
                    ));
                }
                let needs_meter =
                    until.state.is_some() || until.run_state.is_some() || until.readings.is_some();
                match (&until.meter, needs_meter) {
                    (Some(m), true) => meter(m, format!("{at}.until.meter"))?,
                    (None, true) => {
                        return Err(format!("{at}.until: which meter? (meter = \"...\")"));
                    }
                    (Some(_), false) => {
                        return Err(format!(
                            "{at}.until.meter: only with state, run_state or readings"
                        ));
                    }
                    (None, false) => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_within() -> Duration {
    DEFAULT_WITHIN
}

fn default_gateway() -> String {
    DEFAULT_GATEWAY.to_owned()
}

fn default_protocol() -> String {
    "nl43".to_owned()
}

fn default_tokens() -> Vec<String> {
    vec![DEFAULT_TOKEN.to_owned()]
}

fn yes() -> bool {
    true
}

/// `12.5s` for the timeline's lines.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("s.toml"), text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
    }

    const MINIMAL: &str = "name = \"x\"\n[[meter]]\nid = \"north\"\nsim = []\n[fleet]\nsim = []\n";

    #[test]
    fn a_minimal_scenario_loads_with_its_defaults() {
        let s = parse(Path::new("s.toml"), MINIMAL).expect("valid");
        assert_eq!(s.slmd.gateway, DEFAULT_GATEWAY);
        assert_eq!(s.fleet.tokens, [DEFAULT_TOKEN]);
        assert_eq!(s.meters[0].protocol, "nl43");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn every_mistake_names_its_key() {
        assert!(err("name = \"x\"\n").contains("meter"));
        let e = err(&format!("{MINIMAL}[[step]]\ndo = \"explode\"\n"));
        assert!(e.contains("explode") && e.contains("kill9"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[step]]\ndo = \"power_cycle\"\nmeter = \"south\"\n"
        ));
        assert!(e.contains("step[0].meter") && e.contains("south"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[step]]\ndo = \"wait\"\nuntil = {{ state = \"down\" }}\n"
        ));
        assert!(e.contains("which meter"), "{e}");
        let e = err(&format!(
            "{MINIMAL}[[step]]\ndo = \"sleep\"\nfor = \"soon\"\n"
        ));
        assert!(e.contains("soon"), "{e}");
        let e = err(&format!("{MINIMAL}[[check]]\nis = \"all_good\"\n"));
        assert!(
            e.contains("all_good") && e.contains("readings_at_fleet"),
            "{e}"
        );
        let e = err(
            "name = \"x\"\n[[meter]]\nid = \"a\"\nsim = []\naddress = \"h:1\"\n[fleet]\nsim = []\n",
        );
        assert!(e.contains("meter[0] (a): exactly one of"), "{e}");
        let e = err(
            "name = \"x\"\n[[meter]]\nid = \"a\"\nsim = []\n[fleet]\nsim = []\nurl = \"http://f\"\n",
        );
        assert!(e.contains("[fleet]: exactly one of"), "{e}");
        let e = err(&format!("{MINIMAL}[[step]]\ndo = \"start\"\nspeed = 3\n"));
        assert!(e.contains("speed"), "{e}");
    }
}
