//! A raw reader of the SQLite file format, for salvaging rows from a
//! damaged buffer file that SQLite itself can no longer open or walk.
//!
//! SQLite refuses a file whose 100-byte header or schema (page 1) is
//! damaged, and loses whole subtrees when a b-tree root or interior page is
//! damaged, although the leaf pages holding the rows are usually intact.
//! This module reads the file page by page, *without* following the b-tree:
//! every page is parsed on its own, and every cell reachable from a leaf
//! page's cell pointer array that parses structurally is returned. Callers
//! validate rows themselves (every buffer row carries a CRC), so returning a
//! stale or nonsensical row that happens to parse is acceptable; panicking,
//! looping or allocating without bound on hostile bytes is not.
//!
//! # Format facts used (<https://www.sqlite.org/fileformat2.html>)
//! - **File header** (first 100 bytes of page 1): bytes 0..16 are
//!   `"SQLite format 3\0"`; bytes 16..18 the page size (big-endian, a power
//!   of two 512..=32768, or 1 meaning 65536); byte 20 the reserved bytes at
//!   the end of each page; bytes 21, 22, 23 are always 64, 32, 32. The
//!   *usable size* is U = page size − reserved.
//! - **Pages** are numbered from 1; page N starts at (N−1) × page size.
//!   Page 1 starts with the file header, so its b-tree header is at offset
//!   100, while its cell pointers are still offsets from the page start.
//! - **B-tree page header**: type byte (0x02 index interior, 0x05 table
//!   interior, 0x0A index leaf, 0x0D table leaf), first freeblock (2), cell
//!   count (2), cell content start (2), fragmented bytes (1), and on
//!   interior pages a 4-byte right child: 8 bytes on leaves, 12 on interior
//!   pages. The cell pointer array (2 bytes per cell, big-endian offsets from
//!   the page start) follows the header.
//! - **Cells**: table leaf = payload length varint, rowid varint, payload;
//!   table interior = 4-byte child, rowid varint (no payload); index leaf =
//!   payload length varint, payload; index interior = 4-byte child, payload
//!   length varint, payload. A payload longer than the maximum local size
//!   X (U − 35 on table leaves, ((U − 12) × 64 / 255) − 23 on index pages)
//!   spills to overflow pages.
//! - **Varints**: 1 to 9 bytes, big-endian groups of 7 bits, the high bit
//!   meaning "more follows"; the 9th byte contributes all 8 bits.
//! - **Records**: a header (its own length as a varint, counting itself,
//!   then one serial type varint per column) and a body. Serial types: 0
//!   NULL; 1..=6 big-endian two's-complement integers of 1, 2, 3, 4, 6, 8
//!   bytes; 7 a big-endian IEEE 754 double; 8 and 9 the integers 0 and 1; 10
//!   and 11 reserved; N ≥ 12 even a BLOB of (N − 12) / 2 bytes; N ≥ 13 odd a
//!   TEXT of (N − 13) / 2 bytes.
//! - **Index b-trees are true B-trees**: each entry is stored exactly once,
//!   on a leaf *or* an interior page. So index interior cells are entries
//!   too (a `WITHOUT ROWID` table's rows can live there), and they are
//!   returned like index leaf cells. Table interior cells only hold
//!   separator keys and are never returned.
//! - **WAL** (`<db>-wal`): a 32-byte header (magic 0x377f0682 or 0x377f0683,
//!   whose low bit selects big-endian checksum words; format version
//!   3007000; page size; checkpoint sequence; salt-1; salt-2; checksum-1 and
//!   checksum-2 over the first 24 bytes), then frames of a 24-byte header
//!   (page number, database size after commit or 0, salt-1, salt-2,
//!   checksum-1, checksum-2) and one page. The checksum is cumulative: it
//!   runs over the WAL header's first 24 bytes, then each frame's first 8
//!   header bytes and its page, as `s0 += x[i] + s1; s1 += x[i+1] + s0` over
//!   pairs of 32-bit words (wrapping). A frame is valid when its salts equal
//!   the header's, its page number is not 0 and its checksum matches; only
//!   the valid prefix up to and including its last commit frame (nonzero
//!   "database size after commit") counts, as in SQLite's recovery.
//!
//! # What is trusted, and what is not
//! - The **file header** is trusted only when it is whole: the magic string,
//!   a valid page size, bytes 21..24 equal to 64, 32, 32 and a usable size
//!   of at least 480 (the format's minimum). Only then is its reserved byte
//!   count used; otherwise reserved = 0 is assumed. Nothing else in the
//!   header is used (not the page count, the freelist or the schema).
//! - The **page size** comes from the trusted header, else from a valid WAL
//!   header, else from the caller's hint, else it is guessed (see
//!   [`RawFile::open`]).
//! - **Interior pages, root pages and the schema are never followed**: every
//!   page of the file is scanned on its own, so a lost root or interior page
//!   loses nothing but itself.
//! - **Per page**, the cell count, pointers, varints, payload lengths and
//!   record headers are all bounds-checked against the usable size; a cell
//!   that fails any check is counted in [`Page::bad_cells`] and skipped,
//!   never followed further. Freeblocks and unallocated space (deleted
//!   cells) are not read. Overflow chains are not followed (the buffer's
//!   rows are small): a cell that needs one is a bad cell.
//! - **Memory**: no count or size read from the file sizes an allocation.
//!   One page buffer (at most 65536 bytes) is kept; a parsed page holds at
//!   most U bytes of payload in its cells (the cells of a page are disjoint,
//!   so more can only come from crafted overlapping pointers, which are then
//!   counted as bad), and a record has at most [`MAX_COLUMNS`] columns.
//! - Freelist pages and stale WAL frames may hold old copies of pages; they
//!   parse like any other page. Callers deduplicate and validate rows.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The first 16 bytes of a SQLite database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Smallest page size of the format.
const MIN_PAGE_SIZE: u32 = 512;
/// Largest page size of the format.
const MAX_PAGE_SIZE: u32 = 65536;
/// The page size assumed when nothing else tells it.
const DEFAULT_PAGE_SIZE: u32 = 4096;
/// The smallest usable size (page size − reserved) the format allows.
const MIN_USABLE: u32 = 480;
/// Offset of page 1's b-tree header (after the file header).
const PAGE1_BTREE_OFFSET: usize = 100;

