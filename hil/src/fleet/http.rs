//! The fleet simulator over HTTP/1.1: the ingest and heartbeat routes, the
//! admin routes, the ingest and heartbeat pipelines, and the liveness timer.
//!
//! Ingest (`POST /api/fleet/ingest`) answers by the first of these that
//! applies: (1) a queued fault, consumed on arrival and answered before
//! anything else (faults model a load balancer or an outage in front of the
//! fleet); (2) the bearer token (`401`); (3) the body: size,
//! `Content-Type`, `Content-Encoding`, gzip, JSON and every record field
//! (`413` beyond [`MAX_BODY_BYTES`], `400` naming the field otherwise);
//! (4) `max_records` (`413`); (5) poisoned seqs (`400`); (6) storing,
//! de-duplicated by `(gateway, epoch, seq)`, with the body's declared skips
//! (`200`; a duplicate with other content is answered as a duplicate and
//! counted as a conflict, logged at WARN once per request). The body is always
//! read, decoded and parsed, whatever the answer, so `body_bytes` counts every
//! request, the connection stays usable, and the log names the batch of a
//! refused or faulted request too. Decompression, parsing and checking run
//! without the state lock; steps 4 to 6 and the request's log entry happen
//! under one lock, so counters, log and store always agree. The WARN lines
//! about a gateway's numbering are written after the lock is released.
//!
//! Heartbeat (`POST /api/fleet/heartbeat`) answers in the same order: (1) a
//! queued fault for the heartbeat route (`route` `heartbeat` or `all`);
//! (2) the bearer token (`401`, the same tokens and grace as ingest); (3) the
//! body: the same size, `Content-Type`, `Content-Encoding` and gzip rules,
//! then the heartbeat's fields (`400` naming the field); (4) `204`, the
//! heartbeat kept and its gateway's liveness updated, under one lock with
//! the request's log entry and events.
//!
//! While the server serves, a timer task marks gateways offline when their
//! 3 intervals run out: it sleeps until the earliest deadline, and is woken
//! when an accepted heartbeat moves one.
//!
//! Every error answer is JSON with an `error` field; unknown routes are
//! `404`, wrong methods `405`.

use super::audit::{Audit, Conflict, SkippedRange};
use super::events::{self as alert_events, AlertEventLine, EventOrder};
use super::faults::{Fault, RoutedFault};
use super::heartbeat::{self, Checked, Heartbeat, millis};
use super::record::{self, SKIP_BOUND, SlotJson, excerpt};
use super::report::{FleetEvent, FleetStats, HeartbeatLine, Outcome, RequestLog, Route};
use super::store::Stored;
use super::tokens::{RotateReport, TokenDigest, TokenRole, TokenStatus, digest, fingerprint_of};
use super::{FleetSim, MAX_BODY_BYTES};
use crate::config::{ParseError, parse_duration};
use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::serve::ListenerExt as _;
use chrono::Utc;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Read as _;
use std::pin::Pin;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest admin request body taken.
const ADMIN_BODY_BYTES: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
struct App {
    /// The fleet.
    sim: FleetSim,
    /// Cancelled on shutdown: releases the requests a `hang` fault holds.
    shutdown: CancellationToken,
}

/// Serves `sim` on `listener` until `shutdown`.
pub(crate) async fn serve(
    sim: FleetSim,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = App {
        sim,
        shutdown: shutdown.clone(),
    };
    // Answers are small and written at once; without NODELAY a client that
    // delays its ACKs could stall every request/answer round trip.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let sim = app.sim.clone();
    let stop_watching = shutdown.child_token();
    let watcher = tokio::spawn(watch_liveness(sim, stop_watching.clone()));
    let served = axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    stop_watching.cancel();
    if let Err(e) = watcher.await {
        tracing::warn!("the liveness timer failed: {e}");
    }
    served
}

/// Marks gateways offline as their deadlines pass, until `stop`: sleeps
/// until the earliest deadline, and re-computes it when a heartbeat is
/// accepted.
async fn watch_liveness(sim: FleetSim, stop: CancellationToken) {
    loop {
        // Created before the sweep: a heartbeat accepted during the sweep
        // leaves a permit, so it is not missed.
        let changed = sim.shared.liveness_changed.notified();
        let next = sim.sweep_liveness();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = changed => {}
            () = due => {}
        }
    }
}

