//! Wiring and lifetime: opens the buffer, builds the hub, starts one task
//! per device, the uplink (when `[fleet]` is enabled), the MQTT publisher
//! and the chosen printer, reloads on `SIGHUP`, and stops them all on one
//! signal.
//!
//! Reload (`SIGHUP`): the config file is read and validated again; a
//! broken file is reported and changes nothing. Otherwise every section
//! takes effect or is reported as waiting for a restart ([`crate::reload`]
//! says which is which):
//! - the device list ([`Devices::apply`]): an unchanged meter keeps its task
//!   and its one connection, a changed one reconnects with the new
//!   settings, a removed one is closed, a new one started;
//! - `[fleet]`: new tokens go to the running uplink; any other change
//!   stops the uplink, waits for it to end, and starts one with the new
//!   table (or none: `enabled = false` stops pushing at once);
//! - `[mqtt]`: the publisher is stopped (it says goodbye) and a new one
//!   started when the table or the meter list changed;
//! - `api.tokens` and `api.stream_max` go to the API's state;
//! - keys only a restart applies are logged in one line and listed in
//!   `/v1/status` as `needs_restart`.
//!
//! No buffered data is touched by a reload.
//!
//! Shutdown: one [`CancellationToken`] fans out to every task; [`run`]
//! waits for all of them, up to [`SHUTDOWN_GRACE`], then closes the hub's
//! durable sinks so the buffer writer commits what it holds and ends.

use crate::api;
use crate::buffer::{self, BufferError, BufferSlot, OpenReport, Start, WriterHandle};
use crate::clock::WallClock;
use crate::config::Config;
use crate::device::{DeviceTask, MeterList, StatusCell};
use crate::fanout::Hub;
use crate::mqtt::MqttPublisher;
use crate::notify::{Liveness, Notifier, status_counts, status_line};
use crate::printer::{self, PrintMode};
use crate::reload::{FleetChange, fleet_change, restart_keys};
use crate::uplink::heartbeat::{self, Heartbeat};
use crate::uplink::{
    FleetStatus, FleetStatusCell, UPLINK_EVENTS, Uplink, UplinkError, UplinkEvent,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
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
    /// The config file the config was loaded from, read again on `SIGHUP`
    /// and shown in status (none: no reload).
    pub config_source: Option<crate::config::Source>,
}

