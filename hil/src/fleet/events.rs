//! Alert events (SPEC §7 "Events", §11): the body a gateway pushes on
//! `POST /api/fleet/events`, its checks, and what the fleet keeps of it.
//!
//! A body is `{"gateway": "...", "events": [...]}` (other top-level fields
//! are refused, as on ingest); each event names `event_seq`, `episode`,
//! `alert`, `event` (`onset`, `peak` or `clear`), `device`, `metric`,
//! `value`, `threshold` and `at`, all required and checked over the JSON
//! value so an error names the field (`events[1].event: expected one of
//! onset, peak, clear, got `start``). Fields the body adds inside an event
//! (a `note`, ...) are accepted and kept.
//!
//! Events have their own seq space per gateway: `(gateway, event_seq)` is
//! the dedup key. A re-send is a duplicate; a duplicate with other content
//! is a conflict, answered as a duplicate (the event first stored is kept),
//! counted, and the first [`EVENT_CONFLICTS_KEPT`] per gateway kept for
//! reading back. Per gateway the last [`EVENTS_KEPT`] events (by arrival)
//! are kept; an older one dropped is forgotten, so a re-send of it would be
//! taken as new.

use super::heartbeat::{field, object, one_of, stamp, string, unsigned, wrong};
use super::tokens::TokenRole;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Events kept per gateway (the oldest arrivals are dropped beyond this).
pub const EVENTS_KEPT: usize = 100_000;

/// Event conflicts kept per gateway for reading back (all are counted).
pub const EVENT_CONFLICTS_KEPT: usize = 1000;

/// What an event can be.
const KINDS: &[&str] = &["onset", "peak", "clear"];

/// A checked event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventIn {
    /// Its seq in its gateway's event seq space.
    pub(crate) event_seq: u64,
    /// The event as received (object keys in sorted order).
    pub(crate) body: Value,
}

/// A checked events body.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The gateway id.
    pub(crate) gateway: String,
    /// Its events, in the order sent.
    pub(crate) events: Vec<EventIn>,
}

/// Checks an events body; the error names the field.
pub(crate) fn check(body: Value) -> Result<Checked, String> {
    if !body.is_object() {
        return Err(wrong(
            "",
            r#"an object {"gateway": "...", "events": [...]}"#,
            &body,
        ));
    }
    let Value::Object(mut top) = body else {
        return Err("expected an object".to_owned());
    };
    let gateway = match field(&top, "", "gateway")? {
        Value::String(text) if !text.is_empty() => text.clone(),
        other => return Err(wrong("gateway", "a non-empty string", other)),
    };
    if !matches!(field(&top, "", "events")?, Value::Array(_)) {
        return Err(wrong("events", "an array", &top["events"]));
    }
    if let Some(extra) = top.keys().find(|k| *k != "gateway" && *k != "events") {
        return Err(format!(
            "unknown field `{}`, expected `gateway` or `events`",
            super::record::excerpt(extra)
        ));
    }
    let Some(Value::Array(list)) = top.remove("events") else {
        return Err("events: expected an array".to_owned());
    };
    let mut events = Vec::with_capacity(list.len());
    for (i, event) in list.into_iter().enumerate() {
        let path = format!("events[{i}]");
        let event_seq = check_event(&event, &path)?;
        events.push(EventIn {
            event_seq,
            body: event,
        });
    }
    Ok(Checked { gateway, events })
}

/// Checks one event at `path`; its `event_seq`.
fn check_event(event: &Value, path: &str) -> Result<u64, String> {
    let map = object(event, path, "an event object")?;
    let at = |name: &str| format!("{path}.{name}");
    let event_seq = unsigned(field(map, path, "event_seq")?, &at("event_seq"))?;
    for name in ["episode", "alert", "device", "metric"] {
        non_empty(field(map, path, name)?, &at(name))?;
    }
    one_of(field(map, path, "event")?, &at("event"), KINDS)?;
    for name in ["value", "threshold"] {
        let value = field(map, path, name)?;
        if !value.is_number() {
            return Err(wrong(&at(name), "a number", value));
        }
    }
    stamp(field(map, path, "at")?, &at("at"))?;
    Ok(event_seq)
}

/// `value` as a non-empty string.
fn non_empty<'v>(value: &'v Value, path: &str) -> Result<&'v str, String> {
    match string(value, path)? {
        "" => Err(wrong(path, "a non-empty string", value)),
        text => Ok(text),
    }
}

/// An event received twice with other content.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventConflict {
    /// Its seq.
    pub event_seq: u64,
    /// The event kept (the first one).
    pub stored: Value,
    /// The other one, ignored.
    pub incoming: Value,
}

