//! The TCP link: the NX-43EX LAN option's control port.
//!
//! One client at a time, as on the meter: a client that connects while
//! another is served is accepted and closed at once (counted as refused).
//! Before refusing, the accept loop waits up to [`SLOT_GRACE`] for the slot,
//! so a host that closes and reconnects straight away is not refused because
//! the old session had not yet seen its close. TCP_NODELAY is set so split
//! answers go out in their pieces.
//!
//! A power cycle closes the client's connection; so does an NL-43 falling
//! asleep. While it sleeps, clients are still accepted (the slot rule
//! holds) but never answered: a host sees answer timeouts where the real
//! meter, whose LAN is off, would let its connects time out.

use crate::{LinkEnd, LinkKind, Simulator};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a new client waits for the slot before it is refused.
pub const SLOT_GRACE: Duration = Duration::from_millis(100);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

pub(crate) async fn serve(
    sim: &Simulator,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slot = Arc::new(Semaphore::new(1));
    let sessions = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            // Stop taking clients; the one being served is told by the same token.
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("accept failed: {e}; retrying");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let permit = tokio::time::timeout(SLOT_GRACE, Arc::clone(&slot).acquire_owned()).await;
        let Ok(Ok(permit)) = permit else {
            tracing::info!(%peer, "client refused: another one is connected");
            sim.shared.recorder.record(|s| {
                s.connections_refused += 1;
                Some(crate::SimEvent::Refused {
                    total: s.connections_refused,
                })
            });
            drop(socket);
            continue;
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::warn!(%peer, "could not set TCP_NODELAY: {e}");
        }
        tracing::info!(%peer, "client connected");
        let number = sim.connected();
        let sim = sim.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            let end = sim
                .run_link(socket, number, LinkKind::Network, &shutdown)
                .await;
            match &end {
                LinkEnd::Dropped => tracing::info!(%peer, "client dropped (fault)"),
                LinkEnd::PowerCycled => tracing::info!(%peer, "client dropped (power cycle)"),
                LinkEnd::Asleep => tracing::info!(%peer, "client dropped (the meter fell asleep)"),
                LinkEnd::Closed(_) => tracing::info!(%peer, "client disconnected"),
                LinkEnd::Shutdown => {}
            }
            sim.disconnected(&end);
            drop(permit);
        });
    }
    sessions.close();
    sessions.wait().await;
    Ok(())
}
