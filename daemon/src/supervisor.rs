//! Wiring and lifetime: opens the buffer, builds the hub, starts one task
//! per device, the uplink (when `[fleet]` is enabled) and the chosen
//! printer, reloads on `SIGHUP`, and stops them all on one signal.
//!
//! Reload (`SIGHUP`): the config file is read and validated again; a
//! broken file is reported and changes nothing. Then the device list is
//! applied ([`Devices::apply`]: an unchanged meter keeps its task and its
//! one connection, a changed one reconnects with the new settings, a removed
//! one is closed, a new one started) and the fleet tokens take effect. No
//! buffered data is touched. Other settings (buffer, API, MQTT, fleet URL)
//! take effect at the next start.
//!
//! Shutdown: one [`CancellationToken`] fans out to every task; [`run`]
//! waits for all of them, up to [`SHUTDOWN_GRACE`], then closes the hub's
//! durable sinks so the buffer writer commits what it holds and ends.

use crate::api;
use crate::buffer::{self, BufferError, BufferSlot, OpenReport, Start, WriterHandle};
use crate::clock::WallClock;
use crate::config::Config;
use crate::device::{DeviceTask, StatusCell};
use crate::fanout::Hub;
use crate::mqtt::MqttPublisher;
use crate::notify::{Liveness, Notifier, status_counts, status_line};
use crate::printer::{self, PrintMode};
use crate::uplink::{FleetStatus, FleetStatusCell, Uplink, UplinkError, UplinkHandle};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long tasks get to finish after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Newest buffered records searched for each device's latest one at start.
const LATEST_SCAN: usize = 10_000;

/// Records the hub may queue for the buffer writer before counting them
/// lost (the writer moves them into its own bounded memory queue at once).
const WRITER_QUEUE: usize = 8192;

/// How the pipeline is run, beyond the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// What is printed on stdout.
    pub print: PrintMode,
    /// Where record timestamps come from.
    pub clock: WallClock,
    /// The config file, read again on `SIGHUP` (none: no reload).
    pub config_path: Option<PathBuf>,
}

impl Options {
    /// Printing `print`, the system clock, reloading from `config_path`.
    pub fn new(print: PrintMode, config_path: Option<PathBuf>) -> Options {
        Options {
            print,
            clock: WallClock::system(),
            config_path,
        }
    }
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The buffer could not be opened or its writer started.
    #[error(transparent)]
    Buffer(#[from] BufferError),
    /// The uplink could not be set up.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The API address cannot be listened on.
    #[error("cannot listen on {addr} for the API: {source}; set [api].listen to a free address")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The MQTT settings cannot be used.
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    /// A signal handler could not be installed.
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(std::io::Error),
}

/// The running pipeline's shared parts (the API will serve these).
pub struct Gateway {
    /// Gateway id.
    pub id: String,
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// The offline buffer, once open (at start, or later when the disk
    /// refused it at start).
    pub buffer: BufferSlot,
    /// One status cell per configured device, in config order.
    pub devices: Vec<StatusCell>,
    /// The fleet uplink's status (`disabled` when `[fleet]` is off).
    pub fleet: FleetStatusCell,
    /// The running uplink, when enabled.
    pub uplink: Option<UplinkHandle>,
    /// Where the API listens (the port is chosen by the OS for `:0`).
    pub api_addr: std::net::SocketAddr,
    /// The API's state (its device list follows reloads).
    pub api: api::ApiState,
    /// The running device tasks.
    registry: Devices,
    /// The buffer's writer thread, joined at shutdown.
    writer: WriterHandle,
}

/// Opens the buffer and starts every part of the pipeline on `tracker`.
pub fn start(
    config: &Config,
    options: &Options,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Gateway, StartError> {
    let settings = buffer::Settings::from_config(config);
    let slot = BufferSlot::default();
    let (hub, writer) = match buffer::open_or_defer(settings.clone())? {
        Start::Open(buffer, report) => {
            let counters = buffer.counters();
            match report {
                OpenReport::Created => {
                    tracing::info!(file = %buffer.path().display(), "buffer created")
                }
                OpenReport::Checked | OpenReport::PartlyChecked => tracing::info!(
                    file = %buffer.path().display(),
                    records = counters.stored,
                    unsent = counters.unsent,
                    next_seq = counters.next_seq,
                    "buffer opened"
                ),
                // The check and the salvage log what they found and did.
                OpenReport::MovedAside { .. } => {}
            }
            let hub = Hub::with_numbering(buffer.next_seq(), buffer.numbering());
            match buffer.latest_per_device(LATEST_SCAN) {
                Ok(latest) => hub.seed_latest(latest),
                Err(error) => tracing::warn!(
                    %error,
                    "cannot read the newest records back; live viewers see the next ones"
                ),
            }
            let writer = buffer.start_writer(hub.add_durable_sink(WRITER_QUEUE))?;
            let _ = slot.set(buffer);
            (hub, writer)
        }
        Start::Unavailable { error, numbering } => {
            tracing::error!(
                %error,
                first_seq = numbering.first_seq,
                "buffer unavailable at start; the live feed runs and readings wait in memory until it opens"
            );
            let hub = Hub::with_numbering(numbering.first_seq, numbering.numbering.clone());
            let sink = hub.add_durable_sink(WRITER_QUEUE);
            let writer = buffer::start_deferred(settings, slot.clone(), sink, numbering)?;
            (hub, writer)
        }
    };
    let uplink = if config.fleet.enabled {
        let (uplink, handle) = Uplink::new(
            config.fleet.clone(),
            config.gateway.id.clone(),
            slot.clone(),
        )?;
        tracker.spawn(uplink.run(shutdown.child_token()));
        Some(handle)
    } else {
        None
    };
    let fleet = uplink.as_ref().map_or_else(
        || Arc::new(Mutex::new(FleetStatus::disabled())),
        |u| u.status.clone(),
    );
    let uplink_events = uplink.as_ref().map(|u| u.events.subscribe());
    if let Some(printer) = printer::start(options.print, hub.subscribe(), uplink_events) {
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = printer => {}
            }
        });
    }
    // Subscribed before the device tasks start, so it sees every state change.
    if let Some(mqtt) = &config.mqtt {
        let ids = config
            .devices
            .iter()
            .map(|d| Arc::from(d.id.as_str()))
            .collect();
        let publisher = MqttPublisher::new(mqtt, &config.gateway.id, ids)?;
        tracker.spawn(publisher.run(hub.subscribe(), shutdown.child_token()));
    }
    let mut registry = Devices {
        hub: hub.clone(),
        clock: options.clock.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        running: Vec::new(),
    };
    for device in &config.devices {
        let running = registry.launch(device.clone());
        registry.running.push(running);
    }
    let devices = registry.cells();
    let (api_addr, api) = start_api(config, &hub, &slot, &devices, &fleet, tracker, shutdown)?;
    Ok(Gateway {
        id: config.gateway.id.clone(),
        hub,
        buffer: slot,
        devices,
        fleet,
        uplink,
        api_addr,
        api,
        registry,
        writer,
    })
}

