//! Tests of the page reader on real SQLite files, damaged in every way a
//! card or a crash damages one, and on arbitrary bytes.

use super::*;
use proptest::prelude::*;
use rusqlite::{Connection, params};
use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::sync::OnceLock;

/// The daemon's schema (version 3).
const SCHEMA: &str = "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE names (kind INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL,
        PRIMARY KEY (kind, id), UNIQUE (kind, name)) WITHOUT ROWID;
    CREATE TABLE records (seq INTEGER PRIMARY KEY, device INTEGER NOT NULL,
        received_at INTEGER NOT NULL, device_time INTEGER, state INTEGER NOT NULL,
        flags INTEGER NOT NULL, metrics BLOB NOT NULL, crc INTEGER);";

/// Rows of the shared fixture (enough for a three-level `records` tree).
const FIXTURE_ROWS: i64 = 40_000;
/// Names of the shared fixture (enough for index interior pages).
const FIXTURE_NAMES: i64 = 2_000;

/// Integers of every serial type width (1, 2, 3, 4, 6, 8 bytes, and the
/// constants 0 and 1).
const FLAGS: [i64; 18] = [
    0,
    1,
    -1,
    127,
    -128,
    200,
    32_767,
    -32_768,
    40_000,
    8_000_000,
    -8_000_000,
    2_000_000_000,
    -2_000_000_000,
    100_000_000_000,
    -100_000_000_000,
    1 << 47,
    i64::MAX,
    i64::MIN,
];

/// A deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

type Row = (i64, i64, Option<i64>, i64, i64, Vec<u8>, Option<i64>);

/// The records row for `seq` (without seq).
fn row(seq: i64) -> Row {
    let received_at = 1_700_000_000_000 + seq * 1000;
    let device_time = (seq % 9 != 0).then_some(received_at - seq % 5000);
    let metrics_len = 24 + (seq % 12) as usize;
    let metrics = (0..metrics_len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect();
    let crc = (seq % 13 != 0).then_some((seq.wrapping_mul(2_654_435_761)) & 0xffff_ffff);
    (
        seq % 7 + if seq % 11 == 0 { 300 } else { 0 },
        received_at,
        device_time,
        seq % 3,
        FLAGS[(seq as usize) % FLAGS.len()],
        metrics,
        crc,
    )
}

fn insert_records(conn: &Connection, seqs: RangeInclusive<i64>) {
    let tx = conn.unchecked_transaction().expect("test setup");
    {
        let mut stmt = tx
            .prepare(
                "INSERT INTO records (seq, device, received_at, device_time, state, flags, \
                 metrics, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .expect("test setup");
        for seq in seqs {
            let (device, received_at, device_time, state, flags, metrics, crc) = row(seq);
            stmt.execute(params![
                seq,
                device,
                received_at,
                device_time,
                state,
                flags,
                metrics,
                crc
            ])
            .expect("test setup");
        }
    }
    tx.commit().expect("test setup");
}

fn insert_names(conn: &Connection, ids: std::ops::Range<i64>) {
    let tx = conn.unchecked_transaction().expect("test setup");
    {
        let mut stmt = tx
            .prepare("INSERT INTO names (kind, id, name) VALUES (?1, ?2, ?3)")
            .expect("test setup");
        for id in ids {
            let kind = id % 2;
            let prefix = if kind == 0 { "device" } else { "metric" };
            stmt.execute(params![kind, id, format!("{prefix}-{id:05}")])
                .expect("test setup");
        }
    }
    tx.commit().expect("test setup");
}

fn set_meta(conn: &Connection, next_seq: i64) {
    for (key, value) in [
        ("next_seq", next_seq),
        ("cursor", next_seq / 2),
        ("clean_stop", 1),
        ("max", i64::MAX),
        ("min", i64::MIN),
    ] {
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![key, value],
        )
        .expect("test setup");
    }
}

/// A new WAL-mode database at `path` with the daemon's schema and data.
fn create_db(path: &Path, page_size: u32, rows: i64, names: i64) -> Connection {
    let conn = Connection::open(path).expect("test setup");
    conn.pragma_update(None, "page_size", page_size)
        .expect("test setup");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("test setup");
    assert_eq!(mode, "wal");
    conn.execute_batch(SCHEMA).expect("test setup");
    insert_records(&conn, 1..=rows);
    insert_names(&conn, 0..names);
    set_meta(&conn, rows + 1);
    conn
}

fn checkpoint(conn: &Connection) {
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("test setup");
    assert_eq!(busy, 0);
}

fn expected_records(conn: &Connection, from_seq: i64) -> Vec<Cell> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, device, received_at, device_time, state, flags, metrics, crc \
             FROM records WHERE seq >= ?1 ORDER BY seq",
        )
        .expect("test setup");
    let int = |v: Option<i64>| v.map_or(Value::Null, Value::Int);
    stmt.query_map([from_seq], |r| {
        Ok(Cell {
            rowid: Some(r.get(0)?),
            values: vec![
                Value::Null,
                Value::Int(r.get(1)?),
                Value::Int(r.get(2)?),
                int(r.get(3)?),
                Value::Int(r.get(4)?),
                Value::Int(r.get(5)?),
                Value::Blob(r.get(6)?),
                int(r.get(7)?),
            ],
        })
    })
    .expect("test setup")
    .collect::<Result<_, _>>()
    .expect("test setup")
}

/// Names as rows of the `names` table b-tree (kind, id, name).
fn expected_names(conn: &Connection) -> Vec<Cell> {
    let mut stmt = conn
        .prepare("SELECT kind, id, name FROM names")
        .expect("test setup");
    let cells = stmt
        .query_map([], |r| {
            Ok(Cell {
                rowid: None,
                values: vec![
                    Value::Int(r.get(0)?),
                    Value::Int(r.get(1)?),
                    Value::Text(r.get::<_, String>(2)?.into_bytes()),
                ],
            })
        })
        .expect("test setup")
        .collect::<Result<_, _>>()
        .expect("test setup");
    sorted(cells)
}

fn expected_meta(conn: &Connection) -> Vec<Cell> {
    let mut stmt = conn
        .prepare("SELECT key, value FROM meta")
        .expect("test setup");
    let cells = stmt
        .query_map([], |r| {
            Ok(Cell {
                rowid: None,
                values: vec![
                    Value::Text(r.get::<_, String>(0)?.into_bytes()),
                    Value::Int(r.get(1)?),
                ],
            })
        })
        .expect("test setup")
        .collect::<Result<_, _>>()
        .expect("test setup");
    sorted(cells)
}

