//! The `slmd` binary: command line, logging, and exit codes. The work is in
//! the library.

use clap::{Parser, Subcommand};
use slmd::printer::PrintMode;
use slmd::{config, supervisor};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a configuration error (sysexits EX_CONFIG), so systemd can
/// be told not to restart into the same mistake.
const EXIT_CONFIG: u8 = 78;
/// Exit code for any other failure to start.
const EXIT_FAILURE: u8 = 1;
/// Exit code when a meter or the daemon does not answer, or when `slmd demo`
/// is asked of a build without the simulators (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "slmd",
    version,
    about = "Edge telemetry daemon for noise-monitoring gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/slmd/slmd.toml")]
        config: PathBuf,
        /// Print the live feed on stdout.
        #[arg(long, value_enum, default_value = "none")]
        print: PrintMode,
    },
    /// Validate the configuration and check every meter: a meter the
    /// running slmd holds is reported from its live state (never opened a
    /// second time), the others are probed; an edited file shows what a
    /// reload would change. Exit 0 only when the config is valid and every
    /// meter is usable; 78 for a config error, 69 when a meter is not usable.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "/etc/slmd/slmd.toml")]
        config: PathBuf,
        /// Only validate the file; do not contact the daemon or the meters.
        #[arg(long, conflicts_with = "probe_anyway")]
        no_probe: bool,
        /// Ask the running slmd at this address instead of the config's
        /// [api].listen.
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// Probe every meter, even one a running slmd holds (which then
        /// fails the probe: a meter serves one link).
        #[arg(long)]
        probe_anyway: bool,
    },
    /// Show the running daemon's status (its API's /v1/status) as a table.
    Status {
        /// Configuration file: where the API listens and its token.
        #[arg(long, default_value = "/etc/slmd/slmd.toml")]
        config: PathBuf,
        /// Ask this address instead of the one in the config.
        #[arg(long)]
        api: Option<std::net::SocketAddr>,
        /// Print the JSON as the API gives it.
        #[arg(long)]
        json: bool,
    },
    /// Run the whole pipeline against two simulated meters, no hardware needed.
    ///
    /// Only in a build from source: the packaged slmd carries no simulators
    /// and exits 69 here.
    #[cfg_attr(
        not(feature = "demo"),
        command(
            about = "Not in this build: the packaged slmd carries no simulators (exits 69); \
                     run the demo from source: cargo run --release -p slmd -- demo",
            long_about = None
        )
    )]
    Demo,
    /// Print the slmd(8) man page (roff) on stdout; used by the package build.
    #[command(hide = true)]
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Man = cli.command {
        return print_man_page();
    }
    // The demo's simulated meters log their own connections; on a terminal
    // that only hides the readings.
    #[cfg(feature = "demo")]
    let default_filter = match cli.command {
        Command::Demo => "info,slmd_hil=warn",
        _ => "info",
    };
    #[cfg(not(feature = "demo"))]
    let default_filter = "info";
    slmd::logging::init(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("slmd: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async_main(cli.command))
}

async fn async_main(command: Command) -> ExitCode {
    match command {
        Command::Run {
            config: path,
            print,
        } => {
            let (config, source) = match config::load_source(&path) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("slmd: invalid configuration: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let shutdown = CancellationToken::new();
            if let Err(e) = supervisor::cancel_on_signals(shutdown.clone()) {
                eprintln!("slmd: cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
            let options = supervisor::Options::new(print, Some(source));
            match supervisor::run(config, options, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("slmd: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Check {
            config,
            no_probe,
            api,
            probe_anyway,
        } => {
            let options = slmd::check::Options {
                api,
                probe_anyway,
                timeout: slmd::check::PROBE_TIMEOUT,
            };
            check(&config, no_probe, &options).await
        }
        Command::Status { config, api, json } => status(&config, api, json).await,
        Command::Demo => demo().await,
        // Handled before the runtime starts.
        Command::Man => print_man_page(),
    }
}

/// `slmd demo`: the pipeline on simulated meters until Ctrl-C.
#[cfg(feature = "demo")]
async fn demo() -> ExitCode {
    let shutdown = CancellationToken::new();
    if let Err(e) = supervisor::cancel_on_signals(shutdown.clone()) {
        eprintln!("slmd: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    match slmd::demo::run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slmd demo: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `slmd demo` in a build without the simulators (the packages): says so,
/// and how to run the demo, and exits 69.
#[cfg(not(feature = "demo"))]
async fn demo() -> ExitCode {
    eprintln!("{DEMO_NOT_IN_THIS_BUILD}");
    ExitCode::from(EXIT_UNAVAILABLE)
}

/// What `slmd demo` says in a build without the simulators.
#[cfg(not(feature = "demo"))]
const DEMO_NOT_IN_THIS_BUILD: &str = "\
slmd demo: not in this build. The packaged slmd carries no simulators (no
simulated meter, no simulated fleet), only the daemon. To see the whole
pipeline with no meter attached, run the demo from a source checkout:

    cargo run --release -p slmd -- demo

To check this gateway instead: slmd check, then slmd status.";

/// `slmd check`: validate, then check each meter (the running daemon's
/// view first, a probe for the rest).
async fn check(path: &std::path::Path, no_probe: bool, options: &slmd::check::Options) -> ExitCode {
    let (config, source) = match config::load_source(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("slmd: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!(
        "{}: valid ({} meters)",
        path.display(),
        config.devices.len()
    );
    if no_probe || config.devices.is_empty() {
        return ExitCode::SUCCESS;
    }
    let report = slmd::check::run(&config, &source, options).await;
    print!("{}", slmd::check::render(&report));
    if report.usable() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNAVAILABLE)
    }
}

/// `slmd status`: the running daemon's status.
async fn status(path: &std::path::Path, api: Option<std::net::SocketAddr>, json: bool) -> ExitCode {
    let (addr, token) = match (api, config::load(path)) {
        (Some(addr), loaded) => (
            addr,
            loaded.ok().and_then(|c| c.api.tokens.first().cloned()),
        ),
        (None, Ok(c)) => (
            slmd::status::local_address(c.api.listen),
            c.api.tokens.first().cloned(),
        ),
        (None, Err(e)) => {
            eprintln!("slmd: cannot tell where the daemon listens: {e}; or pass --api ADDR");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match slmd::status::fetch(addr, token.as_deref()).await {
        Ok(value) => {
            if json {
                println!("{value:#}");
            } else {
                print!("{}", slmd::status::render(&value));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slmd: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// `slmd(8)`, generated from the command line definition so it never
/// disagrees with `--help`.
fn print_man_page() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write_man_page(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slmd: cannot write the man page: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// One page for the whole command: every subcommand gets its own section
/// here rather than a page of its own (`slmd run` is not `slmd-run(8)`).
fn write_man_page(out: &mut impl std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let command = Cli::command().name("slmd");
    let page = clap_mangen::Man::new(command.clone()).section("8");
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(out, ".SH \"SLMD {}\"", roff(&sub.get_name().to_uppercase()))?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{}", roff(&about.to_string()))?;
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .filter(|_| arg.get_action().takes_values())
                .map_or(String::new(), |v| format!(" \\fI{}\\fR", roff(v)));
            writeln!(out, ".TP\n\\fB\\-\\-{}\\fR{value}", roff(long))?;
            if let Some(help) = arg.get_help() {
                writeln!(out, "{}", roff(&help.to_string()))?;
            }
        }
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    writeln!(
        out,
        "0 success; 1 failure to start; 69 a meter or the daemon did not answer, or \\fBslmd demo\\fR in a build without the simulators; 78 configuration error."
    )?;
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "systemctl(1), journalctl(1), /usr/share/doc/slmd/README.md.gz"
    )?;
    page.render_version_section(out)
}

/// Text made safe for roff: backslashes and hyphens escaped, no line
/// starting with a control character.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
