//! The scenario runner (`slm-hil run`) end to end: the real runner, the
//! real simulators and the real slmd, on the scenarios shipped in
//! `hil/scenarios/`.
//!
//! - every shipped scenario passes, and the JUnit report parses back with
//!   one suite per scenario and one case per printed check line;
//! - an slmd that never pushes (a wrapper that switches `[fleet]` off in
//!   the config it is given) fails the fleet checks of the first-day
//!   scenario, each with a line saying what did not happen;
//! - a meter given by address (as on a rig with a real meter: here a
//!   simulator the runner does not know about) runs the same steps, and the
//!   checks that need the simulator's own report are skipped, saying why.

use slmd_e2e::{Sim, bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("hil")
        .join("scenarios")
}

fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenarios_dir())
        .expect("hil/scenarios")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// `slm-hil run <files> --junit <junit> --slmd <slmd>`.
fn run(files: &[PathBuf], junit: &Path, slmd: &Path) -> Output {
    Command::new(bin("slm-hil"))
        .arg("run")
        .args(files)
        .arg("--junit")
        .arg(junit)
        .arg("--slmd")
        .arg(slmd)
        .output()
        .expect("run slm-hil")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The check lines printed: (verdict, "scenario: title").
fn check_lines(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (word, rest) = l.split_once("  ")?;
            ["PASS", "FAIL", "SKIP"]
                .contains(&word)
                .then(|| (word.to_owned(), rest.to_owned()))
        })
        .collect()
}

/// One JUnit test case: suite, name, verdict (`pass`, `failure`, `skipped`).
fn junit_cases(xml: &str) -> Vec<(String, String, String)> {
    let doc = roxmltree::Document::parse(xml).expect("the JUnit report is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let mut cases = Vec::new();
    for suite in root.children().filter(|n| n.has_tag_name("testsuite")) {
        let name = suite.attribute("name").expect("suite name").to_owned();
        let listed: usize = suite
            .attribute("tests")
            .and_then(|t| t.parse().ok())
            .expect("tests=");
        let mut here = 0;
        for case in suite.children().filter(|n| n.has_tag_name("testcase")) {
            here += 1;
            let verdict = if case.children().any(|c| c.has_tag_name("failure")) {
                "failure"
            } else if case.children().any(|c| c.has_tag_name("skipped")) {
                "skipped"
            } else {
                "pass"
            };
            cases.push((
                name.clone(),
                case.attribute("name").expect("case name").to_owned(),
                verdict.to_owned(),
            ));
        }
        assert_eq!(here, listed, "suite {name}: tests= counts its cases");
    }
    cases
}

#[test]
fn every_shipped_scenario_passes_and_the_junit_report_parses_back() {
    let files = shipped();
    assert!(files.len() >= 7, "the scenario library: {files:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let junit = dir.path().join("report.xml");
    let out = run(&files, &junit, &bin("slmd"));
    let transcript = text(&out);
    assert_eq!(out.status.code(), Some(0), "{transcript}");
    let lines = check_lines(&out);
    assert!(lines.iter().all(|(word, _)| word == "PASS"), "{transcript}");
    let cases = junit_cases(&std::fs::read_to_string(&junit).expect("report written"));
    assert_eq!(cases.len(), lines.len(), "one case per check line");
    for ((suite, name, verdict), (_, line)) in cases.iter().zip(&lines) {
        assert_eq!(verdict, "pass");
        assert!(
            line.starts_with(&format!("{suite}: {name} (")),
            "the case {suite}/{name} is the line {line}"
        );
    }
    let suites: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    for file in &files {
        let stem = file.file_stem().and_then(|s| s.to_str()).expect("name");
        assert!(suites.contains(stem), "a suite named {stem}: {suites:?}");
    }
}

#[test]
fn an_slmd_that_never_pushes_fails_the_fleet_checks_with_a_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The broken release: it runs with the fleet switched off, whatever its
    // config says.
    let wrapper = dir.path().join("slmd-no-fleet");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do [ \"$prev\" = --config ] && sed -i 's/^enabled = true$/enabled = false/' \"$a\"; prev=$a; done\n\
             exec {} \"$@\"\n",
            bin("slmd").display()
        ),
    )
    .expect("write wrapper");
    let mut perms = std::fs::metadata(&wrapper).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod");

    let junit = dir.path().join("report.xml");
    let out = run(&[scenarios_dir().join("first-day.toml")], &junit, &wrapper);
    let transcript = text(&out);
    assert_eq!(out.status.code(), Some(1), "{transcript}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        failed.iter().any(|l| l.starts_with(
            "FAIL  first-day: readings at the fleet within a minute (20 readings at the fleet did not happen within 60s"
        )),
        "the wait names what did not happen\n{transcript}"
    );
    assert!(
        failed.iter().any(|l| l.starts_with(
            "FAIL  first-day: no undeclared hole in the numbering (no record reached the fleet"
        )),
        "{transcript}"
    );
    assert!(
        failed.iter().any(|l| l.starts_with(
            "FAIL  first-day: the fleet holds the gateway online (no heartbeat from gw-hil"
        )),
        "{transcript}"
    );
    // The meters themselves were fine: those lines pass.
    assert!(
        stdout.contains("PASS  first-day: nl43-north connected within 30 s"),
        "{transcript}"
    );
    assert!(
        stdout.contains("failing: first-day"),
        "the summary names the scenario\n{transcript}"
    );
    let cases = junit_cases(&std::fs::read_to_string(&junit).expect("report written"));
    let failures = cases.iter().filter(|c| c.2 == "failure").count();
    assert_eq!(failures, failed.len(), "{cases:?}");
}