fn sorted(mut cells: Vec<Cell>) -> Vec<Cell> {
    cells.sort_by_cached_key(|c| format!("{c:?}"));
    cells
}

/// Opens `path` and reads every unit.
fn scan(path: &Path, hint: Option<u32>) -> (RawFile, Vec<Page>) {
    let mut raw = RawFile::open(path, hint).expect("test setup");
    let pages = (0..raw.units())
        .map(|i| raw.read_unit(i).expect("test setup"))
        .collect();
    (raw, pages)
}

fn is_record(cell: &Cell) -> bool {
    cell.rowid.is_some() && cell.values.len() == 8 && cell.values[0] == Value::Null
}

/// Records cells (table leaf, 8 values) of the pages `pick` accepts,
/// sorted by rowid.
fn records_in(pages: &[Page], pick: impl Fn(&Page) -> bool) -> Vec<Cell> {
    let mut cells: Vec<Cell> = pages
        .iter()
        .filter(|p| p.kind == PageKind::TableLeaf && pick(p))
        .flat_map(|p| p.cells.iter().filter(|c| is_record(c)).cloned())
        .collect();
    cells.sort_by_key(|c| c.rowid);
    cells
}

/// Index cells of the given shape: `names` table rows (Int, Int, Text),
/// `names` unique index entries (Int, Text, Int) or `meta` rows (Text,
/// Int).
fn index_cells(pages: &[Page], shape: &[fn(&Value) -> bool]) -> Vec<Cell> {
    let cells = pages
        .iter()
        .filter(|p| matches!(p.kind, PageKind::IndexLeaf | PageKind::IndexInterior))
        .flat_map(|p| p.cells.iter())
        .filter(|c| {
            c.rowid.is_none()
                && c.values.len() == shape.len()
                && c.values.iter().zip(shape).all(|(v, ok)| ok(v))
        })
        .cloned()
        .collect();
    sorted(cells)
}

fn int(v: &Value) -> bool {
    matches!(v, Value::Int(_))
}

fn text(v: &Value) -> bool {
    matches!(v, Value::Text(_))
}

struct Fixture {
    /// The checkpointed database file (no WAL).
    db: Vec<u8>,
    records: Vec<Cell>,
    names: Vec<Cell>,
    meta: Vec<Cell>,
    records_root: u32,
    /// The raw scan of the sound file.
    sound: Vec<Page>,
}

/// The shared sound database: 4096-byte pages, built once.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("buffer.sqlite");
        let conn = create_db(&path, 4096, FIXTURE_ROWS, FIXTURE_NAMES);
        checkpoint(&conn);
        let records = expected_records(&conn, 0);
        let names = expected_names(&conn);
        let meta = expected_meta(&conn);
        let records_root: u32 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'records'",
                [],
                |r| r.get(0),
            )
            .expect("test setup");
        drop(conn);
        assert!(
            !wal_path(&path).exists()
                || std::fs::metadata(wal_path(&path))
                    .expect("test setup")
                    .len()
                    == 0
        );
        let db = std::fs::read(&path).expect("test setup");
        let (raw, sound) = scan(&path, None);
        assert_eq!(raw.page_size(), 4096);
        assert_eq!(raw.page_size_from(), PageSizeFrom::Header);
        assert_eq!(raw.wal_frames(), 0);
        assert!(!raw.wal_ignored());
        Fixture {
            db,
            records,
            names,
            meta,
            records_root,
            sound,
        }
    })
}

/// Writes `db` (and `wal`) into `dir` and returns the database path.
fn write_files(dir: &Path, db: &[u8], wal: Option<&[u8]>) -> PathBuf {
    let path = dir.join("buffer.sqlite");
    std::fs::write(&path, db).expect("test setup");
    if let Some(wal) = wal {
        std::fs::write(wal_path(&path), wal).expect("test setup");
    }
    path
}

// ---- real files --------------------------------------------------

#[test]
fn sound_file_scan_finds_exactly_the_selected_rows() {
    let f = fixture();
    assert_eq!(f.db.len() % 4096, 0);
    assert_eq!(f.sound.len(), f.db.len() / 4096);
    for (i, page) in f.sound.iter().enumerate() {
        assert_eq!(page.number as usize, i + 1);
        assert_eq!(page.source, Source::File);
        assert_eq!(page.bad_cells, 0, "page {}", page.number);
    }
    assert_eq!(records_in(&f.sound, |_| true), f.records);
    assert_eq!(f.records.len() as i64, FIXTURE_ROWS);
    // The names table, its unique index (kind, name, id) and meta.
    assert_eq!(index_cells(&f.sound, &[int, int, text]), f.names);
    let index: Vec<Cell> = f
        .names
        .iter()
        .map(|c| Cell {
            rowid: None,
            values: vec![
                c.values[0].clone(),
                c.values[2].clone(),
                c.values[1].clone(),
            ],
        })
        .collect();
    assert_eq!(index_cells(&f.sound, &[int, text, int]), sorted(index));
    assert_eq!(index_cells(&f.sound, &[text, int]), f.meta);
    // The fixture is deep enough to exercise interior pages: a table
    // interior page other than the root, and index interior pages whose
    // entries are rows.
    let interior: Vec<u32> = f
        .sound
        .iter()
        .filter(|p| p.kind == PageKind::TableInterior)
        .map(|p| p.number)
        .collect();
    assert!(
        interior.iter().any(|&n| n != f.records_root),
        "{interior:?}"
    );
    assert!(
        f.sound
            .iter()
            .any(|p| p.kind == PageKind::IndexInterior && !p.cells.is_empty())
    );
    // Page 1 is sqlite_master, a table leaf here.
    assert_eq!(f.sound[0].kind, PageKind::TableLeaf);
    assert!(f.sound[0].cells.iter().any(|c| c.values.first()
        == Some(&Value::Text(b"table".to_vec()))
        && c.values.get(1) == Some(&Value::Text(b"records".to_vec()))));
}