impl Options {
    /// Printing `print`, the system clock, reloading from `config_source`'s file.
    pub fn new(print: PrintMode, config_source: Option<crate::config::Source>) -> Options {
        Options {
            print,
            clock: WallClock::system(),
            config_source,
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
    /// The fleet uplink's status (`disabled` while `[fleet]` is off); the
    /// same cell across reloads that replace the uplink.
    pub fleet: FleetStatusCell,
    /// Where the API listens (the port is chosen by the OS for `:0`).
    pub api_addr: std::net::SocketAddr,
    /// The API's state (its device list follows reloads).
    pub api: api::ApiState,
    /// What a reload can change.
    live: Live,
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
    let fleet: FleetStatusCell = Arc::new(Mutex::new(FleetStatus::disabled()));
    let (uplink_events, _) = broadcast::channel(UPLINK_EVENTS);
    // Subscribed before anything starts, so it sees every event.
    if let Some(printer) = printer::start(
        options.print,
        hub.subscribe(),
        Some(uplink_events.subscribe()),
    ) {
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = printer => {}
            }
        });
    }
    let registry = Devices {
        hub: hub.clone(),
        clock: options.clock.clone(),
        clock_trusted: config.gateway.clock_trusted,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        running: Vec::new(),
    };
    let mut live = Live {
        started: config.clone(),
        running: config.clone(),
        devices: registry,
        uplink: None,
        fleet: fleet.clone(),
        uplink_events,
        mqtt: None,
        buffer: slot.clone(),
        meters: MeterList::default(),
        started_at: std::time::Instant::now(),
        limits: crate::limits::start(config, &hub, &slot, &options.clock, tracker, shutdown),
    };
    // Started before the device tasks, so it sees every state change.
    if let Some(mqtt) = &config.mqtt {
        live.mqtt = Some(live.start_mqtt(mqtt, &config.devices)?);
    }
    for device in &config.devices {
        let running = live.devices.launch(device.clone());
        live.devices.running.push(running);
    }
    // Before the uplink and its heartbeat start, so the first heartbeat
    // names every meter.
    *lock_list(&live.meters) = live.devices.cells();
    if config.fleet.enabled {
        // An uplink that cannot start (a TLS file missing or unreadable)
        // stops nothing else: readings buffer, status says why, and a
        // reload with the file in place starts it.
        match live.start_uplink(&config.fleet) {
            Ok(running) => live.uplink = Some(running),
            Err(e) => {
                tracing::error!(
                    "the fleet uplink cannot start: {e}; readings keep buffering, fix it and reload (systemctl reload slmd)"
                );
                let mut status = fleet.lock().unwrap_or_else(PoisonError::into_inner);
                status.enabled = true;
                status.state = crate::uplink::FleetState::Failed;
                status.last_error = Some(e.to_string());
            }
        }
    }
    let devices = live.devices.cells();
    let (api_addr, api) = start_api(config, &hub, &slot, &devices, &fleet, tracker, shutdown)?;
    if let Some(limits) = &live.limits {
        api.set_limits(api::alerts::LimitsApi {
            status: limits.handle.status.clone(),
            deliveries: limits.deliveries(),
            intervals: config.levels.intervals.clone(),
        });
    }
    Ok(Gateway {
        id: config.gateway.id.clone(),
        hub,
        buffer: slot,
        devices,
        fleet,
        api_addr,
        api,
        live,
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
        api,
        mut live,
        writer,
        ..
    } = gateway;
    let notifier = Notifier::from_env();
    // The meters the status line and the watchdog look at; a reload
    // replaces them.
    let current = live.meters.clone();
    if let Some(source) = options.config_source.clone() {
        let path = source.file.clone();
        api.set_config_source(source);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(StartError::Signal)?;
        let stop = shutdown.clone();
        let notifier = notifier.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    Some(()) = hangup.recv() => {
                        notifier.reloading();
                        live.reload(&path, &api).await;
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
    // The fleet cell outlives a replaced uplink: a new one resets it.
    let mut liveness = Liveness::new().with_fleet(fleet.clone());
    loop {
        tokio::select! {
            // Stop.
            () = shutdown.cancelled() => break,
            // Time to report.
            _ = tick.tick() => {
                let cells = lock_list(&current).clone();
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
    let listener = api_listener(listen).map_err(bind_error)?;
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

/// Connections the kernel may hold for the API before it accepts them: a
/// burst of connections (a flood, or many browsers at once) waits there
/// instead of having its SYNs dropped, which would cost a real client a
/// one-second retransmit.
const API_BACKLOG: i32 = 1024;

/// The API's listening socket, non-blocking, with [`API_BACKLOG`].
fn api_listener(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(API_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running device tasks, so a reload can keep, restart, stop or start
/// each one.
struct Devices {
    /// Where readings go.
    hub: Arc<Hub>,
    /// Where timestamps come from.
    clock: WallClock,
    /// `[gateway].clock_trusted` (meter clocks may be set from ours).
    clock_trusted: bool,
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
        let task = DeviceTask::new(config.clone(), self.hub.clone())
            .with_clock(self.clock.clone())
            .with_clock_trusted(self.clock_trusted);
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

/// A task a reload can stop and replace.
struct Replaceable {
    /// Stops it.
    stop: CancellationToken,
    /// Ends when it has stopped.
    done: JoinHandle<()>,
}

impl Replaceable {
    /// Stops the task and waits for it (up to [`SHUTDOWN_GRACE`]).
    async fn stop(self, what: &str) {
        self.stop.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.done)
            .await
            .is_err()
        {
            tracing::warn!(
                "the {what} did not stop within {}s of a reload; replacing it anyway",
                SHUTDOWN_GRACE.as_secs()
            );
        }
    }
}

/// The running uplinks: the HTTP push and/or the MQTT one, each with its
/// heartbeat and alert events.
struct RunningUplink {
    /// Their tasks, in the order they are stopped: heartbeats and events
    /// (never inside a push: one never waits for the other), the pushes,
    /// and the MQTT link last (the others publish through it).
    tasks: Vec<(&'static str, Replaceable)>,
    /// Where reloaded tokens go (one per transport).
    reloads: Vec<tokio::sync::watch::Sender<crate::config::FleetConfig>>,
}

impl RunningUplink {
    /// Stops every task, in order, waiting for each.
    async fn stop(self) {
        for (what, task) in self.tasks {
            task.stop(what).await;
        }
    }
}

/// What a reload can change, and the configs it compares against.
struct Live {
    /// The config at start: keys that only a restart applies are compared
    /// with it.
    started: Config,
    /// The config in effect (the last one loaded).
    running: Config,
    /// The device tasks.
    devices: Devices,
    /// The uplink, while `[fleet]` is enabled.
    uplink: Option<RunningUplink>,
    /// The fleet status every uplink reports into (the API reads it).
    fleet: FleetStatusCell,
    /// Every uplink's announcements (the printer listens).
    uplink_events: broadcast::Sender<UplinkEvent>,
    /// The MQTT publisher, while `[mqtt]` is set.
    mqtt: Option<Replaceable>,
    /// Where the uplink reads from.
    buffer: BufferSlot,
    /// The meters configured now, for the heartbeat.
    meters: MeterList,
    /// When slmd started (the heartbeat's uptime).
    started_at: std::time::Instant,
    /// The limits part, when configured (the uplink delivers its events).
    limits: Option<crate::limits::LimitsRuntime>,
}

/// The meter list, tolerant of a poisoned lock (plain data).
fn lock_list(list: &MeterList) -> std::sync::MutexGuard<'_, Vec<StatusCell>> {
    list.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Live {
    /// Starts the uplinks `fleet` asks for (with the started gateway id),
    /// reporting into the shared status cell and event channel; with both
    /// transports the MQTT one reports into a cell of its own, shown as
    /// `fleet.mqtt`.
    fn start_uplink(
        &self,
        fleet: &crate::config::FleetConfig,
    ) -> Result<RunningUplink, UplinkError> {
        let gateway = self.started.gateway.id.clone();
        let sources = || heartbeat::Sources {
            gateway: gateway.clone(),
            started: self.started_at,
            hub: self.devices.hub.clone(),
            meters: self.meters.clone(),
            buffer: self.buffer.clone(),
        };
        let stop = self.devices.shutdown.child_token();
        let mut first = Vec::new();
        let mut pushes = Vec::new();
        let mut last = Vec::new();
        let mut reloads = Vec::new();
        let spawn = |list: &mut Vec<(&'static str, Replaceable)>,
                     what: &'static str,
                     task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                     token: CancellationToken| {
            let done = self.devices.tracker.spawn(task);
            list.push((what, Replaceable { stop: token, done }));
        };
        // Everything that can fail is built before any task starts, so a
        // refusal leaves nothing half running.
        let mqtt = if fleet.transport.mqtt() {
            let status = if fleet.transport.http() {
                Arc::new(Mutex::new(FleetStatus::disabled()))
            } else {
                self.fleet.clone()
            };
            let (reload, reloaded) = tokio::sync::watch::channel(fleet.clone());
            let (link, handle) = crate::uplink::mqtt::Link::new(
                fleet,
                &gateway,
                status.clone(),
                self.uplink_events.clone(),
                reloaded,
            )?;
            Some((status, reload, link, handle))
        } else {
            None
        };
        if fleet.transport.http() {
            let (uplink, handle) = Uplink::with_shared(
                fleet.clone(),
                gateway.clone(),
                self.buffer.clone(),
                self.fleet.clone(),
                self.uplink_events.clone(),
            )?;
            let heartbeat = Heartbeat::new(
                fleet.clone(),
                sources(),
                self.fleet.clone(),
                handle.reload.subscribe(),
            )?;
            if let Some(limits) = &self.limits {
                let sink = crate::uplink::events::FleetEvents::new(
                    fleet,
                    gateway.clone(),
                    handle.reload.subscribe(),
                )?;
                let token = stop.child_token();
                let task = self.deliver_events(sink, limits, fleet, token.clone());
                spawn(&mut first, "fleet alert events", task, token);
            }
            let token = stop.child_token();
            spawn(
                &mut first,
                "fleet heartbeat",
                Box::pin(heartbeat.run(token.clone())),
                token,
            );
            let token = stop.child_token();
            spawn(
                &mut pushes,
                "fleet uplink",
                Box::pin(uplink.run(token.clone())),
                token,
            );
            reloads.push(handle.reload);
        }
        if let Some((status, reload, link, handle)) = mqtt {
            if fleet.transport.http() {
                self.fleet
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .mqtt = Some(status.clone());
            }
            *status.lock().unwrap_or_else(PoisonError::into_inner) = FleetStatus {
                enabled: true,
                transport: "mqtt",
                state: crate::uplink::FleetState::Starting,
                ..FleetStatus::disabled()
            };
            let push = crate::uplink::mqtt::MqttUplink::new(
                fleet,
                gateway.clone(),
                handle.clone(),
                self.buffer.clone(),
                status.clone(),
                self.uplink_events.clone(),
            );
            let heartbeat = Heartbeat::over_mqtt(
                fleet.clone(),
                sources(),
                status.clone(),
                reload.subscribe(),
                handle.clone(),
            );
            if let Some(limits) = &self.limits {
                let sink =
                    crate::uplink::mqtt::MqttEvents::new(fleet, gateway.clone(), handle.clone());
                let token = stop.child_token();
                let task = self.deliver_events(sink, limits, fleet, token.clone());
                spawn(&mut first, "fleet alert events (MQTT)", task, token);
            }
            let token = stop.child_token();
            spawn(
                &mut first,
                "fleet heartbeat (MQTT)",
                Box::pin(heartbeat.run(token.clone())),
                token,
            );
            let token = stop.child_token();
            spawn(
                &mut pushes,
                "fleet MQTT uplink",
                Box::pin(push.run(token.clone())),
                token,
            );
            let token = stop.child_token();
            spawn(
                &mut last,
                "fleet MQTT link",
                Box::pin(link.run(token.clone())),
                token,
            );
            reloads.push(reload);
        }
        let mut tasks = first;
        tasks.extend(pushes);
        tasks.extend(last);
        Ok(RunningUplink { tasks, reloads })
    }

    /// The delivery task of one fleet consumer of alert events.
    fn deliver_events<S: crate::limits::deliver::EventSink + 'static>(
        &self,
        sink: S,
        limits: &crate::limits::LimitsRuntime,
        fleet: &crate::config::FleetConfig,
        stop: CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(crate::limits::deliver::run(
            sink,
            self.buffer.clone(),
            limits.handle.events.clone(),
            crate::limits::deliver::Retry {
                min: fleet.retry_min,
                max: fleet.retry_max,
            },
            limits.fleet.clone(),
            stop,
        ))
    }

    /// Starts an MQTT publisher announcing `devices`.
    fn start_mqtt(
        &self,
        mqtt: &crate::config::MqttConfig,
        devices: &[crate::config::DeviceConfig],
    ) -> Result<Replaceable, crate::mqtt::MqttError> {
        let ids = devices.iter().map(|d| Arc::from(d.id.as_str())).collect();
        let publisher = MqttPublisher::new(mqtt, &self.started.gateway.id, ids)?;
        let stop = self.devices.shutdown.child_token();
        let done = self
            .devices
            .tracker
            .spawn(publisher.run(self.devices.hub.subscribe(), stop.clone()));
        Ok(Replaceable { stop, done })
    }

    /// Reads the config again and applies it (see the module doc); a file
    /// that does not load changes nothing.
    async fn reload(&mut self, path: &std::path::Path, api: &api::ApiState) {
        // A reload is a moment an operator expects the disk to be up to
        // date (it often comes before a planned power-off): the readings
        // held for the commit interval are committed now.
        if let Some(buffer) = self.buffer.get() {
            buffer.commit_soon();
        }
        let config = match crate::config::load_source(path) {
            Ok((config, source)) => {
                api.set_config_source(source);
                config
            }
            Err(e) => {
                tracing::error!(
                    "SIGHUP: configuration not reloaded, the running one stays in effect: {e}"
                );
                return;
            }
        };
        let changes = self.devices.apply(&config.devices);
        *lock_list(&self.meters) = self.devices.cells();
        api.set_devices(self.devices.cells());
        api.apply(&config.api);
        let fleet = self.apply_fleet(&config.fleet).await;
        let mqtt = self.apply_mqtt(&config).await;
        let restart = restart_keys(&self.started, &config);
        api.set_needs_restart(restart.clone());
        self.running = config;
        tracing::info!(
            file = %path.display(),
            kept = changes.kept.len(),
            restarted = ?changes.restarted,
            stopped = ?changes.stopped,
            started = ?changes.started,
            "SIGHUP: configuration reloaded; meters: {} unchanged, {} restarted, {} removed, {} added; fleet: {fleet}; mqtt: {mqtt}",
            changes.kept.len(),
            changes.restarted.len(),
            changes.stopped.len(),
            changes.started.len()
        );
        if !restart.is_empty() {
            tracing::warn!(
                keys = ?restart,
                "SIGHUP: changed settings wait for a restart (systemctl restart slmd): {}",
                restart.join(", ")
            );
        }
    }

    /// Applies a reloaded `[fleet]`; says what it did.
    async fn apply_fleet(&mut self, file: &crate::config::FleetConfig) -> String {
        let keys = match fleet_change(&self.running.fleet, file) {
            FleetChange::Same if self.uplink.is_some() || !file.enabled => {
                return "unchanged".to_owned();
            }
            // Enabled but not running: it could not start before (a TLS
            // file); try again.
            FleetChange::Same => "nothing".to_owned(),
            FleetChange::Tokens => match &self.uplink {
                Some(running) => {
                    for reload in &running.reloads {
                        reload.send_replace(file.clone());
                    }
                    return "tokens reloaded".to_owned();
                }
                None if !file.enabled => return "tokens changed (pushing is off)".to_owned(),
                // Enabled but not running (it could not start before).
                None => "tokens".to_owned(),
            },
            FleetChange::Keys(keys) => keys.join(", "),
        };
        // The old one ends first: two uplinks never push at once.
        if let Some(old) = self.uplink.take() {
            old.stop().await;
        }
        *self.fleet.lock().unwrap_or_else(PoisonError::into_inner) = FleetStatus::disabled();
        if !file.enabled {
            return format!("{keys} changed, pushing off");
        }
        match self.start_uplink(file) {
            Ok(next) => {
                self.uplink = Some(next);
                format!("{keys} changed, uplink restarted")
            }
            Err(e) => {
                tracing::error!("SIGHUP: the fleet uplink cannot start: {e}");
                format!("{keys} changed, uplink not started: {e}")
            }
        }
    }

    /// Applies a reloaded `[mqtt]` (and meter list); says what it did.
    async fn apply_mqtt(&mut self, file: &Config) -> String {
        let ids = |c: &Config| c.devices.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        if file.mqtt == self.running.mqtt && ids(file) == ids(&self.running) {
            return if file.mqtt.is_some() {
                "unchanged"
            } else {
                "off"
            }
            .to_owned();
        }
        if let Some(old) = self.mqtt.take() {
            old.stop("MQTT publisher").await;
        }
        let Some(mqtt) = &file.mqtt else {
            return "stopped".to_owned();
        };
        match self.start_mqtt(mqtt, &file.devices) {
            Ok(publisher) => {
                self.mqtt = Some(publisher);
                "restarted".to_owned()
            }
            Err(e) => {
                tracing::error!("SIGHUP: MQTT not started: {e}");
                format!("not started: {e}")
            }
        }
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
