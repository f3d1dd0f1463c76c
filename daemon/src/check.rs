//! `slmd check`: the config validated, then every meter probed, so an
//! installer learns on site, before starting the service, whether each
//! meter is wired, powered and answering.
//!
//! A probe opens the meter's link exactly as the daemon would (TCP with
//! keepalive, or the serial port exclusively), lets the meter's family ask
//! who it is and what it is doing ([`crate::device::Family::probe`]), and
//! closes it. Everything has a short deadline. A meter whose
//! only TCP slot or serial port is held by a running slmd fails the probe:
//! the table says so, because that is what the installer needs to know.

use crate::config::{Config, DeviceConfig};
use crate::device::link;
use std::time::Duration;

/// Longest a single probe may take, link and both questions included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One meter's probe.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Device id.
    pub device: String,
    /// Where it was looked for (`tcp 192.0.2.10:2255`, `serial /dev/...`).
    pub target: String,
    /// What it answered, or why it did not.
    pub outcome: Result<String, String>,
}

/// Probes every configured meter at the same time (a field tech should not
/// wait the full deadline once per dead meter), in config order.
pub async fn probe_all(config: &Config, timeout: Duration) -> Vec<Probe> {
    let handles: Vec<_> = config
        .devices
        .iter()
        .cloned()
        .map(|device| {
            tokio::spawn(async move {
                let outcome = match tokio::time::timeout(timeout, probe(&device)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!("no answer within {}s", timeout.as_secs())),
                };
                Probe {
                    target: device.target(),
                    device: device.id,
                    outcome,
                }
            })
        })
        .collect();
    let mut probes = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(probe) = handle.await {
            probes.push(probe);
        }
    }
    probes
}

/// Opens the link as the daemon would and hands it to the family's probe.
async fn probe(device: &DeviceConfig) -> Result<String, String> {
    let link = link::open(device).await.map_err(|e| {
        let text = e.to_string();
        if text.contains("refused") || text.contains("busy") || text.contains("locked") {
            format!("{text} (is another slmd, or another program, using this meter?)")
        } else {
            text
        }
    })?;
    device.family().probe(link, device).await
}

/// The probes as a table that fits a phone screen, one meter per line.
pub fn render(probes: &[Probe]) -> String {
    let id_width = probes
        .iter()
        .map(|p| p.device.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!("{:<id_width$}  {:<4}  result\n", "meter", "ok");
    for probe in probes {
        let (mark, text) = match &probe.outcome {
            Ok(text) => ("ok", text.as_str()),
            Err(text) => ("FAIL", text.as_str()),
        };
        out.push_str(&format!(
            "{:<id_width$}  {mark:<4}  {}: {text}\n",
            probe.device, probe.target
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_each_meter() {
        let probes = [
            Probe {
                device: "north".into(),
                target: "tcp 192.0.2.10:2255".into(),
                outcome: Ok("answers, serial 00412345, measuring".into()),
            },
            Probe {
                device: "south-long-name".into(),
                target: "serial /dev/ttyUSB0".into(),
                outcome: Err("no answer within 5s".into()),
            },
        ];
        let table = render(&probes);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "meter            ok    result");
        assert_eq!(
            lines[1],
            "north            ok    tcp 192.0.2.10:2255: answers, serial 00412345, measuring"
        );
        assert_eq!(
            lines[2],
            "south-long-name  FAIL  serial /dev/ttyUSB0: no answer within 5s"
        );
    }
}
