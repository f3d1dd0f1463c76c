//! What the simulator tells the outside world: counters and events.
//!
//! [`SimStats`] are cumulative over the simulator's life (all connections).
//! [`SimEvent`]s go out on a broadcast channel as things happen; a receiver
//! that falls more than [`EVENT_CAPACITY`] events behind is told it lagged
//! (tokio's broadcast semantics) and continues. Events that no receiver
//! exists for are dropped. The crate-private `Recorder` is the one place that updates
//! both, so a counter and its event always agree (an event's `total` is the
//! counter right after it was incremented).

use serde::Serialize;
use std::sync::{Mutex, PoisonError};
use tokio::sync::broadcast;

/// Events a receiver may fall behind before it is told it lagged.
pub const EVENT_CAPACITY: usize = 4096;

/// Counters over the simulator's life.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Connections served: TCP clients taken, pty incarnations created.
    pub connections_accepted: u64,
    /// TCP clients accepted and closed at once because another was served.
    pub connections_refused: u64,
    /// Command lines received, including the ones ignored while silent.
    pub commands: u64,
    /// `DOD?` answers with a data line (live or replayed).
    pub dod_answers: u64,
    /// `R+0004` result lines sent (pacing or state).
    pub busy_answers: u64,
    /// Links closed by the `drop_every` fault.
    pub links_dropped: u64,
}

/// One thing that happened, as `slm-sim` prints it (one JSON object a line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SimEvent {
    /// A connection is being served (`total` = connections accepted so far).
    Connected {
        /// Connections accepted so far, this one included.
        total: u64,
    },
    /// A TCP client was refused because another one is served.
    Refused {
        /// Connections refused so far, this one included.
        total: u64,
    },
    /// The connection being served ended (client gone, dropped, shut down).
    Disconnected,
    /// A `DOD?` answer with its data line was sent.
    Dod {
        /// `DOD?` answers so far, this one included.
        n: u64,
        /// Exactly the data line sent, without CR LF.
        line: String,
        /// Whether it came from the meter's stored records.
        replayed: bool,
    },
    /// A result line was sent.
    Result {
        /// The command line as received (lossy UTF-8, without CR LF).
        command: String,
        /// The result code, e.g. `R+0000`.
        code: String,
    },
    /// A fault was injected: `drop`, `silent_start`, `silent_end`, `stall`, `junk`.
    Fault {
        /// What the fault did.
        kind: String,
    },
}

/// Updates the counters and sends the matching events.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The counters; locked only for a few additions at a time.
    stats: Mutex<SimStats>,
    /// Where events go; `send` never blocks and fails only without receivers.
    events: broadcast::Sender<SimEvent>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Recorder {
            stats: Mutex::new(SimStats::default()),
            events,
        }
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        self.lock().clone()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<SimEvent> {
        self.events.subscribe()
    }

    /// Applies `update` to the counters and sends the event it returns.
    pub(crate) fn record(&self, update: impl FnOnce(&mut SimStats) -> Option<SimEvent>) {
        // The event is sent under the lock so events go out in counter order.
        let mut stats = self.lock();
        if let Some(event) = update(&mut stats) {
            // No receiver is not an error: nobody is watching.
            let _ = self.events.send(event);
        }
    }

    /// Sends an event that no counter goes with.
    pub(crate) fn event(&self, event: SimEvent) {
        self.record(|_| Some(event));
    }

    /// Reports a fault of `kind`.
    pub(crate) fn fault(&self, kind: &str) {
        tracing::debug!(kind, "fault injected");
        self.event(SimEvent::Fault {
            kind: kind.to_owned(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimStats> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_as_tagged_json() {
        let dod = SimEvent::Dod {
            n: 3,
            line: " 58.3".into(),
            replayed: false,
        };
        assert_eq!(
            serde_json::to_string(&dod).ok().as_deref(),
            Some(r#"{"event":"dod","n":3,"line":" 58.3","replayed":false}"#)
        );
        assert_eq!(
            serde_json::to_string(&SimEvent::Disconnected)
                .ok()
                .as_deref(),
            Some(r#"{"event":"disconnected"}"#)
        );
        assert_eq!(
            serde_json::to_string(&SimEvent::Fault {
                kind: "junk".into()
            })
            .ok()
            .as_deref(),
            Some(r#"{"event":"fault","kind":"junk"}"#)
        );
    }
}
