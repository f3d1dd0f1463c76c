//! Noise limits at the edge (SPEC §11): interval levels per device and
//! alert rules on readings and interval levels, evaluated on the gateway so
//! a limit holds while the uplink is down.
//!
//! - [`interval`]: the windows (aligned to local time, DST-correct) and the
//!   energy average over each, with coverage;
//! - [`rules`]: the alert rules' state machines (`for`, hysteresis,
//!   schedule, cooldown, peak rate) and the events they raise.
//!
//! Both are pure: they take the time with every call, so tests run on an
//! injected clock.

pub mod deliver;
pub mod engine;
pub mod interval;
pub mod rules;

use crate::buffer::BufferSlot;
use crate::clock::WallClock;
use crate::config::Config;
use crate::fanout::Hub;
use deliver::{DeliveryStatus, DeliveryStatusCell};
use engine::{Engine, LIMITS_QUEUE, LimitsHandle};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The consumer name of the fleet in the buffer's event deliveries.
pub const FLEET_CONSUMER: &str = "fleet";

/// The running limits part.
#[derive(Debug, Clone)]
pub struct LimitsRuntime {
    /// Stored events wake the consumers through it; counters.
    pub handle: LimitsHandle,
    /// Each channel's delivery state, in config order.
    pub channels: Vec<DeliveryStatusCell>,
    /// The fleet's delivery state (idle while `[fleet]` is off: its events
    /// wait in the file like records).
    pub fleet: DeliveryStatusCell,
}

impl LimitsRuntime {
    /// Every consumer's state: the fleet first, then the channels.
    pub fn deliveries(&self) -> Vec<DeliveryStatusCell> {
        std::iter::once(self.fleet.clone())
            .chain(self.channels.iter().cloned())
            .collect()
    }
}

/// Starts the limits task and the channels' delivery tasks when `config`
/// has interval levels or rules; `None` otherwise (nothing runs, no queue
/// is taken from the hub).
pub fn start(
    config: &Config,
    hub: &Arc<Hub>,
    buffer: &BufferSlot,
    clock: &WallClock,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<LimitsRuntime> {
    if !engine::wanted(config) {
        return None;
    }
    // Before the engine can raise anything: every consumer sees every
    // event raised from now on (the fleet's wait while it is off).
    deliver::register(buffer, FLEET_CONSUMER);
    for channel in &config.channels {
        deliver::register(buffer, &format!("channel:{}", channel.id));
    }
    let (engine, handle) = Engine::new(config, hub.clone(), buffer.clone(), clock.clone());
    let queue = hub.add_durable_sink(LIMITS_QUEUE);
    tracker.spawn(engine.run(queue, shutdown.child_token()));
    let mut channels = Vec::new();
    for channel in &config.channels {
        let rules = config
            .alerts
            .iter()
            .filter(|a| a.channels.contains(&channel.id))
            .map(|a| a.id.clone())
            .collect();
        let status: DeliveryStatusCell = Arc::new(Mutex::new(DeliveryStatus {
            consumer: format!("channel:{}", channel.id),
            ..DeliveryStatus::default()
        }));
        match deliver::Channel::new(channel.clone(), rules) {
            Ok(sink) => {
                let retry = sink.retry();
                tracker.spawn(deliver::run(
                    sink,
                    buffer.clone(),
                    handle.events.clone(),
                    retry,
                    status.clone(),
                    shutdown.child_token(),
                ));
            }
            Err(error) => {
                tracing::error!("alert channel {} cannot start: {error}", channel.id);
                status
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .last_error = Some(error);
            }
        }
        channels.push(status);
    }
    let fleet = Arc::new(Mutex::new(DeliveryStatus {
        consumer: FLEET_CONSUMER.to_owned(),
        ..DeliveryStatus::default()
    }));
    Some(LimitsRuntime {
        handle,
        channels,
        fleet,
    })
}
