//! A buffer that fails its integrity check at start is moved aside, its
//! readable rows salvaged into a fresh buffer, and the daemon runs on
//! (SPEC §8): the real daemon against a damaged file and against a file
//! that is not a database at all.

use serde_json::Value;
use slmd_e2e::fixture::Fixture;
use slmd_e2e::{
    BufferRow, Daemon, Setup, buffer_accounting_error, buffer_file, buffer_meta, buffer_rows,
    moved_aside, open_buffer_ro, open_buffer_rw, poll_until, quick_check, received_at_ms,
    records_after, tcp_devices, tcp_sims,
};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The rows among `seqs` that read from the database at `path`, each looked
/// up on its own (`WHERE seq = ?`); the file is opened immutable.
fn readable_in(path: &Path, seqs: &[i64]) -> Vec<BufferRow> {
    let uri = format!("file:{}?immutable=1", path.display());
    let conn = rusqlite::Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .expect("open the damaged file read-only");
    seqs.iter()
        .filter_map(|seq| {
            conn.query_row(
                "SELECT seq, device, received_at, device_time, state, flags, metrics
                 FROM records WHERE seq = ?1",
                [seq],
                |r| {
                    Ok(BufferRow {
                        seq: r.get(0)?,
                        device: r.get(1)?,
                        received_at: r.get(2)?,
                        device_time: r.get(3)?,
                        state: r.get(4)?,
                        flags: r.get(5)?,
                        metrics: r.get(6)?,
                    })
                },
            )
            .ok()
        })
        .collect()
}

/// Every record line printed so far: seq → received_at ms.
fn printed(daemon: &Daemon) -> BTreeMap<i64, i64> {
    daemon
        .proc
        .stdout
        .json()
        .iter()
        .filter(|v| v["type"] == "record")
        .map(|v: &Value| {
            (
                v["seq"].as_i64().expect("seq"),
                received_at_ms(v).expect("received_at"),
            )
        })
        .collect()
}

/// Waits until every record in `printed` is committed in the buffer at `db`
/// (read from a separate connection); returns the rows.
fn wait_committed(
    db: &Path,
    printed: &BTreeMap<i64, i64>,
    daemon: &Daemon,
) -> BTreeMap<i64, BufferRow> {
    poll_until(TIMEOUT, || {
        let rows = buffer_rows(&open_buffer_ro(db)).ok()?;
        printed
            .iter()
            .all(|(seq, at)| rows.get(seq).is_some_and(|r| r.received_at == *at))
            .then_some(rows)
    })
    .unwrap_or_else(|| {
        panic!(
            "the records printed ({:?}) were not committed to {} within {TIMEOUT:?}\n{}",
            printed.keys().collect::<Vec<_>>(),
            db.display(),
            daemon.proc.transcript()
        )
    })
}

/// Builds a buffer of 1536 records the way the daemon writes them (the
/// buffer code itself, devices `m0`…`m7`), cleanly stopped and
/// checkpointed into the main file (no `-wal` left); returns its rows.
fn build_buffer(db: &Path) -> BTreeMap<i64, BufferRow> {
    let devices: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    Fixture::write(db, &names, 1536, 0);
    let conn = open_buffer_rw(db);
    assert_eq!(buffer_accounting_error(&conn), None);
    let rows = buffer_rows(&conn).expect("rows");
    drop(conn);
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "everything is in the main file"
    );
    rows
}