/// Every gateway's events.
#[derive(Debug, Default)]
pub(crate) struct Events {
    /// By gateway id.
    gateways: HashMap<String, Gateway>,
}

/// One gateway's events.
#[derive(Debug, Default)]
struct Gateway {
    /// Events by seq.
    by_seq: BTreeMap<u64, Value>,
    /// Their seqs in arrival order (the oldest dropped first).
    arrival: VecDeque<u64>,
    /// The first [`EVENT_CONFLICTS_KEPT`] conflicts.
    conflicts: Vec<EventConflict>,
    /// Conflicts seen in all.
    conflicts_total: u64,
}

/// What storing one body did.
#[derive(Debug, Default)]
pub(crate) struct Stored {
    /// The events new to the fleet, in the order sent.
    pub(crate) accepted: Vec<Value>,
    /// Events it already had (also repeats within the body).
    pub(crate) duplicates: usize,
    /// Of the duplicates, those with other content.
    pub(crate) conflicts: usize,
}

/// The order of an events read-back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOrder {
    /// By `event_seq` (the default).
    #[default]
    Seq,
    /// In arrival order.
    Arrival,
}

impl Events {
    /// Stores `events` from `gateway`, de-duplicated by `event_seq`.
    pub(crate) fn insert(&mut self, gateway: &str, events: Vec<EventIn>) -> Stored {
        let store = match self.gateways.get_mut(gateway) {
            Some(store) => store,
            None => self.gateways.entry(gateway.to_owned()).or_default(),
        };
        let mut stored = Stored::default();
        for event in events {
            if let Some(kept) = store.by_seq.get(&event.event_seq) {
                stored.duplicates += 1;
                if *kept != event.body {
                    stored.conflicts += 1;
                    store.conflicts_total += 1;
                    if store.conflicts.len() < EVENT_CONFLICTS_KEPT {
                        store.conflicts.push(EventConflict {
                            event_seq: event.event_seq,
                            stored: kept.clone(),
                            incoming: event.body,
                        });
                    }
                }
                continue;
            }
            if store.arrival.len() >= EVENTS_KEPT
                && let Some(oldest) = store.arrival.pop_front()
            {
                store.by_seq.remove(&oldest);
            }
            store.arrival.push_back(event.event_seq);
            store.by_seq.insert(event.event_seq, event.body.clone());
            stored.accepted.push(event.body);
        }
        stored
    }

    /// `gateway`'s events kept, in `order`.
    pub(crate) fn list(&self, gateway: &str, order: EventOrder) -> Vec<Value> {
        let Some(store) = self.gateways.get(gateway) else {
            return Vec::new();
        };
        match order {
            EventOrder::Seq => store.by_seq.values().cloned().collect(),
            EventOrder::Arrival => store
                .arrival
                .iter()
                .filter_map(|seq| store.by_seq.get(seq).cloned())
                .collect(),
        }
    }

    /// `gateway`'s conflicts kept, in the order seen, and how many in all.
    pub(crate) fn conflicts(&self, gateway: &str) -> (Vec<EventConflict>, u64) {
        self.gateways
            .get(gateway)
            .map(|g| (g.conflicts.clone(), g.conflicts_total))
            .unwrap_or_default()
    }
}

/// What an accepted event's stdout line says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AlertEventLine {
    /// The gateway.
    pub gateway: String,
    /// Its seq.
    pub event_seq: u64,
    /// The episode.
    pub episode: String,
    /// The alert rule.
    pub alert: String,
    /// `onset`, `peak` or `clear` (the event's `event` field).
    pub kind: String,
    /// The device.
    pub device: String,
    /// The metric.
    pub metric: String,
    /// The value, as sent.
    pub value: Value,
    /// The threshold, as sent.
    pub threshold: Value,
    /// When, as sent.
    pub at: String,
    /// Fingerprint of the token presented.
    pub token: String,
    /// Which honoured token it was.
    pub token_role: TokenRole,
}