#[test]
fn rows_only_in_the_wal_are_found_in_wal_frames() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &f.db, None);
    let conn = Connection::open(&path).expect("test setup");
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .expect("test setup");
    let first_new = FIXTURE_ROWS + 1;
    insert_records(&conn, first_new..=FIXTURE_ROWS + 3000);
    insert_names(&conn, FIXTURE_NAMES..FIXTURE_NAMES + 10);
    set_meta(&conn, FIXTURE_ROWS + 3001);
    let new_rows = expected_records(&conn, first_new);
    let names = expected_names(&conn);
    let meta = expected_meta(&conn);
    assert_eq!(new_rows.len(), 3000);

    // Read while the connection still holds the WAL un-checkpointed.
    let (raw, pages) = scan(&path, None);
    assert!(!raw.wal_ignored());
    assert!(raw.wal_frames() > 0);
    assert_eq!(raw.page_size_from(), PageSizeFrom::Header);
    assert_eq!(raw.units(), raw.file_pages() + raw.wal_frames());
    let (file, wal): (Vec<Page>, Vec<Page>) =
        pages.into_iter().partition(|p| p.source == Source::File);
    assert_eq!(file.len() as u64, raw.file_pages());
    for (i, page) in wal.iter().enumerate() {
        assert_eq!(page.source, Source::Wal { frame: i as u32 });
    }
    // The file still holds exactly the checkpointed rows...
    assert_eq!(records_in(&file, |_| true), f.records);
    // ...and every new row is in some WAL frame (a page may be in
    // several frames: keep the newest copy of each rowid).
    let mut found: HashMap<i64, Cell> = HashMap::new();
    for cell in records_in(&wal, |_| true) {
        found.insert(cell.rowid.expect("test setup"), cell);
    }
    for row in &new_rows {
        assert_eq!(found.get(&row.rowid.expect("test setup")), Some(row));
    }
    // The new names and the new meta values are in the WAL too.
    let wal_names = index_cells(&wal, &[int, int, text]);
    for name in names
        .iter()
        .filter(|c| matches!(c.values[1], Value::Int(id) if id >= FIXTURE_NAMES))
    {
        assert!(wal_names.contains(name), "{name:?}");
    }
    let wal_meta = index_cells(&wal, &[text, int]);
    for row in &meta {
        assert!(wal_meta.contains(row), "{row:?}");
    }

    // Same files with the database header zeroed: the page size now
    // comes from the WAL, and the WAL rows are still found.
    let copy = tempfile::tempdir().expect("test setup");
    let mut db = std::fs::read(&path).expect("test setup");
    db[..100].fill(0);
    let wal_bytes = std::fs::read(wal_path(&path)).expect("test setup");
    let copy_path = write_files(copy.path(), &db, Some(&wal_bytes));
    let (raw2, pages2) = scan(&copy_path, None);
    assert_eq!(raw2.page_size(), 4096);
    assert_eq!(raw2.page_size_from(), PageSizeFrom::Wal);
    assert_eq!(raw2.wal_frames(), raw.wal_frames());
    let wal2: Vec<Page> = pages2
        .into_iter()
        .filter(|p| p.source != Source::File)
        .collect();
    assert_eq!(wal2, wal);
    drop(conn);
}

// ---- damage ------------------------------------------------------

/// Scans a damaged copy of the fixture and checks that every page not
/// in `damaged` is read exactly as from the sound file.
fn check_damage(db: &[u8], wal: Option<&[u8]>, damaged: &BTreeSet<u32>) -> RawFile {
    let f = fixture();
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), db, wal);
    let (raw, pages) = scan(&path, None);
    assert_eq!(raw.page_size(), 4096);
    assert_eq!(raw.file_pages(), db.len() as u64 / 4096);
    let mut lost_rows = 0;
    for sound in &f.sound {
        let Some(page) = pages.get(sound.number as usize - 1) else {
            continue; // beyond a truncation: counted in `damaged`
        };
        if damaged.contains(&sound.number) {
            lost_rows += sound.cells.len();
            continue;
        }
        assert_eq!(page, sound, "page {} changed", sound.number);
    }
    // Sanity: the damage did not remove the whole file.
    assert!(lost_rows < f.records.len());
    raw
}

fn zero_page(db: &mut [u8], number: u32) {
    let start = (number as usize - 1) * 4096;
    db[start..start + 4096].fill(0);
}

#[test]
fn damage_zeroed_header() {
    let mut db = fixture().db.clone();
    db[..100].fill(0);
    let raw = check_damage(&db, None, &BTreeSet::from([1]));
    assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
    // Page 1's b-tree (sqlite_master) still parses after the header.
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &db, None);
    let mut raw = RawFile::open(&path, Some(4096)).expect("test setup");
    assert_eq!(raw.page_size_from(), PageSizeFrom::Hint);
    let page1 = raw.read_unit(0).expect("test setup");
    assert_eq!(page1.kind, PageKind::TableLeaf);
    assert_eq!(page1.cells, fixture().sound[0].cells);
}

#[test]
fn damage_zeroed_page_1() {
    let mut db = fixture().db.clone();
    zero_page(&mut db, 1);
    let raw = check_damage(&db, None, &BTreeSet::from([1]));
    assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &db, None);
    assert_eq!(scan(&path, None).1[0].kind, PageKind::Zeroed);
}

#[test]
fn damage_zeroed_records_root() {
    let f = fixture();
    let mut db = f.db.clone();
    zero_page(&mut db, f.records_root);
    let raw = check_damage(&db, None, &BTreeSet::from([f.records_root]));
    assert_eq!(raw.page_size_from(), PageSizeFrom::Header);
    // The root held no rows: all of them are still found.
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &db, None);
    assert_eq!(records_in(&scan(&path, None).1, |_| true), f.records);
}

#[test]
fn damage_zeroed_interior_page() {
    let f = fixture();
    let interior = f
        .sound
        .iter()
        .find(|p| p.kind == PageKind::TableInterior && p.number != f.records_root)
        .expect("test setup")
        .number;
    let mut db = f.db.clone();
    zero_page(&mut db, interior);
    check_damage(&db, None, &BTreeSet::from([interior]));
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &db, None);
    assert_eq!(records_in(&scan(&path, None).1, |_| true), f.records);
}

