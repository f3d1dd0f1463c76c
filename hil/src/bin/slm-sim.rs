//! `slm-sim`: a simulated sound level meter (Rion NL-43 by default; NTi XL2,
//! Svantek SVAN 97x or Casella CEL-63x with `--family`) over TCP or a
//! pseudo-terminal.
//!
//! Parses the command line, binds, prints the machine-readable event stream
//! on stdout (one JSON object a line, flushed per line) and stops cleanly on
//! SIGTERM, SIGINT or (with `--exit-on-stdin-eof`) end of standard input.
//! The first line is `{"event":"listening","addr":...}` or
//! `{"event":"pty","path":...,"link":...}`, then every simulator event, and
//! last `{"event":"stats",...}`. Diagnostics go to stderr.
//!
//! SIGUSR1 power-cycles the meter (`--power-cycle-asleep`: it comes back
//! with sleep mode On); SIGUSR2 is a key press that wakes it. Both are
//! watched before the first line is printed.

use clap::{ArgGroup, CommandFactory, Parser};
use serde::Serialize;
use slmd_hil::cli::{emit, emit_listening, init_logging, print_until_stopped, watch_signals};
use slmd_hil::{Family, Faults, SimConfig, SimStats, Simulator};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Simulated sound level meter with fault injection: a Rion NL-43 (default),
/// NTi XL2, Svantek SVAN 97x or Casella CEL-63x, each speaking its protocol
/// over TCP or a pseudo-terminal. Prints one JSON event a line on stdout.
#[derive(Debug, Parser)]
#[command(name = "slm-sim", version)]
#[command(after_help = "\
Families (see hil/README.md and shared/protocols/):
  nl43     Rion NL-43: `DOD?`, `DRD?`, ... with R+ result codes (CR LF)
  xl2      NTi XL2: `*IDN?`, `INIT START`, `MEAS:INIT`, `MEAS:SLM:123? LAEQ ...`,
           `SYST:ERRO?` (LF lines)
  svantek  Svantek: `#1,U?;`, `#2,s;` frames, no line terminator
  casella  Casella CEL-63x: pushes `<LAeq>, date, time, value` lines every
           --period; input is ignored
Faults work the same for every family; --prompts, --echo and --replay are
NL-43 only. Every reading sent is announced as
  {\"event\":\"reading\",\"family\":...,\"n\":...,\"metrics\":{...},\"device_time\":...,\"replayed\":...}
Signals: SIGUSR1 power-cycles the meter (link dropped, meter stopped;
{\"event\":\"power_cycle\",...}); SIGUSR2 wakes a sleeping NL-43 (a key press).")]
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
    /// The meter family to simulate.
    #[arg(long, value_name = "FAMILY", default_value = "nl43", value_parser = parse_family)]
    family: Family,
    /// XL2: answer `MEAS:SLM:123?` on one line (`53.8 dB, OK, 61.2 dB, OK`)
    /// instead of one line per parameter.
    #[arg(long)]
    xl2_one_line: bool,
    /// XL2: write levels with a decimal comma (`53,8 dB, OK`).
    #[arg(long)]
    decimal_comma: bool,
    /// Casella: the logging period (one group of lines each).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = slmd_hil::parse_duration)]
    period: Duration,
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
    /// How fast the meter clock runs off real time, parts per million
    /// (200000: gains 0.2 s a second; may be negative, above -1000000).
    #[arg(
        long,
        value_name = "PPM",
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_parser = slmd_hil::parse_drift_ppm
    )]
    clock_drift_ppm: f64,
    /// NL-43: accept `Clock,...` while measuring (default: R+0004, a guess).
    #[arg(long)]
    clock_set_while_measuring: bool,
    /// NL-43: power up with sleep (eco) mode On.
    #[arg(long)]
    sleep: bool,
    /// NL-43: with sleep mode On, fall asleep this long after power-up or
    /// the last wake (SIGUSR2), whatever the traffic.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = slmd_hil::parse_duration)]
    sleep_after: Duration,
    /// NL-43: a power cycle (SIGUSR1) brings the meter back with sleep mode On.
    #[arg(long)]
    power_cycle_asleep: bool,
    /// Close the link every DURATION (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = slmd_hil::parse_duration)]
    drop_every: Option<Duration>,
    /// Probability per answer (Casella: per logging period) of junk before it (0..=1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = slmd_hil::parse_probability)]
    junk: f64,
    /// NL-43: send a `$` prompt after each answer.
    #[arg(long)]
    prompts: bool,
    /// NL-43: start with echo on (commands echoed before the result line).
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
    /// NL-43: the first N DOD? answers of every connection come from stored old records.
    #[arg(long, value_name = "N", default_value_t = 0)]
    replay: u32,
    /// Exit (cleanly, with the stats line) when standard input reaches end of file.
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

/// `--family`.
fn parse_family(text: &str) -> Result<Family, slmd_hil::ParseError> {
    text.parse()
}

