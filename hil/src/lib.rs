//! Hardware-in-the-loop kit for slmd: simulated sound level meters (Rion
//! NL-43, NTi XL2, Svantek SVAN 97x, Casella CEL-63x) with fault injection,
//! served over TCP or a pseudo-terminal.
//!
//! The NL-43 simulator is built on the same protocol facts as the daemon:
//! command parsing, result codes, the `DOD?` line, the clock form and the
//! framing all come from `firmware-bridge`, and the rules from
//! `protocols/nl43.md`. The other families ([`Family`]) are deliberately
//! *not* built on the daemon's codecs: they are written from their protocol
//! notes alone, so the codecs are checked against an independent reading.
//!
//! Layout (one module per role):
//! - [`config`]: [`SimConfig`] and [`Faults`], and the text forms the CLI
//!   accepts for durations and stalls.
//! - `levels`: the 10 Hz sound level walk, steered by [`LevelControl`]
//!   (offset, calm), and the integration of a measurement (Leq, LE, Lmax,
//!   Lmin, Lpeak, percentiles) with the meter's invariants.
//! - `meter`: the meter's state and its answer to one command line,
//!   including the pacing rules; no I/O.
//! - `session`: one NL-43 link's conversation: framing, writing answers,
//!   `DRD?` streaming, and the per-answer faults (echo, junk, prompts, split,
//!   stall, silence).
//! - `family`: the other families' personalities (XL2, Svantek, Casella),
//!   written from their protocol notes independently of the daemon's codecs,
//!   and the one generic session loop that serves them with the same faults.
//! - [`report`]: [`SimStats`] and [`SimEvent`], and the one place both are
//!   updated.
//! - `tcp`: the TCP listener (one client at a time).
//! - [`pty`]: the pseudo-terminal link ([`PtyMeter`]).
//! - [`cli`]: what the `slm-sim` and `fleet-sim` binaries share (JSON lines
//!   on stdout, signals, the print-until-stopped loop).
//! - [`fleet`]: the fleet ingest server simulator ([`fleet::FleetSim`],
//!   SPEC §7), served by `fleet-sim`.
//! - [`scenario`]: the scenario runner of `slm-hil` (scenario files, the
//!   timeline, the checks, JUnit XML).
//!
//! The [`Simulator`] is the meter: cloning it gives another handle to the
//! same meter, whose state (measuring, echo, clock, pacing, stored records)
//! persists across connections. Link-level faults (`drop_every`) are applied
//! by whoever serves the link; the silence window runs from
//! [`Simulator::new`].
//!
//! Meter care (what slmd's `keep_measuring`, `no_sleep` and `sync_clock`
//! are tested against): [`Simulator::power_cycle`] ends the link being
//! served (a pty is re-created, as on `drop_every`) and brings the meter
//! back stopped; an NL-43 with sleep mode On falls asleep `sleep_after`
//! after power-up or [`Simulator::wake`], which closes a TCP link (later
//! ones are accepted and never answered) and leaves a pty read and
//! ignored. Both reach the sessions through one watch channel of `Power`
//! counts; falling asleep on time is a task started with the first link
//! served, like the silence window's.

pub mod cli;
pub mod config;
mod family;
pub mod fleet;
pub mod levels;
mod meter;
pub mod pty;
pub mod report;
pub mod scenario;
mod session;
mod tcp;

pub use config::{
    DEFAULT_SLEEP_AFTER, Family, Faults, ParseError, SimConfig, parse_drift_ppm, parse_duration,
    parse_probability, parse_stall,
};
pub use levels::LevelControl;
pub use meter::Recording;
pub use pty::PtyMeter;
pub use report::{Metrics, SimEvent, SimStats};