#[test]
fn damage_truncated_to_half() {
    let f = fixture();
    let half = f.db.len() / 2 + 1234; // a trailing partial page too
    let db = f.db[..half].to_vec();
    let kept = (half / 4096) as u32;
    let damaged: BTreeSet<u32> = (kept + 1..=f.sound.len() as u32).collect();
    let raw = check_damage(&db, None, &damaged);
    assert_eq!(raw.file_pages(), u64::from(kept));
    assert_eq!(raw.page_size_from(), PageSizeFrom::Header);
}

#[test]
fn damage_random_flipped_bytes() {
    let mut db = fixture().db.clone();
    let mut rng = Rng(0x5eed_0001);
    let mut damaged = BTreeSet::new();
    for _ in 0..100 {
        let at = rng.below(db.len() as u64) as usize;
        db[at] ^= 1 + rng.below(255) as u8;
        damaged.insert((at / 4096) as u32 + 1);
    }
    check_damage(&db, None, &damaged);
}

#[test]
fn damage_flipped_bytes_in_the_header_page() {
    // Flips confined to page 1, header included: the page size is still
    // found (from the header when it survives, else guessed).
    for seed in 0..8 {
        let mut db = fixture().db.clone();
        let mut rng = Rng(seed);
        for _ in 0..20 {
            let at = rng.below(4096) as usize;
            db[at] ^= 1 + rng.below(255) as u8;
        }
        check_damage(&db, None, &BTreeSet::from([1]));
    }
}

#[test]
fn damage_garbage_wal() {
    let f = fixture();
    let mut rng = Rng(7);
    let garbage = rng.bytes(50_000);
    let raw = check_damage(&f.db, Some(&garbage), &BTreeSet::new());
    assert!(raw.wal_ignored());
    assert_eq!(raw.wal_frames(), 0);
    assert_eq!(raw.page_size_from(), PageSizeFrom::Header);
    // A WAL with a right magic but a broken header checksum.
    let mut wal = make_wal(4096, false, (1, 2), &[(2, 3, vec![0; 4096])]);
    wal[12] ^= 1; // checkpoint sequence, covered by the checksum
    let raw = check_damage(&f.db, Some(&wal), &BTreeSet::new());
    assert!(raw.wal_ignored());
    assert_eq!(raw.units(), raw.file_pages());
    // Garbage WAL and zeroed header: the size is guessed.
    let mut db = f.db.clone();
    db[..100].fill(0);
    let raw = check_damage(&db, Some(&garbage), &BTreeSet::from([1]));
    assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
}

// ---- page sizes ----------------------------------------------------

#[test]
fn guess_finds_non_default_page_sizes() {
    for (size, rows) in [(512, 600), (1024, 1500), (8192, 2500), (65536, 5000)] {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("buffer.sqlite");
        let conn = create_db(&path, size, rows, 40);
        checkpoint(&conn);
        let records = expected_records(&conn, 0);
        drop(conn);
        let mut db = std::fs::read(&path).expect("test setup");
        assert_eq!(db.len() % size as usize, 0);
        assert!(db.len() / size as usize >= 3, "{size}: too few pages");
        db[..100].fill(0);
        std::fs::write(&path, &db).expect("test setup");

        let (raw, pages) = scan(&path, None);
        assert_eq!(raw.page_size(), size, "guess for {size}");
        assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
        assert_eq!(records_in(&pages, |_| true), records, "{size}");

        let raw = RawFile::open(&path, Some(size)).expect("test setup");
        assert_eq!(
            (raw.page_size(), raw.page_size_from()),
            (size, PageSizeFrom::Hint)
        );
        // An invalid hint is ignored.
        let raw = RawFile::open(&path, Some(size + 1)).expect("test setup");
        assert_eq!(
            (raw.page_size(), raw.page_size_from()),
            (size, PageSizeFrom::Guessed)
        );
    }
}

#[test]
fn nothing_parses_means_4096() {
    let dir = tempfile::tempdir().expect("test setup");
    for len in [0, 100, 4096 * 3, 300_000] {
        let path = write_files(dir.path(), &vec![0; len], None);
        let raw = RawFile::open(&path, None).expect("test setup");
        assert_eq!(raw.page_size(), 4096);
        assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
        assert_eq!(raw.file_pages(), len as u64 / 4096);
    }
    let path = write_files(dir.path(), &Rng(3).bytes(2_000_000), None);
    assert_eq!(
        RawFile::open(&path, None).expect("test setup").page_size(),
        4096
    );
}

#[test]
fn header_trust() {
    let mut head = vec![0u8; 100];
    head[..16].copy_from_slice(MAGIC);
    head[16..18].copy_from_slice(&4096u16.to_be_bytes());
    head[21..24].copy_from_slice(&[64, 32, 32]);
    assert_eq!(header_page_size(&head), Some((4096, 0)));
    head[20] = 32;
    assert_eq!(header_page_size(&head), Some((4096, 32)));
    head[16..18].copy_from_slice(&1u16.to_be_bytes());
    assert_eq!(header_page_size(&head), Some((65536, 32)));
    head[16..18].copy_from_slice(&512u16.to_be_bytes());
    assert_eq!(header_page_size(&head), Some((512, 32)), "usable 480");
    head[20] = 33;
    assert_eq!(header_page_size(&head), None, "usable 479 < 480");
    head[20] = 0;
    assert_eq!(header_page_size(&head), Some((512, 0)));
    for bad in [0u16, 256, 1000, 3000] {
        head[16..18].copy_from_slice(&bad.to_be_bytes());
        assert_eq!(header_page_size(&head), None, "{bad}");
    }
    head[16..18].copy_from_slice(&4096u16.to_be_bytes());
    head[22] = 33;
    assert_eq!(header_page_size(&head), None);
    head[22] = 32;
    head[3] = b'X';
    assert_eq!(header_page_size(&head), None);
    assert_eq!(header_page_size(&head[..50]), None);
    assert_eq!(usable_size(4096, 32), 4064);
    assert_eq!(usable_size(512, 100), 512);
}

// ---- WAL rules -----------------------------------------------------

