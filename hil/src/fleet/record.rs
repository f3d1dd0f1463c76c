//! The record of SPEC §3 on its way in (parsed and checked from a push body)
//! and at rest (a compact form kept for up to millions of records).
//!
//! Parsing is typed serde over the body's bytes, borrowing strings where the
//! JSON has no escapes, and checks every field as it goes (an RFC 3339
//! timestamp, a non-empty device, a known state, numbers or null as
//! metrics), so an error names the field; unknown fields are refused, since
//! the fleet record is exactly SPEC §3 and a field the daemon should not push
//! (battery, raw line) must show up in a rig, not slip through. The body
//! around the records is SPEC §7's plus slmd's two optional fields: `epoch`
//! (an unsigned integer below 2^53) and `skipped` (`[from, to]` pairs with
//! `from <= to`), checked the same way (`skipped[1]: from 9 is greater than
//! to 3`). A record may be an interval record (SPEC §11, `"kind":
//! "interval"`), whose four own fields (`interval_start`, `interval_length`,
//! `readings`, `coverage`) are required there and refused in a reading.
//!
//! At rest a record is a `Slot`: its sequence number, the index of its
//! epoch in its gateway's list of epochs (the epoch itself is kept once per
//! epoch, and the index fits in what would be padding), an interned
//! `Profile` (device, metric names in order, flags: the same few
//! combinations repeat across a whole run), its timestamps as integers when
//! they have the daemon's canonical form (text otherwise, so every record is
//! served back exactly as received), its state, and its metric values in the
//! gateway's value arena. Metric numbers keep their JSON kind: an integer
//! comes back as an integer, a float as the same `f64`. The kind is part of
//! the profile; an interval record's own fields are kept out of line by the
//! store (they are rare), so a slot stays as small as a reading's.

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::ser::{SerializeMap, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

/// Run state of the meter, as SPEC §3 names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// Measuring.
    Measuring,
    /// Stopped.
    Stopped,
    /// Paused.
    Paused,
    /// Not known.
    Unknown,
}

/// What a record is (SPEC §11): its `kind` field, absent for a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// `"reading"`: one reading from one meter (SPEC §3), the same as no
    /// `kind` at all.
    Reading,
    /// `"interval"`: an interval level (SPEC §11), with `interval_start`,
    /// `interval_length`, `readings` and `coverage`.
    Interval,
}

/// The fields only an interval record has, exactly as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct IntervalFields {
    /// Start of the interval (RFC 3339), exactly as sent.
    pub interval_start: String,
    /// Its length as sent, e.g. `"15m"`.
    pub interval_length: String,
    /// Readings it was computed from.
    pub readings: u64,
    /// Share of the interval with readings, 0 to 1, with its JSON kind.
    pub coverage: serde_json::Number,
}

/// A record as the fleet received it, in the JSON form of SPEC §3
/// (serializing it gives that form back, with `"epoch"` first when the
/// record's numbering epoch is not 0). An interval record (SPEC §11) has
/// its `kind` and its [`IntervalFields`] besides.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    /// The numbering epoch of the body it came in (0 when the body had none);
    /// serialized only when not 0, so records of epoch 0 have exactly the
    /// SPEC §3 form.
    pub epoch: u64,
    /// Gateway-wide sequence number (unique within its gateway and epoch).
    pub seq: u64,
    /// The record's `kind` as sent (`None`: absent, a reading).
    pub kind: Option<RecordKind>,
    /// Device id.
    pub device: String,
    /// Gateway wall clock at reception, exactly as sent.
    pub received_at: String,
    /// The meter's timestamp exactly as sent, or `None` for null.
    pub device_time: Option<String>,
    /// Metric name and value (`None` for null) in the order sent; numbers
    /// keep their JSON kind (integer or float).
    pub metrics: Vec<(String, Option<serde_json::Number>)>,
    /// Run state.
    pub state: RecordState,
    /// Flags in the order sent.
    pub flags: Vec<String>,
    /// An interval record's own fields (`None` for a reading).
    pub interval: Option<IntervalFields>,
}

impl StoredRecord {
    /// The value of metric `name` as `f64`: `None` when the record has no
    /// such metric, `Some(None)` when it was null.
    pub fn metric(&self, name: &str) -> Option<Option<f64>> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref().and_then(serde_json::Number::as_f64))
    }
}

impl Serialize for StoredRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The metrics as a JSON object in their order.
        struct Metrics<'a>(&'a [(String, Option<serde_json::Number>)]);
        impl Serialize for Metrics<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (name, value) in self.0 {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
        let fields = 7
            + usize::from(self.epoch != 0)
            + usize::from(self.kind.is_some())
            + if self.interval.is_some() { 4 } else { 0 };
        let mut record = serializer.serialize_struct("StoredRecord", fields)?;
        if self.epoch != 0 {
            record.serialize_field("epoch", &self.epoch)?;
        }
        record.serialize_field("seq", &self.seq)?;
        if let Some(kind) = &self.kind {
            record.serialize_field("kind", kind)?;
        }
        record.serialize_field("device", &self.device)?;
        record.serialize_field("received_at", &self.received_at)?;
        record.serialize_field("device_time", &self.device_time)?;
        if let Some(interval) = &self.interval {
            record.serialize_field("interval_start", &interval.interval_start)?;
            record.serialize_field("interval_length", &interval.interval_length)?;
        }
        record.serialize_field("metrics", &Metrics(&self.metrics))?;
        if let Some(interval) = &self.interval {
            record.serialize_field("readings", &interval.readings)?;
            record.serialize_field("coverage", &interval.coverage)?;
        }
        record.serialize_field("state", &self.state)?;
        record.serialize_field("flags", &self.flags)?;
        record.end()
    }
}

// ---------------------------------------------------------------------------
// On the way in.

/// A push body, borrowing from its bytes.
///
/// Besides SPEC §7's `gateway` and `records`, slmd's push body may carry two
/// optional fields: `epoch` (the gateway's numbering epoch, absent: 0) and
/// `skipped` (`[from, to]` ranges of seqs of that epoch handed out but never
/// stored).
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = r#"an object {"gateway": "...", "records": [...]}"#
)]
pub(crate) struct IngestBody<'a> {
    /// The pushing gateway's id.
    #[serde(borrow)]
    pub(crate) gateway: Name<'a>,
    /// The numbering epoch every record of the body belongs to.
    #[serde(default)]
    pub(crate) epoch: Epoch,
    /// The records, in the order sent.
    #[serde(borrow)]
    pub(crate) records: Vec<Object<RecordIn<'a>>>,
    /// Seqs of this epoch declared never stored, as sent.
    #[serde(default)]
    pub(crate) skipped: Vec<SkipIn>,
}

/// Epochs are below this (2^53), so every JSON reader, including a
/// JavaScript one, holds them exactly.
pub const EPOCH_LIMIT: u64 = 1 << 53;

