//! The record: one reading from one meter, as stored, streamed and pushed
//! (SPEC §3).
//!
//! A device task produces a [`Reading`] (everything but the sequence
//! number); the [`crate::fanout::Hub`] stamps it with the gateway-wide `seq`
//! and turns it into a [`Record`]. Device-health data (battery, SD card, raw
//! lines) is deliberately not part of either: it lives in device status only.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use std::sync::Arc;

/// Run state of the meter at the time of the reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterState {
    /// The meter is integrating a measurement.
    Measuring,
    /// The meter is not measuring (only Lp moves).
    Stopped,
    /// A measurement is running but paused.
    Paused,
    /// Not yet known (the run state is queried less often than values).
    Unknown,
}

impl MeterState {
    /// The wire name (`measuring`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            MeterState::Measuring => "measuring",
            MeterState::Stopped => "stopped",
            MeterState::Paused => "paused",
            MeterState::Unknown => "unknown",
        }
    }
}

/// Qualifiers of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// The meter reported an overload during the measurement.
    Overload,
    /// The meter reported under-range during the measurement.
    UnderRange,
    /// The reading came from the meter's own memory, not the live display.
    Replayed,
    /// The meter's clock disagrees with the gateway clock by more than the
    /// tolerance, so `device_time` should not be trusted as wall time.
    ClockUnsynced,
    /// The fleet rejected this record as malformed: it is kept in the
    /// buffer's quarantine and not pushed again.
    Quarantined,
    /// An interval level whose window was covered by readings less than
    /// `[levels].min_coverage`: its values describe only the covered part.
    LowCoverage,
}

impl Flag {
    /// The wire name (`overload`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Flag::Overload => "overload",
            Flag::UnderRange => "under_range",
            Flag::Replayed => "replayed",
            Flag::ClockUnsynced => "clock_unsynced",
            Flag::Quarantined => "quarantined",
            Flag::LowCoverage => "low_coverage",
        }
    }
}

/// A reading before it enters the gateway sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Device id from the config.
    pub device: Arc<str>,
    /// Gateway wall clock when the answer arrived.
    pub received_at: DateTime<Utc>,
    /// The meter's own time for this reading, when it reports one.
    pub device_time: Option<DateTime<Utc>>,
    /// Metric name → value in dB; `None` for blank or out-of-range fields.
    pub metrics: Vec<(&'static str, Option<f64>)>,
    /// Run state.
    pub state: MeterState,
    /// Qualifiers.
    pub flags: Vec<Flag>,
}

/// What makes a record an interval level (SPEC §11) rather than a reading:
/// the window it describes and how well readings covered it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Start of the window (aligned to local time, see `limits::interval`).
    pub start: DateTime<Utc>,
    /// The configured length (`15m`); on a DST day the window itself may be
    /// shorter or longer in real time.
    pub length: std::time::Duration,
    /// Readings whose span touched the window.
    pub readings: u32,
    /// Share of the window covered by readings, 0 to 1.
    pub coverage: f64,
}

/// A reading with its gateway-wide sequence number: the unit every consumer
/// (buffer, live API, MQTT, fleet push) handles. An interval level is a
/// record too (`interval` set): it takes a `seq` in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Gateway-wide, strictly increasing, never reused.
    pub seq: u64,
    /// Device id from the config.
    pub device: Arc<str>,
    /// Gateway wall clock when the reading was received (RFC 3339 UTC, ms);
    /// for an interval level, when its window was closed.
    pub received_at: DateTime<Utc>,
    /// The meter's timestamp (RFC 3339, whole seconds) or null.
    pub device_time: Option<DateTime<Utc>>,
    /// Metric name → number or null.
    pub metrics: Vec<(&'static str, Option<f64>)>,
    /// Run state.
    pub state: MeterState,
    /// Qualifiers.
    pub flags: Vec<Flag>,
    /// Set on an interval level (`"kind": "interval"`), absent on a reading.
    pub interval: Option<Interval>,
}

impl Serialize for Record {
    /// SPEC §3's record; an interval level adds `kind`, `interval_start`,
    /// `interval_length`, `readings` and `coverage` (SPEC §11).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Metrics<'a>(&'a [(&'static str, Option<f64>)]);
        impl Serialize for Metrics<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let fields = if self.interval.is_some() { 12 } else { 7 };
        let mut map = s.serialize_map(Some(fields))?;
        map.serialize_entry("seq", &self.seq)?;
        if self.interval.is_some() {
            map.serialize_entry("kind", "interval")?;
        }
        map.serialize_entry("device", &*self.device)?;
        map.serialize_entry("received_at", &format_millis(&self.received_at))?;
        map.serialize_entry(
            "device_time",
            &self
                .device_time
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        )?;
        if let Some(interval) = &self.interval {
            map.serialize_entry(
                "interval_start",
                &interval.start.to_rfc3339_opts(SecondsFormat::Secs, true),
            )?;
            map.serialize_entry(
                "interval_length",
                &crate::limits::interval::length_suffix(interval.length),
            )?;
        }
        map.serialize_entry("metrics", &Metrics(&self.metrics))?;
        if let Some(interval) = &self.interval {
            map.serialize_entry("readings", &interval.readings)?;
            map.serialize_entry("coverage", &interval.coverage)?;
        }
        map.serialize_entry("state", &self.state)?;
        map.serialize_entry("flags", &self.flags)?;
        map.end()
    }
}

impl Record {
    /// Stamps `reading` with `seq`.
    pub fn new(seq: u64, reading: Reading) -> Record {
        Record {
            seq,
            device: reading.device,
            received_at: reading.received_at,
            device_time: reading.device_time,
            metrics: reading.metrics,
            state: reading.state,
            flags: reading.flags,
            interval: None,
        }
    }

    /// Whether this is an interval level rather than a reading.
    pub fn is_interval(&self) -> bool {
        self.interval.is_some()
    }

    /// The value of one metric, if present and not null.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }
}

/// A `'static` copy of a metric name read back from storage. Metric names
/// are a small fixed vocabulary, so each distinct name is kept once for the
/// life of the process.
pub fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// RFC 3339 UTC with milliseconds, `2026-11-22T14:15:17.123Z`.
pub fn format_millis(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn rfc3339_millis<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_millis(t))
}

/// Optional RFC 3339 UTC with milliseconds, or null.
pub(crate) fn rfc3339_millis_opt<S: Serializer>(
    t: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_millis(t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn serialises_as_the_spec_record() {
        let received_at = Utc
            .with_ymd_and_hms(2026, 11, 22, 14, 15, 17)
            .single()
            .expect("valid time")
            + chrono::Duration::milliseconds(123);
        let record = Record::new(
            1041,
            Reading {
                device: Arc::from("nl43-north"),
                received_at,
                device_time: Utc.with_ymd_and_hms(2026, 11, 22, 14, 15, 16).single(),
                metrics: vec![("lp", Some(52.1)), ("leq", Some(55.3)), ("lmax", None)],
                state: MeterState::Measuring,
                flags: vec![Flag::ClockUnsynced],
            },
        );
        let json = serde_json::to_string(&record).expect("serialisable");
        assert_eq!(
            json,
            r#"{"seq":1041,"device":"nl43-north","received_at":"2026-11-22T14:15:17.123Z","device_time":"2026-11-22T14:15:16Z","metrics":{"lp":52.1,"leq":55.3,"lmax":null},"state":"measuring","flags":["clock_unsynced"]}"#
        );
    }
}