/// A WAL with correct checksums: frames of (page number, commit size,
/// page).
fn make_wal(
    page_size: u32,
    big_endian: bool,
    salts: (u32, u32),
    frames: &[(u32, u32, Vec<u8>)],
) -> Vec<u8> {
    let mut wal = Vec::new();
    let magic = if big_endian {
        WAL_MAGIC_BE
    } else {
        WAL_MAGIC_LE
    };
    for word in [magic, WAL_VERSION, page_size, 0, salts.0, salts.1] {
        wal.extend_from_slice(&word.to_be_bytes());
    }
    let mut sum = wal_checksum(big_endian, &wal, (0, 0));
    wal.extend_from_slice(&sum.0.to_be_bytes());
    wal.extend_from_slice(&sum.1.to_be_bytes());
    for (number, commit, page) in frames {
        assert_eq!(page.len(), page_size as usize);
        let mut header = Vec::new();
        for word in [*number, *commit, salts.0, salts.1] {
            header.extend_from_slice(&word.to_be_bytes());
        }
        sum = wal_checksum(big_endian, &header[..8], sum);
        sum = wal_checksum(big_endian, page, sum);
        header.extend_from_slice(&sum.0.to_be_bytes());
        header.extend_from_slice(&sum.1.to_be_bytes());
        wal.extend_from_slice(&header);
        wal.extend_from_slice(page);
    }
    wal
}

fn frame_start(frame: usize, page_size: usize) -> usize {
    32 + frame * (24 + page_size)
}

#[test]
fn wal_frames_follow_salts_checksums_and_commits() {
    let dir = tempfile::tempdir().expect("test setup");
    let db = vec![0u8; 3 * 1024];
    let leaf = |rowid: i64| {
        let record = encode_record(&[Value::Null, Value::Int(rowid)]);
        build_page(1024, 2, 0x0D, &[table_leaf_cell(rowid, &record)])
    };
    let frames: Vec<(u32, u32, Vec<u8>)> = vec![
        (2, 0, leaf(1)),
        (3, 3, leaf(2)),
        (2, 0, leaf(3)),
        (1, 4, build_page(1024, 1, 0x0D, &[])),
        (2, 0, leaf(4)),
    ];
    for big_endian in [false, true] {
        let wal = make_wal(1024, big_endian, (0xdead, 0xbeef), &frames);
        let path = write_files(dir.path(), &db, Some(&wal));
        let (raw, pages) = scan(&path, None);
        assert_eq!(raw.page_size_from(), PageSizeFrom::Wal);
        assert_eq!(raw.page_size(), 1024);
        assert!(!raw.wal_ignored());
        assert_eq!(raw.file_pages(), 3);
        // Frames 0..4 are committed; frame 4 has no commit after it.
        assert_eq!(raw.wal_frames(), 4);
        let wal_pages: Vec<(u32, Source, Option<i64>)> = pages[3..]
            .iter()
            .map(|p| (p.number, p.source, p.cells.first().and_then(|c| c.rowid)))
            .collect();
        assert_eq!(
            wal_pages,
            [
                (2, Source::Wal { frame: 0 }, Some(1)),
                (3, Source::Wal { frame: 1 }, Some(2)),
                (2, Source::Wal { frame: 2 }, Some(3)),
                (1, Source::Wal { frame: 3 }, None),
            ]
        );
        assert_eq!(pages[6].kind, PageKind::TableLeaf);

        // A damaged page in frame 2 breaks the chain: only up to the
        // commit in frame 1.
        let mut broken = wal.clone();
        broken[frame_start(2, 1024) + 24 + 500] ^= 0x40;
        let path = write_files(dir.path(), &db, Some(&broken));
        assert_eq!(
            RawFile::open(&path, None).expect("test setup").wal_frames(),
            2
        );
        // A stale frame (other salts) ends the WAL there too.
        let mut stale = wal.clone();
        stale[frame_start(3, 1024) + 8] ^= 1;
        let path = write_files(dir.path(), &db, Some(&stale));
        assert_eq!(
            RawFile::open(&path, None).expect("test setup").wal_frames(),
            2
        );
        // A trailing partial frame is ignored.
        let mut partial = wal.clone();
        partial.truncate(frame_start(4, 1024) + 100);
        let path = write_files(dir.path(), &db, Some(&partial));
        assert_eq!(
            RawFile::open(&path, None).expect("test setup").wal_frames(),
            4
        );
    }
    // Page number 0 is invalid.
    let wal = make_wal(1024, false, (1, 2), &[(2, 2, leaf(1)), (0, 3, leaf(2))]);
    let path = write_files(dir.path(), &db, Some(&wal));
    assert_eq!(
        RawFile::open(&path, None).expect("test setup").wal_frames(),
        1
    );
    // A valid header without frames still gives the page size.
    let wal = make_wal(1024, false, (1, 2), &[]);
    let path = write_files(dir.path(), &db, Some(&wal));
    let raw = RawFile::open(&path, None).expect("test setup");
    assert_eq!(
        (raw.page_size_from(), raw.wal_frames()),
        (PageSizeFrom::Wal, 0)
    );
    // Bad version, bad page size, short header: ignored.
    for (at, value) in [(4usize, 3007001u32), (8, 1000)] {
        let mut wal = make_wal(1024, false, (1, 2), &[]);
        wal[at..at + 4].copy_from_slice(&value.to_be_bytes());
        let path = write_files(dir.path(), &db, Some(&wal));
        assert!(
            RawFile::open(&path, None)
                .expect("test setup")
                .wal_ignored()
        );
    }
    let path = write_files(dir.path(), &db, Some(&[0x37, 0x7f, 0x06, 0x82]));
    assert!(
        RawFile::open(&path, None)
            .expect("test setup")
            .wal_ignored()
    );
    // An empty WAL is not ignored.
    let path = write_files(dir.path(), &db, Some(&[]));
    let raw = RawFile::open(&path, None).expect("test setup");
    assert!(!raw.wal_ignored());
    assert_eq!(raw.wal_frames(), 0);
}

#[test]
fn read_unit_out_of_range_is_an_error() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), &f.db, None);
    let mut raw = RawFile::open(&path, None).expect("test setup");
    for index in [raw.units(), raw.units() + 1, u64::MAX] {
        let err = raw.read_unit(index).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
    // Any index can be read first (resumable scans).
    let last = raw.units() - 1;
    assert_eq!(
        raw.read_unit(last).expect("test setup"),
        f.sound[last as usize]
    );
    assert_eq!(raw.read_unit(0).expect("test setup"), f.sound[0]);
}

// ---- pages and records by hand ---------------------------------------

fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v > 0x00ff_ffff_ffff_ffff {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut x = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = (x & 0x7f) as u8 | 0x80;
            x >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut groups = Vec::new();
    let mut x = v;
    loop {
        groups.push((x & 0x7f) as u8);
        x >>= 7;
        if x == 0 {
            break;
        }
    }
    groups.reverse();
    let last = groups.len() - 1;
    for (i, g) in groups.iter().enumerate() {
        out.push(if i < last { g | 0x80 } else { *g });
    }
}

/// A record in SQLite's encoding (integers in their smallest width).
fn encode_record(values: &[Value]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut body = Vec::new();
    for value in values {
        let serial: u64 = match value {
            Value::Null => 0,
            Value::Int(0) => 8,
            Value::Int(1) => 9,
            Value::Int(i) => {
                let (serial, width) = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 6), (6, 8)]
                    .into_iter()
                    .find(|&(_, w)| {
                        w == 8 || (-(1i64 << (8 * w - 1))..(1i64 << (8 * w - 1))).contains(i)
                    })
                    .expect("test setup");
                body.extend_from_slice(&i.to_be_bytes()[8 - width..]);
                serial
            }
            Value::Real(r) => {
                body.extend_from_slice(&r.to_bits().to_be_bytes());
                7
            }
            Value::Text(t) => {
                body.extend_from_slice(t);
                13 + 2 * t.len() as u64
            }
            Value::Blob(b) => {
                body.extend_from_slice(b);
                12 + 2 * b.len() as u64
            }
        };
        put_varint(&mut types, serial);
    }
    let mut header_len = types.len() + 1;
    loop {
        let mut h = Vec::new();
        put_varint(&mut h, header_len as u64);
        if h.len() + types.len() == header_len {
            h.extend_from_slice(&types);
            h.extend_from_slice(&body);
            return h;
        }
        header_len = h.len() + types.len();
    }
}

fn table_leaf_cell(rowid: i64, record: &[u8]) -> Vec<u8> {
    let mut cell = Vec::new();
    put_varint(&mut cell, record.len() as u64);
    put_varint(&mut cell, rowid as u64);
    cell.extend_from_slice(record);
    cell
}

fn index_leaf_cell(record: &[u8]) -> Vec<u8> {
    let mut cell = Vec::new();
    put_varint(&mut cell, record.len() as u64);
    cell.extend_from_slice(record);
    cell
}

/// A b-tree page with `cells` packed at the end, pointers in order.
fn build_page(size: usize, number: u32, kind: u8, cells: &[Vec<u8>]) -> Vec<u8> {
    let mut page = vec![0u8; size];
    let hdr = if number == 1 { 100 } else { 0 };
    let header_len = if kind == 0x02 || kind == 0x05 { 12 } else { 8 };
    let mut content = size;
    page[hdr] = kind;
    page[hdr + 3..hdr + 5].copy_from_slice(&(cells.len() as u16).to_be_bytes());
    for (i, cell) in cells.iter().enumerate() {
        content -= cell.len();
        page[content..content + cell.len()].copy_from_slice(cell);
        let at = hdr + header_len + 2 * i;
        page[at..at + 2].copy_from_slice(&(content as u16).to_be_bytes());
    }
    page[hdr + 5..hdr + 7].copy_from_slice(&(content as u16).to_be_bytes());
    page
}

#[test]
fn varints_of_every_length() {
    let mut values = vec![0, 1, 127, 128, 16_383, 16_384, u64::MAX, i64::MIN as u64];
    for bits in 0..64 {
        values.push(1 << bits);
        values.push((1 << bits) - 1);
    }
    for v in values {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(varint(&buf, 0), Some((v, buf.len())), "{v}");
        // Cut short: never read past the end.
        assert_eq!(varint(&buf[..buf.len() - 1], 0), None);
    }
    assert_eq!(varint(&[0xff; 9], 0), Some((u64::MAX, 9)));
    assert_eq!(varint(&[0x81, 0x00], 0), Some((128, 2)));
    assert_eq!(varint(&[1, 2], usize::MAX), None);
}

#[test]
fn record_values_of_every_serial_type() {
    let mut values = vec![
        Value::Null,
        Value::Int(0),
        Value::Int(1),
        Value::Real(-2.5),
        Value::Real(f64::MAX),
        Value::Text(b"hello".to_vec()),
        Value::Text(Vec::new()),
        Value::Blob(vec![0, 1, 2, 255]),
        Value::Blob(Vec::new()),
    ];
    values.extend(FLAGS.iter().map(|&i| Value::Int(i)));
    let record = encode_record(&values);
    assert_eq!(parse_record(&record, true), Some(values.clone()));
    assert_eq!(parse_record(&record, false), Some(Vec::new()));

    // In cells, on every kind of page that holds payloads.
    let page = build_page(4096, 5, 0x0D, &[table_leaf_cell(-7, &record)]);
    let (parsed, good) = parse_page(&page, 5, Source::File, 4096, true);
    assert_eq!(
        (parsed.kind, good, parsed.bad_cells),
        (PageKind::TableLeaf, 1, 0)
    );
    assert_eq!(
        parsed.cells,
        [Cell {
            rowid: Some(-7),
            values: values.clone()
        }]
    );
    let page = build_page(4096, 5, 0x0A, &[index_leaf_cell(&record)]);
    let parsed = parse_page(&page, 5, Source::File, 4096, true).0;
    assert_eq!(
        parsed.cells,
        [Cell {
            rowid: None,
            values: values.clone()
        }]
    );
    let mut interior_cell = 9u32.to_be_bytes().to_vec();
    interior_cell.extend(index_leaf_cell(&record));
    let page = build_page(4096, 5, 0x02, &[interior_cell]);
    let parsed = parse_page(&page, 5, Source::File, 4096, true).0;
    assert_eq!(parsed.kind, PageKind::IndexInterior);
    assert_eq!(
        parsed.cells,
        [Cell {
            rowid: None,
            values
        }]
    );
    let mut table_interior = 9u32.to_be_bytes().to_vec();
    put_varint(&mut table_interior, 1000);
    let page = build_page(4096, 5, 0x05, &[table_interior]);
    let (parsed, good) = parse_page(&page, 5, Source::File, 4096, true);
    assert_eq!(
        (parsed.kind, good, parsed.bad_cells),
        (PageKind::TableInterior, 1, 0)
    );
    assert!(parsed.cells.is_empty());
}

