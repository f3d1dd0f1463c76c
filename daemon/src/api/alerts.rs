//! Noise limits in the API (SPEC §11): `GET /v1/alerts`, `POST
//! /v1/alerts/{episode}/ack`, `GET /v1/devices/{id}/levels`.

use super::routes::{known_device, parse_limit, parse_since, query_pairs};
use super::{ApiError, ApiState};
use crate::buffer::alerts::{AckError, EPISODES_KEEP};
use crate::limits::deliver::DeliveryStatusCell;
use crate::limits::engine::LimitsStatusCell;
use crate::record::Record;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// Finished episodes `GET /v1/alerts` lists when no `recent` is given.
pub const RECENT_DEFAULT: usize = 20;

/// Longest ack note: 1000 characters.
pub const NOTE_MAX_CHARS: usize = 1000;

/// Largest ack body: 8 KiB.
pub const ACK_BODY_MAX: usize = 8 * 1024;

/// What the API knows of the limits part.
#[derive(Debug, Clone)]
pub struct LimitsApi {
    /// The engine's counters.
    pub status: LimitsStatusCell,
    /// Each event consumer's state (the fleet, each channel).
    pub deliveries: Vec<DeliveryStatusCell>,
    /// `[levels].intervals`.
    pub intervals: Vec<Duration>,
}

impl LimitsApi {
    /// The engine's counters now.
    pub(crate) fn counters(&self) -> crate::limits::engine::LimitsStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Each consumer's delivery state now.
    pub(crate) fn deliveries_now(&self) -> Vec<crate::limits::deliver::DeliveryStatus> {
        self.deliveries
            .iter()
            .map(|d| {
                d.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            })
            .collect()
    }
}

/// The body of `GET /v1/alerts`.
#[derive(Debug, Serialize)]
pub(crate) struct Alerts {
    /// Active episodes, oldest onset first.
    active: Vec<Value>,
    /// Finished episodes, newest first.
    recent: Vec<Value>,
}

/// An episode's summary as the API shows it (without the rules' internal
/// state kept for a restart).
pub(crate) fn shown(mut episode: Value) -> Value {
    if let Some(map) = episode.as_object_mut() {
        map.remove("state");
    }
    episode
}

fn buffer(state: &ApiState) -> Result<crate::buffer::Buffer, ApiError> {
    state
        .inner
        .buffer
        .get()
        .cloned()
        .ok_or(ApiError::BufferNotOpen)
}

/// `GET /v1/alerts?recent=N`: active episodes and the newest finished ones.
pub(crate) async fn alerts(
    State(state): State<ApiState>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Alerts>, ApiError> {
    let mut recent = RECENT_DEFAULT;
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "recent" => {
                recent = value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= EPISODES_KEEP as usize)
                    .ok_or_else(|| {
                        ApiError::bad_parameter(
                            "recent",
                            format!("a whole number from 0 to {EPISODES_KEEP}"),
                            &value,
                        )
                    })?;
            }
            _ => {
                return Err(ApiError::UnknownParameter {
                    param: name,
                    known: "recent (finished episodes to list, 0..=1000)",
                });
            }
        }
    }
    let buffer = buffer(&state)?;
    let (active, finished) = tokio::task::spawn_blocking(move || buffer.episodes(recent))
        .await
        .map_err(|e| ApiError::Internal(format!("alerts task: {e}")))??;
    Ok(Json(Alerts {
        active: active.into_iter().map(shown).collect(),
        recent: finished.into_iter().map(shown).collect(),
    }))
}

