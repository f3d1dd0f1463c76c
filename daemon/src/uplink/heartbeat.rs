//! The fleet heartbeat (SPEC §7): the gateway says it is alive, and what
//! its meters are doing, even when no meter gives a reading.
//!
//! `POST {url}/api/fleet/heartbeat` with the body of [`Body`], at start,
//! every `heartbeat_interval`, and right after a meter changes state (link
//! state or run state: [`Hub::meter_changes`]). A change waits [`SETTLE`]
//! for others (a reload restarting three meters gives one heartbeat), and
//! change-triggered heartbeats are at least [`MIN_GAP`] apart, so a
//! flapping meter cannot flood a cellular link.
//!
//! # What it shares with the push, and what it does not
//! - Same tokens and failover: a `401` retries the same heartbeat with the
//!   other token at once ([`TokenSource`], its own copy: which token works
//!   is learnt the same way); reloaded tokens and token-file edits reach
//!   it as they reach the push.
//! - Its own task, HTTP client and backoff (from `retry_min`, capped at
//!   the interval): a fleet that is down, slow or hanging on heartbeats
//!   never blocks or delays the record push, and the reverse. Each try
//!   builds a fresh body: a heartbeat is a snapshot, never queued.
//! - Health (battery, SD card, clock offset) goes here and into status,
//!   never into records.

use super::tokens::{Token, TokenSource};
use super::wire::{self, RETRY_AFTER_MAX};
use super::{FleetStatusCell, describe, human, post_json, retry_after};
use crate::buffer::BufferSlot;
use crate::config::FleetConfig;
use crate::device::health::Health;
use crate::device::{Identity, MeterList, lock_status};
use crate::fanout::{Hub, LinkState};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The path of the heartbeat route under `[fleet].url`.
pub const HEARTBEAT_PATH: &str = "/api/fleet/heartbeat";

/// How long a change waits for other changes before its heartbeat goes.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Least time between two change-triggered heartbeats.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// How often a heartbeat failure that goes on is summarised in the journal.
pub const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(600);

/// The heartbeat body (SPEC §7), plus `interval_s` so the fleet knows when
/// three intervals have passed.
#[derive(Debug, Clone, Serialize)]
pub struct Body {
    /// Gateway id.
    pub gateway: String,
    /// slmd's version.
    pub version: &'static str,
    /// Seconds since slmd started.
    pub uptime_s: u64,
    /// When this heartbeat was built (gateway wall clock).
    #[serde(serialize_with = "crate::record::rfc3339_millis")]
    pub sent_at: DateTime<Utc>,
    /// `heartbeat_interval` in seconds.
    pub interval_s: f64,
    /// Every configured meter, in config order.
    pub meters: Vec<MeterBeat>,
    /// The buffer.
    pub buffer: BufferBeat,
}

/// One meter in a heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct MeterBeat {
    /// Device id.
    pub id: String,
    /// Its family.
    pub protocol: &'static str,
    /// Link state: `connected`, `connecting`, `down`, or `failed`.
    pub state: &'static str,
    /// Run state: `measuring`, `stopped`, `paused`, `unknown`.
    pub run_state: &'static str,
    /// Since when `state` holds.
    #[serde(serialize_with = "crate::record::rfc3339_millis")]
    pub since: DateTime<Utc>,
    /// Who the meter said it is.
    pub identity: Option<Identity>,
    /// `seq` of its newest record.
    pub last_seq: Option<u64>,
    /// Battery, SD card, clock offset.
    pub health: Health,
    /// The last failure, while the meter is not connected.
    pub last_error: Option<String>,
}

/// The buffer in a heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct BufferBeat {
    /// Records stored.
    pub records: u64,
    /// Records the fleet has not accepted yet.
    pub unsent: u64,
    /// `received_at` of the oldest of them.
    #[serde(serialize_with = "crate::record::rfc3339_millis_opt")]
    pub oldest_unsent: Option<DateTime<Utc>>,
}

/// Where a heartbeat's contents come from.
#[derive(Clone)]
pub struct Sources {
    /// Gateway id.
    pub gateway: String,
    /// When slmd started.
    pub started: std::time::Instant,
    /// The hub: each meter's newest record, and state changes.
    pub hub: Arc<Hub>,
    /// The meters configured now (a reload replaces the list).
    pub meters: MeterList,
    /// The buffer, once open.
    pub buffer: BufferSlot,
}

