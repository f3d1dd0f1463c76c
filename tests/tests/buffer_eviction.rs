//! A full buffer on the real daemon: the cap holds, accounting is exact,
//! and the log says so once per episode, not once per record.

use slmd_e2e::{Daemon, Setup, Sim, tcp_device};
use std::time::Duration;

#[test]
fn a_full_buffer_evicts_the_oldest_and_says_so_once() {
    let sims: Vec<Sim> = (0..3)
        .map(|i| Sim::tcp(&["--seed", &format!("{}", 40 + i)]))
        .collect();
    let setup = Setup::new();
    let devices: String = sims
        .iter()
        .enumerate()
        .map(|(i, s)| tcp_device(&format!("m{i}"), s.address.as_deref().expect("addr"), ""))
        .collect();
    let config = setup.config_with_buffer(&devices, "max_records = 10");
    let mut daemon = Daemon::start(&config);

    // 40 records through a buffer of 10: at least 30 evicted.
    let records = daemon
        .proc
        .stdout
        .wait_count(40, Duration::from_secs(60), |v| v["type"] == "record");
    assert_eq!(records.len(), 40, "{}", daemon.proc.transcript());
    let status = daemon.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        daemon.proc.transcript()
    );

    let conn = rusqlite::Connection::open(setup.dir.path().join("state/buffer.sqlite"))
        .expect("open buffer");
    let meta = |key: &str| -> i64 {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .unwrap_or_else(|e| panic!("meta {key}: {e}"))
    };
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .expect("count");
    assert!(stored <= 10, "the cap holds: {stored}");
    assert_eq!(meta("stored"), stored);
    assert!(meta("written") >= 40);
    assert_eq!(
        meta("written"),
        stored + meta("evicted_pushed") + meta("evicted_unsent")
    );
    assert!(
        meta("evicted_unsent") >= 30,
        "nothing was pushed, so unsent records went"
    );
    let newest: i64 = conn
        .query_row("SELECT max(seq) FROM records", [], |r| r.get(0))
        .expect("max");
    assert_eq!(
        newest,
        meta("next_seq") - 1,
        "the newest records are the ones kept"
    );

    let stderr = daemon.proc.stderr.lines();
    let starts = stderr.iter().filter(|l| l.contains("buffer full")).count();
    assert_eq!(
        starts,
        1,
        "one line when the episode starts, not one per record:\n{}",
        stderr.join("\n")
    );
    let summaries = stderr
        .iter()
        .filter(|l| l.contains("unsent records evicted"))
        .count();
    assert_eq!(
        summaries,
        1,
        "one summary with count and time range at the end:\n{}",
        stderr.join("\n")
    );
}