/// A gateway's numbering epoch: an unsigned integer below [`EPOCH_LIMIT`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Epoch(pub(crate) u64);

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes unsigned integers below the limit.
        struct EpochVisitor;
        impl Visitor<'_> for EpochVisitor {
            type Value = Epoch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an unsigned integer below 2^53")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Epoch, E> {
                if v < EPOCH_LIMIT {
                    Ok(Epoch(v))
                } else {
                    Err(de::Error::invalid_value(Unexpected::Unsigned(v), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Epoch, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(de::Error::invalid_value(Unexpected::Signed(v), &self)),
                }
            }
        }
        deserializer.deserialize_u64(EpochVisitor)
    }
}

/// Declared skips longer than this many numbers break the gateway's bound
/// (SPEC §7: at most 10 000 numbers per unclean stop).
pub const SKIP_BOUND: u64 = 10_000;

/// One `[from, to]` entry of `skipped`: inclusive, `from <= to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SkipIn {
    /// First number skipped.
    pub(crate) from: u64,
    /// Last number skipped.
    pub(crate) to: u64,
}

impl<'de> Deserialize<'de> for SkipIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads exactly two unsigned integers in order.
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = SkipIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pair [from, to] of unsigned integers")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<SkipIn, A::Error> {
                let Some(from) = seq.next_element::<u64>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                let Some(to) = seq.next_element::<u64>()? else {
                    return Err(de::Error::invalid_length(1, &self));
                };
                let mut len = 2;
                while seq.next_element::<de::IgnoredAny>()?.is_some() {
                    len += 1;
                }
                if len != 2 {
                    return Err(de::Error::invalid_length(len, &self));
                }
                if from > to {
                    return Err(de::Error::custom(format_args!(
                        "from {from} is greater than to {to}"
                    )));
                }
                Ok(SkipIn { from, to })
            }
        }
        deserializer.deserialize_seq(SkipVisitor)
    }
}

/// One record of a push body, checked field by field.
///
/// `kind` may be absent (a reading), `"reading"` or `"interval"`; the four
/// fields of an interval record (SPEC §11) are required in one and refused
/// in a reading, which [`RecordIn::check_kind`] checks once the record
/// parsed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a record object (SPEC §3)")]
pub(crate) struct RecordIn<'a> {
    /// Gateway-wide sequence number.
    pub(crate) seq: u64,
    /// What the record is; absent: a reading. Not null.
    #[serde(default, deserialize_with = "kind")]
    pub(crate) kind: Option<RecordKind>,
    /// Device id, non-empty.
    #[serde(borrow)]
    pub(crate) device: Name<'a>,
    /// RFC 3339.
    pub(crate) received_at: Stamp,
    /// RFC 3339 or null, but present.
    #[serde(deserialize_with = "nullable")]
    pub(crate) device_time: Option<Stamp>,
    /// Interval records: RFC 3339.
    #[serde(default, deserialize_with = "some")]
    pub(crate) interval_start: Option<Stamp>,
    /// Interval records: `<n><s|m|h|d>`.
    #[serde(default, deserialize_with = "some")]
    pub(crate) interval_length: Option<Length>,
    /// Name → number or null.
    #[serde(borrow)]
    pub(crate) metrics: MetricsIn<'a>,
    /// Interval records: readings the levels came from.
    #[serde(default, deserialize_with = "some")]
    pub(crate) readings: Option<u64>,
    /// Interval records: share of the interval with readings, 0 to 1.
    #[serde(default, deserialize_with = "some")]
    pub(crate) coverage: Option<Coverage>,
    /// One of the four states.
    pub(crate) state: RecordState,
    /// Any strings.
    #[serde(borrow)]
    pub(crate) flags: Vec<Str<'a>>,
}

impl RecordIn<'_> {
    /// Checks the interval fields against `kind`; the error starts with the
    /// path below the record (`.readings: ...`) or with `: ` for a field
    /// missing from the record, so `records[i]` goes in front.
    pub(crate) fn check_kind(&self) -> Result<(), String> {
        let present = [
            ("interval_start", self.interval_start.is_some()),
            ("interval_length", self.interval_length.is_some()),
            ("readings", self.readings.is_some()),
            ("coverage", self.coverage.is_some()),
        ];
        if self.kind == Some(RecordKind::Interval) {
            if let Some((name, _)) = present.iter().find(|(_, here)| !here) {
                return Err(format!(
                    ": missing field `{name}` (an interval record needs interval_start, interval_length, readings and coverage)"
                ));
            }
        } else if let Some((name, _)) = present.iter().find(|(_, here)| *here) {
            return Err(format!(
                r#".{name}: only an interval record ("kind": "interval") has this field"#
            ));
        }
        Ok(())
    }

    /// The interval fields, when all are there.
    fn interval(&mut self) -> Option<Box<IntervalIn>> {
        if self.kind != Some(RecordKind::Interval) {
            return None;
        }
        Some(Box::new(IntervalIn {
            interval_start: self.interval_start.take()?,
            interval_length: self.interval_length.take()?.0,
            readings: self.readings.take()?,
            coverage: self.coverage.take()?.0,
        }))
    }
}

/// Reads a value that may be absent (with `#[serde(default)]`) but not null.
fn some<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Reads `kind`, which may be absent (with `#[serde(default)]`) but not
/// null.
fn kind<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<RecordKind>, D::Error> {
    match Option::<RecordKind>::deserialize(deserializer)? {
        Some(kind) => Ok(Some(kind)),
        None => Err(de::Error::invalid_type(
            Unexpected::Other("null"),
            &r#""reading" or "interval""#,
        )),
    }
}

/// An interval length as sent: a positive whole number and a unit, `s`,
/// `m`, `h` or `d` (`"15m"`, `"1h"`, `"30s"`, `"1d"`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Length(pub(crate) Box<str>);

impl<'de> Deserialize<'de> for Length {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Str(text) = Str::deserialize(deserializer)?;
        let valid = text
            .strip_suffix(['s', 'm', 'h', 'd'])
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
        if !valid {
            return Err(de::Error::custom(format_args!(
                "`{}` is not an interval length (a positive whole number and s, m, h or d, e.g. \"15m\")",
                excerpt(&text)
            )));
        }
        Ok(Length(text.as_ref().into()))
    }
}

/// An interval's coverage: a number from 0 to 1, kept with its JSON kind.
#[derive(Debug, PartialEq)]
pub(crate) struct Coverage(pub(crate) serde_json::Number);

