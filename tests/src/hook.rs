//! A site's webhook receiver (or an ntfy server) for end-to-end tests: a
//! real HTTP/1.1 server on 127.0.0.1 that records every request in arrival
//! order and answers `200 {}`, or a chosen error status while told to fail,
//! and that can go down (its listening socket closed: connections are
//! refused) and come back on the same port.
//!
//! Plain `std::net` with a thread per connection; every answer carries
//! `Connection: close`, so no pooled connection outlives a [`HookServer::down`].
//! Waits poll with a deadline ([`HookServer::wait_for`]); nothing sleeps to
//! synchronise.

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a connection may take to deliver its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request taken (headers and body).
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// One request as the hook received it.
#[derive(Debug, Clone, PartialEq)]
pub struct HookRequest {
    /// `POST`, `PUT`, ...
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// Header names (lower case) and values, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy UTF-8; unchunked when it came chunked).
    pub body: String,
    /// The body as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The status answered (`200`, or the failing status then).
    pub status: u16,
}

impl HookRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> &Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("not JSON: {} {} {:?}", self.method, self.path, self.body))
    }
}

/// What the connections share.
#[derive(Default)]
struct Shared {
    /// The record, behind a lock.
    state: Mutex<HookState>,
    /// Woken at every request recorded.
    recorded: Condvar,
}

/// What was received, and how to answer.
#[derive(Default)]
struct HookState {
    /// Every request received while up, answered or failed, in order.
    attempts: Vec<HookRequest>,
    /// Answer every request with this status instead of `200`.
    failing: Option<u16>,
    /// Whether the server is up (requests that complete while down are
    /// dropped unanswered and not recorded).
    up: bool,
}

/// The accept loop of one listening socket.
struct Acceptor {
    /// Tells the loop to close the socket.
    stop: Arc<AtomicBool>,
    /// The loop.
    thread: JoinHandle<()>,
}

/// A local stand-in for a webhook receiver or an ntfy server.
pub struct HookServer {
    /// The requests and the answer.
    shared: Arc<Shared>,
    /// `127.0.0.1:port`, the same across [`HookServer::down`] and
    /// [`HookServer::up`].
    addr: SocketAddr,
    /// The accept loop while up.
    acceptor: Mutex<Option<Acceptor>>,
}