/// `POST /v1/alerts/{episode}/ack` with `{"note": "..."}` (or no body):
/// the episode acknowledged; announced on the stream as `event: alert`
/// with `"event": "ack"`.
pub(crate) async fn ack(
    State(state): State<ApiState>,
    episode: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let Path(episode) = episode.map_err(|e| {
        ApiError::bad_parameter(
            "episode",
            "an episode id from GET /v1/alerts",
            &e.body_text(),
        )
    })?;
    if body.len() > ACK_BODY_MAX {
        return Err(ApiError::bad_parameter(
            "body",
            format!("at most {ACK_BODY_MAX} bytes of JSON"),
            &format!("{} bytes", body.len()),
        ));
    }
    let note = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else {
        let text = String::from_utf8_lossy(&body);
        let parsed: Value = serde_json::from_slice(&body).map_err(|_| {
            ApiError::bad_parameter(
                "body",
                r#"JSON such as {"note": "crane work, site informed"}"#,
                &text,
            )
        })?;
        let Some(map) = parsed.as_object() else {
            return Err(ApiError::bad_parameter("body", "a JSON object", &text));
        };
        if let Some(key) = map.keys().find(|k| *k != "note") {
            return Err(ApiError::UnknownParameter {
                param: key.clone(),
                known: "note (a text of at most 1000 characters)",
            });
        }
        match map.get("note") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(note)) if note.chars().count() <= NOTE_MAX_CHARS => note.clone(),
            Some(Value::String(note)) => {
                return Err(ApiError::bad_parameter(
                    "note",
                    format!("at most {NOTE_MAX_CHARS} characters"),
                    note,
                ));
            }
            Some(other) => {
                return Err(ApiError::bad_parameter(
                    "note",
                    "a string",
                    &other.to_string(),
                ));
            }
        }
    };
    let buffer = buffer(&state)?;
    let at = crate::record::format_millis(&Utc::now());
    let id = episode.clone();
    let acked = tokio::task::spawn_blocking(move || buffer.ack_episode(&id, &note, &at))
        .await
        .map_err(|e| ApiError::Internal(format!("ack task: {e}")))?;
    let summary = match acked {
        Ok(summary) => shown(summary),
        Err(AckError::Unknown(id)) => return Err(ApiError::UnknownEpisode(id)),
        Err(AckError::Buffer(e)) => return Err(ApiError::Buffer(e)),
    };
    tracing::info!(
        event = "alert_ack",
        "alert episode {episode} acknowledged{}",
        summary["ack"]["note"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(|n| format!(": {n:?}"))
            .unwrap_or_default()
    );
    let mut announced = serde_json::json!({
        "gateway": state.inner.gateway_id,
        "event": "ack",
        "episode": episode,
        "ack": summary["ack"],
    });
    for key in ["alert", "device", "metric", "threshold"] {
        if let (Some(map), Some(value)) = (announced.as_object_mut(), summary.get(key)) {
            map.insert(key.into(), value.clone());
        }
    }
    state.inner.hub.alert(std::sync::Arc::new(announced));
    Ok(Json(summary))
}

/// The body of `levels`.
#[derive(Debug, Serialize)]
pub(crate) struct Levels {
    device: std::sync::Arc<str>,
    length: String,
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    since: Option<DateTime<Utc>>,
    levels: Vec<Record>,
}

/// `GET /v1/devices/{id}/levels?length=15m&since=&limit=`: the device's
/// interval levels of one configured length, oldest window first.
pub(crate) async fn levels(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Levels>, ApiError> {
    let device = known_device(&state, id)?;
    let configured = state
        .inner
        .limits
        .get()
        .map(|l| l.intervals.clone())
        .unwrap_or_default();
    let names: Vec<String> = configured
        .iter()
        .map(|d| crate::limits::interval::length_suffix(*d))
        .collect();
    let expected = if names.is_empty() {
        "a configured interval length; [levels] intervals is empty, so there are none".to_owned()
    } else {
        format!("one of the configured lengths: {}", names.join(", "))
    };
    let mut length = None;
    let mut since = None;
    let mut limit = super::routes::HISTORY_DEFAULT_LIMIT;
    for (name, value) in query_pairs(query)? {
        match name.as_str() {
            "length" => {
                let parsed = crate::config::parse_duration(value.trim())
                    .ok()
                    .filter(|d| configured.contains(d))
                    .ok_or_else(|| ApiError::bad_parameter("length", expected.clone(), &value))?;
                length = Some(parsed);
            }
            "since" => since = Some(parse_since(&value)?),
            "limit" => limit = parse_limit(&value)?,
            _ => {
                return Err(ApiError::UnknownParameter {
                    param: name,
                    known: "length (e.g. 15m), since (RFC 3339, window start) and limit (1..=10000)",
                });
            }
        }
    }
    let length = match (length, configured.as_slice()) {
        (Some(length), _) => length,
        // One length configured: it is the default.
        (None, [only]) => *only,
        (None, _) => return Err(ApiError::bad_parameter("length", expected, "")),
    };
    let buffer = buffer(&state)?;
    let name = device.clone();
    let levels = tokio::task::spawn_blocking(move || buffer.levels(&name, length, since, limit))
        .await
        .map_err(|e| ApiError::Internal(format!("levels task: {e}")))??;
    Ok(Json(Levels {
        device,
        length: crate::limits::interval::length_suffix(length),
        since,
        levels,
    }))
}
