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

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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
    /// Parent of every connection's kill switch: cancelling it cuts all.
    all: CancellationToken,
    /// Whether accepting is failing, to log once per episode.
    failing: bool,
}

impl Conns {
    pub(crate) fn new(listener: TcpListener, all: CancellationToken) -> Conns {
        Conns {
            listener,
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
                    // Events are small and must go out at once.
                    let _ = stream.set_nodelay(true);
                    return (ConnIo::new(stream, peer, self.all.child_token()), peer);
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
    /// This connection's switch (handed to handlers through [`ConnKill`]).
    kill: CancellationToken,
    /// Waits on `kill`, polled with every I/O call so a cancellation wakes
    /// a connection that is blocked on a full socket.
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Whether the socket was already set to reset on close.
    reset: bool,
    /// Set by a stream handler: use [`STREAM_SEND_BUFFER`] from now on.
    streaming: Arc<AtomicBool>,
    /// Whether `streaming` was applied.
    small_buffer: bool,
}

impl ConnIo {
    fn new(stream: TcpStream, peer: SocketAddr, kill: CancellationToken) -> ConnIo {
        ConnIo {
            stream,
            peer,
            killed: Box::pin(kill.clone().cancelled_owned()),
            kill,
            reset: false,
            streaming: Arc::new(AtomicBool::new(false)),
            small_buffer: false,
        }
    }

    /// Applies a stream's small send buffer before the first write after
    /// the request for it.
    fn before_write(&mut self) {
        if !self.small_buffer && self.streaming.load(Ordering::Relaxed) {
            self.small_buffer = true;
            let _ = socket2::SockRef::from(&self.stream).set_send_buffer_size(STREAM_SEND_BUFFER);
        }
    }

    /// `Some(error)` once the switch is cancelled (registering the waker
    /// otherwise).
    fn cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if !self.kill.is_cancelled() && self.killed.as_mut().poll(cx).is_pending() {
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
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
    /// Cancel to cut the connection.
    pub(crate) switch: CancellationToken,
    /// The peer's address, for log lines.
    pub(crate) peer: SocketAddr,
    /// Shared with the [`ConnIo`]: set to shrink its send buffer.
    streaming: Arc<AtomicBool>,
}

impl ConnKill {
    /// Marks the connection as carrying a live stream: its kernel send
    /// buffer becomes [`STREAM_SEND_BUFFER`] before the next write.
    pub(crate) fn streaming(&self) {
        self.streaming.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, Conns>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, Conns>) -> ConnKill {
        ConnKill {
            switch: stream.io().kill.clone(),
            peer: stream.io().peer,
            streaming: stream.io().streaming.clone(),
        }
    }
}
