//! Helpers for the XL2, Svantek and Casella personalities: a raw byte
//! reader with deadlines, the family's probe (one question and its answer,
//! or one pushed group), reading events, and a pty-served simulator.

use super::DEADLINE;
use slmd_hil::{Family, Metrics, SimConfig, SimEvent, Simulator};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A host's end of a link, read as raw bytes.
pub struct Wire<S> {
    pub io: S,
    /// Bytes read and not yet taken.
    pub pending: Vec<u8>,
    /// `read` calls that returned data.
    pub reads: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(io: S) -> Self {
        Wire {
            io,
            pending: Vec::new(),
            reads: 0,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write to the meter");
        self.io.flush().await.expect("flush");
    }

    /// Reads until `end(pending)` finds the end of what is wanted; takes and
    /// returns everything up to it. Fails at end of stream or after [`DEADLINE`].
    pub async fn take_until(&mut self, end: impl Fn(&[u8]) -> Option<usize>) -> Vec<u8> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(at) = end(&self.pending) {
                    return self.pending.drain(..at).collect();
                }
                let mut buf = [0u8; 1024];
                let n = self.io.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "closed early after {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                self.reads += 1;
                self.pending.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "nothing complete in time; got {:?}",
                String::from_utf8_lossy(&self.pending)
            )
        })
    }

    /// Everything up to and including `needle`.
    pub async fn take_through(&mut self, needle: &[u8]) -> Vec<u8> {
        self.take_until(|b| find(b, needle).map(|at| at + needle.len()))
            .await
    }

    /// The next LF-terminated line, without CR LF.
    pub async fn line(&mut self) -> String {
        let raw = self.take_through(b"\n").await;
        String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_owned()
    }

    /// The next `#…;` frame (bytes before its `#` are skipped).
    pub async fn frame(&mut self) -> String {
        let raw = self.take_through(b";").await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let start = text.rfind('#').expect("a frame starts with #");
        text[start..].to_owned()
    }

    /// Whether nothing arrives within `within`.
    pub async fn quiet(&mut self, within: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, self.io.read(&mut buf)).await {
            Err(_) => true,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&buf[..n]);
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// Whether the link reads end of file (or fails) within [`DEADLINE`].
    pub async fn closed(&mut self) -> bool {
        super::closed(&mut self.io).await
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The family's probe: asks one question (nothing for the Casella, which
/// pushes) and returns `(bytes before the answer, the answer)`.
pub async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    family: Family,
) -> (Vec<u8>, String) {
    let (start, end): (&[u8], &[u8]) = match family {
        Family::Xl2 => {
            wire.send(b"*IDN?\n").await;
            (b"NTiAudio,XL2,", b"V4.71\n")
        }
        Family::Svantek => {
            wire.send(b"#1;").await;
            (b"#1,U971", b";")
        }
        Family::Casella => (b"<LAeq>", b"<1/1 OCT LCeq>"),
        Family::Nl43 => unreachable!("the NL-43 has its own client"),
    };
    let mut raw = wire.take_through(start).await;
    let before = raw[..raw.len() - start.len()].to_vec();
    raw.drain(..before.len());
    raw.extend(wire.take_through(end).await);
    if family == Family::Casella {
        raw.extend(wire.take_through(b"\r\n").await);
    }
    (before, String::from_utf8_lossy(&raw).into_owned())
}

/// A configuration of `family` with the rest default.
pub fn config(family: Family) -> SimConfig {
    SimConfig {
        family,
        ..SimConfig::default()
    }
}

/// The next reading event: its family, metrics and device time.
pub async fn next_reading(
    events: &mut broadcast::Receiver<SimEvent>,
) -> (Family, Metrics, Option<String>) {
    match super::wait_event(events, "reading", |e| matches!(e, SimEvent::Reading { .. })).await {
        SimEvent::Reading {
            family,
            metrics,
            device_time,
            replayed,
            ..
        } => {
            assert!(!replayed, "only the NL-43 replays");
            (family, metrics, device_time)
        }
        _ => unreachable!(),
    }
}

/// A value as written (`53,8` read as 53.8; dashes and `?` as `None`).
pub fn number(text: &str) -> Option<f64> {
    text.trim().replace(',', ".").parse().ok()
}

/// A simulator served on a pty, optionally behind a link.
pub struct PtySim {
    pub sim: Simulator,
    pub path: PathBuf,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl PtySim {
    pub fn start(config: SimConfig, link: Option<PathBuf>) -> PtySim {
        let sim = Simulator::new(config);
        let meter = sim.open_pty(link).expect("pty");
        let path = meter.path().to_owned();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(meter.serve(shutdown.clone()));
        PtySim {
            sim,
            path,
            shutdown,
            server,
        }
    }

    pub fn open(&self) -> Wire<super::PtyClient> {
        open_pty(&self.path)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("serve");
    }
}

/// Opens a pty slave (or a link to one) as a host would.
pub fn open_pty(path: &Path) -> Wire<super::PtyClient> {
    Wire::new(super::PtyClient::open(path).expect("open the pty"))
}
