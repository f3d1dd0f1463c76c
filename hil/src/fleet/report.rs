//! What the fleet simulator tells the outside world: counters, the log of
//! requests, and events.
//!
//! [`FleetStats`] are cumulative over the simulator's life. Every ingest or
//! heartbeat request leaves one [`RequestLog`] (the last
//! [`REQUEST_LOG_CAPACITY`] are kept, both routes together) and one event:
//! [`FleetEvent::Ingest`] for an ingest request, [`FleetEvent::Heartbeat`]
//! for an accepted heartbeat, [`FleetEvent::HeartbeatRefused`] for any other
//! heartbeat request. A gateway going silent and coming back leaves
//! [`FleetEvent::GatewayOffline`] and [`FleetEvent::GatewayOnline`]; every
//! admin change leaves one event.
//! Events go out on a broadcast channel: a receiver more than
//! [`EVENT_CAPACITY`] events behind is told it lagged and continues. Counters,
//! log and event are updated together under the simulator's lock, so they
//! always agree. No plain token appears in any of them: tokens are named by
//! their fingerprint.

use super::events::AlertEventLine;
use super::faults::{Fault, FaultKind, FaultRoute};
use super::tokens::{RotateReport, TokenRole, rfc3339_ms};
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// Events a receiver may fall behind before it is told it lagged.
pub const EVENT_CAPACITY: usize = 4096;

/// Requests kept in the log (the oldest are dropped beyond this).
pub const REQUEST_LOG_CAPACITY: usize = 100_000;

/// The route a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST /api/fleet/ingest`.
    Ingest,
    /// `POST /api/fleet/heartbeat`.
    Heartbeat,
    /// `POST /api/fleet/events`.
    Events,
}

/// Counters over the simulator's life. All but `heartbeats`,
/// `heartbeat_requests` and the `event…` counters count ingest requests
/// only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetStats {
    /// Ingest requests, whatever their answer (hung ones included).
    pub requests: u64,
    /// Answered ingest requests by the status the client saw (`200` for a
    /// `not_json` fault).
    pub by_status: BTreeMap<u16, u64>,
    /// Ingest requests held unanswered by a `hang` fault.
    pub hung: u64,
    /// Records new to the fleet.
    pub accepted: u64,
    /// Records received again (re-sends) and ignored.
    pub duplicates: u64,
    /// Unique records stored, over all gateways.
    pub unique: u64,
    /// Of them, interval records (`"kind": "interval"`, SPEC §11).
    pub intervals: u64,
    /// Ingest request body bytes as received on the wire (compressed size
    /// when gzipped).
    pub body_bytes: u64,
    /// Records in bodies that parsed, whatever happened to them next.
    pub records_in_bodies: u64,
    /// Unique records that arrived with a seq below the highest one already
    /// stored for their gateway and epoch.
    pub out_of_order: u64,
    /// Duplicates (same gateway, epoch and seq) whose content differed from
    /// the stored record: a seq reused. Answered as duplicates all the same.
    pub conflicts: u64,
    /// Numbers declared skipped: the size of the union of the declared
    /// ranges, over all gateways and epochs.
    pub skipped_numbers: u64,
    /// Distinct declared ranges longer than 10 000 numbers (the gateway's
    /// bound), counted once each per gateway and epoch.
    pub skip_ranges_over_bound: u64,
    /// Records whose seq lies in a range their gateway declared skipped in
    /// their epoch, whichever arrived first.
    pub records_in_skips: u64,
    /// Heartbeats accepted (answered `204`, or `200` HTML under a
    /// `not_json` fault) and stored.
    pub heartbeats: u64,
    /// Heartbeat requests, whatever their answer (hung ones included).
    pub heartbeat_requests: u64,
    /// Alert events new to the fleet (`POST /api/fleet/events`).
    pub events: u64,
    /// Alert events received again (re-sends) and ignored.
    pub event_duplicates: u64,
    /// Of those, events whose content differed from the stored one (an
    /// `event_seq` reused).
    pub event_conflicts: u64,
    /// Events requests, whatever their answer (hung ones included).
    pub event_requests: u64,
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Stored: new records kept, duplicates ignored (`200`); a heartbeat
    /// stored (`204`).
    Accepted,
    /// Answered by a `status` fault; nothing looked at.
    Fault,
    /// Held by a `hang` fault; never answered.
    Hang,
    /// No token, or one that is unknown or past its grace (`401`).
    UnknownToken,
    /// More records than `max_records`, or a body over the size bound (`413`).
    TooLarge,
    /// A poisoned seq in the batch (`400`); nothing stored.
    Poison,
    /// Not a valid push or heartbeat body (`400`); nothing stored.
    Malformed,
}

