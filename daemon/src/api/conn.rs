//! Connections the API can cut.
//!
//! hyper writes a response body only as fast as the socket takes it, and a
//! connection whose peer stopped reading never finishes by itself: hyper
//! stops asking the body for more, so ending the body (or failing it) is
//! never noticed. To close such a connection, every accepted socket is
//! wrapped in a [`ConnIo`] holding a kill switch (a child of one
//! server-wide [`CancellationToken`]). Cancelling it makes the next (or
//! the pending) read, write or flush fail at once, which ends hyper's
//! connection task; the socket is then closed with `SO_LINGER = 0`, so the
//! kernel drops the unsent bytes and sends a reset instead of keeping them
//! for a peer that does not read.
//!
//! A stream also asks for a small kernel send buffer on its connection
//! ([`ConnKill::streaming`], applied before the next write): left to
//! autotuning, Linux lets the send buffer of a peer that stopped reading
//! grow to megabytes, hours of readings at a meter's pace, before the
//! stream itself notices anything. Plain answers keep the default.
//!
//! A handler reaches its connection's switch through the
//! [`ConnectInfo<ConnKill>`](axum::extract::ConnectInfo) request extension
//! that [`super::serve`] installs.
//!
//! # Limits
//!
//! Nobody on the gateway's network may take the daemon's file descriptors,
//! memory or attention away from the meters, the buffer and the uplink:
//!
//! - **At most [`MAX_CONNECTIONS`] open at once** (fewer when the process's
//!   descriptor limit minus [`FD_RESERVE`] is lower, see
//!   [`connection_cap`]): the rest of the daemon keeps at least
//!   [`FD_RESERVE`] descriptors whatever the API's clients do. A
//!   connection accepted at the cap closes the one that has been idle
//!   longest (no request in progress: a client that connected and sent
//!   nothing, or a keep-alive connection between requests), so a real
//!   client that sends its request gets an answer even while idle
//!   connections pour in; when every connection is busy with a request or
//!   a stream, the new one gets `503` and is closed. A connection closed to
//!   make room lets go of its descriptor when its task next runs, so a
//!   flood can hold briefly more than the cap (about 400 descriptors with
//!   256 in tests), still far from the reserve.
//! - **A request head must arrive within [`HEADER_TIMEOUT`]** of the
//!   connection opening (or of its previous answer), and be at most
//!   [`MAX_REQUEST_HEAD`] bytes; otherwise the connection is closed. This is
//!   what bounds a client that sends nothing, or a byte at a time.
//! - **A keep-alive connection idle for [`IDLE_TIMEOUT`]** is closed.
//!
//! A request in progress (a handler running, an answer or a stream being
//! written) is never cut by these timers; streams have their own bounds
//! (`stream_max`, the stuck-client bound). Memory per connection is then
//! bounded by what hyper buffers for one request head (its read buffer, at
//! most about 2 × [`MAX_REQUEST_HEAD`]) plus the connection task, about
//! 40 KiB, so idle clients can hold at most about
//! `MAX_CONNECTIONS` × 40 KiB = 10 MiB.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Most API connections open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// File descriptors left to the rest of the daemon (meters, buffer,
/// uplink, MQTT, logging) whatever the API's clients do.
pub const FD_RESERVE: usize = 256;

/// Fewest connections the API allows even under a tiny descriptor limit.
const MIN_CONNECTIONS: usize = 8;

/// A request head must be complete this long after the connection opened
/// or answered its previous request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes a request head may take (the API's requests are a line and a
/// few headers; browsers send a few KiB).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How often the timeouts are checked.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The body of the `503` a connection gets when every slot is busy.
const FULL_BODY: &str = "{\"error\":\"too many connections\",\"detail\":\"every API connection is busy; try again shortly\"}\n";

