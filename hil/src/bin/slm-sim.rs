//! `slm-sim`: a simulated Rion NL-43 over TCP or a pseudo-terminal.
//!
//! Parses the command line, binds, prints the machine-readable event stream
//! on stdout (one JSON object a line, flushed per line) and stops cleanly on
//! SIGTERM, SIGINT or (with `--exit-on-stdin-eof`) end of standard input.
//! The first line is `{"event":"listening","addr":...}` or
//! `{"event":"pty","path":...,"link":...}`, then every simulator event, and
//! last `{"event":"stats",...}`. Diagnostics go to stderr.

use clap::{ArgGroup, Parser};
use serde::Serialize;
use slmd_hil::cli::{emit, emit_listening, init_logging, print_until_stopped, watch_signals};
use slmd_hil::{Faults, SimConfig, SimStats, Simulator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Simulated Rion NL-43 sound level meter with fault injection.
#[derive(Debug, Parser)]
#[command(name = "slm-sim", version)]
#[command(group(ArgGroup::new("transport").required(true).args(["listen", "pty"])))]
struct Cli {
    /// Serve TCP on this address (e.g. 127.0.0.1:0 for any free port).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Serve on a new pseudo-terminal.
    #[arg(long)]
    pty: bool,
    /// With --pty: keep a symlink to the pty here (re-pointed after drops).
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    link: Option<PathBuf>,
    /// Seed of the level walk and fault dice (default: random, logged).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Power up stopped instead of measuring.
    #[arg(long)]
    stopped: bool,
    /// Meter clock minus real UTC, seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    clock_offset: i64,
    /// Close the link every DURATION (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = slmd_hil::parse_duration)]
    drop_every: Option<Duration>,
    /// Probability per answer of junk before the result line (0..=1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = slmd_hil::parse_probability)]
    junk: f64,
    /// Send a `$` prompt after each answer.
    #[arg(long)]
    prompts: bool,
    /// Start with echo on (commands echoed before the result line).
    #[arg(long)]
    echo: bool,
    /// Write answers in random small pieces with short pauses.
    #[arg(long)]
    split: bool,
    /// Delay an answer with probability P by DURATION (e.g. 0.1:4s).
    #[arg(long, value_name = "P:DURATION", value_parser = slmd_hil::parse_stall)]
    stall: Option<(f64, Duration)>,
    /// Stop answering this long after start...
    #[arg(long, value_name = "DURATION", value_parser = slmd_hil::parse_duration, requires = "silent_for")]
    silent_after: Option<Duration>,
    /// ...for this long.
    #[arg(long, value_name = "DURATION", value_parser = slmd_hil::parse_duration, requires = "silent_after")]
    silent_for: Option<Duration>,
    /// The first N DOD? answers of every connection come from stored old records.
    #[arg(long, value_name = "N", default_value_t = 0)]
    replay: u32,
    /// Exit (cleanly, with the stats line) when standard input reaches end of file.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

impl Cli {
    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            faults: Faults {
                drop_every: self.drop_every,
                junk: self.junk,
                prompts: self.prompts,
                echo: self.echo,
                split: self.split,
                stall: self.stall,
                silent_after: self.silent_after,
                silent_for: self.silent_for.unwrap_or_default(),
                replay: self.replay,
            },
            start_measuring: !self.stopped,
            clock_offset_secs: self.clock_offset,
        }
    }
}

/// `{"event":"pty","path":...,"link":...}`
#[derive(Serialize)]
struct Pty<'a> {
    event: &'static str,
    path: &'a std::path::Path,
    link: Option<&'a std::path::Path>,
}

/// `{"event":"stats",...}`
#[derive(Serialize)]
struct Stats<'a> {
    event: &'static str,
    #[serde(flatten)]
    stats: &'a SimStats,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let seed = cli.seed.unwrap_or_else(|| fastrand::u64(..));
    tracing::info!(seed, "slm-sim starting");
    let sim = Simulator::new(cli.config(seed));
    let events = sim.events();
    let shutdown = CancellationToken::new();
    // Before the first line is printed: whoever reads it may signal at once.
    watch_signals(shutdown.clone());

    let server = if let Some(addr) = cli.listen {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("slm-sim: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let bound = match listener.local_addr() {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("slm-sim: cannot read the bound address: {e}");
                return ExitCode::FAILURE;
            }
        };
        emit_listening(bound);
        let (sim, token) = (sim.clone(), shutdown.clone());
        tokio::spawn(async move { sim.serve_tcp(listener, token).await })
    } else {
        let meter = match sim.open_pty(cli.link.clone()) {
            Ok(meter) => meter,
            Err(e) => {
                eprintln!("slm-sim: cannot create a pseudo-terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        emit(&Pty {
            event: "pty",
            path: meter.tty_path(),
            link: meter.link(),
        });
        let token = shutdown.clone();
        tokio::spawn(meter.serve(token))
    };

    if cli.exit_on_stdin_eof {
        watch_stdin(shutdown.clone());
    }

    let stats = || {
        emit(&Stats {
            event: "stats",
            stats: &sim.stats(),
        });
    };
    print_until_stopped("slm-sim", events, shutdown, server, stats).await
}

/// Cancels `shutdown` when stdin reaches end of file. A plain thread: a
/// blocked read must not hold up the runtime's shutdown.
fn watch_stdin(shutdown: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            tracing::info!("stdin closed: stopping");
            shutdown.cancel();
        });
    if let Err(e) = spawned {
        tracing::error!("cannot watch stdin: {e}");
    }
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
    fn every_fault_flag_reaches_the_config() {
        let cli = Cli::try_parse_from([
            "slm-sim",
            "--listen",
            "127.0.0.1:0",
            "--stopped",
            "--clock-offset",
            "-30",
            "--drop-every",
            "5s",
            "--junk",
            "0.3",
            "--prompts",
            "--echo",
            "--split",
            "--stall",
            "0.1:4s",
            "--silent-after",
            "3s",
            "--silent-for",
            "6s",
            "--replay",
            "4",
        ])
        .expect("valid command line");
        let config = cli.config(9);
        let f = &config.faults;
        assert_eq!(
            (
                config.seed,
                config.start_measuring,
                config.clock_offset_secs
            ),
            (9, false, -30)
        );
        assert_eq!(f.drop_every, Some(Duration::from_secs(5)));
        assert_eq!(
            (f.junk, f.prompts, f.echo, f.split, f.replay),
            (0.3, true, true, true, 4)
        );
        assert_eq!(f.stall, Some((0.1, Duration::from_secs(4))));
        assert_eq!(
            (f.silent_after, f.silent_for),
            (Some(Duration::from_secs(3)), Duration::from_secs(6))
        );
    }

    #[test]
    fn bad_command_lines_are_refused() {
        for args in [
            &["slm-sim"][..],
            &["slm-sim", "--listen", "127.0.0.1:0", "--pty"],
            &["slm-sim", "--listen", "127.0.0.1:0", "--link", "/tmp/x"],
            &["slm-sim", "--listen", "127.0.0.1:0", "--junk", "2"],
            &["slm-sim", "--listen", "127.0.0.1:0", "--silent-after", "3s"],
            &["slm-sim", "--listen", "127.0.0.1:0", "--drop-every", "5"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
