//! `slmd demo`: the whole pipeline on this machine with no meter attached.
//!
//! Starts one simulated meter of each family from the HIL kit: a Rion
//! NL-43 over TCP, another NL-43 streaming (`DRD?`, 10 readings a second)
//! over a pseudo-terminal, an NTi XL2, a Svantek and a Casella over
//! pseudo-terminals (the serial path), and a local fleet sink (the HIL kit's fleet simulator on loopback), writes a config for
//! them into a temporary folder, loads it through the same validation as a
//! real config, and runs the daemon on it, printing readings and push
//! progress until Ctrl-C.
//!
//! Built only with the `demo` feature (on by default, so `cargo run -p slmd
//! -- demo` works from a checkout). This is the one place the daemon uses
//! the simulators; the packages are built without the feature, and their
//! `slmd demo` only says how to run it from source.

use crate::config;
use crate::printer::PrintMode;
use crate::supervisor;
use slmd_hil::fleet::{FleetSim, FleetSimConfig};
use slmd_hil::{Family, SimConfig, Simulator};
use std::path::{Path, PathBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The temporary state folder could not be made or written.
    #[error("demo state folder {path}: {source}")]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A simulated meter could not start.
    #[error("simulated meter: {0}")]
    Simulator(std::io::Error),
    /// The generated config did not validate (a bug: it is reported, not hidden).
    #[error("demo config: {0}")]
    Config(#[from] config::ConfigError),
    /// The pipeline could not start in the demo's state folder.
    #[error("demo: {0}")]
    Start(#[from] supervisor::StartError),
}

/// A temporary folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, DemoError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("slmd-demo-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| DemoError::StateDir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(shutdown: CancellationToken) -> Result<(), DemoError> {
    let dir = TempDir::new()?;
    let state_error = |source| DemoError::StateDir {
        path: dir.path().to_owned(),
        source,
    };

    let tcp_meter = Simulator::new(SimConfig {
        seed: 43,
        ..SimConfig::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Simulator)?;
    let tcp_address = listener.local_addr().map_err(DemoError::Simulator)?;
    let sims = shutdown.child_token();
    let tcp_stop = sims.clone();
    tokio::spawn(async move {
        if let Err(e) = tcp_meter.serve_tcp(listener, tcp_stop).await {
            tracing::error!("simulated TCP meter stopped: {e}");
        }
    });
    let mut serial = Vec::new();
    for meter in &SERIAL_METERS {
        let sim = Simulator::new(SimConfig {
            family: meter.family,
            seed: meter.seed,
            ..SimConfig::default()
        });
        let pty = sim
            .open_pty(Some(dir.path().join(format!("tty-{}", meter.id))))
            .map_err(DemoError::Simulator)?;
        serial.push((meter, pty.path().to_owned()));
        let stop = sims.clone();
        tokio::spawn(async move {
            if let Err(e) = pty.serve(stop).await {
                tracing::error!("simulated serial meter stopped: {e}");
            }
        });
    }

    // The fleet sink: a demo token, random per run, never printed.
    let token = {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("demo-{random:016x}")
    };
    let fleet = FleetSim::new(FleetSimConfig::new(&token));
    let fleet_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Simulator)?;
    let fleet_address = fleet_listener.local_addr().map_err(DemoError::Simulator)?;
    let fleet_stop = sims.clone();
    tokio::spawn(async move {
        if let Err(e) = fleet.serve(fleet_listener, fleet_stop).await {
            tracing::error!("simulated fleet stopped: {e}");
        }
    });

    // The API on a port free now, so the page's address can be printed
    // before the daemon starts (another program taking it in between
    // would make the start fail with a clear message).
    let api_address = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(DemoError::Simulator)?;
    let config_path = dir.path().join("slmd.toml");
    let text = demo_config(
        dir.path(),
        &tcp_address.to_string(),
        &serial,
        &format!("http://{fleet_address}"),
        &api_address.to_string(),
    );
    write_private(&config_path, &text, &token).map_err(state_error)?;
    let config = config::load(&config_path)?;

    println!("slmd demo: one simulated meter of each family, no hardware needed");
    println!("  nl43-tcp     Rion NL-43, TCP {tcp_address}, polled once a second");
    for (meter, path) in &serial {
        println!(
            "  {:<12} {}, serial {}",
            meter.id,
            meter.what,
            path.display()
        );
    }
    println!("  fleet        http://{fleet_address} (local sink, pushes every 5 s)");
    println!(
        "  limits       1-minute and 15-minute levels; alert demo-loud when Lp > 75 dB for 2 s"
    );
    println!("  page         http://{api_address}/ (the field page: open it in a browser)");
    println!("  config and state in {}", dir.path().display());
    println!("  Ctrl-C to stop");
    println!();
    let result = supervisor::run(
        config,
        supervisor::Options::new(PrintMode::Text, None),
        shutdown,
    )
    .await;
    sims.cancel();
    Ok(result?)
}

/// Writes the config readable by its owner only (it holds the demo token).
fn write_private(path: &Path, text: &str, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.replace("{token}", token).as_bytes())
}