/// The connection cap for a process allowed `fd_limit` descriptors:
/// [`MAX_CONNECTIONS`], or fewer so that [`FD_RESERVE`] stay free.
pub fn connection_cap(fd_limit: Option<u64>) -> usize {
    let Some(limit) = fd_limit else {
        return MAX_CONNECTIONS;
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    limit
        .saturating_sub(FD_RESERVE)
        .clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// This process's soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Every open API connection, for the cap and the timeouts.
#[derive(Debug)]
pub(crate) struct Registry {
    /// Open connections by id.
    open: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// The next connection's id.
    next_id: AtomicU64,
    /// Time zero for [`ConnShared::idle_since_ms`].
    epoch: Instant,
    /// Most connections open at once.
    cap: usize,
    /// Connections refused with `503` (every slot busy).
    refused: AtomicU64,
    /// Idle connections closed to make room for a new one.
    evicted: AtomicU64,
    /// Connections closed by a timeout or an oversized request head.
    timed_out: AtomicU64,
    /// Whether the cap is being hit, to log once per episode.
    full: AtomicBool,
    /// Connections being answered `503` now (see [`refuse`]).
    refusing: AtomicUsize,
}

/// What the registry knows of one connection.
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// Cancel to cut the connection.
    kill: CancellationToken,
    /// Requests being handled or answered (0: idle, or a head arriving).
    in_flight: AtomicU32,
    /// When the connection last became idle, in ms since the epoch.
    idle_since_ms: AtomicU64,
    /// Bytes read since then: a request head arriving.
    head_bytes: AtomicUsize,
    /// Whether it has answered a request.
    served: AtomicBool,
    /// Set by a stream handler: use [`STREAM_SEND_BUFFER`] from now on.
    streaming: AtomicBool,
}

/// Open-connection counters, for status and metrics.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ConnectionStats {
    /// Open now.
    pub open: usize,
    /// The cap.
    pub max: usize,
    /// Refused with `503` since start.
    pub refused_total: u64,
    /// Idle ones closed to make room since start.
    pub evicted_total: u64,
    /// Closed for a slow or oversized request head, or idleness, since start.
    pub timed_out_total: u64,
}

impl Registry {
    /// A registry admitting at most `cap` connections.
    pub(crate) fn new(cap: usize) -> Registry {
        Registry {
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
            cap: cap.max(1),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            full: AtomicBool::new(false),
            refusing: AtomicUsize::new(0),
        }
    }

