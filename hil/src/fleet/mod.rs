//! The fleet ingest server simulator (`fleet-sim`): the server side of SPEC
//! §7, for test rigs.
//!
//! It takes pushes on `POST /api/fleet/ingest`, honours the current token and
//! at most one previous token during its grace window, de-duplicates by
//! `(gateway, epoch, seq)`, and lets a test script the fleet's bad days:
//! queued faults (error statuses with `Retry-After`, a `200` that is not
//! JSON, a request never answered), a batch size limit (`413`) and poisoned
//! seqs (`400`). Everything it received and every request it answered can be
//! read back, in-process or over the admin routes on the same listener.
//!
//! slmd extends SPEC §7: its push body may carry two optional top-level
//! fields. `epoch` (an unsigned integer below 2^53, absent: 0) is the
//! gateway's numbering epoch, new only when the gateway lost track of the
//! numbers it used, so seqs may repeat across epochs: the fleet keys records
//! by `(gateway, epoch, seq)`. `skipped` (`[[from, to], ...]`, inclusive)
//! lists seqs of that epoch handed out or reserved but never stored, re-sent
//! until a batch carrying them is acknowledged. From these the simulator
//! tells a test what a gateway's numbering looks like: seq reuse (a
//! duplicate with other content: a [`Conflict`]), the declared skips
//! ([`SkippedRange`]), records inside them, and the holes nobody declared
//! ([`Audit`]). Bodies without the two fields are plain SPEC §7, epoch 0.
//!
//! It also takes the gateways' heartbeats on `POST /api/fleet/heartbeat`
//! (SPEC §7, "Heartbeat"): same tokens and faults (a fault names the route it
//! applies to: [`FaultRoute`]), the body checked field by field and kept
//! (the last [`HEARTBEATS_KEPT`] per gateway, [`Heartbeat`]), and liveness
//! ([`GatewayLiveness`]): a gateway silent for 3 of its heartbeat intervals
//! is marked offline by a timer in the server, and online again at its next
//! accepted heartbeat ([`FleetEvent::GatewayOffline`],
//! [`FleetEvent::GatewayOnline`]).
//!
//! Alert events (SPEC §7 "Events", §11) come on `POST /api/fleet/events`:
//! same tokens, gzip, limits and faults ([`FaultRoute::Events`]), checked
//! field by field, de-duplicated by `(gateway, event_seq)` with conflicts
//! counted ([`events`]). Interval records (`"kind": "interval"`) come in
//! ingest beside the readings ([`RecordKind`], [`IntervalFields`]).
//!
//! The admin surface (`/admin/...`) is unauthenticated: the simulator is for
//! test rigs on loopback or a lab network, never for a reachable address.
//!
//! Layout (one module per role):
//! - [`tokens`]: token digests, rotation and grace ([`fingerprint`],
//!   [`RotateReport`], [`TokenStatus`]).
//! - [`faults`]: [`Fault`], [`FaultRoute`] and the fault queue.
//! - [`record`]: the record on its way in (typed, checked parsing) and at
//!   rest (compact, interned), and [`StoredRecord`].
//! - `store`: per-gateway records in first-arrival order, de-duplication by
//!   epoch and seq, conflicts, declared skips per epoch.
//! - [`audit`]: what the fleet says about a gateway's numbering
//!   ([`Conflict`], [`SkippedRange`], [`Audit`]) and the range arithmetic
//!   behind it.
//! - [`events`]: the alert events body's checks and the events kept.
//! - [`heartbeat`]: the heartbeat body's checks, the heartbeats kept and
//!   each gateway's liveness ([`Heartbeat`], [`GatewayLiveness`]).
//! - [`report`]: [`FleetStats`], [`RequestLog`], [`FleetEvent`].
//! - `http`: the routes, the ingest and heartbeat pipelines, the liveness
//!   timer and the admin handlers.
//!
//! [`FleetSim`] is the server: cloning it gives another handle to the same
//! fleet, whose state persists across connections and listeners.

pub mod audit;
pub mod events;
pub mod faults;
pub mod heartbeat;
mod http;
pub mod record;
pub mod report;
mod store;
pub mod tokens;