/// One ingest or heartbeat request as the simulator saw it. A heartbeat
/// request's entry has no records (`records`, `first_seq`, `last_seq` are
/// `null`, `accepted` and `duplicates` 0) but names its `meters`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestLog {
    /// When it arrived (RFC 3339 UTC, ms).
    #[serde(serialize_with = "ser_rfc3339_ms")]
    pub at: DateTime<Utc>,
    /// The route it came in on.
    pub route: Route,
    /// Fingerprint of the bearer token presented (known or not), `None`
    /// without one.
    pub token: Option<String>,
    /// Which honoured token it was, `None` when rejected or not checked.
    pub token_role: Option<TokenRole>,
    /// The status answered; `None` for a hung request.
    pub status: Option<u16>,
    /// What became of it.
    pub outcome: Outcome,
    /// The fault that hit it, if any.
    pub fault: Option<FaultKind>,
    /// The gateway id from the body, when it parsed.
    pub gateway: Option<String>,
    /// Records in the body, when it parsed (ingest).
    pub records: Option<usize>,
    /// Meters in the body, when it parsed (heartbeat); not serialized
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meters: Option<usize>,
    /// Alert events in the body, when it parsed (events; `first_seq` and
    /// `last_seq` are then event seqs); not serialized otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<usize>,
    /// Records new to the fleet.
    pub accepted: usize,
    /// Records ignored as re-sends.
    pub duplicates: usize,
    /// Of the duplicates, those whose content differed from the stored
    /// record (seq reuse); not serialized when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub conflicts: usize,
    /// The body's numbering epoch, when it parsed (0 when it had none); not
    /// serialized when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The `[from, to]` ranges the body declared skipped, as sent; not
    /// serialized when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<[u64; 2]>,
    /// Seq of the first record in the body, when it parsed and had one.
    pub first_seq: Option<u64>,
    /// Seq of the last record in the body.
    pub last_seq: Option<u64>,
    /// Body bytes as received on the wire.
    pub body_bytes: u64,
    /// Whether the body was gzipped (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// Why it was refused (`400`, `413`), in the words of the answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Whether a counter is zero (left out of the JSON form).
fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// Serializes a timestamp as RFC 3339 UTC with milliseconds.
fn ser_rfc3339_ms<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339_ms(*at))
}

