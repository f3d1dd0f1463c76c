//! Heartbeats (SPEC §7, "Heartbeat"): the body a gateway sends every
//! `heartbeat_interval`, what the fleet keeps of it, and the liveness it
//! derives from it.
//!
//! A body is checked field by field over its JSON value, so an error names
//! the field (`meters[1].state: expected one of connected, connecting, down,
//! failed`); fields SPEC §7 does not name are accepted and kept (SPEC welcomes
//! more keys), and the body is stored as received.
//!
//! Liveness: a gateway is online from its first accepted heartbeat. Its
//! interval is the last accepted body's `interval_s`, else the simulator's
//! default. When no accepted heartbeat arrived for 3 intervals it is offline
//! (one episode) until the next accepted heartbeat. Time runs on the
//! monotonic clock; the wall-clock times in reports are for people.

use super::tokens::{TokenRole, rfc3339_ms};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Heartbeats kept per gateway (the oldest are dropped beyond this).
pub const HEARTBEATS_KEPT: usize = 1000;

/// A gateway silent for this many intervals is offline.
pub const OFFLINE_AFTER_INTERVALS: u32 = 3;

/// The interval used when a heartbeat does not name its own (SPEC §7:
/// `heartbeat_interval` defaults to 60 s).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(60);

/// Largest `interval_s` taken (a year): larger ones are refused, so the
/// offline deadline is always representable.
const MAX_INTERVAL_S: f64 = 365.0 * 24.0 * 3600.0;

/// A meter's connection states.
const STATES: &[&str] = &["connected", "connecting", "down", "failed"];

/// A meter's run states.
const RUN_STATES: &[&str] = &["measuring", "stopped", "paused", "unknown"];

/// One accepted heartbeat, as `GET /admin/heartbeats` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Heartbeat {
    /// When it arrived (server time; RFC 3339 UTC, ms).
    #[serde(serialize_with = "ser_rfc3339_ms")]
    pub at: DateTime<Utc>,
    /// Fingerprint of the token presented.
    pub token: String,
    /// Which honoured token it was.
    pub token_role: TokenRole,
    /// The status answered: `204`, or `200` under a `not_json` fault.
    pub status: u16,
    /// The body as received (JSON; object keys in sorted order).
    pub body: Value,
}

/// Serializes a timestamp as RFC 3339 UTC with milliseconds.
fn ser_rfc3339_ms<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_ms(*at))
}

/// One gateway's liveness, as `GET /admin/liveness` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayLiveness {
    /// The gateway.
    pub gateway: String,
    /// Whether it is online: an accepted heartbeat within its last 3
    /// intervals.
    pub online: bool,
    /// When its last accepted heartbeat arrived (server time; RFC 3339 UTC,
    /// ms).
    pub last_heartbeat_at: String,
    /// Its heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// Heartbeats accepted from it (all of them, not only those kept).
    pub heartbeats: u64,
    /// Times it went offline.
    pub offline_episodes: u64,
}

/// What a checked body tells the fleet.
#[derive(Debug)]
pub(crate) struct Checked {
    /// The gateway id.
    pub(crate) gateway: String,
    /// The body's `interval_s`, if it gave one.
    pub(crate) interval: Option<Duration>,
    /// Each meter's id and `"<state>/<run_state>"` (`"<state>"` without a
    /// run state), in the order sent.
    pub(crate) states: Vec<(String, String)>,
}