/// Most columns a record may have before its cell is counted as bad.
pub const MAX_COLUMNS: usize = 64;

/// WAL magic with little-endian checksum words.
const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// WAL magic with big-endian checksum words.
const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version.
const WAL_VERSION: u32 = 3_007_000;
/// Size of the WAL header.
const WAL_HEADER_LEN: u64 = 32;
/// Size of a WAL frame header.
const FRAME_HEADER_LEN: u64 = 24;

/// Bytes per sample window when guessing the page size (the largest page
/// size, so every candidate size tiles a window exactly).
const GUESS_WINDOW: u64 = 65536;
/// Sample windows spread over the file when guessing the page size.
const GUESS_WINDOWS: u64 = 16;

/// A value of a record column (SQLite serial types).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Serial type 0 (also how a table's `INTEGER PRIMARY KEY` column is
    /// stored: its value is the rowid).
    Null,
    /// Serial types 1..=6 (big-endian two's complement of 1, 2, 3, 4, 6 or 8
    /// bytes), 8 (the integer 0) and 9 (the integer 1).
    Int(i64),
    /// Serial type 7: a big-endian IEEE 754 double.
    Real(f64),
    /// Odd serial types ≥ 13: (N − 13) / 2 bytes of text, as stored (the
    /// database encoding, UTF-8 for the buffer; not validated).
    Text(Vec<u8>),
    /// Even serial types ≥ 12: (N − 12) / 2 bytes.
    Blob(Vec<u8>),
}

/// What a page turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// Type byte 0x0D: a table b-tree leaf (rows with rowids).
    TableLeaf,
    /// Type byte 0x05: a table b-tree interior page (no rows).
    TableInterior,
    /// Type byte 0x0A: an index b-tree leaf (index entries and the rows of
    /// `WITHOUT ROWID` tables).
    IndexLeaf,
    /// Type byte 0x02: an index b-tree interior page (whose cells are
    /// entries too, see the module documentation).
    IndexInterior,
    /// All zero bytes.
    Zeroed,
    /// Anything else (overflow, freelist trunk, garbage, header page that
    /// does not parse).
    Other,
}

/// One cell found on a leaf page (or on an index interior page, whose cells
/// are entries too: see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The rowid (table leaf cells); None for index cells (WITHOUT ROWID
    /// tables and indexes).
    pub rowid: Option<i64>,
    /// The record's columns in order (a table's INTEGER PRIMARY KEY column
    /// is stored as Null; that's fine).
    pub values: Vec<Value>,
}

/// One unit of the scan: a page of the main file, or a frame of the WAL.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The database page number (1-based) this content belongs to.
    pub number: u32,
    /// Where it came from.
    pub source: Source,
    /// What the page turned out to be.
    pub kind: PageKind,
    /// Cells that parsed completely (local payload only; overflowing cells
    /// are counted in `bad_cells`).
    pub cells: Vec<Cell>,
    /// Cells on this page that did not parse (bad pointer, bad varint,
    /// payload beyond the page, overflow needed, bad serial type...).
    pub bad_cells: u32,
}

/// Where a [`Page`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The main database file.
    File,
    /// The WAL; `frame` is the frame's 0-based position in the WAL (frame 0
    /// follows the 32-byte WAL header), so its unit index is
    /// [`RawFile::file_pages`] + `frame`.
    Wal {
        /// 0-based frame position in the WAL.
        frame: u32,
    },
}

/// How the page size was determined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSizeFrom {
    /// From a whole, valid database header.
    Header,
    /// From the caller's hint (header and WAL header not valid).
    Hint,
    /// From a valid WAL header (database header not valid).
    Wal,
    /// Guessed from the pages themselves (or the 4096 default).
    Guessed,
}

/// A damaged (or sound) database file opened for a raw scan.
pub struct RawFile {
    /// The main database file, opened read-only.
    db: File,
    /// The WAL, opened read-only, when it is usable.
    wal: Option<File>,
    /// Page size of the main file.
    page_size: u32,
    /// Where `page_size` came from.
    page_size_from: PageSizeFrom,
    /// Usable bytes of a main-file page.
    usable: u32,
    /// Whole pages in the main file.
    file_pages: u64,
    /// Page size of the WAL's frames (its header's), when it is usable.
    wal_page_size: u32,
    /// Usable bytes of a WAL frame's page.
    wal_usable: u32,
    /// Usable WAL frames (the committed valid prefix).
    wal_frames: u64,
    /// The WAL exists but its header is not valid.
    wal_ignored: bool,
    /// The one page buffer: max(page size, WAL page size) bytes.
    buf: Vec<u8>,
}

impl fmt::Debug for RawFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFile")
            .field("page_size", &self.page_size)
            .field("page_size_from", &self.page_size_from)
            .field("usable", &self.usable)
            .field("file_pages", &self.file_pages)
            .field("wal_page_size", &self.wal_page_size)
            .field("wal_frames", &self.wal_frames)
            .field("wal_ignored", &self.wal_ignored)
            .finish_non_exhaustive()
    }
}

