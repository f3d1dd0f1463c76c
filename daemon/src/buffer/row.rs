//! The on-disk form of a record: one row of `records`, kept small.
//!
//! | column | type | holds |
//! |---|---|---|
//! | `seq` | INTEGER PRIMARY KEY | the record's `seq` (the rowid: no extra index) |
//! | `device` | INTEGER | id in `names` (kind 0) |
//! | `received_at` | INTEGER | Unix time in ms |
//! | `device_time` | INTEGER or NULL | meter time minus `received_at`, in whole seconds (small) |
//! | `state` | INTEGER | 0 unknown, 1 measuring, 2 stopped, 3 paused |
//! | `flags` | INTEGER | bit set: 1 overload, 2 under_range, 4 replayed, 8 clock_unsynced, 16 quarantined |
//! | `metrics` | BLOB | entries of `[name id: u8][value]`, see below |
//! | `crc` | INTEGER or NULL | CRC-32 of the row (see [`crc`]), as a signed 32-bit number; NULL in rows written before schema 3 |
//!
//! Metric entries: the name id (from `names`, kind 1, < 128) and then either
//! an `i16` little-endian in tenths of a dB (`i16::MIN` = null) or, with the
//! id's high bit set, an `f64` little-endian for a value that is not a whole
//! number of tenths. Meters report tenths, so nearly every value takes 3
//! bytes, and none is ever rounded.

use crate::record::{Flag, Interval, MeterState, Record};

/// `i16` tenths meaning "null".
const NULL_TENTHS: i16 = i16::MIN;
/// High bit of the name id: an `f64` follows instead of `i16` tenths.
const F64_VALUE: u8 = 0x80;
/// Largest name id a blob can carry.
pub const MAX_NAME_ID: u8 = 0x7f;

/// Why a stored row could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// The metrics blob ends in the middle of an entry.
    #[error("metrics blob truncated at byte {0}")]
    Truncated(usize),
    /// A name id that is not in the `names` table.
    #[error("unknown metric name id {0}")]
    UnknownName(u8),
}

/// Encodes metrics as a blob, given a way to get each name's id.
pub fn encode_metrics(
    metrics: &[(&str, Option<f64>)],
    mut name_id: impl FnMut(&str) -> u8,
) -> Vec<u8> {
    let mut blob = Vec::with_capacity(metrics.len() * 3);
    for (name, value) in metrics {
        let id = name_id(name) & MAX_NAME_ID;
        match value {
            None => {
                blob.push(id);
                blob.extend_from_slice(&NULL_TENTHS.to_le_bytes());
            }
            Some(v) => match exact_tenths(*v) {
                Some(tenths) => {
                    blob.push(id);
                    blob.extend_from_slice(&tenths.to_le_bytes());
                }
                None => {
                    blob.push(id | F64_VALUE);
                    blob.extend_from_slice(&v.to_le_bytes());
                }
            },
        }
    }
    blob
}

/// `v` as tenths when that is exact and fits (never `NULL_TENTHS`).
fn exact_tenths(v: f64) -> Option<i16> {
    let tenths = (v * 10.0).round();
    if !(f64::from(i16::MIN + 1)..=f64::from(i16::MAX)).contains(&tenths) {
        return None;
    }
    let t = tenths as i16; // in range, checked above
    // Exact when it prints back to the same f64 (58.3 → 583 → 58.3).
    (f64::from(t) / 10.0 == v).then_some(t)
}

/// Decodes a metrics blob, mapping ids back to names.
pub fn decode_metrics<'n>(
    blob: &[u8],
    name: impl Fn(u8) -> Option<&'n str>,
) -> Result<Vec<(&'n str, Option<f64>)>, RowError> {
    let mut metrics = Vec::with_capacity(blob.len() / 3);
    let mut at = 0;
    while at < blob.len() {
        let tag = blob[at];
        let id = tag & MAX_NAME_ID;
        let metric = name(id).ok_or(RowError::UnknownName(id))?;
        if tag & F64_VALUE != 0 {
            let bytes: [u8; 8] = blob
                .get(at + 1..at + 9)
                .and_then(|b| b.try_into().ok())
                .ok_or(RowError::Truncated(at))?;
            metrics.push((metric, Some(f64::from_le_bytes(bytes))));
            at += 9;
        } else {
            let bytes: [u8; 2] = blob
                .get(at + 1..at + 3)
                .and_then(|b| b.try_into().ok())
                .ok_or(RowError::Truncated(at))?;
            let tenths = i16::from_le_bytes(bytes);
            let value = (tenths != NULL_TENTHS).then(|| f64::from(tenths) / 10.0);
            metrics.push((metric, value));
            at += 3;
        }
    }
    Ok(metrics)
}