impl Sources {
    /// The heartbeat as of now.
    pub fn snapshot(&self, interval: Duration) -> Body {
        let cells = self
            .meters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let meters = cells
            .iter()
            .map(|cell| {
                let status = lock_status(cell);
                let state = if status.task_failed {
                    "failed"
                } else {
                    status.state.as_str()
                };
                MeterBeat {
                    id: status.id.clone(),
                    protocol: status.protocol,
                    state,
                    run_state: status.run_state.as_str(),
                    since: status.state_since,
                    identity: status.identity.clone(),
                    last_seq: self.hub.latest(&status.id).map(|r| r.seq),
                    health: status.health.clone(),
                    last_error: (status.state != LinkState::Connected)
                        .then(|| status.last_error.clone())
                        .flatten(),
                }
            })
            .collect();
        let buffer = match self.buffer.get() {
            Some(buffer) => {
                let status = buffer.status();
                BufferBeat {
                    records: status.records,
                    unsent: status.unsent,
                    oldest_unsent: status.oldest_unsent_received_at,
                }
            }
            None => BufferBeat {
                records: 0,
                unsent: 0,
                oldest_unsent: None,
            },
        };
        Body {
            gateway: self.gateway.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            sent_at: Utc::now(),
            interval_s: interval.as_secs_f64(),
            meters,
            buffer,
        }
    }
}

/// What the fleet said to one heartbeat.
#[derive(Debug, PartialEq)]
enum Answer {
    /// `200` or `204`.
    Ok,
    /// `401`: try the other token.
    Unauthorized,
    /// Anything else: try again later (at least `retry_after`).
    Retry {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// What an HTTP answer to a heartbeat means.
fn classify(status: u16, retry_after: Option<&str>) -> Answer {
    match status {
        200 | 204 => Answer::Ok,
        401 => Answer::Unauthorized,
        _ => Answer::Retry {
            error: format!("the fleet answered {status} to a heartbeat"),
            retry_after: retry_after
                .and_then(wire::parse_retry_after)
                .map(|d| d.min(RETRY_AFTER_MAX)),
        },
    }
}

/// The heartbeat task.
pub struct Heartbeat {
    /// `[fleet]` as loaded (tokens may since have been reloaded).
    config: FleetConfig,
    /// Where heartbeats go.
    route: Route,
    /// Tokens, which one works, and where they come from.
    tokens: TokenSource,
    /// What goes into a heartbeat.
    sources: Sources,
    /// Where its state is shown (the fleet part of status).
    status: FleetStatusCell,
    /// Reloaded `[fleet]` tables (tokens).
    reload: watch::Receiver<FleetConfig>,
    /// Backoff between failed heartbeats.
    backoff: ExponentialBackoff,
    /// A failure going on: since when, tries, last summary.
    failing: Option<(DateTime<Utc>, u64, Instant)>,
}

/// Where heartbeats go.
enum Route {
    /// `POST {url}/api/fleet/heartbeat`, with its own HTTP client: a hung
    /// heartbeat holds no push connection.
    Http {
        endpoint: String,
        client: reqwest::Client,
    },
    /// Retained on `{prefix}/{gateway}/heartbeat` through the MQTT
    /// uplink's connection (which holds the tokens).
    Mqtt(super::mqtt::LinkHandle),
}

impl Heartbeat {
    /// A heartbeat over MQTT for `config`: published, retained, through
    /// `link` (a late subscriber sees the last one at once).
    pub fn over_mqtt(
        config: FleetConfig,
        sources: Sources,
        status: FleetStatusCell,
        reload: watch::Receiver<FleetConfig>,
        link: super::mqtt::LinkHandle,
    ) -> Heartbeat {
        Heartbeat::with_route(config, Route::Mqtt(link), sources, status, reload)
    }

    /// A heartbeat for `config`, with the push's reload channel.
    pub fn new(
        config: FleetConfig,
        sources: Sources,
        status: FleetStatusCell,
        reload: watch::Receiver<FleetConfig>,
    ) -> Result<Heartbeat, super::UplinkError> {
        let url = config.url.clone().ok_or(super::UplinkError::NoUrl)?;
        let endpoint = format!("{}{HEARTBEAT_PATH}", url.trim_end_matches('/'));
        let client = super::http_client(
            config
                .timeout
                .min(config.heartbeat_interval.max(Duration::from_secs(5))),
        )?;
        Ok(Heartbeat::with_route(
            config,
            Route::Http { endpoint, client },
            sources,
            status,
            reload,
        ))
    }

    /// A heartbeat for `config` sent by `route`.
    fn with_route(
        config: FleetConfig,
        route: Route,
        sources: Sources,
        status: FleetStatusCell,
        reload: watch::Receiver<FleetConfig>,
    ) -> Heartbeat {
        // The push logs a missing token; the heartbeat waits for one too.
        let (tokens, _) = TokenSource::new(&config);
        let backoff = new_backoff(&config);
        Heartbeat {
            config,
            route,
            tokens,
            sources,
            status,
            reload,
            backoff,
            failing: None,
        }
    }

    /// Sends heartbeats until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut changes = self.sources.hub.meter_changes();
        changes.borrow_and_update();
        let mut next = Instant::now();
        let mut last_try: Option<Instant> = None;
        loop {
            tokio::select! {
                // Stop.
                () = shutdown.cancelled() => return,
                // SIGHUP brought new tokens.
                Ok(()) = self.reload.changed() => {
                    let config = self.reload.borrow_and_update().clone();
                    self.reload_tokens(&config);
                    continue;
                }
                // A meter changed state: tell the fleet soon.
                Ok(()) = changes.changed() => {
                    changes.borrow_and_update();
                    let soon = Instant::now() + SETTLE;
                    let soon = last_try.map_or(soon, |at| soon.max(at + MIN_GAP));
                    next = next.min(soon);
                    continue;
                }
                // Due.
                () = tokio::time::sleep_until(next) => {}
            }
            self.token_file_changed();
            last_try = Some(Instant::now());
            let wait = tokio::select! {
                () = shutdown.cancelled() => return,
                wait = self.beat() => wait,
            };
            next = Instant::now() + wait;
        }
    }

    /// One heartbeat (with token failover); how long until the next.
    async fn beat(&mut self) -> Duration {
        let interval = self.config.heartbeat_interval;
        let body = self.sources.snapshot(interval);
        let encoded = serde_json::to_vec(&body)
            .map_err(std::io::Error::other)
            .and_then(|json| wire::compress(json, self.config.gzip));
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(e) => return self.failed(format!("cannot encode the heartbeat: {e}"), None),
        };
        if let Route::Mqtt(link) = &self.route {
            let bytes = encoded.bytes.len();
            let link = link.clone();
            link.connected().await;
            let timeout = self
                .config
                .timeout
                .min(interval.max(Duration::from_secs(5)));
            return match link
                .publish(link.topic("heartbeat"), encoded.bytes, true, timeout)
                .await
            {
                Ok(()) => {
                    self.succeeded(bytes);
                    interval
                }
                Err(error) => self.failed(format!("heartbeat: {error}"), None),
            };
        }
        let order = self.tokens.ring.order(Instant::now());
        let mut rejected = 0;
        for slot in order {
            let Some(token) = self.tokens.ring.get(slot).cloned() else {
                continue;
            };
            match self.post(&encoded, &token).await {
                Answer::Ok => {
                    self.tokens.ring.accepted(slot, Instant::now());
                    self.succeeded(encoded.bytes.len());
                    return interval;
                }
                Answer::Unauthorized => rejected += 1,
                Answer::Retry { error, retry_after } => return self.failed(error, retry_after),
            }
        }
        // Every token rejected (or none loaded): the push says so in the
        // journal and status; the heartbeat waits quietly and tries again.
        let error = if rejected == 0 {
            "no fleet token to send the heartbeat with".to_owned()
        } else {
            format!("no token accepted for the heartbeat ({rejected} tried)")
        };
        tracing::debug!(event = "heartbeat_unauthorized", "{error}");
        self.count_failure(error);
        self.config.auth_retry.min(interval * 5)
    }