/// Checks a heartbeat body; the error names the field.
pub(crate) fn check(body: &Value) -> Result<Checked, String> {
    let top = object(
        body,
        "",
        r#"an object {"gateway", "version", "uptime_s", "sent_at", "meters", "buffer"}"#,
    )?;
    let gateway = match field(top, "", "gateway")? {
        Value::String(text) if !text.is_empty() => text.clone(),
        other => return Err(wrong("gateway", "a non-empty string", other)),
    };
    string(field(top, "", "version")?, "version")?;
    unsigned(field(top, "", "uptime_s")?, "uptime_s")?;
    stamp(field(top, "", "sent_at")?, "sent_at")?;
    let interval = match top.get("interval_s") {
        None | Some(Value::Null) => None,
        Some(value) => Some(interval(value)?),
    };
    let Value::Array(meters) = field(top, "", "meters")? else {
        return Err(wrong("meters", "an array", &top["meters"]));
    };
    let mut states = Vec::with_capacity(meters.len());
    let mut ids = HashSet::with_capacity(meters.len());
    for (i, meter) in meters.iter().enumerate() {
        let path = format!("meters[{i}]");
        let (id, state) = check_meter(meter, &path)?;
        if !ids.insert(id.clone()) {
            return Err(format!("{path}.id: `{id}` appears twice in meters"));
        }
        states.push((id, state));
    }
    let buffer = object(field(top, "", "buffer")?, "buffer", "an object")?;
    unsigned(field(buffer, "buffer", "records")?, "buffer.records")?;
    unsigned(field(buffer, "buffer", "unsent")?, "buffer.unsent")?;
    nullable_stamp(
        field(buffer, "buffer", "oldest_unsent")?,
        "buffer.oldest_unsent",
    )?;
    Ok(Checked {
        gateway,
        interval,
        states,
    })
}

/// Checks one meter at `path`; its id and state label.
fn check_meter(meter: &Value, path: &str) -> Result<(String, String), String> {
    let meter = object(meter, path, "a meter object")?;
    let at = |name: &str| format!("{path}.{name}");
    let id = string(field(meter, path, "id")?, &at("id"))?.to_owned();
    string(field(meter, path, "protocol")?, &at("protocol"))?;
    let state = one_of(field(meter, path, "state")?, &at("state"), STATES)?;
    let run_state = match meter.get("run_state") {
        None | Some(Value::Null) => None,
        Some(value) => Some(one_of(value, &at("run_state"), RUN_STATES)?),
    };
    nullable_stamp(field(meter, path, "since")?, &at("since"))?;
    match field(meter, path, "identity")? {
        Value::Null => {}
        Value::Object(identity) => {
            let base = at("identity");
            for name in ["model", "serial", "firmware"] {
                match field(identity, &base, name)? {
                    Value::Null | Value::String(_) => {}
                    other => {
                        return Err(wrong(&format!("{base}.{name}"), "a string or null", other));
                    }
                }
            }
        }
        other => {
            return Err(wrong(
                &at("identity"),
                r#"null or an object {"model", "serial", "firmware"}"#,
                other,
            ));
        }
    }
    match field(meter, path, "last_seq")? {
        Value::Null => {}
        other => {
            unsigned(other, &at("last_seq"))?;
        }
    }
    let health = object(
        field(meter, path, "health")?,
        &at("health"),
        "an object of name → number, string or null",
    )?;
    for (name, value) in health {
        if matches!(value, Value::Array(_) | Value::Object(_) | Value::Bool(_)) {
            return Err(wrong(
                &format!("{path}.health.{name}"),
                "a number, a string or null",
                value,
            ));
        }
    }
    match meter.get("last_error") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(other) => return Err(wrong(&at("last_error"), "a string or null", other)),
    }
    let label = match run_state {
        Some(run_state) => format!("{state}/{run_state}"),
        None => state.to_owned(),
    };
    Ok((id, label))
}

/// `value` as an object, or an error at `path` (empty: the body).
pub(super) fn object<'v>(
    value: &'v Value,
    path: &str,
    expected: &str,
) -> Result<&'v Map<String, Value>, String> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(wrong(path, expected, other)),
    }
}

/// The field `name` of `map` (at `path`), which must be present.
pub(super) fn field<'v>(
    map: &'v Map<String, Value>,
    path: &str,
    name: &str,
) -> Result<&'v Value, String> {
    map.get(name).ok_or_else(|| {
        if path.is_empty() {
            format!("{name}: missing field")
        } else {
            format!("{path}.{name}: missing field")
        }
    })
}

