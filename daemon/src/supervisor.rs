//! Wiring and lifetime: builds the hub, starts one task per device and the
//! chosen printer, and stops them all on one signal.
//!
//! Shutdown: one [`CancellationToken`] fans out to every task; [`run`]
//! waits for all of them, up to [`SHUTDOWN_GRACE`], then names what is late.

use crate::config::Config;
use crate::device::{DeviceTask, StatusCell};
use crate::fanout::Hub;
use crate::printer::{self, PrintMode};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long tasks get to finish after shutdown is signalled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The running pipeline's shared parts (the API will serve these).
pub struct Gateway {
    /// Gateway id.
    pub id: String,
    /// The fan-out hub.
    pub hub: Arc<Hub>,
    /// One status cell per configured device, in config order.
    pub devices: Vec<StatusCell>,
}

/// Starts every part of the pipeline on `tracker`.
pub fn start(
    config: &Config,
    print: PrintMode,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Gateway {
    let hub = Hub::new(1);
    if let Some(printer) = printer::start(print, hub.subscribe()) {
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = printer => {}
            }
        });
    }
    let mut devices = Vec::with_capacity(config.devices.len());
    for device in &config.devices {
        let task = DeviceTask::new(device.clone(), hub.clone());
        devices.push(task.status.clone());
        tracker.spawn(task.run(shutdown.child_token()));
    }
    Gateway {
        id: config.gateway.id.clone(),
        hub,
        devices,
    }
}

/// Runs the pipeline until `shutdown` is cancelled, then waits for every task.
pub async fn run(config: Config, print: PrintMode, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let gateway = start(&config, print, &tracker, &shutdown);
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
