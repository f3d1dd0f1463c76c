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
//!
//! Levels: `--offset DB` adds DB to every sample of the level walk, `--calm`
//! turns off its random loud events. With `--control-stdin` both are turned
//! at run time by lines on standard input ([`CONTROL_HELP`]); each accepted
//! line is announced (`{"event":"offset","db":30.0}`,
//! `{"event":"calm","on":true}`) once it is in force, so every sample
//! generated after the line is printed carries it; a bad line gives
//! `{"event":"control_error","line":...,"error":...}` and changes nothing.

use clap::{ArgGroup, CommandFactory, Parser};
use serde::Serialize;
use slmd_hil::cli::{emit, emit_listening, init_logging, print_until_stopped, watch_signals};
use slmd_hil::{Family, Faults, LevelControl, SimConfig, SimStats, Simulator};
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
{\"event\":\"power_cycle\",...}); SIGUSR2 wakes a sleeping NL-43 (a key press).
Control lines on stdin (with --control-stdin), each announced once in force:
  offset <DB>    set the level offset (e.g. `offset 30`, `offset -10`, `offset 0`)
                 -> {\"event\":\"offset\",\"db\":30.0}
  calm on|off    no random loud events / events again
                 -> {\"event\":\"calm\",\"on\":true}
  a bad line     -> {\"event\":\"control_error\",\"line\":...,\"error\":...}, ignored")]
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
    /// Add DB (may be negative, within ±120) to every sample of the level
    /// walk: Lp, Leq, Lmax, percentiles... all follow (e.g. 25: loud).
    #[arg(
        long,
        value_name = "DB",
        default_value_t = 0.0,
        allow_negative_numbers = true,
        value_parser = LevelControl::parse_offset
    )]
    offset: f64,
    /// No random loud events: the level stays within 5 dB of 55 dB (plus
    /// the offset).
    #[arg(long)]
    calm: bool,
    /// Read control lines on standard input: `offset <DB>`, `calm on`,
    /// `calm off` (see below).
    #[arg(long)]
    control_stdin: bool,
}

/// The control lines `--control-stdin` accepts, for error messages.
const CONTROL_HELP: &str = "expected `offset <dB>`, `calm on` or `calm off`";

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
            levels: LevelControl::new(self.offset, self.calm),
        }
    }
}

/// One accepted control line.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Control {
    /// `offset <dB>`.
    Offset(f64),
    /// `calm on` (`true`) or `calm off`.
    Calm(bool),
}

impl Control {
    /// Reads one control line (without its line end): words separated by
    /// blanks, case-insensitive. `Ok(None)` for a blank line.
    fn parse(line: &str) -> Result<Option<Control>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let lower = |w: &str| w.to_ascii_lowercase();
        match words.as_slice() {
            [] => Ok(None),
            [command, rest @ ..] => match (lower(command).as_str(), rest) {
                ("offset", [db]) => {
                    LevelControl::parse_offset(db).map(|db| Some(Control::Offset(db)))
                }
                ("calm", [on_off]) => match lower(on_off).as_str() {
                    "on" => Ok(Some(Control::Calm(true))),
                    "off" => Ok(Some(Control::Calm(false))),
                    _ => Err(format!("calm takes `on` or `off`, not {on_off:?}")),
                },
                ("offset" | "calm", _) => Err(CONTROL_HELP.to_owned()),
                _ => Err(format!("unknown command {command:?}: {CONTROL_HELP}")),
            },
        }
    }

    /// Turns `levels` as this line says.
    fn apply(self, levels: &LevelControl) {
        match self {
            Control::Offset(db) => {
                levels.set_offset_db(db);
            }
            Control::Calm(on) => levels.set_calm(on),
        }
    }
}

/// `{"event":"offset","db":...}`
#[derive(Serialize)]
struct OffsetEvent {
    event: &'static str,
    db: f64,
}

/// `{"event":"calm","on":...}`
#[derive(Serialize)]
struct CalmEvent {
    event: &'static str,
    on: bool,
}

/// `{"event":"control_error","line":...,"error":...}`
#[derive(Serialize)]
struct ControlError<'a> {
    event: &'static str,
    line: &'a str,
    error: &'a str,
}