    /// One request.
    async fn post(&self, body: &wire::Body, token: &Token) -> Answer {
        let Route::Http { endpoint, client } = &self.route else {
            return Answer::Retry {
                error: "heartbeat: not an HTTP fleet".to_owned(),
                retry_after: None,
            };
        };
        match post_json(client, endpoint, body, token).await {
            Ok(response) => classify(
                response.status().as_u16(),
                retry_after(&response).as_deref(),
            ),
            Err(e) => Answer::Retry {
                error: format!("heartbeat: {}", describe(&e)),
                retry_after: None,
            },
        }
    }

    fn succeeded(&mut self, bytes: usize) {
        if let Some((since, tries, _)) = self.failing.take() {
            tracing::info!(
                event = "heartbeat_recovered",
                "fleet heartbeat delivered again after {tries} failed tries since {}",
                since.format("%H:%M:%S")
            );
        }
        self.backoff = new_backoff(&self.config);
        let mut status = super::lock(&self.status);
        status.heartbeat.sent += 1;
        status.heartbeat.last_at = Some(Utc::now());
        status.heartbeat.last_bytes = bytes;
        status.heartbeat.last_error = None;
    }

    /// Notes a failure (logged when it starts and summarised, never per
    /// try); the wait until the next try: backoff, at least a
    /// `Retry-After`, at most the interval.
    fn failed(&mut self, error: String, retry_after: Option<Duration>) -> Duration {
        let interval = self.config.heartbeat_interval;
        let backoff = self.backoff.next().unwrap_or(self.config.retry_max);
        let wait = match retry_after {
            Some(asked) => asked.max(backoff),
            None => backoff.min(interval),
        };
        let now = Instant::now();
        match &mut self.failing {
            None => {
                tracing::warn!(
                    event = "heartbeat_failed",
                    "fleet heartbeat failed: {error}; retrying in {} (records are pushed independently)",
                    human(wait)
                );
                self.failing = Some((Utc::now(), 1, now));
            }
            Some((since, tries, summarised)) => {
                *tries += 1;
                if now.saturating_duration_since(*summarised) >= FAILURE_SUMMARY_EVERY {
                    tracing::warn!(
                        event = "heartbeat_still_failing",
                        "fleet heartbeat still failing: {error} ({tries} tries since {})",
                        since.format("%H:%M:%S")
                    );
                    *summarised = now;
                }
            }
        }
        self.count_failure(error);
        wait
    }

