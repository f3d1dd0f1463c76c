//! Running one scenario: start the fleet and the meters, write slmd's
//! config, play the timeline, stop the meters, let slmd drain, stop it,
//! and judge the checks.
//!
//! Everything the runner waits for is polled with a deadline (slmd's
//! `/v1/status`, `fleet-sim`'s admin routes, a process's output lines);
//! nothing waits a fixed time except a `sleep` step, which is the
//! scenario's own choice.
//!
//! A check that needs what a simulator knows (the readings `slm-sim` sent,
//! the connections it saw; what `fleet-sim` received) is skipped, with the
//! reason, against a real meter or a real fleet. A timeline step that
//! drives a simulator (silence, power cycle, level, fleet outage, token
//! rotation) is skipped the same way.

use super::http;
use super::procs::Proc;
use super::{Check, Condition, MeterSpec, Scenario, Step};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a simulator or slmd may take to say where it listens.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long slmd may take to stop on SIGTERM before it is killed (and the
/// stop counts as failed).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the final drain (every reading at the fleet) may take.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The drain's bound after the timeline failed.
pub const DRAIN_AFTER_FAILURE: Duration = Duration::from_secs(10);
/// How often a condition is polled.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// Lines of slmd's log kept in a failing scenario's transcript.
pub const TRANSCRIPT_LINES: usize = 60;

/// Where the programs under test are.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The slmd binary.
    pub slmd: PathBuf,
    /// The meter simulator.
    pub slm_sim: PathBuf,
    /// The fleet simulator.
    pub fleet_sim: PathBuf,
    /// Keep the scenario's folder (config, buffer, logs) afterwards.
    pub keep: bool,
}

/// A check's verdict, with what was seen.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Held (what was measured).
    Pass(String),
    /// Did not hold (why).
    Fail(String),
    /// Not judged here (why).
    Skip(String),
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// What is checked.
    pub title: String,
    /// How long it took (a wait's time; 0 for end checks).
    pub seconds: f64,
    /// The verdict.
    pub outcome: Outcome,
}

/// One scenario's report.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Its run time.
    pub seconds: f64,
    /// Every check, the timeline's first.
    pub checks: Vec<CheckResult>,
    /// The timeline and the end of slmd's log, for a failure.
    pub transcript: String,
}

impl ScenarioReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Fail(_)))
    }
}

/// A meter of the scenario: its spec and, when simulated, its simulator.
struct Meter {
    spec: MeterSpec,
    sim: Option<Proc>,
    /// `transport = ...` lines of its `[[device]]`.
    link: String,
}

/// Everything one run holds.
struct World<'a> {
    scenario: &'a Scenario,
    options: &'a RunOptions,
    dir: PathBuf,
    started: Instant,
    deadline: Instant,
    fleet_sim: Option<Proc>,
    /// `fleet-sim`'s address (`host:port`), when simulated.
    fleet_admin: Option<String>,
    fleet_url: String,
    meters: Vec<Meter>,
    slmd: Option<Proc>,
    api: Option<String>,
    tokens: Vec<String>,
    extra_config: String,
    /// When a `fleet_down` with `for` ends.
    fleet_up_at: Option<Instant>,
    /// Whether the fleet answers 503 (a `fleet_down` not yet over).
    fleet_down: bool,
    timeline: Vec<String>,
    /// slmd's log of earlier runs (before a kill or stop).
    old_logs: Vec<String>,
}

/// Runs `scenario`; `say` gets each timeline line as it happens.
pub fn run_scenario(
    scenario: &Scenario,
    options: &RunOptions,
    say: &mut dyn FnMut(&str),
) -> ScenarioReport {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!(
        "slm-hil-{}-{}-{}",
        std::process::id(),
        sanitize(&scenario.name),
        started.elapsed().as_nanos() ^ u128::from(fastrand::u64(..))
    ));
    let mut world = World {
        scenario,
        options,
        dir: dir.clone(),
        started,
        deadline: started + scenario.timeout,
        fleet_sim: None,
        fleet_admin: None,
        fleet_url: String::new(),
        meters: Vec::new(),
        slmd: None,
        api: None,
        tokens: scenario.fleet.tokens.clone(),
        extra_config: scenario.slmd.config.clone(),
        fleet_up_at: None,
        fleet_down: false,
        timeline: Vec::new(),
        old_logs: Vec::new(),
    };
    let mut checks = Vec::new();
    let setup = std::fs::create_dir_all(dir.join("state"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))
        .and_then(|()| world.start_fleet())
        .and_then(|()| world.start_meters());
    let timeline = match setup {
        Err(e) => Outcome::Fail(format!("setup: {e}")),
        Ok(()) => world.play(&mut checks, say),
    };
    checks.insert(
        0,
        CheckResult {
            title: "timeline".to_owned(),
            seconds: started.elapsed().as_secs_f64(),
            outcome: timeline,
        },
    );
    let timeline_failed = matches!(checks[0].outcome, Outcome::Fail(_));
    let drained = world.finish(say, timeline_failed);
    if let Err(e) = drained {
        checks.push(CheckResult {
            title: "slmd drained and stopped cleanly".to_owned(),
            seconds: 0.0,
            outcome: Outcome::Fail(e),
        });
    }
    for check in &scenario.checks {
        let outcome = world.judge(check);
        checks.push(CheckResult {
            title: check.title(),
            seconds: 0.0,
            outcome,
        });
    }
    let report = ScenarioReport {
        name: scenario.name.clone(),
        seconds: started.elapsed().as_secs_f64(),
        transcript: world.transcript(),
        checks,
    };
    world.stop_all();
    if options.keep {
        world.save_outputs();
    }
    if !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        say(&format!("kept {}", dir.display()));
    }
    report
}