/// What the WAL turned out to be.
enum Wal {
    /// No WAL file, or an empty one.
    Absent,
    /// A WAL file whose header is not valid.
    Ignored,
    /// A valid WAL header, with `frames` usable frames.
    Usable {
        /// The WAL, opened read-only.
        file: File,
        /// Its header's page size.
        page_size: u32,
        /// Usable frames.
        frames: u64,
    },
}

impl RawFile {
    /// Opens `db` (and `<db>-wal` when present) for reading only; never
    /// writes anything.
    ///
    /// The page size comes from the header when it is valid (bytes 16..18: a
    /// power of two 512..=32768, or 1 meaning 65536; the header is only
    /// trusted whole, see the module documentation), else from the WAL
    /// header (bytes 8..12) when the WAL header is valid, else from
    /// `page_size_hint` (when it is a power of two 512..=65536), else it is
    /// guessed by trying every power of two 512..=65536 on a sample of pages
    /// (16 windows of 64 KiB spread over the file, or the whole file when it
    /// is smaller) and taking the size under which the most pages parse as
    /// b-tree pages with plausible cells (4096 on a tie that includes 4096,
    /// else the largest tied size; 4096 when nothing parses).
    ///
    /// WAL frames are always read with the WAL header's own page size.
    /// Errors: the database cannot be opened or read, or the WAL exists but
    /// cannot be opened. A WAL whose content is unusable is not an error:
    /// see [`RawFile::wal_ignored`].
    pub fn open(db: &Path, page_size_hint: Option<u32>) -> io::Result<RawFile> {
        let mut file = File::open(db)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; 100];
        let got = read_up_to(&mut file, 0, &mut head)?;
        let header = head.get(..got).and_then(header_page_size);

        // One buffer of the largest page size serves the WAL scan and the
        // guess; it is then cut down to what the scan needs.
        let mut scratch = Vec::new();
        let wal = open_wal(&wal_path(db), &mut scratch)?;
        let wal_header_size = match &wal {
            Wal::Usable { page_size, .. } => Some(*page_size),
            Wal::Absent | Wal::Ignored => None,
        };
        let hint = page_size_hint.filter(|&size| valid_page_size(size));

        let (page_size, page_size_from, reserved) = if let Some((size, reserved)) = header {
            (size, PageSizeFrom::Header, reserved)
        } else if let Some(size) = wal_header_size {
            (size, PageSizeFrom::Wal, 0)
        } else if let Some(size) = hint {
            (size, PageSizeFrom::Hint, 0)
        } else {
            let size = guess_page_size(&mut file, len, &mut scratch)?;
            (size, PageSizeFrom::Guessed, 0)
        };
        let usable = usable_size(page_size, reserved);
        let file_pages = len / u64::from(page_size);

        let (wal_file, wal_page_size, wal_frames, wal_ignored) = match wal {
            Wal::Absent => (None, page_size, 0, false),
            Wal::Ignored => (None, page_size, 0, true),
            Wal::Usable {
                file,
                page_size: size,
                frames,
            } => (Some(file), size, frames, false),
        };
        let wal_usable = usable_size(wal_page_size, reserved);
        let buf_len = usize::try_from(page_size.max(wal_page_size)).map_err(invalid_data)?;
        scratch.clear();
        scratch.resize(buf_len, 0);
        scratch.shrink_to_fit();

        Ok(RawFile {
            db: file,
            wal: wal_file,
            page_size,
            page_size_from,
            usable,
            file_pages,
            wal_page_size,
            wal_usable,
            wal_frames,
            wal_ignored,
            buf: scratch,
        })
    }

    /// The page size used for the main file's pages.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// How [`RawFile::page_size`] was determined.
    pub fn page_size_from(&self) -> PageSizeFrom {
        self.page_size_from
    }

    /// Pages in the main file (file length / page size, rounded down; a
    /// trailing partial page is ignored).
    pub fn file_pages(&self) -> u64 {
        self.file_pages
    }

    /// Valid WAL frames usable: frames whose salt matches the WAL header and
    /// whose checksum chain is intact, up to and including the last commit
    /// frame (a frame with nonzero "database size after commit") in that
    /// valid prefix. 0 without a WAL or with a garbage WAL.
    pub fn wal_frames(&self) -> u64 {
        self.wal_frames
    }

    /// `file_pages() + wal_frames()`: positions `0..units()` are scanned in
    /// this order: main file pages 1..=N, then WAL frames in order.
    pub fn units(&self) -> u64 {
        self.file_pages.saturating_add(self.wal_frames)
    }

    /// Reads and parses unit `index` (0-based position as above). An index
    /// out of range is an error (`InvalidInput`), never a panic.
    ///
    /// Reads only that page from disk (seek + read), so a resumable caller
    /// can start at any index and memory stays at one page. A file that
    /// shrank since [`RawFile::open`] gives an `UnexpectedEof` error.
    pub fn read_unit(&mut self, index: u64) -> io::Result<Page> {
        if index < self.file_pages {
            let number = index
                .checked_add(1)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid_data("page number beyond u32"))?;
            let size = usize::try_from(self.page_size).map_err(invalid_data)?;
            let offset = index
                .checked_mul(u64::from(self.page_size))
                .ok_or_else(|| invalid_data("page offset overflows"))?;
            let data = self
                .buf
                .get_mut(..size)
                .ok_or_else(|| invalid_data("page buffer too small"))?;
            read_exact_at(&mut self.db, offset, data)?;
            let usable = usize::try_from(self.usable).map_err(invalid_data)?;
            return Ok(parse_page(data, number, Source::File, usable, true).0);
        }
        let frame = index - self.file_pages;
        if frame >= self.wal_frames {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unit {index} out of range 0..{}", self.units()),
            ));
        }
        let wal = self
            .wal
            .as_mut()
            .ok_or_else(|| invalid_data("no WAL file"))?;
        let frame_no = u32::try_from(frame).map_err(invalid_data)?;
        let size = usize::try_from(self.wal_page_size).map_err(invalid_data)?;
        let offset = frame_offset(frame, self.wal_page_size)
            .ok_or_else(|| invalid_data("frame offset overflows"))?;
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        read_exact_at(wal, offset, &mut header)?;
        let number = be32(&header, 0).ok_or_else(|| invalid_data("short frame header"))?;
        let data = self
            .buf
            .get_mut(..size)
            .ok_or_else(|| invalid_data("page buffer too small"))?;
        wal.read_exact(data)?;
        let usable = usize::try_from(self.wal_usable).map_err(invalid_data)?;
        let source = Source::Wal { frame: frame_no };
        Ok(parse_page(data, number, source, usable, true).0)
    }

    /// Whether the WAL file exists but was not usable (bad magic, version,
    /// page size or header checksum), for the caller's report. An empty WAL
    /// file (as SQLite leaves after a truncating checkpoint) is not ignored:
    /// it simply has no frames.
    pub fn wal_ignored(&self) -> bool {
        self.wal_ignored
    }
}