#[test]
fn malformed_cells_are_counted_not_returned() {
    let good = encode_record(&[Value::Null, Value::Int(42), Value::Blob(vec![1; 30])]);
    let mut cells = vec![table_leaf_cell(1, &good)];
    // Reserved serial type 10.
    cells.push(table_leaf_cell(2, &[2, 10]));
    // Header length beyond the payload.
    cells.push(table_leaf_cell(3, &[9, 1, 1]));
    // Header length shorter than its own varint.
    cells.push(table_leaf_cell(4, &[0, 1]));
    // Body sizes not adding up (one byte too many, one too few).
    cells.push(table_leaf_cell(5, &[2, 1, 7, 8]));
    cells.push(table_leaf_cell(6, &[2, 4, 7]));
    // No columns.
    cells.push(table_leaf_cell(7, &[1]));
    // 65 columns (NULLs): too many.
    let mut wide = vec![66];
    wide.extend([0u8; 65]);
    cells.push(table_leaf_cell(8, &wide));
    // A serial type varint running past the header.
    cells.push(table_leaf_cell(9, &[2, 0x81]));
    // 64 columns is fine.
    let mut wide = vec![65];
    wide.extend([0u8; 64]);
    cells.push(table_leaf_cell(10, &wide));
    // Overflow: P > U - 35 (1024 - 35 = 989).
    let big = encode_record(&[Value::Blob(vec![7; 990])]);
    assert!(big.len() > 989);
    let mut overflow = Vec::new();
    put_varint(&mut overflow, big.len() as u64);
    put_varint(&mut overflow, 11);
    overflow.extend_from_slice(&big[..40]); // the local part, whatever it is
    cells.push(overflow);
    let mut page = build_page(1024, 3, 0x0D, &cells);
    let count = cells.len();
    // Extra pointers: beyond U, into the header, a duplicate, and one
    // whose payload would run past U.
    let extra: [u16; 4] = [1024, 4, u16::from_be_bytes([page[8], page[9]]), 1020];
    page[3..5].copy_from_slice(&((count + extra.len()) as u16).to_be_bytes());
    for (i, p) in extra.iter().enumerate() {
        let at = 8 + 2 * (count + i);
        page[at..at + 2].copy_from_slice(&p.to_be_bytes());
    }
    page[1020..1024].copy_from_slice(&[0x20, 0x01, 0x05, 0x01]);
    let (parsed, good_count) = parse_page(&page, 3, Source::File, 1024, true);
    let rowids: Vec<Option<i64>> = parsed.cells.iter().map(|c| c.rowid).collect();
    assert_eq!(rowids, [Some(1), Some(10)]);
    assert_eq!(good_count, 2);
    assert_eq!(parsed.bad_cells as usize, count + extra.len() - 2);
    // With reserved bytes the usable area shrinks: the last cell (at
    // the page end) is now beyond U.
    let (parsed, _) = parse_page(&page, 3, Source::File, 1000, true);
    assert!(parsed.cells.iter().all(|c| c.rowid != Some(1)));
}

#[test]
fn cell_count_beyond_the_page() {
    let record = encode_record(&[Value::Null, Value::Int(5)]);
    let mut page = build_page(512, 2, 0x0D, &[table_leaf_cell(5, &record)]);
    page[3..5].copy_from_slice(&u16::MAX.to_be_bytes());
    let (parsed, _) = parse_page(&page, 2, Source::File, 512, true);
    assert_eq!(parsed.cells.len(), 1);
    // Pointers fitting in 8..512 are read (the rest of the array reads
    // zeros or the cell itself: bad); the others are counted bad.
    assert_eq!(parsed.bad_cells, u32::from(u16::MAX) - 1);
}

#[test]
fn overlapping_pointers_cannot_multiply_the_payload() {
    // One large cell, and the whole pointer array pointing at it.
    let record = encode_record(&[Value::Blob(vec![9; 60_000])]);
    let cell = table_leaf_cell(3, &record);
    let mut page = build_page(65536, 2, 0x0D, &[cell]);
    let start = u16::from_be_bytes([page[8], page[9]]);
    let pointers = (usize::from(start) - 8) / 2;
    page[3..5].copy_from_slice(&(pointers as u16).to_be_bytes());
    for i in 0..pointers {
        page[8 + 2 * i..10 + 2 * i].copy_from_slice(&start.to_be_bytes());
    }
    let (parsed, _) = parse_page(&page, 2, Source::File, 65536, true);
    assert_eq!(parsed.cells.len(), 1);
    assert_eq!(parsed.bad_cells as usize, pointers - 1);
}

#[test]
fn page_1_btree_is_after_the_header() {
    let record = encode_record(&[Value::Text(b"table".to_vec()), Value::Int(2)]);
    let mut page = build_page(4096, 1, 0x0D, &[table_leaf_cell(1, &record)]);
    let parsed = parse_page(&page, 1, Source::File, 4096, true).0;
    assert_eq!((parsed.kind, parsed.cells.len()), (PageKind::TableLeaf, 1));
    // The same bytes as another page number: offset 0 is not a b-tree.
    assert_eq!(
        parse_page(&page, 2, Source::File, 4096, true).0.kind,
        PageKind::Other
    );
    page[100] = 0x33;
    assert_eq!(
        parse_page(&page, 1, Source::File, 4096, true).0.kind,
        PageKind::Other
    );
    let zero = vec![0u8; 4096];
    assert_eq!(
        parse_page(&zero, 1, Source::File, 4096, true).0.kind,
        PageKind::Zeroed
    );
    assert_eq!(
        parse_page(&zero, 9, Source::File, 4096, true).0.kind,
        PageKind::Zeroed
    );
    // A b-tree header that does not fit the (tiny) area.
    assert_eq!(
        parse_page(&page[..104], 1, Source::File, 104, true).0.kind,
        PageKind::Other
    );
}

// ---- property tests ----------------------------------------------------

