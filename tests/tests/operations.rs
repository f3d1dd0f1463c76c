//! Operating a gateway: `slmd check` probing meters and reading a running
//! daemon's meters from its state, `slmd status` reading the running daemon, and `SIGHUP` reloading meters and tokens without
//! touching the ones that did not change. Real binaries, real sockets.

use serde_json::Value;
use slmd_e2e::api::{api_address, status};
use slmd_e2e::fleet::{FleetSim, fingerprint, fleet_section};
use slmd_e2e::{Daemon, Setup, Sim, bin, poll_until, tcp_device};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn slmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("slmd"))
        .args(args)
        .output()
        .expect("slmd runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_probes_every_meter_and_says_which_one_fails() {
    let sim = Sim::tcp(&["--seed", "700"]);
    let setup = Setup::new();
    let alive = tcp_device("north", sim.address.as_deref().expect("address"), "");
    let config = setup.config(&alive);
    let path = config.to_string_lossy().into_owned();
    let (code, out, err) = slmd(&["check", "--config", &path]);
    assert_eq!(code, 0, "{out}\n{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("north"))
        .unwrap_or_else(|| panic!("no line for the meter: {out}"));
    assert!(
        line.contains(" ok ")
            && line.contains("answers, NL-43 serial ")
            && line.contains("measuring"),
        "{line}"
    );

    // A meter nobody answers for: named, non-zero exit.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let config = setup.config(&format!("{alive}\n{}", tcp_device("south", &dead_addr, "")));
    let path = config.to_string_lossy().into_owned();
    let (code, out, err) = slmd(&["check", "--config", &path]);
    assert_eq!(code, 69, "{out}\n{err}");
    let south = out
        .lines()
        .find(|l| l.starts_with("south"))
        .unwrap_or_else(|| panic!("no line for south: {out}"));
    assert!(
        south.contains("FAIL") && south.contains(&dead_addr),
        "{south}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("north") && l.contains(" ok "))
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("1 of 2 meters need attention: south: nothing accepts at that address"),
        "{out}"
    );

    // A broken config: located, exit 78, nothing probed.
    let broken = setup.path("broken.toml");
    std::fs::write(&broken, "[gateway]\nid = \"gw\"\nstate_dri = \"/x\"\n").expect("write");
    let (code, out, err) = slmd(&["check", "--config", &broken.to_string_lossy()]);
    assert_eq!(code, 78, "{out}\n{err}");
    assert!(
        err.contains("broken.toml:3:1") && err.contains("state_dri"),
        "{err}"
    );
}

/// The simulator's `event` lines of one kind so far (`connected`,
/// `refused`, `disconnected`).
fn sim_events(sim: &Sim, event: &str) -> usize {
    sim.proc
        .stdout
        .json()
        .iter()
        .filter(|v| v["event"] == event)
        .count()
}

#[test]
fn check_on_a_running_gateway_reads_held_meters_from_the_daemon_and_never_opens_them_again() {
    let mut north = Sim::tcp(&["--seed", "705"]);
    let mut east = Sim::tcp(&["--seed", "706"]);
    let north_addr = north.address.clone().expect("address");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let setup = Setup::new();
    let running = format!(
        "{}{}",
        tcp_device("nl43-north", &north_addr, ""),
        tcp_device("nl43-south", &dead_addr, "")
    );
    let config = setup.config(&running);
    let path = config.to_string_lossy().into_owned();
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    daemon.records("nl43-north", 2, TIMEOUT);
    poll_until(TIMEOUT, || {
        status(&api).filter(|s| s["devices"][1]["state"] == "down")
    })
    .expect("the dead meter shows down");

    // The daemon holds both meters: north from its live state, south with
    // the daemon's own error; neither opened a second time.
    let (code, out, err) = slmd(&["check", "--config", &path, "--api", &api]);
    assert_eq!(code, 69, "{out}\n{err}");
    assert!(out.contains(&format!("runs at {api} as gw-test")), "{out}");
    let held = line_of(&out, "nl43-north");
    assert!(
        held.contains(" ok ")
            && held.contains("held by the running slmd: connected, last reading ")
            && held.contains("NL-43 serial "),
        "{held}"
    );
    let down = line_of(&out, "nl43-south");
    assert!(
        down.contains("FAIL")
            && down.contains("held by the running slmd: down for ")
            && down.contains("Connection refused"),
        "{down}"
    );
    assert!(out.contains("config: the one slmd runs"), "{out}");
    assert!(
        out.lines().last().is_some_and(|l| l.starts_with(
            "1 of 2 meters need attention: nl43-south: nothing accepts at that address"
        )),
        "{out}"
    );
    assert_eq!(
        sim_events(&north, "connected"),
        1,
        "{}",
        north.proc.transcript()
    );
    assert_eq!(
        sim_events(&north, "refused"),
        0,
        "{}",
        north.proc.transcript()
    );

    // The file edited before a reload: north's poll interval changed, south
    // removed, east added. North is still held (same link); east, which
    // nobody holds, is probed.
    let east_addr = east.address.clone().expect("address");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).expect("read").replace(
            &running,
            &format!(
                "{}{}",
                tcp_device("nl43-north", &north_addr, "poll_interval = \"2s\""),
                tcp_device("nl43-east", &east_addr, "")
            ),
        ),
    )
    .expect("edit");
    let (code, out, err) = slmd(&["check", "--config", &path, "--api", &api]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        line_of(&out, "nl43-north").contains("held by the running slmd: connected"),
        "{out}"
    );
    assert!(
        line_of(&out, "nl43-east").contains("answers, NL-43 serial "),
        "{out}"
    );
    assert!(
        out.contains("config: edited since slmd loaded it (")
            && out.contains("a reload (systemctl reload slmd) would:"),
        "{out}"
    );
    assert!(
        out.contains(&format!("  add     nl43-east   tcp {east_addr}\n")),
        "{out}"
    );
    assert!(
        out.contains("  change  nl43-north  poll_interval "),
        "{out}"
    );
    assert!(out.contains("→ 2s (reconnects)"), "{out}");
    assert!(
        out.contains(&format!("  remove  nl43-south  tcp {dead_addr}\n")),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("all 2 meters usable"), "{out}");
    assert_eq!(
        sim_events(&north, "connected"),
        1,
        "{}",
        north.proc.transcript()
    );
    assert_eq!(east.stop()["connections_accepted"], 1);

    // --probe-anyway opens north while the daemon holds it: the meter turns
    // the second client away, and the check says so.
    setup.config(&running);
    let (code, out, _) = slmd(&["check", "--config", &path, "--api", &api, "--probe-anyway"]);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.starts_with(&format!("{path}: valid (2 meters)\n--probe-anyway")),
        "{out}"
    );
    assert!(line_of(&out, "nl43-north").contains("FAIL"), "{out}");
    assert_eq!(
        sim_events(&north, "refused"),
        1,
        "{}",
        north.proc.transcript()
    );

    // The daemon stopped: both meters probed as a stopped gateway's are.
    daemon.proc.terminate(TIMEOUT);
    north
        .proc
        .stdout
        .wait_count(1, TIMEOUT, |v| v["event"] == "disconnected");
    let (code, out, _) = slmd(&["check", "--config", &path, "--api", &api]);
    assert_eq!(code, 69, "{out}");
    assert!(
        out.contains(&format!("no slmd answers at {api}: every meter probed")),
        "{out}"
    );
    assert!(
        line_of(&out, "nl43-north").contains(" ok ")
            && line_of(&out, "nl43-north").contains("answers, NL-43 serial "),
        "{out}"
    );
    assert!(
        line_of(&out, "nl43-south").contains("Connection refused"),
        "{out}"
    );
    let stats = north.stop();
    assert_eq!(
        stats["connections_accepted"], 2,
        "the daemon's link and the last probe: {stats}"
    );
    assert_eq!(stats["connections_refused"], 1, "{stats}");
}

