//! Plumbing the simulator binaries (`slm-sim`, `fleet-sim`) share: JSON
//! lines on stdout, logging on stderr, stopping on a signal, and the
//! print-until-stopped loop with its exit code.

use serde::Serialize;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Plain-text logs on stderr (stdout carries the JSON lines); `RUST_LOG`
/// overrides `info`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Prints one JSON line on stdout and flushes it.
pub fn emit(value: &impl Serialize) {
    let line = match serde_json::to_string(value) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!("could not encode an event: {e}");
            return;
        }
    };
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::debug!("stdout: {e}");
    }
}

/// `{"event":"listening","addr":...}`, the first line of a TCP server.
pub fn emit_listening(addr: SocketAddr) {
    #[derive(Serialize)]
    struct Listening {
        event: &'static str,
        addr: SocketAddr,
    }
    emit(&Listening {
        event: "listening",
        addr,
    });
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot watch signals: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let (mut term, mut int) = (term, int);
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
        shutdown.cancel();
    });
}

/// Prints `events` until `shutdown` or until `server` ends by itself; then
/// stops the server, prints what is still queued, calls `last_words` (the
/// final stats line), and turns the server's result into the exit code.
pub async fn print_until_stopped<E: Serialize + Clone>(
    name: &str,
    mut events: broadcast::Receiver<E>,
    shutdown: CancellationToken,
    mut server: JoinHandle<std::io::Result<()>>,
    last_words: impl FnOnce(),
) -> ExitCode {
    let finished = loop {
        tokio::select! {
            // Something happened in the simulator: print it.
            event = events.recv() => match event {
                Ok(event) => emit(&event),
                Err(RecvError::Lagged(n)) => tracing::warn!("{n} events were not printed (stdout too slow)"),
                Err(RecvError::Closed) => break None,
            },
            // A signal (or whatever else cancels): stop.
            () = shutdown.cancelled() => break None,
            // The server stopped on its own (an error): stop too.
            served = &mut server => break Some(served),
        }
    };
    shutdown.cancel();
    let served = match finished {
        Some(served) => served,
        None => server.await,
    };
    loop {
        match events.try_recv() {
            Ok(event) => emit(&event),
            Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    last_words();
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("{name}: the server failed: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: the server task failed: {e}");
            ExitCode::FAILURE
        }
    }
}
