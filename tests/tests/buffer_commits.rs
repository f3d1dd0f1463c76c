//! Grouped commits on the real daemon (README, "Flash wear"): readings wait
//! in memory for their commit window, a reload and a clean stop commit
//! them at once, and `/metrics` shows commits and bytes written.

use nix::sys::signal::Signal;
use slmd_e2e::api::{api_address, committed, committed_all};
use slmd_e2e::fleet::http;
use slmd_e2e::{
    Daemon, Setup, buffer_file, buffer_rows, open_buffer_ro, poll_until, tcp_devices, tcp_sims,
};
use std::collections::BTreeSet;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A `/metrics` sample without labels, when present.
fn metric(api: &str, name: &str) -> Option<f64> {
    let page = http(api, "GET", "/metrics", &[], b"").ok()?.body;
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_reload_and_a_clean_stop_commit_what_waits_for_its_window() {
    let sims = tcp_sims(2, 830);
    let setup = Setup::new();
    // The longest window: nothing reaches the file on its own during the test.
    let config = setup.config_with_buffer(&tcp_devices(&sims), "commit_interval = \"30s\"");
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    let printed = daemon
        .proc
        .stdout
        .wait_count(6, TIMEOUT, |v| v["type"] == "record");
    assert_eq!(printed.len(), 6, "{}", daemon.proc.transcript());

    // Held in memory: the live feed has them, the buffer not yet.
    let stored = |api: &str| -> Option<BTreeSet<u64>> {
        Some(committed_all(api, &["m0", "m1"])?.into_keys().collect())
    };
    assert_eq!(metric(&api, "slmd_buffer_commits_total"), Some(0.0));
    assert!(
        stored(&api).is_some_and(|s| s.is_empty()),
        "nothing committed inside the window"
    );

    // SIGHUP commits what waits, in one commit.
    let before_reload = daemon.printed_seqs();
    daemon.proc.signal(Signal::SIGHUP);
    let after_reload = poll_until(TIMEOUT, || {
        let now = stored(&api)?;
        before_reload.is_subset(&now).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "the readings before the reload were not committed\n{}",
            daemon.proc.transcript()
        )
    });
    let commits = metric(&api, "slmd_buffer_commits_total").expect("commits metric");
    assert!(
        (1.0..=2.0).contains(&commits),
        "{} readings in {commits} commits",
        after_reload.len()
    );
    assert_eq!(
        metric(&api, "slmd_buffer_commits_last_minute"),
        Some(commits),
        "all of them in the last minute"
    );
    assert!(
        metric(&api, "slmd_buffer_disk_write_bytes_total").is_some(),
        "bytes written shown"
    );

    // Readings after the reload wait again; a clean stop commits them.
    let from = daemon.proc.stdout.lines().len();
    daemon
        .proc
        .stdout
        .wait_from(from, TIMEOUT, |l| l.contains("\"type\":\"record\""))
        .unwrap_or_else(|| panic!("records go on\n{}", daemon.proc.transcript()));
    let status = daemon.proc.terminate(TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        daemon.proc.transcript()
    );
    let rows = buffer_rows(&open_buffer_ro(&buffer_file(&setup))).expect("rows");
    let on_disk: BTreeSet<u64> = rows.keys().map(|s| *s as u64).collect();
    let printed = daemon.printed_seqs();
    assert!(
        printed.len() > before_reload.len(),
        "records printed after the reload"
    );
    assert_eq!(
        on_disk,
        printed,
        "a clean stop commits every record printed\n{}",
        daemon.proc.transcript()
    );
}

#[test]
fn while_the_daemon_runs_the_buffer_file_is_its_own() {
    let sims = tcp_sims(1, 840);
    let setup = Setup::new();
    let config = setup.config(&tcp_devices(&sims));
    let mut daemon = Daemon::start(&config);
    let api = api_address(&daemon.proc);
    daemon.records("m0", 2, TIMEOUT);
    poll_until(TIMEOUT, || committed(&api, "m0").filter(|c| !c.is_empty()))
        .expect("committed records");
    let db = buffer_file(&setup);
    // No wal-index file beside it: the index is in the daemon's memory.
    let shm = db.with_file_name("buffer.sqlite-shm");
    assert!(!shm.exists(), "{} exists", shm.display());
    // Another program is told the file is in use, and changes nothing.
    let other =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let refused = other.query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0));
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("locked")),
        "{refused:?}"
    );
    drop(other);
    daemon.proc.terminate(TIMEOUT);
    // Stopped, the file is anyone's.
    let rows = buffer_rows(&open_buffer_ro(&db)).expect("rows after the stop");
    assert!(!rows.is_empty());
}
