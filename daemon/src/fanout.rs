//! The fan-out point: where each device's readings become records and reach
//! every consumer.
//!
//! Owns two invariants:
//! - **Sequence.** `seq` is assigned here, under one lock together with the
//!   send, so every consumer sees records in `seq` order and `seq` is
//!   strictly increasing across all devices. With the buffer's numbering
//!   attached, each number is reserved on disk before it is handed out
//!   ([`crate::buffer::numbering::Numbering::ensure`]), so no number is
//!   handed out twice across restarts, crashes or a lost buffer.
//! - **No consumer can stall a device.** Publishing never waits: live
//!   subscribers get a bounded broadcast channel and, if they fall behind,
//!   are told how many events they missed (tokio's `Lagged`) and continue
//!   from the newest. Consumers that must not lose anything (the buffer
//!   writer) register a bounded queue with [`Hub::add_durable_sink`]; when
//!   that queue is full the record is counted as lost for it, never waited on.
//! - **Late joiners see the present.** The newest record of each device is
//!   kept here (seeded from the buffer at start), updated under the same
//!   lock as the send, so [`Hub::subscribe_with_latest`] gives a snapshot and
//!   a subscription with nothing missed or repeated between them.
//! - **Who is watching.** Live viewers of a device hold a [`WatchGuard`];
//!   the device task reads the count ([`Hub::watchers`]) to poll at
//!   `live_poll_interval` only while someone watches.

use crate::buffer::numbering::Numbering;
use crate::record::{Interval, Reading, Record};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{broadcast, mpsc, watch};

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

impl LinkState {
    /// The wire name (`connected`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Down => "down",
        }
    }
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
    /// An alert event (onset, peak, clear) as delivered to channels.
    Alert(Arc<serde_json::Value>),
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
    /// Live viewers per device.
    watchers: Mutex<HashMap<Arc<str>, watch::Sender<usize>>>,
    /// Bumped when a meter changes state, so the heartbeat goes at once.
    meter_changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct HubInner {
    next_seq: u64,
    /// Where numbers are reserved before use (none in tests of the hub alone).
    numbering: Option<Arc<Numbering>>,
    durable: Vec<mpsc::Sender<Arc<Record>>>,
    /// The newest record of each device.
    latest: HashMap<Arc<str>, Arc<Record>>,
}