pub use audit::{Audit, Conflict, EpochAudit, Hole, SkippedRange};
pub use events::{AlertEventLine, EVENTS_KEPT, EventConflict, EventOrder};
pub use faults::{Fault, FaultKind, FaultRoute, InvalidFault, RoutedFault};
pub use heartbeat::{DEFAULT_HEARTBEAT_INTERVAL, GatewayLiveness, HEARTBEATS_KEPT, Heartbeat};
pub use record::{IntervalFields, RecordKind, RecordState, StoredRecord};
pub use report::{FleetEvent, FleetStats, HeartbeatLine, Outcome, RequestLog, Route};
pub use tokens::{RotateReport, TokenRole, TokenStatus, fingerprint};

use faults::FaultQueue;
use heartbeat::Heartbeats;
use record::Interner;
use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use store::Store;
use tokens::{TokenDigest, Tokens};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

/// The grace a rotated-out token gets unless told otherwise (SPEC §7).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Largest request body taken, on the wire and after decompression; beyond
/// it the answer is `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How a fleet simulator starts. Tokens are trimmed of surrounding
/// whitespace, as the daemon trims its token files.
#[derive(Clone)]
pub struct FleetSimConfig {
    /// The current token.
    pub token: String,
    /// A previous token honoured for `grace` from start, as if a rotation had
    /// just happened.
    pub previous_token: Option<String>,
    /// The grace of `previous_token`, and of rotations that do not name one
    /// (default 24 h).
    pub grace: Duration,
    /// Batches with more records are refused with `413` (default: no limit).
    pub max_records: Option<usize>,
    /// Batches holding any of these seqs are refused with `400`.
    pub poison: BTreeSet<u64>,
    /// A gateway's heartbeat interval when its heartbeat does not give
    /// `interval_s` (default 60 s); 3 intervals without a heartbeat mark it
    /// offline.
    pub heartbeat_interval: Duration,
}

impl FleetSimConfig {
    /// `token` as the current token, nothing else.
    pub fn new(token: &str) -> FleetSimConfig {
        FleetSimConfig {
            token: token.to_owned(),
            previous_token: None,
            grace: DEFAULT_GRACE,
            max_records: None,
            poison: BTreeSet::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

impl std::fmt::Debug for FleetSimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: fingerprints only.
        f.debug_struct("FleetSimConfig")
            .field("token", &fingerprint(self.token.trim()))
            .field(
                "previous_token",
                &self
                    .previous_token
                    .as_deref()
                    .map(|t| fingerprint(t.trim())),
            )
            .field("grace", &self.grace)
            .field("max_records", &self.max_records)
            .field("poison", &self.poison)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .finish()
    }
}

/// A simulated fleet ingest server; clones share the same fleet.
#[derive(Clone)]
pub struct FleetSim {
    /// Everything the handles share.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FleetSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSim")
            .field("tokens", &self.tokens())
            .finish_non_exhaustive()
    }
}

/// The fleet and its surroundings, shared by every handle and connection.
struct Shared {
    /// The fleet's state; locked for short synchronous work only, never
    /// across `.await` and never while a body is decompressed or parsed.
    state: Mutex<State>,
    /// Record profiles; a separate lock so interning a batch does not hold
    /// up requests that only need the state.
    interner: Mutex<Interner>,
    /// Where events go; `send` never blocks and fails only without receivers.
    events: broadcast::Sender<FleetEvent>,
    /// The grace of rotations that do not name one.
    grace: Duration,
    /// The heartbeat interval of a heartbeat without `interval_s`.
    heartbeat_interval: Duration,
    /// Woken when a gateway's offline deadline may have moved (a heartbeat
    /// was accepted), so the liveness timer re-computes its next wake-up.
    liveness_changed: Notify,
}

/// Everything that changes.
struct State {
    /// The honoured tokens (digests only).
    tokens: Tokens,
    /// Faults waiting for requests.
    faults: FaultQueue,
    /// Batch size limit.
    max_records: Option<usize>,
    /// Seqs that make a batch `400`.
    poison: BTreeSet<u64>,
    /// The records received.
    store: Store,
    /// Counters.
    stats: FleetStats,
    /// The last requests (ingest and heartbeat), oldest first.
    requests: VecDeque<RequestLog>,
    /// The heartbeats kept and every gateway's liveness.
    heartbeats: Heartbeats,
    /// The alert events received.
    events: events::Events,
}