impl HookServer {
    /// Listens on 127.0.0.1, any free port; up, answering `200 {}`.
    pub fn start() -> HookServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the hook server");
        let addr = listener.local_addr().expect("the hook server's address");
        let server = HookServer {
            shared: Arc::default(),
            addr,
            acceptor: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port<path>`, e.g. `url("/noise")` for a
    /// channel's `url`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests answered `200`, in arrival order.
    pub fn requests(&self) -> Vec<HookRequest> {
        self.state()
            .attempts
            .iter()
            .filter(|r| r.status == 200)
            .cloned()
            .collect()
    }

    /// Every request received, answered `200` or failed, in arrival order.
    pub fn attempts(&self) -> Vec<HookRequest> {
        self.state().attempts.clone()
    }

    /// Waits until at least `n` requests were answered `200`; returns them
    /// all. Panics at the deadline, saying what came.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<HookRequest> {
        self.wait_until(timeout, |state| {
            state.attempts.iter().filter(|r| r.status == 200).count() >= n
        })
        .unwrap_or_else(|attempts| {
            panic!(
                "the hook did not get {n} answered requests in {timeout:?}; attempts: {attempts:#?}"
            )
        });
        self.requests()
    }

    /// Waits until at least `n` requests arrived (answered or failed);
    /// returns them all. Panics at the deadline, saying what came.
    pub fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<HookRequest> {
        self.wait_until(timeout, |state| state.attempts.len() >= n)
            .unwrap_or_else(|attempts| {
                panic!("the hook did not get {n} attempts in {timeout:?}; attempts: {attempts:#?}")
            })
    }

    /// Waits until `done` holds; the attempts then, or at the deadline as
    /// the error.
    fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&HookState) -> bool,
    ) -> Result<Vec<HookRequest>, Vec<HookRequest>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if done(&state) {
                return Ok(state.attempts.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(state.attempts.clone());
            }
            state = self
                .shared
                .recorded
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Answers every request with `status` (e.g. `Some(503)`; still
    /// recorded, as an attempt), or `200 {}` again with `None`.
    pub fn set_failing(&self, status: Option<u16>) {
        self.state().failing = status;
    }

    /// Closes the listening socket: connections are refused until
    /// [`HookServer::up`]. A request still arriving on a connection taken
    /// before is dropped unanswered.
    pub fn down(&self) {
        let acceptor = self.lock_acceptor().take();
        self.state().up = false;
        if let Some(acceptor) = acceptor {
            acceptor.stop.store(true, Ordering::SeqCst);
            // Wakes the blocking accept; refused is fine (already closed).
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = acceptor.thread.join();
        }
    }

    /// Listens again on the same port (after [`HookServer::down`]; a no-op
    /// while up). Panics if the port was taken meanwhile.
    pub fn up(&self) {
        if self.lock_acceptor().is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// Starts the accept loop on `listener`.
    fn serve(&self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        self.state().up = true;
        let thread = {
            let (stop, shared) = (Arc::clone(&stop), Arc::clone(&self.shared));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = Arc::clone(&shared);
                    std::thread::spawn(move || handle(&shared, stream));
                }
                // The listener drops here: the port is closed.
            })
        };
        *self.lock_acceptor() = Some(Acceptor { stop, thread });
    }

    /// The state, tolerant of a poisoned lock.
    fn state(&self) -> MutexGuard<'_, HookState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The accept loop's slot, tolerant of a poisoned lock.
    fn lock_acceptor(&self) -> MutexGuard<'_, Option<Acceptor>> {
        self.acceptor.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// Reads one request from `stream`, records it and answers it.
fn handle(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let Some(mut request) = read_request(&mut stream) else {
        return;
    };
    let status = {
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.up {
            return;
        }
        request.status = state.failing.unwrap_or(200);
        state.attempts.push(request);
        shared.recorded.notify_all();
        state.attempts.last().map_or(200, |r| r.status)
    };
    let body = if status == 200 {
        "{}".to_owned()
    } else {
        format!(r#"{{"error":"failing","status":{status}}}"#)
    };
    let answer = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.flush();
}

/// A reason phrase for `status`.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Reads a whole request (Content-Length or chunked body), `None` when the
/// connection ends or misbehaves first.
fn read_request(stream: &mut TcpStream) -> Option<HookRequest> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if raw.len() > MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split_whitespace();
    let (method, path) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let chunked = find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length: usize = find("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    if chunked {
        while !body.ends_with(b"0\r\n\r\n") {
            if body.len() > MAX_REQUEST {
                return None;
            }
            let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
            body.extend_from_slice(&chunk[..n]);
        }
        body = crate::fleet::dechunk(&body);
    } else {
        if length > MAX_REQUEST {
            return None;
        }
        while body.len() < length {
            let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_str(&body).ok();
    Some(HookRequest {
        method,
        path,
        headers,
        body,
        json,
        status: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::http;
    use serde_json::json;

    const WAIT: Duration = Duration::from_secs(10);

    /// POSTs `body` as JSON to `path` on `hook`.
    fn post(
        hook: &HookServer,
        path: &str,
        body: &Value,
    ) -> std::io::Result<crate::fleet::Response> {
        http(
            &hook.addr().to_string(),
            "POST",
            path,
            &[("Content-Type", "application/json"), ("X-Site", "north")],
            body.to_string().as_bytes(),
        )
    }

    #[test]
    fn records_requests_in_order_and_answers_200() {
        let hook = HookServer::start();
        assert!(hook.url("/noise").starts_with("http://127.0.0.1:"));
        assert!(hook.url("/noise").ends_with("/noise"));
        let first = post(
            &hook,
            "/noise",
            &json!({"alert": "day-limit", "event": "onset"}),
        )
        .expect("an answer");
        assert_eq!((first.status, first.body.as_str()), (200, "{}"));
        post(&hook, "/topic?x=1", &json!({"n": 2})).expect("an answer");
        let plain =
            http(&hook.addr().to_string(), "PUT", "/ntfy", &[], b"not json").expect("an answer");
        assert_eq!(plain.status, 200);
        let got = hook.wait_for(3, WAIT);
        assert_eq!(got.len(), 3);
        assert_eq!(
            (got[0].method.as_str(), got[0].path.as_str()),
            ("POST", "/noise")
        );
        assert_eq!(got[0].header("x-site"), Some("north"));
        assert_eq!(got[0].header("Content-Type"), Some("application/json"));
        assert_eq!(got[0].json()["event"], "onset");
        assert_eq!(got[1].path, "/topic?x=1");
        assert_eq!(
            (got[2].body.as_str(), got[2].json.is_none()),
            ("not json", true)
        );
        assert_eq!(hook.attempts(), got);
    }

    #[test]
    fn a_chunked_body_is_read_whole() {
        let hook = HookServer::start();
        let mut stream = TcpStream::connect(hook.addr()).expect("connect");
        stream
            .write_all(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(hook.wait_for(1, WAIT)[0].json(), &json!({"a": 1}));
    }

    #[test]
    fn failing_answers_the_status_and_counts_attempts() {
        let hook = HookServer::start();
        hook.set_failing(Some(503));
        let failed = post(&hook, "/noise", &json!({"n": 1})).expect("an answer");
        assert_eq!(failed.status, 503);
        assert_eq!(hook.wait_for_attempts(1, WAIT).len(), 1);
        assert!(hook.requests().is_empty());
        hook.set_failing(None);
        assert_eq!(
            post(&hook, "/noise", &json!({"n": 1}))
                .expect("an answer")
                .status,
            200
        );
        let accepted = hook.wait_for(1, WAIT);
        assert_eq!(accepted.len(), 1);
        let attempts = hook.attempts();
        assert_eq!(
            attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
            vec![503, 200]
        );
    }

    #[test]
    fn down_refuses_connections_and_up_listens_on_the_same_port() {
        let hook = HookServer::start();
        let addr = hook.addr();
        assert!(hook.is_up());
        hook.down();
        assert!(!hook.is_up());
        let refused = TcpStream::connect(addr).expect_err("nothing listens");
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        assert!(post(&hook, "/noise", &json!({})).is_err());
        hook.up();
        assert_eq!(hook.addr(), addr);
        assert_eq!(
            post(&hook, "/noise", &json!({"back": true}))
                .expect("an answer")
                .status,
            200
        );
        assert_eq!(hook.wait_for(1, WAIT)[0].json()["back"], true);
        assert!(hook.attempts().len() == 1, "nothing recorded while down");
        // Down and up again, twice over.
        hook.down();
        hook.down();
        hook.up();
        hook.up();
        assert_eq!(
            post(&hook, "/again", &json!({})).expect("an answer").status,
            200
        );
    }

    #[test]
    fn wait_for_waits_for_a_request_from_another_thread() {
        let hook = HookServer::start();
        let addr = hook.addr().to_string();
        let sender = std::thread::spawn(move || {
            http(
                &addr,
                "POST",
                "/late",
                &[("Content-Type", "application/json")],
                b"{}",
            )
        });
        let got = hook.wait_for(1, WAIT);
        assert_eq!(got[0].path, "/late");
        assert_eq!(
            sender.join().expect("sender").expect("an answer").status,
            200
        );
    }
}
