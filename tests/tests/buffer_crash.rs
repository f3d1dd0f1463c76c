//! `kill -9` at any moment loses no committed record and leaves a buffer
//! that opens (SPEC §8): the real daemon, four simulated meters, and more
//! than twenty SIGKILLs at random points of the write cycle.

use nix::sys::signal::Signal;
use serde_json::Value;
use slmd_e2e::{
    BufferRow, Daemon, Setup, buffer_accounting_error, buffer_file, buffer_rows, open_buffer_ro,
    poll_until, quick_check, received_at_ms, records_after, tcp_devices, tcp_sims,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// SIGKILLs in one run.
const KILLS: usize = 22;
/// How long a (re)started daemon may take to print or commit.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The records a run printed, by seq: (received_at ms, device).
fn printed(records: &[Value]) -> BTreeMap<i64, (i64, String)> {
    records
        .iter()
        .map(|r| {
            let seq = r["seq"].as_i64().expect("seq");
            let at = received_at_ms(r).expect("received_at");
            let device = r["device"].as_str().expect("device").to_owned();
            (seq, (at, device))
        })
        .collect()
}

/// Stored rows with `seq` ≥ `first_new` that are not the record this run
/// printed under that seq (same `received_at`): seqs assigned twice.
fn reused(
    rows: &BTreeMap<i64, BufferRow>,
    run_printed: &BTreeMap<i64, (i64, String)>,
    first_new: i64,
) -> Vec<i64> {
    rows.range(first_new..)
        .filter(|(seq, row)| {
            run_printed
                .get(*seq)
                .is_none_or(|(at, _)| *at != row.received_at)
        })
        .map(|(seq, _)| *seq)
        .collect()
}

/// Every record line the daemon printed so far.
fn all_printed(daemon: &Daemon) -> Vec<Value> {
    daemon.printed_records()
}

#[test]
fn sigkill_at_random_moments_loses_no_committed_record_and_never_reuses_a_seq() {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(0x5107_c4a5);
    let sims = tcp_sims(4, 300);
    let setup = Setup::new();
    let config = setup.config(&tcp_devices(&sims));
    let db = buffer_file(&setup);

    // Every committed row ever seen, by seq: must never change or vanish
    // (nothing is evicted: the default cap is ten million).
    let mut history: BTreeMap<i64, BufferRow> = BTreeMap::new();
    // Device name ids as first seen (names are interned once and kept).
    let mut device_ids: BTreeMap<i64, String> = BTreeMap::new();
    // Committed seqs read shortly before the last kill.
    let mut before_kill: BTreeSet<i64> = BTreeSet::new();
    let mut previous_transcript = String::new();
    // What the killed run printed, and how many of its printed records were
    // not committed when it died (allowed: only committed ones are promised).
    let mut killed_run: BTreeMap<i64, (i64, String)> = BTreeMap::new();
    let mut in_flight = 0usize;
    let mut kills_in_flight = 0usize;
    let mut daemon = Daemon::start(&config);
    // Every seq any run streamed live, to prove none is ever used twice.
    let mut streamed: std::collections::BTreeSet<i64> = std::collections::BTreeSet::new();

    for round in 0..=KILLS {
        // The (re)started daemon prints records again.
        let (_, _) = records_after(&daemon.proc, 0, 1, TIMEOUT);
        let this_run = all_printed(&daemon);
        let transcript = || {
            format!(
                "round {round}\n--- previous run ---\n{previous_transcript}\n--- this run ---\n{}",
                daemon.proc.transcript()
            )
        };
        assert!(
            !this_run.is_empty(),
            "the (re)started daemon prints records again\n{}",
            transcript()
        );
        let run_printed = printed(&this_run);
        let first_new = *run_printed.keys().next().expect("a printed record");

        // Wait until this run has committed something: the file takes
        // writes again after the crash (or stop early: the writer failed).
        let write_failed = || {
            daemon
                .proc
                .stderr
                .lines()
                .iter()
                .any(|l| l.contains("buffer write failed"))
        };
        let rows = poll_until(TIMEOUT, || {
            let conn = open_buffer_ro(&db);
            let rows = buffer_rows(&conn).ok()?;
            (write_failed()
                || rows.iter().any(|(seq, row)| {
                    run_printed
                        .get(seq)
                        .is_some_and(|(at, _)| *at == row.received_at)
                }))
            .then_some(rows)
        });
        let rows = match rows {
            Some(rows) if !write_failed() => rows,
            _ => {
                let rows = buffer_rows(&open_buffer_ro(&db)).unwrap_or_default();
                panic!(
                    "this run commits nothing (write failed: {}); rows of earlier runs at or \
                     above this run's first seq {first_new}: {:?}\n{}",
                    write_failed(),
                    reused(&rows, &run_printed, first_new),
                    transcript()
                )
            }
        };

        // The printer runs beside the writer, so a committed record may show
        // up on stdout a moment after the commit: take this run's records
        // once every stored seq from this run's range has been printed (a
        // seq that never is was committed by an earlier run: reused).
        let run_printed = poll_until(Duration::from_secs(5), || {
            let now = printed(&all_printed(&daemon));
            rows.range(first_new..)
                .all(|(seq, _)| now.contains_key(seq))
                .then_some(now)
        })
        .unwrap_or_else(|| printed(&all_printed(&daemon)));

        let conn = open_buffer_ro(&db);
        assert_eq!(
            quick_check(&conn),
            ["ok"],
            "the buffer passes quick_check after the crash\n{}",
            transcript()
        );
        if let Some(error) = buffer_accounting_error(&conn) {
            panic!("accounting after restart: {error}\n{}", transcript());
        }
        let names: BTreeMap<i64, String> = conn
            .prepare("SELECT id, name FROM names WHERE kind = 0")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("device names");
        drop(conn);

        // Committed before the kill ⇒ still there, unchanged.
        let missing: Vec<&i64> = before_kill
            .iter()
            .filter(|seq| !rows.contains_key(seq))
            .collect();
        assert!(
            missing.is_empty(),
            "committed records vanished after SIGKILL: seqs {missing:?}\n{}",
            transcript()
        );
        for (seq, old) in &history {
            match rows.get(seq) {
                Some(row) => assert_eq!(
                    row,
                    old,
                    "committed record {seq} changed across a crash\n{}",
                    transcript()
                ),
                None => panic!("committed record {seq} vanished\n{}", transcript()),
            }
        }
        for (id, name) in &names {
            let known = device_ids.entry(*id).or_insert_with(|| name.clone());
            assert_eq!(
                known,
                name,
                "device name id {id} changed meaning\n{}",
                transcript()
            );
        }

        // No committed seq is assigned again: every row that is not this
        // run's own record (same seq, same received_at) is older than this
        // run's first seq.
        let older = reused(&rows, &run_printed, first_new);
        assert!(
            older.is_empty(),
            "seqs committed before the kill were assigned again after restart (first new seq \
             {first_new}): {older:?}\n{}",
            transcript()
        );
        if let Some(max_before) = before_kill.last() {
            assert!(
                first_new > *max_before,
                "new seq {first_new} not above the committed {max_before}\n{}",
                transcript()
            );
        }
        // Every stored row is a record some run printed, with its values.
        for (seq, row) in &rows {
            if let Some((at, device)) = run_printed.get(seq) {
                if *at == row.received_at {
                    assert_eq!(
                        names.get(&row.device),
                        Some(device),
                        "record {seq} stored under another device\n{}",
                        transcript()
                    );
                }
            }
        }
        let errors: Vec<String> = daemon
            .proc
            .stderr
            .lines()
            .into_iter()
            .filter(|l| {
                l.contains("buffer write failed")
                    || l.contains("damaged")
                    || l.contains("salvag")
                    || (l.contains("ERROR") && l.contains("buffer"))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "a crash leaves a buffer that opens and takes writes as it is: {errors:#?}\n{}",
            transcript()
        );

        let lost_in_flight = killed_run
            .iter()
            .filter(|(seq, (at, _))| rows.get(seq).is_none_or(|r| r.received_at != *at))
            .count();
        in_flight += lost_in_flight;
        kills_in_flight += usize::from(lost_in_flight > 0);
        for (seq, row) in &rows {
            history.entry(*seq).or_insert_with(|| row.clone());
        }
        if round == KILLS {
            break;
        }

        // What is committed now must survive the kill (nothing is evicted,
        // so everything committed until the kill is a superset of it).
        let conn = open_buffer_ro(&db);
        before_kill = buffer_rows(&conn)
            .unwrap_or_else(|e| panic!("read before kill: {e}\n{}", transcript()))
            .into_keys()
            .collect();
        drop(conn);
        // The kill trigger: 1..=6 more records printed. The meters answer
        // in bursts of four and the writer commits right after publishing,
        // so killing at once lands in or next to a commit; the optional
        // random delay spreads the other kills over the rest of the write
        // cycle. The sleep is the behaviour under test, not a
        // synchronisation.
        let n = rng.usize(1..=6);
        let from = daemon.proc.stdout.lines().len();
        let (more, _) = records_after(&daemon.proc, from, n, TIMEOUT);
        assert_eq!(more.len(), n, "records keep coming\n{}", transcript());
        match rng.u8(0..3) {
            0 => {}
            1 => std::thread::sleep(Duration::from_micros(rng.u64(0..=20_000))),
            _ => std::thread::sleep(Duration::from_millis(rng.u64(0..=1000))),
        }
        daemon.proc.signal(Signal::SIGKILL);
        let status = daemon.proc.wait(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.code().is_none()),
            "the daemon died of SIGKILL: {status:?}\n{}",
            daemon.proc.transcript()
        );
        previous_transcript = daemon.proc.transcript();
        killed_run = printed(&all_printed(&daemon));
        // SPEC §3: a seq is never used twice, also not after a crash, and
        // also not one that was only streamed live before the kill.
        for seq in killed_run.keys() {
            assert!(
                streamed.insert(*seq),
                "seq {seq} was streamed live in two runs\n{previous_transcript}"
            );
        }
        daemon = Daemon::start(&config);
    }

    // A clean stop after all that commits every record this run printed.
    let status = daemon.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop\n{}",
        daemon.proc.transcript()
    );
    let last_run = printed(&all_printed(&daemon));
    for seq in last_run.keys() {
        assert!(
            streamed.insert(*seq),
            "seq {seq} was streamed live in two runs"
        );
    }
    let conn = slmd_e2e::open_buffer_rw(&db);
    let rows = buffer_rows(&conn).expect("rows after clean stop");
    for (seq, (at, _)) in &last_run {
        assert_eq!(
            rows.get(seq).map(|r| r.received_at),
            Some(*at),
            "record {seq} printed before a clean stop is in the buffer\n{}",
            daemon.proc.transcript()
        );
    }
    for (seq, old) in &history {
        assert_eq!(rows.get(seq), Some(old), "record {seq} after the last stop");
    }
    let distinct: i64 = conn
        .query_row(
            "SELECT count(DISTINCT seq) - count(*) FROM records",
            [],
            |r| r.get(0),
        )
        .expect("distinct");
    assert_eq!(distinct, 0, "seqs are unique");
    assert_eq!(buffer_accounting_error(&conn), None);
    assert!(
        history.len() >= KILLS,
        "records accumulated across {KILLS} crashes: {}",
        history.len()
    );
    eprintln!(
        "{KILLS} SIGKILLs ({kills_in_flight} with printed records not yet committed, \
         {in_flight} such records), {} records committed, {:.1}s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
}