#[test]
fn a_damaged_buffer_is_moved_aside_and_its_readable_rows_salvaged() {
    let sims = tcp_sims(8, 500);
    let setup = Setup::new();
    let config = setup.config_with_buffer(&tcp_devices(&sims), slmd_e2e::SHARED_BUFFER);
    let db = buffer_file(&setup);
    let original = build_buffer(&db);
    let original_max = *original.keys().last().expect("rows");
    let original_meta = buffer_meta(&open_buffer_rw(&db)).expect("meta");
    assert!(original.len() >= 1000, "{} rows", original.len());

    // Three leaf pages of `records` from the middle of the file get
    // garbage; page 1 (the header and schema) and the interior pages stay.
    let (page_size, leaves): (u64, Vec<(u64, u64)>) = {
        let conn = open_buffer_rw(&db);
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("page size");
        let mut stmt = conn
            .prepare(
                "SELECT pageno, ncell FROM dbstat
                 WHERE name = 'records' AND pagetype = 'leaf' ORDER BY pageno",
            )
            .expect("dbstat (SQLITE_ENABLE_DBSTAT_VTAB)");
        let leaves = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .expect("leaf pages");
        (page_size, leaves)
    };
    assert!(leaves.len() >= 8, "enough leaf pages: {leaves:?}");
    let middle = leaves.len() / 2 - 1;
    let damaged = &leaves[middle..middle + 3];
    let unreadable: u64 = damaged.iter().map(|(_, n)| n).sum();
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .expect("open for damage");
        for (page, _) in damaged {
            assert!(*page > 1);
            file.seek(SeekFrom::Start((page - 1) * page_size))
                .expect("seek");
            file.write_all(&vec![0xAB; page_size as usize])
                .expect("damage");
        }
        file.sync_all().expect("sync");
    }
    let damaged_bytes = std::fs::read(&db).expect("read damaged file");

    let mut daemon = Daemon::start(&config);
    let (fresh_records, _) = records_after(&daemon.proc, 0, 8, TIMEOUT);
    assert_eq!(
        fresh_records.len(),
        8,
        "the daemon runs on a damaged buffer\n{}",
        daemon.proc.transcript()
    );
    let salvage_line = daemon
        .proc
        .stderr
        .wait_from(0, TIMEOUT, |l| l.contains("buffer salvaged"))
        .map(|(_, l)| l)
        .unwrap_or_else(|| {
            panic!(
                "the log says the buffer was salvaged\n{}",
                daemon.proc.transcript()
            )
        });

    // The damaged file is kept, as it was, next to the fresh one.
    let aside = moved_aside(&db);
    assert_eq!(
        aside.len(),
        1,
        "one buffer.sqlite.corrupt-<timestamp>: {aside:?}\n{}",
        daemon.proc.transcript()
    );
    let stamp = aside[0]
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("buffer.sqlite.corrupt-"))
        .expect("stamp");
    assert!(!stamp.is_empty(), "a timestamp: {aside:?}");
    assert!(
        std::fs::read(&aside[0]).expect("read moved file") == damaged_bytes,
        "the damaged file is kept unchanged at {}",
        aside[0].display()
    );
    assert!(
        salvage_line.contains(&aside[0].display().to_string()),
        "the log names where the damaged file went: {salvage_line}"
    );

    // The fresh buffer: the readable rows, unchanged, and nothing else old.
    let printed_now = printed(&daemon);
    let rows = wait_committed(&db, &printed_now, &daemon);
    let salvaged: BTreeMap<i64, &BufferRow> =
        rows.range(..=original_max).map(|(s, r)| (*s, r)).collect();
    assert!(
        !salvaged.is_empty(),
        "rows were salvaged\n{}",
        daemon.proc.transcript()
    );
    for (seq, row) in &salvaged {
        assert_eq!(
            Some(*row),
            original.get(seq),
            "salvaged row {seq} is the original row"
        );
    }
    // A row left behind must really be unreadable: look each one up by seq
    // in the damaged file (opened immutable, so it stays as it is).
    let left_behind: Vec<i64> = original
        .keys()
        .filter(|seq| !salvaged.contains_key(seq))
        .copied()
        .collect();
    let still_readable: Vec<i64> = readable_in(&aside[0], &left_behind)
        .into_iter()
        .filter(|row| original.get(&row.seq) == Some(row))
        .map(|row| row.seq)
        .collect();
    assert!(
        still_readable.is_empty(),
        "rows that still read from the damaged file were not salvaged: seqs {still_readable:?} \
         ({} rows left behind, {unreadable} on the {} damaged pages)\n{}",
        left_behind.len(),
        damaged.len(),
        daemon.proc.transcript()
    );
    assert_eq!(
        salvaged.len() as u64,
        original.len() as u64 - unreadable,
        "every row outside the {} damaged pages ({unreadable} rows) is saved\n{}",
        damaged.len(),
        daemon.proc.transcript()
    );
    assert!(
        salvage_line.contains(&format!("{} records saved", salvaged.len())),
        "the log says how many were saved: {salvage_line}"
    );

    // New records continue above every seq the old file ever assigned.
    let first_new = *printed_now.keys().next().expect("printed");
    assert!(
        first_new >= original_meta["next_seq"],
        "new seq {first_new} continues after the old file's next_seq {}\n{}",
        original_meta["next_seq"],
        daemon.proc.transcript()
    );
    assert!(
        rows.range(original_max + 1..)
            .all(|(seq, row)| printed_now.get(seq) == Some(&row.received_at)),
        "the rows above the salvaged ones are the new records"
    );

    let conn = open_buffer_ro(&db);
    assert_eq!(quick_check(&conn), ["ok"], "the fresh buffer is sound");
    if let Some(error) = buffer_accounting_error(&conn) {
        panic!(
            "accounting after salvage: {error}\n{}",
            daemon.proc.transcript()
        );
    }
    let meta = buffer_meta(&conn).expect("meta");
    assert_eq!(
        meta["lost"] as u64, unreadable,
        "the unreadable rows are counted as lost: {meta:?}"
    );
    drop(conn);

    let status = daemon.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop\n{}",
        daemon.proc.transcript()
    );
    // And it opens cleanly the next time: no second salvage.
    let mut again = Daemon::start(&config);
    let (records, _) = records_after(&again.proc, 0, 1, TIMEOUT);
    assert_eq!(records.len(), 1, "{}", again.proc.transcript());
    assert_eq!(moved_aside(&db).len(), 1, "{}", again.proc.transcript());
    assert!(
        again
            .proc
            .stderr
            .lines()
            .iter()
            .all(|l| !l.contains("salvag") && !l.contains("damaged")),
        "{}",
        again.proc.transcript()
    );
    again.proc.terminate(Duration::from_secs(15));
}