/// The line of meter `id` in `check`'s output.
fn line_of(out: &str, id: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no line for {id}: {out}"))
        .to_owned()
}

#[test]
fn status_shows_the_running_daemon_in_sixty_columns() {
    let sim = Sim::tcp(&["--seed", "710"]);
    let setup = Setup::new();
    let config = setup.config(&tcp_device(
        "nl43-north",
        sim.address.as_deref().expect("address"),
        "",
    ));
    let daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    daemon.records("nl43-north", 2, TIMEOUT);
    let path = config.to_string_lossy().into_owned();

    let (code, out, err) = slmd(&["status", "--config", &path, "--api", &api]);
    assert_eq!(code, 0, "{err}");
    for line in out.lines() {
        assert!(line.chars().count() <= 60, "wider than 60: {line:?}");
    }
    assert!(out.starts_with("slmd "), "{out}");
    let meter = out
        .lines()
        .find(|l| l.starts_with("nl43-north"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(meter.contains("connected"), "{meter}");
    assert!(out.contains("fleet   off"), "{out}");

    let (code, out, _) = slmd(&["status", "--json", "--config", &path, "--api", &api]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["devices"][0]["id"], "nl43-north");

    // Nobody there: a clear error, exit 69.
    drop(daemon);
    let (code, _, err) = slmd(&["status", "--config", &path, "--api", &api]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("is it running?"), "{err}");
}

#[test]
fn sighup_adds_and_removes_meters_changes_tokens_and_leaves_the_rest_alone() {
    let mut kept = Sim::tcp(&["--seed", "720"]);
    let mut removed = Sim::tcp(&["--seed", "721"]);
    let mut added = Sim::tcp(&["--seed", "722"]);
    let fleet = FleetSim::start("token1", &[]);
    let setup = Setup::new();
    let device = |id: &str, sim: &Sim| tcp_device(id, sim.address.as_deref().expect("address"), "");
    let config = setup.config(&format!(
        "{}{}\n{}",
        device("kept", &kept),
        device("removed", &removed),
        fleet_section(&fleet.url(), &["token1"], "")
    ));
    let mut daemon = Daemon::start(&config);
    daemon.records("kept", 2, TIMEOUT);
    daemon.records("removed", 2, TIMEOUT);

    fleet.rotate("token2");
    setup.config(&format!(
        "{}{}\n{}",
        device("kept", &kept),
        device("added", &added),
        fleet_section(&fleet.url(), &["token2", "token1"], "")
    ));
    let before = daemon.proc.stdout.lines().len();
    daemon.proc.signal(nix::sys::signal::Signal::SIGHUP);
    // The new meter reads, the new token pushes.
    slmd_e2e::records_after(&daemon.proc, before, 1, TIMEOUT);
    daemon
        .proc
        .stdout
        .wait_json(before, TIMEOUT, |v| {
            v["type"] == "record" && v["device"] == "added"
        })
        .unwrap_or_else(|| panic!("the added meter never read\n{}", daemon.proc.transcript()));
    let fp2 = fingerprint("token2");
    daemon
        .proc
        .stdout
        .wait_json(before, TIMEOUT, |v| {
            v["type"] == "push" && v["token"] == fp2.as_str()
        })
        .unwrap_or_else(|| panic!("no push with the new token\n{}", daemon.proc.transcript()));
    // The removed meter's link was closed.
    removed
        .proc
        .stdout
        .wait_json(0, TIMEOUT, |v| v["event"] == "disconnected")
        .unwrap_or_else(|| {
            panic!(
                "the removed meter kept its link\n{}",
                removed.proc.transcript()
            )
        });
    let after_reload = daemon.proc.stdout.lines().len();
    let (more, _) = slmd_e2e::records_after(&daemon.proc, after_reload, 4, TIMEOUT);
    assert!(
        more.iter().all(|r| r["device"] != "removed"),
        "no readings from the removed meter after the reload"
    );
    let stderr = daemon.proc.stderr.lines().join("\n");
    assert!(
        stderr.contains("meters: 1 unchanged, 0 restarted, 1 removed, 1 added"),
        "{stderr}"
    );
    daemon.proc.terminate(TIMEOUT);

    let kept_stats = kept.stop();
    assert_eq!(
        kept_stats["connections_accepted"], 1,
        "the untouched meter kept its one connection: {kept_stats}"
    );
    let added_stats = added.stop();
    assert_eq!(added_stats["connections_accepted"], 1, "{added_stats}");
    let removed_stats = removed.stop();
    assert_eq!(removed_stats["connections_accepted"], 1, "{removed_stats}");
}
