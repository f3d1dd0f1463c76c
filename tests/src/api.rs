//! The local side of end-to-end tests: the daemon's HTTP API (plain
//! requests and Server-Sent-Event streams) and a real Mosquitto broker.

use crate::{Feed, Proc, START_TIMEOUT};
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the daemon's API listens, from its log line
/// `API listening addr=127.0.0.1:PORT`.
pub fn api_address(daemon: &Proc) -> String {
    let (_, line) = daemon
        .stderr
        .wait_from(0, START_TIMEOUT, |l| l.contains("API listening"))
        .unwrap_or_else(|| panic!("the API did not start\n{}", daemon.transcript()));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in {line}"))
        .to_owned()
}

/// `GET /v1/status` of the daemon whose API is at `api`, when it answers
/// `200` with JSON.
pub fn status(api: &str) -> Option<Value> {
    let response = crate::fleet::http(api, "GET", "/v1/status", &[], b"").ok()?;
    (response.status == 200).then(|| serde_json::from_str(&response.body).ok())?
}

/// `GET /v1/status` of the daemon whose API is at `api`, waiting up to
/// `timeout` for a `200` (fails the test otherwise).
pub fn wait_status(api: &str, timeout: Duration) -> Value {
    crate::poll_until(timeout, || status(api)).unwrap_or_else(|| panic!("no status from {api}"))
}

/// Every record of `device` the buffer holds, by `seq` (its
/// `received_at` as Unix ms), paged through `history` as a client would:
/// the committed records, read while the daemon holds the file. `None`
/// when a page does not answer `200`.
pub fn committed(api: &str, device: &str) -> Option<std::collections::BTreeMap<u64, i64>> {
    let mut records = std::collections::BTreeMap::new();
    let mut after = None;
    loop {
        let path = match after {
            None => format!("/v1/devices/{device}/history?limit=10000"),
            Some(a) => format!("/v1/devices/{device}/history?limit=10000&after={a}"),
        };
        let response = crate::fleet::http(api, "GET", &path, &[], b"").ok()?;
        if response.status != 200 {
            return None;
        }
        let page: Value = serde_json::from_str(&response.body).ok()?;
        for record in page["records"].as_array()? {
            records.insert(record["seq"].as_u64()?, crate::received_at_ms(record)?);
        }
        match page["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => return Some(records),
        }
    }
}

/// [`committed`] for each of `devices`, together.
pub fn committed_all(api: &str, devices: &[&str]) -> Option<std::collections::BTreeMap<u64, i64>> {
    let mut all = std::collections::BTreeMap::new();
    for device in devices {
        all.extend(committed(api, device)?);
    }
    Some(all)
}

/// An open SSE stream: every line the server sent, followed live.
pub struct Sse {
    /// Lines of the response (status line and headers first).
    pub feed: Feed,
    /// The connection, to close it (or to keep it open without reading).
    pub stream: TcpStream,
}

impl Sse {
    /// `GET path` as HTTP/1.0 (so the body is plain, not chunked), with an
    /// optional bearer token; the lines are followed on a thread.
    pub fn open(addr: &str, path: &str, token: Option<&str>) -> Sse {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{auth}\r\n"
        )
        .expect("send request");
        let reader = stream.try_clone().expect("clone stream");
        Sse {
            feed: Feed::follow(reader),
            stream,
        }
    }

    /// The HTTP status code, once the status line arrived.
    pub fn status(&self) -> u16 {
        let (_, line) = self
            .feed
            .wait_from(0, START_TIMEOUT, |l| l.starts_with("HTTP/"))
            .expect("a status line");
        line.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Every `data:` payload that parses as JSON, in order.
    pub fn data(&self) -> Vec<Value> {
        self.feed
            .lines()
            .iter()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }

    /// The records received (payloads with a `seq`).
    pub fn records(&self) -> Vec<Value> {
        self.data()
            .into_iter()
            .filter(|v| v.get("seq").is_some() && v.get("metrics").is_some())
            .collect()
    }

    /// Waits until at least `n` records arrived.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let records = self.records();
            if records.len() >= n || std::time::Instant::now() >= deadline {
                return records;
            }
            let seen = self.feed.lines().len();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = self.feed.wait_from(seen, left, |_| true);
        }
    }

    /// Closes the connection (the reader thread's clone too).
    pub fn close(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Names of `event:` lines, in order.
    pub fn events(&self) -> Vec<String> {
        self.feed
            .lines()
            .iter()
            .filter_map(|l| l.strip_prefix("event:"))
            .map(|e| e.trim().to_owned())
            .collect()
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.close();
    }
}

/// A Mosquitto broker of its own on a free loopback port.
pub struct Broker {
    /// The broker process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Broker {
    /// Starts `mosquitto` on `port` (0: a free one) with a config in `dir`;
    /// fails the test when mosquitto or its clients are not installed.
    pub fn start(dir: &Path, port: u16) -> Broker {
        Broker::start_with(dir, port, "allow_anonymous true\n")
    }

    /// Like [`Broker::start`], with `settings` (mosquitto.conf lines: a
    /// password file, a bridge) instead of anonymous access.
    pub fn start_with(dir: &Path, port: u16, settings: &str) -> Broker {
        crate::needs::require_tools(&["mosquitto", "mosquitto_sub"]);
        let port = if port == 0 { free_port() } else { port };
        let config = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &config,
            // `user root`: stay the user we are (as root, mosquitto would
            // switch to `mosquitto` and could not read the test's files,
            // a password file it reloads on SIGHUP for one).
            format!("persistence false\nuser root\nlistener {port} 127.0.0.1\n{settings}"),
        )
        .expect("write mosquitto config");
        let mut cmd = Command::new(mosquitto_path());
        cmd.arg("-c").arg(&config);
        let proc = Proc::spawn(cmd);
        // Ready when it accepts connections.
        let ready = crate::poll_until(START_TIMEOUT, || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(
            ready.is_some(),
            "mosquitto did not start\n{}",
            proc.transcript()
        );
        Broker { proc, port }
    }

    /// `mqtt://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `mosquitto_sub -v` on `topic`: lines `topic payload`.
    pub fn subscribe(&self, topic: &str) -> Proc {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-v",
            "-t",
            topic,
        ]);
        Proc::spawn(cmd)
    }
}

fn mosquitto_path() -> String {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .find(|p| Path::new(p).exists())
        .map_or_else(|| "mosquitto".to_owned(), |p| (*p).to_owned())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