/// Every route.
fn router(app: App) -> Router {
    Router::new()
        .route("/api/fleet/ingest", post(ingest))
        .route("/api/fleet/heartbeat", post(heartbeat))
        .route("/api/fleet/events", post(events))
        .route("/admin/rotate", post(rotate))
        .route("/admin/expire-previous", post(expire_previous))
        .route("/admin/tokens", get(tokens))
        .route(
            "/admin/faults",
            post(inject).get(pending_faults).delete(clear_faults),
        )
        .route("/admin/max-records", put(set_max_records).get(max_records))
        .route("/admin/poison", put(set_poison).get(poison))
        .route("/admin/received", get(received))
        .route("/admin/intervals", get(intervals))
        .route("/admin/seqs", get(seqs))
        .route("/admin/conflicts", get(conflicts))
        .route("/admin/skipped", get(skipped))
        .route("/admin/audit", get(audit))
        .route("/admin/gateways", get(gateways))
        .route("/admin/stats", get(stats))
        .route("/admin/requests", get(requests))
        .route("/admin/heartbeats", get(heartbeats))
        .route("/admin/liveness", get(liveness))
        .route("/admin/events", get(alert_events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

// ---------------------------------------------------------------------------
// Ingest.

/// A request body as read from the wire.
struct Wire {
    /// The bytes read (all of them unless `error`).
    bytes: Vec<u8>,
    /// Bytes received, including any beyond the limit in the last frame.
    seen: u64,
    /// Why reading stopped early, if it did.
    error: Option<BodyError>,
}

/// Why a body was not read to its end.
enum BodyError {
    /// It is larger than the limit.
    TooLarge,
    /// The connection failed or the framing was broken.
    Read(String),
}

/// Reads `body` up to `limit` bytes.
async fn read_body(mut body: Body, limit: usize) -> Wire {
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    let mut wire = Wire {
        bytes: Vec::with_capacity(hint.min(limit)),
        seen: 0,
        error: None,
    };
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => {
                wire.error = Some(BodyError::Read(e.to_string()));
                break;
            }
            Some(Ok(frame)) => {
                // Trailers carry nothing for us.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                wire.seen += data.len() as u64;
                if wire.bytes.len() + data.len() > limit {
                    wire.error = Some(BodyError::TooLarge);
                    break;
                }
                wire.bytes.extend_from_slice(&data);
            }
        }
    }
    wire
}

/// The body's `Content-Encoding`.
enum Encoding {
    /// None or `identity`.
    Identity,
    /// `gzip` (or `x-gzip`).
    Gzip,
    /// Anything else, as sent (shortened).
    Unsupported(String),
}

/// Reads `Content-Encoding`.
fn encoding(headers: &HeaderMap) -> Encoding {
    let Some(value) = headers.get(CONTENT_ENCODING) else {
        return Encoding::Identity;
    };
    let text = String::from_utf8_lossy(value.as_bytes())
        .trim()
        .to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Encoding::Identity,
        "gzip" | "x-gzip" => Encoding::Gzip,
        other => Encoding::Unsupported(excerpt(other).into_owned()),
    }
}

/// The digest of the bearer token, if one was presented.
fn bearer(headers: &HeaderMap) -> Option<TokenDigest> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| digest(token))
}

/// Checks that the body is declared as JSON.
fn json_content_type(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err("missing Content-Type: expected application/json".to_owned());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let media = text.split(';').next().unwrap_or_default().trim();
    if media.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(format!(
            "Content-Type `{}` is not application/json",
            excerpt(&text)
        ))
    }
}

/// An answer to an ingest request that was not hit by a `status` or `hang`
/// fault.
#[derive(Clone)]
struct Answer {
    /// The status.
    status: StatusCode,
    /// The JSON body.
    body: serde_json::Value,
    /// What became of the request.
    outcome: Outcome,
    /// Why it was refused, for the log.
    detail: Option<String>,
}

