//! Test helpers shared by the fleet simulator's tests (`fleet_sim`,
//! `fleet_heartbeat`): a fleet served on 127.0.0.1 and a client for it, the
//! requests both send, and the real `fleet-sim` binary.

use flate2::Compression;
use flate2::write::GzEncoder;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use slmd_hil::fleet::{FleetEvent, FleetSim, FleetSimConfig};
use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A gateway id.
pub const GW: &str = "gw-0042";

/// A fleet simulator served on 127.0.0.1 and a client for it.
pub struct Fleet {
    /// The simulator (the same fleet the server serves).
    pub sim: FleetSim,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Stops the server.
    shutdown: CancellationToken,
    /// The server task.
    server: JoinHandle<std::io::Result<()>>,
    /// A client without a timeout of its own (each wait has a deadline).
    pub client: reqwest::Client,
}

/// An answer: status, the headers a test looks at (`Retry-After`,
/// `Content-Type`), the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
}

impl Reply {
    /// The body as JSON; fails the test when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }
}

pub fn client(timeout: Option<Duration>) -> reqwest::Client {
    // reqwest is built without a crypto provider; plain HTTP needs none, but
    // the builder insists on one being installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().no_proxy();
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().expect("a reqwest client")
}

pub async fn start(config: FleetSimConfig) -> Fleet {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound address");
    let sim = FleetSim::new(config);
    let shutdown = CancellationToken::new();
    let server = {
        let (sim, shutdown) = (sim.clone(), shutdown.clone());
        tokio::spawn(async move { sim.serve(listener, shutdown).await })
    };
    Fleet {
        sim,
        base: format!("http://{addr}"),
        shutdown,
        server,
        client: client(None),
    }
}

/// A record as SPEC §3 shows it.
pub fn record(seq: u64) -> Value {
    json!({"seq": seq, "device": "nl43-north", "received_at": "2026-11-22T14:15:17.123Z",
           "device_time": "2026-11-22T14:15:16Z", "metrics": {"lp": 52.1, "leq": 55.3, "lmax": null},
           "state": "measuring", "flags": ["clock_unsynced"]})
}

/// A push body from `gateway` with records `seqs`.
pub fn batch(gateway: &str, seqs: &[u64]) -> Value {
    let records: Vec<Value> = seqs.iter().map(|&seq| record(seq)).collect();
    json!({"gateway": gateway, "records": records})
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

impl Fleet {
    /// Sends `request` and reads the whole answer in time.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = tokio::time::timeout(DEADLINE, request.send())
            .await
            .expect("an answer in time")
            .expect("an answer");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                })
        };
        let (retry_after, content_type) = (header("retry-after"), header("content-type"));
        let status = response.status().as_u16();
        let text = tokio::time::timeout(DEADLINE, response.text())
            .await
            .expect("a body in time")
            .expect("a body");
        Reply {
            status,
            retry_after,
            content_type,
            text,
        }
    }

    /// A POST to `path` with `bytes` as the body, the token (if any) and
    /// `headers` besides.
    pub fn post(
        &self,
        client: &reqwest::Client,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        bytes: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let mut request = client.post(format!("{}{path}", self.base)).body(bytes);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
    }

    /// POSTs `body` as JSON to `path` with `token`.
    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Reply {
        let request = self.post(
            &self.client,
            path,
            Some(token),
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        );
        self.send(request).await
    }

    /// Pushes `body` as JSON with `token`.
    pub async fn push(&self, token: &str, body: &Value) -> Reply {
        self.post_json("/api/fleet/ingest", token, body).await
    }

    /// Pushes `seqs` from [`GW`] with `token`.
    pub async fn push_seqs(&self, token: &str, seqs: &[u64]) -> Reply {
        self.push(token, &batch(GW, seqs)).await
    }

    /// An admin request with a raw body.
    pub async fn admin_raw(&self, method: &str, path: &str, body: &str) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        self.send(request).await
    }

    /// An admin request that must succeed; its JSON answer.
    pub async fn admin(&self, method: &str, path: &str, body: &Value) -> Value {
        let reply = self.admin_raw(method, path, &body.to_string()).await;
        assert_eq!(reply.status, 200, "{method} {path} {body}: {}", reply.text);
        reply.json()
    }

    /// A GET; its reply whatever the status.
    pub async fn get_raw(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }

    /// An admin GET that must succeed.
    pub async fn get(&self, path: &str) -> Value {
        let reply = self.get_raw(path).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text);
        reply.json()
    }

    /// Stops the server; it must return in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("the server stops in time")
            .expect("the server task")
            .expect("the server");
    }
}

/// Every event received so far.
pub fn drain(events: &mut broadcast::Receiver<FleetEvent>) -> Vec<FleetEvent> {
    let mut all = Vec::new();
    while let Ok(event) = events.try_recv() {
        all.push(event);
    }
    all
}

/// `fleet-sim`'s stdout, line by line.
pub type Stdout = Lines<BufReader<ChildStdout>>;

/// Starts the real `fleet-sim` binary with `args`; the process and its
/// stdout.
pub fn spawn_fleet_sim(args: &[&str]) -> (Child, Stdout) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet-sim");
    let stdout = child.stdout.take().expect("stdout piped");
    (child, BufReader::new(stdout).lines())
}

/// The next stdout line of `fleet-sim` as JSON, `None` at end of output.
pub async fn next_json(lines: &mut Stdout) -> Option<Value> {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a line from fleet-sim in time")
        .expect("read stdout")?;
    Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
}

/// Stops `fleet-sim` with SIGTERM; it must exit cleanly in time, its last
/// line the stats. Every line not read before, the stats line last.
pub async fn stop_fleet_sim(mut child: Child, mut lines: Stdout) -> Vec<Value> {
    let pid = Pid::from_raw(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("pid"),
    );
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let mut rest = Vec::new();
    while let Some(value) = next_json(&mut lines).await {
        rest.push(value);
    }
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("fleet-sim exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
    let stats = rest.last().expect("a stats line");
    assert_eq!(stats["event"], "stats", "{rest:?}");
    rest
}