/// `<db>-wal`, next to the database.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push("-wal");
    PathBuf::from(name)
}

/// An `InvalidData` I/O error.
fn invalid_data<E>(error: E) -> io::Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// A power of two in 512..=65536.
fn valid_page_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size)
}

/// Page size − reserved, or the whole page when that would be below the
/// format's minimum.
fn usable_size(page_size: u32, reserved: u32) -> u32 {
    page_size
        .checked_sub(reserved)
        .filter(|&usable| usable >= MIN_USABLE)
        .unwrap_or(page_size)
}

/// Page size and reserved bytes of a whole, valid file header.
fn header_page_size(head: &[u8]) -> Option<(u32, u32)> {
    if head.get(..16)? != MAGIC.as_slice() {
        return None;
    }
    let raw = be16(head, 16)?;
    let size = if raw == 1 { 65536 } else { u32::from(raw) };
    if !valid_page_size(size) || head.get(21..24)? != [64, 32, 32].as_slice() {
        return None;
    }
    let reserved = u32::from(*head.get(20)?);
    let usable = size.checked_sub(reserved)?;
    (usable >= MIN_USABLE).then_some((size, reserved))
}

/// The big-endian u16 at `at`, if it is inside `buf`.
fn be16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// The big-endian u32 at `at`, if it is inside `buf`.
fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..) {
        if rest.is_empty() {
            break;
        }
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Seeks to `offset` and fills `buf`.
fn read_exact_at(file: &mut File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Offset of WAL frame `frame` (0-based).
fn frame_offset(frame: u64, page_size: u32) -> Option<u64> {
    let frame_len = FRAME_HEADER_LEN.checked_add(u64::from(page_size))?;
    frame.checked_mul(frame_len)?.checked_add(WAL_HEADER_LEN)
}

/// The WAL checksum, continued from `(s0, s1)` over `data` (whose length is
/// a multiple of 8; a trailing partial word pair is ignored).
fn wal_checksum(big_endian: bool, data: &[u8], (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    for chunk in data.chunks_exact(8) {
        let Ok(pair) = <[u8; 8]>::try_from(chunk) else {
            continue;
        };
        let [a, b, c, d, e, f, g, h] = pair;
        let (x0, x1) = if big_endian {
            (
                u32::from_be_bytes([a, b, c, d]),
                u32::from_be_bytes([e, f, g, h]),
            )
        } else {
            (
                u32::from_le_bytes([a, b, c, d]),
                u32::from_le_bytes([e, f, g, h]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

/// Opens and validates the WAL at `path`, counting its usable frames.
/// `scratch` is grown to the WAL's page size to read frames.
fn open_wal(path: &Path, scratch: &mut Vec<u8>) -> io::Result<Wal> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Wal::Absent),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Wal::Absent);
    }
    let mut header = [0u8; WAL_HEADER_LEN as usize];
    if read_up_to(&mut file, 0, &mut header)? < header.len() {
        return Ok(Wal::Ignored);
    }
    let field = |at: usize| be32(&header, at).unwrap_or(0);
    let magic = field(0);
    let page_size = field(8);
    if (magic != WAL_MAGIC_LE && magic != WAL_MAGIC_BE)
        || field(4) != WAL_VERSION
        || !valid_page_size(page_size)
    {
        return Ok(Wal::Ignored);
    }
    let big_endian = magic & 1 == 1;
    let salts = (field(16), field(20));
    let mut sum = wal_checksum(big_endian, header.get(..24).unwrap_or_default(), (0, 0));
    if sum != (field(24), field(28)) {
        return Ok(Wal::Ignored);
    }

    let size = usize::try_from(page_size).map_err(invalid_data)?;
    if scratch.len() < size {
        scratch.resize(size, 0);
    }
    let page = scratch
        .get_mut(..size)
        .ok_or_else(|| invalid_data("WAL page buffer too small"))?;
    let frame_len = FRAME_HEADER_LEN + u64::from(page_size);
    let available = len.saturating_sub(WAL_HEADER_LEN) / frame_len;
    let mut usable = 0;
    file.seek(SeekFrom::Start(WAL_HEADER_LEN))?;
    for frame in 0..available {
        let mut fh = [0u8; FRAME_HEADER_LEN as usize];
        if file.read_exact(&mut fh).is_err() || file.read_exact(page).is_err() {
            break; // the file shrank under us: the valid prefix ends here
        }
        let fh_field = |at: usize| be32(&fh, at).unwrap_or(0);
        if fh_field(0) == 0 || (fh_field(8), fh_field(12)) != salts {
            break;
        }
        sum = wal_checksum(big_endian, fh.get(..8).unwrap_or_default(), sum);
        sum = wal_checksum(big_endian, page, sum);
        if sum != (fh_field(16), fh_field(20)) {
            break;
        }
        if fh_field(4) != 0 {
            usable = frame + 1;
        }
    }
    Ok(Wal::Usable {
        file,
        page_size,
        frames: usable,
    })
}

/// Guesses the page size of a file whose header is not trusted: see
/// [`RawFile::open`].
fn guess_page_size(file: &mut File, len: u64, scratch: &mut Vec<u8>) -> io::Result<u32> {
    let max = usize::try_from(MAX_PAGE_SIZE).map_err(invalid_data)?;
    if scratch.len() < max {
        scratch.resize(max, 0);
    }
    let mut best: Option<(u64, u32)> = None; // (score, size)
    let mut scores = [0u64; 8];
    let mut size = MIN_PAGE_SIZE;
    for score_slot in scores.iter_mut() {
        let mut score = 0u64;
        for window in 0..GUESS_WINDOWS {
            let (start, end) = if len <= GUESS_WINDOW * GUESS_WINDOWS {
                if window > 0 {
                    break;
                }
                (0, len)
            } else {
                let start = (len / GUESS_WINDOWS * window) / GUESS_WINDOW * GUESS_WINDOW;
                (start, start.saturating_add(GUESS_WINDOW).min(len))
            };
            score += score_region(file, start, end, size, scratch)?;
        }
        *score_slot = score;
        if best.is_none_or(|(top, _)| score > top) {
            best = Some((score, size));
        }
        size = size.saturating_mul(2);
    }
    let Some((top, _)) = best.filter(|&(top, _)| top > 0) else {
        return Ok(DEFAULT_PAGE_SIZE);
    };
    // On a tie prefer the default, else the largest tied size (a size
    // smaller than the real one almost never parses real pages, since their
    // cells lie at the end of the page).
    let mut chosen = DEFAULT_PAGE_SIZE;
    let mut size = MIN_PAGE_SIZE;
    let mut default_tied = false;
    for &score in &scores {
        if score == top {
            if size == DEFAULT_PAGE_SIZE {
                default_tied = true;
            }
            chosen = size;
        }
        size = size.saturating_mul(2);
    }
    Ok(if default_tied {
        DEFAULT_PAGE_SIZE
    } else {
        chosen
    })
}

/// Pages of `size` bytes lying wholly in `start..end` (start is a multiple
/// of every candidate size) that look like b-tree pages with plausible
/// cells.
fn score_region(
    file: &mut File,
    start: u64,
    end: u64,
    size: u32,
    scratch: &mut [u8],
) -> io::Result<u64> {
    let step = u64::from(size);
    let len = usize::try_from(size).map_err(invalid_data)?;
    let usable = len;
    let data = scratch
        .get_mut(..len)
        .ok_or_else(|| invalid_data("guess buffer too small"))?;
    let mut score = 0;
    let mut offset = start;
    while offset
        .checked_add(step)
        .is_some_and(|page_end| page_end <= end)
    {
        read_exact_at(file, offset, data)?;
        let number = u32::try_from(offset / step + 1).unwrap_or(u32::MAX);
        let (page, good) = parse_page(data, number, Source::File, usable, false);
        let btree = !matches!(page.kind, PageKind::Zeroed | PageKind::Other);
        if btree && good > 0 && page.bad_cells == 0 {
            score += 1;
        }
        offset += step;
    }
    Ok(score)
}

/// Parses one page (`data` is the whole page; `usable` ≤ its length).
/// Returns the page and the number of cells that parsed (which, on table
/// interior pages and when `collect` is false, are not kept in
/// `page.cells`).
fn parse_page(
    data: &[u8],
    number: u32,
    source: Source,
    usable: usize,
    collect: bool,
) -> (Page, u32) {
    let usable = usable.min(data.len());
    let area = data.get(..usable).unwrap_or_default();
    let hdr = if number == 1 { PAGE1_BTREE_OFFSET } else { 0 };
    let kind = match area.get(hdr) {
        Some(0x02) => PageKind::IndexInterior,
        Some(0x05) => PageKind::TableInterior,
        Some(0x0A) => PageKind::IndexLeaf,
        Some(0x0D) => PageKind::TableLeaf,
        _ if data.iter().all(|&b| b == 0) => PageKind::Zeroed,
        _ => PageKind::Other,
    };
    let mut page = Page {
        number,
        source,
        kind,
        cells: Vec::new(),
        bad_cells: 0,
    };
    let interior = matches!(kind, PageKind::TableInterior | PageKind::IndexInterior);
    let header_len = if interior { 12 } else { 8 };
    if matches!(kind, PageKind::Zeroed | PageKind::Other) {
        return (page, 0);
    }
    let header_end = hdr + header_len;
    let cell_count = match be16(area, hdr + 3) {
        Some(count) if header_end <= usable => count,
        _ => {
            // The b-tree header does not fit in the usable area.
            page.kind = PageKind::Other;
            return (page, 0);
        }
    };
    let max_local = match kind {
        PageKind::TableLeaf => usable.saturating_sub(35),
        _ => (usable.saturating_sub(12) * 64 / 255).saturating_sub(23),
    };

    // Cell starts seen so far (a pointer repeated is a bad pointer), one bit
    // per byte of the usable area.
    let mut seen = vec![0u64; usable.div_ceil(64)];
    // Bytes taken by accepted cells: cells of a page are disjoint, so more
    // than the usable size can only come from overlapping pointers.
    let mut taken = 0usize;
    let mut good = 0u32;
    for i in 0..usize::from(cell_count) {
        let Some(pointer) = be16(area, header_end + 2 * i) else {
            // The rest of the pointer array does not fit in the page.
            let rest = usize::from(cell_count) - i;
            page.bad_cells = page
                .bad_cells
                .saturating_add(u32::try_from(rest).unwrap_or(u32::MAX));
            break;
        };
        let offset = usize::from(pointer);
        if offset < header_end || offset >= usable {
            page.bad_cells = page.bad_cells.saturating_add(1);
            continue;
        }
        let word = offset / 64;
        let bit = 1u64 << (offset % 64);
        match seen.get_mut(word) {
            Some(w) if *w & bit == 0 => *w |= bit,
            _ => {
                page.bad_cells = page.bad_cells.saturating_add(1);
                continue;
            }
        }
        let parsed = parse_cell(area, offset, kind, max_local, collect);
        let within = parsed
            .as_ref()
            .and_then(|(_, end)| taken.checked_add(end.checked_sub(offset)?))
            .filter(|&total| total <= usable);
        match (parsed, within) {
            (Some((cell, _)), Some(total)) => {
                taken = total;
                good = good.saturating_add(1);
                if let Some(cell) = cell {
                    page.cells.push(cell);
                }
            }
            _ => page.bad_cells = page.bad_cells.saturating_add(1),
        }
    }
    (page, good)
}

/// Parses the cell at `offset` of `area` (the usable part of the page).
/// Returns the cell (None for table interior cells, or when not
/// collecting) and the offset just past it; None when the cell is bad.
fn parse_cell(
    area: &[u8],
    offset: usize,
    kind: PageKind,
    max_local: usize,
    collect: bool,
) -> Option<(Option<Cell>, usize)> {
    let mut pos = offset;
    match kind {
        PageKind::TableInterior => {
            let child = be32(area, pos)?;
            if child == 0 {
                return None;
            }
            let (_key, n) = varint(area, pos.checked_add(4)?)?;
            return Some((None, pos + 4 + n));
        }
        PageKind::IndexInterior => {
            if be32(area, pos)? == 0 {
                return None;
            }
            pos = pos.checked_add(4)?;
        }
        PageKind::TableLeaf | PageKind::IndexLeaf => {}
        PageKind::Zeroed | PageKind::Other => return None,
    }
    let (payload_len, n) = varint(area, pos)?;
    pos += n;
    let rowid = if kind == PageKind::TableLeaf {
        let (rowid, n) = varint(area, pos)?;
        pos += n;
        // A varint is a 64-bit two's-complement value.
        Some(i64::from_ne_bytes(rowid.to_ne_bytes()))
    } else {
        None
    };
    let payload_len = usize::try_from(payload_len).ok()?;
    if payload_len == 0 || payload_len > max_local {
        return None; // empty, or spills to overflow pages
    }
    let end = pos.checked_add(payload_len)?;
    let payload = area.get(pos..end)?;
    let values = parse_record(payload, collect)?;
    let cell = collect.then_some(Cell { rowid, values });
    Some((cell, end))
}

/// Reads a varint at `pos`: its value and its length in bytes. None when it
/// runs past `buf`.
fn varint(buf: &[u8], pos: usize) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for i in 0..9 {
        let byte = *buf.get(pos.checked_add(i)?)?;
        if i == 8 {
            return Some(((value << 8) | u64::from(byte), 9));
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Body bytes of a serial type; None for the reserved types 10 and 11.
fn serial_size(serial: u64) -> Option<usize> {
    let size = match serial {
        0 | 8 | 9 => 0,
        1 => 1,
        2 => 2,
        3 => 3,
        4 => 4,
        5 => 6,
        6 | 7 => 8,
        10 | 11 => return None,
        n => (n - 12) / 2,
    };
    usize::try_from(size).ok()
}

/// Decodes a record. None when it does not parse: a header length beyond
/// the payload or shorter than its own varint, a serial type varint running
/// past the header, a reserved serial type, no columns or more than
/// [`MAX_COLUMNS`], or body sizes that do not add up to exactly the payload
/// length minus the header length. When `collect` is false the record is
/// only checked and an empty vector is returned.
fn parse_record(payload: &[u8], collect: bool) -> Option<Vec<Value>> {
    let (header_len, n) = varint(payload, 0)?;
    let header_len = usize::try_from(header_len).ok()?;
    if header_len < n || header_len > payload.len() {
        return None;
    }
    let header = payload.get(..header_len)?;
    let mut serials = [0u64; MAX_COLUMNS];
    let mut columns = 0usize;
    let mut body_len = 0usize;
    let mut pos = n;
    while pos < header_len {
        let (serial, n) = varint(header, pos)?;
        pos += n;
        *serials.get_mut(columns)? = serial;
        columns += 1;
        body_len = body_len.checked_add(serial_size(serial)?)?;
    }
    if columns == 0 || body_len != payload.len() - header_len {
        return None;
    }
    if !collect {
        return Some(Vec::new());
    }
    let mut values = Vec::with_capacity(columns);
    let mut at = header_len;
    for &serial in serials.get(..columns)? {
        let size = serial_size(serial)?;
        let end = at.checked_add(size)?;
        let bytes = payload.get(at..end)?;
        at = end;
        values.push(match serial {
            0 => Value::Null,
            1..=6 => Value::Int(be_int(bytes)),
            7 => Value::Real(f64::from_bits(u64::from_be_bytes(bytes.try_into().ok()?))),
            8 => Value::Int(0),
            9 => Value::Int(1),
            n if n % 2 == 0 => Value::Blob(bytes.to_vec()),
            _ => Value::Text(bytes.to_vec()),
        });
    }
    Some(values)
}

/// A big-endian two's-complement integer of 1 to 8 bytes.
fn be_int(bytes: &[u8]) -> i64 {
    let negative = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    let mut value: i64 = if negative { -1 } else { 0 };
    for &b in bytes {
        value = (value << 8) | i64::from(b);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rusqlite::{Connection, params};
    use std::collections::{BTreeSet, HashMap};
    use std::ops::RangeInclusive;
    use std::sync::OnceLock;

    /// The daemon's schema, as the brief gives it.
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
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO records (seq, device, received_at, device_time, state, flags, \
                     metrics, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
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
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn insert_names(conn: &Connection, ids: std::ops::Range<i64>) {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut stmt = tx
                .prepare("INSERT INTO names (kind, id, name) VALUES (?1, ?2, ?3)")
                .unwrap();
            for id in ids {
                let kind = id % 2;
                let prefix = if kind == 0 { "device" } else { "metric" };
                stmt.execute(params![kind, id, format!("{prefix}-{id:05}")])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
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
            .unwrap();
        }
    }

    /// A new WAL-mode database at `path` with the daemon's schema and data.
    fn create_db(path: &Path, page_size: u32, rows: i64, names: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "page_size", page_size).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(SCHEMA).unwrap();
        insert_records(&conn, 1..=rows);
        insert_names(&conn, 0..names);
        set_meta(&conn, rows + 1);
        conn
    }

    fn checkpoint(conn: &Connection) {
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
    }

    fn expected_records(conn: &Connection, from_seq: i64) -> Vec<Cell> {
        let mut stmt = conn
            .prepare(
                "SELECT seq, device, received_at, device_time, state, flags, metrics, crc \
                 FROM records WHERE seq >= ?1 ORDER BY seq",
            )
            .unwrap();
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
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Names as rows of the `names` table b-tree (kind, id, name).
    fn expected_names(conn: &Connection) -> Vec<Cell> {
        let mut stmt = conn.prepare("SELECT kind, id, name FROM names").unwrap();
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
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        sorted(cells)
    }

    fn expected_meta(conn: &Connection) -> Vec<Cell> {
        let mut stmt = conn.prepare("SELECT key, value FROM meta").unwrap();
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
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        sorted(cells)
    }

    fn sorted(mut cells: Vec<Cell>) -> Vec<Cell> {
        cells.sort_by_cached_key(|c| format!("{c:?}"));
        cells
    }

    /// Opens `path` and reads every unit.
    fn scan(path: &Path, hint: Option<u32>) -> (RawFile, Vec<Page>) {
        let mut raw = RawFile::open(path, hint).unwrap();
        let pages = (0..raw.units())
            .map(|i| raw.read_unit(i).unwrap())
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
            let dir = tempfile::tempdir().unwrap();
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
                .unwrap();
            drop(conn);
            assert!(
                !wal_path(&path).exists() || std::fs::metadata(wal_path(&path)).unwrap().len() == 0
            );
            let db = std::fs::read(&path).unwrap();
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
        std::fs::write(&path, db).unwrap();
        if let Some(wal) = wal {
            std::fs::write(wal_path(&path), wal).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = write_files(dir.path(), &f.db, None);
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
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
            found.insert(cell.rowid.unwrap(), cell);
        }
        for row in &new_rows {
            assert_eq!(found.get(&row.rowid.unwrap()), Some(row));
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
        let copy = tempfile::tempdir().unwrap();
        let mut db = std::fs::read(&path).unwrap();
        db[..100].fill(0);
        let wal_bytes = std::fs::read(wal_path(&path)).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = write_files(dir.path(), &db, None);
        let mut raw = RawFile::open(&path, Some(4096)).unwrap();
        assert_eq!(raw.page_size_from(), PageSizeFrom::Hint);
        let page1 = raw.read_unit(0).unwrap();
        assert_eq!(page1.kind, PageKind::TableLeaf);
        assert_eq!(page1.cells, fixture().sound[0].cells);
    }

    #[test]
    fn damage_zeroed_page_1() {
        let mut db = fixture().db.clone();
        zero_page(&mut db, 1);
        let raw = check_damage(&db, None, &BTreeSet::from([1]));
        assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
        let dir = tempfile::tempdir().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
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
            .unwrap()
            .number;
        let mut db = f.db.clone();
        zero_page(&mut db, interior);
        check_damage(&db, None, &BTreeSet::from([interior]));
        let dir = tempfile::tempdir().unwrap();
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
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("buffer.sqlite");
            let conn = create_db(&path, size, rows, 40);
            checkpoint(&conn);
            let records = expected_records(&conn, 0);
            drop(conn);
            let mut db = std::fs::read(&path).unwrap();
            assert_eq!(db.len() % size as usize, 0);
            assert!(db.len() / size as usize >= 3, "{size}: too few pages");
            db[..100].fill(0);
            std::fs::write(&path, &db).unwrap();

            let (raw, pages) = scan(&path, None);
            assert_eq!(raw.page_size(), size, "guess for {size}");
            assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
            assert_eq!(records_in(&pages, |_| true), records, "{size}");

            let raw = RawFile::open(&path, Some(size)).unwrap();
            assert_eq!(
                (raw.page_size(), raw.page_size_from()),
                (size, PageSizeFrom::Hint)
            );
            // An invalid hint is ignored.
            let raw = RawFile::open(&path, Some(size + 1)).unwrap();
            assert_eq!(
                (raw.page_size(), raw.page_size_from()),
                (size, PageSizeFrom::Guessed)
            );
        }
    }

    #[test]
    fn nothing_parses_means_4096() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 100, 4096 * 3, 300_000] {
            let path = write_files(dir.path(), &vec![0; len], None);
            let raw = RawFile::open(&path, None).unwrap();
            assert_eq!(raw.page_size(), 4096);
            assert_eq!(raw.page_size_from(), PageSizeFrom::Guessed);
            assert_eq!(raw.file_pages(), len as u64 / 4096);
        }
        let path = write_files(dir.path(), &Rng(3).bytes(2_000_000), None);
        assert_eq!(RawFile::open(&path, None).unwrap().page_size(), 4096);
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
        let dir = tempfile::tempdir().unwrap();
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
            assert_eq!(RawFile::open(&path, None).unwrap().wal_frames(), 2);
            // A stale frame (other salts) ends the WAL there too.
            let mut stale = wal.clone();
            stale[frame_start(3, 1024) + 8] ^= 1;
            let path = write_files(dir.path(), &db, Some(&stale));
            assert_eq!(RawFile::open(&path, None).unwrap().wal_frames(), 2);
            // A trailing partial frame is ignored.
            let mut partial = wal.clone();
            partial.truncate(frame_start(4, 1024) + 100);
            let path = write_files(dir.path(), &db, Some(&partial));
            assert_eq!(RawFile::open(&path, None).unwrap().wal_frames(), 4);
        }
        // Page number 0 is invalid.
        let wal = make_wal(1024, false, (1, 2), &[(2, 2, leaf(1)), (0, 3, leaf(2))]);
        let path = write_files(dir.path(), &db, Some(&wal));
        assert_eq!(RawFile::open(&path, None).unwrap().wal_frames(), 1);
        // A valid header without frames still gives the page size.
        let wal = make_wal(1024, false, (1, 2), &[]);
        let path = write_files(dir.path(), &db, Some(&wal));
        let raw = RawFile::open(&path, None).unwrap();
        assert_eq!(
            (raw.page_size_from(), raw.wal_frames()),
            (PageSizeFrom::Wal, 0)
        );
        // Bad version, bad page size, short header: ignored.
        for (at, value) in [(4usize, 3007001u32), (8, 1000)] {
            let mut wal = make_wal(1024, false, (1, 2), &[]);
            wal[at..at + 4].copy_from_slice(&value.to_be_bytes());
            let path = write_files(dir.path(), &db, Some(&wal));
            assert!(RawFile::open(&path, None).unwrap().wal_ignored());
        }
        let path = write_files(dir.path(), &db, Some(&[0x37, 0x7f, 0x06, 0x82]));
        assert!(RawFile::open(&path, None).unwrap().wal_ignored());
        // An empty WAL is not ignored.
        let path = write_files(dir.path(), &db, Some(&[]));
        let raw = RawFile::open(&path, None).unwrap();
        assert!(!raw.wal_ignored());
        assert_eq!(raw.wal_frames(), 0);
    }

    #[test]
    fn read_unit_out_of_range_is_an_error() {
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let path = write_files(dir.path(), &f.db, None);
        let mut raw = RawFile::open(&path, None).unwrap();
        for index in [raw.units(), raw.units() + 1, u64::MAX] {
            let err = raw.read_unit(index).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // Any index can be read first (resumable scans).
        let last = raw.units() - 1;
        assert_eq!(raw.read_unit(last).unwrap(), f.sound[last as usize]);
        assert_eq!(raw.read_unit(0).unwrap(), f.sound[0]);
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
                        .unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = write_files(dir.path(), db, wal);
        let mut raw = RawFile::open(&path, hint).unwrap();
        assert_eq!(raw.units(), raw.file_pages() + raw.wal_frames());
        assert_eq!(
            raw.file_pages(),
            db.len() as u64 / u64::from(raw.page_size())
        );
        assert!(valid_page_size(raw.page_size()));
        for index in 0..raw.units() {
            let page = raw.read_unit(index).unwrap();
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
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("buffer.sqlite");
            let conn = create_db(&path, 1024, 200, 30);
            checkpoint(&conn);
            conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
            insert_records(&conn, 201..=300);
            set_meta(&conn, 301);
            let db = std::fs::read(&path).unwrap();
            let wal = std::fs::read(wal_path(&path)).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.sqlite");
        let conn = create_db(&path, 4096, 1_000_000, 100);
        checkpoint(&conn);
        drop(conn);
        let len = std::fs::metadata(&path).unwrap().len();
        let start = std::time::Instant::now();
        let mut raw = RawFile::open(&path, None).unwrap();
        let mut rows = 0usize;
        let mut bad = 0u64;
        for index in 0..raw.units() {
            let page = raw.read_unit(index).unwrap();
            rows += page.cells.iter().filter(|c| is_record(c)).count();
            bad += u64::from(page.bad_cells);
        }
        let elapsed = start.elapsed();
        // And with the page size guessed.
        let mut db = std::fs::read(&path).unwrap();
        db[..100].fill(0);
        std::fs::write(&path, &db).unwrap();
        drop(db);
        let guess_start = std::time::Instant::now();
        let raw2 = RawFile::open(&path, None).unwrap();
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
}
