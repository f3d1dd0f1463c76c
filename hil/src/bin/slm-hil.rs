//! `slm-hil`: the hardware-in-the-loop scenario runner.
//!
//! `slm-hil run SCENARIO.toml… [--junit FILE] [--slmd PATH]` runs each
//! scenario (meters and fleet simulated or real, slmd started with the
//! scenario's config, the timeline played, the checks judged), prints the
//! timeline and a line per check, writes JUnit XML when asked, and exits 0
//! when every check passed, 1 when one failed, 2 when a scenario file or
//! the command line is wrong (nothing is run then). `slm-hil check` only
//! reads the files. The format is in `hil/README.md` ("Scenarios").

use clap::{Parser, Subcommand};
use slmd_hil::scenario::{self, Outcome, RunOptions, Scenario};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Hardware-in-the-loop scenario runner for slmd.
#[derive(Parser)]
#[command(name = "slm-hil", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios; exit 0 when every check passed, 1 when one failed.
    Run {
        /// Scenario files (TOML), run one after the other.
        #[arg(required = true, value_name = "SCENARIO.toml")]
        scenarios: Vec<PathBuf>,
        /// Also write the report as JUnit XML here.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// The slmd binary (default: beside slm-hil, else `slmd` on PATH).
        #[arg(long, value_name = "PATH")]
        slmd: Option<PathBuf>,
        /// The meter simulator (default: beside slm-hil, else on PATH).
        #[arg(long, value_name = "PATH")]
        slm_sim: Option<PathBuf>,
        /// The fleet simulator (default: beside slm-hil, else on PATH).
        #[arg(long, value_name = "PATH")]
        fleet_sim: Option<PathBuf>,
        /// Keep each scenario's folder (config, buffer) and print where.
        #[arg(long)]
        keep: bool,
    },
    /// Read and check scenario files without running them.
    Check {
        /// Scenario files (TOML).
        #[arg(required = true, value_name = "SCENARIO.toml")]
        scenarios: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { scenarios } => match load_all(&scenarios) {
            Ok(loaded) => {
                for (path, s) in &loaded {
                    println!(
                        "ok    {}: {} ({} meters, {} steps, {} checks)",
                        path.display(),
                        s.name,
                        s.meters.len(),
                        s.steps.len(),
                        s.checks.len()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run {
            scenarios,
            junit,
            slmd,
            slm_sim,
            fleet_sim,
            keep,
        } => {
            let loaded = match load_all(&scenarios) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let options = RunOptions {
                slmd: slmd.unwrap_or_else(|| beside("slmd")),
                slm_sim: slm_sim.unwrap_or_else(|| beside("slm-sim")),
                fleet_sim: fleet_sim.unwrap_or_else(|| beside("fleet-sim")),
                keep,
            };
            run(&loaded, &options, junit.as_deref())
        }
    }
}

fn load_all(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Scenario)>, ExitCode> {
    let mut loaded = Vec::new();
    let mut bad = false;
    for path in paths {
        match scenario::load(path) {
            Ok(s) => loaded.push((path.clone(), s)),
            Err(e) => {
                eprintln!("slm-hil: {e}");
                bad = true;
            }
        }
    }
    if bad {
        eprintln!("slm-hil: nothing was run");
        return Err(ExitCode::from(2));
    }
    Ok(loaded)
}

fn run(loaded: &[(PathBuf, Scenario)], options: &RunOptions, junit: Option<&Path>) -> ExitCode {
    let started = Instant::now();
    let mut reports = Vec::new();
    for (path, s) in loaded {
        println!("== {} ({}): {}", s.name, path.display(), s.about.trim());
        let report = scenario::run_scenario(s, options, &mut |line| println!("{line}"));
        for c in &report.checks {
            let (word, detail) = match &c.outcome {
                Outcome::Pass(what) => ("PASS", what),
                Outcome::Fail(why) => ("FAIL", why),
                Outcome::Skip(why) => ("SKIP", why),
            };
            let detail = detail.replace('\n', "\n      ");
            println!("{word}  {}: {} ({detail})", report.name, c.title);
        }
        reports.push(report);
    }
    let checks: Vec<&Outcome> = reports
        .iter()
        .flat_map(|r| r.checks.iter().map(|c| &c.outcome))
        .collect();
    let failed = checks
        .iter()
        .filter(|o| matches!(o, Outcome::Fail(_)))
        .count();
    let skipped = checks
        .iter()
        .filter(|o| matches!(o, Outcome::Skip(_)))
        .count();
    let failing: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.name.as_str())
        .collect();
    println!(
        "== {} scenarios, {} checks: {} passed, {failed} failed, {skipped} skipped ({:.1}s){}",
        reports.len(),
        checks.len(),
        checks.len() - failed - skipped,
        started.elapsed().as_secs_f64(),
        if failing.is_empty() {
            String::new()
        } else {
            format!("; failing: {}", failing.join(", "))
        }
    );
    if let Some(path) = junit
        && let Err(e) = std::fs::write(path, scenario::junit_xml(&reports))
    {
        eprintln!("slm-hil: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A program beside this one, else its name (found on PATH).
fn beside(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}
