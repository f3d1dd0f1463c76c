//! The API under abuse, end to end: the real `slmd` under the descriptor
//! limit its systemd unit sets, a real meter simulator that drops its link
//! every two seconds (so the daemon must keep opening sockets), and
//! thousands of real connections from someone on the gateway's network.
//!
//! What a user would notice, and what these tests hold: `/v1/status` keeps
//! answering, the meter keeps reconnecting, the daemon's descriptors and
//! memory stay bounded, and connections that send nothing, or a request
//! head that never ends, are closed.

use serde_json::Value;
use slmd_e2e::api::{Sse, api_address, status, wait_status};
use slmd_e2e::fleet::http;
use slmd_e2e::{Daemon, Setup, Sim, open_fds, poll_until, raise_fd_limit, rss_kib, tcp_devices};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The unit's `LimitNOFILE` (systemd/slmd.service).
const UNIT_FD_LIMIT: u64 = 4096;

/// The daemon on `config` under `fd_limit` open files, printing nothing.
fn daemon_with_fd_limit(config: &Path, fd_limit: u64) -> Daemon {
    Daemon::start_with_fd_limit(config, fd_limit, "none")
}

/// Lets this test process hold thousands of sockets.
fn raise_own_fd_limit(wanted: u64) {
    let soft = raise_fd_limit(wanted);
    assert!(
        soft >= wanted,
        "this test needs {wanted} open files; the hard limit allows {soft}"
    );
}

fn api_status(api: &str) -> Value {
    wait_status(api, TIMEOUT)
}

#[test]
fn thousands_of_silent_connections_starve_neither_status_nor_the_meter() {
    const ATTEMPTS: usize = 4200;
    raise_own_fd_limit(ATTEMPTS as u64 + 512);
    let sims = vec![Sim::tcp(&["--seed", "1301", "--drop-every", "2s"])];
    let setup = Setup::new();
    let daemon = daemon_with_fd_limit(&setup.config(&tcp_devices(&sims)), UNIT_FD_LIMIT);
    let api = api_address(&daemon.proc);
    let pid = daemon.proc.pid();
    let first = api_status(&api);
    let cap = first["connections"]["max"].as_u64().expect("a cap");
    assert_eq!(cap, 256, "the cap under the unit's limit");
    poll_until(TIMEOUT, || {
        (status(&api)?["devices"][0]["readings_total"].as_u64()? > 0).then_some(())
    })
    .expect("the meter reads");
    let rss_before = rss_kib(pid);

    // Connect and send nothing, as fast as this process can; ask for the
    // status every 500 connections.
    let mut held = Vec::new();
    let mut refused = 0;
    let mut slowest_status = Duration::ZERO;
    for i in 0..ATTEMPTS {
        match TcpStream::connect_timeout(&api.parse().expect("address"), Duration::from_secs(5)) {
            Ok(stream) => held.push(stream),
            Err(_) => refused += 1,
        }
        if i % 500 == 499 {
            let asked = Instant::now();
            let answer = status(&api).unwrap_or_else(|| {
                panic!(
                    "/v1/status did not answer with {} connections held\n{}",
                    held.len(),
                    daemon.proc.transcript()
                )
            });
            slowest_status = slowest_status.max(asked.elapsed());
            assert!(answer["connections"]["open"].as_u64() <= Some(cap));
        }
    }
    let fds = open_fds(pid);
    let rss_peak = rss_kib(pid);
    // The meter's link drops every 2 s: it must reconnect twice more while
    // every connection above is still held by the client.
    let connects = api_status(&api)["devices"][0]["connects"]
        .as_u64()
        .unwrap_or(0);
    poll_until(TIMEOUT, || {
        (status(&api)?["devices"][0]["connects"].as_u64()? >= connects + 2).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the meter did not reconnect while the API was flooded\n{}",
            daemon.proc.transcript()
        )
    });
    let after = api_status(&api);
    eprintln!(
        "{} connections attempted ({refused} not established), slowest status {slowest_status:?}, \
         daemon fds {fds}, RSS {rss_before} KiB before, {rss_peak} KiB at the peak; {}",
        ATTEMPTS, after["connections"]
    );
    // A connection closed to make room lets go of its descriptor when its
    // task next runs, so a flood can briefly hold more than the cap; far
    // from the limit, and never near the reserve.
    assert!(
        fds < 2 * (cap as usize) + 128,
        "the daemon holds {fds} descriptors with a cap of {cap} connections"
    );
    assert!(after["connections"]["evicted_total"].as_u64() > Some(0));
    assert!(
        !daemon.proc.transcript().contains("Too many open files"),
        "{}",
        daemon.proc.transcript()
    );
    // Memory: bounded by the cap, not by the number of attempts
    // (`MAX_CONNECTIONS` × about 40 KiB, plus the allocator's slack).
    assert!(
        rss_peak.saturating_sub(rss_before) < 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_peak} KiB"
    );
    drop(held);
    poll_until(TIMEOUT, || {
        (status(&api)?["connections"]["open"].as_u64()? <= 1).then_some(())
    })
    .expect("the connections are released");
}

#[test]
fn a_silent_connection_and_an_endless_request_head_are_closed() {
    let setup = Setup::new();
    let daemon = Daemon::start(&setup.config(""));
    let api = api_address(&daemon.proc);

    let mut endless = TcpStream::connect(&api).expect("connect");
    endless.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    endless
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: ")
        .expect("write");
    // Past MAX_REQUEST_HEAD (16 KiB): the daemon cuts it at once. The
    // write may itself fail once the daemon has closed.
    let _ = endless.write_all(&[b'a'; 20 * 1024]);
    let mut buf = [0u8; 64];
    let read = endless.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "an endless request head was answered: {read:?}"
    );

    // One that sends nothing is closed after HEADER_TIMEOUT (10 s).
    let mut silent = TcpStream::connect(&api).expect("connect");
    silent.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "a silent connection was kept past the read timeout: {read:?}"
    );
    // A request that arrives whole still gets its answer.
    let r = http(&api, "GET", "/v1/status", &[], b"").expect("answer");
    assert_eq!(r.status, 200);
    let counts = r.json()["connections"].clone();
    assert!(counts["timed_out_total"].as_u64() >= Some(2), "{counts}");
}

#[test]
fn when_every_connection_is_busy_a_new_one_gets_503_until_one_ends() {
    // 300 descriptors: the cap is what is left after the reserve.
    let setup = Setup::new();
    let daemon = daemon_with_fd_limit(&setup.config(""), 300);
    let api = api_address(&daemon.proc);
    let cap = api_status(&api)["connections"]["max"]
        .as_u64()
        .expect("a cap");
    assert_eq!(cap, 300 - 256);
    // Every slot busy with a live stream.
    let streams: Vec<Sse> = (0..cap)
        .map(|_| {
            let sse = Sse::open(&api, "/v1/stream", None);
            assert_eq!(sse.status(), 200);
            sse
        })
        .collect();
    let full = http(&api, "GET", "/v1/status", &[], b"").expect("an answer");
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.json()["error"], "too many connections");
    // One stream ends: the next request gets in.
    streams[0].close();
    let ok = poll_until(TIMEOUT, || {
        let r = http(&api, "GET", "/v1/status", &[], b"").ok()?;
        (r.status == 200).then(|| r.json())
    })
    .expect("status once a slot is free");
    assert!(ok["connections"]["refused_total"].as_u64() >= Some(1));
    drop(streams);
}
