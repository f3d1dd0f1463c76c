//! The plain JSON routes: status, live, history, and the JSON 404/405.

use super::{ApiError, ApiState};
use crate::buffer::BufferStatus;
use crate::device::{DeviceStatus, lock_status};
use crate::record::Record;
use crate::uplink::FleetStatus;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{Method, Uri};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

/// Records `history` returns when no `limit` is given.
pub const HISTORY_DEFAULT_LIMIT: usize = 1000;
/// Most records one `history` request may ask for.
pub const HISTORY_MAX_LIMIT: usize = 10_000;

/// The body of `GET /v1/status`.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// `[gateway].id`.
    gateway: String,
    /// This build's version.
    version: &'static str,
    /// When the API state was created (about when the daemon started).
    #[serde(serialize_with = "crate::record::rfc3339_millis")]
    started_at: DateTime<Utc>,
    /// Whole seconds since then.
    uptime_seconds: u64,
    /// One entry per configured device, in config order.
    devices: Vec<DeviceView>,
    /// The ring buffer, or why it is not open.
    buffer: BufferView,
    /// The fleet uplink.
    fleet: FleetStatus,
    /// Open `/v1/stream` connections.
    subscribers: u64,
    /// Live-stream totals.
    streams: StreamView,
    /// Config keys changed by a reload that take effect only at the next
    /// start (`section.key`, e.g. `buffer.max_records`); empty when the
    /// running config is the file's.
    needs_restart: Vec<String>,
    /// The file the running config was loaded from (`file`, `sha256` of
    /// its bytes, `loaded_at`); `null` when it came from none (the demo).
    config: Option<super::ConfigSource>,
    /// API connections: open, the cap, and what the limits closed.
    connections: super::ConnectionStats,
    /// Noise limits (SPEC §11), when configured: counters, active alerts,
    /// and each event consumer's delivery state.
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<LimitsView>,
}

/// The limits part in status.
#[derive(Debug, Serialize)]
pub(crate) struct LimitsView {
    #[serde(flatten)]
    counters: crate::limits::engine::LimitsStatus,
    /// Active episodes: `episode`, `alert`, `device`, `metric`, `threshold`,
    /// `onset_at`, `peak`, `last_value`, `ack`.
    active_alerts: Vec<serde_json::Value>,
    /// The fleet first, then each channel.
    deliveries: Vec<crate::limits::deliver::DeliveryStatus>,
    /// `[levels].intervals` as written (`"15m"`): the lengths
    /// `/v1/devices/{id}/levels?length=` takes.
    intervals: Vec<String>,
}

/// A device in status: its [`DeviceStatus`] (state, counters, health)
/// and how many live streams watch it.
#[derive(Debug, Serialize)]
pub(crate) struct DeviceView {
    #[serde(flatten)]
    status: DeviceStatus,
    /// Open live streams (API, and any other watcher) watching this device.
    watchers: usize,
}

/// The buffer in status: `open: true` with the [`BufferStatus`] fields, or
/// `open: false` with a `detail`.
#[derive(Debug, Serialize)]
pub(crate) struct BufferView {
    open: bool,
    #[serde(flatten)]
    status: Option<BufferStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'static str>,
}

/// Why the buffer is missing, in status.
const BUFFER_NOT_OPEN: &str = "the buffer is not open yet: the disk refused it at start; \
     readings wait in memory (bounded) and are written once it opens";

/// Stream totals in status.
#[derive(Debug, Serialize)]
pub(crate) struct StreamView {
    /// `/v1/stream` connections opened since start.
    opened_total: u64,
    /// Records streams skipped because their client fell behind.
    lagged_records_total: u64,
    /// Streams cut because their client stopped reading.
    stuck_disconnects_total: u64,
    /// Every live subscriber of the hub (API streams, MQTT, printers).
    hub_receivers: usize,
}

/// The buffer's status, read off the async runtime (it runs a query).
pub(crate) async fn buffer_status(state: &ApiState) -> Result<Option<BufferStatus>, ApiError> {
    let Some(buffer) = state.inner.buffer.get().cloned() else {
        return Ok(None);
    };
    tokio::task::spawn_blocking(move || buffer.status())
        .await
        .map(Some)
        .map_err(|e| ApiError::Internal(format!("buffer status task: {e}")))
}

/// A snapshot of every device's status, in config order.
pub(crate) fn device_statuses(state: &ApiState) -> Vec<DeviceStatus> {
    state
        .devices()
        .iter()
        .map(|(_, cell)| lock_status(cell).clone())
        .collect()
}