/// Held by a live viewer of some devices; counts it as watching them until
/// dropped.
#[derive(Debug)]
pub struct WatchGuard {
    /// The counters it raised.
    counts: Vec<watch::Sender<usize>>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        for count in &self.counts {
            count.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Hub {
    /// A hub whose first record gets `first_seq` (the buffer passes one past
    /// the highest `seq` it has ever assigned).
    pub fn new(first_seq: u64) -> Arc<Hub> {
        Hub::build(first_seq, None)
    }

    /// A hub whose numbers are reserved through `numbering` before use.
    pub fn with_numbering(first_seq: u64, numbering: Arc<Numbering>) -> Arc<Hub> {
        Hub::build(first_seq, Some(numbering))
    }

    fn build(first_seq: u64, numbering: Option<Arc<Numbering>>) -> Arc<Hub> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(Hub {
            inner: Mutex::new(HubInner {
                next_seq: first_seq.max(1),
                numbering,
                durable: Vec::new(),
                latest: HashMap::new(),
            }),
            live,
            lost_to_full_sinks: AtomicU64::new(0),
            watchers: Mutex::new(HashMap::new()),
            meter_changes: watch::channel(0).0,
        })
    }

    /// Sets the newest record of each device from `records` (the buffer's,
    /// at start), unless a newer one was published already.
    pub fn seed_latest(&self, records: impl IntoIterator<Item = Record>) {
        let mut inner = self.lock();
        for record in records {
            let newer = inner
                .latest
                .get(&record.device)
                .is_some_and(|r| r.seq >= record.seq);
            if !newer {
                inner.latest.insert(record.device.clone(), Arc::new(record));
            }
        }
    }

    /// The newest record of `device`, if it ever produced one.
    pub fn latest(&self, device: &str) -> Option<Arc<Record>> {
        self.lock().latest.get(device).cloned()
    }

    /// A live subscription and, taken at the same instant, the newest
    /// record of every device (in `seq` order): a late joiner shows these
    /// at once and then the live flow, with no record missed or repeated.
    pub fn subscribe_with_latest(&self) -> (broadcast::Receiver<Event>, Vec<Arc<Record>>) {
        let inner = self.lock();
        let receiver = self.live.subscribe();
        let mut latest: Vec<Arc<Record>> = inner.latest.values().cloned().collect();
        drop(inner);
        latest.sort_by_key(|r| r.seq);
        (receiver, latest)
    }

    /// Counts the caller as a live viewer of `devices` until the guard drops.
    pub fn watch_devices(&self, devices: &[Arc<str>]) -> WatchGuard {
        let counts = devices
            .iter()
            .map(|device| {
                let count = self.watch_counter(device);
                count.send_modify(|n| *n += 1);
                count
            })
            .collect();
        WatchGuard { counts }
    }

    /// The number of live viewers of `device`, to wait on for changes.
    pub fn watchers(&self, device: &str) -> watch::Receiver<usize> {
        self.watch_counter(device).subscribe()
    }

    fn watch_counter(&self, device: &str) -> watch::Sender<usize> {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        match watchers.get(device) {
            Some(sender) => sender.clone(),
            None => {
                let (sender, _) = watch::channel(0);
                watchers.insert(Arc::from(device), sender.clone());
                sender
            }
        }
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
        self.stamp_and_deliver(|seq| Record::new(seq, reading))
    }

    /// Stamps an interval level (SPEC §11) with the next `seq`, in the same
    /// order as readings, and delivers it like one; it is not a meter's
    /// latest reading. Never waits.
    pub fn publish_interval(&self, reading: Reading, interval: Interval) -> Arc<Record> {
        self.stamp_and_deliver(|seq| Record {
            interval: Some(interval),
            ..Record::new(seq, reading)
        })
    }

    /// Announces an alert event (its JSON body, as delivered) to live
    /// subscribers.
    pub fn alert(&self, event: Arc<serde_json::Value>) {
        let _ = self.live.send(Event::Alert(event));
    }

    fn stamp_and_deliver(&self, build: impl FnOnce(u64) -> Record) -> Arc<Record> {
        let mut inner = self.lock();
        if let Some(numbering) = &inner.numbering {
            numbering.ensure(inner.next_seq);
        }
        let record = Arc::new(build(inner.next_seq));
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
        if !record.is_interval() {
            inner.latest.insert(record.device.clone(), record.clone());
        }
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
        self.meter_changed();
    }

    /// Notes that a meter changed state (link or run state), for those who
    /// report meter states (the fleet heartbeat).
    pub fn meter_changed(&self) {
        self.meter_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever a meter changes state (see [`Hub::meter_changed`]).
    pub fn meter_changes(&self) -> watch::Receiver<u64> {
        self.meter_changes.subscribe()
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
    async fn a_late_joiner_gets_the_newest_record_of_each_device_then_the_flow() {
        let hub = Hub::new(1);
        hub.seed_latest([Record::new(0, reading("c"))]);
        hub.publish(reading("a"));
        hub.publish(reading("b"));
        hub.publish(reading("a"));
        let (mut live, latest) = hub.subscribe_with_latest();
        let seen: Vec<(u64, &str)> = latest.iter().map(|r| (r.seq, &*r.device)).collect();
        assert_eq!(seen, [(0, "c"), (2, "b"), (3, "a")]);
        hub.publish(reading("b"));
        match live.recv().await {
            Ok(Event::Record(r)) => assert_eq!(r.seq, 4),
            other => panic!("expected the next record, got {other:?}"),
        }
        // An older record from the buffer does not replace a newer one.
        hub.seed_latest([Record::new(1, reading("a"))]);
        assert_eq!(hub.latest("a").map(|r| r.seq), Some(3));
    }

    #[test]
    fn watchers_are_counted_while_their_guards_live() {
        let hub = Hub::new(1);
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let count_a = hub.watchers("a");
        let both = hub.watch_devices(&[a.clone(), b.clone()]);
        let only_a = hub.watch_devices(&[a]);
        assert_eq!(*count_a.borrow(), 2);
        assert_eq!(*hub.watchers("b").borrow(), 1);
        drop(both);
        assert_eq!(*count_a.borrow(), 1);
        assert_eq!(*hub.watchers("b").borrow(), 0);
        drop(only_a);
        assert_eq!(*count_a.borrow(), 0);
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