impl Cli {
    /// Options that do not fit the chosen family.
    fn check(&self) -> Result<(), String> {
        let family = self.family;
        let mut misfits = Vec::new();
        if family != Family::Nl43 {
            for (set, flag) in [
                (self.prompts, "--prompts"),
                (self.echo, "--echo"),
                (self.replay > 0, "--replay"),
                (
                    self.clock_set_while_measuring,
                    "--clock-set-while-measuring",
                ),
                (self.sleep, "--sleep"),
                (
                    self.sleep_after != slmd_hil::DEFAULT_SLEEP_AFTER,
                    "--sleep-after",
                ),
                (self.power_cycle_asleep, "--power-cycle-asleep"),
            ] {
                if set {
                    misfits.push(flag);
                }
            }
        }
        if family != Family::Xl2 {
            for (set, flag) in [
                (self.xl2_one_line, "--xl2-one-line"),
                (self.decimal_comma, "--decimal-comma"),
            ] {
                if set {
                    misfits.push(flag);
                }
            }
        }
        if family != Family::Casella && self.period != Duration::from_secs(1) {
            misfits.push("--period");
        }
        if family == Family::Casella && self.period < Duration::from_secs(1) {
            return Err("--period must be at least 1s (the lines carry whole seconds)".into());
        }
        match misfits.as_slice() {
            [] => Ok(()),
            flags => Err(format!(
                "{} cannot be used with --family {family}",
                flags.join(", ")
            )),
        }
    }

    fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            family: self.family,
            xl2_one_line: self.xl2_one_line,
            decimal_comma: self.decimal_comma,
            log_period: self.period,
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
            clock_drift_ppm: self.clock_drift_ppm,
            clock_set_while_measuring: self.clock_set_while_measuring,
            sleep_mode: self.sleep,
            sleep_after: self.sleep_after,
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
    if let Err(message) = cli.check() {
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    init_logging();
    let seed = cli.seed.unwrap_or_else(|| fastrand::u64(..));
    tracing::info!(seed, family = %cli.family, "slm-sim starting");
    let sim = Simulator::new(cli.config(seed));
    let events = sim.events();
    let shutdown = CancellationToken::new();
    // Before the first line is printed: whoever reads it may signal at once.
    watch_signals(shutdown.clone());
    watch_meter_signals(&sim, cli.power_cycle_asleep, shutdown.clone());

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

/// SIGUSR1 power-cycles `sim` (with sleep mode On if `asleep`), SIGUSR2
/// wakes it, until `shutdown`. The handlers are installed before this
/// returns, so a signal sent right after cannot kill the process.
fn watch_meter_signals(sim: &Simulator, asleep: bool, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (usr1, usr2) = match (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) {
        (Ok(usr1), Ok(usr2)) => (usr1, usr2),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot watch SIGUSR1/SIGUSR2: {e}");
            return;
        }
    };
    let sim = sim.clone();
    tokio::spawn(async move {
        let (mut usr1, mut usr2) = (usr1, usr2);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                // SIGUSR1: the power goes off and on.
                Some(()) = usr1.recv() => sim.power_cycle(asleep),
                // SIGUSR2: somebody presses a key.
                Some(()) = usr2.recv() => sim.wake(),
            }
        }
    });
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
            "--clock-drift-ppm",
            "-200000",
            "--clock-set-while-measuring",
            "--sleep",
            "--sleep-after",
            "1s",
            "--power-cycle-asleep",
        ])
        .expect("valid command line");
        assert_eq!(cli.check(), Ok(()));
        assert!(cli.power_cycle_asleep);
        let config = cli.config(9);
        assert_eq!(
            (
                config.clock_drift_ppm,
                config.clock_set_while_measuring,
                config.sleep_mode,
                config.sleep_after
            ),
            (-200_000.0, true, true, Duration::from_secs(1))
        );
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
    fn family_options_reach_the_config() {
        let cli = Cli::try_parse_from([
            "slm-sim",
            "--pty",
            "--family",
            "xl2",
            "--xl2-one-line",
            "--decimal-comma",
        ])
        .expect("valid command line");
        assert_eq!(cli.check(), Ok(()));
        let config = cli.config(1);
        assert_eq!(
            (config.family, config.xl2_one_line, config.decimal_comma),
            (Family::Xl2, true, true)
        );
        let cli =
            Cli::try_parse_from(["slm-sim", "--pty", "--family", "casella", "--period", "5s"])
                .expect("valid command line");
        assert_eq!(cli.check(), Ok(()));
        assert_eq!(cli.config(1).log_period, Duration::from_secs(5));
        let cli = Cli::try_parse_from(["slm-sim", "--pty"]).expect("valid command line");
        assert_eq!(cli.config(1).family, Family::Nl43);
    }

    #[test]
    fn options_of_another_family_are_refused() {
        for args in [
            &["slm-sim", "--pty", "--family", "svantek", "--echo"][..],
            &["slm-sim", "--pty", "--family", "casella", "--replay", "2"],
            &["slm-sim", "--pty", "--decimal-comma"],
            &["slm-sim", "--pty", "--family", "svantek", "--xl2-one-line"],
            &["slm-sim", "--pty", "--family", "xl2", "--period", "5s"],
            &[
                "slm-sim", "--pty", "--family", "casella", "--period", "500ms",
            ],
            &["slm-sim", "--pty", "--family", "xl2", "--sleep"],
            &["slm-sim", "--pty", "--family", "xl2", "--sleep-after", "5s"],
            &[
                "slm-sim",
                "--pty",
                "--family",
                "svantek",
                "--power-cycle-asleep",
            ],
            &[
                "slm-sim",
                "--pty",
                "--family",
                "casella",
                "--clock-set-while-measuring",
            ],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert!(cli.check().is_err(), "{args:?}");
        }
        assert!(Cli::try_parse_from(["slm-sim", "--pty", "--family", "b&k"]).is_err());
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
            &[
                "slm-sim",
                "--listen",
                "127.0.0.1:0",
                "--clock-drift-ppm",
                "-1000000",
            ],
            &["slm-sim", "--listen", "127.0.0.1:0", "--sleep-after", "5"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