impl<'de> Deserialize<'de> for Coverage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes numbers from 0 to 1.
        struct CoverageVisitor;
        impl CoverageVisitor {
            /// `n` when it is in range.
            fn check<E: de::Error>(
                n: serde_json::Number,
                shown: Unexpected<'_>,
            ) -> Result<Coverage, E> {
                match n.as_f64() {
                    Some(f) if (0.0..=1.0).contains(&f) => Ok(Coverage(n)),
                    _ => Err(de::Error::invalid_value(shown, &CoverageVisitor)),
                }
            }
        }
        impl Visitor<'_> for CoverageVisitor {
            type Value = Coverage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number from 0 to 1")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Coverage, E> {
                Self::check(v.into(), Unexpected::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Coverage, E> {
                Self::check(v.into(), Unexpected::Signed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Coverage, E> {
                match serde_json::Number::from_f64(v) {
                    Some(n) => Self::check(n, Unexpected::Float(v)),
                    None => Err(de::Error::invalid_value(Unexpected::Float(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(CoverageVisitor)
    }
}

/// An interval record's own fields, checked.
#[derive(Debug, PartialEq)]
pub(crate) struct IntervalIn {
    /// Start of the interval.
    pub(crate) interval_start: Stamp,
    /// Its length as sent.
    pub(crate) interval_length: Box<str>,
    /// Readings it was computed from.
    pub(crate) readings: u64,
    /// Its coverage, with its JSON kind.
    pub(crate) coverage: serde_json::Number,
}

impl IntervalIn {
    /// The public form.
    fn to_fields(&self) -> IntervalFields {
        IntervalFields {
            interval_start: self.interval_start.to_string(),
            interval_length: self.interval_length.to_string(),
            readings: self.readings,
            coverage: self.coverage.clone(),
        }
    }
}

/// A `T` that must be a JSON object: a derived struct would also take an
/// array of its fields in order, which no SPEC §7 body is.
#[derive(Debug)]
pub(crate) struct Object<T>(pub(crate) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectOnly(deserializer)).map(Object)
    }
}

/// A deserializer that reads structs as maps only.
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A JSON string, borrowed from the body when it has no escapes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Takes the borrowed form whenever the deserializer offers it.
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(StrVisitor).map(Str)
    }
}

/// A non-empty JSON string (gateway and device ids).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Name<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Str(text) = Str::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(de::Error::invalid_value(
                Unexpected::Str(""),
                &"a non-empty string",
            ));
        }
        Ok(Name(text))
    }
}

/// Reads a value that may be null but must be present: with
/// `deserialize_with`, serde reports a missing field instead of taking it as
/// null, as it does for a plain `Option` field.
fn nullable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer)
}

/// A metric value as stored: `f64` bits, or `i64` bits when the metric's bit
/// is set in the record's integer mask. Null is this NaN (JSON has no NaN, so
/// no number can collide with it).
const NULL_BITS: u64 = 0x7ff8_0000_0000_0bad;

/// Metrics beyond this many in one record keep integers as `f64` (the
/// integer mask is a `u64`); meters have about a dozen.
const INT_MASK_BITS: usize = 64;

/// The metrics object of a record.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct MetricsIn<'a> {
    /// Names in the order sent.
    pub(crate) names: Vec<Str<'a>>,
    /// Values in the same order, encoded as stored (see [`NULL_BITS`]).
    pub(crate) values: Vec<u64>,
    /// Bit `i` set: value `i` is an integer.
    pub(crate) ints: u64,
}

impl<'de: 'a, 'a> Deserialize<'de> for MetricsIn<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads the object entry by entry, refusing repeated names.
        struct MetricsVisitor;
        impl<'de> Visitor<'de> for MetricsVisitor {
            type Value = MetricsIn<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of metric name → number or null")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut metrics = MetricsIn::default();
                while let Some(name) = map.next_key::<Str<'de>>()? {
                    let value: Num = map.next_value()?;
                    if metrics.names.iter().any(|n| n.0 == name.0) {
                        return Err(de::Error::custom(format_args!(
                            "metric `{}` appears twice",
                            excerpt(&name.0)
                        )));
                    }
                    let i = metrics.values.len();
                    let bits = match value {
                        Num::Null => NULL_BITS,
                        Num::Float(f) => f.to_bits(),
                        Num::Int(n) if i < INT_MASK_BITS => {
                            metrics.ints |= 1 << i;
                            // Reinterpreted, not converted: read back as i64.
                            n as u64
                        }
                        Num::Int(n) => (n as f64).to_bits(),
                    };
                    metrics.values.push(bits);
                    metrics.names.push(name);
                }
                Ok(metrics)
            }
        }
        deserializer.deserialize_map(MetricsVisitor)
    }
}

/// A metric value as sent.
enum Num {
    /// `null`.
    Null,
    /// A number with a fraction or exponent (or an integer beyond `i64`).
    Float(f64),
    /// An integer.
    Int(i64),
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Keeps the JSON kind of the number.
        struct NumVisitor;
        impl Visitor<'_> for NumVisitor {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Num, E> {
                Ok(Num::Null)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num::Float(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(i64::try_from(v).map_or(Num::Float(v as f64), Num::Int))
            }
        }
        deserializer.deserialize_any(NumVisitor)
    }
}

/// At most this much of a sent string goes into an error message.
const EXCERPT_CHARS: usize = 64;

/// `text`, cut to [`EXCERPT_CHARS`] characters for an error message.
pub(crate) fn excerpt(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}

/// Parses a push body; the error names the field (e.g.
/// `records[3].received_at: ...`).
pub(crate) fn parse(body: &[u8]) -> Result<IngestBody<'_>, String> {
    match serde_json::from_slice::<Object<IngestBody<'_>>>(body) {
        Ok(Object(parsed)) => {
            for (i, record) in parsed.records.iter().enumerate() {
                record
                    .0
                    .check_kind()
                    .map_err(|e| format!("records[{i}]{e}"))?;
            }
            Ok(parsed)
        }
        // The fast path does not track where it is; errors are rare, so
        // parse again with the path tracked to say where.
        Err(plain) => Err(explain(body).unwrap_or_else(|| plain.to_string())),
    }
}

/// The error of parsing `body` with its path, or `None` if it parses.
fn explain(body: &[u8]) -> Option<String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let error =
        match serde_path_to_error::deserialize::<_, Object<IngestBody<'_>>>(&mut deserializer) {
            Ok(_) => return deserializer.end().err().map(|e| e.to_string()),
            Err(error) => error,
        };
    let path = error.path().to_string();
    let inner = error.into_inner();
    Some(if path == "." {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    })
}

// ---------------------------------------------------------------------------
// Timestamps.

/// A timestamp as stored: an integer when the text is the daemon's canonical
/// form (so it can be written back identically), the text otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stamp {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as milliseconds since the epoch.
    Millis(i64),
    /// `YYYY-MM-DDTHH:MM:SSZ`, as seconds since the epoch.
    Secs(i64),
    /// Any other RFC 3339 text, kept as sent.
    Text(Box<str>),
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Str(text) = Str::deserialize(deserializer)?;
        let parsed = DateTime::parse_from_rfc3339(&text).map_err(|e| {
            de::Error::custom(format_args!(
                "`{}` is not an RFC 3339 timestamp ({e})",
                excerpt(&text)
            ))
        })?;
        Ok(Stamp::canonical(&text, parsed.timestamp_millis())
            .unwrap_or_else(|| Stamp::Text(text.into())))
    }
}