/// `value` as a string.
pub(super) fn string<'v>(value: &'v Value, path: &str) -> Result<&'v str, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(wrong(path, "a string", other)),
    }
}

/// `value` as an unsigned integer.
pub(super) fn unsigned(value: &Value, path: &str) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| wrong(path, "an unsigned integer", value))
}

/// `value` as one of `allowed`.
pub(super) fn one_of<'v>(
    value: &'v Value,
    path: &str,
    allowed: &[&str],
) -> Result<&'v str, String> {
    match value {
        Value::String(text) if allowed.contains(&text.as_str()) => Ok(text),
        _ => Err(format!(
            "{path}: expected one of {}, got {}",
            allowed.join(", "),
            shown(value)
        )),
    }
}

/// `value` as an RFC 3339 timestamp.
pub(super) fn stamp(value: &Value, path: &str) -> Result<(), String> {
    let text = match value {
        Value::String(text) => text,
        other => return Err(wrong(path, "an RFC 3339 timestamp", other)),
    };
    DateTime::parse_from_rfc3339(text)
        .map(|_| ())
        .map_err(|e| format!("{path}: `{}` is not an RFC 3339 timestamp ({e})", cut(text)))
}

/// `value` as an RFC 3339 timestamp or null (present).
fn nullable_stamp(value: &Value, path: &str) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        other => stamp(other, path).map_err(|e| {
            if other.is_string() {
                e
            } else {
                wrong(path, "an RFC 3339 timestamp or null", other)
            }
        }),
    }
}

/// `interval_s`: a positive number of seconds, at most a year.
fn interval(value: &Value) -> Result<Duration, String> {
    let seconds = value.as_f64().filter(|s| *s > 0.0 && *s <= MAX_INTERVAL_S);
    seconds
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            wrong(
                "interval_s",
                "a positive number of seconds (at most a year)",
                value,
            )
        })
}

/// `path: expected <expected>, got <value>`.
pub(super) fn wrong(path: &str, expected: &str, value: &Value) -> String {
    let message = format!("expected {expected}, got {}", shown(value));
    if path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// A short description of a JSON value for an error message.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(text) => format!("`{}`", cut(text)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// At most 64 characters of `text`.
fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    super::record::excerpt(text)
}

// ---------------------------------------------------------------------------
// At rest.

/// Every gateway's heartbeats and liveness.
#[derive(Debug, Default)]
pub(crate) struct Heartbeats {
    /// By gateway id, sorted.
    gateways: BTreeMap<String, Gateway>,
}

/// One gateway's heartbeats and liveness.
#[derive(Debug)]
struct Gateway {
    /// The last [`HEARTBEATS_KEPT`] accepted heartbeats, oldest first.
    kept: VecDeque<Heartbeat>,
    /// When the last one arrived (monotonic).
    last: Instant,
    /// The same moment on the wall clock.
    last_at: DateTime<Utc>,
    /// Its interval.
    interval: Duration,
    /// Whether it is online.
    online: bool,
    /// When it went offline (the end of its third silent interval), while
    /// offline.
    offline_since: Option<Instant>,
    /// Heartbeats accepted.
    heartbeats: u64,
    /// Times it went offline.
    offline_episodes: u64,
}

impl Gateway {
    /// When it goes offline without another heartbeat.
    fn deadline(&self) -> Instant {
        let window = self.interval.saturating_mul(OFFLINE_AFTER_INTERVALS);
        self.last
            .checked_add(window)
            .unwrap_or_else(|| self.last + Duration::from_secs(u64::from(u32::MAX)))
    }

    /// Marks it offline if its deadline has passed at `now`; the episode's
    /// report if it went offline now.
    fn sweep(&mut self, gateway: &str, now: Instant) -> Option<WentOffline> {
        let deadline = self.deadline();
        if !self.online || now < deadline {
            return None;
        }
        self.online = false;
        self.offline_since = Some(deadline);
        self.offline_episodes += 1;
        Some(WentOffline {
            gateway: gateway.to_owned(),
            last_heartbeat_at: rfc3339_ms(self.last_at),
            interval_ms: millis(self.interval),
        })
    }

