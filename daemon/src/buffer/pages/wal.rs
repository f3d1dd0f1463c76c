//! The write-ahead log: its header, its checksum chain, and which frames
//! are usable (a valid prefix, up to its last commit).

use super::*;

/// WAL magic with little-endian checksum words.
pub(super) const WAL_MAGIC_LE: u32 = 0x377f_0682;
/// WAL magic with big-endian checksum words.
pub(super) const WAL_MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version.
pub(super) const WAL_VERSION: u32 = 3_007_000;
/// Size of the WAL header.
pub(super) const WAL_HEADER_LEN: u64 = 32;
/// Size of a WAL frame header.
pub(super) const FRAME_HEADER_LEN: u64 = 24;

/// What the WAL turned out to be.
pub(super) enum Wal {
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

/// Offset of WAL frame `frame` (0-based).
pub(super) fn frame_offset(frame: u64, page_size: u32) -> Option<u64> {
    let frame_len = FRAME_HEADER_LEN.checked_add(u64::from(page_size))?;
    frame.checked_mul(frame_len)?.checked_add(WAL_HEADER_LEN)
}

/// The WAL checksum, continued from `(s0, s1)` over `data` (whose length is
/// a multiple of 8; a trailing partial word pair is ignored).
pub(super) fn wal_checksum(
    big_endian: bool,
    data: &[u8],
    (mut s0, mut s1): (u32, u32),
) -> (u32, u32) {
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
pub(super) fn open_wal(path: &Path, scratch: &mut Vec<u8>) -> io::Result<Wal> {
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