use meter::Meter;
use report::Recorder;
use session::Session;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A simulated meter of the configured family; clones share the same meter.
#[derive(Clone)]
pub struct Simulator {
    /// Everything the handles share.
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The meter and its surroundings, shared by every link.
pub(crate) struct Shared {
    /// How it was configured (never changes).
    pub(crate) config: SimConfig,
    /// When the simulator was created: the silence window counts from here.
    started: Instant,
    /// The NL-43 meter; locked only for synchronous work, never across
    /// `.await`. (Unused, but cheap, when another family is simulated.)
    meter: Mutex<Meter>,
    /// The meter of another family (`None` for the NL-43): same locking rule.
    personality: Option<Mutex<Box<dyn family::Personality>>>,
    /// Counters and events.
    pub(crate) recorder: Recorder,
    /// The task that announces the silence window has been started (once).
    silence_clock: AtomicBool,
    /// Power cycles and sleeps so far: a link ends when they change (see
    /// [`Simulator::run_link`]).
    power: watch::Sender<Power>,
    /// Wakes the sleep task when the moment the NL-43 falls asleep may have
    /// moved earlier (sleep mode turned on, a wake, a power cycle).
    sleep_timer: Notify,
    /// The task that puts the NL-43 to sleep on time has been started (once).
    sleep_clock: AtomicBool,
}

/// Counts of the events that end a link, as the sessions watch them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Power {
    /// Power cycles so far: every link ends.
    cycles: u64,
    /// Times the NL-43 fell asleep: a link that can be turned off (TCP, a
    /// stream) ends; a pty stays, read and ignored.
    sleeps: u64,
}

impl Shared {
    /// The meter, tolerant of a poisoned lock (a panic in one session must
    /// not take the meter down for the next).
    pub(crate) fn meter(&self) -> MutexGuard<'_, Meter> {
        self.meter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The silence fault's window, if configured: `[start, end)`.
    fn silent_window(&self) -> Option<(Instant, Instant)> {
        let after = self.config.faults.silent_after?;
        let start = self.started + after;
        Some((start, start + self.config.faults.silent_for))
    }

    /// Whether the meter ignores commands at `at`.
    pub(crate) fn is_silent(&self, at: Instant) -> bool {
        self.silent_window()
            .is_some_and(|(start, end)| start <= at && at < end)
    }

    /// Whether the NL-43 is asleep at `now` (never for other families).
    /// Falls asleep first if that is due, and then announces it and ends
    /// the links that sleep turns off: whoever looks first does it.
    pub(crate) fn asleep(&self, now: Instant) -> bool {
        if self.personality.is_some() {
            return false;
        }
        let (asleep, fell) = {
            let mut meter = self.meter();
            let fell = meter.fall_asleep_if_due(now);
            (meter.is_asleep(), fell)
        };
        if fell {
            tracing::info!("the meter fell asleep");
            self.recorder.event(SimEvent::Asleep);
            self.power.send_modify(|p| p.sleeps += 1);
        }
        asleep
    }

    /// The moment the meter falls asleep may have moved: the sleep task
    /// looks again.
    pub(crate) fn sleep_timer_changed(&self) {
        self.sleep_timer.notify_one();
    }
}

/// What a link is, for what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    /// A link sleep turns off (TCP, the NX-43EX's LAN; any stream).
    Network,
    /// A serial line (pty): it stays while the meter sleeps.
    Serial,
}

/// Why serving one link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// The peer closed it, or it failed.
    Closed(std::io::Result<()>),
    /// The `drop_every` fault closed it.
    Dropped,
    /// The meter was power-cycled.
    PowerCycled,
    /// The meter fell asleep (a network link only).
    Asleep,
    /// Shutdown was requested.
    Shutdown,
}

impl Simulator {
    /// A meter configured by `config`, powered up now.
    pub fn new(config: SimConfig) -> Simulator {
        let now = Instant::now();
        let meter = Meter::new(&config, now);
        let personality = family::personality(&config, now).map(Mutex::new);
        Simulator {
            shared: Arc::new(Shared {
                config,
                started: now,
                meter: Mutex::new(meter),
                personality,
                recorder: Recorder::new(),
                silence_clock: AtomicBool::new(false),
                power: watch::Sender::new(Power::default()),
                sleep_timer: Notify::new(),
                sleep_clock: AtomicBool::new(false),
            }),
        }
    }