    /// Counts a failed heartbeat in status, with its reason.
    fn count_failure(&self, error: String) {
        let mut status = super::lock(&self.status);
        status.heartbeat.failures += 1;
        status.heartbeat.last_error = Some(error);
    }

    /// Reloaded tokens; errors are the push's to log.
    fn reload_tokens(&mut self, config: &FleetConfig) {
        let _ = self.tokens.reload(config);
    }

    /// An edited token file; errors are the push's to log.
    fn token_file_changed(&mut self) {
        let _ = self.tokens.reread_file();
    }
}

fn new_backoff(config: &FleetConfig) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(config.retry_min.min(config.heartbeat_interval))
        .with_max_delay(config.heartbeat_interval)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_and_204_are_delivered_and_401_fails_over() {
        assert_eq!(classify(200, None), Answer::Ok);
        assert_eq!(classify(204, None), Answer::Ok);
        assert_eq!(classify(401, None), Answer::Unauthorized);
        assert_eq!(
            classify(503, Some("7")),
            Answer::Retry {
                error: "the fleet answered 503 to a heartbeat".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert!(matches!(classify(404, None), Answer::Retry { .. }));
    }

    #[test]
    fn a_snapshot_names_every_meter_with_its_state_last_seq_and_health() {
        use crate::device::DeviceTask;
        use crate::device::health::HealthValue;
        use crate::record::{MeterState, Reading};
        let text = "[[device]]\nid = \"north\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:2255\"\n\
                    [[device]]\nid = \"east\"\nprotocol = \"xl2\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:2256\"\n";
        let config = match crate::config::parse(text, std::path::Path::new("t.toml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let hub = Hub::new(41);
        let cells: Vec<_> = config
            .devices
            .iter()
            .map(|d| DeviceTask::new(d.clone(), hub.clone()).status)
            .collect();
        {
            let mut north = lock_status(&cells[0]);
            north.state = LinkState::Connected;
            north.run_state = MeterState::Stopped;
            north.last_error = Some("an old failure".into());
            north.health.battery = HealthValue::Read("Full".into());
            let mut east = lock_status(&cells[1]);
            east.state = LinkState::Down;
            east.last_error = Some("no answer within 1.5s".into());
        }
        hub.publish(Reading {
            device: Arc::from("north"),
            received_at: Utc::now(),
            device_time: None,
            metrics: vec![("lp", Some(50.0))],
            state: MeterState::Stopped,
            flags: vec![],
        });
        let sources = Sources {
            gateway: "gw-1".into(),
            started: std::time::Instant::now(),
            hub,
            meters: Arc::new(std::sync::Mutex::new(cells)),
            buffer: BufferSlot::default(),
        };
        let body = serde_json::to_value(sources.snapshot(Duration::from_secs(60))).expect("json");
        assert_eq!(body["gateway"], "gw-1");
        assert_eq!(body["interval_s"], 60.0);
        let north = &body["meters"][0];
        assert_eq!(north["id"], "north");
        assert_eq!(north["state"], "connected");
        assert_eq!(north["run_state"], "stopped");
        assert_eq!(north["last_seq"], 41);
        assert_eq!(
            north["last_error"],
            serde_json::Value::Null,
            "connected: no error shown"
        );
        assert_eq!(
            north["health"],
            serde_json::json!({"battery": "Full", "sd_free_percent": null, "clock_offset_s": null})
        );
        let east = &body["meters"][1];
        assert_eq!(east["protocol"], "xl2");
        assert_eq!(east["state"], "down");
        assert_eq!(east["last_seq"], serde_json::Value::Null);
        assert_eq!(east["last_error"], "no answer within 1.5s");
        assert_eq!(
            east["health"],
            serde_json::json!({"battery": "unknown", "sd_free_percent": "unknown", "clock_offset_s": "unknown"}),
            "the XL2 reports no health"
        );
        assert_eq!(
            body["buffer"],
            serde_json::json!({"records": 0, "unsent": 0, "oldest_unsent": null})
        );
    }
}