/// `GET /v1/status`.
pub(crate) async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let buffer = buffer_status(&state).await?;
    let inner = &state.inner;
    let devices = device_statuses(&state)
        .into_iter()
        .map(|status| DeviceView {
            watchers: *inner.hub.watchers(&status.id).borrow(),
            status,
        })
        .collect();
    let fleet = super::lock_fleet(&inner.fleet).clone();
    let limits = limits_view(&state).await?;
    let stats = &inner.stats;
    Ok(Json(Status {
        gateway: inner.gateway_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: inner.started_at,
        uptime_seconds: inner.started.elapsed().as_secs(),
        devices,
        buffer: BufferView {
            open: buffer.is_some(),
            detail: buffer.is_none().then_some(BUFFER_NOT_OPEN),
            status: buffer,
        },
        fleet,
        subscribers: stats.open(),
        streams: StreamView {
            opened_total: stats.opened_total(),
            lagged_records_total: stats.lagged_records(),
            stuck_disconnects_total: stats.stuck_disconnects(),
            hub_receivers: inner.hub.live_subscribers(),
        },
        needs_restart: state.needs_restart(),
        config: state.config_source(),
        connections: state.connections(),
        limits,
    }))
}

async fn limits_view(state: &ApiState) -> Result<Option<LimitsView>, ApiError> {
    let Some(limits) = state.inner.limits.get() else {
        return Ok(None);
    };
    let counters = limits.counters();
    let deliveries = limits.deliveries_now();
    let active_alerts = match state.inner.buffer.get().cloned() {
        Some(buffer) => tokio::task::spawn_blocking(move || buffer.episodes(0))
            .await
            .map_err(|e| ApiError::Internal(format!("status task: {e}")))??
            .0
            .into_iter()
            .map(super::alerts::shown)
            .collect(),
        None => Vec::new(),
    };
    Ok(Some(LimitsView {
        counters,
        active_alerts,
        deliveries,
        intervals: limits
            .intervals
            .iter()
            .map(|length| crate::limits::interval::length_suffix(*length))
            .collect(),
    }))
}

/// The configured device `id`, or 404.
pub(crate) fn known_device(
    state: &ApiState,
    id: Result<Path<String>, PathRejection>,
) -> Result<Arc<str>, ApiError> {
    let id = match id {
        Ok(Path(id)) => id,
        Err(rejection) => {
            return Err(ApiError::bad_parameter(
                "id",
                "a device id in UTF-8",
                &rejection.body_text(),
            ));
        }
    };
    state.device(&id).ok_or_else(|| state.unknown_device(&id))
}

/// `GET /v1/devices/{id}/live`: the device's newest record.
pub(crate) async fn live(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Arc<Record>>, ApiError> {
    let device = known_device(&state, id)?;
    state
        .inner
        .hub
        .latest(&device)
        .map(Json)
        .ok_or_else(|| ApiError::NoReadingYet(device.to_string()))
}

/// The body of `GET /v1/devices/{id}/history`.
#[derive(Debug, Serialize)]
pub(crate) struct History {
    /// The device.
    device: Arc<str>,
    /// The `since` asked for, normalised, or null.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    since: Option<DateTime<Utc>>,
    /// The limit applied.
    limit: usize,
    /// The `after` asked for, or null.
    after: Option<u64>,
    /// The records, oldest first.
    records: Vec<Record>,
    /// Whether more records may follow the last one.
    truncated: bool,
    /// When `truncated`: ask again with the same `since` and `after` = this
    /// to go on (exact whatever the clock did; the page may have stopped at
    /// its limit or at the end of its scan window).
    next_after: Option<u64>,
}

/// Query of `history`.
#[derive(Debug, PartialEq)]
struct HistoryQuery {
    since: Option<DateTime<Utc>>,
    after: Option<u64>,
    limit: usize,
}

const HISTORY_PARAMS: &str =
    "since (RFC 3339), after (a seq, to continue a page) and limit (1..=10000)";

fn history_query(pairs: &[(String, String)]) -> Result<HistoryQuery, ApiError> {
    let mut query = HistoryQuery {
        since: None,
        after: None,
        limit: HISTORY_DEFAULT_LIMIT,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name.as_str()) {
            return Err(ApiError::bad_parameter(name, "the parameter once", value));
        }
        seen.push(name);
        match name.as_str() {
            "since" => query.since = Some(parse_since(value)?),
            "limit" => query.limit = parse_limit(value)?,
            "after" => query.after = Some(parse_after(value)?),
            _ => {
                return Err(ApiError::UnknownParameter {
                    param: name.clone(),
                    known: HISTORY_PARAMS,
                });
            }
        }
    }
    Ok(query)
}