impl Answer {
    /// `401`.
    fn unknown_token() -> Answer {
        Answer {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"error": "unknown or expired token"}),
            outcome: Outcome::UnknownToken,
            detail: None,
        }
    }

    /// `400` for a body that is not a valid push.
    fn malformed(detail: String) -> Answer {
        Answer {
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": "malformed", "detail": detail}),
            outcome: Outcome::Malformed,
            detail: Some(detail),
        }
    }

    /// `413` for a body beyond [`MAX_BODY_BYTES`].
    fn body_too_large() -> Answer {
        let detail = format!("the body is larger than {MAX_BODY_BYTES} bytes");
        Answer {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            body: json!({"error": "body too large", "limit_bytes": MAX_BODY_BYTES}),
            outcome: Outcome::TooLarge,
            detail: Some(detail),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

/// A checked batch, ready to store.
struct Prepared {
    /// The pushing gateway.
    gateway: String,
    /// The numbering epoch of all its records.
    epoch: u64,
    /// The ranges of that epoch it declares skipped, as sent.
    skipped: Vec<record::SkipIn>,
    /// Its records, in the order sent.
    pending: Vec<record::Pending>,
}

/// `POST /api/fleet/ingest`.
async fn ingest(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(app, Route::Ingest, headers, body, handle).await
}

/// Answers and logs a request of one route (`handle` or
/// `handle_heartbeat`); `None` when a `hang` fault holds it.
type Handler = fn(
    &FleetSim,
    &HeaderMap,
    Option<Fault>,
    Option<TokenDigest>,
    Encoding,
    &Wire,
    RequestLog,
) -> Option<Response>;

/// Takes a request on `route` (its fault, token and body) and has `handle`
/// answer it; a request `handle` holds is answered at shutdown.
async fn receive(
    app: App,
    route: Route,
    headers: HeaderMap,
    body: Body,
    handle: Handler,
) -> Response {
    let at = Utc::now();
    // Taken on arrival, so faults hit requests in the order they arrive.
    let fault = app.sim.take_fault(route);
    let presented = bearer(&headers);
    let encoding = encoding(&headers);
    let wire = read_body(body, MAX_BODY_BYTES).await;
    let log = new_log(at, route, &presented, &fault, &wire, &encoding);
    if let Some(response) = handle(&app.sim, &headers, fault, presented, encoding, &wire, log) {
        return response;
    }
    drop(wire);
    held(&app).await
}

/// A request's log entry before anything is known of its body.
fn new_log(
    at: chrono::DateTime<Utc>,
    route: Route,
    presented: &Option<TokenDigest>,
    fault: &Option<Fault>,
    wire: &Wire,
    encoding: &Encoding,
) -> RequestLog {
    RequestLog {
        at,
        route,
        token: presented.as_ref().map(fingerprint_of),
        token_role: None,
        status: None,
        outcome: Outcome::Malformed,
        fault: fault.as_ref().map(Fault::kind),
        gateway: None,
        records: None,
        meters: None,
        events: None,
        accepted: 0,
        duplicates: 0,
        conflicts: 0,
        epoch: 0,
        skipped: Vec::new(),
        first_seq: None,
        last_seq: None,
        body_bytes: wire.seen,
        gzip: matches!(encoding, Encoding::Gzip),
        detail: None,
    }
}

/// A request held by a `hang` fault: answered `503` (and closed) at
/// shutdown. If the client gives up first, the connection closes and this
/// future is dropped with it.
async fn held(app: &App) -> Response {
    app.shutdown.cancelled().await;
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": "shutting down"})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers and logs an ingest request; `None` when a `hang` fault holds it.
///
/// The body is decoded and parsed whatever the fault or token, so the log
/// names the batch (gateway, records, seqs) of every request whose body
/// parses; the answer still follows the order of checks.
fn handle(
    sim: &FleetSim,
    headers: &HeaderMap,
    fault: Option<Fault>,
    presented: Option<TokenDigest>,
    encoding: Encoding,
    wire: &Wire,
    mut log: RequestLog,
) -> Option<Response> {
    let decoded = decode(headers, encoding, wire);
    let parsed = match &decoded {
        Ok(bytes) => record::parse(bytes).map_err(Answer::malformed),
        Err(answer) => Err(answer.clone()),
    };
    if let Ok(body) = &parsed {
        log.gateway = Some(body.gateway.0.to_string());
        log.records = Some(body.records.len());
        log.first_seq = body.records.first().map(|r| r.0.seq);
        log.last_seq = body.records.last().map(|r| r.0.seq);
        log.epoch = body.epoch.0;
        log.skipped = body.skipped.iter().map(|s| [s.from, s.to]).collect();
    }
    by_fault(sim, fault, log, |log, not_json| {
        process(sim, presented, parsed, log, not_json)
    })
}

/// Answers a request as its `fault` says: a `status` fault in its place, a
/// `hang` not at all (`None`); a `not_json` fault processes it normally and
/// replaces only the answer, like a proxy that swallows it. Without a fault,
/// `process`'s answer. `process(log, not_json)` checks, keeps and logs the
/// request (with `not_json`, logged as answered `200`).
fn by_fault<A: IntoResponse>(
    sim: &FleetSim,
    fault: Option<Fault>,
    log: RequestLog,
    process: impl FnOnce(RequestLog, bool) -> A,
) -> Option<Response> {
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            ..
        }) => Some(status_fault(sim, log, status, retry_after)),
        Some(Fault::Hang { .. }) => {
            sim.settle(log, Outcome::Hang, None, None);
            None
        }
        Some(Fault::NotJson { .. }) => {
            let _ = process(log, true);
            Some(captive_portal())
        }
        None => Some(process(log, false).into_response()),
    }
}

/// Logs a request hit by a `status` fault and answers it.
fn status_fault(
    sim: &FleetSim,
    log: RequestLog,
    status: u16,
    retry_after: Option<u64>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    sim.settle(
        log,
        Outcome::Fault,
        Some(status.as_u16()),
        Some("injected fault".to_owned()),
    );
    let mut response = (
        status,
        axum::Json(json!({"error": "injected fault", "status": status.as_u16()})),
    )
        .into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The answer of a `not_json` fault: `200` HTML.
fn captive_portal() -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html>OK</html>",
    )
        .into_response()
}

/// The body as JSON bytes: read in full, declared as JSON, decompressed.
fn decode<'w>(
    headers: &HeaderMap,
    encoding: Encoding,
    wire: &'w Wire,
) -> Result<Cow<'w, [u8]>, Answer> {
    match &wire.error {
        Some(BodyError::TooLarge) => return Err(Answer::body_too_large()),
        Some(BodyError::Read(e)) => {
            return Err(Answer::malformed(format!("reading the body failed: {e}")));
        }
        None => {}
    }
    json_content_type(headers).map_err(Answer::malformed)?;
    match encoding {
        Encoding::Identity => Ok(Cow::Borrowed(&wire.bytes)),
        Encoding::Gzip => gunzip(&wire.bytes).map(Cow::Owned),
        Encoding::Unsupported(name) => Err(Answer::malformed(format!(
            "unsupported Content-Encoding `{name}`: expected gzip or none"
        ))),
    }
}