/// One thing that happened, as `fleet-sim` prints it (one JSON object a line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FleetEvent {
    /// An ingest request was answered (or, for `hang`, taken and held).
    Ingest(RequestLog),
    /// The token was rotated.
    Rotate(RotateReport),
    /// The previous token's grace was ended by hand.
    ExpirePrevious {
        /// Fingerprint of the token retired, if there was one.
        retired: Option<String>,
    },
    /// A heartbeat was accepted and stored.
    Heartbeat(HeartbeatLine),
    /// A heartbeat request was not accepted (refused, faulted, or taken and
    /// held by a `hang` fault): its log entry.
    HeartbeatRefused(RequestLog),
    /// An events request was answered (or, for `hang`, taken and held): its
    /// log entry.
    Events(RequestLog),
    /// An alert event new to the fleet was stored (one per event, before
    /// its request's `events` line).
    AlertEvent(AlertEventLine),
    /// A gateway sent no accepted heartbeat for 3 of its intervals.
    GatewayOffline {
        /// The gateway.
        gateway: String,
        /// When its last accepted heartbeat arrived (server time, RFC 3339
        /// UTC, ms).
        last_heartbeat_at: String,
        /// Its heartbeat interval then, in milliseconds.
        interval_ms: u64,
    },
    /// An offline gateway's heartbeat was accepted again.
    GatewayOnline {
        /// The gateway.
        gateway: String,
        /// How long it was offline: from the moment its third interval
        /// without a heartbeat ended to this heartbeat, in milliseconds.
        offline_for_ms: u64,
        /// From its previous accepted heartbeat to this one, in
        /// milliseconds.
        silent_for_ms: u64,
    },
    /// A fault was queued.
    Fault {
        /// The fault.
        #[serde(flatten)]
        fault: Fault,
        /// The requests it applies to.
        route: FaultRoute,
        /// Faults now waiting, this one included.
        pending: usize,
    },
    /// The waiting faults were dropped.
    FaultsCleared {
        /// How many were waiting.
        dropped: usize,
    },
    /// The batch size limit changed.
    MaxRecords {
        /// The new limit (`None`: no limit).
        max_records: Option<usize>,
    },
    /// The poisoned seqs changed.
    Poison {
        /// The poisoned seqs now.
        seqs: Vec<u64>,
    },
}

/// What an accepted heartbeat's line says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeartbeatLine {
    /// The gateway.
    pub gateway: String,
    /// Meters in the body.
    pub meters: usize,
    /// Each meter's `"<state>/<run_state>"` (only `"<state>"` when the body
    /// gave no `run_state`), by meter id in the order sent.
    #[serde(serialize_with = "ser_pairs")]
    pub states: Vec<(String, String)>,
    /// Fingerprint of the token presented.
    pub token: String,
    /// Which honoured token it was.
    pub token_role: TokenRole,
    /// Body bytes as received on the wire (compressed size when gzipped).
    pub bytes: u64,
    /// Whether the body was gzipped.
    pub gzip: bool,
    /// The gateway's heartbeat interval now, in milliseconds (the body's
    /// `interval_s`, else the simulator's default).
    pub interval_ms: u64,
}

/// Serializes pairs as a JSON object in their order.
fn ser_pairs<S: Serializer>(pairs: &[(String, String)], serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (key, value) in pairs {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_tagged_json() {
        let fault = FleetEvent::Fault {
            fault: Fault::Status {
                status: 503,
                retry_after: Some(2),
                count: 3,
            },
            route: FaultRoute::Ingest,
            pending: 1,
        };
        assert_eq!(
            serde_json::to_value(&fault).ok(),
            Some(
                serde_json::json!({"event": "fault", "kind": "status", "status": 503,
                                    "retry_after": 2, "count": 3, "route": "ingest",
                                    "pending": 1})
            )
        );
        let line = FleetEvent::Heartbeat(HeartbeatLine {
            gateway: "gw".to_owned(),
            meters: 2,
            states: vec![
                ("b".to_owned(), "connected/measuring".to_owned()),
                ("a".to_owned(), "down".to_owned()),
            ],
            token: "ab12cd34".to_owned(),
            token_role: TokenRole::Current,
            bytes: 10,
            gzip: false,
            interval_ms: 500,
        });
        assert_eq!(
            serde_json::to_string(&line).ok().as_deref(),
            Some(
                r#"{"event":"heartbeat","gateway":"gw","meters":2,"states":{"b":"connected/measuring","a":"down"},"token":"ab12cd34","token_role":"current","bytes":10,"gzip":false,"interval_ms":500}"#
            )
        );
        let cleared = FleetEvent::FaultsCleared { dropped: 2 };
        assert_eq!(
            serde_json::to_string(&cleared).ok().as_deref(),
            Some(r#"{"event":"faults_cleared","dropped":2}"#)
        );
        let mut stats = FleetStats::default();
        stats.by_status.insert(200, 4);
        let json = serde_json::to_value(&stats).expect("serializable");
        assert_eq!(json["by_status"]["200"], 4);
    }
}