    /// Logs `what` once per episode of hitting the cap.
    fn note_full(&self, what: &str) {
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(cap = self.cap, "API: {} connections {what}", self.cap);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnShared>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counters now.
    pub(crate) fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            open: self.lock().len(),
            max: self.cap,
            refused_total: self.refused.load(Ordering::Relaxed),
            evicted_total: self.evicted.load(Ordering::Relaxed),
            timed_out_total: self.timed_out.load(Ordering::Relaxed),
        }
    }

    /// Registers a new connection under `kill`, closing the longest-idle
    /// one when at the cap; `None` when every open one is busy.
    fn admit(&self, kill: CancellationToken) -> Option<(u64, Arc<ConnShared>)> {
        let mut open = self.lock();
        if open.len() >= self.cap {
            let idlest = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                // Ties (the same millisecond) go to the earlier accepted.
                .min_by_key(|(id, c)| (c.idle_since_ms.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id);
            let Some(id) = idlest else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.note_full("busy; new ones get 503 until one ends");
                return None;
            };
            if let Some(idle) = open.remove(&id) {
                idle.kill.cancel();
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
            self.note_full("open; closing the longest idle ones to admit new ones");
        } else if open.len() + 1 < self.cap / 2 && self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("API: connections back under half the cap");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(ConnShared {
            kill,
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            head_bytes: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            streaming: AtomicBool::new(false),
        });
        open.insert(id, shared.clone());
        Some((id, shared))
    }

    /// Forgets a closed connection.
    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes idle connections past their timeout.
    pub(crate) fn sweep(&self) {
        let now = self.now_ms();
        let header = u64::try_from(HEADER_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        let idle = u64::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
        let mut open = self.lock();
        open.retain(|_, c| {
            if c.in_flight.load(Ordering::Relaxed) > 0 {
                return true;
            }
            let waiting_for_head =
                c.head_bytes.load(Ordering::Relaxed) > 0 || !c.served.load(Ordering::Relaxed);
            let limit = if waiting_for_head { header } else { idle };
            let since = c.idle_since_ms.load(Ordering::Relaxed);
            if now.saturating_sub(since) < limit {
                return true;
            }
            c.kill.cancel();
            self.timed_out.fetch_add(1, Ordering::Relaxed);
            false
        });
    }
}

impl ConnShared {
    /// A request started (its head is complete).
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's answer was written (or abandoned).
    fn end(&self, registry: &Registry) {
        self.head_bytes.store(0, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.idle_since_ms
            .store(registry.now_ms(), Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Held while a request is in progress; dropping it (with the answer's
/// body, once written) makes the connection idle again.
pub(crate) struct InFlight {
    conn: Arc<ConnShared>,
    registry: Arc<Registry>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.end(&self.registry);
    }
}

/// Middleware: marks the connection busy from the request's head to the
/// end of its answer (streams included), so the idle timers and the cap
/// leave it alone.
pub(crate) async fn track_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let conn = request
        .extensions()
        .get::<axum::extract::ConnectInfo<ConnKill>>()
        .map(|info| (info.0.shared.clone(), info.0.registry.clone()));
    let Some((conn, registry)) = conn else {
        return next.run(request).await;
    };
    conn.begin();
    let guard = InFlight { conn, registry };
    let response = next.run(request).await;
    response.map(|body| {
        axum::body::Body::new(Guarded {
            body,
            _guard: guard,
        })
    })
}

/// An answer's body holding its request's [`InFlight`].
struct Guarded {
    body: axum::body::Body,
    _guard: InFlight,
}

impl axum::body::HttpBody for Guarded {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How long to wait before accepting again after the OS refused a
/// connection for a reason that is not the peer's (out of descriptors...).
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// Kernel send buffer of a connection carrying a live stream (Linux
/// doubles it): with the client's own receive buffer, the hyper frames and
/// [`super::STREAM_QUEUE`], this is what a client that stopped reading can
/// hold before its stream notices and the stuck bound starts to run.
pub const STREAM_SEND_BUFFER: usize = 32 * 1024;

/// The API's listener: a TCP listener whose connections can be cut.
pub(crate) struct Conns {
    /// The bound socket.
    listener: TcpListener,
    /// Open connections.
    registry: Arc<Registry>,
    /// Parent of every connection's kill switch: cancelling it cuts all.
    all: CancellationToken,
    /// Whether accepting is failing, to log once per episode.
    failing: bool,
}

impl Conns {
    pub(crate) fn new(
        listener: TcpListener,
        registry: Arc<Registry>,
        all: CancellationToken,
    ) -> Conns {
        Conns {
            listener,
            registry,
            all,
            failing: false,
        }
    }
}

impl axum::serve::Listener for Conns {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ConnIo, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if std::mem::take(&mut self.failing) {
                        tracing::info!("API accepts connections again");
                    }
                    let kill = self.all.child_token();
                    let Some((id, shared)) = self.registry.admit(kill.clone()) else {
                        refuse(stream, self.registry.clone());
                        continue;
                    };
                    // Events are small and must go out at once.
                    let _ = stream.set_nodelay(true);
                    let io = ConnIo::new(stream, peer, id, shared, self.registry.clone());
                    return (io, peer);
                }
                // The peer gave up before we accepted: nothing to do.
                Err(e) if is_peer_error(&e) => {}
                Err(e) => {
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(
                            error = %e,
                            "API cannot accept connections; retrying every {}s",
                            ACCEPT_RETRY.as_secs()
                        );
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Connections being refused at once (each holds a descriptor for at most
/// [`REFUSE_WITHIN`]); beyond this they are closed without an answer.
const MAX_REFUSING: usize = 32;

/// How long a refused connection may take to be told.
const REFUSE_WITHIN: Duration = Duration::from_secs(2);

/// Answers `503` to a connection over the cap and closes it. The request
/// is read and dropped first (up to [`MAX_REQUEST_HEAD`]): closing a socket
/// with unread input sends a reset, which would discard the answer.
fn refuse(stream: TcpStream, registry: Arc<Registry>) {
    if registry.refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSING {
        registry.refusing.fetch_sub(1, Ordering::Relaxed);
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    }
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{FULL_BODY}",
            FULL_BODY.len()
        );
        let _ = tokio::time::timeout(REFUSE_WITHIN, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            let mut drained = 0;
            while drained < MAX_REQUEST_HEAD {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            io::Result::Ok(())
        })
        .await;
        registry.refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection, cut when its kill switch is cancelled.
pub(crate) struct ConnIo {
    /// The socket.
    stream: TcpStream,
    /// Who is on the other end, for log lines.
    peer: SocketAddr,
    /// Waits on the connection's switch (`shared.kill`), polled with every I/O call so a cancellation wakes
    /// a connection that is blocked on a full socket.
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether the socket was already set to reset on close.
    reset: bool,
    /// Whether `shared.streaming` was applied.
    small_buffer: bool,
    /// Its id in the registry.
    id: u64,
    /// What the registry knows of it, its switch and stream flag included
    /// (handed to handlers through [`ConnKill`]).
    shared: Arc<ConnShared>,
    /// Where it is registered (it leaves when dropped).
    registry: Arc<Registry>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

impl ConnIo {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        shared: Arc<ConnShared>,
        registry: Arc<Registry>,
    ) -> ConnIo {
        ConnIo {
            stream,
            peer,
            killed: Box::pin(shared.kill.clone().cancelled_owned()),
            reset: false,
            small_buffer: false,
            id,
            shared,
            registry,
        }
    }

    /// Counts bytes of a request head; cuts the connection when the head
    /// outgrows [`MAX_REQUEST_HEAD`].
    fn count_head(&mut self, read: usize) {
        if read == 0 || self.shared.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        let total = self.shared.head_bytes.fetch_add(read, Ordering::Relaxed) + read;
        if total > MAX_REQUEST_HEAD {
            self.registry.timed_out.fetch_add(1, Ordering::Relaxed);
            self.shared.kill.cancel();
        }
    }

    /// Applies a stream's small send buffer before the first write after
    /// the request for it.
    fn before_write(&mut self) {
        if !self.small_buffer && self.shared.streaming.load(Ordering::Relaxed) {
            self.small_buffer = true;
            let _ = socket2::SockRef::from(&self.stream).set_send_buffer_size(STREAM_SEND_BUFFER);
        }
    }

    /// `Some(error)` once the switch is cancelled (registering the waker
    /// otherwise).
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if !self.shared.kill.is_cancelled() && self.killed.as_mut().poll(cx).is_pending() {
            return None;
        }
        if !std::mem::replace(&mut self.reset, true) {
            // Close with a reset: the unsent bytes are dropped instead of
            // being kept for a peer that does not read.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection closed by the API",
        ))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = buf.filled().len() - before;
            self.count_head(read);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        self.before_write();
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        self.before_write();
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Keeps hyper's queued-buffers strategy: it then holds at most a few
        // body frames per connection instead of copying up to 400 KiB.
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection's kill switch and peer, as a request extension.
#[derive(Debug, Clone)]
pub(crate) struct ConnKill {
    /// The peer's address, for log lines.
    pub(crate) peer: SocketAddr,
    /// Shared with the [`ConnIo`]: its switch, its stream flag, whether it
    /// is busy.
    shared: Arc<ConnShared>,
    /// The registry.
    registry: Arc<Registry>,
}

impl ConnKill {
    /// Cuts the connection.
    pub(crate) fn cut(&self) {
        self.shared.kill.cancel();
    }

    /// Marks the connection as carrying a live stream: its kernel send
    /// buffer becomes [`STREAM_SEND_BUFFER`] before the next write.
    pub(crate) fn streaming(&self) {
        self.shared.streaming.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, Conns>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, Conns>) -> ConnKill {
        ConnKill {
            peer: stream.io().peer,
            shared: stream.io().shared.clone(),
            registry: stream.io().registry.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry whose clock started an hour ago, so stamps can be aged.
    fn registry(cap: usize) -> Registry {
        let mut registry = Registry::new(cap);
        if let Some(earlier) = registry.epoch.checked_sub(Duration::from_secs(3600)) {
            registry.epoch = earlier;
        }
        registry
    }

    fn admit(registry: &Registry) -> Option<(u64, Arc<ConnShared>)> {
        registry.admit(CancellationToken::new())
    }

    /// Makes connection `c` look idle for `ago` already.
    fn idle_for(registry: &Registry, c: &ConnShared, ago: Duration) {
        let ms = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        c.idle_since_ms
            .store(registry.now_ms().saturating_sub(ms), Ordering::Relaxed);
    }

    #[test]
    fn the_cap_leaves_the_reserve_and_has_a_floor() {
        assert_eq!(connection_cap(Some(4096)), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(300)), 300 - FD_RESERVE);
        assert_eq!(connection_cap(Some(100)), MIN_CONNECTIONS);
        assert_eq!(connection_cap(None), MAX_CONNECTIONS);
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let registry = registry(3);
        let (_, oldest) = admit(&registry).expect("room");
        let (_, busy) = admit(&registry).expect("room");
        let (_, newer) = admit(&registry).expect("room");
        idle_for(&registry, &oldest, Duration::from_secs(5));
        idle_for(&registry, &busy, Duration::from_secs(9));
        busy.begin();
        assert!(admit(&registry).is_some(), "an idle one makes room");
        assert!(oldest.kill.is_cancelled(), "the longest idle one is closed");
        assert!(!busy.kill.is_cancelled(), "a busy one is never closed");
        assert!(!newer.kill.is_cancelled());
        assert_eq!(registry.stats().evicted_total, 1);
        assert_eq!(registry.stats().open, 3);
    }

    #[test]
    fn when_every_connection_is_busy_the_new_one_is_refused() {
        let registry = registry(2);
        for _ in 0..2 {
            admit(&registry).expect("room").1.begin();
        }
        assert!(admit(&registry).is_none());
        assert_eq!(registry.stats().refused_total, 1);
    }

    #[test]
    fn silent_slow_and_idle_connections_time_out_busy_ones_do_not() {
        let registry = registry(10);
        let (_, silent) = admit(&registry).expect("room");
        let (_, fresh) = admit(&registry).expect("room");
        let (_, answered) = admit(&registry).expect("room");
        let (_, slow_head) = admit(&registry).expect("room");
        let (_, busy) = admit(&registry).expect("room");
        let registry = Arc::new(registry);
        // Answered once, then idle between requests.
        answered.begin();
        drop(InFlight {
            conn: answered.clone(),
            registry: registry.clone(),
        });
        // Answered once, then a head that trickles in.
        slow_head.begin();
        slow_head.end(&registry);
        slow_head.head_bytes.store(10, Ordering::Relaxed);
        busy.begin();
        for c in [&silent, &answered, &slow_head, &busy] {
            idle_for(&registry, c, HEADER_TIMEOUT + Duration::from_secs(1));
        }
        registry.sweep();
        assert!(
            silent.kill.is_cancelled(),
            "nothing sent within the head timeout"
        );
        assert!(
            slow_head.kill.is_cancelled(),
            "a head still arriving after the timeout"
        );
        assert!(!fresh.kill.is_cancelled(), "just connected");
        assert!(
            !answered.kill.is_cancelled(),
            "idle, but under the idle timeout"
        );
        assert!(!busy.kill.is_cancelled(), "a request in progress");
        idle_for(&registry, &answered, IDLE_TIMEOUT + Duration::from_secs(1));
        registry.sweep();
        assert!(answered.kill.is_cancelled(), "idle past the idle timeout");
        assert!(!busy.kill.is_cancelled());
        assert_eq!(registry.stats().timed_out_total, 3);
        assert_eq!(registry.stats().open, 2);
    }
}