/// The token, then the body, then storing; logs the request. With
/// `not_json` the log says the client saw `200` (the caller answers HTML).
fn process(
    sim: &FleetSim,
    presented: Option<TokenDigest>,
    parsed: Result<record::IngestBody<'_>, Answer>,
    log: RequestLog,
    not_json: bool,
) -> Answer {
    authorized(sim, presented, parsed, log, not_json, |body, _, log| {
        let gateway = body.gateway.0.into_owned();
        let (epoch, skipped) = (body.epoch.0, body.skipped);
        // Interned without the state lock; storing takes it.
        let pending = {
            let mut interner = sim.interner();
            body.records
                .into_iter()
                .map(|record| interner.prepare(record.0))
                .collect()
        };
        sim.admit(
            Prepared {
                gateway,
                epoch,
                skipped,
                pending,
            },
            log,
            not_json,
        )
    })
    .unwrap_or_else(|refused| refused)
}

/// The token, then the body, then `accept` (with the token's role);
/// a refusal is logged here. With `not_json` the log says the client saw
/// `200` (the caller answers HTML).
fn authorized<T, R>(
    sim: &FleetSim,
    presented: Option<TokenDigest>,
    parsed: Result<T, Answer>,
    mut log: RequestLog,
    not_json: bool,
    accept: impl FnOnce(T, TokenRole, RequestLog) -> R,
) -> Result<R, Answer> {
    match authorize(sim, presented, parsed, &mut log) {
        Ok((body, role)) => Ok(accept(body, role, log)),
        Err(answer) => {
            sim.refuse(log, &answer, not_json);
            Err(answer)
        }
    }
}

/// The decoded body as JSON; notes its `gateway` in `log` when it has one,
/// so the log names the gateway of every request whose body is JSON.
fn json_body(
    headers: &HeaderMap,
    encoding: Encoding,
    wire: &Wire,
    log: &mut RequestLog,
) -> Result<serde_json::Value, Answer> {
    let bytes = decode(headers, encoding, wire)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Answer::malformed(format!("the body is not JSON: {e}")))?;
    if let Some(gateway) = value.get("gateway").and_then(serde_json::Value::as_str) {
        log.gateway = Some(excerpt(gateway).into_owned());
    }
    Ok(value)
}

/// The token, before the body: the body with the token's role (noted in
/// `log`), or `401` when the token is not honoured.
fn authorize<T>(
    sim: &FleetSim,
    presented: Option<TokenDigest>,
    parsed: Result<T, Answer>,
    log: &mut RequestLog,
) -> Result<(T, TokenRole), Answer> {
    match presented.and_then(|presented| sim.check_token(&presented)) {
        Some(role) => {
            log.token_role = Some(role);
            parsed.map(|parsed| (parsed, role))
        }
        None => Err(Answer::unknown_token()),
    }
}

/// Decompresses a gzip body (several members allowed), up to
/// [`MAX_BODY_BYTES`].
fn gunzip(wire: &[u8]) -> Result<Vec<u8>, Answer> {
    // JSON compresses about tenfold; the Vec grows if it needs to.
    let mut out = Vec::with_capacity(wire.len().saturating_mul(10).min(MAX_BODY_BYTES));
    let limit = MAX_BODY_BYTES as u64 + 1;
    match flate2::read::MultiGzDecoder::new(wire)
        .take(limit)
        .read_to_end(&mut out)
    {
        Ok(_) if out.len() > MAX_BODY_BYTES => Err(Answer::body_too_large()),
        Ok(_) => Ok(out),
        Err(e) => Err(Answer::malformed(format!(
            "the body does not decompress as gzip: {e}"
        ))),
    }
}

impl FleetSim {
    /// Steps 4 to 6 and the log entry, under one lock.
    fn admit(&self, prepared: Prepared, mut log: RequestLog, not_json: bool) -> Answer {
        let Prepared {
            gateway,
            epoch,
            skipped,
            pending,
        } = prepared;
        let n = pending.len();
        // Reported once the lock is released.
        let mut noteworthy = None;
        let mut state = self.state();
        let answer = if let Some(max) = state.max_records.filter(|&max| n > max) {
            Answer {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                body: json!({"error": "batch too large", "max_records": max, "records": n}),
                outcome: Outcome::TooLarge,
                detail: Some(format!("{n} records in the batch, at most {max} taken")),
            }
        } else {
            let mut poisoned: Vec<u64> = Vec::new();
            if !state.poison.is_empty() {
                for record in &pending {
                    if state.poison.contains(&record.seq) && !poisoned.contains(&record.seq) {
                        poisoned.push(record.seq);
                    }
                }
            }
            if poisoned.is_empty() {
                match state.store.insert(&gateway, epoch, &skipped, pending) {
                    Ok(stored) => {
                        let stats = &mut state.stats;
                        stats.unique += stored.accepted as u64;
                        stats.intervals += stored.intervals as u64;
                        stats.out_of_order += stored.out_of_order as u64;
                        stats.skipped_numbers =
                            stats.skipped_numbers.saturating_add(stored.skipped_numbers);
                        stats.skip_ranges_over_bound += stored.skip_ranges_over_bound;
                        stats.records_in_skips += stored.records_in_skips;
                        log.accepted = stored.accepted;
                        log.duplicates = stored.duplicates;
                        log.conflicts = stored.conflicts;
                        noteworthy = Some(stored);
                        Answer {
                            status: StatusCode::OK,
                            body: json!({"accepted": stored.accepted, "duplicates": stored.duplicates}),
                            outcome: Outcome::Accepted,
                            detail: None,
                        }
                    }
                    Err(e) => Answer::malformed(e.to_string()),
                }
            } else {
                let listed: Vec<String> = poisoned.iter().map(u64::to_string).collect();
                Answer {
                    status: StatusCode::BAD_REQUEST,
                    body: json!({"error": "malformed record", "seqs": poisoned}),
                    outcome: Outcome::Poison,
                    detail: Some(format!("poisoned seqs: {}", listed.join(", "))),
                }
            }
        };
        log.status = Some(if not_json {
            200
        } else {
            answer.status.as_u16()
        });
        log.outcome = answer.outcome;
        log.detail.clone_from(&answer.detail);
        state.finish(log, &self.shared.events);
        drop(state);
        if let Some(stored) = noteworthy {
            warn_about(&gateway, epoch, &stored);
        }
        answer
    }