/// Applies one control `line` to `levels`, then prints what was done (the
/// new setting is in force when its line is printed) or the error.
fn control_line(line: &str, levels: &LevelControl) {
    match Control::parse(line) {
        Ok(None) => {}
        Ok(Some(control)) => {
            control.apply(levels);
            match control {
                Control::Offset(_) => emit(&OffsetEvent {
                    event: "offset",
                    db: levels.offset_db(),
                }),
                Control::Calm(on) => emit(&CalmEvent { event: "calm", on }),
            }
        }
        Err(error) => emit(&ControlError {
            event: "control_error",
            line,
            error: &error,
        }),
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
    tracing::info!(seed, family = %cli.family, offset_db = cli.offset, calm = cli.calm, "slm-sim starting");
    let config = cli.config(seed);
    let levels = config.levels.clone();
    let sim = Simulator::new(config);
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

    // After the first line: control lines sent earlier wait in the pipe.
    if cli.exit_on_stdin_eof || cli.control_stdin {
        let levels = cli.control_stdin.then_some(levels);
        watch_stdin(levels, cli.exit_on_stdin_eof, shutdown.clone());
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

/// Reads stdin to its end: with `levels`, line by line as control lines
/// ([`control_line`]), else discarding it; at end of file cancels
/// `shutdown` if `exit_on_eof`. A plain thread: a blocked read must not
/// hold up the runtime's shutdown.
fn watch_stdin(levels: Option<LevelControl>, exit_on_eof: bool, shutdown: CancellationToken) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            use std::io::BufRead as _;
            let mut stdin = std::io::stdin().lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match stdin.read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) => {
                        if let Some(levels) = &levels {
                            let line = String::from_utf8_lossy(&buf);
                            control_line(line.trim_end_matches(['\r', '\n']), levels);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!("stdin: {e}");
                        break;
                    }
                }
            }
            if exit_on_eof {
                tracing::info!("stdin closed: stopping");
                shutdown.cancel();
            } else {
                tracing::info!("stdin closed: no more control lines");
            }
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
    fn level_flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "slm-sim",
            "--listen",
            "127.0.0.1:0",
            "--offset",
            "-12.5",
            "--calm",
            "--control-stdin",
            "--exit-on-stdin-eof",
        ])
        .expect("valid command line");
        assert_eq!(cli.check(), Ok(()));
        assert!(cli.control_stdin && cli.exit_on_stdin_eof);
        let levels = cli.config(1).levels;
        assert_eq!((levels.offset_db(), levels.calm()), (-12.5, true));
        let cli =
            Cli::try_parse_from(["slm-sim", "--pty", "--family", "casella", "--offset", "25"])
                .expect("valid command line");
        assert_eq!(cli.check(), Ok(()));
        let levels = cli.config(1).levels;
        assert_eq!((levels.offset_db(), levels.calm()), (25.0, false));
        let levels = Cli::try_parse_from(["slm-sim", "--pty"])
            .expect("valid command line")
            .config(1)
            .levels;
        assert_eq!((levels.offset_db(), levels.calm()), (0.0, false));
        for bad in ["121", "loud", "inf"] {
            assert!(
                Cli::try_parse_from(["slm-sim", "--pty", "--offset", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn control_lines_are_parsed() {
        assert_eq!(Control::parse("offset 30"), Ok(Some(Control::Offset(30.0))));
        assert_eq!(
            Control::parse("  OFFSET   -7.5 "),
            Ok(Some(Control::Offset(-7.5)))
        );
        assert_eq!(Control::parse("offset 0"), Ok(Some(Control::Offset(0.0))));
        assert_eq!(Control::parse("calm on"), Ok(Some(Control::Calm(true))));
        assert_eq!(Control::parse("Calm Off"), Ok(Some(Control::Calm(false))));
        assert_eq!(Control::parse(""), Ok(None));
        assert_eq!(Control::parse(" \t"), Ok(None));
        for bad in [
            "offset",
            "offset loud",
            "offset 30 dB",
            "offset 500",
            "calm",
            "calm maybe",
            "quiet",
            "louder",
        ] {
            assert!(Control::parse(bad).is_err(), "{bad:?}");
        }
        let levels = LevelControl::default();
        Control::Offset(30.0).apply(&levels);
        Control::Calm(true).apply(&levels);
        assert_eq!((levels.offset_db(), levels.calm()), (30.0, true));
        Control::Calm(false).apply(&levels);
        Control::Offset(0.0).apply(&levels);
        assert_eq!((levels.offset_db(), levels.calm()), (0.0, false));
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