impl FleetSim {
    /// A fleet configured by `config`; a previous token's grace starts now.
    pub fn new(config: FleetSimConfig) -> FleetSim {
        let (events, _) = broadcast::channel(report::EVENT_CAPACITY);
        let tokens = Tokens::new(
            config.token.trim(),
            config.previous_token.as_deref().map(str::trim),
            config.grace,
        );
        FleetSim {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    tokens,
                    faults: FaultQueue::default(),
                    max_records: config.max_records,
                    poison: config.poison,
                    store: Store::default(),
                    stats: FleetStats::default(),
                    requests: VecDeque::new(),
                    heartbeats: Heartbeats::default(),
                    events: events::Events::default(),
                }),
                interner: Mutex::new(Interner::default()),
                events,
                grace: config.grace,
                heartbeat_interval: config.heartbeat_interval,
                liveness_changed: Notify::new(),
            }),
        }
    }

    /// Serves HTTP/1.1 from `listener` (ingest, heartbeat and admin routes)
    /// until `shutdown` is cancelled and the requests in progress are
    /// answered; requests held by a `hang` fault are then answered `503` and
    /// closed. TCP_NODELAY is set on every connection. While it serves, a
    /// timer marks gateways offline when their heartbeats stop.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        http::serve(self.clone(), listener, shutdown).await
    }

    /// Makes `new_token` current: the old current token becomes the previous
    /// one, honoured for `grace` (default: the configured grace), and an
    /// older previous token is retired at once (at most one previous token
    /// is honoured). Rotating to the current token changes nothing.
    pub fn rotate(&self, new_token: &str, grace: Option<Duration>) -> RotateReport {
        let grace = grace.unwrap_or(self.shared.grace);
        let mut state = self.state();
        let report = state.tokens.rotate(new_token.trim(), grace);
        tracing::info!(
            current = %report.current,
            previous = ?report.previous,
            retired = ?report.retired,
            "token rotated"
        );
        self.emit(FleetEvent::Rotate(report.clone()));
        drop(state);
        report
    }

    /// Ends the previous token's grace now; returns its fingerprint, if
    /// there was one.
    pub fn expire_previous(&self) -> Option<String> {
        let mut state = self.state();
        let retired = state.tokens.expire_previous();
        self.emit(FleetEvent::ExpirePrevious {
            retired: retired.clone(),
        });
        drop(state);
        retired
    }

    /// The honoured tokens by fingerprint.
    pub fn tokens(&self) -> TokenStatus {
        self.state().tokens.status(Instant::now())
    }

    /// Queues `fault` for the next ingest requests (after the faults
    /// already waiting); returns how many faults are now waiting.
    pub fn inject(&self, fault: Fault) -> Result<usize, InvalidFault> {
        self.inject_on(fault, FaultRoute::Ingest)
    }

    /// Queues `fault` for the next requests to `route` (after the faults
    /// already waiting); returns how many faults are now waiting. With
    /// [`FaultRoute::All`] its count is consumed by requests of any
    /// route.
    pub fn inject_on(&self, fault: Fault, route: FaultRoute) -> Result<usize, InvalidFault> {
        fault.validate()?;
        let mut state = self.state();
        let pending = state.faults.push(fault.clone(), route);
        self.emit(FleetEvent::Fault {
            fault,
            route,
            pending,
        });
        drop(state);
        Ok(pending)
    }

    /// The faults waiting, each with the requests it still applies to (of
    /// every route; [`FleetSim::pending_routed`] names the routes).
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.pending_routed().into_iter().map(|r| r.fault).collect()
    }

    /// The faults waiting with their routes, each with the requests it still
    /// applies to.
    pub fn pending_routed(&self) -> Vec<RoutedFault> {
        self.state().faults.pending()
    }

    /// Drops every waiting fault; returns how many there were.
    pub fn clear_faults(&self) -> usize {
        let mut state = self.state();
        let dropped = state.faults.clear();
        self.emit(FleetEvent::FaultsCleared { dropped });
        drop(state);
        dropped
    }

    /// Refuses batches of more than `n` records with `413` (`None`: no
    /// limit).
    pub fn set_max_records(&self, n: Option<usize>) {
        let mut state = self.state();
        state.max_records = n;
        self.emit(FleetEvent::MaxRecords { max_records: n });
    }

    /// The batch size limit.
    pub fn max_records(&self) -> Option<usize> {
        self.state().max_records
    }

    /// Refuses batches holding any of `seqs` with `400` (replaces the set).
    pub fn set_poison(&self, seqs: BTreeSet<u64>) {
        let mut state = self.state();
        let listed = seqs.iter().copied().collect();
        state.poison = seqs;
        self.emit(FleetEvent::Poison { seqs: listed });
    }

    /// The poisoned seqs.
    pub fn poison(&self) -> BTreeSet<u64> {
        self.state().poison.clone()
    }

    /// `gateway`'s unique records in first-arrival order, as received, all
    /// epochs together (each record names its epoch).
    pub fn received(&self, gateway: &str) -> Vec<StoredRecord> {
        self.state().store.records(gateway, None, 0, None)
    }

    /// `gateway`'s unique records of `epoch` in first-arrival order.
    pub fn received_in(&self, gateway: &str, epoch: u64) -> Vec<StoredRecord> {
        self.state().store.records(gateway, Some(epoch), 0, None)
    }

    /// `gateway`'s unique interval records (`"kind": "interval"`, SPEC
    /// §11) in first-arrival order, as received, all epochs together.
    pub fn intervals(&self, gateway: &str) -> Vec<StoredRecord> {
        self.state().store.intervals(gateway, None)
    }

    /// `gateway`'s unique seqs in first-arrival order, all epochs together
    /// (a seq may then appear once per epoch).
    pub fn seqs(&self, gateway: &str) -> Vec<u64> {
        self.state().store.seqs(gateway, None, 0, None)
    }

    /// `gateway`'s unique seqs of `epoch` in first-arrival order.
    pub fn seqs_in(&self, gateway: &str, epoch: u64) -> Vec<u64> {
        self.state().store.seqs(gateway, Some(epoch), 0, None)
    }

    /// The seq reuses seen from `gateway` (the first
    /// [`audit::CONFLICTS_KEPT`]), in the order seen: duplicates of a stored
    /// `(gateway, epoch, seq)` with other content. Empty when no seq was
    /// reused.
    pub fn conflicts(&self, gateway: &str) -> Vec<Conflict> {
        self.state().store.conflicts(gateway, None).0
    }

    /// The numbers `gateway` declared skipped: per epoch, the union of the
    /// declared ranges (repeats and overlaps merged, touching ranges joined),
    /// sorted by epoch, then number.
    pub fn skipped(&self, gateway: &str) -> Vec<SkippedRange> {
        self.state().store.skipped(gateway, None)
    }

    /// `gateway`'s numbering, epoch by epoch: records, lowest and highest
    /// seq, numbers declared skipped, the holes nobody declared, records
    /// inside declared skips, conflicts.
    pub fn audit(&self, gateway: &str) -> Audit {
        self.audit_of(gateway, None)
    }

    /// The audit of `gateway` (of `epoch` only, when given); the seqs are
    /// copied under the lock and sorted without it.
    fn audit_of(&self, gateway: &str, epoch: Option<u64>) -> Audit {
        let input = self.state().store.audit_input(gateway, epoch);
        input.audit()
    }

    /// The gateways that pushed anything, sorted.
    pub fn gateways(&self) -> Vec<String> {
        self.state().store.gateways()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FleetStats {
        self.state().stats.clone()
    }

    /// The requests so far, ingest and heartbeat (the last
    /// [`report::REQUEST_LOG_CAPACITY`]), oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.state().requests.iter().cloned().collect()
    }

    /// `gateway`'s accepted heartbeats (the last [`HEARTBEATS_KEPT`]),
    /// oldest first. Refused ones are in [`FleetSim::requests`].
    pub fn heartbeats(&self, gateway: &str) -> Vec<Heartbeat> {
        self.state().heartbeats.list(gateway, None)
    }

    /// `gateway`'s alert events (`POST /api/fleet/events`, the last
    /// [`EVENTS_KEPT`] by arrival) as received, in `order`.
    pub fn alert_events(&self, gateway: &str, order: EventOrder) -> Vec<serde_json::Value> {
        self.state().events.list(gateway, order)
    }

    /// `gateway`'s alert events received again with other content (the
    /// first [`events::EVENT_CONFLICTS_KEPT`]), in the order seen, and how
    /// many there were in all.
    pub fn event_conflicts(&self, gateway: &str) -> (Vec<EventConflict>, u64) {
        self.state().events.conflicts(gateway)
    }

    /// Every gateway that sent an accepted heartbeat, with its liveness,
    /// sorted by gateway. A gateway whose 3 intervals ran out is marked
    /// offline here too, should the server's timer not have run yet.
    pub fn liveness(&self) -> Vec<GatewayLiveness> {
        self.sweep_liveness();
        self.state().heartbeats.liveness()
    }

    /// Marks offline the gateways silent for 3 intervals (one event each);
    /// the next moment one may go offline.
    fn sweep_liveness(&self) -> Option<Instant> {
        let mut state = self.state();
        let (offline, next) = state.heartbeats.sweep(Instant::now());
        for went in offline {
            tracing::info!(gateway = %went.gateway, "gateway offline: no heartbeat for 3 intervals");
            self.emit(FleetEvent::GatewayOffline {
                gateway: went.gateway,
                last_heartbeat_at: went.last_heartbeat_at,
                interval_ms: went.interval_ms,
            });
        }
        drop(state);
        next
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> broadcast::Receiver<FleetEvent> {
        self.shared.events.subscribe()
    }

    /// The state, tolerant of a poisoned lock (a panic in one request must
    /// not take the fleet down for the next).
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The interner, tolerant of a poisoned lock.
    fn interner(&self) -> MutexGuard<'_, Interner> {
        self.shared
            .interner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends an event; called with the state locked, so events go out in the
    /// order of the changes they report.
    fn emit(&self, event: FleetEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.shared.events.send(event);
    }

    /// The fault for the next request to `route`, if one is waiting.
    fn take_fault(&self, route: Route) -> Option<Fault> {
        self.state().faults.take(route)
    }

    /// The role of the presented token now, or `None` if it is not honoured.
    fn check_token(&self, presented: &TokenDigest) -> Option<TokenRole> {
        self.state().tokens.check(presented, Instant::now())
    }
}