    /// Logs a request refused with `answer`; with `not_json` the client
    /// saw `200` (the caller answers HTML).
    fn refuse(&self, log: RequestLog, answer: &Answer, not_json: bool) {
        let status = if not_json {
            200
        } else {
            answer.status.as_u16()
        };
        self.settle(log, answer.outcome, Some(status), answer.detail.clone());
    }

    /// Logs a request that ends before storing.
    fn settle(
        &self,
        mut log: RequestLog,
        outcome: Outcome,
        status: Option<u16>,
        detail: Option<String>,
    ) {
        log.outcome = outcome;
        log.status = status;
        log.detail = detail;
        self.state().finish(log, &self.shared.events);
    }
}

/// Logs at WARN what a stored batch shows wrong with its gateway's
/// numbering: seq reuse, records inside declared skips, skips over the bound
/// (each once per request).
fn warn_about(gateway: &str, epoch: u64, stored: &Stored) {
    if let Some(first_seq) = stored.first_conflict {
        tracing::warn!(
            gateway,
            epoch,
            conflicts = stored.conflicts,
            first_seq,
            "seq reuse: duplicates with other content than the stored records"
        );
    }
    if stored.records_in_skips > 0 {
        tracing::warn!(
            gateway,
            epoch,
            records = stored.records_in_skips,
            "records inside ranges declared skipped"
        );
    }
    if stored.skip_ranges_over_bound > 0 {
        tracing::warn!(
            gateway,
            epoch,
            ranges = stored.skip_ranges_over_bound,
            "declared skips longer than {SKIP_BOUND} numbers"
        );
    }
}

// ---------------------------------------------------------------------------
// Heartbeat.

/// A heartbeat body: as received, and what its checks found.
type ParsedHeartbeat = Result<(serde_json::Value, Checked), Answer>;

/// `POST /api/fleet/heartbeat`.
async fn heartbeat(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(app, Route::Heartbeat, headers, body, handle_heartbeat).await
}

/// Answers and logs a heartbeat request; `None` when a `hang` fault holds
/// it. The body is decoded and checked whatever the fault or token, so the
/// log names the gateway of every request whose body is JSON.
fn handle_heartbeat(
    sim: &FleetSim,
    headers: &HeaderMap,
    fault: Option<Fault>,
    presented: Option<TokenDigest>,
    encoding: Encoding,
    wire: &Wire,
    mut log: RequestLog,
) -> Option<Response> {
    let parsed: ParsedHeartbeat = json_body(headers, encoding, wire, &mut log).and_then(|value| {
        let checked = heartbeat::check(&value).map_err(Answer::malformed)?;
        Ok((value, checked))
    });
    if let Ok((_, checked)) = &parsed {
        log.meters = Some(checked.states.len());
    }
    by_fault(sim, fault, log, |log, not_json| {
        let accepted = authorized(
            sim,
            presented,
            parsed,
            log,
            not_json,
            |(body, checked), role, log| {
                sim.accept_heartbeat(body, checked, role, log, not_json);
            },
        );
        match accepted {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(answer) => answer.into_response(),
        }
    })
}

impl FleetSim {
    /// Keeps an accepted heartbeat, updates its gateway's liveness, logs
    /// the request and sends its events, under one lock; then wakes the
    /// liveness timer.
    fn accept_heartbeat(
        &self,
        body: serde_json::Value,
        checked: Checked,
        role: TokenRole,
        mut log: RequestLog,
        not_json: bool,
    ) {
        let status = if not_json { 200 } else { 204 };
        let Checked {
            gateway,
            interval,
            states,
        } = checked;
        let interval = interval.unwrap_or(self.shared.heartbeat_interval);
        let token = log.token.clone().unwrap_or_default();
        log.status = Some(status);
        log.outcome = Outcome::Accepted;
        let line = HeartbeatLine {
            gateway: gateway.clone(),
            meters: states.len(),
            states,
            token: token.clone(),
            token_role: role,
            bytes: log.body_bytes,
            gzip: log.gzip,
            interval_ms: millis(interval),
        };
        let heartbeat = Heartbeat {
            at: log.at,
            token,
            token_role: role,
            status,
            body,
        };
        let mut state = self.state();
        let accepted = state
            .heartbeats
            .accept(&gateway, heartbeat, interval, Instant::now());
        state.finish(log, &self.shared.events);
        if let Some(went) = accepted.went_offline {
            self.emit(FleetEvent::GatewayOffline {
                gateway: went.gateway,
                last_heartbeat_at: went.last_heartbeat_at,
                interval_ms: went.interval_ms,
            });
        }
        self.emit(FleetEvent::Heartbeat(line));
        if let Some(back) = &accepted.came_back {
            self.emit(FleetEvent::GatewayOnline {
                gateway: gateway.clone(),
                offline_for_ms: back.offline_for_ms,
                silent_for_ms: back.silent_for_ms,
            });
        }
        drop(state);
        if accepted.came_back.is_some() {
            tracing::info!(%gateway, "gateway online again");
        }
        self.shared.liveness_changed.notify_one();
    }
}