impl World<'_> {
    fn note(&mut self, say: &mut dyn FnMut(&str), line: &str) {
        let line = format!("{:7.1}s  {line}", self.started.elapsed().as_secs_f64());
        say(&line);
        self.timeline.push(line);
    }

    fn transcript(&self) -> String {
        let mut lines = self.timeline.clone();
        let log: Vec<String> = self
            .old_logs
            .iter()
            .cloned()
            .chain(
                self.slmd
                    .as_ref()
                    .map(|p| p.stderr.snapshot())
                    .unwrap_or_default(),
            )
            .collect();
        let start = log.len().saturating_sub(TRANSCRIPT_LINES);
        lines.push(format!("-- slmd log (last {} lines) --", log.len() - start));
        lines.extend_from_slice(&log[start..]);
        lines.join("\n")
    }

    fn start_fleet(&mut self) -> Result<(), String> {
        let spec = &self.scenario.fleet;
        if let Some(url) = &spec.url {
            self.fleet_url = url.trim_end_matches('/').to_owned();
            return Ok(());
        }
        let mut cmd = Command::new(&self.options.fleet_sim);
        cmd.args(["--listen", "127.0.0.1:0", "--token", &self.tokens[0]]);
        if let Some(previous) = self.tokens.get(1) {
            cmd.args(["--previous-token", previous]);
        }
        cmd.args(spec.sim.iter().flatten());
        let sim = Proc::spawn("fleet-sim", cmd)
            .map_err(|e| format!("cannot start {}: {e}", self.options.fleet_sim.display()))?;
        let addr = listening(&sim, "addr")?;
        self.fleet_url = format!("http://{addr}");
        self.fleet_admin = Some(addr);
        self.fleet_sim = Some(sim);
        Ok(())
    }

    fn start_meters(&mut self) -> Result<(), String> {
        for spec in &self.scenario.meters {
            let (sim, link) = match (&spec.sim, &spec.address, &spec.path) {
                (Some(args), _, _) => {
                    let mut cmd = Command::new(&self.options.slm_sim);
                    cmd.args(["--family", &spec.protocol, "--control-stdin"]);
                    let pty = args.iter().any(|a| a == "--pty");
                    if pty {
                        if !args.iter().any(|a| a == "--link") {
                            let link = self.dir.join(format!("tty-{}", sanitize(&spec.id)));
                            cmd.arg("--link").arg(link);
                        }
                    } else {
                        cmd.args(["--listen", "127.0.0.1:0"]);
                    }
                    cmd.args(args);
                    let sim = Proc::spawn(&format!("slm-sim {}", spec.id), cmd).map_err(|e| {
                        format!("cannot start {}: {e}", self.options.slm_sim.display())
                    })?;
                    let link = if pty {
                        let path = listening(&sim, "link").or_else(|_| listening(&sim, "path"))?;
                        format!("transport = \"serial\"\npath = {path:?}\n")
                    } else {
                        let addr = listening(&sim, "addr")?;
                        format!("transport = \"tcp\"\naddress = {addr:?}\n")
                    };
                    (Some(sim), link)
                }
                (None, Some(addr), _) => {
                    (None, format!("transport = \"tcp\"\naddress = {addr:?}\n"))
                }
                (None, None, Some(path)) => (
                    None,
                    format!(
                        "transport = \"serial\"\npath = {:?}\n",
                        path.display().to_string()
                    ),
                ),
                (None, None, None) => {
                    return Err(format!("meter {}: no sim, address or path", spec.id));
                }
            };
            self.meters.push(Meter {
                spec: spec.clone(),
                sim,
                link,
            });
        }
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("slmd.toml")
    }

    fn write_config(&self) -> Result<(), String> {
        let token_file = self.dir.join("fleet.token");
        write_private(&token_file, &format!("{}\n", self.tokens.join("\n")))?;
        let mut text = format!(
            "[gateway]\nid = {:?}\nstate_dir = {:?}\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n",
            self.scenario.slmd.gateway,
            self.dir.join("state").display().to_string()
        );
        for m in &self.meters {
            text.push_str(&format!(
                "[[device]]\nid = {:?}\nprotocol = {:?}\n{}{}\n\n",
                m.spec.id, m.spec.protocol, m.link, m.spec.device
            ));
        }
        text.push_str(&format!(
            "[fleet]\nenabled = true\nurl = {:?}\ntoken_file = {:?}\n{}\n\n{}\n",
            self.fleet_url,
            token_file.display().to_string(),
            self.scenario.slmd.fleet,
            self.extra_config
        ));
        std::fs::write(self.config_path(), text)
            .map_err(|e| format!("cannot write {}: {e}", self.config_path().display()))
    }

    /// Plays the timeline; the verdict of the `timeline` line.
    fn play(&mut self, checks: &mut Vec<CheckResult>, say: &mut dyn FnMut(&str)) -> Outcome {
        let steps = &self.scenario.steps;
        let mut skipped = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            self.tick();
            let what = step.describe();
            self.note(say, &format!("step {}: {what}", i + 1));
            let began = Instant::now();
            let result = self.step(step);
            let seconds = began.elapsed().as_secs_f64();
            if let Step::Wait {
                check: Some(title), ..
            } = step
            {
                checks.push(CheckResult {
                    title: title.clone(),
                    seconds,
                    outcome: match &result {
                        Ok(Done::Did(what)) => Outcome::Pass(what.clone()),
                        Ok(Done::Skipped(why)) => Outcome::Skip(why.clone()),
                        Err(e) => Outcome::Fail(e.clone()),
                    },
                });
            }
            match result {
                Ok(Done::Did(seen)) if !seen.is_empty() => self.note(say, &format!("  {seen}")),
                Ok(Done::Did(_)) => {}
                Ok(Done::Skipped(why)) => {
                    self.note(say, &format!("  skipped: {why}"));
                    skipped.push(i + 1);
                }
                Err(e) => {
                    self.note(say, &format!("  FAILED: {e}"));
                    return Outcome::Fail(format!(
                        "step {} ({what}) failed: {e}{}",
                        i + 1,
                        if i + 1 < steps.len() {
                            format!("; steps {} to {} not run", i + 2, steps.len())
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
        Outcome::Pass(if skipped.is_empty() {
            format!("{} steps", steps.len())
        } else {
            format!("{} steps, skipped: {skipped:?}", steps.len())
        })
    }

    /// Ends a timed fleet outage when its time has come.
    fn tick(&mut self) {
        if let Some(at) = self.fleet_up_at
            && Instant::now() >= at
        {
            self.fleet_up_at = None;
            self.fleet_down = false;
            let _ = self.fleet_admin_call("DELETE", "/admin/faults", None);
            self.timeline.push(format!(
                "{:7.1}s  fleet answers again (end of the outage)",
                self.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn step(&mut self, step: &Step) -> Result<Done, String> {
        match step {
            Step::Start {} => self.start_slmd().map(Done::Did),
            Step::Stop {} => self.stop_slmd().map(Done::Did),
            Step::Kill9 {} => {
                let slmd = self.slmd.as_mut().ok_or("slmd is not running")?;
                slmd.kill9();
                Ok(Done::Did(String::new()))
            }
            Step::Reload { config } => {
                if let Some(config) = config {
                    self.extra_config = config.clone();
                }
                self.write_config()?;
                self.slmd
                    .as_ref()
                    .ok_or("slmd is not running")?
                    .signal(Signal::SIGHUP)?;
                Ok(Done::Did(String::new()))
            }
            Step::Wait { until, within, .. } => self.wait(until, *within),
            Step::Sleep { duration } => {
                let end = Instant::now() + *duration;
                while Instant::now() < end {
                    self.tick();
                    std::thread::sleep(POLL_EVERY.min(end - Instant::now()));
                }
                Ok(Done::Did(String::new()))
            }
            Step::MeterSilent { meter } => self.signal_meter(meter, Signal::SIGSTOP),
            Step::MeterBack { meter } => self.signal_meter(meter, Signal::SIGCONT),
            Step::PowerCycle { meter } => self.signal_meter(meter, Signal::SIGUSR1),
            Step::Level { meter, db } => self.level(meter, *db),
            Step::FleetDown { duration } => {
                if self.fleet_admin.is_none() {
                    return Ok(Done::Skipped(
                        "a real fleet cannot be taken down".to_owned(),
                    ));
                }
                self.fleet_admin_call(
                    "POST",
                    "/admin/faults",
                    Some(json!({"kind": "status", "status": 503, "count": 1_000_000, "route": "all"})),
                )?;
                self.fleet_up_at = duration.map(|d| Instant::now() + d);
                self.fleet_down = true;
                Ok(Done::Did(String::new()))
            }
            Step::FleetUp {} => {
                if self.fleet_admin.is_none() {
                    return Ok(Done::Skipped("a real fleet".to_owned()));
                }
                self.fleet_up_at = None;
                self.fleet_down = false;
                self.fleet_admin_call("DELETE", "/admin/faults", None)?;
                Ok(Done::Did(String::new()))
            }
            Step::RotateToken {
                token,
                grace,
                reload,
            } => {
                if self.fleet_admin.is_none() {
                    return Ok(Done::Skipped(
                        "a real fleet's tokens are rotated by its operator".to_owned(),
                    ));
                }
                let mut body = json!({"token": token});
                if let Some(grace) = grace {
                    body["grace"] = json!(grace);
                }
                self.fleet_admin_call("POST", "/admin/rotate", Some(body))?;
                if *reload {
                    let old = self.tokens[0].clone();
                    self.tokens = vec![token.clone(), old];
                    self.write_config()?;
                    if let Some(slmd) = &self.slmd {
                        slmd.signal(Signal::SIGHUP)?;
                    }
                }
                Ok(Done::Did(String::new()))
            }
            Step::ExpirePrevious {} => {
                if self.fleet_admin.is_none() {
                    return Ok(Done::Skipped("a real fleet".to_owned()));
                }
                self.fleet_admin_call("POST", "/admin/expire-previous", None)?;
                Ok(Done::Did(String::new()))
            }
        }
    }

    fn start_slmd(&mut self) -> Result<String, String> {
        if let Some(slmd) = &mut self.slmd {
            if slmd.running() {
                return Err("slmd is already running".to_owned());
            }
            self.old_logs.extend(slmd.stderr.snapshot());
        }
        self.write_config()?;
        let mut cmd = Command::new(&self.options.slmd);
        cmd.arg("run").arg("--config").arg(self.config_path());
        let slmd = Proc::spawn("slmd", cmd)
            .map_err(|e| format!("cannot start {}: {e}", self.options.slmd.display()))?;
        // Ends early when slmd exits (its stderr closes).
        let found = slmd
            .stderr
            .wait_from(0, START_TIMEOUT, |l| l.contains("API listening"));
        let api = found
            .as_ref()
            .and_then(|(_, l)| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_owned)
            })
            .ok_or_else(|| {
                format!(
                    "slmd did not start its API within {}s:\n{}",
                    START_TIMEOUT.as_secs(),
                    slmd.tail(20)
                )
            })?;
        self.api = Some(api.clone());
        self.slmd = Some(slmd);
        Ok(format!("API at {api}"))
    }

    fn stop_slmd(&mut self) -> Result<String, String> {
        let slmd = self.slmd.as_mut().ok_or("slmd is not running")?;
        let began = Instant::now();
        match slmd.terminate(STOP_TIMEOUT) {
            Some(status) if status.success() => {
                Ok(format!("stopped in {:.1}s", began.elapsed().as_secs_f64()))
            }
            Some(status) => Err(format!("slmd ended with {status}:\n{}", slmd.tail(20))),
            None => Err(format!(
                "slmd did not stop within {}s",
                STOP_TIMEOUT.as_secs()
            )),
        }
    }

    fn meter(&mut self, id: &str) -> Result<&mut Meter, String> {
        self.meters
            .iter_mut()
            .find(|m| m.spec.id == id)
            .ok_or_else(|| format!("no meter {id:?}"))
    }

    fn signal_meter(&mut self, id: &str, signal: Signal) -> Result<Done, String> {
        let meter = self.meter(id)?;
        match &meter.sim {
            Some(sim) => sim.signal(signal).map(|()| Done::Did(String::new())),
            None => Ok(Done::Skipped(format!(
                "meter {id} is a real meter: the runner cannot send it {signal}"
            ))),
        }
    }

    fn level(&mut self, id: &str, db: f64) -> Result<Done, String> {
        let meter = self.meter(id)?;
        let Some(sim) = meter.sim.as_mut() else {
            return Ok(Done::Skipped(format!(
                "meter {id} is a real meter: make it loud by hand"
            )));
        };
        let from = sim.stdout.len();
        sim.write_line(&format!("offset {db}"))
            .map_err(|e| format!("slm-sim {id}: {e}"))?;
        sim.stdout
            .wait_from(from, START_TIMEOUT, |l| {
                l.contains("\"event\":\"offset\"") || l.contains("control_error")
            })
            .filter(|(_, l)| l.contains("\"event\":\"offset\""))
            .map(|_| Done::Did(String::new()))
            .ok_or_else(|| format!("slm-sim {id} did not take `offset {db}`"))
    }

    fn status(&self) -> Result<Value, String> {
        let api = self.api.as_deref().ok_or("slmd was never started")?;
        http::request(api, "GET", "/v1/status", None)?.json()
    }

    fn fleet_admin_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let admin = self
            .fleet_admin
            .as_deref()
            .ok_or("the fleet is not fleet-sim")?;
        let body = body.map(|b| b.to_string());
        http::request(admin, method, path, body.as_deref())?.json()
    }

    fn fleet_get(&self, route: &str) -> Result<Value, String> {
        let gateway = &self.scenario.slmd.gateway;
        self.fleet_admin_call("GET", &format!("{route}?gateway={gateway}"), None)
    }

    fn fleet_seq_count(&self) -> Result<u64, String> {
        Ok(self.fleet_get("/admin/seqs")?["seqs"]
            .as_array()
            .map_or(0, |a| a.len() as u64))
    }

    fn wait(&mut self, until: &Condition, within: Duration) -> Result<Done, String> {
        let needs_fleet = until.fleet_records.is_some() || until.alert.is_some();
        if needs_fleet && self.fleet_admin.is_none() {
            return Ok(Done::Skipped(
                "needs fleet-sim's records (the fleet is a real one)".to_owned(),
            ));
        }
        let began = Instant::now();
        let deadline = (began + within).min(self.deadline);
        let baseline = if until.new {
            self.fleet_seq_count()?
        } else {
            0
        };
        let mut last;
        loop {
            self.tick();
            match self.holds(until, baseline) {
                Ok((true, seen)) => {
                    return Ok(Done::Did(format!(
                        "after {:.1}s: {seen}",
                        began.elapsed().as_secs_f64()
                    )));
                }
                Ok((false, seen)) => last = seen,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                let why = if deadline < began + within {
                    "the scenario's timeout came first"
                } else {
                    "not within the bound"
                };
                return Err(format!(
                    "{} did not happen within {:.0}s ({why}); last seen: {last}",
                    until.describe(),
                    deadline.duration_since(began).as_secs_f64()
                ));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Whether `until` holds now, and what was seen.
    fn holds(&self, until: &Condition, baseline: u64) -> Result<(bool, String), String> {
        if let Some(n) = until.fleet_records {
            let count = self.fleet_seq_count()?.saturating_sub(baseline);
            return Ok((count >= n, format!("{count} records at the fleet")));
        }
        if let Some(kind) = &until.alert {
            let events = self.fleet_get("/admin/events")?;
            let kinds: Vec<&str> = events["events"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["event"].as_str()).collect())
                .unwrap_or_default();
            return Ok((
                kinds.contains(&kind.as_str()),
                format!("alert events at the fleet: {kinds:?}"),
            ));
        }
        let status = self.status()?;
        if let Some(id) = &until.meter {
            let device = status["devices"]
                .as_array()
                .and_then(|a| a.iter().find(|d| d["id"] == id.as_str()))
                .ok_or_else(|| format!("slmd's status has no meter {id}"))?;
            let state = device["state"].as_str().unwrap_or("?");
            let run_state = device["run_state"].as_str().unwrap_or("?");
            let readings = device["readings_total"].as_u64().unwrap_or(0);
            let seen = format!("meter {id} {state}/{run_state}, {readings} readings");
            let ok = until.state.as_deref().is_none_or(|s| s == state)
                && until.run_state.as_deref().is_none_or(|s| s == run_state)
                && until.readings.is_none_or(|n| readings >= n);
            return Ok((ok, seen));
        }
        if until.backlog.is_some() || until.backlog_at_least.is_some() {
            let unsent = status["buffer"]["unsent"].as_u64();
            let ok = unsent.is_some_and(|u| {
                until.backlog.is_none_or(|n| u <= n)
                    && until.backlog_at_least.is_none_or(|n| u >= n)
            });
            return Ok((
                ok,
                format!(
                    "backlog {}",
                    unsent.map_or("?".to_owned(), |u| u.to_string())
                ),
            ));
        }
        if let Some(want) = &until.fleet_state {
            let state = status["fleet"]["state"].as_str().unwrap_or("?");
            return Ok((state == want, format!("fleet {state}")));
        }
        Err("an empty condition".to_owned())
    }

    /// Stops the meters, lets slmd push what it holds, stops slmd.
    fn finish(&mut self, say: &mut dyn FnMut(&str), timeline_failed: bool) -> Result<(), String> {
        for m in &mut self.meters {
            if let Some(sim) = &mut m.sim {
                sim.terminate(Duration::from_secs(5));
            }
        }
        if self.fleet_down {
            // An outage the timeline left running ends with the timeline,
            // so slmd can push what it holds.
            self.fleet_down = false;
            self.fleet_up_at = None;
            let _ = self.fleet_admin_call("DELETE", "/admin/faults", None);
            self.note(say, "fleet answers again (end of the timeline)");
        }
        let running = self.slmd.as_mut().is_some_and(Proc::running);
        if !running {
            return Ok(());
        }
        self.note(say, "meters stopped; slmd drains its buffer");
        // A reload asks the buffer to commit what it holds in memory.
        if let Some(slmd) = &self.slmd {
            let _ = slmd.signal(Signal::SIGHUP);
        }
        let began = Instant::now();
        // After a failed timeline the checks fail or pass on what is there:
        // a short drain, not the full bound.
        let bound = if timeline_failed {
            DRAIN_AFTER_FAILURE
        } else {
            DRAIN_TIMEOUT
        };
        let deadline = began + bound;
        let mut last;
        let drained = loop {
            match self.drained() {
                Ok((true, seen)) => break Ok(seen),
                Ok((false, seen)) => last = seen,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "slmd did not push everything within {}s: {last}",
                    bound.as_secs()
                ));
            }
            std::thread::sleep(POLL_EVERY);
        };
        let line = match &drained {
            Ok(seen) => format!(
                "drained after {:.1}s: {seen}",
                began.elapsed().as_secs_f64()
            ),
            Err(e) => format!("FAILED: {e}"),
        };
        self.note(say, &line);
        let stopped = self.stop_slmd();
        self.note(
            say,
            &match &stopped {
                Ok(s) => format!("slmd {s}"),
                Err(e) => format!("FAILED: {e}"),
            },
        );
        drained.and(stopped).map(|_| ())
    }

    /// Whether every reading slmd took is at the fleet.
    fn drained(&self) -> Result<(bool, String), String> {
        let status = self.status()?;
        let unsent = status["buffer"]["unsent"].as_u64().unwrap_or(u64::MAX);
        let queued = status["buffer"]["queued_in_memory"].as_u64().unwrap_or(0);
        let api = self.api.as_deref().ok_or("no API")?;
        let mut newest = 0;
        for m in &self.meters {
            let path = format!("/v1/devices/{}/live", m.spec.id);
            if let Ok(answer) = http::request(api, "GET", &path, None)
                && let Ok(record) = answer.json()
            {
                newest = newest.max(record["seq"].as_u64().unwrap_or(0));
            }
        }
        let seen = format!("backlog {unsent}, newest reading seq {newest}");
        if self.fleet_admin.is_none() {
            return Ok((unsent == 0 && queued == 0, seen));
        }
        let at_fleet = self.fleet_get("/admin/seqs")?["seqs"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).max().unwrap_or(0))
            .unwrap_or(0);
        Ok((
            unsent == 0 && at_fleet >= newest,
            format!("{seen}, highest seq at the fleet {at_fleet}"),
        ))
    }

    /// Writes what every process printed into the scenario's folder
    /// (`--keep`): `slmd.log`, `slm-sim-<meter>.jsonl`, `fleet-sim.jsonl`.
    fn save_outputs(&self) {
        let mut slmd_log = self.old_logs.clone();
        if let Some(slmd) = &self.slmd {
            slmd_log.extend(slmd.stderr.snapshot());
        }
        let mut files = vec![("slmd.log".to_owned(), slmd_log)];
        for m in &self.meters {
            if let Some(sim) = &m.sim {
                files.push((
                    format!("slm-sim-{}.jsonl", sanitize(&m.spec.id)),
                    sim.stdout.snapshot(),
                ));
            }
        }
        if let Some(sim) = &self.fleet_sim {
            files.push(("fleet-sim.jsonl".to_owned(), sim.stdout.snapshot()));
        }
        for (name, lines) in files {
            let _ = std::fs::write(self.dir.join(name), lines.join("\n") + "\n");
        }
    }

    fn stop_all(&mut self) {
        if let Some(slmd) = &mut self.slmd {
            slmd.terminate(Duration::from_secs(5));
        }
        for m in &mut self.meters {
            if let Some(sim) = &mut m.sim {
                sim.terminate(Duration::from_secs(5));
            }
        }
        if let Some(sim) = &mut self.fleet_sim {
            sim.terminate(Duration::from_secs(5));
        }
    }

    fn judge(&self, check: &Check) -> Outcome {
        let needs_fleet = matches!(
            check,
            Check::ReadingsAtFleet { .. }
                | Check::NoUndeclaredHoles
                | Check::InOrder
                | Check::NoTokenRefused
                | Check::HeartbeatAtFleet
        );
        if needs_fleet && self.fleet_admin.is_none() {
            return Outcome::Skip("needs fleet-sim's records (the fleet is a real one)".to_owned());
        }
        let result = match check {
            Check::ReadingsAtFleet {
                max_missing,
                lost_within_skips,
            } => self.readings_at_fleet(*max_missing, *lost_within_skips),
            Check::NoUndeclaredHoles => self.no_undeclared_holes(),
            Check::InOrder => self.fleet_stats().map(|s| {
                let out_of_order = s["out_of_order"].as_u64().unwrap_or(0);
                if out_of_order == 0 {
                    Outcome::Pass(format!(
                        "{} unique records, none out of order",
                        s["unique"].as_u64().unwrap_or(0)
                    ))
                } else {
                    Outcome::Fail(format!(
                        "{out_of_order} records arrived below a seq already stored"
                    ))
                }
            }),
            Check::OneConnectionPerMeter => Ok(self.one_connection_per_meter()),
            Check::NoTokenRefused => self.fleet_stats().map(|s| {
                let refused = s["by_status"]["401"].as_u64().unwrap_or(0);
                if refused == 0 {
                    Outcome::Pass(format!(
                        "{} ingest requests, none refused",
                        s["requests"].as_u64().unwrap_or(0)
                    ))
                } else {
                    Outcome::Fail(format!("the fleet answered 401 to {refused} pushes"))
                }
            }),
            Check::HeartbeatAtFleet => {
                self.fleet_admin_call("GET", "/admin/liveness", None)
                    .map(|l| {
                        let gateway = &self.scenario.slmd.gateway;
                        let entry = l["gateways"]
                            .as_array()
                            .and_then(|a| a.iter().find(|g| g["gateway"] == gateway.as_str()));
                        match entry {
                            Some(g) if g["online"] == true => Outcome::Pass(format!(
                                "{} heartbeats",
                                g["heartbeats"].as_u64().unwrap_or(0)
                            )),
                            Some(g) => {
                                Outcome::Fail(format!("the fleet holds {gateway} offline: {g}"))
                            }
                            None => Outcome::Fail(format!(
                                "no heartbeat from {gateway} reached the fleet"
                            )),
                        }
                    })
            }
        };
        result.unwrap_or_else(|e| Outcome::Fail(format!("cannot judge: {e}")))
    }

    fn fleet_stats(&self) -> Result<Value, String> {
        self.fleet_admin_call("GET", "/admin/stats", None)
    }

    fn no_undeclared_holes(&self) -> Result<Outcome, String> {
        let audit = self.fleet_get("/admin/audit")?;
        let epochs = audit["epochs"].as_array().cloned().unwrap_or_default();
        if epochs.is_empty() {
            return Ok(Outcome::Fail("no record reached the fleet".to_owned()));
        }
        let mut problems = Vec::new();
        let mut summary = Vec::new();
        for e in &epochs {
            let missing = e["missing"].as_u64().unwrap_or(0);
            let conflicts = e["conflicts"].as_u64().unwrap_or(0);
            summary.push(format!(
                "epoch {}: seq {}..{}, {} records, {} declared skipped",
                e["epoch"], e["min_seq"], e["max_seq"], e["records"], e["skipped_numbers"]
            ));
            if missing > 0 {
                problems.push(format!(
                    "epoch {}: {missing} numbers missing without a declaration, first holes {}",
                    e["epoch"], e["holes"]
                ));
            }
            if conflicts > 0 {
                problems.push(format!("epoch {}: {conflicts} numbers reused", e["epoch"]));
            }
        }
        Ok(if problems.is_empty() {
            Outcome::Pass(summary.join("; "))
        } else {
            Outcome::Fail(problems.join("; "))
        })
    }

    fn one_connection_per_meter(&self) -> Outcome {
        let mut seen = Vec::new();
        let mut skipped = Vec::new();
        for m in &self.meters {
            let Some(sim) = &m.sim else {
                skipped.push(m.spec.id.clone());
                continue;
            };
            let lines = sim.stdout.snapshot();
            let refused = lines
                .iter()
                .filter(|l| l.contains("\"event\":\"refused\""))
                .count();
            let accepted = lines
                .iter()
                .filter(|l| l.contains("\"event\":\"connected\""))
                .count();
            if refused > 0 {
                return Outcome::Fail(format!(
                    "meter {} refused {refused} second connections while one was served",
                    m.spec.id
                ));
            }
            seen.push(format!(
                "{}: {accepted} connections, one at a time",
                m.spec.id
            ));
        }
        if seen.is_empty() {
            return Outcome::Skip(format!(
                "needs the simulator's report (real meters: {})",
                skipped.join(", ")
            ));
        }
        if !skipped.is_empty() {
            seen.push(format!("not judged (real): {}", skipped.join(", ")));
        }
        Outcome::Pass(seen.join("; "))
    }

    fn readings_at_fleet(
        &self,
        max_missing: u64,
        lost_within_skips: bool,
    ) -> Result<Outcome, String> {
        let records = self.fleet_get("/admin/received")?["records"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut by_device: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for r in &records {
            if r["kind"].as_str().unwrap_or("reading") == "reading"
                && let Some(d) = r["device"].as_str()
            {
                by_device.entry(d).or_default().push(r);
            }
        }
        for list in by_device.values_mut() {
            list.sort_by_key(|r| (r["epoch"].as_u64().unwrap_or(0), r["seq"].as_u64()));
        }
        let skipped: u64 = if lost_within_skips {
            self.fleet_get("/admin/audit")?["epochs"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e["skipped_numbers"].as_u64()).sum())
                .unwrap_or(0)
        } else {
            0
        };
        let mut lines = Vec::new();
        let mut failures = Vec::new();
        let mut real = Vec::new();
        let mut total_missing = 0;
        for m in &self.meters {
            let Some(sim) = &m.sim else {
                real.push(m.spec.id.clone());
                continue;
            };
            let all: Vec<Value> = sim
                .stdout
                .snapshot()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "reading" && v["replayed"] != true)
                .collect();
            // A reading without a single value (dashes before the
            // integration starts, a probe of which values the meter has)
            // cannot be told from another: it is not looked for.
            let (sent, blank): (Vec<Value>, Vec<Value>) = all.into_iter().partition(|v| {
                v["metrics"]
                    .as_object()
                    .is_some_and(|m| m.values().any(|x| !x.is_null()))
            });
            let at_fleet = by_device
                .get(m.spec.id.as_str())
                .cloned()
                .unwrap_or_default();
            let (matched, missing) = match_in_order(&sent, &at_fleet);
            total_missing += missing.len() as u64;
            lines.push(format!(
                "{}: {} sent, {matched} at the fleet in order{}",
                m.spec.id,
                sent.len(),
                if blank.is_empty() {
                    String::new()
                } else {
                    format!(" ({} without a value not looked for)", blank.len())
                }
            ));
            if sent.is_empty() {
                failures.push(format!("meter {} sent no reading", m.spec.id));
            }
            if missing.len() as u64 > max_missing {
                failures.push(format!(
                    "meter {}: {} of {} readings missing at the fleet (allowed {max_missing}), first: reading #{} {}",
                    m.spec.id,
                    missing.len(),
                    sent.len(),
                    missing[0] + 1,
                    sent[missing[0]]["metrics"]
                ));
            }
        }
        if lines.is_empty() {
            return Ok(Outcome::Skip(format!(
                "needs the simulator's report (real meters: {})",
                real.join(", ")
            )));
        }
        if lost_within_skips {
            let allowed = skipped + max_missing * self.meters.len() as u64;
            failures.retain(|f| !f.contains("readings missing"));
            if total_missing > allowed {
                failures.push(format!(
                    "{total_missing} readings missing at the fleet, more than the {skipped} numbers the gateway declared skipped (+{max_missing} per meter)"
                ));
            }
            lines.push(format!(
                "{total_missing} lost, {skipped} numbers declared skipped"
            ));
        }
        if !real.is_empty() {
            lines.push(format!("not judged (real): {}", real.join(", ")));
        }
        Ok(if failures.is_empty() {
            Outcome::Pass(lines.join("; "))
        } else {
            Outcome::Fail(format!("{}\n{}", failures.join("; "), lines.join("; ")))
        })
    }
}

/// What a step did.
enum Done {
    /// Done; what was seen (may be empty).
    Did(String),
    /// Not done here, and why.
    Skipped(String),
}

/// Finds each reading a simulator sent among a meter's records at the
/// fleet (in `seq` order), in order: how many matched, and the indexes of
/// the sent ones not found.
fn match_in_order(sent: &[Value], at_fleet: &[&Value]) -> (usize, Vec<usize>) {
    let mut next = 0;
    let mut matched = 0;
    let mut missing = Vec::new();
    for (i, reading) in sent.iter().enumerate() {
        match at_fleet[next..]
            .iter()
            .position(|r| same_values(&reading["metrics"], &r["metrics"]))
        {
            Some(offset) => {
                next += offset + 1;
                matched += 1;
            }
            None => missing.push(i),
        }
    }
    (matched, missing)
}

/// Whether every metric the simulator wrote has the same value in the
/// record (a metric the record lacks is not compared).
fn same_values(sent: &Value, stored: &Value) -> bool {
    let Some(sent) = sent.as_object() else {
        return false;
    };
    sent.iter().all(|(name, value)| match stored.get(name) {
        None => true,
        Some(Value::Null) => value.is_null(),
        Some(v) => match (v.as_f64(), value.as_f64()) {
            (Some(a), Some(b)) => (a - b).abs() < 1e-6,
            _ => false,
        },
    })
}

/// The value of `key` in the simulator's first line (`listening` or
/// `pty`).
fn listening(sim: &Proc, key: &str) -> Result<String, String> {
    let found = sim.stdout.wait_from(0, START_TIMEOUT, |l| {
        l.contains("\"event\":\"listening\"") || l.contains("\"event\":\"pty\"")
    });
    let (_, line) = found.ok_or_else(|| {
        format!(
            "{} did not say where it listens within {}s:\n{}",
            sim.name,
            START_TIMEOUT.as_secs(),
            sim.tail(10)
        )
    })?;
    serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v[key].as_str().map(str::to_owned))
        .ok_or_else(|| format!("{}: no {key} in {line}", sim.name))
}

/// A file only its owner reads (slmd warns about a token file others can).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A name usable in a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_found_in_order_and_gaps_are_named() {
        let sent: Vec<Value> = [50.1, 50.2, 50.3, 50.4]
            .iter()
            .map(|v| json!({"metrics": {"lp": v, "leq": null}}))
            .collect();
        let stored: Vec<Value> = [50.1, 50.3, 50.4]
            .iter()
            .map(|v| json!({"metrics": {"lp": v, "leq": null, "le": 1.0}}))
            .collect();
        let refs: Vec<&Value> = stored.iter().collect();
        assert_eq!(match_in_order(&sent, &refs), (3, vec![1]));
        // Out of order at the fleet: the later one is not found again.
        let swapped: Vec<&Value> = vec![&stored[1], &stored[0], &stored[2]];
        let (matched, missing) = match_in_order(&sent, &swapped);
        assert_eq!((matched, missing), (2, vec![1, 2]));
        // A value that differs is not the same reading.
        assert!(!same_values(&json!({"lp": 50.1}), &json!({"lp": 50.2})));
        assert!(!same_values(&json!({"lp": 50.1}), &json!({"lp": null})));
    }
}