impl Stamp {
    /// The integer form of `text` (which parsed as RFC 3339 to `millis`), if
    /// writing it back gives exactly `text`: digits in the fixed positions, an
    /// upper-case `T` and `Z`, no leap second, and either no fraction or
    /// exactly three digits of it.
    fn canonical(text: &str, millis: i64) -> Option<Stamp> {
        let b = text.as_bytes();
        let digits = |range: std::ops::Range<usize>| {
            b.get(range)
                .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
        };
        let fixed = b.len() >= 20
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && &b[17..19] != b"60";
        if !fixed {
            return None;
        }
        match b.len() {
            20 if b[19] == b'Z' => Some(Stamp::Secs(millis.div_euclid(1000))),
            24 if b[19] == b'.' && digits(20..23) && b[23] == b'Z' => Some(Stamp::Millis(millis)),
            _ => None,
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The integer forms came from parsed timestamps, so they are in
        // chrono's range; failing here would be a bug, reported as an error.
        match self {
            Stamp::Millis(ms) => {
                let at = DateTime::<Utc>::from_timestamp_millis(*ms).ok_or(fmt::Error)?;
                write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
            }
            Stamp::Secs(secs) => {
                let at = DateTime::<Utc>::from_timestamp(*secs, 0).ok_or(fmt::Error)?;
                write!(f, "{}", at.format("%Y-%m-%dT%H:%M:%SZ"))
            }
            Stamp::Text(text) => f.write_str(text),
        }
    }
}

impl Serialize for Stamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Stamp::Text(text) => serializer.serialize_str(text),
            _ => serializer.collect_str(self),
        }
    }
}

// ---------------------------------------------------------------------------
// At rest.

/// What many records share: the device, the metric names in order, the
/// flags. Interned, so a record holds one pointer to it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Profile {
    /// The record's `kind` as sent (`None`: absent).
    kind: Option<RecordKind>,
    /// Device id.
    device: Box<str>,
    /// Metric names in the order sent.
    names: Box<[Box<str>]>,
    /// Flags in the order sent.
    flags: Box<[Box<str>]>,
}

impl Profile {
    /// Whether `record` has this profile.
    fn matches(&self, record: &RecordIn<'_>) -> bool {
        self.kind == record.kind
            && *self.device == *record.device.0
            && same(&self.names, &record.metrics.names)
            && same(&self.flags, &record.flags)
    }
}

/// Whether the stored strings equal the sent ones.
fn same(stored: &[Box<str>], sent: &[Str<'_>]) -> bool {
    stored.len() == sent.len() && stored.iter().zip(sent).all(|(a, b)| **a == *b.0)
}

/// The profiles seen so far. Never shrinks: a run has a handful.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// Profile by its key (see [`Interner::key`]).
    profiles: HashMap<Box<str>, Arc<Profile>>,
    /// The last profile handed out: consecutive records usually share it.
    last: Option<Arc<Profile>>,
    /// Scratch space for keys, kept to avoid an allocation per record.
    key: String,
}

impl Interner {
    /// The record ready to store, with its profile interned.
    pub(crate) fn prepare(&mut self, mut record: RecordIn<'_>) -> Pending {
        let profile = self.profile(&record);
        Pending {
            interval: record.interval(),
            seq: record.seq,
            profile,
            received_at: record.received_at,
            device_time: record.device_time,
            values: record.metrics.values,
            ints: record.metrics.ints,
            state: record.state,
        }
    }

    /// The interned profile of `record`.
    fn profile(&mut self, record: &RecordIn<'_>) -> Arc<Profile> {
        if let Some(last) = self.last.as_ref().filter(|last| last.matches(record)) {
            return Arc::clone(last);
        }
        self.key(record);
        let profile = match self.profiles.get(self.key.as_str()) {
            Some(profile) => Arc::clone(profile),
            None => {
                let profile = Arc::new(Profile {
                    kind: record.kind,
                    device: record.device.0.as_ref().into(),
                    names: record
                        .metrics
                        .names
                        .iter()
                        .map(|n| n.0.as_ref().into())
                        .collect(),
                    flags: record.flags.iter().map(|f| f.0.as_ref().into()).collect(),
                });
                self.profiles
                    .insert(self.key.as_str().into(), Arc::clone(&profile));
                profile
            }
        };
        self.last = Some(Arc::clone(&profile));
        profile
    }

    /// Writes the key of `record`'s profile to `self.key`: every string
    /// length-prefixed, sections marked, so no two profiles share a key.
    fn key(&mut self, record: &RecordIn<'_>) {
        let key = &mut self.key;
        key.clear();
        // Writing to a String cannot fail.
        let part = |key: &mut String, text: &str| {
            let _ = write!(key, "{}:", text.len());
            key.push_str(text);
        };
        key.push(match record.kind {
            None => '-',
            Some(RecordKind::Reading) => 'r',
            Some(RecordKind::Interval) => 'i',
        });
        part(key, &record.device.0);
        key.push('m');
        for name in &record.metrics.names {
            part(key, &name.0);
        }
        key.push('f');
        for flag in &record.flags {
            part(key, &flag.0);
        }
    }
}

/// A checked record with its profile interned, not yet stored.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Gateway-wide sequence number.
    pub(crate) seq: u64,
    /// Device, metric names, flags.
    pub(crate) profile: Arc<Profile>,
    /// Gateway wall clock at reception.
    pub(crate) received_at: Stamp,
    /// The meter's timestamp, if any.
    pub(crate) device_time: Option<Stamp>,
    /// Metric values (see [`NULL_BITS`]).
    pub(crate) values: Vec<u64>,
    /// Which values are integers.
    pub(crate) ints: u64,
    /// Run state.
    pub(crate) state: RecordState,
    /// An interval record's own fields (out of line: they are rare, and a
    /// stored [`Slot`] stays small).
    pub(crate) interval: Option<Box<IntervalIn>>,
}

impl Pending {
    /// The public form, as a record of `epoch`.
    pub(crate) fn to_record(&self, epoch: u64) -> StoredRecord {
        StoredRecord {
            epoch,
            kind: self.profile.kind,
            interval: self.interval.as_deref().map(IntervalIn::to_fields),
            seq: self.seq,
            device: self.profile.device.to_string(),
            received_at: self.received_at.to_string(),
            device_time: self.device_time.as_ref().map(ToString::to_string),
            metrics: metrics(&self.profile, &self.values, self.ints)
                .map(|(name, value)| (name.to_owned(), value.number()))
                .collect(),
            state: self.state,
            flags: self.profile.flags.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A profile's metrics with their values: name, value, whether an integer.
fn metrics<'a>(
    profile: &'a Profile,
    values: &'a [u64],
    ints: u64,
) -> impl Iterator<Item = (&'a str, Value)> + 'a {
    profile
        .names
        .iter()
        .zip(values)
        .enumerate()
        .map(move |(i, (name, &bits))| {
            let int = i < INT_MASK_BITS && ints & (1 << i) != 0;
            (&**name, Value::decode(bits, int))
        })
}

/// A stored record; its metric values live in its gateway's arena.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Gateway-wide sequence number (unique within its gateway and epoch).
    pub(crate) seq: u64,
    /// Index of its epoch in its gateway's list of epochs: the epoch itself
    /// lives there, once per epoch, and this index fits in what would
    /// otherwise be padding.
    pub(crate) epoch_ix: u32,
    /// Device, metric names, flags.
    profile: Arc<Profile>,
    /// Gateway wall clock at reception.
    received_at: Stamp,
    /// The meter's timestamp, if any.
    device_time: Option<Stamp>,
    /// Where its values start in the arena (as many as the profile has names).
    values_at: usize,
    /// Which values are integers.
    ints: u64,
    /// Run state.
    state: RecordState,
}

impl Slot {
    /// Stores `pending` as a record of the epoch at `epoch_ix`, appending its
    /// values to `arena`.
    /// An interval record's own fields are not kept here: the caller takes
    /// them out of `pending` first and keeps them beside the slot.
    pub(crate) fn store(pending: Pending, epoch_ix: u32, arena: &mut Vec<u64>) -> Slot {
        let values_at = arena.len();
        arena.extend_from_slice(&pending.values);
        Slot {
            seq: pending.seq,
            epoch_ix,
            profile: pending.profile,
            received_at: pending.received_at,
            device_time: pending.device_time,
            values_at,
            ints: pending.ints,
            state: pending.state,
        }
    }

    /// Its value bits in `arena`.
    fn values<'a>(&self, arena: &'a [u64]) -> &'a [u64] {
        arena
            .get(self.values_at..self.values_at + self.profile.names.len())
            .unwrap_or_default()
    }

