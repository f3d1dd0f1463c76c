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

/// A reading with its gateway-wide sequence number: the unit every consumer
/// (buffer, live API, MQTT, fleet push) handles.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Gateway-wide, strictly increasing, never reused.
    pub seq: u64,
    /// Device id from the config.
    pub device: Arc<str>,
    /// Gateway wall clock when the reading was received (RFC 3339 UTC, ms).
    #[serde(serialize_with = "rfc3339_millis")]
    pub received_at: DateTime<Utc>,
    /// The meter's timestamp (RFC 3339, whole seconds) or null.
    #[serde(serialize_with = "rfc3339_seconds_opt")]
    pub device_time: Option<DateTime<Utc>>,
    /// Metric name → number or null.
    #[serde(serialize_with = "metrics_map")]
    pub metrics: Vec<(&'static str, Option<f64>)>,
    /// Run state.
    pub state: MeterState,
    /// Qualifiers.
    pub flags: Vec<Flag>,
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
        }
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

fn rfc3339_seconds_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        None => s.serialize_none(),
    }
}

fn metrics_map<S: Serializer>(m: &[(&'static str, Option<f64>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().map(|(k, v)| (k, v)))
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
