//! One b-tree page: its header, its cell pointers, its cells and their
//! records, each bounds-checked; what does not parse is counted, never
//! trusted.

use super::*;

/// Parses one page (`data` is the whole page; `usable` ≤ its length).
/// Returns the page and the number of cells that parsed (which, on table
/// interior pages and when `collect` is false, are not kept in
/// `page.cells`).
pub(super) fn parse_page(
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
pub(super) fn parse_cell(
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
pub(super) fn varint(buf: &[u8], pos: usize) -> Option<(u64, usize)> {
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
pub(super) fn serial_size(serial: u64) -> Option<usize> {
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
pub(super) fn parse_record(payload: &[u8], collect: bool) -> Option<Vec<Value>> {
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
pub(super) fn be_int(bytes: &[u8]) -> i64 {
    let negative = bytes.first().is_some_and(|&b| b & 0x80 != 0);
    let mut value: i64 = if negative { -1 } else { 0 };
    for &b in bytes {
        value = (value << 8) | i64::from(b);
    }
    value
}