/// Runs the pipeline until `shutdown` is cancelled, then waits for every
/// task and for the buffer to commit what it holds.
pub async fn run(
    config: Config,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let tracker = TaskTracker::new();
    let gateway = start(&config, &options, &tracker, &shutdown)?;
    let Gateway {
        id,
        hub,
        buffer,
        devices,
        fleet,
        uplink,
        api,
        mut registry,
        writer,
        ..
    } = gateway;
    let notifier = Notifier::from_env();
    // The meters the status line and the watchdog look at; a reload
    // replaces them.
    let current = Arc::new(Mutex::new(devices.clone()));
    if let Some(path) = options.config_path.clone() {
        let uplink = uplink.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signal)?;
        let stop = shutdown.clone();
        let notifier = notifier.clone();
        let current = current.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    Some(()) = hangup.recv() => {
                        notifier.reloading();
                        reload(&path, uplink.as_ref(), &mut registry, &api);
                        *current.lock().unwrap_or_else(PoisonError::into_inner) = registry.cells();
                        notifier.ready();
                    }
                }
            }
        });
    }
    // The buffer is open (or retrying on its own) and the API listens.
    notifier.ready();
    tracing::info!(gateway = %id, devices = devices.len(), "slmd running");
    // The main loop: STATUS= and, only when the parts that could hang are
    // seen to move, WATCHDOG=1 (a hung hub lock or buffer writer stops it,
    // and systemd restarts the daemon).
    let mut tick = tokio::time::interval(notifier.tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut liveness = Liveness::new();
    loop {
        tokio::select! {
            // Stop.
            () = shutdown.cancelled() => break,
            // Time to report.
            _ = tick.tick() => {
                let cells = current.lock().unwrap_or_else(PoisonError::into_inner).clone();
                if liveness.healthy(&hub, &cells, &buffer) {
                    notifier.watchdog();
                }
                notifier.status(&status_line(&status_counts(&cells, &buffer, &fleet)));
            }
        }
    }
    notifier.stopping();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tracker.len(),
            "tasks still running {}s after shutdown; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    // The devices have stopped, so nothing new arrives: let the writer finish.
    hub.close_durable_sinks();
    let joined = tokio::task::spawn_blocking(move || writer.join());
    if tokio::time::timeout(SHUTDOWN_GRACE, joined).await.is_err() {
        tracing::warn!(
            "buffer writer still committing {}s after shutdown; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    match buffer.get().map(|b| b.counters()) {
        Some(c) => tracing::info!(records = c.stored, unsent = c.unsent, "slmd stopped"),
        None => tracing::info!("slmd stopped (the buffer never opened)"),
    }
    Ok(())
}

/// Binds the API (before anything announces readiness, so a port in use
/// stops the start with a clear error) and serves it on `tracker`.
fn start_api(
    config: &Config,
    hub: &Arc<Hub>,
    buffer: &BufferSlot,
    devices: &[StatusCell],
    fleet: &FleetStatusCell,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(std::net::SocketAddr, api::ApiState), StartError> {
    let listen = config.api.listen;
    let bind_error = |source| StartError::Listen {
        addr: listen,
        source,
    };
    let listener = std::net::TcpListener::bind(listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let state = api::ApiState::new(
        &config.api,
        config.gateway.id.clone(),
        hub.clone(),
        buffer.clone(),
        devices.to_vec(),
        fleet.clone(),
    );
    let stop = shutdown.child_token();
    let served = state.clone();
    tracker.spawn(async move {
        if let Err(e) = api::serve(listener, served, stop).await {
            tracing::error!("the API stopped: {e}");
        }
    });
    Ok((addr, state))
}

/// The running device tasks, so a reload can keep, restart, stop or start
/// each one.
struct Devices {
    /// Where readings go.
    hub: Arc<Hub>,
    /// Where timestamps come from.
    clock: WallClock,
    /// Where tasks run (joined at shutdown).
    tracker: TaskTracker,
    /// The daemon's shutdown; each task gets a child token.
    shutdown: CancellationToken,
    /// In config order.
    running: Vec<Running>,
}

/// One device task.
struct Running {
    /// The config it runs with.
    config: crate::config::DeviceConfig,
    /// Its status.
    status: StatusCell,
    /// Stops this task alone.
    stop: CancellationToken,
}

/// What a reload did to the meters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceChanges {
    /// Unchanged: their task and connection carry on.
    pub kept: Vec<String>,
    /// Changed settings: reconnected with the new ones.
    pub restarted: Vec<String>,
    /// No longer configured: closed.
    pub stopped: Vec<String>,
    /// New: started.
    pub started: Vec<String>,
}

impl Devices {
    fn launch(&self, config: crate::config::DeviceConfig) -> Running {
        let task = DeviceTask::new(config.clone(), self.hub.clone()).with_clock(self.clock.clone());
        let status = task.status.clone();
        let stop = self.shutdown.child_token();
        self.tracker.spawn(task.run(stop.clone()));
        Running {
            config,
            status,
            stop,
        }
    }

    fn cells(&self) -> Vec<StatusCell> {
        self.running.iter().map(|r| r.status.clone()).collect()
    }

    /// Moves to `wanted`: an unchanged meter keeps its task (and so its one
    /// connection); a changed one is stopped and started anew; a removed
    /// one is stopped; a new one started. Buffered data is not touched.
    fn apply(&mut self, wanted: &[crate::config::DeviceConfig]) -> DeviceChanges {
        let mut changes = DeviceChanges::default();
        let mut old: Vec<Running> = std::mem::take(&mut self.running);
        for config in wanted {
            let position = old.iter().position(|r| r.config.id == config.id);
            let running = match position.map(|i| old.remove(i)) {
                Some(same) if same.config == *config => {
                    changes.kept.push(config.id.clone());
                    same
                }
                Some(changed) => {
                    changed.stop.cancel();
                    changes.restarted.push(config.id.clone());
                    self.launch(config.clone())
                }
                None => {
                    changes.started.push(config.id.clone());
                    self.launch(config.clone())
                }
            };
            self.running.push(running);
        }
        for gone in old {
            gone.stop.cancel();
            changes.stopped.push(gone.config.id.clone());
        }
        changes
    }
}

/// Reads the config again and applies what can change while running: the
/// device list and the fleet tokens.
fn reload(
    path: &std::path::Path,
    uplink: Option<&UplinkHandle>,
    registry: &mut Devices,
    api: &api::ApiState,
) {
    match crate::config::load(path) {
        Ok(config) => {
            let changes = registry.apply(&config.devices);
            api.set_devices(registry.cells());
            tracing::info!(
                file = %path.display(),
                kept = changes.kept.len(),
                restarted = ?changes.restarted,
                stopped = ?changes.stopped,
                started = ?changes.started,
                "SIGHUP: configuration reloaded; {} meters unchanged, {} restarted, {} removed, {} added",
                changes.kept.len(),
                changes.restarted.len(),
                changes.stopped.len(),
                changes.started.len()
            );
            match uplink {
                Some(uplink) => {
                    uplink.reload.send_replace(config.fleet);
                }
                None if config.fleet.enabled => tracing::warn!(
                    "SIGHUP: [fleet] is enabled in the file but was off at start; restart slmd to start pushing"
                ),
                None => {}
            }
        }
        Err(e) => tracing::error!(
            "SIGHUP: configuration not reloaded, the running one stays in effect: {e}"
        ),
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}
