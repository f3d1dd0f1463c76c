//! Wiring and lifetime: opens the buffer, builds the hub, starts one task
//! per device, the uplink (when `[fleet]` is enabled) and the chosen
//! printer, reloads on `SIGHUP`, and stops them all on one signal.
//!
//! Reload (`SIGHUP`): the config file is read and validated again; a
//! broken file is reported and changes nothing. The fleet tokens take
//! effect at once (no buffered data is touched, no device connection
//! dropped); other changes take effect at the next start.
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
use crate::printer::{self, PrintMode};
use crate::uplink::{FleetStatus, FleetStatusCell, Uplink, UplinkError, UplinkHandle};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
                // The salvage logs what it did in detail.
                OpenReport::Salvaged { .. } => {}
            }
            let hub = Hub::new(buffer.next_seq());
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
        Start::Unavailable { error, first_seq } => {
            tracing::error!(
                %error,
                first_seq,
                "buffer unavailable at start; the live feed runs and readings wait in memory until it opens"
            );
            let hub = Hub::new(first_seq);
            let sink = hub.add_durable_sink(WRITER_QUEUE);
            let writer = buffer::start_deferred(settings, slot.clone(), sink, first_seq)?;
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
    let mut devices = Vec::with_capacity(config.devices.len());
    for device in &config.devices {
        let task = DeviceTask::new(device.clone(), hub.clone()).with_clock(options.clock.clone());
        devices.push(task.status.clone());
        tracker.spawn(task.run(shutdown.child_token()));
    }
    let api_addr = start_api(config, &hub, &slot, &devices, &fleet, tracker, shutdown)?;
    Ok(Gateway {
        id: config.gateway.id.clone(),
        hub,
        buffer: slot,
        devices,
        fleet,
        uplink,
        api_addr,
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
    if let Some(path) = options.config_path.clone() {
        let uplink = gateway.uplink.clone();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signal)?;
        let stop = shutdown.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    Some(()) = hangup.recv() => reload(&path, uplink.as_ref()),
                }
            }
        });
    }
    tracing::info!(
        gateway = %gateway.id,
        devices = gateway.devices.len(),
        "slmd running"
    );
    shutdown.cancelled().await;
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
    gateway.hub.close_durable_sinks();
    let writer = gateway.writer;
    let joined = tokio::task::spawn_blocking(move || writer.join());
    if tokio::time::timeout(SHUTDOWN_GRACE, joined).await.is_err() {
        tracing::warn!(
            "buffer writer still committing {}s after shutdown; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    match gateway.buffer.get().map(|b| b.counters()) {
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
) -> Result<std::net::SocketAddr, StartError> {
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
    tracker.spawn(async move {
        if let Err(e) = api::serve(listener, state, stop).await {
            tracing::error!("the API stopped: {e}");
        }
    });
    Ok(addr)
}

/// Reads the config again and applies what can change while running.
fn reload(path: &std::path::Path, uplink: Option<&UplinkHandle>) {
    match crate::config::load(path) {
        Ok(config) => {
            tracing::info!(file = %path.display(), "SIGHUP: configuration read again");
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