    /// Its liveness report.
    fn liveness(&self, gateway: &str) -> GatewayLiveness {
        GatewayLiveness {
            gateway: gateway.to_owned(),
            online: self.online,
            last_heartbeat_at: rfc3339_ms(self.last_at),
            interval_ms: millis(self.interval),
            heartbeats: self.heartbeats,
            offline_episodes: self.offline_episodes,
        }
    }
}

/// A gateway that went offline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WentOffline {
    /// The gateway.
    pub(crate) gateway: String,
    /// Its last accepted heartbeat (server time).
    pub(crate) last_heartbeat_at: String,
    /// Its interval then.
    pub(crate) interval_ms: u64,
}

/// A gateway that came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CameBack {
    /// From going offline to now.
    pub(crate) offline_for_ms: u64,
    /// From the previous heartbeat to now.
    pub(crate) silent_for_ms: u64,
}

/// What storing a heartbeat changed in its gateway's liveness.
#[derive(Debug, Default)]
pub(crate) struct Accepted {
    /// It had gone offline before this heartbeat (and nobody had noticed
    /// yet).
    pub(crate) went_offline: Option<WentOffline>,
    /// It was offline and is online again.
    pub(crate) came_back: Option<CameBack>,
}

/// Milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Heartbeats {
    /// Stores an accepted heartbeat from `gateway` that arrived at `now`
    /// (`heartbeat.at` on the wall clock) with `interval`.
    pub(crate) fn accept(
        &mut self,
        gateway: &str,
        heartbeat: Heartbeat,
        interval: Duration,
        now: Instant,
    ) -> Accepted {
        let at = heartbeat.at;
        let Some(entry) = self.gateways.get_mut(gateway) else {
            let mut kept = VecDeque::new();
            kept.push_back(heartbeat);
            self.gateways.insert(
                gateway.to_owned(),
                Gateway {
                    kept,
                    last: now,
                    last_at: at,
                    interval,
                    online: true,
                    offline_since: None,
                    heartbeats: 1,
                    offline_episodes: 0,
                },
            );
            return Accepted::default();
        };
        // Silent for 3 intervals, but the sweep has not run yet: the episode
        // still counts.
        let went_offline = entry.sweep(gateway, now);
        let came_back = (!entry.online).then(|| CameBack {
            offline_for_ms: millis(
                now.saturating_duration_since(entry.offline_since.unwrap_or(now)),
            ),
            silent_for_ms: millis(now.saturating_duration_since(entry.last)),
        });
        if entry.kept.len() >= HEARTBEATS_KEPT {
            entry.kept.pop_front();
        }
        entry.kept.push_back(heartbeat);
        entry.last = now;
        entry.last_at = at;
        entry.interval = interval;
        entry.online = true;
        entry.offline_since = None;
        entry.heartbeats += 1;
        Accepted {
            went_offline,
            came_back,
        }
    }

    /// Marks offline every gateway silent for 3 intervals at `now`; the
    /// gateways that went offline, and the next moment one may.
    pub(crate) fn sweep(&mut self, now: Instant) -> (Vec<WentOffline>, Option<Instant>) {
        let mut offline = Vec::new();
        let mut next: Option<Instant> = None;
        for (gateway, entry) in &mut self.gateways {
            if let Some(went) = entry.sweep(gateway, now) {
                offline.push(went);
            }
            if entry.online {
                let deadline = entry.deadline();
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
            }
        }
        (offline, next)
    }

    /// `gateway`'s kept heartbeats, oldest first: the last `limit` of them
    /// (all without one).
    pub(crate) fn list(&self, gateway: &str, limit: Option<usize>) -> Vec<Heartbeat> {
        let Some(entry) = self.gateways.get(gateway) else {
            return Vec::new();
        };
        let skip = limit.map_or(0, |limit| entry.kept.len().saturating_sub(limit));
        entry.kept.iter().skip(skip).cloned().collect()
    }

    /// Every gateway's liveness, sorted by gateway.
    pub(crate) fn liveness(&self) -> Vec<GatewayLiveness> {
        self.gateways
            .iter()
            .map(|(gateway, entry)| entry.liveness(gateway))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({"gateway": "gw-0042", "version": "0.1.0", "uptime_s": 12,
               "sent_at": "2026-12-02T15:00:00.123Z", "interval_s": 60,
               "meters": [{"id": "nl43-north", "protocol": "nl43", "state": "connected",
                           "run_state": "measuring", "since": "2026-12-02T14:59:50.000Z",
                           "identity": {"model": "NL-43", "serial": "00412345", "firmware": "1.2"},
                           "last_seq": 1041,
                           "health": {"battery": "Full", "sd_free_percent": 87, "clock_offset_s": -1},
                           "last_error": null}],
               "buffer": {"records": 123, "unsent": 4, "oldest_unsent": "2026-12-02T14:59:58.000Z"}})
    }

    #[test]
    fn the_spec_body_is_taken() {
        let checked = check(&body()).expect("valid");
        assert_eq!(checked.gateway, "gw-0042");
        assert_eq!(checked.interval, Some(Duration::from_secs(60)));
        assert_eq!(
            checked.states,
            vec![("nl43-north".to_owned(), "connected/measuring".to_owned())]
        );
    }

    #[test]
    fn optional_fields_may_be_absent_and_extra_ones_are_kept() {
        let mut b = body();
        let top = b.as_object_mut().expect("object");
        top.remove("interval_s");
        top.insert("site".to_owned(), json!({"anything": [1, 2]}));
        let meter = b["meters"][0].as_object_mut().expect("object");
        meter.remove("run_state");
        meter.remove("last_error");
        meter.insert("extra".to_owned(), json!(true));
        b["meters"][0]["identity"] = Value::Null;
        b["meters"][0]["last_seq"] = Value::Null;
        b["meters"][0]["since"] = Value::Null;
        b["meters"][0]["health"] = json!({"battery": "unknown", "sd_free_percent": null});
        b["buffer"]["oldest_unsent"] = Value::Null;
        let checked = check(&b).expect("valid");
        assert_eq!(checked.interval, None);
        assert_eq!(checked.states[0].1, "connected");
        b["meters"] = json!([]);
        assert!(check(&b).is_ok());
        b["interval_s"] = json!(0.2);
        assert_eq!(
            check(&b).expect("valid").interval,
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("gateway", json!(""), "gateway: expected a non-empty string"),
            (
                "uptime_s",
                json!(-1),
                "uptime_s: expected an unsigned integer",
            ),
            ("sent_at", json!("yesterday"), "sent_at: `yesterday` is not"),
            ("interval_s", json!(0), "interval_s: expected a positive"),
            ("meters", json!({}), "meters: expected an array"),
            ("buffer", json!(null), "buffer: expected an object"),
        ];
        for (name, value, message) in cases {
            let mut b = body();
            b[name] = value;
            let error = check(&b).expect_err(name);
            assert!(error.starts_with(message), "{name}: {error}");
        }
        let mut b = body();
        b["meters"] = json!([b["meters"][0].clone(), b["meters"][0].clone()]);
        b["meters"][1]["id"] = json!("other");
        b["meters"][1]["state"] = json!("asleep");
        assert_eq!(
            check(&b).expect_err("bad state"),
            "meters[1].state: expected one of connected, connecting, down, failed, got `asleep`"
        );
        b["meters"][1]["id"] = json!("nl43-north");
        b["meters"][1]["state"] = json!("down");
        assert!(
            check(&b)
                .expect_err("twice")
                .starts_with("meters[1].id: `nl43-north` appears twice")
        );
        let mut b = body();
        b["meters"][0]
            .as_object_mut()
            .expect("object")
            .remove("health");
        assert_eq!(
            check(&b).expect_err("no health"),
            "meters[0].health: missing field"
        );
        for (path, value, message) in [
            (
                "run_state",
                json!("running"),
                "meters[0].run_state: expected one of",
            ),
            (
                "last_seq",
                json!(1.5),
                "meters[0].last_seq: expected an unsigned",
            ),
            (
                "since",
                json!(5),
                "meters[0].since: expected an RFC 3339 timestamp or null",
            ),
            (
                "identity",
                json!("NL-43"),
                "meters[0].identity: expected null or",
            ),
            (
                "health",
                json!({"battery": [1]}),
                "meters[0].health.battery: expected a number",
            ),
            (
                "last_error",
                json!(3),
                "meters[0].last_error: expected a string or null",
            ),
        ] {
            let mut b = body();
            b["meters"][0][path] = value;
            let error = check(&b).expect_err(path);
            assert!(error.starts_with(message), "{path}: {error}");
        }
        let mut b = body();
        b["meters"][0]["identity"]["serial"] = json!(412345);
        assert!(
            check(&b)
                .expect_err("serial")
                .starts_with("meters[0].identity.serial: expected a string or null")
        );
        let mut b = body();
        b["buffer"]
            .as_object_mut()
            .expect("object")
            .remove("unsent");
        assert_eq!(
            check(&b).expect_err("unsent"),
            "buffer.unsent: missing field"
        );
        assert!(
            check(&json!([1]))
                .expect_err("array")
                .starts_with("expected an object")
        );
    }

    fn beat(at: DateTime<Utc>) -> Heartbeat {
        Heartbeat {
            at,
            token: "ab12cd34".to_owned(),
            token_role: TokenRole::Current,
            status: 204,
            body: json!({}),
        }
    }

    #[test]
    fn a_silent_gateway_goes_offline_after_three_intervals_and_comes_back() {
        let mut beats = Heartbeats::default();
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let first = beats.accept("gw", beat(Utc::now()), interval, start);
        assert!(first.came_back.is_none() && first.went_offline.is_none());
        let (offline, next) = beats.sweep(start + Duration::from_millis(299));
        assert!(offline.is_empty());
        assert_eq!(next, Some(start + Duration::from_millis(300)));
        let (offline, next) = beats.sweep(start + Duration::from_millis(300));
        assert_eq!(offline.len(), 1);
        assert_eq!(offline[0].interval_ms, 100);
        assert_eq!(next, None);
        assert!(
            beats.sweep(start + Duration::from_secs(5)).0.is_empty(),
            "once per episode"
        );
        assert!(!beats.liveness()[0].online);
        let back = beats.accept(
            "gw",
            beat(Utc::now()),
            interval,
            start + Duration::from_millis(450),
        );
        assert_eq!(
            back.came_back,
            Some(CameBack {
                offline_for_ms: 150,
                silent_for_ms: 450
            })
        );
        let live = &beats.liveness()[0];
        assert!(live.online);
        assert_eq!((live.heartbeats, live.offline_episodes), (2, 1));
        // Late, before any sweep: offline and back in one step.
        let late = beats.accept(
            "gw",
            beat(Utc::now()),
            interval,
            start + Duration::from_secs(1),
        );
        assert!(late.went_offline.is_some() && late.came_back.is_some());
        assert_eq!(beats.liveness()[0].offline_episodes, 2);
    }

    #[test]
    fn the_last_heartbeats_are_kept() {
        let mut beats = Heartbeats::default();
        let now = Instant::now();
        for _ in 0..HEARTBEATS_KEPT + 5 {
            beats.accept("gw", beat(Utc::now()), Duration::from_secs(60), now);
        }
        assert_eq!(beats.list("gw", None).len(), HEARTBEATS_KEPT);
        assert_eq!(beats.list("gw", Some(3)).len(), 3);
        assert!(beats.list("other", None).is_empty());
        assert_eq!(beats.liveness()[0].heartbeats, HEARTBEATS_KEPT as u64 + 5);
    }
}
