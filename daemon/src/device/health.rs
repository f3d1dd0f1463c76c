//! Device health and meter care: what a meter says about itself besides
//! its readings, and what slmd did to keep it measuring.
//!
//! Health (battery, SD card, clock offset) is shown in status, `/metrics`
//! and the fleet heartbeat, never in records (SPEC §3). A value a family's
//! protocol cannot report is `unknown` from the start; one it can report
//! but has not read yet is `null`.

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

/// One health value: not read yet, not reportable by this family, or read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HealthValue<T> {
    /// The family can report it; it has not been read yet. JSON `null`.
    #[default]
    NotRead,
    /// The family's protocol cannot report it. JSON `"unknown"`.
    Unknown,
    /// As last read.
    Read(T),
}

impl<T> HealthValue<T> {
    /// `NotRead` when the family reports it, else `Unknown`.
    pub fn initial(reported: bool) -> HealthValue<T> {
        if reported {
            HealthValue::NotRead
        } else {
            HealthValue::Unknown
        }
    }

    /// The value, when read.
    pub fn value(&self) -> Option<&T> {
        match self {
            HealthValue::Read(v) => Some(v),
            HealthValue::NotRead | HealthValue::Unknown => None,
        }
    }
}

impl<T: Serialize> Serialize for HealthValue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HealthValue::NotRead => serializer.serialize_none(),
            HealthValue::Unknown => serializer.serialize_str("unknown"),
            HealthValue::Read(v) => v.serialize(serializer),
        }
    }
}

/// Which health values a family's protocol reports.
#[derive(Debug, Clone, Copy)]
pub struct HealthRules {
    /// Battery state.
    pub battery: bool,
    /// SD card free space, percent.
    pub sd_free: bool,
    /// The meter clock (and so its offset from the gateway's).
    pub clock: bool,
}

/// A meter's health as last read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The battery as the meter words it (NL-43: `Full`, …).
    pub battery: HealthValue<String>,
    /// Free space on the meter's SD card, percent.
    pub sd_free_percent: HealthValue<u8>,
    /// The meter's clock minus the gateway's, whole seconds.
    pub clock_offset_s: HealthValue<i64>,
}

impl Health {
    /// Nothing read yet; `unknown` for what the family cannot report.
    pub fn initial(rules: &HealthRules) -> Health {
        Health {
            battery: HealthValue::initial(rules.battery),
            sd_free_percent: HealthValue::initial(rules.sd_free),
            clock_offset_s: HealthValue::initial(rules.clock),
        }
    }
}

/// What meter care did, for status and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CareStatus {
    /// Measurements started by `keep_measuring` since slmd started.
    pub measure_restarts: u64,
    /// Times the meter clock was set by `sync_clock` since slmd started.
    pub clock_syncs: u64,
    /// When the meter clock was last set.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    pub last_clock_sync_at: Option<DateTime<Utc>>,
    /// Whether the meter's sleep mode was last seen on (`no_sleep`
    /// devices; `null` when not read).
    pub sleep_mode_on: Option<bool>,
    /// What care is waiting for, in words (e.g. the clock is off but the
    /// meter is measuring); `null` when nothing waits.
    pub pending: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_read_is_null_and_unreportable_is_unknown() {
        let health = Health::initial(&HealthRules {
            battery: true,
            sd_free: false,
            clock: true,
        });
        let json = serde_json::to_value(&health).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"battery": null, "sd_free_percent": "unknown", "clock_offset_s": null})
        );
        let read = Health {
            battery: HealthValue::Read("Full".into()),
            sd_free_percent: HealthValue::Read(87),
            clock_offset_s: HealthValue::Read(-3),
        };
        assert_eq!(
            serde_json::to_value(&read).expect("json"),
            serde_json::json!({"battery": "Full", "sd_free_percent": 87, "clock_offset_s": -3})
        );
    }
}