    /// Power off and on, now: the link being served ends (TCP: the
    /// connection is closed; pty: it is torn down and re-created behind its
    /// link, as on `drop_every`), and the meter comes back stopped, with
    /// nothing integrated and an empty error queue and snapshot (XL2),
    /// awake. Its clock (a battery-backed RTC), settings and stored records
    /// are kept, and so are the simulator's counters. The Casella, which
    /// has no start command, comes back measuring and pushes again. With
    /// `asleep` an NL-43 comes back with sleep mode On (else its setting is
    /// kept); other families have no sleep mode and ignore it.
    ///
    /// Announced as [`SimEvent::PowerCycle`] (then [`SimEvent::Awake`] if a
    /// sleeping NL-43 was cycled), counted in `power_cycles`.
    pub fn power_cycle(&self, asleep: bool) {
        let shared = &*self.shared;
        let now = Instant::now();
        let family = shared.config.family;
        let (asleep, was_asleep) = match &shared.personality {
            None => (asleep, shared.meter().power_cycle(now, asleep)),
            Some(meter) => {
                let mut meter = meter.lock().unwrap_or_else(PoisonError::into_inner);
                meter.power_cycle(now);
                (false, false)
            }
        };
        tracing::info!(%family, asleep, "power cycle");
        shared.recorder.record(|s| {
            s.power_cycles += 1;
            Some(SimEvent::PowerCycle { family, asleep })
        });
        if was_asleep {
            shared.recorder.event(SimEvent::Awake);
        }
        shared.power.send_modify(|p| p.cycles += 1);
        shared.sleep_timer_changed();
    }

    /// A key press, now (NL-43): wakes a sleeping meter (announced as
    /// [`SimEvent::Awake`]) and restarts its sleep timer either way, so
    /// with sleep mode On it falls asleep again `sleep_after` from now.
    /// Links accepted while it slept are answered from now on. Other
    /// families do not sleep: nothing happens.
    pub fn wake(&self) {
        if self.shared.personality.is_some() {
            return;
        }
        let now = Instant::now();
        // A sleep that was due has happened, even if nobody looked yet.
        self.shared.asleep(now);
        if self.shared.meter().wake(now) {
            tracing::info!("the meter woke up");
            self.shared.recorder.event(SimEvent::Awake);
        }
        self.shared.sleep_timer_changed();
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.recorder.snapshot()
    }