#[test]
fn a_meter_given_by_address_runs_the_same_scenario_and_skips_what_needs_the_simulator() {
    // The "real" meter: a simulator the runner did not start and cannot
    // read, as on a rig.
    let meter = Sim::tcp(&[]);
    let address = meter.address.clone().expect("address");
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("rig.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"rig\"\n\
             [slmd]\nfleet = 'interval = \"1s\"'\nconfig = '''\n[buffer]\ncommit_interval = \"1s\"\n'''\n\
             [[meter]]\nid = \"nl43-rig\"\naddress = \"{address}\"\n\
             [fleet]\nsim = []\n\
             [[step]]\ndo = \"start\"\n\
             [[step]]\ndo = \"wait\"\nuntil = {{ fleet_records = 5 }}\nwithin = \"60s\"\ncheck = \"readings at the fleet\"\n\
             [[step]]\ndo = \"power_cycle\"\nmeter = \"nl43-rig\"\n\
             [[check]]\nis = \"readings_at_fleet\"\n\
             [[check]]\nis = \"one_connection_per_meter\"\n\
             [[check]]\nis = \"no_undeclared_holes\"\n"
        ),
    )
    .expect("write scenario");
    let junit = dir.path().join("report.xml");
    let out = run(&[scenario], &junit, &bin("slmd"));
    let transcript = text(&out);
    assert_eq!(out.status.code(), Some(0), "{transcript}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "PASS  rig: readings at the fleet",
        "SKIP  rig: every reading the meters sent reached the fleet, in order (needs the simulator's report (real meters: nl43-rig))",
        "SKIP  rig: at most one connection per meter (needs the simulator's report (real meters: nl43-rig))",
        "PASS  rig: no undeclared hole in the numbering",
    ] {
        assert!(stdout.contains(line), "missing {line:?}\n{transcript}");
    }
    assert!(
        stdout
            .contains("skipped: meter nl43-rig is a real meter: the runner cannot send it SIGUSR1"),
        "{transcript}"
    );
    let cases = junit_cases(&std::fs::read_to_string(&junit).expect("report written"));
    assert_eq!(cases.iter().filter(|c| c.2 == "skipped").count(), 2);
}

#[test]
fn a_broken_scenario_file_runs_nothing_and_names_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let scenario = dir.path().join("bad.toml");
    std::fs::write(
        &scenario,
        "name = \"bad\"\n[[meter]]\nid = \"m\"\nsim = []\n[fleet]\nsim = []\n[[step]]\ndo = \"wait\"\nuntil = { state = \"down\" }\n",
    )
    .expect("write");
    let out = Command::new(bin("slm-hil"))
        .arg("run")
        .arg(&scenario)
        .arg(scenarios_dir().join("first-day.toml"))
        .output()
        .expect("run slm-hil");
    let transcript = text(&out);
    assert_eq!(out.status.code(), Some(2), "{transcript}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml: step[0].until: which meter?"),
        "{transcript}"
    );
    assert!(stderr.contains("nothing was run"), "{transcript}");
    assert!(out.stdout.is_empty(), "{transcript}");
}