#[test]
fn a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_buffer_started() {
    let sims = tcp_sims(2, 600);
    let setup = Setup::new();
    let config = setup.config_with_buffer(&tcp_devices(&sims), slmd_e2e::SHARED_BUFFER);
    let db = buffer_file(&setup);
    std::fs::create_dir_all(db.parent().expect("state dir")).expect("state dir");
    let mut rng = fastrand::Rng::with_seed(0xbad_f11e);
    let garbage: Vec<u8> = (0..64 * 1024).map(|_| rng.u8(..)).collect();
    std::fs::write(&db, &garbage).expect("write garbage");

    let mut daemon = Daemon::start(&config);
    let (records, _) = records_after(&daemon.proc, 0, 4, TIMEOUT);
    assert_eq!(
        records.len(),
        4,
        "the daemon runs\n{}",
        daemon.proc.transcript()
    );
    let seqs: Vec<i64> = records.iter().filter_map(|r| r["seq"].as_i64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "a fresh buffer starts at seq 1");
    daemon
        .proc
        .stderr
        .wait_from(0, TIMEOUT, |l| l.contains("buffer salvaged"))
        .unwrap_or_else(|| panic!("the log says so\n{}", daemon.proc.transcript()));

    let aside = moved_aside(&db);
    assert_eq!(aside.len(), 1, "{aside:?}\n{}", daemon.proc.transcript());
    assert!(
        std::fs::read(&aside[0]).expect("read moved file") == garbage,
        "the file is moved aside unchanged"
    );
    let printed_now = printed(&daemon);
    let rows = wait_committed(&db, &printed_now, &daemon);
    assert!(
        rows.keys().all(|s| printed_now.contains_key(s)),
        "the fresh buffer holds only new records"
    );
    let conn = open_buffer_ro(&db);
    assert_eq!(quick_check(&conn), ["ok"]);
    assert_eq!(buffer_accounting_error(&conn), None);
    drop(conn);
    let status = daemon.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop\n{}",
        daemon.proc.transcript()
    );
}

#[test]
fn moving_a_damaged_buffer_aside_never_overwrites_an_earlier_one() {
    let sims = tcp_sims(2, 650);
    let setup = Setup::new();
    let config = setup.config_with_buffer(&tcp_devices(&sims), slmd_e2e::SHARED_BUFFER);
    let db = buffer_file(&setup);
    let state = db.parent().expect("state dir").to_owned();
    std::fs::create_dir_all(&state).expect("state dir");

    // Earlier damaged buffers, already moved aside under every name this
    // start could pick (the stamp has one-second resolution, and systemd
    // restarts a failing daemon after 100 ms): from 2 s ago to 2 min ahead.
    let now = chrono::Utc::now();
    let mut earlier = BTreeMap::new();
    for s in -2..120 {
        let stamp = (now + chrono::Duration::seconds(s)).format("%Y%m%dT%H%M%SZ");
        let path = state.join(format!("buffer.sqlite.corrupt-{stamp}"));
        let content = format!("earlier damaged buffer, moved aside at {stamp}").into_bytes();
        std::fs::write(&path, &content).expect("earlier file");
        earlier.insert(path, content);
    }
    let mut rng = fastrand::Rng::with_seed(0x0c0ffee);
    let garbage: Vec<u8> = (0..16 * 1024).map(|_| rng.u8(..)).collect();
    std::fs::write(&db, &garbage).expect("write garbage");

    let mut daemon = Daemon::start(&config);
    let (records, _) = records_after(&daemon.proc, 0, 2, TIMEOUT);
    assert_eq!(records.len(), 2, "{}", daemon.proc.transcript());
    daemon
        .proc
        .stderr
        .wait_from(0, TIMEOUT, |l| l.contains("buffer salvaged"))
        .unwrap_or_else(|| panic!("the log says so\n{}", daemon.proc.transcript()));
    let status = daemon.proc.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        daemon.proc.transcript()
    );

    let overwritten: Vec<&PathBuf> = earlier
        .iter()
        .filter(|(path, content)| std::fs::read(path).ok().as_ref() != Some(*content))
        .map(|(path, _)| path)
        .collect();
    assert!(
        overwritten.is_empty(),
        "an earlier damaged buffer was overwritten by the new one: {overwritten:?}\n{}",
        daemon.proc.transcript()
    );
    let kept = moved_aside(&db)
        .into_iter()
        .filter(|p| !earlier.contains_key(p))
        .any(|p| std::fs::read(p).is_ok_and(|c| c == garbage));
    assert!(
        kept,
        "the new damaged file is kept under a name of its own: {:?}\n{}",
        moved_aside(&db),
        daemon.proc.transcript()
    );
}
