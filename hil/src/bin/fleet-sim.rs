//! `fleet-sim`: the fleet ingest and heartbeat server simulator (SPEC §7)
//! for test rigs.
//!
//! Parses the command line, binds, prints the machine-readable event stream
//! on stdout (one JSON object a line, flushed per line) and stops cleanly on
//! SIGTERM or SIGINT. The first line is `{"event":"listening","addr":...}`,
//! then one `ingest` line per ingest request (naming the body's `epoch` and
//! `skipped` ranges when slmd's push carries them, and `conflicts` when seqs
//! were reused), one `heartbeat` line per accepted heartbeat and one
//! `heartbeat_refused` line per other heartbeat request, one `alert_event`
//! line per alert event new to the fleet and one `events` line per events
//! request, `gateway_offline`
//! and `gateway_online` lines as gateways go silent and come back, one line
//! per admin change (`rotate`, `expire_previous`, `fault`, `faults_cleared`,
//! `max_records`, `poison`), and last `{"event":"stats",...}`. Tokens are
//! never printed, only their fingerprints. Diagnostics go to stderr.

use clap::Parser;
use serde::Serialize;
use slmd_hil::cli::{emit, emit_listening, init_logging, print_until_stopped, watch_signals};
use slmd_hil::fleet::{
    DEFAULT_GRACE, DEFAULT_HEARTBEAT_INTERVAL, FleetSim, FleetSimConfig, FleetStats,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Fleet ingest server simulator: dual-token grace, de-duplication by
/// gateway, epoch and seq, checks of seq reuse and skipped numbers,
/// heartbeats and gateway liveness, and fault injection. Its admin routes are
/// unauthenticated: for test rigs only.
#[derive(Parser)]
#[command(name = "fleet-sim", version)]
struct Cli {
    /// Serve HTTP on this address (e.g. 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The current fleet token.
    #[arg(long, value_name = "TOKEN", value_parser = non_empty)]
    token: String,
    /// A previous token, honoured for --grace from start.
    #[arg(long, value_name = "TOKEN", value_parser = non_empty)]
    previous_token: Option<String>,
    /// Grace of a rotated-out token (e.g. 500ms, 5s, 2m, 24h).
    #[arg(long, value_name = "DURATION", value_parser = slmd_hil::parse_duration)]
    grace: Option<Duration>,
    /// Refuse batches of more than N records with 413.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_records: Option<u64>,
    /// Refuse batches holding any of these seqs with 400 (e.g. 17,42).
    #[arg(long, value_name = "SEQS", value_delimiter = ',')]
    poison: Vec<u64>,
    /// A gateway's heartbeat interval when its heartbeat gives no
    /// interval_s (default 60s); 3 intervals without one mark it offline.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    heartbeat_interval: Option<Duration>,
}

impl std::fmt::Debug for Cli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: the config's Debug shows fingerprints only.
        f.debug_struct("Cli")
            .field("listen", &self.listen)
            .field("config", &self.config())
            .finish()
    }
}

/// A token must have something in it besides whitespace.
fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("a token must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

/// A duration longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match slmd_hil::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("the interval must be longer than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

impl Cli {
    fn config(&self) -> FleetSimConfig {
        FleetSimConfig {
            token: self.token.clone(),
            previous_token: self.previous_token.clone(),
            grace: self.grace.unwrap_or(DEFAULT_GRACE),
            max_records: self
                .max_records
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            poison: self.poison.iter().copied().collect::<BTreeSet<u64>>(),
            heartbeat_interval: self
                .heartbeat_interval
                .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL),
        }
    }
}

/// `{"event":"stats",...}`
#[derive(Serialize)]
struct Stats<'a> {
    event: &'static str,
    #[serde(flatten)]
    stats: &'a FleetStats,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = cli.config();
    tracing::info!(?config, "fleet-sim starting");
    let sim = FleetSim::new(config);
    let events = sim.events();
    let shutdown = CancellationToken::new();
    // Before the first line is printed: whoever reads it may signal at once.
    watch_signals(shutdown.clone());

    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("fleet-sim: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let bound = match listener.local_addr() {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("fleet-sim: cannot read the bound address: {e}");
            return ExitCode::FAILURE;
        }
    };
    emit_listening(bound);
    let server = {
        let (sim, token) = (sim.clone(), shutdown.clone());
        tokio::spawn(async move { sim.serve(listener, token).await })
    };

    let stats = || {
        emit(&Stats {
            event: "stats",
            stats: &sim.stats(),
        });
    };
    print_until_stopped("fleet-sim", events, shutdown, server, stats).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let cli = Cli::try_parse_from([
            "fleet-sim",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "t1",
            "--previous-token",
            "t0",
            "--grace",
            "5s",
            "--max-records",
            "100",
            "--poison",
            "17,42",
            "--heartbeat-interval",
            "500ms",
        ])
        .expect("valid command line");
        let config = cli.config();
        assert_eq!(config.token, "t1");
        assert_eq!(config.previous_token.as_deref(), Some("t0"));
        assert_eq!(config.grace, Duration::from_secs(5));
        assert_eq!(config.max_records, Some(100));
        assert_eq!(config.poison, BTreeSet::from([17, 42]));
        assert_eq!(config.heartbeat_interval, Duration::from_millis(500));
        let plain = Cli::try_parse_from(["fleet-sim", "--listen", "127.0.0.1:0", "--token", "t"])
            .expect("valid command line");
        assert_eq!(plain.config().heartbeat_interval, Duration::from_secs(60));
        let debug = format!("{cli:?}");
        assert!(
            !debug.contains("\"t1\"") && !debug.contains("\"t0\""),
            "{debug}"
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["fleet-sim"][..],
            &["fleet-sim", "--listen", "127.0.0.1:0"],
            &["fleet-sim", "--token", "t"],
            &["fleet-sim", "--listen", "127.0.0.1:0", "--token", " "],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        // A valid command line but for one option's value.
        for (option, value) in [
            ("--grace", "5"),
            ("--max-records", "0"),
            ("--poison", "x"),
            ("--heartbeat-interval", "0s"),
            ("--heartbeat-interval", "60"),
        ] {
            let args = [
                "fleet-sim",
                "--listen",
                "127.0.0.1:0",
                "--token",
                "t",
                option,
                value,
            ];
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
