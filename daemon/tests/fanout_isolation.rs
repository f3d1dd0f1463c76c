//! A subscriber that stops reading costs nobody anything: the daemon's
//! pipeline in-process (real buffer file, real API socket), a burst of
//! readings published into the hub, one SSE client that never reads and one
//! that reads everything.

use slmd::printer::PrintMode;
use slmd::record::{MeterState, Reading};
use slmd::supervisor::{self, Options};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BURST: u64 = 20_000;

fn reading(i: u64) -> Reading {
    Reading {
        device: Arc::from("m0"),
        received_at: chrono::Utc::now(),
        device_time: None,
        metrics: vec![
            ("lp", Some(40.0 + (i % 300) as f64 / 10.0)),
            ("leq", Some(55.5)),
        ],
        state: MeterState::Measuring,
        flags: Vec::new(),
    }
}

/// A raw SSE connection that asks for the stream and then never reads.
fn stuck_client(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    // A tiny receive window, so the server's buffers fill soon.
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&addr.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    write!(stream, "GET /v1/stream HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_costs_the_device_loop_the_buffer_and_other_subscribers_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    // A meter that does not answer: the test publishes the readings itself
    // (as fast as a busy gateway ever could), the device task just exists.
    let text = format!(
        "[gateway]\nid = \"gw\"\nstate_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n[[device]]\nid = \"m0\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:9\"\n",
        dir.path().join("state").display()
    );
    let config = slmd::config::parse(&text, Path::new("isolation.toml")).expect("valid");
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let gateway = supervisor::start(
        &config,
        &Options::new(PrintMode::None, None),
        &tracker,
        &shutdown,
    )
    .expect("starts");
    let addr = gateway.api_addr;

    let mut stuck = stuck_client(addr);
    // The healthy subscriber reads every event.
    let client = reqwest::Client::new();
    let mut response = client
        .get(format!("http://{addr}/v1/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 200);
    let healthy = tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut text = String::new();
        let mut lagged = false;
        while seqs.len() < BURST as usize {
            let Ok(Some(chunk)) = response.chunk().await else {
                break;
            };
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find('\n') {
                let line: String = text.drain(..=end).collect();
                if line.starts_with("event: lagged") || line.starts_with("event:lagged") {
                    lagged = true;
                }
                if let Some(data) = line.trim_end().strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                        if let Some(seq) = v["seq"].as_u64() {
                            seqs.push(seq);
                        }
                    }
                }
            }
        }
        (seqs, lagged)
    });

    // Wait until both streams are counted, then publish the burst in
    // steps a reading client keeps up with.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.hub.live_subscribers() < 2 {
        assert!(Instant::now() < deadline, "streams did not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written_before = gateway
        .buffer
        .get()
        .expect("buffer open")
        .counters()
        .written;
    let mut published = Vec::new();
    for i in 0..BURST {
        published.push(gateway.hub.publish(reading(i)).seq);
        if i % 200 == 199 {
            // Pacing the load, not waiting for anyone.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let (seqs, lagged) = tokio::time::timeout(Duration::from_secs(60), healthy)
        .await
        .expect("the healthy subscriber got the burst in time")
        .expect("reader task");
    assert!(!lagged, "the reading subscriber never lagged");
    let burst: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| published.contains(s))
        .collect();
    assert_eq!(
        burst, published,
        "every record, in order, despite the stuck one"
    );

    // The buffer wrote them all.
    let buffer = gateway.buffer.get().expect("buffer").clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while buffer.counters().written < written_before + BURST {
        assert!(
            Instant::now() < deadline,
            "the buffer fell behind: {:?}",
            buffer.counters()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(buffer.counters().lost, 0);

    // The stuck one, when it finally reads, is told what it missed (or was
    // cut off).
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let told = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match stuck.read(&mut buf) {
                Ok(0) => return "cut off".to_owned(),
                Ok(n) => {
                    all.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&all).contains("event: lagged") {
                        return "lagged".to_owned();
                    }
                    // Keep only the tail: the marker may straddle reads.
                    if all.len() > 1 << 20 {
                        all.drain(..all.len() - 4096);
                    }
                }
                Err(e) => return format!("error: {e}"),
            }
        }
        "nothing".to_owned()
    })
    .await
    .expect("reader");
    assert!(
        told == "lagged" || told == "cut off",
        "the stuck subscriber was told it lagged or cut off: {told}"
    );
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
}