// ---------------------------------------------------------------------------
// Events.

/// An events body, checked.
type ParsedEvents = Result<alert_events::Checked, Answer>;

/// `POST /api/fleet/events`.
async fn events(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    receive(app, Route::Events, headers, body, handle_events).await
}

/// Answers and logs an events request; `None` when a `hang` fault holds
/// it. The body is decoded and checked whatever the fault or token, so the
/// log names the gateway and event seqs of every request whose body is
/// valid.
fn handle_events(
    sim: &FleetSim,
    headers: &HeaderMap,
    fault: Option<Fault>,
    presented: Option<TokenDigest>,
    encoding: Encoding,
    wire: &Wire,
    mut log: RequestLog,
) -> Option<Response> {
    let parsed: ParsedEvents = json_body(headers, encoding, wire, &mut log)
        .and_then(|value| alert_events::check(value).map_err(Answer::malformed));
    if let Ok(checked) = &parsed {
        log.events = Some(checked.events.len());
        log.first_seq = checked.events.first().map(|e| e.event_seq);
        log.last_seq = checked.events.last().map(|e| e.event_seq);
    }
    by_fault(sim, fault, log, |log, not_json| {
        authorized(
            sim,
            presented,
            parsed,
            log,
            not_json,
            |checked, role, log| sim.accept_events(checked, role, log),
        )
        .unwrap_or_else(|refused| refused)
    })
}

impl FleetSim {
    /// Stores a checked events body de-duplicated by `(gateway,
    /// event_seq)`, logs the request and sends one `alert_event` per new
    /// event then the request's `events` event, under one lock. The answer
    /// is `200` (also what the log says under a `not_json` fault).
    fn accept_events(
        &self,
        checked: alert_events::Checked,
        role: TokenRole,
        mut log: RequestLog,
    ) -> Answer {
        let alert_events::Checked { gateway, events } = checked;
        let token = log.token.clone().unwrap_or_default();
        let mut state = self.state();
        let stored = state.events.insert(&gateway, events);
        log.accepted = stored.accepted.len();
        log.duplicates = stored.duplicates;
        log.conflicts = stored.conflicts;
        log.status = Some(200);
        log.outcome = Outcome::Accepted;
        for event in &stored.accepted {
            self.emit(FleetEvent::AlertEvent(AlertEventLine::of(
                &gateway, event, &token, role,
            )));
        }
        state.finish(log, &self.shared.events);
        drop(state);
        if stored.conflicts > 0 {
            tracing::warn!(
                %gateway,
                conflicts = stored.conflicts,
                "event_seq reuse: events received again with other content"
            );
        }
        Answer {
            status: StatusCode::OK,
            body: json!({"accepted": stored.accepted.len(), "duplicates": stored.duplicates}),
            outcome: Outcome::Accepted,
            detail: None,
        }
    }
}

/// Bad admin input: `400` with `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    /// The body is not the JSON this route takes.
    #[error("the body is not valid for this route: {0}")]
    Json(String),
    /// The body is too large.
    #[error("the body is larger than {ADMIN_BODY_BYTES} bytes")]
    TooLarge,
    /// The body could not be read.
    #[error("reading the body failed: {0}")]
    Read(String),
    /// A rotation to an empty token.
    #[error("token must not be empty")]
    EmptyToken,
    /// A grace that is not a duration.
    #[error("grace: {0}")]
    Grace(#[from] ParseError),
    /// A fault that cannot be injected.
    #[error("fault: {0}")]
    Fault(#[from] super::InvalidFault),
    /// A batch limit of zero.
    #[error("max_records must be at least 1, or null for no limit")]
    ZeroMaxRecords,
    /// A query string this route does not take.
    #[error("{0}")]
    Query(String),
    /// The answer could not be encoded (a bug).
    #[error("cannot encode the answer: {0}")]
    Encode(String),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match self {
            AdminError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        (status, axum::Json(json!({"error": self.to_string()}))).into_response()
    }
}

/// Reads an admin body as `T`.
async fn admin_json<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, AdminError> {
    let wire = read_body(body, ADMIN_BODY_BYTES).await;
    match wire.error {
        Some(BodyError::TooLarge) => return Err(AdminError::TooLarge),
        Some(BodyError::Read(e)) => return Err(AdminError::Read(e)),
        None => {}
    }
    serde_json::from_slice(&wire.bytes).map_err(|e| AdminError::Json(e.to_string()))
}

/// `POST /admin/rotate` body. No `Debug`: it holds a plain token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// The new current token.
    token: String,
    /// Grace of the old one, e.g. `"24h"`, `"500ms"` (default: configured).
    #[serde(default)]
    grace: Option<String>,
}

