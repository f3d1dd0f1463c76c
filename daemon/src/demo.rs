//! `slmd demo`: the whole pipeline on this machine with no meter attached.
//!
//! Starts two simulated NL-43 meters from the HIL kit, one over a
//! pseudo-terminal (the serial path) and one over TCP, writes a config for
//! them into a temporary folder, loads it through the same validation as a
//! real config, and runs the daemon on it, printing readings until Ctrl-C.

use crate::config;
use crate::printer::PrintMode;
use crate::supervisor;
use slmd_hil::{SimConfig, Simulator};
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
    /// The buffer could not be opened in the demo's state folder.
    #[error("demo buffer: {0}")]
    Buffer(#[from] crate::buffer::BufferError),
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
    let serial_meter = Simulator::new(SimConfig {
        seed: 53,
        ..SimConfig::default()
    });
    let pty = serial_meter
        .open_pty(Some(dir.path().join("ttyNL43")))
        .map_err(DemoError::Simulator)?;
    let serial_path = pty.path().to_owned();

    let sims = shutdown.child_token();
    let tcp_stop = sims.clone();
    tokio::spawn(async move {
        if let Err(e) = tcp_meter.serve_tcp(listener, tcp_stop).await {
            tracing::error!("simulated TCP meter stopped: {e}");
        }
    });
    let pty_stop = sims.clone();
    tokio::spawn(async move {
        if let Err(e) = pty.serve(pty_stop).await {
            tracing::error!("simulated serial meter stopped: {e}");
        }
    });

    let config_path = dir.path().join("slmd.toml");
    let text = demo_config(dir.path(), &tcp_address.to_string(), &serial_path);
    std::fs::write(&config_path, text).map_err(state_error)?;
    let config = config::load(&config_path)?;

    println!("slmd demo: two simulated Rion NL-43 meters, no hardware needed");
    println!("  nl43-tcp     TCP    {tcp_address}");
    println!("  nl43-serial  serial {}", serial_path.display());
    println!("  config and state in {}", dir.path().display());
    println!("  Ctrl-C to stop");
    println!();
    let result = supervisor::run(config, PrintMode::Text, shutdown).await;
    sims.cancel();
    Ok(result?)
}

fn demo_config(dir: &Path, tcp_address: &str, serial_path: &Path) -> String {
    format!(
        r#"# Written by `slmd demo`.
[gateway]
id = "demo"
state_dir = "{state}"

[[device]]
id = "nl43-tcp"
protocol = "nl43"
transport = "tcp"
address = "{tcp_address}"
poll_interval = "1s"

[[device]]
id = "nl43-serial"
protocol = "nl43"
transport = "serial"
path = "{serial}"
baud = 38400
poll_interval = "1s"
"#,
        state = dir.join("state").display(),
        serial = serial_path.display(),
    )
}