/// A row's columns as stored (ids, not names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRow {
    /// `seq`.
    pub seq: i64,
    /// Device id.
    pub device: i64,
    /// Unix ms.
    pub received_at: i64,
    /// Meter time minus `received_at`, whole seconds.
    pub device_time: Option<i64>,
    /// State code.
    pub state: i64,
    /// Flag bits.
    pub flags: i64,
    /// Metrics blob.
    pub metrics: Vec<u8>,
}

/// The row's checksum: CRC-32 (IEEE) over every column in a fixed byte
/// form, the `quarantined` flag left out (it is set after the row is
/// written), stored as a signed 32-bit number (4 bytes in SQLite).
///
/// Byte form: `seq`, `device`, `received_at` as i64 LE; a 0 byte for a
/// NULL `device_time` or a 1 byte and the i64 LE; `state` and `flags` as
/// i64 LE; the metrics blob.
pub fn crc(row: &RawRow) -> i64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&row.seq.to_le_bytes());
    h.update(&row.device.to_le_bytes());
    h.update(&row.received_at.to_le_bytes());
    match row.device_time {
        None => h.update(&[0]),
        Some(d) => {
            h.update(&[1]);
            h.update(&d.to_le_bytes());
        }
    }
    h.update(&row.state.to_le_bytes());
    h.update(&(row.flags & !QUARANTINED_BIT).to_le_bytes());
    h.update(&row.metrics);
    // Reinterpreted, not converted: SQLite stores it in 4 bytes.
    i64::from(h.finalize() as i32)
}

/// The state as stored.
pub fn state_code(state: MeterState) -> i64 {
    match state {
        MeterState::Unknown => 0,
        MeterState::Measuring => 1,
        MeterState::Stopped => 2,
        MeterState::Paused => 3,
    }
}

/// The state from its stored code (anything unknown reads as `unknown`).
pub fn state_from_code(code: i64) -> MeterState {
    match code {
        1 => MeterState::Measuring,
        2 => MeterState::Stopped,
        3 => MeterState::Paused,
        _ => MeterState::Unknown,
    }
}

const FLAG_BITS: [(Flag, i64); 6] = [
    (Flag::Overload, 1),
    (Flag::UnderRange, 2),
    (Flag::Replayed, 4),
    (Flag::ClockUnsynced, 8),
    (Flag::Quarantined, 16),
    (Flag::LowCoverage, 64),
];

/// The bit of [`Flag::Quarantined`].
pub const QUARANTINED_BIT: i64 = 16;

/// The bit that makes a row an interval level (not a flag on the wire:
/// the record's `kind`).
pub const INTERVAL_BIT: i64 = 32;

/// Reserved metric entries that carry an interval level's window inside
/// the row's metrics blob (so the row checksum covers them and a salvage
/// copies them like any metric). A meter's metric never starts with `_`.
const INTERVAL_START: &str = "_start";
const INTERVAL_LENGTH: &str = "_length";
const INTERVAL_READINGS: &str = "_readings";
const INTERVAL_COVERAGE: &str = "_coverage";

/// Flags as a bit set.
pub fn flag_bits(flags: &[Flag]) -> i64 {
    FLAG_BITS
        .iter()
        .filter(|(f, _)| flags.contains(f))
        .map(|(_, bit)| bit)
        .sum()
}

/// A record's flag bits as stored ([`INTERVAL_BIT`] for an interval level).
pub fn record_bits(record: &Record) -> i64 {
    flag_bits(&record.flags)
        | if record.interval.is_some() {
            INTERVAL_BIT
        } else {
            0
        }
}

/// The metric entries a record's row stores: its metrics and, for an
/// interval level, the window in the reserved entries.
pub fn stored_metrics(record: &Record) -> Vec<(&'static str, Option<f64>)> {
    let mut metrics = record.metrics.clone();
    if let Some(interval) = &record.interval {
        // Whole seconds and counts: exact in an f64.
        metrics.extend([
            (INTERVAL_START, Some(interval.start.timestamp() as f64)),
            (INTERVAL_LENGTH, Some(interval.length.as_secs() as f64)),
            (INTERVAL_READINGS, Some(f64::from(interval.readings))),
            (INTERVAL_COVERAGE, Some(interval.coverage)),
        ]);
    }
    metrics
}