/// `POST /admin/rotate`.
async fn rotate(
    State(app): State<App>,
    body: Body,
) -> Result<axum::Json<RotateReport>, AdminError> {
    let request: RotateRequest = admin_json(body).await?;
    let token = request.token.trim();
    if token.is_empty() {
        return Err(AdminError::EmptyToken);
    }
    let grace = request.grace.as_deref().map(parse_duration).transpose()?;
    Ok(axum::Json(app.sim.rotate(token, grace)))
}

/// `POST /admin/expire-previous` answer.
#[derive(Serialize)]
struct Expired {
    /// Fingerprint of the token retired, if any.
    retired: Option<String>,
    /// The tokens now.
    #[serde(flatten)]
    tokens: TokenStatus,
}

/// `POST /admin/expire-previous` (any body is ignored).
async fn expire_previous(State(app): State<App>) -> axum::Json<Expired> {
    let retired = app.sim.expire_previous();
    axum::Json(Expired {
        retired,
        tokens: app.sim.tokens(),
    })
}

/// `GET /admin/tokens`.
async fn tokens(State(app): State<App>) -> axum::Json<TokenStatus> {
    axum::Json(app.sim.tokens())
}

/// The faults waiting, as admin routes answer.
fn pending_answer(sim: &FleetSim) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"pending": sim.pending_routed()}))
}

/// `POST /admin/faults`: a fault with an optional `route`.
async fn inject(
    State(app): State<App>,
    body: Body,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let value: serde_json::Value = admin_json(body).await?;
    let RoutedFault { fault, route } = RoutedFault::from_json(value).map_err(AdminError::Json)?;
    app.sim.inject_on(fault, route)?;
    Ok(pending_answer(&app.sim))
}

/// `GET /admin/faults`.
async fn pending_faults(State(app): State<App>) -> axum::Json<serde_json::Value> {
    pending_answer(&app.sim)
}

/// `DELETE /admin/faults`.
async fn clear_faults(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"dropped": app.sim.clear_faults()}))
}

/// `PUT /admin/max-records` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaxRecordsRequest {
    /// The limit, or null for none; the field must be present.
    #[serde(deserialize_with = "present")]
    max_records: Option<usize>,
}

/// A nullable field that must be present.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    Option::<usize>::deserialize(deserializer)
}

/// `PUT /admin/max-records`.
async fn set_max_records(
    State(app): State<App>,
    body: Body,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let request: MaxRecordsRequest = admin_json(body).await?;
    if request.max_records == Some(0) {
        return Err(AdminError::ZeroMaxRecords);
    }
    app.sim.set_max_records(request.max_records);
    Ok(axum::Json(json!({"max_records": request.max_records})))
}

/// `GET /admin/max-records`.
async fn max_records(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"max_records": app.sim.max_records()}))
}

/// `PUT /admin/poison` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoisonRequest {
    /// The poisoned seqs (replacing the previous set).
    seqs: BTreeSet<u64>,
}

/// `PUT /admin/poison`.
async fn set_poison(
    State(app): State<App>,
    body: Body,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let request: PoisonRequest = admin_json(body).await?;
    app.sim.set_poison(request.seqs);
    Ok(axum::Json(json!({"seqs": app.sim.poison()})))
}

/// `GET /admin/poison`.
async fn poison(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"seqs": app.sim.poison()}))
}

/// `?gateway=...[&epoch=N][&from=N][&limit=N]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayQuery {
    /// The gateway id.
    gateway: String,
    /// Only records of this epoch (default: all epochs).
    #[serde(default)]
    epoch: Option<u64>,
    /// Index (in first-arrival order, among the records selected) of the
    /// first record answered.
    #[serde(default)]
    from: usize,
    /// Most records answered (default: all).
    #[serde(default)]
    limit: Option<usize>,
}

/// The query, or a JSON `400`.
fn gateway_query(
    query: Result<Query<GatewayQuery>, QueryRejection>,
) -> Result<GatewayQuery, AdminError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| AdminError::Query(e.body_text()))
}

/// `{"records": [...]}`, serialized straight from the store.
#[derive(Serialize)]
struct RecordsAnswer<'a> {
    /// The records, as received.
    records: Vec<SlotJson<'a>>,
}

/// `GET /admin/received?gateway=...`.
async fn received(
    State(app): State<App>,
    query: Result<Query<GatewayQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    records_answer(&app, query, false)
}

/// `GET /admin/intervals?gateway=...`: the interval records only.
async fn intervals(
    State(app): State<App>,
    query: Result<Query<GatewayQuery>, QueryRejection>,
) -> Result<Response, AdminError> {
    records_answer(&app, query, true)
}

