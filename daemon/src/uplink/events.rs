//! Alert events to the fleet (SPEC §7 "Events"): `POST
//! {url}/api/fleet/events` with `{"gateway", "events": [...]}`, in
//! `event_seq` order, at least once (the fleet de-duplicates by `(gateway,
//! event_seq)`), with the push's tokens and failover. A consumer of
//! [`crate::limits::deliver`]: its own task, client and position, so
//! neither the record push nor the heartbeat waits for it, nor it for them.

use super::tokens::{Token, TokenSource};
use super::wire;
use super::{describe, post_json, retry_after};
use crate::buffer::alerts::StoredEvent;
use crate::config::FleetConfig;
use crate::limits::deliver::{EventSink, Failure};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

/// The route.
pub const EVENTS_PATH: &str = "/api/fleet/events";

/// Most events per request: 100 (events are rare; a backlog after an
/// outage goes in a few requests).
pub const EVENTS_BATCH: usize = 100;

/// The request body.
#[derive(Serialize)]
struct Body<'a> {
    gateway: &'a str,
    events: Vec<&'a serde_json::Value>,
}

/// The fleet as a consumer of alert events.
pub struct FleetEvents {
    gateway: String,
    endpoint: String,
    gzip: bool,
    client: reqwest::Client,
    tokens: TokenSource,
    reload: watch::Receiver<FleetConfig>,
    /// Halved on `413`, back to [`EVENTS_BATCH`] after a delivery.
    batch: usize,
}

impl FleetEvents {
    /// For `config`, with the push's reload channel (tokens).
    pub fn new(
        config: &FleetConfig,
        gateway: String,
        reload: watch::Receiver<FleetConfig>,
    ) -> Result<FleetEvents, super::UplinkError> {
        let url = config.url.clone().ok_or(super::UplinkError::NoUrl)?;
        let (tokens, _) = TokenSource::new(config);
        Ok(FleetEvents {
            gateway,
            endpoint: format!("{}{EVENTS_PATH}", url.trim_end_matches('/')),
            gzip: config.gzip,
            client: super::http_client(config.timeout)?,
            tokens,
            reload,
            batch: EVENTS_BATCH,
        })
    }

    async fn post(&self, body: &wire::Body, token: &Token, sent: usize) -> wire::Answer {
        match post_json(&self.client, &self.endpoint, body, token).await {
            Ok(response) => {
                let status = response.status().as_u16();
                let after = retry_after(&response);
                let bytes = response.bytes().await.unwrap_or_default();
                wire::classify(status, after.as_deref(), &bytes, sent)
            }
            Err(e) => wire::Answer::Retry {
                error: format!("events: {}", describe(&e)),
                retry_after: None,
            },
        }
    }
}

impl EventSink for FleetEvents {
    fn consumer(&self) -> String {
        "fleet".to_owned()
    }

    fn wants(&self, _: &StoredEvent) -> bool {
        true
    }

    fn batch_max(&self) -> usize {
        EVENTS_BATCH
    }

    async fn send(&mut self, events: &[StoredEvent]) -> Result<(), Failure> {
        if self.reload.has_changed().unwrap_or(false) {
            let config = self.reload.borrow_and_update().clone();
            // Errors are the push's to log.
            let _ = self.tokens.reload(&config);
        }
        let _ = self.tokens.reread_file();
        // Sent in pieces of `batch` (smaller after a 413), in order.
        let mut at = 0;
        while at < events.len() {
            let piece = &events[at..(at + self.batch).min(events.len())];
            let body = Body {
                gateway: &self.gateway,
                events: piece.iter().map(|e| &e.body).collect(),
            };
            let encoded = serde_json::to_vec(&body)
                .map_err(std::io::Error::other)
                .and_then(|json| wire::compress(json, self.gzip))
                .map_err(|e| Failure::Retry {
                    error: format!("cannot encode alert events: {e}"),
                    retry_after: None,
                })?;
            let mut rejected = 0;
            let mut delivered = false;
            for slot in self.tokens.ring.order(Instant::now()) {
                let Some(token) = self.tokens.ring.get(slot).cloned() else {
                    continue;
                };
                match self.post(&encoded, &token, piece.len()).await {
                    wire::Answer::Accepted { .. } => {
                        self.tokens.ring.accepted(slot, Instant::now());
                        delivered = true;
                        break;
                    }
                    wire::Answer::Unauthorized => rejected += 1,
                    wire::Answer::TooLarge if self.batch > 1 => {
                        self.batch = (self.batch / 2).max(1);
                        break;
                    }
                    wire::Answer::TooLarge => {
                        return Err(Failure::Rejected {
                            error: "the fleet answered 413 to a single event".into(),
                        });
                    }
                    wire::Answer::Malformed { detail } if piece.len() == 1 => {
                        return Err(Failure::Rejected {
                            error: format!("the fleet answered 400: {detail}"),
                        });
                    }
                    wire::Answer::Malformed { .. } => {
                        // Find the bad one: one at a time from here.
                        self.batch = 1;
                        break;
                    }
                    wire::Answer::Retry { error, retry_after } => {
                        return Err(Failure::Retry { error, retry_after });
                    }
                }
            }
            if delivered {
                at += piece.len();
                continue;
            }
            if rejected > 0 || self.tokens.ring.tokens().is_empty() {
                return Err(Failure::Retry {
                    error: if rejected == 0 {
                        "no fleet token to send alert events with".to_owned()
                    } else {
                        format!("no token accepted for alert events ({rejected} tried)")
                    },
                    retry_after: None,
                });
            }
            // A smaller batch: go round again with it.
        }
        self.batch = EVENTS_BATCH;
        Ok(())
    }
}