    /// Its metrics: name, value bits, whether an integer.
    fn metrics<'a>(&'a self, arena: &'a [u64]) -> impl Iterator<Item = (&'a str, Value)> + 'a {
        metrics(&self.profile, self.values(arena), self.ints)
    }

    /// Whether `pending` has the same content (kind, device, timestamps,
    /// interval fields, metrics, state, flags) as this record, whose interval
    /// fields are `interval`: a true re-send. Metrics are a JSON object, so
    /// the same metrics in another order are the same content; each value
    /// must be exactly as sent (its number and its kind).
    pub(crate) fn same_content(
        &self,
        arena: &[u64],
        interval: Option<&IntervalIn>,
        pending: &Pending,
    ) -> bool {
        if interval != pending.interval.as_deref()
            || self.profile.kind != pending.profile.kind
            || self.received_at != pending.received_at
            || self.device_time != pending.device_time
            || self.state != pending.state
        {
            return false;
        }
        let values = self.values(arena);
        if Arc::ptr_eq(&self.profile, &pending.profile) || self.profile == pending.profile {
            return self.ints == pending.ints && values == pending.values.as_slice();
        }
        let (mine, theirs) = (&self.profile, &pending.profile);
        if mine.device != theirs.device
            || mine.flags != theirs.flags
            || mine.names.len() != theirs.names.len()
        {
            return false;
        }
        let int = |mask: u64, i: usize| i < INT_MASK_BITS && mask & (1 << i) != 0;
        let by_name: HashMap<&str, (u64, bool)> = mine
            .names
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (name, bits))| (&**name, (*bits, int(self.ints, i))))
            .collect();
        by_name.len() == mine.names.len()
            && theirs
                .names
                .iter()
                .zip(&pending.values)
                .enumerate()
                .all(|(i, (name, bits))| {
                    by_name.get(&**name) == Some(&(*bits, int(pending.ints, i)))
                })
    }

    /// The public form, as a record of `epoch` (its epoch's value) whose
    /// interval fields are `interval`.
    pub(crate) fn to_record(
        &self,
        arena: &[u64],
        interval: Option<&IntervalIn>,
        epoch: u64,
    ) -> StoredRecord {
        StoredRecord {
            epoch,
            kind: self.profile.kind,
            interval: interval.map(IntervalIn::to_fields),
            seq: self.seq,
            device: self.profile.device.to_string(),
            received_at: self.received_at.to_string(),
            device_time: self.device_time.as_ref().map(ToString::to_string),
            metrics: self
                .metrics(arena)
                .map(|(name, value)| (name.to_owned(), value.number()))
                .collect(),
            state: self.state,
            flags: self.profile.flags.iter().map(ToString::to_string).collect(),
        }
    }

    /// Serializes as SPEC §3 (with `"epoch"` when `epoch`, its epoch's
    /// value, is not 0; with the interval fields `interval`), with no
    /// intermediate copy.
    pub(crate) fn json<'a>(
        &'a self,
        arena: &'a [u64],
        interval: Option<&'a IntervalIn>,
        epoch: u64,
    ) -> SlotJson<'a> {
        SlotJson {
            slot: self,
            arena,
            interval,
            epoch,
        }
    }

    /// Whether it is an interval record.
    pub(crate) fn is_interval(&self) -> bool {
        self.profile.kind == Some(RecordKind::Interval)
    }
}

/// A metric value decoded from the arena.
#[derive(Clone, Copy, Debug)]
enum Value {
    /// null
    Null,
    /// A float.
    Float(f64),
    /// An integer.
    Int(i64),
}

impl Value {
    /// Reads stored bits.
    fn decode(bits: u64, int: bool) -> Value {
        if int {
            return Value::Int(bits as i64);
        }
        let f = f64::from_bits(bits);
        if f.is_nan() {
            Value::Null
        } else {
            Value::Float(f)
        }
    }

    /// As a JSON number.
    fn number(self) -> Option<serde_json::Number> {
        match self {
            Value::Null => None,
            Value::Float(f) => serde_json::Number::from_f64(f),
            Value::Int(n) => Some(n.into()),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Null => serializer.serialize_none(),
            Value::Float(f) => serializer.serialize_f64(f),
            Value::Int(n) => serializer.serialize_i64(n),
        }
    }
}

/// A [`Slot`] ready to serialize as SPEC §3.
pub(crate) struct SlotJson<'a> {
    /// The record.
    slot: &'a Slot,
    /// Its gateway's value arena.
    arena: &'a [u64],
    /// Its interval fields, for an interval record.
    interval: Option<&'a IntervalIn>,
    /// Its epoch (not serialized when 0).
    epoch: u64,
}

impl Serialize for SlotJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The metrics object.
        struct Metrics<'a>(&'a SlotJson<'a>);
        impl Serialize for Metrics<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let slot = self.0.slot;
                let mut map = serializer.serialize_map(Some(slot.profile.names.len()))?;
                for (name, value) in slot.metrics(self.0.arena) {
                    map.serialize_entry(name, &value)?;
                }
                map.end()
            }
        }
        let slot = self.slot;
        let fields = 7
            + usize::from(self.epoch != 0)
            + usize::from(slot.profile.kind.is_some())
            + if self.interval.is_some() { 4 } else { 0 };
        let mut record = serializer.serialize_struct("Record", fields)?;
        if self.epoch != 0 {
            record.serialize_field("epoch", &self.epoch)?;
        }
        record.serialize_field("seq", &slot.seq)?;
        if let Some(kind) = &slot.profile.kind {
            record.serialize_field("kind", kind)?;
        }
        record.serialize_field("device", &*slot.profile.device)?;
        record.serialize_field("received_at", &slot.received_at)?;
        record.serialize_field("device_time", &slot.device_time)?;
        if let Some(interval) = self.interval {
            record.serialize_field("interval_start", &interval.interval_start)?;
            record.serialize_field("interval_length", &*interval.interval_length)?;
        }
        record.serialize_field("metrics", &Metrics(self))?;
        if let Some(interval) = self.interval {
            record.serialize_field("readings", &interval.readings)?;
            record.serialize_field("coverage", &interval.coverage)?;
        }
        record.serialize_field("state", &slot.state)?;
        record.serialize_field("flags", &slot.profile.flags)?;
        record.end()
    }
}