/// `{"records": [...]}` of the records `query` selects (interval records
/// only, with `intervals_only`).
fn records_answer(
    app: &App,
    query: Result<Query<GatewayQuery>, QueryRejection>,
    intervals_only: bool,
) -> Result<Response, AdminError> {
    let query = gateway_query(query)?;
    let bytes = {
        let state = app.sim.state();
        let records = state
            .store
            .records_json(
                &query.gateway,
                query.epoch,
                query.from,
                query.limit,
                intervals_only,
            )
            .collect();
        serde_json::to_vec(&RecordsAnswer { records })
            .map_err(|e| AdminError::Encode(e.to_string()))?
    };
    Ok(([(CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// `GET /admin/seqs?gateway=...`.
async fn seqs(
    State(app): State<App>,
    query: Result<Query<GatewayQuery>, QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let query = gateway_query(query)?;
    let seqs = app
        .sim
        .state()
        .store
        .seqs(&query.gateway, query.epoch, query.from, query.limit);
    Ok(axum::Json(json!({"seqs": seqs})))
}

/// `?gateway=...[&epoch=N]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EpochQuery {
    /// The gateway id.
    gateway: String,
    /// Only this epoch (default: all epochs).
    #[serde(default)]
    epoch: Option<u64>,
}

/// The query, or a JSON `400`.
fn epoch_query(query: Result<Query<EpochQuery>, QueryRejection>) -> Result<EpochQuery, AdminError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| AdminError::Query(e.body_text()))
}

/// `GET /admin/conflicts` answer.
#[derive(Serialize)]
struct ConflictsAnswer {
    /// The conflicts kept, in the order seen.
    conflicts: Vec<Conflict>,
    /// Conflicts seen in all (more than kept beyond the cap).
    total: u64,
}

/// `GET /admin/conflicts?gateway=...[&epoch=N]`.
async fn conflicts(
    State(app): State<App>,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<axum::Json<ConflictsAnswer>, AdminError> {
    let query = epoch_query(query)?;
    let (conflicts, total) = app.sim.state().store.conflicts(&query.gateway, query.epoch);
    Ok(axum::Json(ConflictsAnswer { conflicts, total }))
}

/// `GET /admin/skipped` answer.
#[derive(Serialize)]
struct SkippedAnswer {
    /// The union of the declared ranges, by epoch, then number.
    skipped: Vec<SkippedRange>,
}

/// `GET /admin/skipped?gateway=...[&epoch=N]`.
async fn skipped(
    State(app): State<App>,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<axum::Json<SkippedAnswer>, AdminError> {
    let query = epoch_query(query)?;
    let skipped = app.sim.state().store.skipped(&query.gateway, query.epoch);
    Ok(axum::Json(SkippedAnswer { skipped }))
}

/// `GET /admin/audit?gateway=...[&epoch=N]`.
async fn audit(
    State(app): State<App>,
    query: Result<Query<EpochQuery>, QueryRejection>,
) -> Result<axum::Json<Audit>, AdminError> {
    let query = epoch_query(query)?;
    Ok(axum::Json(app.sim.audit_of(&query.gateway, query.epoch)))
}

/// `GET /admin/gateways`.
async fn gateways(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"gateways": app.sim.gateways()}))
}

/// `GET /admin/stats`.
async fn stats(State(app): State<App>) -> axum::Json<FleetStats> {
    axum::Json(app.sim.stats())
}

/// `GET /admin/requests`.
async fn requests(State(app): State<App>) -> axum::Json<Vec<RequestLog>> {
    axum::Json(app.sim.requests())
}

/// `?gateway=...[&limit=N]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatsQuery {
    /// The gateway id.
    gateway: String,
    /// Only the last N heartbeats (default: all kept).
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /admin/heartbeats?gateway=...[&limit=N]`: accepted heartbeats,
/// oldest first.
async fn heartbeats(
    State(app): State<App>,
    query: Result<Query<HeartbeatsQuery>, QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::Query(e.body_text()))?;
    let heartbeats = app.sim.state().heartbeats.list(&query.gateway, query.limit);
    Ok(axum::Json(json!({"heartbeats": heartbeats})))
}

/// `?gateway=...[&order=seq|arrival]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// The gateway id.
    gateway: String,
    /// By `event_seq` (default) or in arrival order.
    #[serde(default)]
    order: EventOrder,
}

/// `GET /admin/events?gateway=...[&order=arrival]`: the alert events kept,
/// as received, and the conflicts.
async fn alert_events(
    State(app): State<App>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<axum::Json<serde_json::Value>, AdminError> {
    let Query(query) = query.map_err(|e| AdminError::Query(e.body_text()))?;
    let state = app.sim.state();
    let events = state.events.list(&query.gateway, query.order);
    let (conflicts, total) = state.events.conflicts(&query.gateway);
    drop(state);
    Ok(axum::Json(
        json!({"events": events, "conflicts": conflicts, "total_conflicts": total}),
    ))
}

/// `GET /admin/liveness`.
async fn liveness(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"gateways": app.sim.liveness()}))
}

/// Any other path.
async fn not_found(method: Method, uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"error": "no such route", "method": method.as_str(), "path": uri.path()}),
        ),
    )
        .into_response()
}

/// A known path with the wrong method.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(
            json!({"error": "method not allowed", "method": method.as_str(), "path": uri.path()}),
        ),
    )
        .into_response()
}