fn parse_after(value: &str) -> Result<u64, ApiError> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| ApiError::bad_parameter("after", "a record's seq (a whole number)", value))
}

/// An RFC 3339 time. A `+` of an offset that arrived unencoded in a query
/// string reads as a space; it is taken back.
pub(crate) fn parse_since(value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value.trim())
        .or_else(|e| {
            let repaired = value.trim().replace(' ', "+");
            if repaired == value.trim() {
                Err(e)
            } else {
                DateTime::parse_from_rfc3339(&repaired)
            }
        })
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::bad_parameter(
                "since",
                "an RFC 3339 time such as 2026-11-22T14:15:17Z or 2026-11-22T15:15:17.250+01:00",
                value,
            )
        })
}

pub(crate) fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=HISTORY_MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::bad_parameter(
                "limit",
                format!("a whole number from 1 to {HISTORY_MAX_LIMIT}"),
                value,
            )
        })
}

/// The raw query pairs, or a 400.
pub(crate) fn query_pairs(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(pairs)| pairs)
        .map_err(|e| ApiError::bad_parameter("query", "a URL-encoded query string", &e.body_text()))
}

/// `GET /v1/devices/{id}/history?since=&limit=`: the device's records from
/// the buffer, oldest first.
pub(crate) async fn history(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let device = known_device(&state, id)?;
    let HistoryQuery {
        since,
        after,
        limit,
    } = history_query(&query_pairs(query)?)?;
    let buffer = state
        .inner
        .buffer
        .get()
        .cloned()
        .ok_or(ApiError::BufferNotOpen)?;
    let name = device.clone();
    let page =
        tokio::task::spawn_blocking(move || buffer.history_page(Some(&name), since, after, limit))
            .await
            .map_err(|e| ApiError::Internal(format!("history task: {e}")))??;
    Ok(Json(History {
        device,
        since,
        after,
        truncated: page.more_after.is_some(),
        next_after: page.more_after,
        records: page.records,
        limit,
    }))
}

/// Fallback: no such route.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::UnknownRoute(uri.path().to_owned())
}

/// Fallback: the route exists, the method does not.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Fuzzing entry point (`daemon/fuzz`, target `api_query`): a raw history
/// query string (what follows `?`), decoded and read as the route reads it,
/// the error message included. True when it is a valid query.
#[doc(hidden)]
pub fn fuzz_parse_history_query(query: &str) -> bool {
    let Ok(uri) = format!("/v1/devices/x/history?{query}").parse::<Uri>() else {
        return false;
    };
    match query_pairs(Query::try_from_uri(&uri)).and_then(|pairs| history_query(&pairs)) {
        Ok(_) => true,
        Err(e) => {
            // The 400's message is part of the answer: render it too.
            let _ = e.to_string();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn history_query_defaults_and_parses() {
        assert_eq!(
            history_query(&[]).ok(),
            Some(HistoryQuery {
                since: None,
                after: None,
                limit: HISTORY_DEFAULT_LIMIT
            })
        );
        let q = history_query(&pairs(&[
            ("since", "2026-11-22T15:15:17.250 01:00"),
            ("limit", "10000"),
        ]))
        .expect("parses");
        assert_eq!(q.limit, 10_000);
        assert_eq!(
            history_query(&pairs(&[("after", "41")]))
                .map(|q| q.after)
                .ok(),
            Some(Some(41))
        );
        assert_eq!(
            q.since.map(|t| crate::record::format_millis(&t)),
            Some("2026-11-22T14:15:17.250Z".to_owned())
        );
    }

    #[test]
    fn history_query_errors_name_the_parameter() {
        for (list, param) in [
            (vec![("since", "yesterday")], "since"),
            (vec![("limit", "0")], "limit"),
            (vec![("limit", "10001")], "limit"),
            (vec![("limit", "-3")], "limit"),
            (vec![("limit", "1"), ("limit", "2")], "limit"),
            (vec![("until", "x")], "until"),
            (vec![("after", "-1")], "after"),
        ] {
            match history_query(&pairs(&list)) {
                Err(
                    ApiError::BadParameter { param: p, .. }
                    | ApiError::UnknownParameter { param: p, .. },
                ) => {
                    assert_eq!(p, param, "{list:?}");
                }
                other => panic!("{list:?}: expected a parameter error, got {other:?}"),
            }
        }
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "x".repeat(500);
        let e = ApiError::bad_parameter("since", "a time", &long);
        assert!(e.to_string().len() < 200, "{e}");
    }
}