/// Opens `db`/`wal` and reads every unit; checks the out-of-range
/// errors.
fn open_and_read_all(db: &[u8], wal: Option<&[u8]>, hint: Option<u32>) {
    let dir = tempfile::tempdir().expect("test setup");
    let path = write_files(dir.path(), db, wal);
    let mut raw = RawFile::open(&path, hint).expect("test setup");
    assert_eq!(raw.units(), raw.file_pages() + raw.wal_frames());
    assert_eq!(
        raw.file_pages(),
        db.len() as u64 / u64::from(raw.page_size())
    );
    assert!(valid_page_size(raw.page_size()));
    for index in 0..raw.units() {
        let page = raw.read_unit(index).expect("test setup");
        assert!(page.cells.len() <= raw.page_size() as usize);
    }
    for index in [raw.units(), u64::MAX] {
        assert_eq!(
            raw.read_unit(index).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}

/// Random pages shaped like b-tree pages: a valid type byte, a small
/// cell count, pointers into the page, and cells of random varints and
/// records.
fn btree_garbage(seed: u64, page_size: usize, pages: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(page_size * pages);
    for number in 1..=pages {
        let mut page = rng.bytes(page_size);
        let hdr = if number == 1 { 100 } else { 0 };
        page[hdr] = [0x02, 0x05, 0x0A, 0x0D, 0x00][rng.below(5) as usize];
        let count = rng.below(40) as u16;
        page[hdr + 3..hdr + 5].copy_from_slice(&count.to_be_bytes());
        for i in 0..usize::from(count) {
            let at = hdr + 12 + 2 * i;
            let ptr = (rng.below(page_size as u64 + 8)) as u16;
            page[at..at + 2].copy_from_slice(&ptr.to_be_bytes());
            let ptr = usize::from(ptr);
            if rng.below(2) == 0 && ptr + 40 < page_size {
                // A plausible cell: small payload, random serials.
                let mut types = Vec::new();
                for _ in 0..rng.below(6) {
                    put_varint(&mut types, rng.below(40));
                }
                let mut cell = Vec::new();
                put_varint(&mut cell, rng.below(30));
                put_varint(&mut cell, rng.next());
                cell.push(types.len() as u8 + 1);
                cell.extend(types);
                let n = cell.len().min(page_size - ptr);
                page[ptr..ptr + n].copy_from_slice(&cell[..n]);
            }
        }
        out.extend(page);
    }
    out
}

/// A small real database with 1024-byte pages and a live WAL.
fn small_real() -> &'static (Vec<u8>, Vec<u8>) {
    static SMALL: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SMALL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("test setup");
        let path = dir.path().join("buffer.sqlite");
        let conn = create_db(&path, 1024, 200, 30);
        checkpoint(&conn);
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .expect("test setup");
        insert_records(&conn, 201..=300);
        set_meta(&conn, 301);
        let db = std::fs::read(&path).expect("test setup");
        let wal = std::fs::read(wal_path(&path)).expect("test setup");
        drop(conn);
        (db, wal)
    })
}

fn hints() -> impl Strategy<Value = Option<u32>> {
    prop::option::of(prop_oneof![
        Just(512u32),
        Just(1024),
        Just(4096),
        Just(65536),
        Just(0),
        Just(1000),
        any::<u32>(),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        db in prop::collection::vec(any::<u8>(), 0..20_000),
        wal in prop::option::of(prop::collection::vec(any::<u8>(), 0..6_000)),
        hint in hints(),
    ) {
        open_and_read_all(&db, wal.as_deref(), hint);
    }

    #[test]
    fn btree_shaped_garbage_never_panics(
        seed in any::<u64>(),
        page_size in prop_oneof![Just(512usize), Just(1024), Just(4096)],
        pages in 1usize..6,
        hint in hints(),
    ) {
        let db = btree_garbage(seed, page_size, pages);
        open_and_read_all(&db, None, hint);
        // The same pages as WAL frames with valid checksums.
        let mut rng = Rng(seed ^ 1);
        let frames: Vec<(u32, u32, Vec<u8>)> = db
            .chunks(page_size)
            .map(|p| (rng.below(10) as u32, rng.below(3) as u32, p.to_vec()))
            .collect();
        let wal = make_wal(page_size as u32, seed % 2 == 0, (3, 4), &frames);
        open_and_read_all(&db[..db.len() / 2], Some(&wal), hint);
    }

    #[test]
    fn mutated_real_database_never_panics(
        db_edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..64),
        wal_edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        zero_page in prop::option::of(any::<prop::sample::Index>()),
        truncate in prop::option::of(any::<prop::sample::Index>()),
        hint in hints(),
    ) {
        let (db, wal) = small_real();
        let mut db = db.clone();
        let mut wal = wal.clone();
        for (at, byte) in db_edits {
            let i = at.index(db.len());
            db[i] = byte;
        }
        for (at, byte) in wal_edits {
            let i = at.index(wal.len());
            wal[i] = byte;
        }
        if let Some(page) = zero_page {
            let start = page.index(db.len() / 1024) * 1024;
            db[start..start + 1024].fill(0);
        }
        if let Some(at) = truncate {
            let len = at.index(db.len());
            db.truncate(len);
        }
        open_and_read_all(&db, Some(&wal), hint);
    }
}

/// Scan speed on a ~1,000,000-row file. Run in a release build:
/// `cargo test --release -p slmd --lib buffer::pages::tests::scan_speed -- --ignored --nocapture`
#[test]
#[ignore = "slow: builds a large database; run by hand in release"]
fn scan_speed() {
    let dir = tempfile::tempdir().expect("test setup");
    let path = dir.path().join("buffer.sqlite");
    let conn = create_db(&path, 4096, 1_000_000, 100);
    checkpoint(&conn);
    drop(conn);
    let len = std::fs::metadata(&path).expect("test setup").len();
    let start = std::time::Instant::now();
    let mut raw = RawFile::open(&path, None).expect("test setup");
    let mut rows = 0usize;
    let mut bad = 0u64;
    for index in 0..raw.units() {
        let page = raw.read_unit(index).expect("test setup");
        rows += page.cells.iter().filter(|c| is_record(c)).count();
        bad += u64::from(page.bad_cells);
    }
    let elapsed = start.elapsed();
    // And with the page size guessed.
    let mut db = std::fs::read(&path).expect("test setup");
    db[..100].fill(0);
    std::fs::write(&path, &db).expect("test setup");
    drop(db);
    let guess_start = std::time::Instant::now();
    let raw2 = RawFile::open(&path, None).expect("test setup");
    let guess = guess_start.elapsed();
    assert_eq!(raw2.page_size(), 4096);
    println!(
        "{} bytes, {} pages, {rows} rows, {bad} bad cells: scan {elapsed:?}, guess {guess:?}",
        len,
        raw.units()
    );
    assert_eq!(rows, 1_000_000);
    assert_eq!(bad, 0);
}
