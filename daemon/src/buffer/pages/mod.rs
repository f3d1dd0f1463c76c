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

mod btree;
mod wal;

use btree::*;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use wal::*;

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

#[cfg(test)]
mod tests;