impl AlertEventLine {
    /// The line of a checked `event` from `gateway`.
    pub(crate) fn of(gateway: &str, event: &Value, token: &str, role: TokenRole) -> Self {
        let text = |name: &str| {
            event
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        AlertEventLine {
            gateway: gateway.to_owned(),
            event_seq: event
                .get("event_seq")
                .and_then(Value::as_u64)
                .unwrap_or_default(),
            episode: text("episode"),
            alert: text("alert"),
            kind: text("event"),
            device: text("device"),
            metric: text("metric"),
            value: event.get("value").cloned().unwrap_or_default(),
            threshold: event.get("threshold").cloned().unwrap_or_default(),
            at: text("at"),
            token: token.to_owned(),
            token_role: role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64) -> Value {
        json!({"event_seq": seq, "episode": "20261202T101500123-day-limit-nl43-north",
               "alert": "day-limit", "event": "onset", "device": "nl43-north",
               "metric": "leq_15m", "value": 67.3, "threshold": 65.0,
               "at": "2026-12-02T10:15:00.412Z"})
    }

    fn body(events: Vec<Value>) -> Value {
        json!({"gateway": "gw-0042", "events": events})
    }

    #[test]
    fn a_valid_body_passes_and_extra_event_fields_are_kept() {
        let mut with_note = event(8);
        with_note["note"] = json!("acknowledged by site");
        let checked = check(body(vec![event(7), with_note.clone()])).expect("valid");
        assert_eq!(checked.gateway, "gw-0042");
        assert_eq!(
            checked
                .events
                .iter()
                .map(|e| e.event_seq)
                .collect::<Vec<_>>(),
            vec![7, 8]
        );
        assert_eq!(checked.events[1].body, with_note);
        assert!(check(body(vec![])).expect("empty").events.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        for (at, value, expected) in [
            (
                "event_seq",
                json!(-1),
                "events[1].event_seq: expected an unsigned integer, got -1",
            ),
            (
                "event_seq",
                json!(1.5),
                "events[1].event_seq: expected an unsigned integer",
            ),
            (
                "episode",
                json!(""),
                "events[1].episode: expected a non-empty string, got ``",
            ),
            (
                "alert",
                json!(3),
                "events[1].alert: expected a string, got 3",
            ),
            (
                "event",
                json!("start"),
                "events[1].event: expected one of onset, peak, clear, got `start`",
            ),
            (
                "device",
                Value::Null,
                "events[1].device: expected a string, got null",
            ),
            (
                "metric",
                json!([]),
                "events[1].metric: expected a string, got an array",
            ),
            (
                "value",
                json!("67.3"),
                "events[1].value: expected a number, got `67.3`",
            ),
            (
                "threshold",
                Value::Null,
                "events[1].threshold: expected a number, got null",
            ),
            (
                "at",
                json!("yesterday"),
                "events[1].at: `yesterday` is not an RFC 3339 timestamp",
            ),
        ] {
            let mut bad = event(8);
            bad[at] = value;
            let error = check(body(vec![event(7), bad])).expect_err(at);
            assert!(error.starts_with(expected), "{at}: {error}");
            let mut missing = event(8);
            missing.as_object_mut().expect("object").remove(at);
            let error = check(body(vec![event(7), missing])).expect_err(at);
            assert_eq!(error, format!("events[1].{at}: missing field"));
        }
        for (bad, expected) in [
            (json!([]), "expected an object"),
            (json!({"events": []}), "gateway: missing field"),
            (
                json!({"gateway": "", "events": []}),
                "gateway: expected a non-empty string",
            ),
            (json!({"gateway": "g"}), "events: missing field"),
            (
                json!({"gateway": "g", "events": {}}),
                "events: expected an array, got an object",
            ),
            (
                json!({"gateway": "g", "events": [], "epoch": 1}),
                "unknown field `epoch`",
            ),
            (
                json!({"gateway": "g", "events": [7]}),
                "events[0]: expected an event object, got 7",
            ),
        ] {
            let error = check(bad.clone()).expect_err("bad body");
            assert!(error.starts_with(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn events_are_de_duplicated_by_seq_and_conflicts_counted() {
        let mut events = Events::default();
        let checked = |list: Vec<Value>| check(body(list)).expect("valid").events;
        let first = events.insert("gw", checked(vec![event(9), event(7), event(7)]));
        assert_eq!(
            (first.accepted.len(), first.duplicates, first.conflicts),
            (2, 1, 0)
        );
        let mut other = event(9);
        other["value"] = json!(68.0);
        let again = events.insert("gw", checked(vec![event(7), other.clone(), event(8)]));
        assert_eq!(
            (again.accepted.len(), again.duplicates, again.conflicts),
            (1, 2, 1)
        );
        let seqs = |list: Vec<Value>| -> Vec<u64> {
            list.iter()
                .filter_map(|e| e["event_seq"].as_u64())
                .collect()
        };
        assert_eq!(seqs(events.list("gw", EventOrder::Seq)), vec![7, 8, 9]);
        assert_eq!(seqs(events.list("gw", EventOrder::Arrival)), vec![9, 7, 8]);
        let (conflicts, total) = events.conflicts("gw");
        assert_eq!(total, 1);
        assert_eq!(conflicts[0].stored, event(9));
        assert_eq!(conflicts[0].incoming, other);
        assert!(events.list("other", EventOrder::Seq).is_empty());
        // Another gateway has its own seq space.
        assert_eq!(
            events
                .insert("other", checked(vec![event(7)]))
                .accepted
                .len(),
            1
        );
    }
}