    /// A receiver of every event from now on.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<SimEvent> {
        self.shared.recorder.subscribe()
    }

    /// Serves TCP clients from `listener`, one at a time, until `shutdown`.
    ///
    /// A client that connects while another is served is accepted and
    /// closed at once (counted as refused); the slot is waited for briefly
    /// first, so a client that reconnects right after closing is not refused
    /// for a race it cannot see. TCP_NODELAY is set on every client socket.
    /// Returns when `shutdown` is cancelled and the client's session ended.
    pub async fn serve_tcp(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        self.start_clocks(&shutdown);
        tcp::serve(self, listener, shutdown).await
    }

    /// Creates a pseudo-terminal meter; with `link`, a symlink to its slave
    /// is created there (atomically) and kept pointing at the current pty.
    /// Serve it with [`PtyMeter::serve`].
    pub fn open_pty(&self, link: Option<PathBuf>) -> std::io::Result<PtyMeter> {
        PtyMeter::open(self.clone(), link)
    }

    /// Serves one connection over any byte stream (e.g. a
    /// `tokio::io::duplex` in tests) until the peer closes it, `drop_every`
    /// closes it, a power cycle or the meter falling asleep ends it (as a
    /// TCP link), or `shutdown`. Counted as a connection; it does not take
    /// the TCP client slot.
    pub async fn serve_stream<S>(&self, io: S, shutdown: CancellationToken) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.start_clocks(&shutdown);
        let number = self.connected();
        let end = self
            .run_link(io, number, LinkKind::Network, &shutdown)
            .await;
        self.disconnected(&end);
        match end {
            LinkEnd::Closed(result) => result,
            LinkEnd::Dropped | LinkEnd::PowerCycled | LinkEnd::Asleep | LinkEnd::Shutdown => Ok(()),
        }
    }

    /// Counts a new connection and announces it; returns its number.
    pub(crate) fn connected(&self) -> u64 {
        let mut number = 0;
        self.shared.recorder.record(|s| {
            s.connections_accepted += 1;
            number = s.connections_accepted;
            Some(SimEvent::Connected { total: number })
        });
        number
    }

    /// Announces the end of a connection (and the drop fault, if it was one).
    pub(crate) fn disconnected(&self, end: &LinkEnd) {
        match end {
            LinkEnd::Dropped => {
                self.shared.recorder.record(|s| {
                    s.links_dropped += 1;
                    Some(SimEvent::Fault {
                        kind: "drop".to_owned(),
                    })
                });
            }
            LinkEnd::Closed(Err(e)) => tracing::debug!("link failed: {e}"),
            LinkEnd::Closed(Ok(()))
            | LinkEnd::PowerCycled
            | LinkEnd::Asleep
            | LinkEnd::Shutdown => {}
        }
        self.shared.recorder.event(SimEvent::Disconnected);
    }

    /// Runs a session on `io` until it ends, the `drop_every` fault fires,
    /// the meter is power-cycled or (a network link) falls asleep, or
    /// `shutdown`.
    pub(crate) async fn run_link<S>(
        &self,
        io: S,
        number: u64,
        kind: LinkKind,
        shutdown: &CancellationToken,
    ) -> LinkEnd
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let shared = &*self.shared;
        // Subscribed before the session starts: only what happens from now
        // on ends this link (one accepted while the meter sleeps stays).
        let mut power = shared.power.subscribe();
        let at_start = *power.borrow_and_update();
        let power_off = async move {
            loop {
                if power.changed().await.is_err() {
                    // Cannot happen: `shared` holds the sender.
                    std::future::pending::<()>().await;
                }
                let now = *power.borrow_and_update();
                if now.cycles != at_start.cycles {
                    return LinkEnd::PowerCycled;
                }
                if kind == LinkKind::Network && now.sleeps != at_start.sleeps {
                    return LinkEnd::Asleep;
                }
            }
        };
        let session = async move {
            match &shared.personality {
                None => Session::new(shared, io, number).run().await,
                Some(meter) => {
                    family::FamilySession::new(shared, meter, io, number)
                        .run()
                        .await
                }
            }
        };
        let drop_at = self
            .shared
            .config
            .faults
            .drop_every
            .map(|d| Instant::now() + d);
        let dropped = async {
            match drop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The peer closed the link, or it failed.
            result = session => LinkEnd::Closed(result),
            // The drop fault: the session (and with it the link) is dropped mid-whatever.
            () = dropped => LinkEnd::Dropped,
            // A power cycle, or sleep turning the LAN off: the same, for the meter's reasons.
            end = power_off => end,
            // Shutdown wins over anything in progress.
            () = shutdown.cancelled() => LinkEnd::Shutdown,
        }
    }

    /// Starts (once each) the tasks that keep time for the meter: the
    /// silence window's and the NL-43's sleep.
    pub(crate) fn start_clocks(&self, shutdown: &CancellationToken) {
        self.start_silence_clock(shutdown);
        self.start_sleep_clock(shutdown);
    }

    /// Starts (once, NL-43 only) the task that puts the meter to sleep on
    /// time, so a link is closed and `asleep` announced even when nothing
    /// is said on it.
    fn start_sleep_clock(&self, shutdown: &CancellationToken) {
        if self.shared.personality.is_some() || self.shared.sleep_clock.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let due = shared.meter().sleep_due();
                let at_due = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    // Sleep mode on, a wake, a power cycle: look again.
                    () = shared.sleep_timer.notified() => {}
                    // Due (unless the timer moved since: `asleep` checks).
                    () = at_due => {
                        shared.asleep(Instant::now());
                    }
                }
            }
        });
    }

    /// Starts (once) the task that announces the silence window as it opens
    /// and closes.
    fn start_silence_clock(&self, shutdown: &CancellationToken) {
        let Some((start, end)) = self.shared.silent_window() else {
            return;
        };
        if self.shared.silence_clock.swap(true, Ordering::SeqCst) || Instant::now() >= end {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            for (at, kind) in [(start, "silent_start"), (end, "silent_end")] {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(at) => shared.recorder.fault(kind),
                }
            }
        });
    }
}