/// A simulated meter on a pseudo-terminal.
struct SerialMeter {
    /// Device id.
    id: &'static str,
    /// The simulator's personality.
    family: Family,
    /// `protocol = "…"`.
    protocol: &'static str,
    /// Seed of its level walk.
    seed: u64,
    /// Extra device keys.
    extra: &'static str,
    /// What the banner says.
    what: &'static str,
}

/// The demo's serial meters: one per family, and an NL-43 streaming.
const SERIAL_METERS: [SerialMeter; 4] = [
    SerialMeter {
        id: "nl43-stream",
        family: Family::Nl43,
        protocol: "nl43",
        seed: 53,
        extra: "mode = \"stream\"\n",
        what: "Rion NL-43 streaming DRD? (10 readings a second)",
    },
    SerialMeter {
        id: "xl2",
        family: Family::Xl2,
        protocol: "xl2",
        seed: 61,
        extra: "",
        what: "NTi XL2, polled once a second",
    },
    SerialMeter {
        id: "svantek",
        family: Family::Svantek,
        protocol: "svantek",
        seed: 67,
        extra: "",
        what: "Svantek SVAN 971, polled once a second",
    },
    SerialMeter {
        id: "casella",
        family: Family::Casella,
        protocol: "casella",
        seed: 71,
        extra: "",
        what: "Casella CEL-63x, pushes a reading a second",
    },
];

fn demo_config(
    dir: &Path,
    tcp_address: &str,
    serial: &[(&SerialMeter, PathBuf)],
    fleet_url: &str,
    api_address: &str,
) -> String {
    let mut devices = format!(
        r#"[[device]]
id = "nl43-tcp"
protocol = "nl43"
transport = "tcp"
address = "{tcp_address}"
poll_interval = "1s"
"#
    );
    for (meter, path) in serial {
        devices.push_str(&format!(
            "\n[[device]]\nid = \"{}\"\nprotocol = \"{}\"\ntransport = \"serial\"\npath = \"{}\"\n{}",
            meter.id,
            meter.protocol,
            path.display(),
            meter.extra
        ));
    }
    format!(
        r#"# Written by `slmd demo`.
[gateway]
id = "demo"
state_dir = "{state}"

{devices}
[api]
# A port that was free when the demo started; the field page is at /.
listen = "{api_address}"

[fleet]
enabled = true
url = "{fleet_url}"
tokens = ["{{token}}"]

# Noise limits at the edge: one-minute levels, and a limit the simulated
# trucks passing by break now and then.
[levels]
intervals = ["1m", "15m"]

[[alert]]
id = "demo-loud"
metric = "lp"
above = 75.0
for = "2s"
clear_below = 70.0
"#,
        state = dir.join("state").display(),
    )
}