/// Takes an interval level's window back out of its stored metrics; `None`
/// for a reading's row (or an interval row missing an entry: then the
/// entries stay, visible, rather than being guessed).
pub fn take_interval(
    metrics: &mut Vec<(&'static str, Option<f64>)>,
    bits: i64,
) -> Option<Interval> {
    if bits & INTERVAL_BIT == 0 {
        return None;
    }
    let value = |name: &str| {
        metrics
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    };
    let start = chrono::DateTime::from_timestamp(value(INTERVAL_START)? as i64, 0)?;
    let length = std::time::Duration::from_secs(value(INTERVAL_LENGTH)? as u64);
    let readings = value(INTERVAL_READINGS)? as u32;
    let coverage = value(INTERVAL_COVERAGE)?;
    metrics.retain(|(n, _)| !n.starts_with('_'));
    Some(Interval {
        start,
        length,
        readings,
        coverage,
    })
}

/// Flags from their bit set, in a fixed order.
pub fn flags_from_bits(bits: i64) -> Vec<Flag> {
    FLAG_BITS
        .iter()
        .filter(|(_, bit)| bits & bit != 0)
        .map(|(f, _)| *f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 4] = ["lp", "leq", "lmax", "odd"];

    fn id(name: &str) -> u8 {
        NAMES.iter().position(|n| *n == name).map_or(0, |i| i as u8)
    }

    #[test]
    fn metrics_round_trip_exactly_and_compactly() {
        let metrics = vec![
            ("lp", Some(58.3)),
            ("leq", None),
            ("lmax", Some(-2.5)),
            ("odd", Some(1.0 / 3.0)),
        ];
        let blob = encode_metrics(&metrics, id);
        assert_eq!(blob.len(), 3 + 3 + 3 + 9);
        let back = decode_metrics(&blob, |i| NAMES.get(usize::from(i)).copied());
        assert_eq!(back, Ok(metrics));
    }

    #[test]
    fn damaged_blobs_are_errors_not_panics() {
        let blob = encode_metrics(&[("lp", Some(50.0))], id);
        assert_eq!(
            decode_metrics(&blob[..2], |i| NAMES.get(usize::from(i)).copied()),
            Err(RowError::Truncated(0))
        );
        assert_eq!(
            decode_metrics(&[9, 0, 0], |i| NAMES.get(usize::from(i)).copied()),
            Err(RowError::UnknownName(9))
        );
    }

    #[test]
    fn the_checksum_sees_every_column_but_the_quarantine_flag() {
        let row = RawRow {
            seq: 1041,
            device: 2,
            received_at: 1_763_820_917_123,
            device_time: Some(-1),
            state: 1,
            flags: 8,
            metrics: encode_metrics(&[("lp", Some(52.1))], id),
        };
        let base = crc(&row);
        assert!(i32::try_from(base).is_ok(), "fits 4 bytes");
        assert_eq!(
            crc(&RawRow {
                flags: 8 | QUARANTINED_BIT,
                ..row.clone()
            }),
            base
        );
        let changed = [
            RawRow {
                seq: 1042,
                ..row.clone()
            },
            RawRow {
                device: 3,
                ..row.clone()
            },
            RawRow {
                received_at: row.received_at + 1,
                ..row.clone()
            },
            RawRow {
                device_time: None,
                ..row.clone()
            },
            RawRow {
                device_time: Some(0),
                ..row.clone()
            },
            RawRow {
                state: 2,
                ..row.clone()
            },
            RawRow {
                flags: 9,
                ..row.clone()
            },
            RawRow {
                metrics: encode_metrics(&[("lp", Some(52.2))], id),
                ..row.clone()
            },
        ];
        for other in changed {
            assert_ne!(crc(&other), base, "{other:?}");
        }
    }

    #[test]
    fn flags_and_states_round_trip() {
        let flags = vec![Flag::UnderRange, Flag::ClockUnsynced];
        assert_eq!(flags_from_bits(flag_bits(&flags)), flags);
        for s in [
            MeterState::Unknown,
            MeterState::Measuring,
            MeterState::Stopped,
            MeterState::Paused,
        ] {
            assert_eq!(state_from_code(state_code(s)), s);
        }
    }
}