impl State {
    /// Counts a request, keeps its log entry and sends its event (an
    /// accepted heartbeat's event is sent by whoever stored it).
    fn finish(&mut self, log: RequestLog, events: &broadcast::Sender<FleetEvent>) {
        if log.route == Route::Events {
            self.stats.event_requests += 1;
            self.stats.events += log.accepted as u64;
            self.stats.event_duplicates += log.duplicates as u64;
            self.stats.event_conflicts += log.conflicts as u64;
            if self.requests.len() >= report::REQUEST_LOG_CAPACITY {
                self.requests.pop_front();
            }
            self.requests.push_back(log.clone());
            // No receiver is not an error: nobody is watching.
            let _ = events.send(FleetEvent::Events(log));
            return;
        }
        if log.route == Route::Heartbeat {
            self.stats.heartbeat_requests += 1;
            let accepted = log.outcome == Outcome::Accepted;
            if accepted {
                self.stats.heartbeats += 1;
            }
            if self.requests.len() >= report::REQUEST_LOG_CAPACITY {
                self.requests.pop_front();
            }
            self.requests.push_back(log.clone());
            if !accepted {
                // No receiver is not an error: nobody is watching.
                let _ = events.send(FleetEvent::HeartbeatRefused(log));
            }
            return;
        }
        let stats = &mut self.stats;
        stats.requests += 1;
        match log.status {
            Some(status) => *stats.by_status.entry(status).or_default() += 1,
            None => stats.hung += 1,
        }
        stats.body_bytes += log.body_bytes;
        stats.records_in_bodies += log.records.unwrap_or(0) as u64;
        stats.accepted += log.accepted as u64;
        stats.duplicates += log.duplicates as u64;
        stats.conflicts += log.conflicts as u64;
        if self.requests.len() >= report::REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(log.clone());
        // No receiver is not an error: nobody is watching.
        let _ = events.send(FleetEvent::Ingest(log));
    }
}