/// `records` (JSON texts) as the store gets them from one body of gateway
/// `gw`: for the store's tests.
#[cfg(test)]
pub(crate) fn prepared(interner: &mut Interner, records: &[&str]) -> Vec<Pending> {
    let body = format!(r#"{{"gateway":"gw","records":[{}]}}"#, records.join(","));
    let parsed = parse(body.as_bytes()).expect("valid body");
    parsed
        .records
        .into_iter()
        .map(|r| interner.prepare(r.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

    const EXAMPLE: &str = r#"{"seq":1041,"device":"nl43-north","received_at":"2026-11-22T14:15:17.123Z","device_time":"2026-11-22T14:15:16Z","metrics":{"lp":52.1,"leq":55.3,"lmax":null},"state":"measuring","flags":["clock_unsynced"]}"#;

    /// Parses `records` as one body, stores them, serializes them back as
    /// text.
    fn round_trip_text(records: &str) -> Vec<String> {
        round_trip(records)
            .into_iter()
            .map(|(text, _)| text)
            .collect()
    }

    /// Parses `records` as one body, stores them, serializes them back.
    fn round_trip_json(records: &str) -> Vec<Json> {
        round_trip(records)
            .into_iter()
            .map(|(_, json)| json)
            .collect()
    }

    /// Parses `records` as one body, stores them, serializes them back (text
    /// and JSON value).
    fn round_trip(records: &str) -> Vec<(String, Json)> {
        let body = format!(r#"{{"gateway":"gw","records":[{records}]}}"#);
        let parsed = parse(body.as_bytes()).expect("valid body");
        let mut interner = Interner::default();
        let mut arena = Vec::new();
        let slots: Vec<(Slot, Option<Box<IntervalIn>>)> = parsed
            .records
            .into_iter()
            .map(|r| {
                let mut pending = interner.prepare(r.0);
                let interval = pending.interval.take();
                (Slot::store(pending, 0, &mut arena), interval)
            })
            .collect();
        slots
            .iter()
            .map(|(slot, interval)| {
                let interval = interval.as_deref();
                let direct =
                    serde_json::to_string(&slot.json(&arena, interval, 0)).expect("serializable");
                let public = serde_json::to_string(&slot.to_record(&arena, interval, 0))
                    .expect("serializable");
                assert_eq!(direct, public, "both forms agree");
                let json = serde_json::from_str(&direct).expect("JSON");
                (direct, json)
            })
            .collect()
    }

    #[test]
    fn records_come_back_exactly_as_sent() {
        assert_eq!(round_trip_text(EXAMPLE), vec![EXAMPLE.to_owned()]);
        // Non-canonical timestamps, integers, huge numbers, escapes, no flags.
        let odd = r#"{"seq":18446744073709551615,"device":"d\u00e9v","received_at":"2026-11-22T15:15:17.1+01:00","device_time":null,"metrics":{"a":52,"b":-3,"c":1e300,"d":0.5},"state":"unknown","flags":[]}"#;
        let back = &round_trip_json(odd)[0];
        assert_eq!(
            *back,
            json!({"seq": u64::MAX, "device": "dév", "received_at": "2026-11-22T15:15:17.1+01:00",
                   "device_time": null, "metrics": {"a": 52, "b": -3, "c": 1e300, "d": 0.5},
                   "state": "unknown", "flags": []})
        );
        assert!(back["metrics"]["a"].is_i64());
        // Lower-case separators and leap seconds stay text.
        for stamp in [
            "2026-11-22t14:15:17Z",
            "2016-12-31T23:59:60Z",
            "2026-11-22T14:15:17.12345Z",
        ] {
            let record = EXAMPLE.replace("2026-11-22T14:15:16Z", stamp);
            assert_eq!(round_trip_json(&record)[0]["device_time"], stamp);
        }
    }

    #[test]
    fn a_stored_record_stays_small() {
        // A million records must fit comfortably: 88 bytes plus 8 per metric.
        assert!(
            std::mem::size_of::<Slot>() <= 88,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(
            std::mem::size_of::<Option<Stamp>>(),
            std::mem::size_of::<Stamp>()
        );
    }

    #[test]
    fn profiles_are_shared() {
        let body = format!(r#"{{"gateway":"gw","records":[{EXAMPLE},{EXAMPLE}]}}"#);
        let parsed = parse(body.as_bytes()).expect("valid body");
        let mut interner = Interner::default();
        let pending: Vec<Pending> = parsed
            .records
            .into_iter()
            .map(|r| interner.prepare(r.0))
            .collect();
        assert!(Arc::ptr_eq(&pending[0].profile, &pending[1].profile));
        assert_eq!(interner.profiles.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "received_at",
                r#""yesterday""#,
                "records[0].received_at: `yesterday` is not an RFC 3339 timestamp",
            ),
            (
                "device",
                r#""""#,
                "records[0].device: invalid value: string \"\", expected a non-empty string",
            ),
            (
                "state",
                r#""running""#,
                "records[0].state: unknown variant `running`",
            ),
            (
                "seq",
                "-1",
                "records[0].seq: invalid value: integer `-1`, expected u64",
            ),
            (
                "metrics",
                r#"{"lp":"52"}"#,
                "records[0].metrics.lp: invalid type: string \"52\", expected a number or null",
            ),
            (
                "flags",
                r#"[1]"#,
                "records[0].flags[0]: invalid type: integer `1`, expected a string",
            ),
        ];
        for (field, value, expected) in cases {
            let mut record: serde_json::Map<String, Json> =
                serde_json::from_str(EXAMPLE).expect("example");
            record.insert(field.into(), serde_json::from_str(value).expect("value"));
            let body = json!({"gateway": "gw", "records": [record]}).to_string();
            let error = parse(body.as_bytes()).expect_err(field);
            assert!(error.starts_with(expected), "{field}: {error}");
        }
        let twice = EXAMPLE.replace(r#""leq":55.3"#, r#""lp":1"#);
        let body = format!(r#"{{"gateway":"gw","records":[{twice}]}}"#);
        let error = parse(body.as_bytes()).expect_err("metric twice");
        assert!(
            error.starts_with("records[0].metrics: metric `lp` appears twice"),
            "{error}"
        );

        let missing = EXAMPLE.replace(r#""device_time":"2026-11-22T14:15:16Z","#, "");
        let body = format!(r#"{{"gateway":"gw","records":[{EXAMPLE},{missing}]}}"#);
        let error = parse(body.as_bytes()).expect_err("missing field");
        assert!(error.contains("missing field `device_time`"), "{error}");
        assert!(error.starts_with("records[1]"), "{error}");

        let extra = EXAMPLE.replace(r#""seq""#, r#""battery":80,"seq""#);
        let body = format!(r#"{{"gateway":"gw","records":[{extra}]}}"#);
        let error = parse(body.as_bytes()).expect_err("unknown field");
        assert!(error.contains("unknown field `battery`"), "{error}");

        for (body, expected) in [
            ("[]", "invalid type: sequence, expected an object"),
            (r#"{"gateway":"","records":[]}"#, "gateway: invalid value"),
            (r#"{"gateway":"g"}"#, "missing field `records`"),
            (r#"{"gateway":"g","records":[]} x"#, "trailing characters"),
            ("{", "EOF while parsing"),
            (r#"["gw",[]]"#, "invalid type: sequence, expected an object"),
            (
                r#"{"gateway":"gw","records":[[1041]]}"#,
                "records[0]: invalid type: sequence",
            ),
        ] {
            let error = parse(body.as_bytes()).expect_err(body);
            assert!(error.contains(expected), "{body}: {error}");
        }
    }

    #[test]
    fn epoch_and_skipped_are_optional_and_typed() {
        let plain = parse(br#"{"gateway":"gw","records":[]}"#).expect("plain");
        assert_eq!((plain.epoch, plain.skipped.len()), (Epoch(0), 0));
        let body = br#"{"skipped":[[1041,1050],[2001,2001]],"gateway":"gw","epoch":7394025617,"records":[]}"#;
        let full = parse(body).expect("full");
        assert_eq!(full.epoch, Epoch(7_394_025_617));
        assert_eq!(
            full.skipped,
            vec![
                SkipIn {
                    from: 1041,
                    to: 1050
                },
                SkipIn {
                    from: 2001,
                    to: 2001
                }
            ]
        );
        let limit = format!(
            r#"{{"gateway":"gw","epoch":{},"records":[]}}"#,
            EPOCH_LIMIT - 1
        );
        assert_eq!(
            parse(limit.as_bytes()).expect("below 2^53").epoch.0,
            EPOCH_LIMIT - 1
        );

        for (field, value, expected) in [
            (
                "skipped",
                "[[1,2],[9,3]]",
                "skipped[1]: from 9 is greater than to 3",
            ),
            (
                "skipped",
                "[[1,2,3]]",
                "skipped[0]: invalid length 3, expected a pair",
            ),
            (
                "skipped",
                "[[1]]",
                "skipped[0]: invalid length 1, expected a pair",
            ),
            (
                "skipped",
                "[[]]",
                "skipped[0]: invalid length 0, expected a pair",
            ),
            (
                "skipped",
                "[5]",
                "skipped[0]: invalid type: integer `5`, expected a pair",
            ),
            (
                "skipped",
                "[[0,1],[-1,4]]",
                "skipped[1][0]: invalid value: integer `-1`, expected u64",
            ),
            (
                "skipped",
                "[[1,2.5]]",
                "skipped[0][1]: invalid type: floating point",
            ),
            ("skipped", r#"{"from":1}"#, "skipped: invalid type: map"),
            ("skipped", "null", "skipped: invalid type: null"),
            (
                "epoch",
                "-1",
                "epoch: invalid value: integer `-1`, expected an unsigned",
            ),
            ("epoch", "1.5", "epoch: invalid type: floating point `1.5`"),
            ("epoch", r#""7""#, r#"epoch: invalid type: string "7""#),
            ("epoch", "null", "epoch: invalid type: null"),
            (
                "epoch",
                "9007199254740992",
                "epoch: invalid value: integer `9007199254740992`, expected an unsigned integer below 2^53",
            ),
        ] {
            let body = format!(r#"{{"gateway":"gw","records":[{EXAMPLE}],"{field}":{value}}}"#);
            let error = parse(body.as_bytes()).expect_err(value);
            assert!(error.starts_with(expected), "{field} {value}: {error}");
        }
        let error = parse(br#"{"gateway":"gw","records":[],"epochs":1}"#).expect_err("unknown");
        assert!(error.contains("unknown field `epochs`"), "{error}");
    }

    #[test]
    fn a_record_of_another_epoch_says_so_and_epoch_0_does_not() {
        let body = format!(r#"{{"gateway":"gw","records":[{EXAMPLE}]}}"#);
        let parsed = parse(body.as_bytes()).expect("valid body");
        let mut interner = Interner::default();
        let mut arena = Vec::new();
        let pending: Vec<Pending> = parsed
            .records
            .into_iter()
            .map(|r| interner.prepare(r.0))
            .collect();
        let incoming = pending[0].to_record(7);
        let slot = pending
            .into_iter()
            .map(|p| Slot::store(p, 0, &mut arena))
            .next()
            .expect("a slot");
        let seven = serde_json::to_string(&slot.json(&arena, None, 7)).expect("JSON");
        assert_eq!(seven, EXAMPLE.replacen('{', r#"{"epoch":7,"#, 1));
        assert_eq!(
            serde_json::to_string(&slot.to_record(&arena, None, 7)).expect("JSON"),
            seven
        );
        assert_eq!(slot.to_record(&arena, None, 7), incoming);
        assert_eq!(
            serde_json::to_string(&slot.to_record(&arena, None, 0)).expect("JSON"),
            EXAMPLE
        );
    }

    #[test]
    fn same_content_means_exactly_as_sent() {
        let mut interner = Interner::default();
        let mut arena = Vec::new();
        let mut prepare = |record: &str| {
            prepared(&mut interner, &[record])
                .pop()
                .expect("one record")
        };
        let stored = Slot::store(prepare(EXAMPLE), 0, &mut arena);
        assert!(stored.same_content(&arena, None, &prepare(EXAMPLE)));
        for (from, to) in [
            ("52.1", "52.2"),
            ("null", "0"),
            ("nl43-north", "nl43-south"),
            (".123Z", ".124Z"),
            ("T14:15:16Z", "T14:15:16.000Z"),
            ("measuring", "paused"),
            ("clock_unsynced", "overload"),
            (r#""leq":55.3,"#, ""),
            (r#""lp":52.1,"leq":55.3"#, r#""lp":52.1,"leq":55.4"#),
        ] {
            let other = EXAMPLE.replacen(from, to, 1);
            assert_ne!(other, EXAMPLE);
            assert!(
                !stored.same_content(&arena, None, &prepare(&other)),
                "{from} → {to}"
            );
        }
        // An integer is not the float of the same value.
        let int = EXAMPLE.replace("52.1", "52");
        let float = EXAMPLE.replace("52.1", "52.0");
        let stored = Slot::store(prepare(&int), 0, &mut arena);
        assert!(stored.same_content(&arena, None, &prepare(&int)));
        assert!(!stored.same_content(&arena, None, &prepare(&float)));
        // A JSON object has no order: the same metrics reordered are the same.
        let reordered = EXAMPLE.replace(
            r#""lp":52.1,"leq":55.3,"lmax":null"#,
            r#""lmax":null,"leq":55.3,"lp":52.1"#,
        );
        assert_ne!(reordered, EXAMPLE);
        let original = Slot::store(prepare(EXAMPLE), 0, &mut arena);
        assert!(original.same_content(&arena, None, &prepare(&reordered)));
        let changed = reordered.replace("55.3", "55.4");
        assert!(!original.same_content(&arena, None, &prepare(&changed)));
    }

    const INTERVAL: &str = r#"{"seq":1050,"kind":"interval","device":"nl43-north","received_at":"2026-12-02T10:15:00.412Z","device_time":null,"interval_start":"2026-12-02T10:00:00Z","interval_length":"15m","metrics":{"leq":61.2,"lmax":74.9,"lmin":48.1,"l10":64.0,"l90":50.2},"readings":897,"coverage":0.997,"state":"measuring","flags":["low_coverage"]}"#;

    #[test]
    fn interval_records_come_back_exactly_as_sent() {
        assert_eq!(round_trip_text(INTERVAL), vec![INTERVAL.to_owned()]);
        // Coverage keeps its JSON kind; odd timestamps stay text.
        let whole = INTERVAL
            .replace("0.997", "1")
            .replace("2026-12-02T10:00:00Z", "2026-12-02T11:00:00+01:00");
        assert_eq!(round_trip_text(&whole), vec![whole.clone()]);
        assert!(round_trip_json(&whole)[0]["coverage"].is_u64());
        // "kind": "reading" is kept as sent, and a reading without it too.
        let reading = EXAMPLE.replacen(r#""seq":1041,"#, r#""seq":1041,"kind":"reading","#, 1);
        assert_eq!(
            round_trip_text(&format!("{reading},{EXAMPLE},{INTERVAL}")),
            vec![reading.clone(), EXAMPLE.to_owned(), INTERVAL.to_owned()]
        );
        // Fields in another order come back in the wire order.
        let text =
            INTERVAL
                .replace(r#""coverage":0.997,"#, "")
                .replacen('{', r#"{"coverage":0.997,"#, 1);
        assert_ne!(text, INTERVAL);
        assert_eq!(round_trip_text(&text), vec![INTERVAL.to_owned()]);
    }

    #[test]
    fn interval_fields_are_required_in_an_interval_and_refused_in_a_reading() {
        let body = |record: &str| format!(r#"{{"gateway":"gw","records":[{EXAMPLE},{record}]}}"#);
        for field in ["interval_start", "interval_length", "readings", "coverage"] {
            let mut record: serde_json::Map<String, Json> =
                serde_json::from_str(INTERVAL).expect("JSON");
            let value = record.remove(field).expect("field");
            let error = parse(body(&Json::Object(record).to_string()).as_bytes()).expect_err(field);
            assert!(
                error.starts_with(&format!("records[1]: missing field `{field}`")),
                "{field}: {error}"
            );
            for kind in [None, Some("reading")] {
                let mut reading: serde_json::Map<String, Json> =
                    serde_json::from_str(EXAMPLE).expect("JSON");
                reading.insert(field.into(), value.clone());
                if let Some(kind) = kind {
                    reading.insert("kind".into(), json!(kind));
                }
                let error =
                    parse(body(&Json::Object(reading).to_string()).as_bytes()).expect_err(field);
                assert!(
                    error.starts_with(&format!(
                        r#"records[1].{field}: only an interval record ("kind": "interval") has this field"#
                    )),
                    "{field}: {error}"
                );
            }
        }
        for (field, value, expected) in [
            ("kind", "null", "records[1].kind: invalid type: null"),
            (
                "kind",
                r#""level""#,
                "records[1].kind: unknown variant `level`",
            ),
            (
                "interval_start",
                r#""10:00""#,
                "records[1].interval_start: `10:00` is not an RFC 3339 timestamp",
            ),
            (
                "interval_start",
                "null",
                "records[1].interval_start: invalid type: null",
            ),
            (
                "interval_length",
                r#""15""#,
                "records[1].interval_length: `15` is not an interval length",
            ),
            (
                "interval_length",
                r#""0m""#,
                "records[1].interval_length: `0m` is not an interval length",
            ),
            (
                "interval_length",
                r#""1.5h""#,
                "records[1].interval_length: `1.5h` is not an interval length",
            ),
            (
                "interval_length",
                r#""15 m""#,
                "records[1].interval_length: `15 m` is not an interval length",
            ),
            (
                "interval_length",
                "900",
                "records[1].interval_length: invalid type: integer `900`, expected a string",
            ),
            (
                "readings",
                "-1",
                "records[1].readings: invalid value: integer `-1`, expected u64",
            ),
            (
                "readings",
                "8.5",
                "records[1].readings: invalid type: floating point `8.5`, expected u64",
            ),
            (
                "coverage",
                "1.2",
                "records[1].coverage: invalid value: floating point `1.2`, expected a number from 0 to 1",
            ),
            (
                "coverage",
                "-1",
                "records[1].coverage: invalid value: integer `-1`, expected a number from 0 to 1",
            ),
            (
                "coverage",
                r#""1""#,
                r#"records[1].coverage: invalid type: string "1", expected a number from 0 to 1"#,
            ),
        ] {
            let mut record: serde_json::Map<String, Json> =
                serde_json::from_str(INTERVAL).expect("JSON");
            record.insert(field.into(), serde_json::from_str(value).expect("value"));
            let error = parse(body(&Json::Object(record).to_string()).as_bytes()).expect_err(value);
            assert!(error.starts_with(expected), "{field} {value}: {error}");
        }
        for length in ["30s", "1m", "15m", "1h", "1d", "90s"] {
            let record = INTERVAL.replace(r#""15m""#, &format!("{length:?}"));
            assert!(parse(body(&record).as_bytes()).is_ok(), "{length}");
        }
        for coverage in ["0", "1", "0.0", "1.0", "0.5"] {
            let record = INTERVAL.replace("0.997", coverage);
            assert!(parse(body(&record).as_bytes()).is_ok(), "{coverage}");
        }
    }

    #[test]
    fn an_interval_differs_from_a_reading_and_by_its_own_fields() {
        let mut interner = Interner::default();
        let mut arena = Vec::new();
        let mut prepare = |record: &str| {
            prepared(&mut interner, &[record])
                .pop()
                .expect("one record")
        };
        let mut pending = prepare(INTERVAL);
        let interval = pending.interval.take();
        let stored = Slot::store(pending, 0, &mut arena);
        assert!(stored.is_interval());
        assert!(stored.same_content(&arena, interval.as_deref(), &prepare(INTERVAL)));
        for (from, to) in [
            (r#""15m""#, r#""1h""#),
            ("10:00:00Z", "10:00:01Z"),
            ("897", "898"),
            ("0.997", "0.996"),
            (r#""low_coverage""#, r#""overload""#),
        ] {
            let other = INTERVAL.replacen(from, to, 1);
            assert_ne!(other, INTERVAL);
            assert!(
                !stored.same_content(&arena, interval.as_deref(), &prepare(&other)),
                "{from} → {to}"
            );
        }
        // A reading: absent and "reading" kinds are not the same content
        // as sent, and neither is an interval.
        let reading = Slot::store(prepare(EXAMPLE), 0, &mut arena);
        assert!(!reading.is_interval());
        let explicit = EXAMPLE.replacen(r#""seq":1041,"#, r#""seq":1041,"kind":"reading","#, 1);
        assert!(!reading.same_content(&arena, None, &prepare(&explicit)));
        assert!(reading.same_content(&arena, None, &prepare(EXAMPLE)));
    }

    #[test]
    fn long_strings_are_cut_in_errors() {
        let long = "x".repeat(500);
        let record = EXAMPLE.replace("2026-11-22T14:15:17.123Z", &long);
        let body = format!(r#"{{"gateway":"gw","records":[{record}]}}"#);
        let error = parse(body.as_bytes()).expect_err("bad stamp");
        assert!(error.len() < 300, "{error}");
        assert_eq!(
            excerpt("é".repeat(100).as_str()).chars().count(),
            EXCERPT_CHARS + 1
        );
    }
}
