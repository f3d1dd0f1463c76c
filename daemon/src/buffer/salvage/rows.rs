//! What a salvage takes from a damaged file: cells shaped like `records`
//! rows, checked one by one, and the old file's names.

use super::super::names::{DEVICE, METRIC, NamePairs, Names};
use super::super::pages::{Cell, RawFile, Value};
use super::super::row;
use std::collections::BTreeMap;
use std::path::Path;

/// Sound-level values outside this range (dB) are not physical.
pub(in crate::buffer) const PLAUSIBLE_DB: std::ops::RangeInclusive<f64> = -30.0..=200.0;

/// Rows received before this (2001-01-01, Unix ms) are not plausible.
pub(in crate::buffer) const PLAUSIBLE_SINCE_MS: i64 = 978_307_200_000;

/// The highest `seq` in the damaged file at `path` among rows whose
/// checksum matches (or, for rows from before the checksum, whose
/// `received_at` is plausible), read with the page reader: where numbering
/// must continue when nothing else says.
pub(in crate::buffer) fn max_seq_in(path: &Path, page_size: Option<u32>) -> Option<u64> {
    let mut raw = RawFile::open(path, page_size).ok()?;
    let mut max = None;
    for unit in 0..raw.units() {
        let Ok(page) = raw.read_unit(unit) else {
            continue;
        };
        for cell in &page.cells {
            let Some(r) = record_shape(cell) else {
                continue;
            };
            let genuine = match stored_crc(cell) {
                Some(_) => checksum_ok(cell, &r),
                None => r.received_at >= PLAUSIBLE_SINCE_MS,
            };
            if genuine && let Ok(seq) = u64::try_from(r.seq) {
                max = max.max(Some(seq));
            }
        }
    }
    max
}

/// The old file's names, from its `names` table and its unique index
/// wherever their cells are found (the most frequent pairing wins).
pub(in crate::buffer) fn scan_names(raw: &mut RawFile) -> NamePairs {
    let mut votes: BTreeMap<(i64, i64, String), u32> = BTreeMap::new();
    for unit in 0..raw.units() {
        let Ok(page) = raw.read_unit(unit) else {
            continue;
        };
        for cell in page.cells.iter().filter(|c| c.rowid.is_none()) {
            let entry = match cell.values.as_slice() {
                [Value::Int(kind), Value::Int(id), Value::Text(name)]
                | [Value::Int(kind), Value::Text(name), Value::Int(id)] => {
                    (*kind, *id, String::from_utf8_lossy(name).into_owned())
                }
                _ => continue,
            };
            if (entry.0 == 0 || entry.0 == 1)
                && (0..=i64::from(row::MAX_NAME_ID)).contains(&entry.1)
            {
                *votes.entry(entry).or_default() += 1;
            }
        }
    }
    let mut best: BTreeMap<(i64, i64), (u32, String)> = BTreeMap::new();
    for ((kind, id, name), n) in votes {
        let slot = best.entry((kind, id)).or_insert((0, String::new()));
        if n > slot.0 {
            *slot = (n, name);
        }
    }
    let mut devices = Vec::new();
    let mut metrics = Vec::new();
    for ((kind, id), (_, name)) in best {
        if kind == 0 {
            devices.push((id, name));
        } else {
            metrics.push((id, name));
        }
    }
    (devices, metrics)
}

/// The columns of a cell shaped like a `records` row (7 columns, or 8 with
/// the checksum; the `seq` column is the rowid).
pub(in crate::buffer) fn record_shape(cell: &Cell) -> Option<row::RawRow> {
    let seq = cell.rowid?;
    let v = &cell.values;
    if !(7..=8).contains(&v.len()) || v[0] != Value::Null {
        return None;
    }
    let int = |x: &Value| match x {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let device_time = match &v[3] {
        Value::Null => None,
        Value::Int(i) => Some(*i),
        _ => return None,
    };
    let metrics = match &v[6] {
        Value::Blob(b) => b.clone(),
        _ => return None,
    };
    Some(row::RawRow {
        seq,
        device: int(&v[1])?,
        received_at: int(&v[2])?,
        device_time,
        state: int(&v[4])?,
        flags: int(&v[5])?,
        metrics,
    })
}

/// The checksum column of a record-shaped cell, if it has one.
pub(in crate::buffer) fn stored_crc(cell: &Cell) -> Option<i64> {
    match cell.values.get(7) {
        Some(Value::Int(c)) => Some(*c),
        _ => None,
    }
}

/// Whether a record-shaped cell's checksum (if it has one) matches.
pub(in crate::buffer) fn checksum_ok(cell: &Cell, raw: &row::RawRow) -> bool {
    stored_crc(cell).is_none_or(|c| c == row::crc(raw))
}

/// A row that passed its checks, with names instead of ids.
pub(in crate::buffer) struct Good {
    pub(in crate::buffer) raw: row::RawRow,
    pub(in crate::buffer) device: &'static str,
    pub(in crate::buffer) metrics: Vec<(&'static str, Option<f64>)>,
}

/// Checks a record-shaped cell; `Err` says why it is doubtful.
pub(in crate::buffer) fn check_row(
    cell: &Cell,
    raw: row::RawRow,
    names: &Names,
    newest_ms: i64,
) -> Result<Good, &'static str> {
    let has_crc = stored_crc(cell).is_some();
    if has_crc && !checksum_ok(cell, &raw) {
        return Err("checksum mismatch");
    }
    if raw.seq < 1 {
        return Err("seq out of range");
    }
    let device = names
        .name(DEVICE, raw.device)
        .ok_or("device id unknown (names lost)")?;
    let metrics = row::decode_metrics(&raw.metrics, |id| names.name(METRIC, i64::from(id)))
        .map_err(|e| match e {
            row::RowError::UnknownName(_) => "metric id unknown (names lost)",
            row::RowError::Truncated(_) => "metrics unreadable",
        })?;
    if !has_crc {
        // Rows from before the checksum: only what physics allows.
        if !(PLAUSIBLE_SINCE_MS..=newest_ms).contains(&raw.received_at) {
            return Err("received_at outside the file's time range");
        }
        if !(0..=3).contains(&raw.state) || !(0..32).contains(&raw.flags) {
            return Err("state or flags out of range");
        }
        if raw.device_time.is_some_and(|d| d.abs() > 10 * 366 * 86_400) {
            return Err("device_time implausible");
        }
        if metrics
            .iter()
            .any(|(_, v)| v.is_some_and(|v| !PLAUSIBLE_DB.contains(&v)))
        {
            return Err("level outside -30..200 dB");
        }
    }
    Ok(Good {
        raw,
        device,
        metrics,
    })
}
