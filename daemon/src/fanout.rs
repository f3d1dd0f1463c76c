//! The fan-out point: where each device's readings become records and reach
//! every consumer.
//!
//! Owns two invariants:
//! - **Sequence.** `seq` is assigned here, under one lock together with the
//!   send, so every consumer sees records in `seq` order and `seq` is
//!   strictly increasing across all devices.
//! - **No consumer can stall a device.** Publishing never waits: live
//!   subscribers get a bounded broadcast channel and, if they fall behind,
//!   are told how many events they missed (tokio's `Lagged`) and continue
//!   from the newest. Consumers that must not lose anything (the buffer
//!   writer) register a bounded queue with [`Hub::add_durable_sink`]; when
//!   that queue is full the record is counted as lost for it, never waited on.

use crate::record::{Reading, Record};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc};

/// Link state of a device, as status and feeds report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Opening the link or waiting for the first answer.
    Connecting,
    /// The link is open and the meter answers.
    Connected,
    /// The meter does not answer or the link cannot be opened; retrying.
    Down,
}

/// What live subscribers receive.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A new record.
    Record(Arc<Record>),
    /// A device changed link state.
    DeviceState {
        /// Device id.
        device: Arc<str>,
        /// The new state.
        state: LinkState,
        /// Why, when the state is not `connected`.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Capacity of the live broadcast: how far a subscriber may fall behind
/// before it is told it lagged.
pub const LIVE_CAPACITY: usize = 1024;

/// The fan-out hub, shared by all device tasks and consumers.
#[derive(Debug)]
pub struct Hub {
    /// Next `seq` and the durable sinks, behind one lock so assignment and
    /// delivery order are the same.
    inner: Mutex<HubInner>,
    /// Live subscribers (API streams, MQTT, terminal printers).
    live: broadcast::Sender<Event>,
    /// Records a durable sink could not take because its queue was full.
    lost_to_full_sinks: AtomicU64,
}

#[derive(Debug)]
struct HubInner {
    next_seq: u64,
    durable: Vec<mpsc::Sender<Arc<Record>>>,
}

impl Hub {
    /// A hub whose first record gets `first_seq` (the buffer passes one past
    /// the highest `seq` it has ever assigned).
    pub fn new(first_seq: u64) -> Arc<Hub> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(Hub {
            inner: Mutex::new(HubInner {
                next_seq: first_seq.max(1),
                durable: Vec::new(),
            }),
            live,
            lost_to_full_sinks: AtomicU64::new(0),
        })
    }

    /// Registers a consumer that must see every record, through a bounded
    /// queue of `capacity`. Records that find it full are counted in
    /// [`Hub::lost_to_full_sinks`].
    pub fn add_durable_sink(&self, capacity: usize) -> mpsc::Receiver<Arc<Record>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.lock().durable.push(tx);
        rx
    }

    /// Stops offering records to durable sinks; each sees its queue close
    /// once drained (used at shutdown, after the devices stopped).
    pub fn close_durable_sinks(&self) {
        self.lock().durable.clear();
    }

    /// A live subscription to records and device state changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Number of live subscribers.
    pub fn live_subscribers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Records lost because a durable sink's queue was full.
    pub fn lost_to_full_sinks(&self) -> u64 {
        self.lost_to_full_sinks.load(Ordering::Relaxed)
    }

    /// Stamps `reading` with the next `seq` and delivers it. Never waits.
    pub fn publish(&self, reading: Reading) -> Arc<Record> {
        let mut inner = self.lock();
        let record = Arc::new(Record::new(inner.next_seq, reading));
        inner.next_seq += 1;
        inner
            .durable
            .retain(|sink| match sink.try_send(record.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.lost_to_full_sinks.fetch_add(1, Ordering::Relaxed);
                    true
                }
                // The consumer is gone (shutting down): stop offering it records.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        // An error only means nobody is listening live right now.
        let _ = self.live.send(Event::Record(record.clone()));
        record
    }

    /// Announces a device's new link state to live subscribers.
    pub fn device_state(&self, device: Arc<str>, state: LinkState, error: Option<String>) {
        let _ = self.live.send(Event::DeviceState {
            device,
            state,
            error,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // The lock guards plain data that is valid after any panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MeterState;
    use chrono::Utc;

    fn reading(device: &str) -> Reading {
        Reading {
            device: Arc::from(device),
            received_at: Utc::now(),
            device_time: None,
            metrics: vec![("lp", Some(50.0))],
            state: MeterState::Measuring,
            flags: vec![],
        }
    }

    #[tokio::test]
    async fn seq_is_strictly_increasing_across_devices_and_durable_sinks_see_all() {
        let hub = Hub::new(41);
        let mut sink = hub.add_durable_sink(16);
        let seqs: Vec<u64> = ["a", "b", "a"]
            .iter()
            .map(|d| hub.publish(reading(d)).seq)
            .collect();
        assert_eq!(seqs, [41, 42, 43]);
        for expected in [41, 42, 43] {
            assert_eq!(sink.recv().await.map(|r| r.seq), Some(expected));
        }
    }

    #[tokio::test]
    async fn a_full_durable_sink_never_blocks_publishing_and_losses_are_counted() {
        let hub = Hub::new(1);
        let _sink = hub.add_durable_sink(2);
        for _ in 0..5 {
            hub.publish(reading("a"));
        }
        assert_eq!(hub.lost_to_full_sinks(), 3);
    }

    #[tokio::test]
    async fn a_slow_live_subscriber_is_told_it_lagged_and_resumes_from_the_newest() {
        let hub = Hub::new(1);
        let mut slow = hub.subscribe();
        for _ in 0..(LIVE_CAPACITY + 10) {
            hub.publish(reading("a"));
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(10))
        ));
        match slow.recv().await {
            Ok(Event::Record(r)) => assert_eq!(r.seq, 11),
            other => panic!("expected a record, got {other:?}"),
        }
    }
}
