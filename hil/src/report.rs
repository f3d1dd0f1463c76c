//! What the simulator tells the outside world: counters and events.
//!
//! [`SimStats`] are cumulative over the simulator's life (all connections).
//! [`SimEvent`]s go out on a broadcast channel as things happen; a receiver
//! that falls more than [`EVENT_CAPACITY`] events behind is told it lagged
//! (tokio's broadcast semantics) and continues. Events that no receiver
//! exists for are dropped. The crate-private `Recorder` is the one place that updates
//! both, so a counter and its event always agree (an event's `total` is the
//! counter right after it was incremented).

use crate::config::Family;
use serde::Serialize;
use serde::ser::SerializeMap;
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
    /// [`SimEvent::Reading`]s sent, every family (for the NL-43: `DOD?`
    /// data lines and `DRD?` lines).
    pub readings: u64,
    /// Bytes a push-only meter (Casella) received and ignored.
    pub ignored_bytes: u64,
    /// Power cycles ([`crate::Simulator::power_cycle`], `SIGUSR1`).
    pub power_cycles: u64,
    /// Clock settings the meter accepted (NL-43 `Clock,...`).
    pub clock_sets: u64,
}

/// A reading's metrics, in the order they were on the wire; serialised as a
/// JSON object, a value as the number written (`null` for dashes or `?`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics(Vec<(String, Option<serde_json::Number>)>);

impl Metrics {
    /// No metrics.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds `name` with the value written on the wire as `text` (a decimal
    /// comma is read as a point); anything that is not a number (dashes,
    /// `?`) is `null`.
    pub fn push_text(&mut self, name: &str, text: Option<&str>) {
        let value = text.and_then(|t| t.trim().replace(',', ".").parse().ok());
        self.0.push((name.to_owned(), value));
    }

    /// The value of `name`: `None` if absent, `Some(None)` for `null`.
    pub fn get(&self, name: &str) -> Option<Option<f64>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref().and_then(serde_json::Number::as_f64))
    }

    /// The metric names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// Number of metrics.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One thing that happened, as `slm-sim` prints it (one JSON object a line).
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// A reading went out on the wire, whatever the family: for the NL-43
    /// each `DOD?` data line and each `DRD?` line, for the XL2 each
    /// `MEAS:SLM:123?` answer, for the Svantek each `#2` answer with
    /// results, for the Casella each logging period. Emitted once the bytes
    /// were written.
    Reading {
        /// The family that sent it.
        family: Family,
        /// Readings so far, this one included.
        n: u64,
        /// The values as written (names of SPEC §3: `lp`, `leq`, `le`,
        /// `lmax`, `lmin`, `lpeak`, `l<N>`).
        metrics: Metrics,
        /// The meter's own time carried by the reading, in UTC
        /// (`2026-12-02T15:23:45Z`), or `null` when the wire form has none.
        device_time: Option<String>,
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
    /// A command changed the run state: NL-43 `Measure,Start|Stop`, XL2
    /// `INIT START|STOP` (and `*RST` of a running meter), Svantek
    /// `#1,S1;` / `#1,S0;`. Sent when the meter acts on the command, before
    /// its answer is written. (A power cycle stops a meter without one: its
    /// own event says so.)
    Measure {
        /// The family whose meter it is.
        family: Family,
        /// Whether a measurement runs now.
        running: bool,
    },
    /// The meter accepted a clock setting (NL-43 `Clock,...`). Offsets are
    /// the meter's clock minus real UTC, in seconds, just before and just
    /// after the setting (to the millisecond).
    ClockSet {
        /// The family whose meter it is.
        family: Family,
        /// The offset the setting corrected.
        offset_before_s: f64,
        /// The offset it left (the setting has whole seconds).
        offset_after_s: f64,
    },
    /// The meter lost power and came back ([`crate::Simulator::power_cycle`]):
    /// the link was dropped and the meter is stopped (the Casella, which has
    /// no start command, measures again).
    PowerCycle {
        /// The family whose meter it is.
        family: Family,
        /// Whether it came back with sleep mode On (NL-43 only; always
        /// `false` for the others).
        asleep: bool,
    },
    /// The NL-43 fell asleep (sleep mode On, `sleep_after` without a key
    /// press): a TCP link is closed, later ones are never answered, a pty
    /// is read and ignored.
    Asleep,
    /// The NL-43 woke up ([`crate::Simulator::wake`], `SIGUSR2`, or a power
    /// cycle of a sleeping meter).
    Awake,
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

    /// Counts and announces a reading.
    pub(crate) fn reading(
        &self,
        family: Family,
        metrics: Metrics,
        device_time: Option<String>,
        replayed: bool,
    ) {
        self.record(|s| {
            s.readings += 1;
            Some(SimEvent::Reading {
                family,
                n: s.readings,
                metrics,
                device_time,
                replayed,
            })
        });
    }

    /// Announces a change of the run state.
    pub(crate) fn measure(&self, family: Family, running: bool) {
        self.event(SimEvent::Measure { family, running });
    }

    /// Counts and announces an accepted clock setting (offsets in seconds).
    pub(crate) fn clock_set(&self, family: Family, before: f64, after: f64) {
        let millis = |s: f64| (s * 1000.0).round() / 1000.0;
        self.record(|s| {
            s.clock_sets += 1;
            Some(SimEvent::ClockSet {
                family,
                offset_before_s: millis(before),
                offset_after_s: millis(after),
            })
        });
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

/// `2026-12-02T15:23:45Z` for Unix seconds `secs` (`None` out of chrono's range).
pub(crate) fn utc_text(secs: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(secs, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
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
        let mut metrics = Metrics::new();
        metrics.push_text("lp", Some("53,8"));
        metrics.push_text("leq", Some("-.-"));
        metrics.push_text("lpeak", Some("76.92"));
        let reading = SimEvent::Reading {
            family: Family::Xl2,
            n: 1,
            metrics,
            device_time: None,
            replayed: false,
        };
        assert_eq!(
            serde_json::to_string(&reading).ok().as_deref(),
            Some(
                r#"{"event":"reading","family":"xl2","n":1,"metrics":{"lp":53.8,"leq":null,"lpeak":76.92},"device_time":null,"replayed":false}"#
            )
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

    #[test]
    fn meter_care_events_serialise() {
        let cases = [
            (
                SimEvent::Measure {
                    family: Family::Nl43,
                    running: true,
                },
                r#"{"event":"measure","family":"nl43","running":true}"#,
            ),
            (
                SimEvent::ClockSet {
                    family: Family::Nl43,
                    offset_before_s: 12.5,
                    offset_after_s: -0.25,
                },
                r#"{"event":"clock_set","family":"nl43","offset_before_s":12.5,"offset_after_s":-0.25}"#,
            ),
            (
                SimEvent::PowerCycle {
                    family: Family::Xl2,
                    asleep: false,
                },
                r#"{"event":"power_cycle","family":"xl2","asleep":false}"#,
            ),
            (SimEvent::Asleep, r#"{"event":"asleep"}"#),
            (SimEvent::Awake, r#"{"event":"awake"}"#),
        ];
        for (event, json) in cases {
            assert_eq!(serde_json::to_string(&event).ok().as_deref(), Some(json));
        }
    }
}
